//! At most N open streams, counted until each stream's body ends: [`StreamLimitLayer`].
//!
//! # When to use it
//!
//! To bound how many streams (LLM generations, event feeds) a server or gateway serves at
//! once. A generation's response head comes within milliseconds, its body lasts minutes:
//! tower's `ConcurrencyLimit` releases its permit with the response *future*, at the
//! headers, so streams escape it entirely; tower-http's `InFlightRequests` counts bodies but
//! does not limit. Here the permit moves into the response body.
//!
//! # The permit's life
//!
//! - **Taken** in `call` (or, in [`WhenFull::Wait`] mode, in `poll_ready`). Held while
//!   waiting for the inner service's response head.
//! - **Released at once**, before the response is returned, when the response is not a
//!   stream (decided by a [`StreamPredicate`]; the default, [`ContentTypeIsStream`], looks
//!   for `text/event-stream` and the NDJSON media types), when its body is already at its
//!   end, or when the inner service fails.
//! - Otherwise **moved into the [`StreamLimitBody`]** and released when the body ends
//!   (`None`, trailers, or a frame after which the inner body says `is_end_stream()`), fails,
//!   or is dropped (the client went away) — whichever comes first, exactly once. The permit
//!   is released before the inner body's own drop runs (so before an
//!   [`SseLayer`](crate::SseLayer) report made on disconnect is sent).
//! - Dropping the response future before the head arrives releases it too.
//!
//! A client that stops reading without disconnecting keeps its permit until the connection
//! closes: the server stops polling a body whose client does not read, so no deadline inside
//! the body can fire either. Bound that at the connection level (TCP keepalive, server
//! timeouts).
//!
//! # When full
//!
//! [`WhenFull::Reject`] (the default) answers at once with `503 Service Unavailable`, a
//! `Retry-After` header (1 second by default) and a small JSON error body, without calling
//! the inner service (the service is as ready as its inner service, as with tower's
//! `LoadShed`). [`WhenFull::Wait`] applies backpressure instead: `poll_ready` stays
//! pending until a stream ends, like tower's `ConcurrencyLimit` (put a `LoadShed` or a
//! timeout outside to bound the wait).
//!
//! # Counting
//!
//! [`open_streams`](StreamLimitLayer::open_streams) (or a cloneable [`OpenStreams`] handle)
//! counts the permits held: requests waiting for their head, open streams, and in wait
//! mode permits reserved by a ready service not yet called. Every service made by one layer
//! (and its clones) shares one limit. With the `metrics` feature, the gauge
//! `tower_sse.limit.open_streams` follows the same count through the `metrics` facade (no
//! recorder is installed by this crate).
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_sse::{SseLayer, StreamLimitLayer};
//!
//! let limit = StreamLimitLayer::new(512);
//! let open = limit.counter();
//! let layers = ServiceBuilder::new()
//!     .layer(limit)
//!     .layer(SseLayer::new());
//! assert_eq!(open.get(), 0);
//! # let _ = layers;
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tower_layer::Layer;
use tower_service::Service;

/// The name of the gauge of open streams (feature `metrics`).
#[cfg(feature = "metrics")]
const OPEN_STREAMS_GAUGE: &str = "tower_sse.limit.open_streams";

const DEFAULT_REJECTION: &str =
    r#"{"error":{"type":"too_many_streams","message":"too many open streams, retry later"}}"#;

/// What to do with a request when every permit is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WhenFull {
    /// Answer `503 Service Unavailable` at once, with `Retry-After` (the default).
    #[default]
    Reject,
    /// Stay not ready (`poll_ready` pending) until a permit frees up.
    Wait,
}

/// Decides, from the response head, whether a response is a stream that keeps its permit
/// until its body ends. Anything else gives its permit back at once.
///
/// Implemented for [`ContentTypeIsStream`] (the default) and for closures taking
/// `&Response<B>`, which can also look at the body:
///
/// ```
/// use http::Response;
/// use tower_sse::{SseBody, StreamLimitLayer};
///
/// // Behind an `SseLayer`: a stream is what the stream layer handles as one.
/// let limit = StreamLimitLayer::new(100)
///     .stream_predicate(|response: &Response<SseBody<axum::body::Body>>| {
///         response.body().is_stream()
///     });
/// # let _ = limit;
/// ```
pub trait StreamPredicate<B> {
    /// Whether this response is a stream.
    fn is_stream(&self, response: &Response<B>) -> bool;
}

