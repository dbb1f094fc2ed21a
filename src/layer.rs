//! [`SseLayer`], the [`Sse`] service and its [`SseFuture`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};
use tower_layer::Layer;
use tower_service::Service;

use crate::BoxError;
use crate::body::{Live, SseBody, StreamState, Timers, Upstream, after, report_disconnect};
use crate::config::{Config, ErrorEvent, KeepAlive, UpstreamErrorPolicy};
use crate::engine::Engine;
use crate::observe::Observer;
use crate::provider::{Classifier, Provider};
use crate::report::{Framing, OnEnd, Outcome, StreamReport};
use crate::sse::EventRef;

/// Handles streaming responses: whole events, keep-alives, deadlines, observers and one
/// end-of-stream report. See the [crate docs](crate) for the full picture.
///
/// A report is made for every response handled as a stream, and for every streaming
/// request (see [`streaming_request`](Self::streaming_request)) that ends before its
/// response head: a `504` from the header timeout, a client that left first
/// ([`Outcome::ClientDisconnected`]), or an inner service that failed
/// ([`Outcome::UpstreamError`]). Compressed responses (a `Content-Encoding` other than
/// `identity`) pass through undecoded: strip `Accept-Encoding` towards the upstream to meter
/// them.
///
/// Everything is off by default except the event size limit (8 MiB): a bare `SseLayer`
/// decodes and re-cuts SSE responses at event boundaries, forwards them byte for byte and
/// reports each stream to its sink.
///
/// ```
/// use std::time::Duration;
/// use tower_sse::{KeepAlive, SseLayer, StreamReport};
///
/// let layer = SseLayer::new()
///     .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
///     .first_event_timeout(Duration::from_secs(120))
///     .idle_timeout(Duration::from_secs(30))
///     .on_end(|report: StreamReport| println!("{} after {:?}", report.outcome, report.duration()));
/// # let _ = layer;
/// ```
#[must_use]
pub struct SseLayer<O = (), E = ()> {
    config: Arc<Config>,
    observer: O,
    on_end: E,
}

impl SseLayer {
    /// A layer with the defaults.
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config::default()),
            observer: (),
            on_end: (),
        }
    }
}

impl Default for SseLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<O: Clone, E: Clone> Clone for SseLayer<O, E> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            observer: self.observer.clone(),
            on_end: self.on_end.clone(),
        }
    }
}

impl<O, E> fmt::Debug for SseLayer<O, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseLayer")
            .field("config", &self.config)
            .field("observer", &std::any::type_name::<O>())
            .field("on_end", &std::any::type_name::<E>())
            .finish()
    }
}

impl<O, E> SseLayer<O, E> {
    fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// Send keep-alive comments when nothing went to the client for a while.
    ///
    /// One timer per stream, re-armed by every frame sent; comments only go between whole
    /// events. Off by default.
    pub fn keep_alive(self, keep_alive: KeepAlive) -> Self {
        self.with(|c| c.keep_alive = Some(keep_alive))
    }

    /// Answer streaming requests at once with `200 OK` and `text/event-stream`, and send
    /// keep-alives while the upstream call is still pending (reasoning models can think for
    /// minutes before their first byte; load balancers cut idle connections).
    ///
    /// A request counts as streaming when it accepts `text/event-stream` or carries the
    /// [`StreamingRequest`](crate::StreamingRequest) extension (see
    /// [`streaming_request`](Self::streaming_request) to decide otherwise). In this mode an
    /// upstream failure before the first event becomes an error event. Off by default: the
    /// upstream's real status and headers are returned.
    pub fn early_response(self, enabled: bool) -> Self {
        self.with(|c| c.early_response = enabled)
    }

    /// Decide which requests are streaming ones, before their response exists. Used for
    /// [`early_response`](Self::early_response) and for timeouts while waiting for the
    /// response head.
    pub fn streaming_request<F>(self, predicate: F) -> Self
    where
        F: Fn(&http::request::Parts) -> bool + Send + Sync + 'static,
    {
        self.with(|c| c.streaming_request = Some(Arc::new(predicate)))
    }

    /// End the stream when no content event arrived this long after the request (measured
    /// from its arrival at the layer). Content is decided by the provider format, or by
    /// [`content_predicate`](Self::content_predicate).
    ///
    /// For a streaming request whose response head has not arrived by then, the layer
    /// answers `504 Gateway Timeout` (unless early response is on).
    pub fn first_event_timeout(self, timeout: Duration) -> Self {
        self.with(|c| c.first_event_timeout = Some(timeout))
    }

