//! What the producer and the readers of one stream share: the counters, the attached
//! readers, and the [`Handoff`] of whole events from the `SseLayer`.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::report::Outcome;
use crate::resume::id::StreamId;
use crate::resume::store::ReaderCounts;
use crate::resume::summary::ResumeSummary;

/// What the `SseLayer` of a resumable stream tells the stream's producer about the frame it
/// handed on last: whether it is one whole event as the upstream sent it (terminated, no
/// `id` line), which the producer then stamps without decoding it again.
///
/// Made by the `SseLayer` once its answer is a stream (a request whose extensions hold a
/// [`ResumableStream`](super::ResumableStream)), and handed to the `ResumeLayer` in the response's extensions: a
/// request answered otherwise allocates nothing for it.
///
/// It holds where that frame's bytes are (pointer and length); the layer keeps a clone of
/// the frame (a reference count, no copy) until it hands on its next one, so those bytes
/// stay where they are and unchanged while they are marked here. The producer takes the
/// short way only for a frame whose bytes are the very ones marked: a layer between the
/// two that changes, splits, joins or reorders frames is harmless (its frames do not match
/// and are decoded as before). Both sides run in the producer's task, one after the other:
/// two relaxed atomics, no lock.
#[derive(Default)]
pub(crate) struct Handoff {
    ptr: AtomicUsize,
    len: AtomicUsize,
}

impl Handoff {
    /// The `SseLayer` hands on a frame: `whole` when it is one whole event (see the type
    /// docs), which the layer keeps until it hands on the next; else `None`.
    #[inline]
    pub(crate) fn handed(&self, whole: Option<&Bytes>) {
        let (ptr, len) = whole.map_or((0, 0), |whole| (whole.as_ptr() as usize, whole.len()));
        self.ptr.store(ptr, Ordering::Relaxed);
        self.len.store(len, Ordering::Relaxed);
    }

    /// Whether `frame` is the whole event the `SseLayer` handed on last (asked once per
    /// frame: the mark is taken).
    #[inline]
    pub(crate) fn is_whole(&self, frame: &Bytes) -> bool {
        let ptr = self.ptr.swap(0, Ordering::Relaxed);
        ptr != 0
            && ptr == frame.as_ptr() as usize
            && self.len.load(Ordering::Relaxed) == frame.len()
    }
}

impl fmt::Debug for Handoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handoff").finish_non_exhaustive()
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
    /// How far each attached reader of this process has read the log: the producer holds
    /// back rather than trim what one of them has not read.
    positions: Mutex<Vec<Arc<Position>>>,
    /// The producer holds back: readers that read on, or leave, wake it.
    holding: AtomicBool,
    advanced: Notify,
    /// What readers in other processes did, as of the producer's last look (shared stores).
    elsewhere: Mutex<ReaderCounts>,
    /// Why the producer ended the stream itself (it drops the `SseLayer`'s body, which
    /// would otherwise report a disconnect): [`ResumeObserver`](crate::resume::ResumeObserver)
    /// puts it into the report.
    producer_end: std::sync::OnceLock<(Outcome, &'static str)>,
    /// The context of the stream's span (feature `otel`), for its readers' spans to link to.
    #[cfg(feature = "otel")]
    span: std::sync::OnceLock<opentelemetry::trace::SpanContext>,
}

