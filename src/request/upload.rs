//! [`UploadBody`]: a request body held to a deadline counted from the request's arrival, so
//! that a stalled upload cannot hold a stream permit (or a connection) for ever.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};

use http::Request;
use tower_layer::Layer;
use tower_service::Service;

use super::{Arrival, UploadTimedOut};
use crate::BoxError;
use crate::stream::deadline::after;

/// The default upload timeout of [`SseLayer`](crate::SseLayer), [`UploadDeadlineLayer`] and
/// [`IncludeUsageLayer`](crate::IncludeUsageLayer): 60 seconds for the whole request body,
/// counted from the request's [`Arrival`](super::Arrival).
///
/// A fixed value rather than the stream's first-event deadline: it bounds every request,
/// streaming or not, and a first-event deadline (unset by default) measures how fast the
/// upstream answers, not how fast a client uploads; 60 s lets a 16 MiB body through at
/// about 2 Mbit/s, and is the usual default of HTTP servers for a request body (nginx's
/// `client_body_timeout`).
pub const DEFAULT_UPLOAD_TIMEOUT: Duration = Duration::from_secs(60);

pin_project! {
    /// The request body an inner service gets from [`SseLayer`](crate::SseLayer) (and from
    /// [`UploadDeadlineLayer`]; and, for the bodies it hands on as they come, from
    /// [`IncludeUsageLayer`](crate::IncludeUsageLayer)): the client's body, unchanged,
    /// until the upload deadline ([`SseLayer::upload_timeout`](crate::SseLayer::upload_timeout),
    /// 60 s by default); a body not complete by then fails with [`UploadTimedOut`] as its
    /// error (downcast the [`BoxError`] to tell it from others).
    ///
    /// Under an [`SseLayer`](crate::SseLayer), a body that times out before the
    /// inner service answered makes the whole request a `408 Request Timeout` (reported as
    /// [`Outcome::RequestTimeout`](crate::Outcome::RequestTimeout)), whatever the inner
    /// service answers after reading the failed body: a `400` from an extractor, a `502`
    /// from a proxy, an error. Once the inner service has answered (a stream that reads the
    /// request body while it answers, such as a gRPC bidirectional call), the body is no
    /// longer held to the deadline.
    ///
    /// No timer is made for a body that is complete when it arrives (a `GET`), nor for one
    /// whose frames are all ready when read: the timer (one allocation) is made the first
    /// time the body waits for the client. `Unpin` when the client's body is.
    ///
    /// Services generic over the request body (axum's `Router`, tonic, tower-http, hyper
    /// clients) take it as it is; a service that names its body type takes
    /// `Request<UploadBody<B>>`. A proxy that hands it, with the crate's other request
    /// bodies around it, to a pooled hyper client does better to box it first
    /// (`axum::body::Body::new`, `http_body_util::BodyExt::boxed`): the client allocates
    /// room for 32 requests by value with every connection, and a stack of these bodies is a
    /// few hundred bytes (the example gateway saved 8.4 KB per upstream connection so):
    ///
    /// ```
    /// use std::convert::Infallible;
    ///
    /// use bytes::Bytes;
    /// use http::{Request, Response};
    /// use http_body_util::{BodyExt, Full};
    /// use tower::{Layer, ServiceExt, service_fn};
    /// use tower_sse::SseLayer;
    /// use tower_sse::request::UploadBody;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let echo = service_fn(|request: Request<UploadBody<Full<Bytes>>>| async move {
    ///     let body = request.into_body().collect().await.unwrap().to_bytes();
    ///     Ok::<_, Infallible>(Response::new(Full::new(body)))
    /// });
    /// let service = SseLayer::new().layer(echo);
    /// let request = Request::post("/echo").body(Full::new(Bytes::from("hi"))).unwrap();
    /// let response = service.oneshot(request).await.unwrap();
    /// assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "hi");
    /// # }
    /// ```
    pub struct UploadBody<B> {
        #[pin]
        body: B,
        // Made the first time the body waits for the client (lazily: most bodies never do).
        // Boxed, so that the body is `Unpin` when the client's is (hyper's client needs it).
        timer: Option<Pin<Box<Sleep>>>,
        // When the body must have ended; `None`: never, or no longer (ended, or answered).
        deadline: Option<Instant>,
        // Shared with the `SseLayer` future that waits for the inner service's answer.
        watch: Option<UploadWatch>,
        // The body failed at the deadline: it ends there.
        timed_out: bool,
    }
}

impl<B: Body> UploadBody<B> {
    /// `body`, failed if it has not ended by `deadline` (`None`: never). No timer for a
    /// body already complete.
    pub(crate) fn until(body: B, deadline: Option<Instant>) -> Self {
        let deadline = deadline.filter(|_| !body.is_end_stream());
        Self {
            body,
            timer: None,
            deadline,
            watch: None,
            timed_out: false,
        }
    }

