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
//! - **Except after a disconnect that an [`SseLayer`](crate::SseLayer) inside drains**
//!   ([`drain_on_disconnect`][drain_on_disconnect], feature `drain`): the drain task keeps
//!   reading the upstream, so it keeps the permit, and the stream counts as open, until the
//!   drain ends (the upstream's end, an error, the drain's time limit, or the runtime shutting
//!   down). The permit is released then, before the report is sent.
//! - Dropping the response future before the head arrives releases it too.
//!
//! How the drain gets the permit: the limit leaves a weak handle to it in the request's
//! extensions (feature `drain`); an `SseLayer` configured to drain takes it out of the
//! request (the service inside never sees it) and turns it into a shared one, so that the
//! permit goes back when the last holder lets go. The limit still releases it outright when
//! the body ends or the response is not a stream, whoever else holds it; a weak handle left in
//! a request keeps nothing alive. Nested limits each leave their own, and a drain holds them all.
//!
//! # Layer order
//!
//! Put the limit **outside** the `SseLayer` (as in the crate docs): then a rejection never
//! reaches the stream layer, and the permit is held by the drain as above. In the other order
//! (`SseLayer` outside), the upstream body the stream layer drains is the limit's body, so the
//! drain holds the permit as well, until it drops that body; but the limit's `503` reaches the
//! stream layer as an ordinary non-stream response (passed through as it is), and the
//! [`StreamPredicate`] sees the inner service's response rather than the stream layer's.
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
//! [`open_streams`](crate::StreamLimitLayer::open_streams) (or a cloneable [`OpenStreams`] handle)
//! counts the permits held: requests waiting for their head, open streams, and in wait
//! mode permits reserved by a ready service not yet called, and streams still drained after
//! their client left. Every service made by one layer (and its clones) shares one limit.
//! [`OpenStreams::rejected`] counts the requests answered `503`. With the `metrics` feature,
//! the gauge `tower_sse.limit.open_streams` follows the same count, and the counter
//! `tower_sse.limit.rejections_total` (label `reason` = `limit_full`) the rejections, through the
//! `metrics` facade (no recorder is installed by this crate; see [`crate::metrics`][metrics] for the
//! table of every metric).
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
//! assert_eq!(open.rejected(), 0);
//! # let _ = layers;
//! ```
// Links to items of features that may be off (a per-feature docs build): without the
// feature, they lead to the crate's feature table.
#![cfg_attr(
    feature = "drain",
    doc = "\n[drain_on_disconnect]: crate::SseLayer::drain_on_disconnect"
)]
#![cfg_attr(
    not(feature = "drain"),
    doc = "\n[drain_on_disconnect]: crate#feature-flags"
)]
#![cfg_attr(feature = "metrics", doc = "\n[metrics]: crate::metrics")]
#![cfg_attr(not(feature = "metrics"), doc = "\n[metrics]: crate#feature-flags")]

mod body;
mod future;
pub(crate) mod layer;
mod permit;
mod service;

pub use self::body::StreamLimitBody;
pub use self::future::StreamLimitFuture;
pub use self::layer::StreamLimitLayer;
pub use self::permit::OpenStreams;
pub use self::service::StreamLimit;

pub(crate) use self::permit::DrainPermits;

use http::Response;

/// What to do with a request when every permit is taken.
///
/// With [`Wait`](Self::Wait), the service is not ready while the limit is full (bound the
/// wait with a timeout or a `LoadShed` outside):
///
/// ```
/// use std::time::Duration;
///
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_sse::StreamLimitLayer;
/// use tower_sse::limit::WhenFull;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let upstream = service_fn(|_: Request<()>| async {
///     let response = Response::builder()
///         .header("content-type", "text/event-stream")
///         .body(Full::new(Bytes::from_static(b"data: hi\n\n")))
///         .unwrap();
///     Ok::<_, std::convert::Infallible>(response)
/// });
/// let service = StreamLimitLayer::new(1).when_full(WhenFull::Wait).layer(upstream);
///
/// let first = service.clone().oneshot(Request::new(())).await.unwrap();
/// // The first stream's body holds the only permit: the next request waits.
/// let mut second = service.clone();
/// let wait = tokio::time::timeout(Duration::from_millis(20), second.ready()).await;
/// assert!(wait.is_err(), "not ready while the limit is full");
/// drop(first); // the stream ended (here, its client went away)
/// second.ready().await.unwrap();
/// # }
/// ```
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
/// use tower_sse::StreamLimitLayer;
/// use tower_sse::stream::SseBody;
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
///
/// ```
/// use http::Response;
/// use tower_sse::limit::{ContentTypeIsStream, StreamPredicate};
///
/// let head = |content_type| Response::builder().header("content-type", content_type).body(()).unwrap();
/// assert!(ContentTypeIsStream.is_stream(&head("text/event-stream; charset=utf-8")));
/// assert!(ContentTypeIsStream.is_stream(&head("application/x-ndjson")));
/// assert!(!ContentTypeIsStream.is_stream(&head("application/json")));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ContentTypeIsStream;

impl<B> StreamPredicate<B> for ContentTypeIsStream {
    fn is_stream(&self, response: &Response<B>) -> bool {
        crate::framing::detect(response.headers(), true).is_some()
    }
}
