//! [`ResumeBody`]: a client's connection to a resumable stream, a reader that follows the
//! log by cursor; or a body passed through.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use sync_wrapper::SyncWrapper;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep, sleep_until};

use crate::BoxError;
use crate::BoxFuture;
use crate::resume::layer::{Config, ReaderRecord};
use crate::resume::shared::AttachGuard;
use crate::resume::store::{Batch, Read, StoreError, StreamEnd, StreamLog};

pin_project! {
    /// The response body of [`Resume`](crate::resume::Resume): a reader of a
    /// resumable stream's log, the upstream's body untouched (not a stream, or resumption
    /// unavailable), or empty (a `204`).
    ///
    /// A reader sends each logged event as its own frame (replay is never one huge write),
    /// its own keep-alives when configured, and ends as the stream ended: cleanly, or with
    /// an error when the stream's body failed. A reader that falls behind the log's trimmed
    /// start ends cleanly (its client reconnects, and its resume is answered `204`).
    pub struct ResumeBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        PassThrough { #[pin] body: B },
        Reader { reader: Box<Reader> },
        Empty,
    }
}

impl<B> ResumeBody<B> {
    pub(crate) fn pass_through(body: B) -> Self {
        Self {
            kind: Kind::PassThrough { body },
        }
    }

    pub(crate) fn empty() -> Self {
        Self { kind: Kind::Empty }
    }

    pub(crate) fn reader(reader: Reader) -> Self {
        Self {
            kind: Kind::Reader {
                reader: Box::new(reader),
            },
        }
    }

    /// Whether this body reads a resumable stream's log.
    pub fn is_reader(&self) -> bool {
        matches!(self.kind, Kind::Reader { .. })
    }
}

impl<B> fmt::Debug for ResumeBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::PassThrough { .. } => "PassThrough",
            Kind::Reader { .. } => "Reader",
            Kind::Empty => "Empty",
        };
        f.debug_struct("ResumeBody")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

impl<B> Body for ResumeBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::PassThrough { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Reader { reader } => reader.poll_frame(cx),
            KindProj::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::PassThrough { body } => body.is_end_stream(),
            Kind::Reader { reader } => reader.done,
            Kind::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::PassThrough { body } => body.size_hint(),
            Kind::Reader { .. } => SizeHint::default(),
            Kind::Empty => SizeHint::with_exact(0),
        }
    }
}

/// One step of a reader: wait for a wake-up if asked, mark it seen, then read. Returns the
/// receiver, and the read (`None`: the wake-ups closed).
type StepFuture = BoxFuture<'static, (watch::Receiver<u64>, Option<Result<Read, StoreError>>)>;

/// A client connection following a stream's log.
pub(crate) struct Reader {
    log: Arc<dyn StreamLog>,
    config: Arc<Config>,
    cursor: u64,
    pending: VecDeque<Bytes>,
    /// Events up to this seq were in the log when a resume attached: replayed.
    replay_until: u64,
    wake: Option<watch::Receiver<u64>>,
    /// Wrapped so that the body is `Sync` (`BoxBody` asks for it): only polled through `&mut`.
    step: Option<SyncWrapper<StepFuture>>,
    /// The next step waits for a wake-up first (the last read found nothing more).
    wait: bool,
    /// The step in flight waits for a wake-up.
    step_waits: bool,
    end: Option<StreamEnd>,
    /// The log is lost to this reader (trimmed past its cursor, store failure).
    lost: bool,
    done: bool,
    /// The keep-alive timer: made once, re-armed (`Sleep::reset`) when next needed after
    /// each frame sent.
    timer: Option<Pin<Box<Sleep>>>,
    /// The timer runs from the last frame sent (false: re-arm it before waiting on it).
    timer_armed: bool,
    record: ReaderRecord,
    attach: AttachGuard,
}

