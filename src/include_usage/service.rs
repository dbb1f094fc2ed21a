//! [`IncludeUsage`], the service: decides which requests to rewrite, and buffers them.

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;

use crate::BoxError;

use super::layer::Config;
use super::rewrite::{error_response, rewrite};
use super::{IncludeUsageBody, UsageRequestBody};
use super::{MapRequestBody, Oversized, Unchanged};
use crate::include_usage::rewrite::read_bounded;
use crate::include_usage::rewrite::{Decide, Read};
use crate::provider::Provider;
use crate::request::{Arrival, UploadTimedOut};
use crate::stream::deadline::after;
use tokio::time::timeout_at;

/// The service of [`IncludeUsageLayer`](crate::IncludeUsageLayer).
#[derive(Clone)]
pub struct IncludeUsage<S, M = Unchanged> {
    pub(super) inner: S,
    pub(super) config: Arc<Config>,
    pub(super) map: M,
}

impl<S: fmt::Debug, M> fmt::Debug for IncludeUsage<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncludeUsage")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// Whether the default rewrites this request: a JSON `POST` to an API that takes
/// `stream_options` (chat and completions).
pub(super) fn default_applies(parts: &http::request::Parts) -> bool {
    is_json_post(parts) && Provider::from_path(parts.uri.path()).accepts_stream_options()
}

/// Whether the default reads this request's body (bounded, before the upload deadline):
/// a JSON `POST` to any LLM API path the crate knows (chat, completions, Messages,
/// Responses, Gemini, Ollama), so that its `"stream": true` marks it a stream and a stalled
/// upload is answered `408` before anything is forwarded. Only those of
/// [`default_applies`] are changed.
pub(super) fn default_reads(parts: &http::request::Parts) -> bool {
    is_json_post(parts) && Provider::from_path(parts.uri.path()) != Provider::Unknown
}

fn is_json_post(parts: &http::request::Parts) -> bool {
    let json = parts.headers.get(CONTENT_TYPE).is_none_or(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        })
    });
    parts.method == Method::POST && json
}

/// When the body must have arrived (`None`: never).
fn upload_deadline(arrival: tokio::time::Instant, config: &Config) -> Option<tokio::time::Instant> {
    (config.upload_timeout != Duration::MAX).then(|| after(arrival, config.upload_timeout))
}

/// Whether the body has a `Content-Encoding` other than `identity`.
fn is_encoded(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"))
}

impl<S, M, B, ResBody> Service<Request<B>> for IncludeUsage<S, M>
where
    M: MapRequestBody<B> + Clone + Send + Sync + 'static,
    M::Output: Send + 'static,
    S: Service<Request<M::Output>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
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
        let (mut parts, body) = request.into_parts();
        let arrival = Arrival::stamp(&mut parts.extensions);
        let (reads, splices) = match &config.applies {
            Some(predicate) => {
                let applies = predicate(&parts);
                (applies, applies)
            }
            None => (default_reads(&parts), default_applies(&parts)),
        };
        let decide = Decide {
            splice: splices,
            streams_by_path: Provider::from_path(parts.uri.path()) == Provider::Gemini,
        };
        // An encoded body (gzip, br…) is not JSON until decoded: never read, buffer or change it.
        if !reads || is_encoded(&parts.headers) {
            // Not read here, but still bounded: the body fails at the upload deadline, so
            // that a stalled upload on any path ends (and its stream permit is released).
            let (body, watch) =
                UsageRequestBody::original_until(body, upload_deadline(arrival, &config));
            if let Some(watch) = watch {
                // An SseLayer inside answers 408 if the body times out before the answer.
                parts.extensions.insert(watch);
            }
            let request = Request::from_parts(parts, map.map(body));
            return Box::pin(
                async move { Ok(inner.call(request).await?.map(IncludeUsageBody::inner)) },
            );
        }
        // The body is read before the inner service is called, for up to the upload timeout:
        // the readiness reserved for this request (a `Buffer` slot, a `ConcurrencyLimit`
        // permit) is released now, and waited for again once the body is read.
        let reserved = inner;
        let mut inner = reserved.clone();
        drop(reserved);
        Box::pin(async move {
            let deadline = after(arrival, config.upload_timeout);
            let Ok(read) =
                timeout_at(deadline, read_bounded(Box::pin(body), config.max_size)).await
            else {
                // A stalled upload: never forwarded, and an SseLayer inside reports it.
                let mut parts = parts;
                parts.extensions.insert(UploadTimedOut);
                let body = map.map(UsageRequestBody::incomplete());
                poll_fn(|cx| inner.poll_ready(cx)).await?;
                return Ok(inner
                    .call(Request::from_parts(parts, body))
                    .await?
                    .map(IncludeUsageBody::inner));
            };
            let (parts, body) = match read {
                Read::Whole(bytes, trailers) => rewrite(parts, bytes, trailers, &config, decide),
                Read::Oversized(..) if config.oversized == Oversized::Reject => {
                    return Ok(error_response(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request_too_large",
                        "the request body is larger than the gateway reads",
                    ));
                }
                // The rest is held to the same deadline.
                Read::Oversized(prefix, rest) => {
                    let deadline = upload_deadline(arrival, &config);
                    let (body, watch) = UsageRequestBody::chained(prefix, rest, deadline);
                    let mut parts = parts;
                    if let Some(watch) = watch {
                        parts.extensions.insert(watch);
                    }
                    (parts, body)
                }
                Read::Failed => {
                    return Ok(error_response(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_body",
                        "the request body could not be read",
                    ));
                }
            };
            poll_fn(|cx| inner.poll_ready(cx)).await?;
            Ok(inner
                .call(Request::from_parts(parts, map.map(body)))
                .await?
                .map(IncludeUsageBody::inner))
        })
    }
}
