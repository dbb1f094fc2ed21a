//! [`IncludeUsageLayer`]: ask OpenAI-style upstreams for usage in streams, and hide it from
//! clients that did not ask.
//!
//! OpenAI Chat Completions (and vLLM, SGLang, llama.cpp, most gateways) report the token
//! usage of a stream only when the request says `"stream_options":{"include_usage":true}`.
//! This layer reads the JSON body of chat and completions requests (bounded), and when it
//! says `"stream": true` without asking for usage, adds the option. It then marks the
//! request with [`UsageInjected`], so that the usage observer reads the extra usage-only
//! chunk for the report and keeps it from the client, who never asked for it.
//!
//! It never touches the Responses API (which rejects `stream_options` and always reports
//! usage), non-JSON bodies, or requests that are not streams. Any streaming request it sees
//! is marked [`StreamingRequest`], which lets [`SseLayer`](crate::SseLayer) answer it
//! early or time out its response head.
//!
//! Put it **outside** `SseLayer`, so that `SseLayer` sees the marks:
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_sse::{IncludeUsageLayer, SseLayer};
//!
//! let stack = ServiceBuilder::new()
//!     .layer(IncludeUsageLayer::new())
//!     .layer(SseLayer::new());
//! # let _ = stack;
//! ```
//!
//! When the client did ask for usage, nothing changes, and it gets its usage chunk.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use serde::Deserialize;
use tower_layer::Layer;
use tower_service::Service;

use crate::BoxError;
use crate::config::StreamingRequest;

/// Set on a request by [`IncludeUsageLayer`] when it added `stream_options.include_usage`
/// that the client did not ask for. The usage observer then keeps the upstream's usage-only
/// chunk from the client while still reading its usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageInjected;

/// The model the request asked for (`"model"` of the JSON body), set on streaming requests
/// by [`IncludeUsageLayer`]; the metrics observer reports it as `gen_ai.request.model`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestModel(pub String);

/// The default limit on request bodies the layer reads: 16 MiB.
pub const DEFAULT_MAX_REQUEST_SIZE: usize = 16 * 1024 * 1024;

/// What to do with a request body larger than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Oversized {
    /// Forward it unchanged (the default): the request still works, without injected usage.
    #[default]
    PassThrough,
    /// Answer `413 Payload Too Large`.
    Reject,
}

type RequestPredicate = Arc<dyn Fn(&http::request::Parts) -> bool + Send + Sync>;

/// Adds `stream_options.include_usage` to streaming OpenAI-style requests. See the
/// [module docs](crate::include_usage).
///
/// The inner service receives [`UsageRequestBody<B>`]; use
/// [`map_request_body`](Self::map_request_body) when it needs its own body type (with axum:
/// `.map_request_body(axum::body::Body::new)`).
#[derive(Clone)]
#[must_use]
pub struct IncludeUsageLayer<M = Unchanged> {
    config: Arc<Config>,
    map: M,
}

/// Turns the request body the layer produces into the one the inner service takes.
///
/// Implemented for closures and for [`Unchanged`].
pub trait MapRequestBody<B> {
    /// The body the inner service takes.
    type Output;
    /// Convert.
    fn map(&self, body: UsageRequestBody<B>) -> Self::Output;
}

/// Hands the inner service the [`UsageRequestBody`] itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unchanged;

impl<B> MapRequestBody<B> for Unchanged {
    type Output = UsageRequestBody<B>;
    fn map(&self, body: UsageRequestBody<B>) -> UsageRequestBody<B> {
        body
    }
}

impl<B, F, O> MapRequestBody<B> for F
where
    F: Fn(UsageRequestBody<B>) -> O,
{
    type Output = O;
    fn map(&self, body: UsageRequestBody<B>) -> O {
        self(body)
    }
}

#[derive(Clone)]
struct Config {
    max_size: usize,
    oversized: Oversized,
    continuous: bool,
    applies: Option<RequestPredicate>,
}

