//! One connection's watch: how long it may wait for a request head, and how long it may sit
//! idle, with nothing in flight.
//!
//! hyper has a header read timeout for HTTP/1.1, but its clock also runs while a keep-alive
//! connection waits for its next request, so it cannot tell a slow head from an idle
//! connection: the header timeout would cap keep-alive at a few seconds, shorter than the
//! idle timeout of the load balancers in front (they must close first, or they send a
//! request into a connection being closed and answer `502`). It also does not run before
//! hyper-util has seen enough bytes to tell HTTP/1.1 from HTTP/2. So the gateway keeps the
//! two clocks itself, per connection, from three facts:
//!
//! - requests in flight: counted from the service call until the response body is dropped
//!   (sent, failed or abandoned), by [`Tracked`] around the service;
//! - when the connection went idle: at accept, and when the last request in flight ended;
//! - when a request head began: at accept (a new connection owes its first request at
//!   once, whatever the protocol), and for HTTP/1.1 at the first byte read while idle, by
//!   [`Watched`] around the socket. HTTP/2 reads while idle are pings and settings, not heads.
//!
//! [`watch`] resolves when the connection must close: the head did not arrive within the
//! header timeout, or nothing was in flight for the idle timeout. It costs no timer while
//! requests are in flight beyond one lazy recheck, and two atomic loads per socket read.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Why a connection is closed by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Close {
    /// A request head (or a new connection's first request) did not arrive in time: the
    /// connection is dropped at once.
    HeadTimeout,
    /// Nothing was in flight for the idle timeout: the connection is shut down gracefully
    /// (HTTP/2 `GOAWAY`).
    Idle,
}

/// The clocks: `None` is off.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) head: Option<Duration>,
    pub(crate) idle: Option<Duration>,
}

/// What one connection is doing, shared by its socket, its service and its watch.
#[derive(Debug)]
pub(crate) struct Activity {
    origin: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `origin`, plus one, when the current head began; 0: no head pending.
    head_since: AtomicU64,
    /// Milliseconds since `origin` when the last request in flight ended.
    idle_since: AtomicU64,
    http2: AtomicBool,
    /// Wakes the watch when a head begins: its deadline comes before the idle one.
    head_began: Notify,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            origin: Instant::now(),
            in_flight: AtomicUsize::new(0),
            // A new connection owes its first request head from the start.
            head_since: AtomicU64::new(1),
            idle_since: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            head_began: Notify::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: u64) -> Instant {
        self.origin + Duration::from_millis(ms)
    }

    /// Bytes arrived on the socket.
    fn on_read(&self, bytes: &[u8], first: bool) {
        if first && bytes.starts_with(b"PRI ") {
            // The HTTP/2 connection preface.
            self.http2.store(true, Ordering::Relaxed);
        }
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == 0
            && !self.http2.load(Ordering::Relaxed)
        {
            self.head_since.store(self.now_ms() + 1, Ordering::Relaxed);
            self.head_began.notify_one();
        }
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
    }

    fn request_ended(&self) {
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_since.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// Requests whose response has not ended.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// When the connection must close if nothing changes, and why; `None` while requests
    /// are in flight (or the clock that applies is off).
    fn deadline(&self, timeouts: Timeouts) -> Option<(Instant, Close)> {
        if self.in_flight() > 0 {
            return None;
        }
        // A head that began has the header timeout, even past the idle deadline.
        let head = self.head_since.load(Ordering::Relaxed);
        if let (1.., Some(timeout)) = (head, timeouts.head) {
            return Some((self.at(head - 1) + timeout, Close::HeadTimeout));
        }
        let idle = self.idle_since.load(Ordering::Relaxed);
        Some((self.at(idle) + timeouts.idle?, Close::Idle))
    }
}

/// Resolves when the connection must close. Polled next to the connection, in its task.
pub(crate) async fn watch(activity: &Activity, timeouts: Timeouts) -> Close {
    let Some(recheck) = timeouts.head.into_iter().chain(timeouts.idle).min() else {
        return std::future::pending().await;
    };
    loop {
        match activity.deadline(timeouts) {
            Some((at, why)) if at <= Instant::now() => return why,
            Some((at, _)) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = activity.head_began.notified() => {}
                }
            }
            // In flight (or a clock off for this state): look again later. An idle
            // deadline found late is late by less than `recheck`.
            None => tokio::time::sleep(recheck).await,
        }
    }
}

