//! Settings of the stream layer.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::framing::{self, Framing};
use crate::provider::ContentPredicate;
use crate::report::Outcome;
use crate::request::is_streaming_request;
use crate::sse::{DEFAULT_MAX_EVENT_SIZE, Event, comment_block};

/// Keep-alive comments: sent when nothing went to the client for `interval`.
///
/// One timer per stream, re-armed from the time of the last frame sent, never an interval
/// ticking on its own. Comments only ever go between whole events.
///
/// Named `KeepAliveConfig` so that it never collides with axum's
/// `axum::response::sse::KeepAlive`, which does the same for axum's own `Sse` responses.
///
/// A silent upstream, and the keep-alive the client receives after 15 seconds (on a paused
/// Tokio clock, so the example does not wait):
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
///
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body::Frame;
/// use http_body_util::{BodyExt, Empty, StreamBody};
/// use tokio::time::Instant;
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_sse::{KeepAliveConfig, SseLayer};
/// use tower_sse::request::UploadBody;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let layer = SseLayer::new()
///     .keep_alive(KeepAliveConfig::new().interval(Duration::from_secs(15)).text("ping"));
///
/// // An upstream that answers its head, then says nothing.
/// let upstream = service_fn(|_: Request<UploadBody<Empty<Bytes>>>| async {
///     let silence = futures_util::stream::pending::<Result<Frame<Bytes>, Infallible>>();
///     let response = Response::builder()
///         .header("content-type", "text/event-stream")
///         .body(StreamBody::new(silence))
///         .unwrap();
///     Ok::<_, Infallible>(response)
/// });
/// let start = Instant::now();
/// let response = layer.layer(upstream).oneshot(Request::new(Empty::<Bytes>::new())).await.unwrap();
/// let mut body = response.into_body();
///
/// let frame = body.frame().await.unwrap().unwrap();
/// assert_eq!(frame.into_data().unwrap(), Bytes::from_static(b": ping\n\n"));
/// assert!(start.elapsed() >= Duration::from_secs(15));
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct KeepAliveConfig {
    pub(crate) interval: Duration,
    pub(crate) comment: Bytes,
}

impl KeepAliveConfig {
    /// Keep-alives every 15 seconds of silence, as `: keep-alive`.
    pub fn new() -> Self {
        Self {
            interval: Duration::from_secs(15),
            comment: Bytes::from_static(b": keep-alive\n\n"),
        }
    }

    /// Send a keep-alive after this much silence. A zero interval is treated as 1 ms.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The comment text (line breaks become several comment lines, so the text can never
    /// end the comment early).
    pub fn text(mut self, text: &str) -> Self {
        self.comment = comment_block(text.as_bytes());
        self
    }
}

impl Default for KeepAliveConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// What a client receives when its stream ends in failure (a deadline, an upstream error,
/// an oversized or truncated event).
///
/// The default is an OpenAI-style error event that SDKs understand:
///
/// ```text
/// event: error
/// data: {"error":{"type":"idle_timeout","message":"no upstream event for 30s"}}
/// ```
///
/// [`ErrorEvent::custom`] builds other shapes, here Anthropic's error event, with
/// [`Event::builder`]; the upstream ends in the middle of an event
/// ([`Outcome::UpstreamTruncated`]) and the layer is told to say so
/// ([`error_on_truncation`](crate::SseLayer::error_on_truncation)):
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Empty, Full};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_sse::sse::Event;
/// use tower_sse::{ErrorEvent, Outcome, SseLayer};
/// use tower_sse::request::UploadBody;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let anthropic = ErrorEvent::custom(|outcome: Outcome, message: &str| {
///     let message = serde_json::to_string(message).unwrap(); // a JSON string, escaped
///     let data = format!(r#"{{"type":"error","error":{{"type":"{outcome}","message":{message}}}}}"#);
///     Event::builder()
///         .event("error")
///         .data(data)
///         .encode()
///         .expect("the event type has no line break")
/// });
/// let layer = SseLayer::new().error_event(anthropic).error_on_truncation(true);
///
/// let upstream = service_fn(|_: Request<UploadBody<Empty<Bytes>>>| async {
///     let cut = "event: ping\ndata: {\"type\":\"ping\"}\n\nevent: content_block_delta\ndata: {\"ty";
///     let response = Response::builder()
///         .header("content-type", "text/event-stream")
///         .body(Full::new(Bytes::from_static(cut.as_bytes())))
///         .unwrap();
///     Ok::<_, std::convert::Infallible>(response)
/// });
/// let response = layer.layer(upstream).oneshot(Request::new(Empty::<Bytes>::new())).await.unwrap();
/// let body = response.into_body().collect().await.unwrap().to_bytes();
/// let body = std::str::from_utf8(&body).unwrap();
///
/// // The complete event, then the error event in place of the cut one.
/// let (complete, error) = body.split_at(body.find("event: error").unwrap());
/// assert_eq!(complete, "event: ping\ndata: {\"type\":\"ping\"}\n\n");
/// let expected = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"upstream_truncated\",\"message\":\"";
/// assert!(error.starts_with(expected));
/// assert!(error.ends_with("\"}}\n\n"));
/// # }
/// ```
///
/// [`ErrorEvent::none`] sends nothing: the stream just ends.
#[derive(Clone)]
pub struct ErrorEvent(Option<Arc<dyn Fn(Outcome, &str) -> Bytes + Send + Sync>>);