/// How far one attached reader has read the log.
pub(crate) struct Position {
    /// The seq of the last entry it read (it may not have sent it yet).
    read: AtomicU64,
    /// The producer stopped waiting for it: it is no longer held for.
    overrun: AtomicBool,
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
            positions: Mutex::new(Vec::new()),
            holding: AtomicBool::new(false),
            advanced: Notify::new(),
            elsewhere: Mutex::new(ReaderCounts::default()),
            producer_end: std::sync::OnceLock::new(),
            #[cfg(feature = "otel")]
            span: std::sync::OnceLock::new(),
        }
    }

    /// What the readers attached in this process did so far.
    pub(crate) fn counts(&self) -> ReaderCounts {
        ReaderCounts {
            connections: self.connections.load(Ordering::Relaxed),
            resumes: self.resumes.load(Ordering::Relaxed),
            replayed_events: self.replayed.load(Ordering::Relaxed),
        }
    }

    /// What readers in other processes did, as a shared store says. The counts only grow:
    /// an answer that overtook a later one (looks run concurrently), or a store that lost
    /// them (a Redis restart without persistence), never lowers what was seen.
    pub(crate) fn set_elsewhere(&self, counts: ReaderCounts) {
        let mut seen = self
            .elsewhere
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        seen.connections = seen.connections.max(counts.connections);
        seen.resumes = seen.resumes.max(counts.resumes);
        seen.replayed_events = seen.replayed_events.max(counts.replayed_events);
    }

    /// The number of readers attached in this process now.
    pub(crate) fn attached(&self) -> usize {
        *self.readers.borrow()
    }

    /// Whether an attached reader that is still held for has not read the entry before
    /// `keep` (the oldest entry the log will keep).
    pub(crate) fn lagging(&self, keep: u64) -> bool {
        self.lock_positions().iter().any(|p| {
            !p.overrun.load(Ordering::Relaxed) && p.read.load(Ordering::Acquire) + 1 < keep
        })
    }

    /// Stop holding for the readers that have not read the entry before `keep`: they meet
    /// the trimmed positions as a gap.
    pub(crate) fn overrun(&self, keep: u64) {
        for p in self.lock_positions().iter() {
            if p.read.load(Ordering::Acquire) + 1 < keep {
                p.overrun.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Hold back until no attached reader lags behind `keep()` (asked again after each
    /// wake-up), or for at most `bound`. Returns whether it gave up (readers overrun).
    pub(crate) async fn hold(&self, bound: std::time::Duration, keep: impl Fn() -> u64) -> bool {
        self.holding.store(true, Ordering::SeqCst);
        let deadline = tokio::time::sleep(bound);
        let mut deadline = std::pin::pin!(deadline);
        let gave_up = loop {
            let notified = self.advanced.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let point = keep();
            if !self.lagging(point) {
                break false;
            }
            let timed_out = std::future::poll_fn(|cx| {
                if notified.as_mut().poll(cx).is_ready() {
                    return std::task::Poll::Ready(false);
                }
                deadline.as_mut().poll(cx).map(|()| true)
            })
            .await;
            if timed_out {
                self.overrun(point);
                break true;
            }
        };
        self.holding.store(false, Ordering::SeqCst);
        gave_up
    }

    fn lock_positions(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Position>>> {
        self.positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn wake_producer(&self) {
        if self.holding.load(Ordering::SeqCst) {
            self.advanced.notify_waiters();
        }
    }

    /// The context of the stream's span, set once when the stream starts.
    #[cfg(feature = "otel")]
    pub(crate) fn set_span(&self, span: opentelemetry::trace::SpanContext) {
        let _ = self.span.set(span);
    }

    /// The context of the stream's span, if a `SpanLayer` inside gave one.
    #[cfg(feature = "otel")]
    pub(crate) fn span(&self) -> Option<&opentelemetry::trace::SpanContext> {
        self.span.get()
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
        let position = Arc::new(Position {
            read: AtomicU64::new(0),
            overrun: AtomicBool::new(false),
        });
        self.lock_positions().push(position.clone());
        AttachGuard {
            shared: self.clone(),
            position,
        }
    }

    pub(crate) fn replayed(&self, events: u64) {
        self.replayed.fetch_add(events, Ordering::Relaxed);
    }

    pub(crate) fn readers(&self) -> watch::Receiver<usize> {
        self.readers.subscribe()
    }

    pub(crate) fn summary(&self) -> ResumeSummary {
        let detached = self.detached.lock().unwrap_or_else(PoisonError::into_inner);
        let elsewhere = *self
            .elsewhere
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        ResumeSummary {
            stream: self.id,
            connections: self.connections.load(Ordering::Relaxed) + elsewhere.connections,
            resumes: self.resumes.load(Ordering::Relaxed) + elsewhere.resumes,
            replayed_events: self.replayed.load(Ordering::Relaxed) + elsewhere.replayed_events,
            detached: detached.total + detached.since.map_or(Duration::ZERO, |s| s.elapsed()),
        }
    }
}

/// Keeps a reader counted as attached, and its position known to the producer.
pub(crate) struct AttachGuard {
    shared: Arc<Shared>,
    position: Arc<Position>,
}

impl AttachGuard {
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Whether the producer stopped holding back for this reader.
    pub(crate) fn overrun(&self) -> bool {
        self.position.overrun.load(Ordering::Relaxed)
    }

    /// The reader has read the log up to `seq`.
    pub(crate) fn read_to(&self, seq: u64) {
        self.position.read.store(seq, Ordering::Release);
        self.shared.wake_producer();
    }
}

impl Drop for AttachGuard {
    fn drop(&mut self) {
        let shared = &self.shared;
        shared
            .lock_positions()
            .retain(|p| !Arc::ptr_eq(p, &self.position));
        shared.wake_producer();
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
