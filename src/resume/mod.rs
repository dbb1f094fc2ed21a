//! Resumable streams: a client that loses its connection comes back with `Last-Event-ID`
//! and misses nothing, sees nothing twice. See [`ResumeLayer`] for the
//! whole picture, the answers to resume requests and the layer order.
//!
//! ```text
//!                 ┌──────────── producer task (one per stream) ─────────────┐
//! upstream ─► SseLayer body ─► re-cut into events ─► stamp `id: <stream>.<seq>` ─► log (store)
//!                 └─ observers and the report run here, exactly once ───────┘      │
//!                                                                                   ▼
//!   client connection 1 ◄─ reader (cursor, own keep-alives) ◄──────── read seq > cursor
//!   client connection 2 (Last-Event-ID) ◄─ reader: replay, then the live tail ◄────┘
//! ```
//!
//! The log is the only truth. A reader marks its wake-up (a `watch` of the last seq) as
//! seen *before* it reads the entries after its cursor, so a lost or coalesced wake-up can
//! only add delay, never lose or repeat an event.
//!
//! | file | role |
//! |---|---|
//! | `layer.rs` | [`ResumeLayer`], [`Detach`], [`ReaderRecord`] |
//! | `service.rs` | [`Resume`]: resume or new stream, the `200` / `204` answers |
//! | `producer.rs` | the producer task: re-cut, stamp, append, the detach policy |
//! | `body.rs` | [`ResumeBody`]: the reader that follows the log |
//! | `store.rs` | the store traits, [`ResumeStore`] and [`StreamLog`], for in-process and shared stores |
//! | `memory.rs` | [`MemoryStore`]: the in-process store, on moka |
//! | `redis/` | `RedisStore`: the logs on Redis, for many replicas (feature `redis`): the connection, wake-ups, writer and reader apart |
//! | `id.rs` | [`StreamId`], [`EventId`]: made here, parsed strictly |
//! | `shared.rs` | what a stream's producer and readers share; [`ResumableStream`] |
//! | `observer.rs` | [`ResumeObserver`], [`ResumeSummary`]: resumes in the stream's report |
//!
//! # A whole stack, with axum's `HandleErrorLayer`
//!
//! axum serves only services whose error is `Infallible`, and the layers pass the
//! upstream's errors through unchanged: one `HandleErrorLayer` outermost turns them into
//! responses. The `ResumeLayer` goes inside it (resumes are answered from the log, never
//! forwarded, so they never fail), outside the `SseLayer`:
//!
//! ```
//! use axum::error_handling::HandleErrorLayer;
//! use axum::{BoxError, Router, body::Body};
//! use http::{Request, Response, StatusCode};
//! use http_body_util::BodyExt;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_sse::resume::{ResumeObserver, ResumeSummary, STREAM_ID_HEADER};
//! use tower_sse::{Outcome, ResumeLayer, SseLayer, StreamReport, UsageObserver};
//!
//! /// The upstream (in a gateway, an HTTP client): it may fail.
//! async fn upstream(request: Request<Body>) -> Result<Response<Body>, BoxError> {
//!     if request.uri().path() != "/v1/chat/completions" {
//!         return Err("no upstream for this path".into());
//!     }
//!     let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\n";
//!     let response = Response::builder().header("content-type", "text/event-stream");
//!     Ok(response.body(Body::from(stream))?)
//! }
//!
//! /// The upstream's errors, as responses.
//! async fn on_error(error: BoxError) -> (StatusCode, String) {
//!     (StatusCode::BAD_GATEWAY, format!("upstream: {error}"))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (reports, mut received) = tokio::sync::mpsc::unbounded_channel();
//! let stack = ServiceBuilder::new()
//!     .layer(HandleErrorLayer::new(on_error))
//!     .layer(ResumeLayer::new())
//!     .layer(
//!         SseLayer::new()
//!             .observer((UsageObserver::new(), ResumeObserver::new()))
//!             .on_end(move |report: StreamReport| {
//!                 let _ = reports.send(report);
//!             }),
//!     )
//!     .service_fn(upstream);
//! let app: Router = Router::new().fallback_service(stack);
//!
//! // A new stream: its events carry ids, its id is in a header.
//! let request = Request::post("/v1/chat/completions").body(Body::empty()).unwrap();
//! let response = app.clone().oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! let stream = response.headers()[STREAM_ID_HEADER].to_str().unwrap().to_owned();
//! let body = response.into_body().collect().await.unwrap().to_bytes();
//! let body = std::str::from_utf8(&body).unwrap();
//! assert!(body.contains("\"Hi\"") && body.contains(&format!("id: {stream}.1")));
//! let report = received.recv().await.unwrap();
//! assert_eq!(report.outcome, Outcome::Completed);
//! assert!(report.extensions.get::<ResumeSummary>().is_some());
//!
//! // The client lost its connection after the first event: it resumes, and gets the rest
//! // from the log (the upstream is not called again).
//! let resume = Request::get("/v1/chat/completions")
//!     .header("last-event-id", format!("{stream}.1"))
//!     .body(Body::empty())
//!     .unwrap();
//! let response = app.clone().oneshot(resume).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! let rest = response.into_body().collect().await.unwrap().to_bytes();
//! let rest = std::str::from_utf8(&rest).unwrap();
//! assert!(rest.contains("[DONE]") && !rest.contains("\"Hi\""));
//!
//! // The upstream failed: `HandleErrorLayer` answers.
//! let request = Request::post("/elsewhere").body(Body::empty()).unwrap();
//! let response = app.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
//! # }
//! ```

pub(crate) mod body;
pub(crate) mod gap;
pub(crate) mod id;
pub(crate) mod layer;
pub(crate) mod memory;
pub(crate) mod observer;
pub(crate) mod producer;
#[cfg(feature = "redis")]
pub(crate) mod redis;
pub(crate) mod service;
pub(crate) mod shared;
pub(crate) mod store;

pub use self::body::ResumeBody;
pub use self::gap::{ResumeGap, ResumeGapKind};
pub use self::id::{EventId, StreamId};
pub use self::layer::ResumeLayer;
pub use self::layer::{Detach, OpenReaders, ReaderRecord};
pub use self::memory::{MemoryStore, MemoryStoreBuilder};
pub use self::observer::{ResumeObserver, ResumeSummary};
#[cfg(feature = "redis")]
pub use self::redis::{RedisStore, RedisStoreBuilder};
pub use self::service::{RESUME_HEADER, Resume, ResumeFuture, STREAM_ID_HEADER};
pub use self::shared::ResumableStream;

/// Renamed to [`Resume`] (a service `Foo` with its layer `FooLayer`, as in tower-http).
#[deprecated(note = "renamed to `Resume`")]
pub type ResumeService<S> = Resume<S>;
pub use self::store::{
    Batch, NewStream, Read, ReadLimits, ReaderCounts, ResumeStore, StoreError, StoreErrorKind,
    StreamEnd, StreamLog,
};

/// Moved to [`tower_sse::BoxFuture`](crate::BoxFuture): the crate has one boxed-future alias.
#[deprecated(note = "use `tower_sse::BoxFuture`")]
pub type BoxFuture<'a, T> = crate::BoxFuture<'a, T>;