/// A socket that tells its [`Activity`] when bytes arrive.
#[derive(Debug)]
pub(crate) struct Watched<T> {
    io: T,
    activity: Arc<Activity>,
    first_read: bool,
}

impl<T> Watched<T> {
    pub(crate) fn new(io: T, activity: Arc<Activity>) -> Self {
        Self {
            io,
            activity,
            first_read: true,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            this.activity.on_read(read, this.first_read);
            this.first_read = false;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A hyper service that counts its requests in flight in an [`Activity`]: from the call
/// until the response body is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

/// One request in flight; ends when dropped.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.request_started();
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::start(&self.activity);
        TrackedFuture {
            inner: self.inner.call(request),
            in_flight: Some(in_flight),
        }
    }
}

pin_project! {
    /// The response future of [`Tracked`]: hands its request's [`InFlight`] to the body.
    pub(crate) struct TrackedFuture<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let in_flight = this.in_flight.take();
        Poll::Ready(Ok(response.map(|inner| TrackedBody {
            inner,
            _in_flight: in_flight,
        })))
    }
}

pin_project! {
    /// A response body that holds its request's [`InFlight`]; frames and hints pass through.
    pub(crate) struct TrackedBody<B> {
        #[pin]
        inner: B,
        _in_flight: Option<InFlight>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
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

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: Timeouts = Timeouts {
        head: Some(Duration::from_secs(2)),
        idle: Some(Duration::from_secs(10)),
    };

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_owes_its_first_head_within_the_header_timeout() {
        let activity = Activity::new();
        assert_eq!(watch(&activity, BOTH).await, Close::HeadTimeout);
        assert_eq!(activity.now_ms(), 2000);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_after_a_request_then_a_slow_head() {
        let activity = Activity::new();
        let request = InFlight::start(&activity);
        // In flight: no clock, however long.
        assert!(activity.deadline(BOTH).is_none());
        tokio::time::advance(Duration::from_secs(60)).await;
        drop(request);
        let (at, why) = activity.deadline(BOTH).unwrap();
        assert_eq!(
            (at - activity.origin, why),
            (Duration::from_secs(70), Close::Idle)
        );
        // The next head begins late in the idle window: it gets the whole header timeout.
        tokio::time::advance(Duration::from_secs(9)).await;
        activity.on_read(b"GET / HTTP/1.1\r\n", false);
        let (at, why) = activity.deadline(BOTH).unwrap();
        assert_eq!(
            (at - activity.origin, why),
            (Duration::from_secs(71), Close::HeadTimeout)
        );
        // It arrives: in flight again.
        let _request = InFlight::start(&activity);
        assert!(activity.deadline(BOTH).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_begins_while_idle_is_timed_from_its_first_byte() {
        let activity = Activity::new();
        drop(InFlight::start(&activity));
        let watcher = tokio::spawn({
            let activity = activity.clone();
            async move { watch(&activity, BOTH).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        activity.on_read(b"GET / HT", false);
        assert_eq!(watcher.await.unwrap(), Close::HeadTimeout);
        // At its own deadline (1 s + 2 s), not at the idle one (10 s).
        assert_eq!(activity.now_ms(), 3000);
    }

    #[tokio::test(start_paused = true)]
    async fn http2_reads_while_idle_are_not_heads() {
        let activity = Activity::new();
        activity.on_read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", true);
        drop(InFlight::start(&activity));
        activity.on_read(b"\0\0\x08\x06\0\0\0\0\0pingping", false);
        assert_eq!(activity.deadline(BOTH).unwrap().1, Close::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn clocks_can_be_off() {
        let activity = Activity::new();
        let off = Timeouts {
            head: None,
            idle: None,
        };
        let watched = tokio::time::timeout(Duration::from_secs(3600), watch(&activity, off));
        assert!(watched.await.is_err());
        let idle_only = Timeouts {
            head: None,
            idle: Some(Duration::from_secs(5)),
        };
        drop(InFlight::start(&activity));
        assert_eq!(watch(&activity, idle_only).await, Close::Idle);
    }
}
