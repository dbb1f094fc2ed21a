//! [`InputEstimateLayer`]: keeps a bounded prefix of each request body, so that a stream
//! whose provider never reported its input count still gets one, estimated from the
//! request's text.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use http::Request;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use serde_json::Value;
use tower_layer::Layer;
use tower_service::Service;

use super::{HeuristicCounter, TokenCounter};

/// The default [`InputEstimateLayer::max_bytes`]: 1 MiB.
pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024;

/// Keeps the first bytes of each request body (up to [`max_bytes`](Self::max_bytes)) as
/// the service reads them, and puts an [`InputEstimateHandle`] in the request's extensions.
/// [`UsageObserver`](crate::UsageObserver) takes the handle: when a stream is cut (the
/// streams whose output is estimated, see the [module docs](crate::usage#cut-streams)) and
/// its provider reported no input count, the input is estimated from the request's text and the usage is marked
/// [`UsageSource::Estimated`](crate::UsageSource::Estimated). Without the estimate, such a
/// stream has no input count, and its cost comes out low.
///
/// # What is counted
///
/// The body is parsed as JSON only when an estimate is needed (at the end of a stream that
/// lacks the input count), and the text of these fields is counted by a
/// [`HeuristicCounter`] (4 bytes per token by default: [`bytes_per_token`](Self::bytes_per_token)):
///
/// | API | fields |
/// |---|---|
/// | OpenAI Chat, Anthropic Messages | `messages[].content` (a string, or the `text` of its parts), `system` |
/// | OpenAI Responses | `input` (a string, or its items' `content` like a message's), `instructions` |
/// | OpenAI Completions | `prompt` (a string or strings) |
/// | Gemini | `contents[].parts[].text`, `systemInstruction.parts[].text` |
/// | Ollama | `messages[].content`, `prompt`, `system` |
///
/// Images, tool definitions and message framing are not counted: the estimate is a lower
/// bound of what the provider would bill. A body larger than `max_bytes`, one that is not
/// JSON, or one without any of these fields gives no estimate (the input stays unknown),
/// never a guess from its size.
///
/// # Cost
///
/// One copy of each body's first `max_bytes` (the service reads the body as usual); parsing
/// happens at most once per stream, and only for streams that need the estimate.
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Full};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_sse::usage::{InputEstimateBody, InputEstimateLayer};
/// use tower_sse::request::UploadBody;
/// use tower_sse::{SseLayer, StreamReport, UsageObserver, UsageSource};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (reports, received) = std::sync::mpsc::channel();
/// // An upstream that reads the request, streams some text, and is cut mid-event.
/// let upstream = service_fn(|request: Request<UploadBody<InputEstimateBody<Full<Bytes>>>>| async move {
///     let _request = request.into_body().collect().await?;
///     let stream = "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"12345678\"}}]}\n\ndata: {\"obj";
///     let response = Response::builder()
///         .header("content-type", "text/event-stream")
///         .body(Full::new(Bytes::from_static(stream.as_bytes())))
///         .unwrap();
///     Ok::<_, tower_sse::BoxError>(response)
/// });
/// let service = ServiceBuilder::new()
///     .layer(InputEstimateLayer::new())
///     .layer(SseLayer::new().observer(UsageObserver::new()).on_end(move |r: StreamReport| reports.send(r).unwrap()))
///     .service(upstream);
///
/// let body = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"sixteen bytes..."}]}"#;
/// let request = Request::post("/v1/chat/completions").body(Full::new(Bytes::from_static(body.as_bytes()))).unwrap();
/// let response = service.oneshot(request).await.unwrap();
/// response.into_body().collect().await.unwrap();
///
/// // Cut before any usage: the output is estimated from the text streamed (8 bytes), the
/// // input from the request's message (16 bytes).
/// let usage = received.recv().unwrap().usage.unwrap();
/// assert_eq!((usage.input_tokens, usage.output_tokens), (Some(4), Some(2)));
/// assert_eq!(usage.source, UsageSource::Estimated);
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct InputEstimateLayer {
    max_bytes: usize,
    bytes_per_token: u32,
}

impl InputEstimateLayer {
    /// Keep up to [`DEFAULT_MAX_BYTES`] of each body, 4 bytes per token.
    pub fn new() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            bytes_per_token: 4,
        }
    }

    /// Keep at most this many bytes of each body: a larger body gets no estimate.
    pub fn max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Estimate with this many bytes of text per token (at least 1).
    pub fn bytes_per_token(mut self, bytes: u32) -> Self {
        self.bytes_per_token = bytes.max(1);
        self
    }
}

impl Default for InputEstimateLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for InputEstimateLayer {
    type Service = InputEstimate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InputEstimate {
            inner,
            config: *self,
        }
    }
}

/// The service of [`InputEstimateLayer`].
#[derive(Debug, Clone)]
pub struct InputEstimate<S> {
    inner: S,
    config: InputEstimateLayer,
}

impl<S, B> Service<Request<B>> for InputEstimate<S>
where
    S: Service<Request<InputEstimateBody<B>>>,
    B: Body,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        let handle = InputEstimateHandle(Arc::new(Mutex::new(Captured {
            prefix: BytesMut::new(),
            max_bytes: self.config.max_bytes,
            bytes_per_token: self.config.bytes_per_token,
            state: Capture::Reading,
        })));
        parts.extensions.insert(handle.clone());
        let body = InputEstimateBody {
            inner: body,
            handle: Some(handle),
        };
        self.inner.call(Request::from_parts(parts, body))
    }
}