    /// [`UploadBody::until`], and the watch that tells the service's future whether the
    /// body timed out before the answer (`None` when it cannot: complete, or no deadline).
    pub(crate) fn watched(body: B, deadline: Option<Instant>) -> (Self, Option<UploadWatch>) {
        let mut this = Self::until(body, deadline);
        let watch = this.deadline.map(|_| UploadWatch::default());
        this.watch.clone_from(&watch);
        (this, watch)
    }
}

impl<B> UploadBody<B> {
    /// The client's body, no longer held to the deadline.
    pub fn into_inner(self) -> B {
        self.body
    }

    /// The client's body.
    pub fn get_ref(&self) -> &B {
        &self.body
    }
}

impl<B> fmt::Debug for UploadBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UploadBody")
            .field("deadline", &self.deadline)
            .field("timed_out", &self.timed_out)
            .finish_non_exhaustive()
    }
}

impl<B> Body for UploadBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.project();
        if *this.timed_out {
            return Poll::Ready(None);
        }
        // The timer runs: past it, the body fails (unless the answer already went out).
        if let Some(timer) = this.timer
            && timer.as_mut().poll(cx).is_ready()
        {
            *this.timer = None;
            *this.deadline = None;
            if this.watch.as_ref().is_none_or(UploadWatch::time_out) {
                *this.timed_out = true;
                return Poll::Ready(Some(Err(Box::new(UploadTimedOut))));
            }
        }
        match this.body.poll_frame(cx) {
            Poll::Ready(None) => {
                *this.timer = None;
                *this.deadline = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Some(Err(error))) => {
                let error = error.into();
                // An outer layer's upload deadline (IncludeUsageLayer's) is this one too.
                if error.is::<UploadTimedOut>()
                    && let Some(watch) = this.watch
                {
                    watch.time_out();
                }
                Poll::Ready(Some(Err(error)))
            }
            Poll::Pending => {
                // Waiting for the client: start the timer, the first time only.
                if this.timer.is_none()
                    && let Some(at) = *this.deadline
                {
                    if this
                        .watch
                        .as_ref()
                        .is_some_and(UploadWatch::answered_already)
                    {
                        *this.deadline = None;
                        return Poll::Pending;
                    }
                    let timer = this.timer.insert(Box::pin(sleep_until(at)));
                    if timer.as_mut().poll(cx).is_ready() {
                        *this.timer = None;
                        *this.deadline = None;
                        if this.watch.as_ref().is_none_or(UploadWatch::time_out) {
                            *this.timed_out = true;
                            return Poll::Ready(Some(Err(Box::new(UploadTimedOut))));
                        }
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.timed_out || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Holds every request body to an upload deadline counted from the request's
/// [`Arrival`]: the inner service gets it as an [`UploadBody`]. Put it outside
/// [`SseLayer`](crate::SseLayer) (and inside a [`StreamLimitLayer`](crate::StreamLimitLayer)),
/// so that a request whose body stalls is answered `408 Request Timeout` at the deadline,
/// reported as [`Outcome::RequestTimeout`](crate::Outcome::RequestTimeout), and gives the
/// limit's permit back, on every path, with or without `Accept: text/event-stream`.
///
/// `SseLayer` itself does this by default
/// ([`SseLayer::upload_timeout`](crate::SseLayer::upload_timeout), 60 s): this layer is for
/// a deadline set apart from the `SseLayer`'s, or counted further out. With it outside, the
/// `SseLayer` keeps its deadline and adds none (its inner service then gets an
/// `UploadBody<UploadBody<B>>`). [`IncludeUsageLayer`](crate::IncludeUsageLayer) does the
/// same for the requests it sees.
///
/// ```
/// use std::time::Duration;
/// use tower::ServiceBuilder;
/// use tower_sse::request::UploadDeadlineLayer;
/// use tower_sse::{SseLayer, StreamLimitLayer};
///
/// let stack = ServiceBuilder::new()
///     .layer(StreamLimitLayer::new(64))
///     .layer(UploadDeadlineLayer::new().timeout(Some(Duration::from_secs(30))))
///     .layer(SseLayer::new());
/// # let _ = stack;
/// ```
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct UploadDeadlineLayer {
    timeout: Option<Duration>,
}

impl UploadDeadlineLayer {
    /// The layer with [`DEFAULT_UPLOAD_TIMEOUT`] (60 s).
    pub const fn new() -> Self {
        Self {
            timeout: Some(DEFAULT_UPLOAD_TIMEOUT),
        }
    }

    /// How long the whole body may take to arrive, counted from the request's [`Arrival`];
    /// `None`: for ever (the body is still an [`UploadBody`]).
    pub const fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }
}

impl Default for UploadDeadlineLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for UploadDeadlineLayer {
    type Service = UploadDeadline<S>;

    fn layer(&self, inner: S) -> UploadDeadline<S> {
        UploadDeadline {
            inner,
            timeout: self.timeout,
        }
    }
}

/// The service of [`UploadDeadlineLayer`].
#[derive(Debug, Clone)]
pub struct UploadDeadline<S> {
    inner: S,
    timeout: Option<Duration>,
}

impl<S, B> Service<Request<B>> for UploadDeadline<S>
where
    S: Service<Request<UploadBody<B>>>,
    B: Body,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> S::Future {
        let (mut parts, body) = request.into_parts();
        let arrival = Arrival::stamp(&mut parts.extensions);
        let deadline = self.timeout.map(|timeout| after(arrival, timeout));
        let (body, watch) = UploadBody::watched(body, deadline);
        if let Some(watch) = watch {
            parts.extensions.insert(watch);
        }
        self.inner.call(Request::from_parts(parts, body))
    }
}

/// Whether a request's body timed out before its answer: shared by its [`UploadBody`] and
/// (through the request's extensions) the `SseLayer` future waiting for the inner service,
/// which answers `408` when it did.
/// Whichever comes first wins: the body's deadline, or the answer (after which the body is
/// no longer held to it).
#[derive(Clone, Default)]
pub(crate) struct UploadWatch(Arc<AtomicU8>);

const WAITING: u8 = 0;
const ANSWERED: u8 = 1;
const TIMED_OUT: u8 = 2;

impl UploadWatch {
    /// The deadline passed: whether the body fails (the answer has not gone out yet).
    fn time_out(&self) -> bool {
        match self
            .0
            .compare_exchange(WAITING, TIMED_OUT, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(state) => state == TIMED_OUT,
        }
    }

    fn answered_already(&self) -> bool {
        self.0.load(Ordering::Acquire) == ANSWERED
    }

    /// The inner service answered: whether the upload had timed out before (answer `408`).
    pub(crate) fn answered(&self) -> bool {
        match self
            .0
            .compare_exchange(WAITING, ANSWERED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => false,
            Err(state) => state == TIMED_OUT,
        }
    }
}

impl fmt::Debug for UploadWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.0.load(Ordering::Relaxed) {
            WAITING => "waiting",
            ANSWERED => "answered",
            _ => "timed out",
        };
        f.debug_tuple("UploadWatch").field(&state).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};

    /// One frame, then nothing for ever (a client that stalled).
    struct Stalled(bool);

    impl Body for Stalled {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            if std::mem::replace(&mut self.0, true) {
                return Poll::Pending;
            }
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"{\"a\"")))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_complete_body_gets_no_deadline_and_no_watch() {
        let (body, watch) = UploadBody::watched(Empty::<Bytes>::new(), Some(Instant::now()));
        assert!(watch.is_none());
        assert!(body.deadline.is_none());
        let (body, watch) = UploadBody::watched(Full::new(Bytes::from("x")), None);
        assert!(watch.is_none());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "x");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_at_the_deadline_with_upload_timed_out() {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(60);
        let (body, watch) = UploadBody::watched(Stalled(false), Some(deadline));
        let watch = watch.unwrap();
        let mut body = std::pin::pin!(body);
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "{\"a\"");
        assert!(body.timer.is_none(), "no timer while frames are ready");
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(error.is::<UploadTimedOut>());
        assert_eq!(Instant::now(), deadline);
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
        assert!(watch.answered(), "the service's future learns it timed out");
    }

    #[tokio::test(start_paused = true)]
    async fn once_answered_the_body_is_no_longer_held_to_the_deadline() {
        let deadline = Instant::now() + Duration::from_secs(60);
        let (body, watch) = UploadBody::watched(Stalled(false), Some(deadline));
        assert!(!watch.unwrap().answered());
        let mut body = std::pin::pin!(body);
        body.frame().await.unwrap().unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(3600), body.frame()).await;
        assert!(waited.is_err(), "still waiting for the client, not failed");
    }

    #[tokio::test(start_paused = true)]
    async fn an_outer_upload_timeout_marks_the_watch() {
        let deadline = Instant::now() + Duration::from_secs(60);
        let outer = UploadBody::until(
            Stalled(false),
            Some(Instant::now() + Duration::from_secs(1)),
        );
        let (body, watch) = UploadBody::watched(outer, Some(deadline));
        let mut body = std::pin::pin!(body);
        body.frame().await.unwrap().unwrap();
        assert!(
            body.frame()
                .await
                .unwrap()
                .unwrap_err()
                .is::<UploadTimedOut>()
        );
        assert!(watch.unwrap().answered());
    }
}
