//! [`SseLayer`]: the settings of the stream layer.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use crate::framing::Framing;
use crate::provider::Provider;
use crate::sse::EventRef;
use crate::stream::Sse;
use crate::stream::config::{Config, ErrorEvent, KeepAliveConfig, UpstreamErrorPolicy};
use crate::stream::local::{AnyThread, Local};

/// Handles streaming responses: whole events, keep-alives, deadlines, observers and one
/// end-of-stream report. See the [crate docs](crate) for the full picture.
///
/// A report is made for every response handled as a stream, and for every streaming
/// request (see [`streaming_request`](Self::streaming_request)) that ends before its
/// response head: a `504` from the header timeout, a client that left first
/// ([`Outcome::ClientDisconnected`](crate::Outcome::ClientDisconnected)), or an inner service that failed
/// ([`Outcome::UpstreamError`](crate::Outcome::UpstreamError)). Compressed responses (a `Content-Encoding` other than
/// `identity`) pass through undecoded: strip `Accept-Encoding` towards the upstream to meter
/// them.
///
/// Everything is off by default except the event size limit (8 MiB): a bare `SseLayer`
/// decodes and re-cuts SSE responses at event boundaries, forwards them byte for byte and
/// reports each stream to its sink.
///
/// ```
/// use std::time::Duration;
/// use tower_sse::{KeepAliveConfig, SseLayer, StreamReport};
///
/// let layer = SseLayer::new()
///     .keep_alive(KeepAliveConfig::new().interval(Duration::from_secs(15)))
///     .first_event_timeout(Duration::from_secs(120))
///     .idle_timeout(Duration::from_secs(30))
///     .on_end(|report: StreamReport| println!("{} after {:?}", report.outcome, report.duration()));
/// # let _ = layer;
/// ```
///
/// `M` is where the stack runs: [`AnyThread`] by default, [`Local`] after
/// [`local`](Self::local).
#[must_use]
pub struct SseLayer<O = (), E = (), M = AnyThread> {
    config: Arc<Config>,
    observer: O,
    on_end: E,
    threads: PhantomData<fn() -> M>,
}

impl SseLayer {
    /// A layer with the defaults.
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config::default()),
            observer: (),
            on_end: (),
            threads: PhantomData,
        }
    }
}

impl Default for SseLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<O: Clone, E: Clone, M> Clone for SseLayer<O, E, M> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            observer: self.observer.clone(),
            on_end: self.on_end.clone(),
            threads: PhantomData,
        }
    }
}

impl<O, E, M> fmt::Debug for SseLayer<O, E, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseLayer")
            .field("config", &self.config)
            .field("observer", &std::any::type_name::<O>())
            .field("on_end", &std::any::type_name::<E>())
            .finish()
    }
}

impl<O, E, M> SseLayer<O, E, M> {
    fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// Send keep-alive comments when nothing went to the client for a while.
    ///
    /// One timer per stream, re-armed by every frame sent; comments only go between whole
    /// events. Off by default.
    pub fn keep_alive(self, keep_alive: KeepAliveConfig) -> Self {
        self.with(|c| c.keep_alive = Some(keep_alive))
    }

    /// Answer streaming requests at once with `200 OK` and `text/event-stream`, and send
    /// keep-alives while the upstream call is still pending (reasoning models can think for
    /// minutes before their first byte; load balancers cut idle connections).
    ///
    /// Only requests that surely stream are answered early: those that carry the
    /// [`StreamingRequest`](crate::request::StreamingRequest) extension (a JSON body with
    /// `"stream": true`, as [`IncludeUsageLayer`](crate::IncludeUsageLayer) marks it), or
    /// whose `Accept` lists `text/event-stream` alone (or what
    /// [`streaming_request`](Self::streaming_request) decides). A request that also accepts
    /// JSON (an MCP Streamable-HTTP client sends `application/json, text/event-stream`) waits
    /// for the upstream's head, so that a JSON answer reaches it as JSON.
    ///
    /// Once answered early, an upstream failure before the first event, or an upstream
    /// answer that is not a stream, becomes an error event (the details, such as the
    /// upstream's status and content type, go to the report only). Off by default: the
    /// upstream's real status and headers are returned.
    pub fn early_response(self, enabled: bool) -> Self {
        self.with(|c| c.early_response = enabled)
    }

    /// Decide which requests are streaming ones, before their response exists. Used for
    /// [`early_response`](Self::early_response), for timeouts while waiting for the
    /// response head, and to report a streaming request answered with something else.
    ///
    /// By default a request is streaming when it carries
    /// [`StreamingRequest`](crate::request::StreamingRequest), its `Accept` lists
    /// `text/event-stream`, or its path is Gemini's `:streamGenerateContent` (which streams
    /// whatever the body says).
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
    /// stream with the error event and outcome [`Outcome::EventTooLarge`](crate::Outcome::EventTooLarge). Default: 8 MiB.
    pub fn max_event_size(self, limit: usize) -> Self {
        self.with(|c| c.max_event_size = limit)
    }