impl IncludeUsageLayer {
    /// The layer with its defaults: chat and completions paths, 16 MiB, pass-through.
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config {
                max_size: DEFAULT_MAX_REQUEST_SIZE,
                oversized: Oversized::PassThrough,
                continuous: false,
                applies: None,
            }),
            map: Unchanged,
        }
    }
}

impl<M> IncludeUsageLayer<M> {
    /// Convert the request body before the inner service gets it.
    pub fn map_request_body<M2>(self, map: M2) -> IncludeUsageLayer<M2> {
        IncludeUsageLayer {
            config: self.config,
            map,
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// The most request-body bytes read and held. Default: [`DEFAULT_MAX_REQUEST_SIZE`].
    pub fn max_request_size(self, limit: usize) -> Self {
        self.with(|c| c.max_size = limit)
    }

    /// What to do with larger bodies. Default: [`Oversized::PassThrough`].
    pub fn oversized(self, oversized: Oversized) -> Self {
        self.with(|c| c.oversized = oversized)
    }

    /// Also ask for `continuous_usage_stats` (vLLM: running usage on every chunk, so that a
    /// stream cut short still has exact usage).
    pub fn continuous_usage_stats(self, enabled: bool) -> Self {
        self.with(|c| c.continuous = enabled)
    }

    /// Which requests to look at. Default: `POST` with a JSON body (or none declared) to a
    /// path ending in `/chat/completions` or `/completions`.
    pub fn applies_to<F>(self, predicate: F) -> Self
    where
        F: Fn(&http::request::Parts) -> bool + Send + Sync + 'static,
    {
        self.with(|c| c.applies = Some(Arc::new(predicate)))
    }
}

impl Default for IncludeUsageLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<M> fmt::Debug for IncludeUsageLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncludeUsageLayer")
            .field("max_request_size", &self.config.max_size)
            .field("oversized", &self.config.oversized)
            .field("continuous_usage_stats", &self.config.continuous)
            .finish_non_exhaustive()
    }
}

impl<S, M: Clone> Layer<S> for IncludeUsageLayer<M> {
    type Service = IncludeUsage<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        IncludeUsage {
            inner,
            config: self.config.clone(),
            map: self.map.clone(),
        }
    }
}

/// The service of [`IncludeUsageLayer`].
#[derive(Clone)]
pub struct IncludeUsage<S, M = Unchanged> {
    inner: S,
    config: Arc<Config>,
    map: M,
}

impl<S: fmt::Debug, M> fmt::Debug for IncludeUsage<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncludeUsage")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

fn default_applies(parts: &http::request::Parts) -> bool {
    let path = parts.uri.path();
    let json = parts.headers.get(CONTENT_TYPE).is_none_or(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        })
    });
    parts.method == Method::POST
        && json
        && !path.ends_with("/responses")
        && (path.ends_with("/chat/completions") || path.ends_with("/completions"))
}

impl<S, M, B, ResBody> Service<Request<B>> for IncludeUsage<S, M>
where
    M: MapRequestBody<B> + Clone + Send + Sync + 'static,
    M::Output: Send + 'static,
    S: Service<Request<M::Output>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<IncludeUsageBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The ready service handles this request; a fresh clone stays for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        let map = self.map.clone();
        let (parts, body) = request.into_parts();
        let applies = match &config.applies {
            Some(predicate) => predicate(&parts),
            None => default_applies(&parts),
        };
        if !applies {
            let request = Request::from_parts(parts, map.map(UsageRequestBody::original(body)));
            return Box::pin(
                async move { Ok(inner.call(request).await?.map(IncludeUsageBody::inner)) },
            );
        }
        Box::pin(async move {
            let read = read_bounded(body, config.max_size).await;
            let (parts, body) = match read {
                Read::Whole(bytes, trailers) => rewrite(parts, bytes, trailers, &config),
                Read::Oversized(..) if config.oversized == Oversized::Reject => {
                    return Ok(error_response(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request_too_large",
                        "the request body is larger than the gateway reads",
                    ));
                }
                Read::Oversized(prefix, rest) => (parts, UsageRequestBody::chained(prefix, rest)),
                Read::Failed => {
                    return Ok(error_response(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_body",
                        "the request body could not be read",
                    ));
                }
            };
            Ok(inner
                .call(Request::from_parts(parts, map.map(body)))
                .await?
                .map(IncludeUsageBody::inner))
        })
    }
}

