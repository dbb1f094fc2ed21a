//! [`SseBody`]: the one body wrapper.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use sync_wrapper::SyncWrapper;
use tokio::time::{Instant, Sleep, sleep_until};

use crate::BoxError;
use crate::limit::DrainPermits;
use crate::observe::Observer;
use crate::report::{OnEnd, Outcome};
use crate::stream::config::UpstreamErrorPolicy;
use crate::stream::deadline::{Deadlines, Due, timeout_message};
use crate::stream::engine::Engine;
use crate::stream::shutdown::ShutdownWatch;

/// How many upstream frames one poll reads at most before yielding to the runtime.
pub(crate) const FRAMES_PER_POLL: u32 = 64;

/// The upstream call, when the layer answered before it did (early response).
pub(crate) type UpstreamFuture<B> =
    Pin<Box<dyn Future<Output = Result<http::Response<B>, BoxError>> + Send>>;

pin_project! {
    /// The response body of [`Sse`](crate::stream::Sse).
    ///
    /// For a response the layer handles as a stream, it decodes the upstream body once and
    /// hands the client whole events only, sends keep-alives, enforces the deadlines, lets the
    /// observers see every event, and delivers the [`StreamReport`](crate::StreamReport)
    /// exactly once. Any other response body passes through untouched, size hint and
    /// end-of-stream hint included.
    ///
    /// # Hints
    ///
    /// A stream never claims an exact size (keep-alives and error events may be added) and
    /// says `is_end_stream()` only once its report went out. Trailers pass through after the
    /// last event.
    ///
    /// # Panics
    ///
    /// Keep-alives and deadlines use a Tokio timer: polling such a stream (and calling the
    /// service with a streaming request when a first-event or total timeout is set) outside a
    /// Tokio runtime with its time driver enabled panics, as `tokio::time::sleep` does.
    pub struct SseBody<B, O = (), E = ()> {
        #[pin]
        kind: Kind<B, O, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B, O, E> {
        PassThrough { #[pin] body: B },
        Answer { #[pin] body: B, report: AnswerReport<O, E> },
        Stream { state: StreamState<B, O, E> },
        Full { data: Option<Bytes> },
    }
}

/// Where the stream is: the upstream's side. The report side is [`StreamState::live`]:
/// taken, once, when the report is made.
pub(crate) enum Phase<B> {
    /// The upstream call is still pending (early response): keep-alives and deadlines run.
    /// Wrapped so that the body is `Sync` whenever its parts are (`BoxBody` asks for it):
    /// the future is only ever polled through `&mut`.
    AwaitingHead(SyncWrapper<UpstreamFuture<B>>),
    /// Reading the upstream body.
    Streaming(Pin<Box<B>>),
    /// The upstream is done or dropped: what is queued is the last of the stream.
    Flushing,
    /// A policy stopped the stream: what is queued (the provider-shaped end) is the last
    /// the client gets. The upstream is kept, unread, until that went out; then the stream
    /// ends as a disconnect does (`StreamState::on_drop`): drained for the provider's final
    /// usage when the layer drains after disconnects, else dropped.
    Stopped(Pin<Box<B>>),
}

/// What lives while the report is still to be made.
pub(crate) struct Live<O, E> {
    pub(crate) engine: Box<Engine<O>>,
    pub(crate) on_end: E,
    /// The permits of the [`StreamLimitLayer`](crate::StreamLimitLayer)s outside, handed
    /// over when the client leaves and the stream may drain: a drain holds them to its end.
    /// Empty otherwise. Released (dropped) before the report of a disconnect is made.
    pub(crate) permits: DrainPermits,
}

pub(crate) struct StreamState<B, O, E> {
    pub(crate) phase: Phase<B>,
    /// `None` once the report went out.
    pub(crate) live: Option<Live<O, E>>,
    pub(crate) deadlines: Deadlines,
    /// The one timer of the stream, created on first use (boxed, so that the body is
    /// `Unpin` whenever the upstream body is).
    pub(crate) timer: Option<Pin<Box<Sleep>>>,
    /// The server's [`Shutdown`](crate::stream::Shutdown), when the layer was given one.
    pub(crate) shutdown: Option<ShutdownWatch>,
    /// What to do when the body is dropped before its end. Chosen where the bounds that
    /// `Drop` cannot name are known: report the disconnect, or keep draining the upstream.
    pub(crate) on_drop: fn(Live<O, E>, Phase<B>),
}

impl<B, O, E> SseBody<B, O, E> {
    pub(crate) fn pass_through(body: B) -> Self {
        Self {
            kind: Kind::PassThrough { body },
        }
    }

    /// A streaming request answered with something that is not a stream: passed through
    /// untouched, and reported when it ends.
    pub(crate) fn answer(body: B, report: AnswerReport<O, E>) -> Self
    where
        B: Body,
        O: Observer,
        E: OnEnd,
    {
        let mut report = report;
        if body.is_end_stream() {
            // Nobody polls an empty body: it is over already.
            report.end(true);
        }
        Self {
            kind: Kind::Answer { body, report },
        }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full { data: Some(data) },
        }
    }

    pub(crate) fn stream(state: StreamState<B, O, E>) -> Self {
        Self {
            kind: Kind::Stream { state },
        }
    }

    /// Whether the layer handles this body as a stream (as opposed to passing it through).
    pub fn is_stream(&self) -> bool {
        matches!(self.kind, Kind::Stream { .. })
    }
}

impl<B, O, E> fmt::Debug for SseBody<B, O, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::PassThrough { .. } => "PassThrough",
            Kind::Answer { .. } => "Answer",
            Kind::Stream { .. } => "Stream",
            Kind::Full { .. } => "Full",
        };
        f.debug_struct("SseBody")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

/// An empty body, as tower-http's `TimeoutLayer` asks of the bodies it wraps (it answers
/// `408` with one).
impl<B, O, E> Default for SseBody<B, O, E> {
    fn default() -> Self {
        Self {
            kind: Kind::Full { data: None },
        }
    }
}

impl<B, O, E> Body for SseBody<B, O, E>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    O: Observer,
    E: OnEnd,
{
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::PassThrough { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Answer { mut body, report } => {
                let polled = body.as_mut().poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            report.passed(data);
                        }
                        if body.is_end_stream() {
                            report.end(true);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => report.end(false),
                    Poll::Ready(None) => report.end(true),
                    Poll::Pending => {}
                }
                polled.map_err(Into::into)
            }
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Stream { state } => state.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::PassThrough { body } | Kind::Answer { body, .. } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
            Kind::Stream { state } => state.live.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::PassThrough { body } | Kind::Answer { body, .. } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Stream { state } if state.live.is_none() => SizeHint::with_exact(0),
            Kind::Stream { .. } => SizeHint::default(),
        }
    }
}

