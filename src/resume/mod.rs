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
//! # No silent loss
//!
//! A connected client never loses, without being told, what it would have received
//! without resumption. The design choices:
//!
//! - **Slow readers hold the producer back.** Before each append the producer asks the log
//!   which entry it would trim ([`StreamLog::trim_point`]); while a reader attached in this
//!   process has not read it, the producer waits (and so stops reading the upstream: the
//!   backpressure TCP gives a plain stream), for at most
//!   [`ResumeLayer::slow_reader_hold`] (30 s). Readers that keep up cost one comparison
//!   per append. Past the bound the reader is let go.
//! - **A gap is said, never hidden.** A reader that cannot go on without one (let go, the
//!   log trimmed, expired or lost what follows its cursor, the store failed a read) sends
//!   one SSE error event of type `resume_gap`, then its body fails: the server aborts the
//!   connection, so no client takes the response for complete. It is counted in the
//!   reader's [`ReaderRecord::gap`] and in the `tower_sse.resume.reader_gaps_total` metric
//!   ([`ResumeGap`]).
//! - **Attachment is shared across replicas.** A reader of a stream produced in another
//!   process keeps a presence in the store while it reads ([`StreamLog::keep_present`],
//!   every [`StreamLog::presence`] interval: a third of the Redis lease); the producer, with
//!   no reader of its own, asks the store ([`StreamLog::elsewhere`]) before its detach policy
//!   cancels, so the grace counts from the last reader anywhere (give or take one lease).
//!   The same round trips carry what those readers did, so the stream's report counts
//!   connections, resumes and replayed events wherever they were served: a client that
//!   attaches in another process writes its counts and tells the producer's process at once
//!   ([`StreamLog::readers_elsewhere`]; on Redis a `readers` message on the wake channel),
//!   and the producer reads them at once (beside the stream, which never waits on the
//!   store), so every connection made before the stream's end is in its report (give or
//!   take one round trip), whether or not the producer still had a reader of its
//!   own. (A connection made after the end, to replay a finished stream, cannot be in a
//!   report already made: its [`ReaderRecord`] has it. Events replayed by a reader
//!   elsewhere after it attached are added at its presence refreshes: the report may miss
//!   the last interval's.)
//! - **Liveness is a heartbeat.** A producer renews its lease on a timer while its stream is
//!   silent, not only by its appends: a model thinking for longer than the lease is alive.
//! - **The mirror re-syncs or says it cannot.** The Redis mirror reads the in-process log
//!   (no queue to overflow); after a failure it retries on every heartbeat and re-syncs from
//!   where Redis stops; when the in-process log no longer has what Redis misses, it marks
//!   the Redis log `lost` from there: resumes past it answer `204` (`sse-resume: gone`) and
//!   readers elsewhere get the `resume_gap` event.
//! - **Shutdown ends every reader.** [`ResumeLayer::shutdown`] ends the readers of streams
//!   produced elsewhere (or already ended) with the `server_shutdown` error event; a stream
//!   produced here ends through its log (the `SseLayer` given the same handle logs its
//!   event). [`ResumeLayer::open_readers`] is what a graceful shutdown waits for, besides the
//!   stream permits.
//! - **No allocation per live event on the reader.** Its wake-up future is re-used, an
//!   in-process log answers at once into a re-used buffer ([`StreamLog::read_now`]), and its
//!   keep-alive timer is re-armed only when it fires.
//!
//! | file | role |
//! |---|---|
//! | `layer.rs` | [`ResumeLayer`], [`Detach`], [`ReaderRecord`], [`OpenReaders`] |
//! | `gap.rs` | [`ResumeGap`]: the error a reader ends with rather than hide a gap |
//! | `service.rs` | [`Resume`]: resume or new stream, the `200` / `204` answers |
//! | `producer.rs` | the producer task: re-cut, stamp, append, the detach policy |
//! | `body.rs` | [`ResumeBody`]: the reader that follows the log |
//! | `store.rs` | the store traits, [`ResumeStore`] and [`StreamLog`], for in-process and shared stores |
//! | `memory.rs` | [`MemoryStore`]: the in-process store, on moka |
//! | `redis/` | `RedisStore`: the logs on Redis, for many replicas (feature `redis`): the connection, wake-ups, writer and reader apart |
//! | `id.rs` | [`StreamId`], [`EventId`]: made here, parsed strictly |
//! | `keyed_ids.rs` | fresh stream ids: a keyed hash of a counter, seeded once per process |
//! | `producers.rs` | the producers running in this process, in a sharded map |
//! | `shared.rs` | what a stream's producer and readers share; [`ResumableStream`] |
//! | `observer.rs` | [`ResumeObserver`], [`ResumeSummary`]: resumes in the stream's report |
//! | `traced.rs` | a span per resumed connection, linked to the stream's (feature `otel`, `ResumeLayer::spans`) |
//!
//! # The digest across resumes
//!
//! A [`DigestObserver`](crate::DigestObserver) in the `SseLayer` hashes the stream as the
//! log holds it: every event with its `id:` line, in order, without keep-alives (each
//! reader's own, and the upstream's comments, which are never logged). That is the
//! [`StreamReport::digest`](crate::StreamReport::digest) and the digest a
//! `DigestRegistry` keeps (feature `registry`). A client checks it across resumes:
//!
//! 1. keep every *complete* event it received, byte for byte, `id:` line included, from
//!    every connection, in order; drop comment blocks (`: keep-alive`, whatever text the
//!    layer's [`keep_alive`](ResumeLayer::keep_alive) sends) and the bytes of an event a
//!    disconnect cut short (it resumes after the last complete event's id, and gets the cut
//!    one again, whole);
//! 2. hash the concatenation with SHA-256 and compare.
//!
//! Each event reaches it exactly once, so the joined bytes are the stamped stream whatever
//! the number of connections.
//!
//! # What the report describes
//!
//! One report per stream, made where its producer runs: its outcome is the stream's (a
//! stream the producer ended itself, for a store failure or an event past
//! [`max_event_size`](ResumeLayer::max_event_size), says so when
//! [`ResumeObserver`] is the first observer); its `digest` is of the stamped stream (above);
//! its `events` are those received from the upstream (as without `ResumeLayer`: an event
//! an observer kept from clients, such as the usage chunk the `IncludeUsageLayer` asked for
//! on its own, is counted but never logged), and its `bytes_out` and `keep_alives` count
//! what the `SseLayer` handed to the producer (without `id:` lines, with the upstream's
//! comments and the `SseLayer`'s own keep-alives, which the producer does not log), not
//! what any one connection sent. What each connection sent (events, replayed events, keep-alives, bytes) is in its
//! [`ReaderRecord`] ([`ResumeLayer::on_reader_end`]), and resumes in the report's
//! [`ResumeSummary`].
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
//! use tower_sse::request::UploadBody;
//! use tower_sse::resume::{ResumeObserver, ResumeSummary, STREAM_ID_HEADER};
//! use tower_sse::{Outcome, ResumeLayer, SseLayer, StreamReport, UsageObserver};
//!
//! /// The upstream (in a gateway, an HTTP client): it may fail.
//! async fn upstream(request: Request<UploadBody<Body>>) -> Result<Response<Body>, BoxError> {
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
//!             .observer((ResumeObserver::new(), UsageObserver::new()))
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
pub(crate) mod keyed_ids;
pub(crate) mod layer;
pub(crate) mod memory;
pub(crate) mod observer;
pub(crate) mod producer;
pub(crate) mod producers;
#[cfg(feature = "redis")]
pub(crate) mod redis;
pub(crate) mod service;
pub(crate) mod shared;
pub(crate) mod store;
pub(crate) mod summary;
pub(crate) mod traced;