impl<B, F> StreamPredicate<B> for F
where
    F: Fn(&Response<B>) -> bool,
{
    fn is_stream(&self, response: &Response<B>) -> bool {
        self(response)
    }
}

/// The default [`StreamPredicate`]: a response is a stream when its content type is
/// `text/event-stream` or one of the NDJSON types (`application/x-ndjson`,
/// `application/jsonl`, …), the same test the [`SseLayer`](crate::SseLayer) makes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ContentTypeIsStream;

impl<B> StreamPredicate<B> for ContentTypeIsStream {
    fn is_stream(&self, response: &Response<B>) -> bool {
        crate::config::default_framing(response.headers(), true).is_some()
    }
}

/// Limits open streams; see the [module docs](self).
///
/// ```
/// use std::time::Duration;
/// use tower_sse::{StreamLimitLayer, WhenFull};
///
/// let reject = StreamLimitLayer::new(1000).retry_after(Duration::from_secs(5));
/// let wait = StreamLimitLayer::new(64).when_full(WhenFull::Wait);
/// # let _ = (reject, wait);
/// ```
#[must_use]
pub struct StreamLimitLayer<P = ContentTypeIsStream> {
    settings: Arc<Settings>,
    predicate: P,
}

#[derive(Clone)]
struct Settings {
    semaphore: Arc<Semaphore>,
    max: usize,
    when_full: WhenFull,
    retry_after: HeaderValue,
    rejection_type: HeaderValue,
    rejection_body: Bytes,
}

impl StreamLimitLayer {
    /// At most `max` open streams (clamped to Tokio's largest semaphore, `usize::MAX >> 3`).
    /// Rejects with `503` when full; `Retry-After: 1`.
    pub fn new(max: usize) -> Self {
        let max = max.min(Semaphore::MAX_PERMITS);
        Self {
            settings: Arc::new(Settings {
                semaphore: Arc::new(Semaphore::new(max)),
                max,
                when_full: WhenFull::Reject,
                retry_after: HeaderValue::from_static("1"),
                rejection_type: HeaderValue::from_static("application/json"),
                rejection_body: Bytes::from_static(DEFAULT_REJECTION.as_bytes()),
            }),
            predicate: ContentTypeIsStream,
        }
    }
}

impl<P> StreamLimitLayer<P> {
    fn with(mut self, f: impl FnOnce(&mut Settings)) -> Self {
        f(Arc::make_mut(&mut self.settings));
        self
    }

    /// Reject (the default) or wait when every permit is taken.
    pub fn when_full(self, when_full: WhenFull) -> Self {
        self.with(|s| s.when_full = when_full)
    }

    /// The `Retry-After` of rejections, in whole seconds (rounded up). Default: 1 second.
    pub fn retry_after(self, after: Duration) -> Self {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        self.with(|s| s.retry_after = HeaderValue::from(secs))
    }

    /// The body of rejections, and its content type. Default: `application/json`,
    /// `{"error":{"type":"too_many_streams","message":"too many open streams, retry later"}}`.
    pub fn rejection_body(self, content_type: HeaderValue, body: impl Into<Bytes>) -> Self {
        let body = body.into();
        self.with(|s| {
            s.rejection_type = content_type;
            s.rejection_body = body;
        })
    }

    /// Decide which responses are streams that keep their permit (default:
    /// [`ContentTypeIsStream`]).
    pub fn stream_predicate<P2>(self, predicate: P2) -> StreamLimitLayer<P2> {
        StreamLimitLayer {
            settings: self.settings,
            predicate,
        }
    }

    /// Permits held now: open streams, and requests waiting for their response head.
    pub fn open_streams(&self) -> usize {
        self.counter().get()
    }

    /// A handle that reads [`open_streams`](Self::open_streams), for metrics or health
    /// checks elsewhere.
    pub fn counter(&self) -> OpenStreams {
        OpenStreams {
            semaphore: self.settings.semaphore.clone(),
            max: self.settings.max,
        }
    }
}

impl<P: Clone> Clone for StreamLimitLayer<P> {
    fn clone(&self) -> Self {
        Self {
            settings: self.settings.clone(),
            predicate: self.predicate.clone(),
        }
    }
}