    /// End the stream when the upstream sent no complete event (or comment) for this long.
    /// This layer's keep-alives do not count as activity.
    ///
    /// When a first-event timeout is set, the idle timeout starts with the first content
    /// event; otherwise it starts with the response head.
    pub fn idle_timeout(self, timeout: Duration) -> Self {
        self.with(|c| c.idle_timeout = Some(timeout))
    }

    /// End the stream this long after the request arrived, whatever it is doing.
    pub fn total_timeout(self, timeout: Duration) -> Self {
        self.with(|c| c.total_timeout = Some(timeout))
    }

    /// What clients receive when their stream ends in failure. Default:
    /// [`ErrorEvent::openai`].
    pub fn error_event(self, error_event: ErrorEvent) -> Self {
        self.with(|c| c.error_event = error_event)
    }

    /// What to do when the upstream body fails mid-stream. Default: send the error event
    /// and end cleanly.
    pub fn on_upstream_error(self, policy: UpstreamErrorPolicy) -> Self {
        self.with(|c| c.upstream_errors = policy)
    }

    /// The largest upstream event (or JSON line) accepted, in bytes. A larger one ends the
    /// stream with the error event and outcome [`Outcome::EventTooLarge`]. Default: 8 MiB.
    pub fn max_event_size(self, limit: usize) -> Self {
        self.with(|c| c.max_event_size = limit)
    }

    /// Deliver a final event that the upstream ended without its blank line (some servers
    /// do), instead of discarding it as the standard says. Off by default.
    pub fn lenient_eof(self, lenient: bool) -> Self {
        self.with(|c| c.lenient_eof = lenient)
    }

    /// Also handle newline-delimited JSON responses (`application/x-ndjson`,
    /// `application/jsonl`, …), reframed into SSE: each line becomes `data: <line>` and the
    /// content type becomes `text/event-stream`. Off by default.
    pub fn json_lines(self, enabled: bool) -> Self {
        self.with(|c| c.json_lines = enabled)
    }

    /// Decide yourself which responses are streams and how they are framed (`None` passes
    /// a response through untouched). The default looks at the content type.
    pub fn framing<F>(self, predicate: F) -> Self
    where
        F: Fn(&http::response::Parts) -> Option<Framing> + Send + Sync + 'static,
    {
        self.with(|c| c.framing = Some(Arc::new(predicate)))
    }

    /// Forward upstream comments (pings) to the client. On by default: clients watch for
    /// them to detect stalls.
    pub fn forward_comments(self, forward: bool) -> Self {
        self.with(|c| c.forward_comments = forward)
    }

    /// Decide which events carry content (for the first-event timeout, time to first token
    /// and inter-token latency). The default depends on the provider format.
    pub fn content_predicate<F>(self, predicate: F) -> Self
    where
        F: Fn(&EventRef<'_>, Provider) -> bool + Send + Sync + 'static,
    {
        self.with(|c| c.content_predicate = Some(Arc::new(predicate)))
    }

    /// When the client goes away, keep reading the upstream in a spawned task for up to
    /// `limit`, so that the provider's final usage reaches the report (the report then says
    /// [`Outcome::ClientDisconnected`] and carries the usage the provider reported).
    ///
    /// Needs a Tokio runtime where the body is dropped; without one the upstream is
    /// cancelled as by default. Costs the upstream tokens you no longer deliver. Note that a
    /// [`StreamLimitLayer`](crate::StreamLimitLayer) permit is released when the client's body
    /// is dropped, while the drain keeps the upstream busy for up to `limit`: the limit then no
    /// longer bounds upstream concurrency.
    #[cfg(feature = "drain")]
    pub fn drain_on_disconnect(self, limit: Duration) -> Self {
        self.with(|c| c.drain = Some(limit))
    }

    /// Watch each stream with this observer (cloned per request). Combine several with a
    /// tuple.
    pub fn observer<O2>(self, observer: O2) -> SseLayer<O2, E> {
        SseLayer {
            config: self.config,
            observer,
            on_end: self.on_end,
        }
    }

    /// Send each stream's report here (cloned per request, called once per stream).
    pub fn on_end<E2>(self, on_end: E2) -> SseLayer<O, E2> {
        SseLayer {
            config: self.config,
            observer: self.observer,
            on_end,
        }
    }
}

impl<S, O: Clone, E: Clone> Layer<S> for SseLayer<O, E> {
    type Service = Sse<S, O, E>;

    fn layer(&self, inner: S) -> Self::Service {
        Sse {
            inner,
            config: self.config.clone(),
            observer: self.observer.clone(),
            on_end: self.on_end.clone(),
        }
    }
}

/// The service of [`SseLayer`].
pub struct Sse<S, O = (), E = ()> {
    inner: S,
    config: Arc<Config>,
    observer: O,
    on_end: E,
}

impl<S: Clone, O: Clone, E: Clone> Clone for Sse<S, O, E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: self.config.clone(),
            observer: self.observer.clone(),
            on_end: self.on_end.clone(),
        }
    }
}