pub use self::body::ResumeBody;
pub use self::gap::{ResumeGap, ResumeGapKind};
pub use self::id::{EventId, StreamId};
pub use self::layer::ResumeLayer;
pub use self::layer::{Detach, OpenReaders, ReaderRecord};
pub use self::memory::{MemoryStore, MemoryStoreBuilder};
pub use self::observer::ResumeObserver;
pub use self::producers::ResumableStream;
#[cfg(feature = "redis")]
pub use self::redis::{RedisStore, RedisStoreBuilder};
pub use self::service::{RESUME_HEADER, Resume, ResumeFuture, STREAM_ID_HEADER};

/// Renamed to [`Resume`] (a service `Foo` with its layer `FooLayer`, as in tower-http).
#[deprecated(note = "renamed to `Resume`")]
pub type ResumeService<S> = Resume<S>;
pub use self::store::{
    Batch, NewStream, Read, ReadLimits, ReaderCounts, ResumeStore, StoreError, StoreErrorKind,
    StreamEnd, StreamLog, TraceParent,
};
pub use self::summary::ResumeSummary;

/// Moved to [`tower_sse::BoxFuture`](crate::BoxFuture): the crate has one boxed-future alias.
#[deprecated(note = "use `tower_sse::BoxFuture`")]
pub type BoxFuture<'a, T> = crate::BoxFuture<'a, T>;