impl<P> fmt::Debug for StreamLimitLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamLimitLayer")
            .field("settings", &self.settings)
            .field("predicate", &std::any::type_name::<P>())
            .finish()
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("max", &self.max)
            .field(
                "open",
                &(self.max - self.semaphore.available_permits().min(self.max)),
            )
            .field("when_full", &self.when_full)
            .field("retry_after", &self.retry_after)
            .field("rejection_type", &self.rejection_type)
            .finish_non_exhaustive()
    }
}

impl<S, P: Clone> Layer<S> for StreamLimitLayer<P> {
    type Service = StreamLimit<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamLimit {
            inner,
            settings: self.settings.clone(),
            predicate: self.predicate.clone(),
            reserved: None,
            acquiring: Mutex::new(None),
        }
    }
}

/// Reads the number of open streams of a [`StreamLimitLayer`] (permits held).
#[derive(Clone)]
pub struct OpenStreams {
    semaphore: Arc<Semaphore>,
    max: usize,
}

impl OpenStreams {
    /// Permits held now.
    pub fn get(&self) -> usize {
        self.max - self.semaphore.available_permits().min(self.max)
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }
}

impl fmt::Debug for OpenStreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenStreams")
            .field("open", &self.get())
            .field("max", &self.max)
            .finish()
    }
}

/// One permit; counted by the gauge while it lives.
struct Permit {
    _permit: OwnedSemaphorePermit,
}

impl Permit {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        #[cfg(feature = "metrics")]
        metrics::gauge!(OPEN_STREAMS_GAUGE).increment(1.0);
        Self { _permit: permit }
    }
}

#[cfg(feature = "metrics")]
impl Drop for Permit {
    fn drop(&mut self) {
        metrics::gauge!(OPEN_STREAMS_GAUGE).decrement(1.0);
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// The service of [`StreamLimitLayer`].
///
/// Cloning it never copies a permit reserved by `poll_ready`: a clone starts not ready.
pub struct StreamLimit<S, P = ContentTypeIsStream> {
    inner: S,
    settings: Arc<Settings>,
    predicate: P,
    /// Wait mode: the permit `poll_ready` acquired for the next `call`.
    reserved: Option<Permit>,
    /// Wait mode: the pending acquisition. In a `Mutex` only so that the service is `Sync`
    /// (never locked: it is only reached through `&mut self`).
    acquiring: Mutex<Option<Acquire>>,
}

impl<S, P> StreamLimit<S, P> {
    /// Permits held now: open streams, and requests waiting for their response head.
    pub fn open_streams(&self) -> usize {
        self.settings.max
            - self
                .settings
                .semaphore
                .available_permits()
                .min(self.settings.max)
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwrap the service (a reserved permit is released).
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Wait mode: get a permit for the next call.
    fn poll_acquire(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let acquiring = self
            .acquiring
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if acquiring.is_none() {
            match self.settings.semaphore.clone().try_acquire_owned() {
                Ok(permit) => {
                    self.reserved = Some(Permit::new(permit));
                    return Poll::Ready(());
                }
                // Never closed; should it be, `call` answers 503.
                Err(TryAcquireError::Closed) => return Poll::Ready(()),
                Err(TryAcquireError::NoPermits) => {
                    *acquiring = Some(Box::pin(self.settings.semaphore.clone().acquire_owned()));
                }
            }
        }
        let Some(future) = acquiring.as_mut() else {
            return Poll::Ready(());
        };
        let result = ready!(future.as_mut().poll(cx));
        *acquiring = None;
        if let Ok(permit) = result {
            self.reserved = Some(Permit::new(permit));
        }
        Poll::Ready(())
    }
}

impl<S: Clone, P: Clone> Clone for StreamLimit<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            settings: self.settings.clone(),
            predicate: self.predicate.clone(),
            reserved: None,
            acquiring: Mutex::new(None),
        }
    }
}