/// The parts of the request body the layer looks at.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
    #[serde(default)]
    continuous_usage_stats: Option<bool>,
}

/// Decide and apply the change to a whole JSON body.
fn rewrite<B>(
    mut parts: http::request::Parts,
    body: Bytes,
    trailers: Option<HeaderMap>,
    config: &Config,
) -> (http::request::Parts, UsageRequestBody<B>) {
    let Ok(probe) = serde_json::from_slice::<Probe>(&body) else {
        return (parts, UsageRequestBody::buffered(body, trailers));
    };
    if probe.stream != Some(true) {
        return (parts, UsageRequestBody::buffered(body, trailers));
    }
    parts.extensions.insert(StreamingRequest);
    if let Some(model) = probe.model {
        parts.extensions.insert(RequestModel(model));
    }
    let options = probe.stream_options.as_ref();
    let has_usage = options.is_some_and(|o| o.include_usage == Some(true));
    let has_continuous =
        !config.continuous || options.is_some_and(|o| o.continuous_usage_stats == Some(true));
    if has_usage && has_continuous {
        return (parts, UsageRequestBody::buffered(body, trailers));
    }
    // Inserting the field keeps the client's bytes, but only when the key is absent: a
    // `"stream_options": null` must be replaced, not shadowed by a duplicate key.
    let key_present = memchr::memmem::find(&body, b"\"stream_options\"").is_some();
    let new_body = if options.is_none() && !key_present {
        insert_stream_options(&body, config.continuous)
    } else {
        merge_stream_options(&body, config.continuous)
    };
    let Some(new_body) = new_body else {
        return (parts, UsageRequestBody::buffered(body, trailers));
    };
    if !has_usage {
        parts.extensions.insert(UsageInjected);
    }
    // The body is whole now: it has a length, unless trailers follow it (then it is chunked).
    parts.headers.remove(TRANSFER_ENCODING);
    if trailers.is_some() {
        parts.headers.remove(CONTENT_LENGTH);
    } else {
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(new_body.len()));
    }
    (parts, UsageRequestBody::buffered(new_body, trailers))
}

/// Add the option right after the opening brace: every other byte stays as the client sent it.
fn insert_stream_options(body: &[u8], continuous: bool) -> Option<Bytes> {
    let open = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[open] != b'{' {
        return None;
    }
    let field: &[u8] = if continuous {
        br#""stream_options":{"include_usage":true,"continuous_usage_stats":true},"#
    } else {
        br#""stream_options":{"include_usage":true},"#
    };
    let mut out = BytesMut::with_capacity(body.len() + field.len());
    out.extend_from_slice(&body[..=open]);
    out.extend_from_slice(field);
    out.extend_from_slice(&body[open + 1..]);
    Some(out.freeze())
}

/// `stream_options` exists (maybe as `null`): set the flags in it (the body is re-serialized).
fn merge_stream_options(body: &[u8], continuous: bool) -> Option<Bytes> {
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let options = value
        .as_object_mut()?
        .entry("stream_options")
        .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    if !options.is_object() {
        *options = serde_json::Value::Object(serde_json::Map::new());
    }
    let options = options.as_object_mut()?;
    options.insert("include_usage".into(), true.into());
    if continuous {
        options.insert("continuous_usage_stats".into(), true.into());
    }
    serde_json::to_vec(&value).ok().map(Bytes::from)
}

enum Read<B> {
    Whole(Bytes, Option<HeaderMap>),
    /// Too large: the bytes read so far, and the rest of the body.
    Oversized(Bytes, B),
    Failed,
}