impl Reader {
    /// A reader at `cursor`, whose wake-up receiver was marked seen before `first` was read.
    pub(crate) fn new(
        log: Arc<dyn StreamLog>,
        config: Arc<Config>,
        wake: watch::Receiver<u64>,
        first: Batch,
        resumed: bool,
        attach: AttachGuard,
    ) -> Self {
        let record = ReaderRecord {
            stream: log.id(),
            resumed,
            events: 0,
            replayed_events: 0,
            keep_alives: 0,
            bytes: 0,
            reached_end: false,
        };
        let cursor = first.last_seq - first.events.len() as u64;
        let mut reader = Self {
            log,
            config,
            cursor,
            pending: VecDeque::new(),
            replay_until: if resumed { first.head } else { 0 },
            wake: Some(wake),
            step: None,
            wait: false,
            step_waits: false,
            end: None,
            lost: false,
            done: false,
            timer: None,
            timer_armed: false,
            record,
            attach,
        };
        reader.take(first);
        reader
    }

    fn take(&mut self, batch: Batch) {
        self.wait = !batch.is_partial();
        self.end = batch.end;
        self.pending.extend(batch.events);
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.cursor += 1;
                self.record.events += 1;
                self.record.bytes += event.len() as u64;
                if self.cursor <= self.replay_until {
                    self.record.replayed_events += 1;
                    self.attach.shared().replayed(1);
                }
                self.timer_armed = false;
                return Poll::Ready(Some(Ok(Frame::data(event))));
            }
            if self.done {
                return Poll::Ready(None);
            }
            if let Some(end) = self.end {
                self.done = true;
                self.record.reached_end = true;
                return Poll::Ready(match end {
                    StreamEnd::Failed => Some(Err("the stream failed".into())),
                    _ => None,
                });
            }
            if self.lost {
                self.done = true;
                return Poll::Ready(None);
            }
            let step = match &mut self.step {
                Some(step) => step,
                None => {
                    let Some(mut wake) = self.wake.take() else {
                        self.lost = true;
                        continue;
                    };
                    let log = self.log.clone();
                    let (cursor, wait, limits) = (self.cursor, self.wait, self.config.read_limits);
                    self.step_waits = wait;
                    self.step.insert(SyncWrapper::new(Box::pin(async move {
                        if wait && wake.changed().await.is_err() {
                            return (wake, None);
                        }
                        // Armed before reading: an append after this read wakes us again.
                        wake.borrow_and_update();
                        let read = log.read_after(cursor, limits).await;
                        (wake, Some(read))
                    })))
                }
            };
            match step.get_mut().as_mut().poll(cx) {
                Poll::Ready((wake, read)) => {
                    self.step = None;
                    self.wake = Some(wake);
                    match read {
                        Some(Ok(Read::Events(batch))) => self.take(batch),
                        _ => self.lost = true,
                    }
                }
                Poll::Pending => return self.poll_keep_alive(cx),
            }
        }
    }

    fn poll_keep_alive(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(keep_alive) = &self.config.keep_alive else {
            return Poll::Pending;
        };
        let interval = keep_alive.interval;
        let timer = match &mut self.timer {
            Some(timer) => {
                if !self.timer_armed {
                    timer.as_mut().reset(Instant::now() + interval);
                }
                timer
            }
            None => self
                .timer
                .insert(Box::pin(sleep_until(Instant::now() + interval))),
        };
        self.timer_armed = true;
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let comment = keep_alive.comment.clone();
        self.timer_armed = false;
        if self.step_waits {
            // A safety poll: read the log again on every keep-alive, so that a store whose
            // wake-ups can be lost (a remote pub/sub) delays a reader by one interval at most.
            self.step = None;
            self.wake = Some(self.log.wake_ups());
            self.wait = false;
        }
        self.record.keep_alives += 1;
        self.record.bytes += comment.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(comment))))
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Some(on_end) = &self.config.on_reader_end {
            on_end(self.record);
        }
    }
}