impl<S: fmt::Debug, P> fmt::Debug for StreamLimit<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamLimit")
            .field("inner", &self.inner)
            .field("settings", &self.settings)
            .field("reserved", &self.reserved.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, P, ReqBody, ResBody> Service<Request<ReqBody>> for StreamLimit<S, P>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    P: StreamPredicate<ResBody> + Clone,
{
    type Response = Response<StreamLimitBody<ResBody>>;
    type Error = S::Error;
    type Future = StreamLimitFuture<S::Future, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.settings.when_full == WhenFull::Wait && self.reserved.is_none() {
            ready!(self.poll_acquire(cx));
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let permit = self.reserved.take().or_else(|| {
            self.settings
                .semaphore
                .clone()
                .try_acquire_owned()
                .ok()
                .map(Permit::new)
        });
        let kind = match permit {
            Some(permit) => FutureKind::Waiting {
                future: self.inner.call(request),
                permit: Some(permit),
                predicate: self.predicate.clone(),
            },
            None => FutureKind::Rejected {
                settings: Some(self.settings.clone()),
            },
        };
        StreamLimitFuture { kind }
    }
}

pin_project! {
    /// The response future of [`StreamLimit`].
    pub struct StreamLimitFuture<F, P> {
        #[pin]
        kind: FutureKind<F, P>,
    }
}

pin_project! {
    #[project = FutureProj]
    enum FutureKind<F, P> {
        Waiting {
            #[pin]
            future: F,
            permit: Option<Permit>,
            predicate: P,
        },
        Rejected { settings: Option<Arc<Settings>> },
    }
}

impl<F, P> fmt::Debug for StreamLimitFuture<F, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            FutureKind::Waiting { .. } => "Waiting",
            FutureKind::Rejected { .. } => "Rejected",
        };
        f.debug_struct("StreamLimitFuture")
            .field("kind", &kind)
            .finish()
    }
}

impl<F, P, B, E> Future for StreamLimitFuture<F, P>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
    P: StreamPredicate<B>,
{
    type Output = Result<Response<StreamLimitBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            FutureProj::Waiting {
                future,
                permit,
                predicate,
            } => {
                // An error drops the permit with the future's state, below.
                let response = match ready!(future.poll(cx)) {
                    Ok(response) => response,
                    Err(error) => {
                        permit.take();
                        return Poll::Ready(Err(error));
                    }
                };
                let permit = permit.take();
                let permit = permit
                    .filter(|_| predicate.is_stream(&response) && !response.body().is_end_stream());
                Poll::Ready(Ok(response.map(|body| StreamLimitBody {
                    kind: BodyKind::Limited { permit, body },
                })))
            }
            FutureProj::Rejected { settings } => match settings.take() {
                Some(settings) => Poll::Ready(Ok(rejection(&settings))),
                None => Poll::Pending,
            },
        }
    }
}

fn rejection<B>(settings: &Settings) -> Response<StreamLimitBody<B>> {
    let mut response = Response::new(StreamLimitBody {
        kind: BodyKind::Rejected {
            data: Some(settings.rejection_body.clone()),
        },
    });
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(RETRY_AFTER, settings.retry_after.clone());
    headers.insert(CONTENT_TYPE, settings.rejection_type.clone());
    response
}

pin_project! {
    /// The response body of [`StreamLimit`]: the inner body, holding the stream's permit
    /// until it ends, fails or is dropped; or the body of a rejection.
    ///
    /// Frames, errors and hints (`size_hint`, `is_end_stream`) of the inner body pass through
    /// untouched, and its error type is kept.
    pub struct StreamLimitBody<B> {
        #[pin]
        kind: BodyKind<B>,
    }
}

pin_project! {
    #[project = BodyProj]
    enum BodyKind<B> {
        // The permit is declared first so that it is released before the body's own drop.
        Limited { permit: Option<Permit>, #[pin] body: B },
        Rejected { data: Option<Bytes> },
    }
}

impl<B> StreamLimitBody<B> {
    /// Whether this body still holds a permit.
    pub fn holds_permit(&self) -> bool {
        matches!(
            self.kind,
            BodyKind::Limited {
                permit: Some(_),
                ..
            }
        )
    }

    /// Whether this is the body of a rejection (`503`).
    pub fn is_rejection(&self) -> bool {
        matches!(self.kind, BodyKind::Rejected { .. })
    }
}

impl<B> fmt::Debug for StreamLimitBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamLimitBody")
            .field("holds_permit", &self.holds_permit())
            .field("is_rejection", &self.is_rejection())
            .finish_non_exhaustive()
    }
}

impl<B> Body for StreamLimitBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            BodyProj::Limited { permit, mut body } => {
                let result = ready!(body.as_mut().poll_frame(cx));
                let ended = match &result {
                    Some(Ok(frame)) => frame.is_trailers() || body.is_end_stream(),
                    Some(Err(_)) | None => true,
                };
                if ended {
                    permit.take();
                }
                Poll::Ready(result)
            }
            BodyProj::Rejected { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Limited { body, .. } => body.is_end_stream(),
            BodyKind::Rejected { data } => data.is_none(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Limited { body, .. } => body.size_hint(),
            BodyKind::Rejected { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