impl<S: fmt::Debug, O, E> fmt::Debug for Sse<S, O, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sse")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S, O, E> Sse<S, O, E> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwrap the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody, O, E> Service<Request<ReqBody>> for Sse<S, O, E>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
    O: Observer + Clone + Send + 'static,
    E: OnEnd + Clone + Send + 'static,
{
    type Response = Response<SseBody<ResBody, O, E>>;
    type Error = S::Error;
    type Future = SseFuture<S::Future, ResBody, O, E>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let started_at = Instant::now();
        let (parts, body) = request.into_parts();
        let mut observer = self.observer.clone();
        observer.on_request(&parts);
        let streaming = self.config.is_streaming_request(&parts);
        let hint = Provider::from_path(parts.uri.path());
        let future = self.inner.call(Request::from_parts(parts, body));
        let setup = Setup {
            config: self.config.clone(),
            observer,
            on_end: self.on_end.clone(),
            started_at,
            hint,
        };

        if self.config.early_response && streaming {
            let upstream: crate::body::UpstreamFuture<ResBody> =
                Box::pin(async move { future.await.map_err(Into::into) });
            let state = setup.into_state(Upstream::Waiting(upstream), started_at);
            let mut response = Response::new(SseBody::stream(state));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            return SseFuture {
                kind: FutureKind::Ready {
                    response: Some(response),
                },
            };
        }

        // While waiting for the head of a streaming request, the first-event and total
        // timeouts already run.
        let header_deadline = streaming
            .then(|| {
                let first = self
                    .config
                    .first_event_timeout
                    .map(|d| (after(started_at, d), Outcome::FirstEventTimeout));
                let total = self
                    .config
                    .total_timeout
                    .map(|d| (after(started_at, d), Outcome::DeadlineExceeded));
                [first, total]
                    .into_iter()
                    .flatten()
                    .min_by_key(|(at, _)| *at)
            })
            .flatten();
        SseFuture {
            kind: FutureKind::Waiting {
                future,
                deadline: header_deadline.map(|(at, _)| sleep_until(at)),
                timeout_outcome: header_deadline.map_or(Outcome::FirstEventTimeout, |(_, o)| o),
                setup: Pending {
                    setup: Some(setup),
                    report: streaming.then_some(report_before_head::<O, E> as fn(_, _, _, _)),
                },
            },
        }
    }
}

/// The setup of a request still waiting for its response head. When it is dropped there (the
/// client left) or the inner service fails, a streaming request still gets its report.
struct Pending<O, E> {
    setup: Option<Setup<O, E>>,
    /// Set for streaming requests, where the bounds that `Drop` cannot name are known.
    report: Option<fn(Setup<O, E>, Outcome, Option<String>, u64)>,
}

impl<O, E> Pending<O, E> {
    fn take(&mut self) -> Option<Setup<O, E>> {
        self.setup.take()
    }
}

impl<O, E> Drop for Pending<O, E> {
    fn drop(&mut self) {
        if let (Some(setup), Some(report)) = (self.setup.take(), self.report) {
            report(setup, Outcome::ClientDisconnected, None, 0);
        }
    }
}

/// Report a streaming request that ended before any stream: the observers see the end, the
/// sink gets the report. `bytes_out` is what the client was sent instead (a 504 body).
fn report_before_head<O: Observer, E: OnEnd>(
    setup: Setup<O, E>,
    outcome: Outcome,
    error: Option<String>,
    bytes_out: u64,
) {
    let Setup {
        mut observer,
        on_end,
        started_at,
        hint,
        ..
    } = setup;
    let mut report = StreamReport::new(started_at);
    report.provider = hint;
    report.outcome = outcome;
    report.error = error;
    report.bytes_out = bytes_out;
    report.ended_at = Instant::now();
    observer.on_end(&mut report);
    on_end.on_end(report);
}

/// What a stream needs from the service to start.
struct Setup<O, E> {
    config: Arc<Config>,
    observer: O,
    on_end: E,
    started_at: Instant,
    hint: Provider,
}

