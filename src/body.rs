//! [`SseBody`]: the one body wrapper.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};

use crate::BoxError;
use crate::config::UpstreamErrorPolicy;
use crate::engine::Engine;
use crate::observe::Observer;
use crate::report::{OnEnd, Outcome};

/// The upstream call, when the layer answered before it did (early response).
pub(crate) type UpstreamFuture<B> =
    Pin<Box<dyn Future<Output = Result<http::Response<B>, BoxError>> + Send>>;

pin_project! {
    /// The response body of [`Sse`](crate::Sse).
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
        Stream { state: StreamState<B, O, E> },
        Full { data: Option<Bytes> },
    }
}

pub(crate) enum Upstream<B> {
    Waiting(UpstreamFuture<B>),
    Body(Pin<Box<B>>),
    Gone,
}

/// What lives while the report is still to be made.
pub(crate) struct Live<O, E> {
    pub(crate) engine: Engine<O>,
    pub(crate) on_end: E,
    /// The upstream is done: what is queued is the last of it.
    pub(crate) ending: bool,
}

pub(crate) struct StreamState<B, O, E> {
    pub(crate) upstream: Upstream<B>,
    pub(crate) live: Option<Live<O, E>>,
    pub(crate) timers: Timers,
    /// The one timer of the stream, created on first use (boxed, so that the body is
    /// `Unpin` whenever the upstream body is).
    pub(crate) timer: Option<Pin<Box<Sleep>>>,
    /// What to do when the body is dropped before its end. Chosen where the bounds that
    /// `Drop` cannot name are known: report the disconnect, or keep draining the upstream.
    pub(crate) on_drop: fn(Live<O, E>, Upstream<B>),
}

/// When things happened, for the one timer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timers {
    pub(crate) started_at: Instant,
    /// The last frame handed to the client (keep-alives count).
    pub(crate) last_output_at: Instant,
    /// The last complete upstream item; `None` while the idle timeout does not apply yet.
    pub(crate) last_item_at: Option<Instant>,
    /// Whether a content event arrived (ends the first-event timeout).
    pub(crate) content_seen: bool,
}

enum Due {
    KeepAlive,
    Timeout(Outcome),
}