impl<B, O, E> StreamState<B, O, E>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    O: Observer,
    E: OnEnd,
{
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // Upstream frames read in this call: an upstream that always has one ready but whose
        // frames complete nothing (a partial event byte by byte, stripped comments) must not
        // keep this task from yielding.
        let mut frames = 0;
        let mut yielding = false;
        if self.shutdown.as_ref().is_some_and(ShutdownWatch::is_ended) {
            self.shut_down();
        }
        loop {
            let Some(live) = self.live.as_mut() else {
                return Poll::Ready(None);
            };

            // Whole events already decoded go first.
            if let Some(frame) = live.engine.pop() {
                if matches!(self.phase, Phase::Flushing | Phase::Stopped(_))
                    && !live.engine.has_output()
                {
                    // The last frame: the client will not poll again (hyper stops once
                    // `is_end_stream()` says so), so the report goes out now.
                    self.end(Outcome::Completed);
                }
                return Poll::Ready(Some(Ok(frame)));
            }

            match &mut self.phase {
                Phase::Flushing | Phase::Stopped(_) => {
                    self.end(Outcome::Completed);
                    return Poll::Ready(None);
                }
                Phase::Streaming(_) if frames == FRAMES_PER_POLL => yielding = true,
                Phase::Streaming(body) => match body.as_mut().poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        frames += 1;
                        let ended = body.is_end_stream();
                        let now = Instant::now();
                        self.on_upstream_frame(frame, now);
                        if ended && matches!(self.phase, Phase::Streaming(_)) {
                            self.finish_upstream(now);
                        }
                        continue;
                    }
                    Poll::Ready(Some(Err(error))) => {
                        let error: BoxError = error.into();
                        if live.engine.config().upstream_errors == UpstreamErrorPolicy::Propagate {
                            live.engine.record_error(error.to_string());
                            self.end(Outcome::UpstreamError);
                            return Poll::Ready(Some(Err(error)));
                        }
                        self.fail(
                            Outcome::UpstreamError,
                            "the upstream stream failed",
                            Some(error.to_string()),
                        );
                        continue;
                    }
                    Poll::Ready(None) => {
                        self.finish_upstream(Instant::now());
                        continue;
                    }
                    Poll::Pending => {}
                },
                Phase::AwaitingHead(future) => match future.get_mut().as_mut().poll(cx) {
                    Poll::Ready(result) => {
                        self.on_upstream_response(result, Instant::now());
                        continue;
                    }
                    Poll::Pending => {}
                },
            }

            // The upstream has nothing for now: the timer decides what happens meanwhile.
            match self.poll_timer(cx) {
                Some((Due::KeepAlive, now)) => {
                    let Some(live) = self.live.as_mut() else {
                        continue;
                    };
                    let Some(keep_alive) = &live.engine.config().keep_alive else {
                        continue;
                    };
                    let comment = keep_alive.comment.clone();
                    live.engine.count_keep_alive(comment.len());
                    self.deadlines.on_output(now);
                    return Poll::Ready(Some(Ok(Frame::data(comment))));
                }
                Some((Due::Timeout(outcome), _)) => {
                    self.timeout(outcome);
                    continue;
                }
                Some((Due::Release, now)) => {
                    if let Some(live) = self.live.as_mut() {
                        live.engine.release_expired(now);
                        if live.engine.has_output() {
                            self.deadlines.on_output(now);
                        }
                    }
                    continue;
                }
                None => {
                    if let Some(shutdown) = &mut self.shutdown
                        && shutdown.poll_ended(cx).is_ready()
                    {
                        self.shut_down();
                        continue;
                    }
                    if yielding {
                        cx.waker().wake_by_ref();
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn on_upstream_frame(&mut self, frame: Frame<Bytes>, now: Instant) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                match live.engine.frame(data, now) {
                    Ok(activity) => {
                        if activity.items {
                            self.deadlines
                                .on_items(live.engine.config(), activity.content, now);
                        }
                        if live.engine.has_output() {
                            self.deadlines.on_output(now);
                        }
                        // A busy upstream never lets the timer run: check the deadlines here.
                        if let Some(outcome) = self.deadlines.timeout_due(live.engine.config(), now)
                        {
                            self.timeout(outcome);
                        }
                    }
                    Err(failure)
                        if matches!(
                            failure.outcome,
                            Outcome::PolicyStopped | Outcome::BudgetExceeded
                        ) =>
                    {
                        self.stopped(failure.outcome, &failure.message);
                    }
                    Err(failure) => self.fail(failure.outcome, &failure.message, None),
                }
                return;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            // Trailers end the body: flush the events first, then pass them on.
            self.finish_upstream(now);
            if let Some(live) = self.live.as_mut() {
                live.engine.trailers(trailers);
            }
        }
    }

    /// The upstream answered (early response): start streaming, or end with an error event.
    #[cold]
    #[inline(never)]
    fn on_upstream_response(&mut self, result: Result<http::Response<B>, BoxError>, now: Instant) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let response = match result {
            Ok(response) => response,
            Err(error) => {
                live.engine.failover_error(&*error);
                let detail = format!("upstream call failed: {error}");
                return self.fail(
                    Outcome::UpstreamError,
                    "the upstream call failed",
                    Some(detail),
                );
            }
        };
        let (parts, body) = response.into_parts();
        let framing = live.engine.config().framing(&parts);
        live.engine.head(&parts, framing, now);
        match framing {
            Some(crate::framing::Framing::Encoded) => {
                // The client was told `text/event-stream` already, with no encoding: the
                // compressed bytes cannot follow. It gets an error event instead.
                let message = "the upstream's stream is compressed (Content-Encoding), \
                               which an early response cannot pass on";
                self.fail(Outcome::UpstreamError, message, None);
            }
            Some(_) => {
                self.deadlines.on_head(live.engine.config(), now);
                self.phase = Phase::Streaming(Box::pin(body));
            }
            None => {
                // The client learns the status (a 429 says "later"); the report also keeps
                // what came instead, which can name internals.
                let kind = parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("no content type");
                let message = format!("the upstream answered {}, not a stream", parts.status);
                let detail = format!("{message} ({kind})");
                self.fail(Outcome::UpstreamError, &message, Some(detail));
            }
        }
    }

    /// The upstream body ended (or sent trailers): flush and say how it ended.
    #[cold]
    #[inline(never)]
    fn finish_upstream(&mut self, now: Instant) {
        self.phase = Phase::Flushing;
        let Some(live) = self.live.as_mut() else {
            return;
        };
        if let Some(failure) = live.engine.finish(now) {
            live.engine.fail(failure.outcome, &failure.message, None);
        }
    }

    /// End the stream with a failure: drop the upstream, queue the error event.
    #[cold]
    #[inline(never)]
    fn fail(&mut self, outcome: Outcome, message: &str, detail: Option<String>) {
        self.phase = Phase::Flushing;
        if let Some(live) = self.live.as_mut() {
            live.engine.fail(outcome, message, detail);
        }
    }

    /// A policy stopped the stream (its provider-shaped end is queued; `outcome` is
    /// `PolicyStopped` or `BudgetExceeded`). After a policy stop the upstream is kept for
    /// [`end`](Self::end), which drains it (for the provider's own final usage) or drops it.
    /// After a budget stop it is dropped now, drain or not: reading on would let the upstream
    /// go on generating, and charging, past the budget the stop enforces.
    #[cold]
    #[inline(never)]
    fn stopped(&mut self, outcome: Outcome, message: &str) {
        let phase = std::mem::replace(&mut self.phase, Phase::Flushing);
        if let Phase::Streaming(body) = phase
            && outcome != Outcome::BudgetExceeded
        {
            self.phase = Phase::Stopped(body);
        }
        if let Some(live) = self.live.as_mut() {
            live.engine.fail(outcome, message, None);
        }
    }

    /// A deadline passed.
    #[cold]
    #[inline(never)]
    fn timeout(&mut self, outcome: Outcome) {
        let Some(live) = self.live.as_ref() else {
            return;
        };
        if matches!(self.phase, Phase::Flushing | Phase::Stopped(_)) {
            return;
        }
        let message = timeout_message(live.engine.config(), outcome);
        self.fail(outcome, &message, None);
    }

    /// The server is shutting down: end with the error event, once.
    #[cold]
    #[inline(never)]
    fn shut_down(&mut self) {
        self.shutdown = None;
        if self.live.is_some() && !matches!(self.phase, Phase::Flushing | Phase::Stopped(_)) {
            self.fail(Outcome::ServerShutdown, "the server is shutting down", None);
        }
    }

    /// Make the report and hand it to the sink. Once.
    #[cold]
    #[inline(never)]
    fn end(&mut self, outcome: Outcome) {
        let phase = std::mem::replace(&mut self.phase, Phase::Flushing);
        let Some(mut live) = self.live.take() else {
            return;
        };
        if let Phase::Stopped(body) = phase {
            // After a policy stop: the upstream's own end (and final usage) is still to come.
            // The report (`PolicyStopped`, recorded already) is made when the drain ends, or
            // now when the layer does not drain.
            return (self.on_drop)(live, Phase::Streaming(body));
        }
        let report = live.engine.close(outcome, Instant::now());
        live.on_end.on_end(report);
    }

    /// Arm the one timer for the next deadline and poll it. The timer is only moved when the
    /// next deadline came earlier; otherwise it fires early, finds nothing due and re-arms.
    ///
    /// A policy's held events wake it too, when they reach the holdback's time cap
    /// ([`Due::Release`]); deadlines and keep-alives due at the same time go first.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Option<(Due, Instant)> {
        let engine = &self.live.as_ref()?.engine;
        let config = engine.config();
        let held_until = engine.held_until();
        let next = |deadlines: &Deadlines| match (deadlines.next(config), held_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        loop {
            let next_at = next(&self.deadlines)?;
            let sleep = match &mut self.timer {
                None => self.timer.insert(Box::pin(sleep_until(next_at))),
                Some(sleep) => {
                    if sleep.deadline() > next_at {
                        sleep.as_mut().reset(next_at);
                    }
                    sleep
                }
            };
            if sleep.as_mut().poll(cx).is_pending() {
                return None;
            }
            let now = Instant::now();
            if let Some(due) = self.deadlines.due(config, now) {
                return Some((due, now));
            }
            if held_until.is_some_and(|at| now >= at) {
                return Some((Due::Release, now));
            }
            // Activity moved the deadline: wait for the new one.
            let next_at = next(&self.deadlines)?;
            if let Some(sleep) = &mut self.timer {
                sleep.as_mut().reset(next_at);
            }
        }
    }
}

