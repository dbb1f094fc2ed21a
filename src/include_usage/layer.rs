//! [`IncludeUsageLayer`] and its settings.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::IncludeUsage;
use super::{DEFAULT_MAX_REQUEST_SIZE, DEFAULT_UPLOAD_TIMEOUT, Oversized, Unchanged};
use crate::include_usage::RequestPredicate;

/// Adds `stream_options.include_usage` to streaming OpenAI-style requests. See the
/// [module docs](crate::include_usage).
///
/// The inner service receives [`UsageRequestBody<B>`](super::UsageRequestBody); use
/// [`map_request_body`](Self::map_request_body) when it needs its own body type (with axum:
/// `.map_request_body(axum::body::Body::new)`).
///
/// Without that mapping where it is needed, the stack does not compile, and the error does
/// not name the cause: it says that some `HandleError<…>` (or `Route`, or the client) is not
/// a `Service<Request<UsageRequestBody<…>>>`. Read it as "the service inside takes another
/// body type", and add `.map_request_body(…)` (see [When `map_request_body` is
/// needed](crate#when-map_request_body-is-needed)).
///
/// The upstream receives the request with the option added:
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Full};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_sse::include_usage::UsageRequestBody;
/// use tower_sse::request::UsageInjected;
/// use tower_sse::{BoxError, IncludeUsageLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // An upstream that answers with the body it received.
/// let upstream = service_fn(|request: Request<UsageRequestBody<Full<Bytes>>>| async move {
///     assert!(request.extensions().get::<UsageInjected>().is_some());
///     let body = request.into_body().collect().await?.to_bytes();
///     Ok::<_, BoxError>(Response::new(Full::new(body)))
/// });
/// let service = IncludeUsageLayer::new().layer(upstream);
///
/// let request = Request::post("/v1/chat/completions")
///     .header("content-type", "application/json")
///     .body(Full::new(Bytes::from_static(br#"{"model":"m","stream":true}"#)))
///     .unwrap();
/// let response = service.oneshot(request).await.unwrap();
/// let seen = response.into_body().collect().await.unwrap().to_bytes();
/// assert_eq!(
///     &seen[..],
///     br#"{"stream_options":{"include_usage":true},"model":"m","stream":true}"#
/// );
/// # }
/// ```
#[derive(Clone)]
#[must_use]
pub struct IncludeUsageLayer<M = Unchanged> {
    pub(super) config: Arc<Config>,
    pub(super) map: M,
}
#[derive(Clone)]
pub(super) struct Config {
    pub(super) max_size: usize,
    pub(super) oversized: Oversized,
    pub(super) continuous: bool,
    pub(super) applies: Option<RequestPredicate>,
    pub(super) upload_timeout: Duration,
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
                upload_timeout: DEFAULT_UPLOAD_TIMEOUT,
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

    pub(super) fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// The most request-body bytes read and held. Default: [`DEFAULT_MAX_REQUEST_SIZE`].
    pub fn max_request_size(self, limit: usize) -> Self {
        self.with(|c| c.max_size = limit)
    }

    /// How long the body of a request the layer reads may take to arrive, counted from the
    /// request's [`Arrival`](crate::request::Arrival) at the outermost tower-sse layer.
    /// Default: [`DEFAULT_UPLOAD_TIMEOUT`]; `Duration::MAX` waits for ever.
    ///
    /// A body not complete by then (an upload that stalled, holding a stream permit) is not
    /// forwarded: the inner service gets the request marked
    /// [`UploadTimedOut`](crate::request::UploadTimedOut) with a body that fails, and an
    /// [`SseLayer`](crate::SseLayer) inside answers it `408 Request Timeout` and reports it
    /// without calling further in. Set it to the stream's first-event (or total) timeout, so
    /// that the stream's deadlines bound the upload too
    /// ([`SseLayer::request_deadline`](crate::SseLayer::request_deadline) is that value).
    ///
    /// It bounds every request, not only those the layer reads: a body it hands on unread
    /// fails at the deadline if it has not ended by then (see [the module
    /// docs](crate::include_usage#upload-deadline-on-every-path)).
    pub fn upload_timeout(self, timeout: Duration) -> Self {
        self.with(|c| c.upload_timeout = timeout)
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

    /// Which requests to look at (read, and change when they stream). Default: `POST` with
    /// a JSON body (or none declared) to a path ending in `/chat/completions` or
    /// `/completions` is read and changed; one to another LLM API the crate knows
    /// (`/v1/messages`, `/v1/responses`, Gemini's `:streamGenerateContent`, Ollama's
    /// `/api/chat`) is read only, to mark streams and bound the upload. Whatever the
    /// predicate says, a body with a `Content-Encoding` other than `identity` is never read.
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