/// Where the estimate of one request's input tokens comes from: the body prefix
/// [`InputEstimateLayer`] kept. Cheap to clone.
#[derive(Clone)]
pub struct InputEstimateHandle(Arc<Mutex<Captured>>);

struct Captured {
    prefix: BytesMut,
    max_bytes: usize,
    bytes_per_token: u32,
    state: Capture,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capture {
    /// The body is being read.
    Reading,
    /// The whole body is in `prefix`.
    Complete,
    /// Larger than `max_bytes`, failed, or not read to its end: no estimate.
    Lost,
    /// Estimated already (the prefix is freed).
    Done(Option<u64>),
}

impl InputEstimateHandle {
    /// The input tokens of the request's text (see [`InputEstimateLayer`] for what is
    /// counted); `None` when the body was not read to its end, was larger than the limit,
    /// is not JSON, or has no text in the fields counted. Parses at most once: later calls
    /// answer the same.
    pub fn estimate(&self) -> Option<u64> {
        let mut captured = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match captured.state {
            Capture::Done(estimate) => estimate,
            Capture::Reading | Capture::Lost => None,
            Capture::Complete => {
                let mut counter = HeuristicCounter::new().bytes_per_token(captured.bytes_per_token);
                if let Ok(value) = serde_json::from_slice::<Value>(&captured.prefix) {
                    request_text(&value, &mut |text| counter.add_text(text.as_bytes()));
                }
                let estimate = counter.estimate();
                captured.prefix = BytesMut::new();
                captured.state = Capture::Done(estimate);
                estimate
            }
        }
    }

    fn with(&self, f: impl FnOnce(&mut Captured)) {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

impl fmt::Debug for InputEstimateHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let captured = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("InputEstimateHandle")
            .field("bytes", &captured.prefix.len())
            .field("state", &captured.state)
            .finish()
    }
}

pin_project! {
    /// A request body that keeps a copy of its first bytes for [`InputEstimateHandle`].
    /// Frames, errors, trailers and hints pass through untouched.
    pub struct InputEstimateBody<B> {
        #[pin]
        inner: B,
        // `None` once the capture is over.
        handle: Option<InputEstimateHandle>,
    }

    impl<B> PinnedDrop for InputEstimateBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before its end: what was kept is not the whole request.
            if let Some(handle) = this.project().handle.take() {
                handle.with(|c| c.lose());
            }
        }
    }
}

impl<B> fmt::Debug for InputEstimateBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InputEstimateBody")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

impl Captured {
    fn lose(&mut self) {
        if self.state == Capture::Reading {
            self.state = Capture::Lost;
            self.prefix = BytesMut::new();
        }
    }

    fn complete(&mut self) {
        if self.state == Capture::Reading {
            self.state = Capture::Complete;
        }
    }

    fn keep(&mut self, data: &impl Buf) {
        if self.state != Capture::Reading {
            return;
        }
        if self.prefix.len().saturating_add(data.remaining()) > self.max_bytes {
            self.lose();
            return;
        }
        self.prefix.extend_from_slice(data.chunk());
    }
}

impl<B> Body for InputEstimateBody<B>
where
    B: Body,
    B::Data: Buf,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let result = ready!(this.inner.poll_frame(cx));
        let Some(handle) = this.handle.as_ref() else {
            return Poll::Ready(result);
        };
        let over = match &result {
            None => {
                handle.with(Captured::complete);
                true
            }
            Some(Ok(frame)) => match frame.data_ref() {
                Some(data) if data.chunk().len() == data.remaining() => {
                    handle.with(|c| c.keep(data));
                    false
                }
                // A buffer that shows its bytes in several pieces (rare for request
                // bodies): no estimate rather than a wrong one.
                Some(_) => {
                    handle.with(Captured::lose);
                    true
                }
                None => {
                    handle.with(Captured::complete);
                    true
                }
            },
            Some(Err(_)) => {
                handle.with(Captured::lose);
                true
            }
        };
        if over {
            *this.handle = None;
        }
        Poll::Ready(result)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Call `f` with each text of a request body that counts as input (see the table on
/// [`InputEstimateLayer`]).
fn request_text(body: &Value, f: &mut impl FnMut(&str)) {
    for key in ["messages", "input", "contents"] {
        if let Some(value) = body.get(key) {
            content(value, f);
        }
    }
    for key in ["system", "instructions", "prompt", "systemInstruction"] {
        if let Some(value) = body.get(key) {
            content(value, f);
        }
    }
}

/// The text of a message list, a message, its content, or its parts: strings, and the
/// `content`, `text` and `parts` of objects, to a bounded depth.
fn content(value: &Value, f: &mut impl FnMut(&str)) {
    fn walk(value: &Value, f: &mut impl FnMut(&str), depth: u8) {
        if depth == 0 {
            return;
        }
        match value {
            Value::String(text) => f(text),
            Value::Array(items) => items.iter().for_each(|item| walk(item, f, depth - 1)),
            Value::Object(object) => {
                for key in ["content", "text", "parts"] {
                    if let Some(inner) = object.get(key) {
                        walk(inner, f, depth - 1);
                    }
                }
            }
            _ => {}
        }
    }
    walk(value, f, 6);
}