impl<B, O, E> Drop for StreamState<B, O, E> {
    fn drop(&mut self) {
        // Dropped before the end: the client went away.
        if let Some(live) = self.live.take() {
            let phase = match std::mem::replace(&mut self.phase, Phase::Flushing) {
                // Stopped, the end not yet read: drained (or dropped) all the same.
                Phase::Stopped(body) => Phase::Streaming(body),
                phase => phase,
            };
            (self.on_drop)(live, phase);
        }
    }
}

/// The report of a streaming request that was answered with something else (an error in
/// JSON, a `429`): the body passes through untouched, and the report is made once, when it
/// ends or is dropped.
pub(crate) struct AnswerReport<O, E> {
    live: Option<Live<O, E>>,
    /// Makes the report; chosen where `Drop` cannot name the bounds.
    close: fn(Live<O, E>, Outcome),
}

impl<O: Observer, E: OnEnd> AnswerReport<O, E> {
    pub(crate) fn new(live: Live<O, E>) -> Self {
        Self {
            live: Some(live),
            close: close_answer::<O, E>,
        }
    }

    fn passed(&mut self, data: &Bytes) {
        if let Some(live) = self.live.as_mut() {
            live.engine.passed(data);
        }
    }

    /// The body ended: whole (`complete`), or with an error. A `304 Not Modified` is a
    /// complete answer too (the client's copy is current).
    pub(crate) fn end(&mut self, complete: bool) {
        let Some(mut live) = self.live.take() else {
            return;
        };
        let outcome = match live.engine.status() {
            Some(status)
                if complete
                    && (status.is_success() || status == http::StatusCode::NOT_MODIFIED) =>
            {
                Outcome::Completed
            }
            Some(status) if complete => {
                live.engine
                    .record_error(format!("the upstream answered {status}, not a stream"));
                Outcome::UpstreamError
            }
            _ => {
                live.engine
                    .record_error("the upstream's answer failed".to_owned());
                Outcome::UpstreamError
            }
        };
        close_answer(live, outcome);
    }
}

fn close_answer<O: Observer, E: OnEnd>(mut live: Live<O, E>, outcome: Outcome) {
    let report = live.engine.close(outcome, Instant::now());
    live.on_end.on_end(report);
}

impl<O, E> Drop for AnswerReport<O, E> {
    fn drop(&mut self) {
        // Dropped before its end: the client went away.
        if let Some(live) = self.live.take() {
            (self.close)(live, Outcome::ClientDisconnected);
        }
    }
}

/// The default [`StreamState::on_drop`]: cancel the upstream (by dropping it) and report
/// the disconnect with what was seen so far.
pub(crate) fn report_disconnect<B, O: Observer, E: OnEnd>(mut live: Live<O, E>, phase: Phase<B>) {
    drop(phase);
    live.permits.clear();
    let report = live
        .engine
        .close(Outcome::ClientDisconnected, Instant::now());
    live.on_end.on_end(report);
}