impl ErrorEvent {
    /// The default: `event: error` with an OpenAI-style JSON error.
    pub fn openai() -> Self {
        Self(Some(Arc::new(openai_error_event)))
    }

    /// Send nothing: the stream just ends.
    pub fn none() -> Self {
        Self(None)
    }

    /// Build the bytes yourself (a whole SSE event, blank line included; see
    /// [`Event::builder`]).
    pub fn custom<F>(f: F) -> Self
    where
        F: Fn(Outcome, &str) -> Bytes + Send + Sync + 'static,
    {
        Self(Some(Arc::new(f)))
    }

    pub(crate) fn render(&self, outcome: Outcome, message: &str) -> Option<Bytes> {
        self.0.as_ref().map(|f| f(outcome, message))
    }
}

impl Default for ErrorEvent {
    fn default() -> Self {
        Self::openai()
    }
}

impl fmt::Debug for ErrorEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "ErrorEvent(Some(..))"
        } else {
            "ErrorEvent(None)"
        })
    }
}

fn openai_error_event(outcome: Outcome, message: &str) -> Bytes {
    let message = serde_json::Value::from(message);
    let data = format!(
        r#"{{"error":{{"type":"{}","message":{message}}}}}"#,
        outcome.as_str()
    );
    Event::builder()
        .event("error")
        .data(data)
        .encode()
        .unwrap_or_else(|_| Bytes::from_static(b"event: error\ndata: {}\n\n"))
}

/// What to do when the upstream body fails in the middle of a stream
/// ([`SseLayer::on_upstream_error`](crate::SseLayer::on_upstream_error)).
///
/// ```
/// use std::io;
///
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body::Frame;
/// use http_body_util::{BodyExt, Empty, StreamBody};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_sse::SseLayer;
/// use tower_sse::stream::UpstreamErrorPolicy;
/// use tower_sse::request::UploadBody;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // An upstream whose body fails after one event.
/// let upstream = service_fn(|_: Request<UploadBody<Empty<Bytes>>>| async {
///     let frames = futures_util::stream::iter([
///         Ok(Frame::data(Bytes::from_static(b"data: one\n\n"))),
///         Err(io::Error::other("connection reset")),
///     ]);
///     let response = Response::builder()
///         .header("content-type", "text/event-stream")
///         .body(StreamBody::new(frames))
///         .unwrap();
///     Ok::<_, io::Error>(response)
/// });
///
/// // The default: the client gets an error event and a complete response.
/// let layer = SseLayer::new();
/// let response = layer.layer(upstream).oneshot(Request::new(Empty::<Bytes>::new())).await.unwrap();
/// let body = response.into_body().collect().await.unwrap().to_bytes();
/// assert!(body.starts_with(b"data: one\n\nevent: error\n"));
///
/// // `Propagate`: the body fails, and the server aborts the connection.
/// let layer = SseLayer::new().on_upstream_error(UpstreamErrorPolicy::Propagate);
/// let response = layer.layer(upstream).oneshot(Request::new(Empty::<Bytes>::new())).await.unwrap();
/// assert!(response.into_body().collect().await.is_err());
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum UpstreamErrorPolicy {
    /// Send the error event and end the stream cleanly (the default): clients see a
    /// complete HTTP response that says what happened.
    #[default]
    ErrorEvent,
    /// Return the error from the body, which makes the server abort the connection.
    Propagate,
}

/// Decides whether a request is a streaming one before any response exists (for early
/// responses and header timeouts).
pub(crate) type RequestPredicate = Arc<dyn Fn(&http::request::Parts) -> bool + Send + Sync>;
/// Decides how to handle a response from its head.
pub(crate) type FramingPredicate =
    Arc<dyn Fn(&http::response::Parts) -> Option<Framing> + Send + Sync>;