    /// Deliver a final event that the upstream ended without its blank line (some servers
    /// do), instead of discarding it as the standard says. Off by default.
    pub fn lenient_eof(self, lenient: bool) -> Self {
        self.with(|c| c.lenient_eof = lenient)
    }

    /// End a stream whose upstream stopped in the middle of an event with the error event
    /// (`upstream_truncated`). Off by default.
    ///
    /// By default the client gets exactly what it would have got without the layer: the
    /// upstream's last bytes as they came. Its own parser then discards the unfinished event
    /// and applies a complete `retry:` line, as the standard says; a browser's `EventSource`
    /// sees no `error` event the upstream never sent. The report says
    /// [`Outcome::UpstreamTruncated`](crate::Outcome::UpstreamTruncated) either way.
    ///
    /// With this option the unfinished block is withheld (only its `retry:` goes out) and
    /// the error event follows the last whole event. Deadlines, size limits and upstream
    /// failures always end with the error event: there the layer itself cut the stream.
    pub fn error_on_truncation(self, enabled: bool) -> Self {
        self.with(|c| c.error_on_truncation = enabled)
    }

    /// Also handle newline-delimited JSON responses (`application/x-ndjson`,
    /// `application/jsonl`, …), reframed into SSE: each line becomes `data: <line>` and the
    /// content type becomes `text/event-stream`. Off by default.
    ///
    /// A client whose `Accept` asks for NDJSON and not for SSE
    /// ([`framing::wants_json_lines`](crate::framing::wants_json_lines)) gets NDJSON: whole
    /// lines, observed and reported as events, an error as a JSON line
    /// (`{"error":{"type":...,"message":...}}`), and no keep-alive (a comment is not a line).
    pub fn json_lines(self, enabled: bool) -> Self {
        self.with(|c| c.json_lines = enabled)
    }

