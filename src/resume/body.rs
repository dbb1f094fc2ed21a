//! [`ResumeBody`]: a client's connection to a resumable stream, a reader that follows the
//! log by cursor; or a body passed through.

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
use tokio_util::sync::ReusableBoxFuture;

use crate::BoxError;
use crate::BoxFuture;
use crate::Outcome;
use crate::resume::gap::{ResumeGap, ResumeGapKind};
use crate::resume::layer::{Config, ReaderRecord};
use crate::resume::shared::AttachGuard;
use crate::resume::store::{Batch, Read, StoreError, StreamEnd, StreamLog};
use crate::resume::traced::{ReaderEnd, Traced};
use crate::stream::config::ErrorEvent;
use crate::stream::shutdown::ShutdownWatch;

pin_project! {
    /// The response body of [`Resume`](crate::resume::Resume): a reader of a
    /// resumable stream's log, the upstream's body untouched (not a stream, or resumption
    /// unavailable), or empty (a `204`).
    ///
    /// A reader sends each logged event as its own frame (replay is never one huge write),
    /// its own keep-alives when configured, and ends as the stream ended: cleanly, or with
    /// an error when the stream's body failed or was cancelled (the detach policy, the
    /// server stopping its producer). A reader that cannot go on without a gap (it
    /// fell behind the log's trimmed start, the store lost or could not read the log) sends
    /// the `resume_gap` error event and then fails ([`ResumeGap`]): never a clean end with
    /// events missing.
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

/// Waits for the log's next wake-up; gives the receiver back. One allocation per reader,
/// re-used for every wait ([`ReusableBoxFuture`]).
async fn changed(mut wake: watch::Receiver<u64>) -> (bool, watch::Receiver<u64>) {
    let open = wake.changed().await.is_ok();
    (open, wake)
}

type Changed = (bool, watch::Receiver<u64>);

/// A client connection following a stream's log.
///
/// In steady state a live event costs it no allocation: the wake-up future is re-used, an
/// in-process log answers at once into a re-used buffer ([`StreamLog::read_now`]), and the
/// keep-alive timer is re-armed only when it fires (from the time of the last frame sent).
pub(crate) struct Reader {
    log: Arc<dyn StreamLog>,
    config: Arc<Config>,
    /// The seq of the last event sent.
    cursor: u64,
    /// The events read and not sent yet, the next one last (a read's buffer taken whole and
    /// turned around: no copy into a queue, a `pop` per event).
    pending: Vec<Bytes>,
    /// The buffer of the last read, given back to the store for the next one.
    spare: Vec<Bytes>,
    /// Events up to this seq were in the log when a resume attached: replayed.
    replay_until: u64,
    /// The wake-up in wait (always holds a future on the receiver).
    wake: ReusableBoxFuture<'static, Changed>,
    /// A read of a store that cannot answer at once; wrapped so that the body is `Sync`.
    read: Option<SyncWrapper<BoxFuture<'static, Result<Read, StoreError>>>>,
    /// The next read waits for a wake-up first (the last read found nothing more).
    wait: bool,
    end: Option<StreamEnd>,
    /// The reader cannot go on without a gap: its error event is due, then its broken end.
    gap: Option<ResumeGap>,
    gap_sent: bool,
    done: bool,
    /// The keep-alive timer: made once, re-armed only when it fires early.
    timer: Option<Pin<Box<Sleep>>>,
    /// When the last frame was sent (with keep-alives configured).
    last_sent: Instant,
    record: ReaderRecord,
    attach: AttachGuard,
    /// Ends this reader on shutdown (when its stream is not produced in this process: one
    /// produced here ends through its log).
    shutdown: Option<ShutdownWatch>,
    /// The shutdown's error event was sent: the end follows.
    shut: bool,
    /// The connection's span, for a resume (feature `otel`).
    traced: Traced,
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
        produced_here: bool,
    ) -> Self {
        config
            .open_readers
            .0
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let shutdown = match (&config.shutdown, produced_here) {
            (Some(shutdown), false) => Some(shutdown.watch()),
            _ => None,
        };
        let record = ReaderRecord {
            stream: log.id(),
            resumed,
            events: 0,
            replayed_events: 0,
            keep_alives: 0,
            bytes: 0,
            reached_end: false,
            gap: None,
        };
        let cursor = first.last_seq - first.events.len() as u64;
        let mut reader = Self {
            log,
            config,
            cursor,
            pending: Vec::new(),
            spare: Vec::new(),
            replay_until: if resumed { first.head } else { 0 },
            wake: ReusableBoxFuture::new(changed(wake)),
            read: None,
            wait: false,
            end: None,
            gap: None,
            gap_sent: false,
            done: false,
            timer: None,
            last_sent: Instant::now(),
            record,
            attach,
            shutdown,
            shut: false,
            traced: Traced::default(),
        };
        reader.take(first);
        reader
    }

    /// The connection's span, ended with its record when the reader is dropped.
    pub(crate) fn traced(mut self, traced: Traced) -> Self {
        self.traced = traced;
        self
    }

    fn take(&mut self, batch: Batch) {
        self.wait = !batch.is_partial();
        self.end = batch.end;
        // A read comes only when all was sent (`poll_frame` sends what is pending first):
        // the read's buffer becomes the pending one, and the empty one goes back to the store.
        debug_assert!(self.pending.is_empty());
        let mut events = batch.events;
        events.reverse();
        std::mem::swap(&mut self.pending, &mut events);
        self.spare = events;
        self.attach.read_to(batch.last_seq);
    }

    /// The reader cannot go on without a gap.
    fn lost(&mut self, kind: ResumeGapKind) {
        if self.gap.is_none() {
            self.gap = Some(ResumeGap::new(kind, self.cursor_read()));
            self.record.gap = Some(kind);
            #[cfg(feature = "metrics")]
            crate::metrics::resume_reader_gap(kind.as_str());
        }
    }

    fn sent(&mut self, bytes: usize) {
        self.record.bytes += bytes as u64;
        if self.config.keep_alive.is_some() {
            self.last_sent = Instant::now();
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(event) = self.pending.pop() {
                self.cursor += 1;
                self.record.events += 1;
                if self.cursor <= self.replay_until {
                    self.record.replayed_events += 1;
                    self.attach.shared().replayed(1);
                }
                self.sent(event.len());
                return Poll::Ready(Some(Ok(Frame::data(event))));
            }
            if self.done {
                return Poll::Ready(None);
            }
            if self.shut || self.shutdown.as_ref().is_some_and(ShutdownWatch::is_ended) {
                // What it read went out: the error event, then the end (its client resumes
                // on another replica).
                if self.shut {
                    self.done = true;
                    return Poll::Ready(None);
                }
                self.shut = true;
                let event = ErrorEvent::default()
                    .render(Outcome::ServerShutdown, "the server is shutting down")
                    .unwrap_or_default();
                self.sent(event.len());
                return Poll::Ready(Some(Ok(Frame::data(event))));
            }
            if let Some(gap) = self.gap {
                if !self.gap_sent {
                    self.gap_sent = true;
                    let event = gap.event();
                    self.sent(event.len());
                    return Poll::Ready(Some(Ok(Frame::data(event))));
                }
                // A broken end, never a clean one: the client must not take it as complete.
                self.done = true;
                return Poll::Ready(Some(Err(Box::new(gap))));
            }
            if let Some(end) = self.end {
                self.done = true;
                self.record.reached_end = true;
                return Poll::Ready(match end {
                    StreamEnd::Failed => Some(Err("the stream failed".into())),
                    // Cut by the detach policy or the server: incomplete, so not a clean end.
                    StreamEnd::Cancelled => Some(Err("the stream was cancelled".into())),
                    _ => None,
                });
            }
            let read = if let Some(read) = &mut self.read {
                match read.get_mut().as_mut().poll(cx) {
                    Poll::Ready(read) => {
                        self.read = None;
                        read
                    }
                    Poll::Pending => {
                        if self.poll_shutdown(cx) {
                            continue;
                        }
                        return self.poll_keep_alive(cx);
                    }
                }
            } else {
                if self.wait {
                    match self.wake.poll(cx) {
                        Poll::Ready((open, mut wake)) => {
                            // Marked seen before reading: an append after this read wakes
                            // us again.
                            wake.borrow_and_update();
                            self.wake.set(changed(wake));
                            self.wait = false;
                            if !open {
                                self.lost(ResumeGapKind::StoreFailed);
                                continue;
                            }
                        }
                        Poll::Pending => {
                            if self.poll_shutdown(cx) {
                                continue;
                            }
                            return self.poll_keep_alive(cx);
                        }
                    }
                }
                let limits = self.config.read_limits;
                match self
                    .log
                    .read_now(self.cursor_read(), limits, &mut self.spare)
                {
                    Some(read) => read,
                    None => {
                        let (log, cursor) = (self.log.clone(), self.cursor_read());
                        self.read = Some(SyncWrapper::new(Box::pin(async move {
                            log.read_after(cursor, limits).await
                        })));
                        continue;
                    }
                }
            };
            match read {
                Ok(Read::Events(batch)) => self.take(batch),
                Ok(Read::Gone | Read::Ahead) => self.lost(if self.attach.overrun() {
                    ResumeGapKind::Overrun
                } else {
                    ResumeGapKind::Gone
                }),
                Err(_) => self.lost(ResumeGapKind::StoreFailed),
            }
        }
    }

    /// Whether the shutdown came (the task is woken when it comes).
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> bool {
        self.shutdown
            .as_mut()
            .is_some_and(|shutdown| shutdown.poll_ended(cx).is_ready())
    }

    /// The seq of the last entry read from the log (sent, or waiting to be).
    fn cursor_read(&self) -> u64 {
        self.cursor + self.pending.len() as u64
    }

    fn poll_keep_alive(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(keep_alive) = &self.config.keep_alive else {
            return Poll::Pending;
        };
        let due = self.last_sent + keep_alive.interval;
        let timer = self.timer.get_or_insert_with(|| Box::pin(sleep_until(due)));
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // It fired: a frame went out since it was armed, so run it from that one.
            if timer.deadline() < due {
                timer.as_mut().reset(due);
                continue;
            }
            break;
        }
        let comment = keep_alive.comment.clone();
        timer.as_mut().reset(Instant::now() + keep_alive.interval);
        if self.wait && self.read.is_none() {
            // A safety poll: read the log again on every keep-alive, so that a store whose
            // wake-ups can be lost (a remote pub/sub) delays a reader by one interval at most.
            // A fresh receiver is marked seen as it subscribes.
            self.wake.set(changed(self.log.wake_ups()));
            self.wait = false;
        }
        self.record.keep_alives += 1;
        self.sent(comment.len());
        Poll::Ready(Some(Ok(Frame::data(comment))))
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.config
            .open_readers
            .0
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        let end = if self.record.gap.is_some() {
            ReaderEnd::Gap
        } else if self.shut {
            ReaderEnd::Shutdown
        } else if self.record.reached_end {
            ReaderEnd::StreamEnd
        } else {
            ReaderEnd::ClientLeft
        };
        std::mem::take(&mut self.traced).ended(&self.record, end);
        if let Some(on_end) = &self.config.on_reader_end {
            on_end(self.record);
        }
    }
}