/// Everything the layer was configured with, shared by its streams.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) keep_alive: Option<KeepAliveConfig>,
    pub(crate) early_response: bool,
    pub(crate) streaming_request: Option<RequestPredicate>,
    pub(crate) first_event_timeout: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) total_timeout: Option<Duration>,
    pub(crate) error_event: ErrorEvent,
    pub(crate) upstream_errors: UpstreamErrorPolicy,
    pub(crate) max_event_size: usize,
    pub(crate) lenient_eof: bool,
    pub(crate) error_on_truncation: bool,
    pub(crate) json_lines: bool,
    pub(crate) framing: Option<FramingPredicate>,
    pub(crate) forward_comments: bool,
    pub(crate) content_predicate: Option<ContentPredicate>,
    pub(crate) drain: Option<Duration>,
    pub(crate) shutdown: Option<crate::stream::Shutdown>,
    pub(crate) sse_headers: bool,
    pub(crate) policy: Option<crate::policy::BoxPolicy>,
    pub(crate) holdback: crate::policy::Holdback,
    /// How long the request body may take to arrive (`None`: for ever).
    pub(crate) upload_timeout: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            keep_alive: None,
            early_response: false,
            streaming_request: None,
            first_event_timeout: None,
            idle_timeout: None,
            total_timeout: None,
            error_event: ErrorEvent::default(),
            upstream_errors: UpstreamErrorPolicy::default(),
            max_event_size: DEFAULT_MAX_EVENT_SIZE,
            lenient_eof: false,
            error_on_truncation: false,
            json_lines: false,
            framing: None,
            forward_comments: true,
            content_predicate: None,
            drain: None,
            shutdown: None,
            sse_headers: false,
            policy: None,
            holdback: crate::policy::Holdback::off(),
            upload_timeout: Some(crate::request::DEFAULT_UPLOAD_TIMEOUT),
        }
    }
}

impl Config {
    pub(crate) fn is_streaming_request(&self, request: &http::request::Parts) -> bool {
        match &self.streaming_request {
            Some(predicate) => predicate(request),
            None => is_streaming_request(request),
        }
    }

    /// Whether to answer this request with a stream before the upstream did (early response):
    /// only when it surely streams (a predicate of the user's decides alone).
    pub(crate) fn answers_early(&self, request: &http::request::Parts) -> bool {
        self.early_response
            && match &self.streaming_request {
                Some(predicate) => predicate(request),
                None => crate::request::surely_streams(request),
            }
    }

    /// Add the headers that keep proxies in front from buffering a stream, if asked to and
    /// not there already.
    pub(crate) fn add_sse_headers(&self, headers: &mut http::HeaderMap) {
        if !self.sse_headers {
            return;
        }
        headers
            .entry(http::header::CACHE_CONTROL)
            .or_insert(http::HeaderValue::from_static("no-cache"));
        headers
            .entry("x-accel-buffering")
            .or_insert(http::HeaderValue::from_static("no"));
    }

    pub(crate) fn framing(&self, response: &http::response::Parts) -> Option<Framing> {
        match &self.framing {
            Some(predicate) => predicate(response),
            None => framing::detect(&response.headers, self.json_lines),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("keep_alive", &self.keep_alive)
            .field("early_response", &self.early_response)
            .field("first_event_timeout", &self.first_event_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("total_timeout", &self.total_timeout)
            .field("error_event", &self.error_event)
            .field("upstream_errors", &self.upstream_errors)
            .field("max_event_size", &self.max_event_size)
            .field("lenient_eof", &self.lenient_eof)
            .field("error_on_truncation", &self.error_on_truncation)
            .field("json_lines", &self.json_lines)
            .field("forward_comments", &self.forward_comments)
            .field("drain", &self.drain)
            .field("shutdown", &self.shutdown)
            .field("sse_headers", &self.sse_headers)
            .field("policy", &self.policy)
            .field("holdback", &self.holdback)
            .field("upload_timeout", &self.upload_timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_error_event_is_openai_style_json() {
        let bytes = ErrorEvent::openai()
            .render(Outcome::IdleTimeout, "no \"event\" for 30s")
            .unwrap();
        assert_eq!(
            &bytes[..],
            b"event: error\ndata: {\"error\":{\"type\":\"idle_timeout\",\"message\":\"no \\\"event\\\" for 30s\"}}\n\n"
        );
    }

    #[test]
    fn keep_alive_text_cannot_break_out_of_the_comment() {
        let ka = KeepAliveConfig::new().text("a\n\ndata: injected");
        assert_eq!(&ka.comment[..], b": a\n:\n: data: injected\n\n");
    }
}