    /// Add `Cache-Control: no-cache` and `X-Accel-Buffering: no` to every stream the layer
    /// takes, when the upstream did not set them: without them a buffering proxy in front
    /// (nginx by default) holds the events back and delivers them in bursts. Off by default.
    ///
    /// ```
    /// use tower_sse::SseLayer;
    ///
    /// let layer = SseLayer::new().sse_headers(true);
    /// # let _ = layer;
    /// ```
    pub fn sse_headers(self, enabled: bool) -> Self {
        self.with(|c| c.sse_headers = enabled)
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
    /// [`Outcome::ClientDisconnected`](crate::Outcome::ClientDisconnected) and carries the usage the provider reported).
    ///
    /// Needs a Tokio runtime where the body is dropped; without one the upstream is
    /// cancelled as by default. Costs the upstream tokens you no longer deliver.
    ///
    /// A [`StreamLimitLayer`](crate::StreamLimitLayer) outside keeps counting a drained stream:
    /// the drain holds its permit until it ends (for up to `limit`), and only then is the
    /// permit released (before the report is sent). So the limit still bounds how many
    /// upstreams are read at once, and clients that leave free no room while their upstream
    /// is still generating. See [the limit's docs](crate::limit#the-permits-life).
    ///
    /// A stream a [`policy`](Self::policy) stops is drained the same way once the client has
    /// its provider-shaped end: the client's response ends at once, and the report (still
    /// [`Outcome::PolicyStopped`](crate::Outcome::PolicyStopped)) is made when the drain
    /// ends, with the usage the provider reported for what it generated. That drain runs
    /// after the client's response ended, so a `StreamLimitLayer` outside no longer counts
    /// it (it is bounded by `limit` alone).
    #[cfg(feature = "drain")]
    pub fn drain_on_disconnect(self, limit: Duration) -> Self {
        self.with(|c| c.drain = Some(limit))
    }

    /// End the open streams when `shutdown` says so
    /// ([`Shutdown::end_streams`](crate::stream::Shutdown::end_streams)): each sends what it
    /// has, then the error event, and is reported with
    /// [`Outcome::ServerShutdown`](crate::Outcome::ServerShutdown). A streaming request
    /// still waiting for its response head is answered `503 Service Unavailable`.
    pub fn shutdown(self, shutdown: crate::stream::Shutdown) -> Self {
        self.with(|c| c.shutdown = Some(shutdown))
    }

    /// Act on each stream's events with `policy` (cloned per stream): pass, rewrite, drop or
    /// stop each one, after the usage and timing observers counted it and before the digest
    /// hashes what the client receives. See [`crate::policy`]. Calling it again replaces the
    /// policy: compose several in a tuple.
    pub fn policy<P>(self, policy: P) -> Self
    where
        P: crate::policy::Policy + Clone + Send + Sync + 'static,
    {
        let policy = crate::policy::BoxPolicy::new(policy);
        self.with(|c| c.policy = Some(policy))
    }

    /// Hold events back so that the policy sees text spanning events before any of it is
    /// released ([`Holdback`](crate::policy::Holdback); off by default: no added latency).
    pub fn holdback(self, holdback: crate::policy::Holdback) -> Self {
        self.with(|c| c.holdback = holdback)
    }

    /// How long the request body may take to arrive, counted from the request's
    /// [`Arrival`](crate::request::Arrival); `None`: for ever. Default:
    /// [`DEFAULT_UPLOAD_TIMEOUT`](crate::request::DEFAULT_UPLOAD_TIMEOUT) (60 s).
    ///
    /// Every request body reaches the inner service as an
    /// [`UploadBody`](crate::request::UploadBody) held to it, with or without `Accept:
    /// text/event-stream`, on every path: a stalled upload cannot hold a
    /// [`StreamLimitLayer`](crate::StreamLimitLayer)'s permit past it. A body that times out
    /// before the inner service answered makes the answer `408 Request Timeout`, reported
    /// as [`Outcome::RequestTimeout`](crate::Outcome::RequestTimeout), whatever the inner
    /// service answered after reading the failed body (a `400` from an extractor, a `502`
    /// from a proxy, an error). Once the inner service has answered, the body is no longer
    /// held to it (a stream that reads its request while it answers goes on). `None` still
    /// wraps the body (no timer): the inner service's request type does not depend on it.
    ///
    /// A body already held to a deadline outside
    /// ([`UploadDeadlineLayer`](crate::request::UploadDeadlineLayer),
    /// [`IncludeUsageLayer`](crate::IncludeUsageLayer)) keeps that deadline: this one is not
    /// added to it.
    ///
    /// Why a fixed 60 s and not the first-event deadline: it bounds every request, streaming
    /// or not, and the first-event deadline (unset by default) is about how fast the
    /// upstream answers, not the client's upload. With a first-event (or total) timeout
    /// shorter than this, a stalled upload of a streaming request ends at that timeout
    /// (`504`): pass [`request_deadline`](Self::request_deadline) here for a `408` at the
    /// same moment.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_sse::SseLayer;
    ///
    /// let layer = SseLayer::new().upload_timeout(Some(Duration::from_secs(30)));
    /// # let _ = layer;
    /// ```
    pub fn upload_timeout(self, timeout: Option<Duration>) -> Self {
        self.with(|c| c.upload_timeout = timeout)
    }

    /// How long after its arrival a streaming request may go without a content event: the
    /// earlier of the first-event and total timeouts, if any is set. Give it to
    /// [`IncludeUsageLayer::upload_timeout`](crate::IncludeUsageLayer::upload_timeout) so
    /// that the same deadline bounds the request's upload.
    pub fn request_deadline(&self) -> Option<Duration> {
        match (self.config.first_event_timeout, self.config.total_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Watch each stream with this observer (cloned per request). Combine several with a
    /// tuple (of up to 16; tuples nest, so any number compose): a second call replaces the
    /// observer of the first.
    pub fn observer<O2: crate::Observer>(self, observer: O2) -> SseLayer<O2, E, M> {
        SseLayer {
            config: self.config,
            observer,
            on_end: self.on_end,
            threads: PhantomData,
        }
    }

    /// Send each stream's report here (cloned per request, called once per stream): a
    /// closure `|report: StreamReport| …` or an [`OnEnd`](crate::OnEnd) of yours.
    pub fn on_end<E2: crate::OnEnd>(self, on_end: E2) -> SseLayer<O, E2, M> {
        SseLayer {
            config: self.config,
            observer: self.observer,
            on_end,
            threads: PhantomData,
        }
    }

    /// For a stack that is not `Send` (a `tokio::task::LocalSet`, a current-thread
    /// runtime): the inner future, the response body, the observer and the sink need not
    /// be `Send` nor `'static`. Such a stack never answers early and never drains after a
    /// disconnect, whatever [`early_response`](Self::early_response) and
    /// `drain_on_disconnect` (feature `drain`) say (both need a `Send` future or
    /// a spawned task); everything else is the same. See [`Local`].
    ///
    /// ```
    /// use std::rc::Rc;
    /// use http::{Request, Response};
    /// use http_body_util::{BodyExt, Full};
    /// use tower::{Layer, ServiceExt, service_fn};
    /// use tower_sse::SseLayer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // A service that holds an `Rc`: its future is not `Send`.
    /// let name = Rc::new("stream".to_string());
    /// let upstream = service_fn(move |_: Request<tower_sse::request::UploadBody<Full<bytes::Bytes>>>| {
    ///     let name = name.clone();
    ///     async move {
    ///         let response = Response::builder()
    ///             .header("content-type", "text/event-stream")
    ///             .body(Full::from(format!("data: {name}\n\n")))?;
    ///         Ok::<_, http::Error>(response)
    ///     }
    /// });
    /// let service = SseLayer::new().local().layer(upstream);
    /// let response = service.oneshot(Request::new(Full::default())).await.unwrap();
    /// let body = response.into_body().collect().await.unwrap().to_bytes();
    /// assert_eq!(&body[..], b"data: stream\n\n");
    /// # }
    /// ```
    pub fn local(self) -> SseLayer<O, E, Local> {
        SseLayer {
            config: self.config,
            observer: self.observer,
            on_end: self.on_end,
            threads: PhantomData,
        }
    }
}

impl<S, O: Clone, E: Clone, M> Layer<S> for SseLayer<O, E, M> {
    type Service = Sse<S, O, E, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Sse::new(
            inner,
            self.config.clone(),
            self.observer.clone(),
            self.on_end.clone(),
        )
    }
}
