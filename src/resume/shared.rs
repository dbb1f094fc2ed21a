//! What the producer and the readers of one stream share: the counters, the attached
//! readers, and [`ResumableStream`], the handle in the request's extensions.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::report::Outcome;
use crate::resume::id::StreamId;
use crate::resume::observer::ResumeSummary;
use crate::resume::producers::Producers;

/// Set by [`ResumeLayer`](crate::ResumeLayer) in the extensions of each request that may
/// become a resumable stream: its id (the one the `sse-stream-id` header will carry, if the
/// answer is a stream), for the layers and handlers inside.
///
/// It holds the id and the layer's table of running producers, nothing made for this
/// request alone: the stream's shared state is made only once the answer is a stream.
#[derive(Clone)]
pub struct ResumableStream {
    pub(crate) id: StreamId,
    pub(crate) producers: Arc<Producers>,
}

impl ResumableStream {
    /// The stream's id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// What the producer and readers share, while the producer runs (the report is made by
    /// the producer, before it leaves the table).
    pub(crate) fn shared(&self) -> Option<Arc<Shared>> {
        self.producers.get(self.id)
    }
}

impl fmt::Debug for ResumableStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ResumableStream").field(&self.id).finish()
    }
}

/// What the producer and the readers of one stream share.
pub(crate) struct Shared {
    pub(crate) id: StreamId,
    resumes: AtomicU64,
    replayed: AtomicU64,
    connections: AtomicU64,
    detached: Mutex<Detached>,
    /// The number of readers attached; the producer watches it.
    readers: watch::Sender<usize>,
    /// Why the producer ended the stream itself (it drops the `SseLayer`'s body, which
    /// would otherwise report a disconnect): [`ResumeObserver`](crate::resume::ResumeObserver)
    /// puts it into the report.
    producer_end: std::sync::OnceLock<(Outcome, &'static str)>,
}

struct Detached {
    total: Duration,
    since: Option<Instant>,
}

impl Shared {
    pub(crate) fn new(id: StreamId) -> Self {
        Self {
            id,
            resumes: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            detached: Mutex::new(Detached {
                total: Duration::ZERO,
                since: None,
            }),
            readers: watch::Sender::new(0),
            producer_end: std::sync::OnceLock::new(),
        }
    }

    /// The producer ends the stream itself, for this reason (the first one counts).
    pub(crate) fn producer_ended(&self, outcome: Outcome, message: &'static str) {
        let _ = self.producer_end.set((outcome, message));
    }

    /// Why the producer ended the stream itself, if it did.
    pub(crate) fn producer_end(&self) -> Option<(Outcome, &'static str)> {
        self.producer_end.get().copied()
    }

    /// A reader attaches; it stays attached while the guard lives.
    pub(crate) fn attach(self: &Arc<Self>, resumed: bool) -> AttachGuard {
        if resumed {
            self.resumes.fetch_add(1, Ordering::Relaxed);
        }
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.readers.send_modify(|n| {
            if *n == 0 {
                let mut detached = self.detached.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(since) = detached.since.take() {
                    detached.total += since.elapsed();
                }
            }
            *n += 1;
        });
        AttachGuard(self.clone())
    }

    pub(crate) fn replayed(&self, events: u64) {
        self.replayed.fetch_add(events, Ordering::Relaxed);
    }

    pub(crate) fn readers(&self) -> watch::Receiver<usize> {
        self.readers.subscribe()
    }

    pub(crate) fn summary(&self) -> ResumeSummary {
        let detached = self.detached.lock().unwrap_or_else(PoisonError::into_inner);
        ResumeSummary {
            stream: self.id,
            connections: self.connections.load(Ordering::Relaxed),
            resumes: self.resumes.load(Ordering::Relaxed),
            replayed_events: self.replayed.load(Ordering::Relaxed),
            detached: detached.total + detached.since.map_or(Duration::ZERO, |s| s.elapsed()),
        }
    }
}

/// Keeps a reader counted as attached.
pub(crate) struct AttachGuard(Arc<Shared>);

impl AttachGuard {
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.0
    }
}

impl Drop for AttachGuard {
    fn drop(&mut self) {
        let shared = &self.0;
        shared.readers.send_modify(|n| {
            *n = n.saturating_sub(1);
            if *n == 0 {
                shared
                    .detached
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .since = Some(Instant::now());
            }
        });
    }
}