impl<B, O, E> SseBody<B, O, E> {
    pub(crate) fn pass_through(body: B) -> Self {
        Self {
            kind: Kind::PassThrough { body },
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
            Kind::Stream { .. } => "Stream",
            Kind::Full { .. } => "Full",
        };
        f.debug_struct("SseBody")
            .field("kind", &kind)
            .finish_non_exhaustive()
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
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Stream { state } => state.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::PassThrough { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
            Kind::Stream { state } => state.live.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::PassThrough { body } => body.size_hint(),
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
        loop {
            let Some(live) = self.live.as_mut() else {
                return Poll::Ready(None);
            };

            // Whole events already decoded go first.
            if let Some(frame) = live.engine.pop() {
                if live.ending && !live.engine.has_output() {
                    // The last frame: the client will not poll again (hyper stops once
                    // `is_end_stream()` says so), so the report goes out now.
                    self.end(Outcome::Completed);
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            if live.ending {
                self.end(Outcome::Completed);
                return Poll::Ready(None);
            }

            match &mut self.upstream {
                Upstream::Body(body) => match body.as_mut().poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        let now = Instant::now();
                        self.on_upstream_frame(frame, now);
                        if let Upstream::Body(body) = &self.upstream
                            && body.is_end_stream()
                        {
                            self.finish_upstream(now);
                        }
                        continue;
                    }
                    Poll::Ready(Some(Err(error))) => {
                        let error: BoxError = error.into();
                        if live.engine.config.upstream_errors == UpstreamErrorPolicy::Propagate {
                            live.engine.report.error = Some(error.to_string());
                            self.end(Outcome::UpstreamError);
                            return Poll::Ready(Some(Err(error)));
                        }
                        live.engine.fail_privately(
                            Outcome::UpstreamError,
                            "the upstream stream failed",
                            error.to_string(),
                        );
                        live.ending = true;
                        self.upstream = Upstream::Gone;
                        continue;
                    }
                    Poll::Ready(None) => {
                        self.finish_upstream(Instant::now());
                        continue;
                    }
                    Poll::Pending => {}
                },
                Upstream::Waiting(future) => match future.as_mut().poll(cx) {
                    Poll::Ready(result) => {
                        self.on_upstream_response(result, Instant::now());
                        continue;
                    }
                    Poll::Pending => {}
                },
                Upstream::Gone => {
                    live.ending = true;
                    continue;
                }
            }

            // The upstream has nothing for now: the timer decides what happens meanwhile.
            match self.poll_timer(cx) {
                Some((Due::KeepAlive, now)) => {
                    let Some(live) = self.live.as_mut() else {
                        continue;
                    };
                    let Some(keep_alive) = &live.engine.config.keep_alive else {
                        continue;
                    };
                    let comment = keep_alive.comment.clone();
                    live.engine.count_keep_alive(comment.len());
                    self.timers.last_output_at = now;
                    return Poll::Ready(Some(Ok(Frame::data(comment))));
                }
                Some((Due::Timeout(outcome), now)) => {
                    self.timeout(outcome, now);
                    continue;
                }
                None => return Poll::Pending,
            }
        }
    }

    fn on_upstream_frame(&mut self, frame: Frame<Bytes>, now: Instant) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                match live.engine.push(data, now) {
                    Ok(activity) => {
                        if activity.content {
                            self.timers.content_seen = true;
                        }
                        if activity.items
                            && (self.timers.content_seen
                                || live.engine.config.first_event_timeout.is_none())
                        {
                            self.timers.last_item_at = Some(now);
                        }
                        if live.engine.has_output() {
                            self.timers.last_output_at = now;
                        }
                        // A busy upstream never lets the timer run: check the deadlines here.
                        if let Some(Due::Timeout(outcome)) = self.due(now) {
                            self.timeout(outcome, now);
                        }
                    }
                    Err(outcome) => {
                        let message = live.engine.report.error.take().unwrap_or_default();
                        live.engine.fail(outcome, message);
                        live.ending = true;
                        self.upstream = Upstream::Gone;
                    }
                }
                return;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            // Trailers end the body: flush the events first, then pass them on.
            self.finish_upstream(now);
            if let Some(live) = self.live.as_mut() {
                live.engine.push_trailers(trailers);
            }
        }
    }

    fn on_upstream_response(&mut self, result: Result<http::Response<B>, BoxError>, now: Instant) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let response = match result {
            Ok(response) => response,
            Err(error) => {
                self.upstream = Upstream::Gone;
                live.engine.fail_privately(
                    Outcome::UpstreamError,
                    "the upstream call failed",
                    format!("upstream call failed: {error}"),
                );
                live.ending = true;
                return;
            }
        };
        let (parts, body) = response.into_parts();
        live.engine.report.status = Some(parts.status);
        live.engine.report.response_at = Some(now);
        match live.engine.config.framing(&parts) {
            Some(framing) => {
                live.engine.set_framing(framing);
                live.engine
                    .observer
                    .on_response(&parts, &mut live.engine.report);
                self.upstream = Upstream::Body(Box::pin(body));
                if self.timers.last_item_at.is_none()
                    && live.engine.config.first_event_timeout.is_none()
                {
                    self.timers.last_item_at = Some(now);
                }
            }
            None => {
                self.upstream = Upstream::Gone;
                let kind = parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("no content type");
                live.engine.fail(
                    Outcome::UpstreamError,
                    format!(
                        "upstream answered {} with {kind}, not a stream",
                        parts.status
                    ),
                );
                live.ending = true;
            }
        }
    }

    /// The upstream body ended (or sent trailers): flush and say how it ended.
    fn finish_upstream(&mut self, now: Instant) {
        self.upstream = Upstream::Gone;
        let Some(live) = self.live.as_mut() else {
            return;
        };
        if let Some(outcome) = live.engine.finish(now) {
            let message = match outcome {
                Outcome::UpstreamTruncated => {
                    "the upstream ended in the middle of an event".to_string()
                }
                _ => live.engine.report.error.take().unwrap_or_default(),
            };
            live.engine.fail(outcome, message);
        }
        live.ending = true;
    }

    /// A deadline passed: drop the upstream, queue the error event, end.
    fn timeout(&mut self, outcome: Outcome, now: Instant) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        if live.ending {
            return;
        }
        self.upstream = Upstream::Gone;
        let config = &live.engine.config;
        let message = match outcome {
            Outcome::FirstEventTimeout => format!(
                "no content from the upstream within {:?}",
                config.first_event_timeout.unwrap_or_default()
            ),
            Outcome::IdleTimeout => format!(
                "no upstream event for {:?}",
                config.idle_timeout.unwrap_or_default()
            ),
            _ => format!(
                "the stream ran past its deadline of {:?}",
                config.total_timeout.unwrap_or_default()
            ),
        };
        live.engine.fail(outcome, message);
        live.ending = true;
        let _ = now;
    }

    /// Make the report and hand it to the sink. Once.
    fn end(&mut self, outcome: Outcome) {
        if let Some(mut live) = self.live.take() {
            let report = live.engine.close(outcome, Instant::now());
            live.on_end.on_end(report);
        }
        self.upstream = Upstream::Gone;
    }

    /// What the timer should fire for next.
    fn next_deadline(&self) -> Option<Instant> {
        let config = &self.live.as_ref()?.engine.config;
        let t = &self.timers;
        let candidates = [
            config
                .keep_alive
                .as_ref()
                .map(|k| after(t.last_output_at, k.interval)),
            config.total_timeout.map(|d| after(t.started_at, d)),
            config
                .first_event_timeout
                .filter(|_| !t.content_seen)
                .map(|d| after(t.started_at, d)),
            config
                .idle_timeout
                .zip(t.last_item_at)
                .map(|(d, at)| after(at, d)),
        ];
        candidates.into_iter().flatten().min()
    }

    /// What is due at `now`: deadlines first, then a keep-alive.
    fn due(&self, now: Instant) -> Option<Due> {
        let config = &self.live.as_ref()?.engine.config;
        let t = &self.timers;
        if config
            .total_timeout
            .is_some_and(|d| now >= after(t.started_at, d))
        {
            return Some(Due::Timeout(Outcome::DeadlineExceeded));
        }
        if !t.content_seen
            && config
                .first_event_timeout
                .is_some_and(|d| now >= after(t.started_at, d))
        {
            return Some(Due::Timeout(Outcome::FirstEventTimeout));
        }
        if let (Some(d), Some(at)) = (config.idle_timeout, t.last_item_at)
            && now >= after(at, d)
        {
            return Some(Due::Timeout(Outcome::IdleTimeout));
        }
        if config
            .keep_alive
            .as_ref()
            .is_some_and(|k| now >= after(t.last_output_at, k.interval))
        {
            return Some(Due::KeepAlive);
        }
        None
    }

    /// Arm the one timer for the next deadline and poll it. The timer is only moved when the
    /// next deadline came earlier; otherwise it fires early, finds nothing due and re-arms.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Option<(Due, Instant)> {
        loop {
            let next = self.next_deadline()?;
            let sleep = match &mut self.timer {
                None => self.timer.insert(Box::pin(sleep_until(next))),
                Some(sleep) => {
                    if sleep.deadline() > next {
                        sleep.as_mut().reset(next);
                    }
                    sleep
                }
            };
            if sleep.as_mut().poll(cx).is_pending() {
                return None;
            }
            let now = Instant::now();
            if let Some(due) = self.due(now) {
                return Some((due, now));
            }
            // Activity moved the deadline: wait for the new one.
            let next = self.next_deadline()?;
            if let Some(sleep) = &mut self.timer {
                sleep.as_mut().reset(next);
            }
        }
    }
}

impl<B, O, E> Drop for StreamState<B, O, E> {
    fn drop(&mut self) {
        // Dropped before the end: the client went away.
        if let Some(live) = self.live.take() {
            let upstream = std::mem::replace(&mut self.upstream, Upstream::Gone);
            (self.on_drop)(live, upstream);
        }
    }
}

/// `at + duration`, saturating far in the future: `Duration::MAX` means "never", not a panic.
pub(crate) fn after(at: Instant, duration: Duration) -> Instant {
    at.checked_add(duration)
        .unwrap_or_else(|| at + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// The default [`StreamState::on_drop`]: cancel the upstream (by dropping it) and report
/// the disconnect with what was seen so far.
pub(crate) fn report_disconnect<B, O: Observer, E: OnEnd>(
    mut live: Live<O, E>,
    upstream: Upstream<B>,
) {
    drop(upstream);
    let report = live
        .engine
        .close(Outcome::ClientDisconnected, Instant::now());
    live.on_end.on_end(report);
}