async fn read_bounded<B>(mut body: B, limit: usize) -> Read<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut buf = BytesMut::new();
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            None => return Read::Whole(buf.freeze(), None),
            Some(Err(_)) => return Read::Failed,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    buf.extend_from_slice(&data);
                    if buf.len() > limit {
                        return Read::Oversized(buf.freeze(), body);
                    }
                }
                Err(frame) => {
                    let trailers = frame.into_trailers().ok();
                    return Read::Whole(buf.freeze(), trailers);
                }
            },
        }
    }
}

fn error_response<B>(
    status: StatusCode,
    kind: &str,
    message: &str,
) -> Response<IncludeUsageBody<B>> {
    let body = format!(r#"{{"error":{{"type":"{kind}","message":"{message}"}}}}"#);
    let mut response = Response::new(IncludeUsageBody::full(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pin_project! {
    /// The request body handed to the inner service: the original body, or the bytes the
    /// layer read (changed or not), or those bytes followed by the rest of a large body.
    pub struct UsageRequestBody<B> {
        #[pin]
        kind: RequestKind<B>,
    }
}

pin_project! {
    #[project = RequestKindProj]
    enum RequestKind<B> {
        Original { #[pin] body: B },
        Buffered { data: Option<Bytes>, trailers: Option<HeaderMap> },
        Chained { prefix: Option<Bytes>, #[pin] rest: B },
    }
}

impl<B> UsageRequestBody<B> {
    fn original(body: B) -> Self {
        Self {
            kind: RequestKind::Original { body },
        }
    }

    fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: RequestKind::Buffered {
                data: (!data.is_empty()).then_some(data),
                trailers,
            },
        }
    }

    fn chained(prefix: Bytes, rest: B) -> Self {
        Self {
            kind: RequestKind::Chained {
                prefix: Some(prefix),
                rest,
            },
        }
    }
}

impl<B> fmt::Debug for UsageRequestBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageRequestBody").finish_non_exhaustive()
    }
}

impl<B> Body for UsageRequestBody<B>
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
            RequestKindProj::Original { body } => body.poll_frame(cx).map_err(Into::into),
            RequestKindProj::Buffered { data, trailers } => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
            RequestKindProj::Chained { prefix, rest } => match prefix.take() {
                Some(prefix) => Poll::Ready(Some(Ok(Frame::data(prefix)))),
                None => rest.poll_frame(cx).map_err(Into::into),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RequestKind::Original { body } => body.is_end_stream(),
            RequestKind::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
            RequestKind::Chained { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RequestKind::Original { body } => body.size_hint(),
            RequestKind::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestKind::Chained { prefix, rest } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + extra);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
        }
    }
}

pin_project! {
    /// The response body of [`IncludeUsage`]: the inner service's, or the layer's own error.
    pub struct IncludeUsageBody<B> {
        #[pin]
        kind: ResponseKind<B>,
    }
}

pin_project! {
    #[project = ResponseKindProj]
    enum ResponseKind<B> {
        Inner { #[pin] body: B },
        Full { data: Option<Bytes> },
    }
}

impl<B> IncludeUsageBody<B> {
    fn inner(body: B) -> Self {
        Self {
            kind: ResponseKind::Inner { body },
        }
    }

    fn full(data: Bytes) -> Self {
        Self {
            kind: ResponseKind::Full { data: Some(data) },
        }
    }
}

impl<B> fmt::Debug for IncludeUsageBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncludeUsageBody").finish_non_exhaustive()
    }
}