impl<O: Observer + Send + 'static, E: OnEnd + Send + 'static> Setup<O, E> {
    fn into_state<B>(self, upstream: Upstream<B>, last_output_at: Instant) -> StreamState<B, O, E>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let mut report = StreamReport::new(self.started_at);
        report.provider = self.hint;
        let classifier = Classifier::new(self.hint, self.config.content_predicate.clone());
        let on_drop = on_drop_for::<B, O, E>(&self.config);
        let engine = Engine::new(self.config, self.observer, report, classifier);
        StreamState {
            upstream,
            live: Some(Live {
                engine,
                on_end: self.on_end,
                ending: false,
            }),
            timers: Timers {
                started_at: self.started_at,
                last_output_at,
                last_item_at: None,
                content_seen: false,
            },
            timer: None,
            on_drop,
        }
    }
}

/// Cancel, or drain when configured (and the feature is on).
fn on_drop_for<B, O, E>(config: &Config) -> fn(Live<O, E>, Upstream<B>)
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    O: Observer + Send + 'static,
    E: OnEnd + Send + 'static,
{
    #[cfg(feature = "drain")]
    if config.drain.is_some() {
        return crate::drain::drain_after_disconnect::<B, O, E>;
    }
    let _ = config;
    report_disconnect::<B, O, E>
}

pin_project! {
    /// The response future of [`Sse`].
    pub struct SseFuture<F, B, O, E> {
        #[pin]
        kind: FutureKind<F, B, O, E>,
    }
}

pin_project! {
    #[project = FutureProj]
    enum FutureKind<F, B, O, E> {
        Waiting {
            #[pin]
            future: F,
            #[pin]
            deadline: Option<Sleep>,
            timeout_outcome: Outcome,
            setup: Pending<O, E>,
        },
        Ready { response: Option<Response<SseBody<B, O, E>>> },
    }
}

impl<F, B, O, E> fmt::Debug for SseFuture<F, B, O, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseFuture").finish_non_exhaustive()
    }
}

impl<F, B, Er, O, E> Future for SseFuture<F, B, O, E>
where
    F: Future<Output = Result<Response<B>, Er>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    O: Observer + Send + 'static,
    E: OnEnd + Send + 'static,
{
    type Output = Result<Response<SseBody<B, O, E>>, Er>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            FutureProj::Ready { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
            FutureProj::Waiting {
                future,
                deadline,
                timeout_outcome,
                setup,
            } => {
                if let Poll::Ready(result) = future.poll(cx) {
                    let streaming = setup.report.is_some();
                    let Some(taken) = setup.take() else {
                        return Poll::Pending;
                    };
                    return Poll::Ready(match result {
                        Ok(response) => Ok(start_stream(taken, response)),
                        Err(error) => {
                            if streaming {
                                let error =
                                    Some("the inner service failed before answering".to_string());
                                report_before_head(taken, Outcome::UpstreamError, error, 0);
                            }
                            Err(error)
                        }
                    });
                }
                if let Some(deadline) = deadline.as_pin_mut()
                    && deadline.poll(cx).is_ready()
                    && let Some(setup) = setup.take()
                {
                    return Poll::Ready(Ok(head_timeout(setup, *timeout_outcome)));
                }
                Poll::Pending
            }
        }
    }
}

/// The response head arrived: pass it through, or start a stream.
fn start_stream<B, O, E>(setup: Setup<O, E>, response: Response<B>) -> Response<SseBody<B, O, E>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    O: Observer + Send + 'static,
    E: OnEnd + Send + 'static,
{
    let (mut parts, body) = response.into_parts();
    let Some(framing) = setup.config.framing(&parts) else {
        return Response::from_parts(parts, SseBody::pass_through(body));
    };
    let now = Instant::now();
    let mut state = setup.into_state(Upstream::Body(Box::pin(body)), now);
    if let Some(live) = state.live.as_mut() {
        let engine = &mut live.engine;
        engine.set_framing(framing);
        engine.report.status = Some(parts.status);
        engine.report.response_at = Some(now);
        engine.observer.on_response(&parts, &mut engine.report);
        if engine.config.first_event_timeout.is_none() {
            state.timers.last_item_at = Some(now);
        }
    }
    // The body changes length (keep-alives, error events), and NDJSON becomes SSE.
    parts.headers.remove(CONTENT_LENGTH);
    if framing == Framing::JsonLines {
        parts
            .headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    }
    Response::from_parts(parts, SseBody::stream(state))
}

/// A streaming request whose response head did not come in time: `504 Gateway Timeout`.
fn head_timeout<B, O, E>(setup: Setup<O, E>, outcome: Outcome) -> Response<SseBody<B, O, E>>
where
    O: Observer,
    E: OnEnd,
{
    let message = "the upstream did not answer in time";
    let body = format!(
        r#"{{"error":{{"type":"{}","message":"{message}"}}}}"#,
        outcome.as_str()
    );
    report_before_head(setup, outcome, Some(message.to_string()), body.len() as u64);
    let mut response = Response::new(SseBody::full(Bytes::from(body)));
    *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
