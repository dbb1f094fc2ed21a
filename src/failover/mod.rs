//! [`Failover`]: try an ordered list of upstreams until one of them commits to an answer,
//! and never retry after the commit point (DESIGN.md §9).
//!
//! An overloaded provider answers in many ways: a `429`/`529` head, a `200` whose first
//! event is an error (Anthropic's `overloaded_error`, the Responses API's
//! `response.failed`), an empty stream, a refused connection. Until the first content event
//! reaches the client, nothing is lost by trying elsewhere; after it, the only honest end is
//! an error event. [`Failover`] draws that line:
//!
//! - the request body is kept, up to [`Failover::max_replay_body`] (default 4 MiB), so that
//!   it can be sent again; a larger one is sent once, to the first upstream, without
//!   failover, and the report says so ([`FailoverReport::replayable`]);
//! - the response head is held until the **commit point**: the first content event (as the
//!   stream's [`Provider`](crate::provider::Provider) defines content, the same rule as
//!   [`StreamReport::content_events`](crate::StreamReport::content_events)), or the commit
//!   deadline ([`Failover::commit_deadline`], default 30 s from the call), or
//!   [`Failover::max_held_bytes`] held (default 256 KiB). What was read before it (a role
//!   chunk, `message_start`, pings) goes to the client at the commit, byte for byte;
//! - before the commit, any failure moves to the next upstream after a backoff that honours
//!   `Retry-After` (in seconds or as an HTTP date, and OpenAI's `retry-after-ms`; bounded by
//!   [`Failover::max_retry_after`]): an error from the service (a refused connection), a head whose
//!   status [`Failover::retry_status`] accepts (default `408`, `429` and every `5xx`: a
//!   gateway's own `502` for an unreachable upstream too), an in-band error event, a body
//!   that fails, or a stream that ends with no content;
//! - after the commit there is no retry: the stream goes on from the upstream that
//!   committed, and a failure ends it as that upstream ended it (with the
//!   [`SseLayer`](crate::SseLayer) outside, an error event); the report says it was cut
//!   after the commit ([`FailoverReport::cut_after_commit`]);
//! - the last upstream in the list (or the only one left by the circuit breaker, or any
//!   attempt made after the commit deadline) is not held at all: its answer, whatever it
//!   is, goes to the client as it came, exactly as without the layer.
//!
//! Other answers are not failures: a success that is not an event stream (a JSON answer of
//! a request that did not ask for a stream) and a client error such as `400` or `401` (the
//! same request is as wrong elsewhere) are served as they came. Streams of JSON lines
//! (Ollama's NDJSON) are judged by their head only.
//!
//! # With the `SseLayer`
//!
//! Put [`Failover`] **inside** the [`SseLayer`](crate::SseLayer): the layer then sees one
//! answer, the one that served, and measures the time to first token from the request's
//! arrival, so that failed attempts count in it. With
//! [`SseLayer::early_response`](crate::SseLayer::early_response) on, the client gets its
//! head and the layer's keep-alive comments while the attempts run (the layer's keep-alive
//! machinery, unchanged: held heads are simply a slow upstream to it). The per-attempt
//! record travels to the layer in the response's extensions (or in [`FailoverError`] when
//! every attempt failed with an error, with or without early response) and lands in
//! [`StreamReport::failover`](crate::StreamReport::failover). The observers read it from
//! there: the [`BudgetObserver`](crate::budget::BudgetObserver) charges the tokens a failed
//! attempt reported, and the `MetricsObserver` (feature `metrics`) records them in the
//! token-usage histogram, one sample per attempt.
//!
//! Before the commit the layer decodes the events it holds to find the commit point: a
//! second decode, of the few events before the first content event only (after the commit
//! the bytes pass untouched and undecoded). The engine cannot do it instead: it sits outside,
//! and the retry must happen where the upstream services are.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceExt, service_fn};
//! use tower_sse::failover::{AttemptOutcome, Failover, ReplayBody};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Two upstreams: the first is overloaded, the second answers.
//! let upstream = |overloaded: bool| {
//!     service_fn(move |_: Request<ReplayBody<Full<Bytes>>>| async move {
//!         let response = if overloaded {
//!             Response::builder().status(529).body(Full::new(Bytes::new()))
//!         } else {
//!             Response::builder()
//!                 .header("content-type", "text/event-stream")
//!                 .body(Full::new(Bytes::from_static(
//!                     b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
//!                 )))
//!         };
//!         Ok::<_, std::convert::Infallible>(response.unwrap())
//!     })
//! };
//! let failover = Failover::new([upstream(true), upstream(false)])
//!     .backoff(std::time::Duration::ZERO);
//! let request = Request::post("/v1/chat/completions").body(Full::new(Bytes::from("{}"))).unwrap();
//! let response = failover.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! let report = response.extensions().get::<tower_sse::failover::FailoverReport>().cloned().unwrap();
//! assert_eq!(report.attempts.len(), 2);
//! assert_eq!(report.attempts[0].status, Some(StatusCode::from_u16(529).unwrap()));
//! assert_eq!(report.served, Some(1));
//! assert!(matches!(report.attempts[1].outcome, AttemptOutcome::Served(_)));
//! let body = response.into_body().collect().await.unwrap().to_bytes();
//! assert!(body.starts_with(b"data: "));
//! # }
//! ```
//!
//! | file | what |
//! |---|---|
//! | `service.rs` | [`Failover`]: the builder and the attempts, in order |
//! | `gate.rs` | reading a stream up to its commit point |
//! | `body.rs` | [`ReplayBody`] (the request sent again) and [`FailoverBody`] (held bytes, then the rest) |
//! | `health.rs` | the circuit breaker ([`CircuitBreaker`]) |
//! | `report.rs` | [`FailoverReport`], [`Attempt`], [`FailoverError`] |
//! | `weights.rs` | weighted first attempts ([`Failover::weights`]) |

mod body;
mod gate;
mod health;
mod report;
mod service;
mod weights;

pub use self::body::{FailoverBody, ReplayBody};
pub use self::health::CircuitBreaker;
pub(crate) use self::report::carried_report;
pub use self::report::{
    Attempt, AttemptError, AttemptOutcome, Commit, FailoverError, FailoverReport,
};
pub use self::service::{
    DEFAULT_BACKOFF, DEFAULT_COMMIT_DEADLINE, DEFAULT_MAX_HELD_BYTES, DEFAULT_MAX_REPLAY_BODY,
    DEFAULT_MAX_RETRY_AFTER, Failover, FailoverFuture, default_retry_status,
};