impl<B> Body for IncludeUsageBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            ResponseKindProj::Inner { body } => {
                Poll::Ready(ready!(body.poll_frame(cx)).map(|r| r.map_err(Into::into)))
            }
            ResponseKindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ResponseKind::Inner { body } => body.is_end_stream(),
            ResponseKind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ResponseKind::Inner { body } => body.size_hint(),
            ResponseKind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            max_size: 1024,
            oversized: Oversized::PassThrough,
            continuous: false,
            applies: None,
        }
    }

    fn apply(body: &str, config: &Config) -> (String, bool, bool) {
        let parts = Request::post("/v1/chat/completions")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let (parts, body) = rewrite::<http_body_util_stub::Never>(
            parts,
            Bytes::from(body.to_string()),
            None,
            config,
        );
        let RequestKind::Buffered { data, .. } = body.kind;
        (
            String::from_utf8(data.unwrap_or_default().to_vec()).unwrap(),
            parts.extensions.get::<UsageInjected>().is_some(),
            parts.extensions.get::<StreamingRequest>().is_some(),
        )
    }

    mod http_body_util_stub {
        /// A body type for tests that never needs polling.
        pub(super) enum Never {}
    }

    #[test]
    fn stream_without_options_gets_them_inserted_byte_for_byte() {
        let (body, injected, streaming) =
            apply(r#" {"model":"m","stream":true,"messages":[]}"#, &config());
        assert_eq!(
            body,
            r#" {"stream_options":{"include_usage":true},"model":"m","stream":true,"messages":[]}"#
        );
        assert!(injected && streaming);
    }

    #[test]
    fn client_that_asked_is_left_alone() {
        let input = r#"{"stream":true,"stream_options":{"include_usage":true}}"#;
        let (body, injected, streaming) = apply(input, &config());
        assert_eq!(body, input);
        assert!(!injected && streaming);
    }

    #[test]
    fn existing_options_are_merged() {
        let (body, injected, _) = apply(
            r#"{"stream":true,"stream_options":{"include_usage":false}}"#,
            &config(),
        );
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["stream_options"]["include_usage"], true);
        assert!(injected);
    }

    #[test]
    fn non_streaming_and_invalid_bodies_are_untouched() {
        for input in [
            r#"{"stream":false}"#,
            r#"{"model":"m"}"#,
            "not json",
            r#"{"stream":"yes"}"#,
            "[1,2]",
        ] {
            let (body, injected, _) = apply(input, &config());
            assert_eq!(body, input);
            assert!(!injected);
        }
    }

    #[test]
    fn null_stream_options_are_replaced_not_shadowed() {
        let (body, injected, _) = apply(r#"{"stream":true,"stream_options":null}"#, &config());
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["stream_options"]["include_usage"], true, "{body}");
        assert_eq!(body.matches("stream_options").count(), 1, "{body}");
        assert!(injected);
    }

    #[test]
    fn continuous_usage_stats_when_asked() {
        let mut config = config();
        config.continuous = true;
        let (body, _, _) = apply(r#"{"stream":true}"#, &config);
        assert_eq!(
            body,
            r#"{"stream_options":{"include_usage":true,"continuous_usage_stats":true},"stream":true}"#
        );
    }

    #[test]
    fn only_chat_and_completions_paths_by_default() {
        let parts = |method: &str, path: &str, ct: Option<&str>| {
            let mut builder = Request::builder().method(method).uri(path);
            if let Some(ct) = ct {
                builder = builder.header(CONTENT_TYPE, ct);
            }
            builder.body(()).unwrap().into_parts().0
        };
        assert!(default_applies(&parts(
            "POST",
            "/v1/chat/completions",
            Some("application/json")
        )));
        assert!(default_applies(&parts("POST", "/v1/completions", None)));
        assert!(default_applies(&parts(
            "POST",
            "/v1/chat/completions",
            Some("application/json; charset=utf-8")
        )));
        assert!(!default_applies(&parts(
            "POST",
            "/v1/responses",
            Some("application/json")
        )));
        assert!(!default_applies(&parts(
            "GET",
            "/v1/chat/completions",
            None
        )));
        assert!(!default_applies(&parts(
            "POST",
            "/v1/chat/completions",
            Some("multipart/form-data")
        )));
        assert!(!default_applies(&parts("POST", "/v1/embeddings", None)));
    }
}
