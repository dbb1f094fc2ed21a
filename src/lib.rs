//! Tower middleware that makes streaming HTTP responses — above all Server-Sent Events from
//! LLM inference servers and agent protocols — observable, billable and robust.
//!
//! Add one layer to an axum router, a hyper service or a tonic server, or around the
//! upstream client of a gateway, and each streaming response gets:
//!
//! - **whole, well-formed SSE events** downstream, whatever the upstream's chunking, forwarded
//!   byte for byte (NDJSON reframed into SSE on request);
//! - **keep-alive comments** from one re-armed timer, even before the upstream's first byte
//!   ([`SseLayer::early_response`]);
//! - **first-event, idle and total deadlines** that end the stream with a proper SSE error
//!   event;
//! - **time to first token and inter-token latency** per content event
//!   ([`TimingObserver`]), named after the OpenTelemetry GenAI conventions
//!   (module `metrics`, feature `metrics`);
//! - **token usage** read from the provider's own events — OpenAI Chat and Responses,
//!   Anthropic, Gemini, vLLM, Ollama — kept even when the client disconnects
//!   ([`UsageObserver`], [`IncludeUsageLayer`]);
//! - a **SHA-256 digest** of exactly what the client received, with a registry to look it up
//!   ([`DigestObserver`], `DigestRegistry` with feature `registry`);
//! - a **concurrency limit that holds until the body ends** ([`StreamLimitLayer`]);
//! - **one end-of-stream report, exactly once** ([`StreamReport`], [`OnEnd`]), whether the
//!   stream completed, failed, timed out or the client vanished.
//!
//! # Example
//!
//! A streaming endpoint behind the whole stack (the same layers wrap a gateway's upstream
//! client; see `examples/gateway.rs`):
//!
//! ```
//! use std::time::Duration;
//!
//! use axum::{Router, body::Body, routing::post};
//! use tower::ServiceBuilder;
//! use tower_sse::{
//!     DigestObserver, IncludeUsageLayer, KeepAlive, SseLayer, StreamLimitLayer, StreamReport,
//!     TimingObserver, UsageObserver,
//! };
//!
//! async fn chat() -> axum::response::Response {
//!     // Stream your model's events here (or forward an upstream's response).
//!     axum::response::Response::builder()
//!         .header("content-type", "text/event-stream")
//!         .body(Body::from("data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\n"))
//!         .unwrap()
//! }
//!
//! let app: Router = Router::new().route("/v1/chat/completions", post(chat)).layer(
//!     ServiceBuilder::new()
//!         // At most 512 open streams; the 513th gets a 503 with Retry-After.
//!         .layer(StreamLimitLayer::new(512))
//!         // Ask OpenAI-style upstreams for usage, hide it from clients that did not ask.
//!         .layer(IncludeUsageLayer::new().map_request_body(Body::new))
//!         .layer(
//!             SseLayer::new()
//!                 .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
//!                 .first_event_timeout(Duration::from_secs(120))
//!                 .idle_timeout(Duration::from_secs(30))
//!                 .observer((UsageObserver::new(), TimingObserver::new(), DigestObserver::new()))
//!                 .on_end(|report: StreamReport| {
//!                     let usage = report.usage.unwrap_or_default();
//!                     let ttft = report.timing.and_then(|t| t.time_to_first_token);
//!                     println!(
//!                         "{} {:?} in={:?} out={:?} ttft={ttft:?}",
//!                         report.outcome, report.response_id, usage.input_tokens, usage.output_tokens,
//!                     );
//!                 }),
//!         ),
//! );
//! # let _ = app;
//! ```
//!
//! # Layers
//!
//! | layer | what it does |
//! |---|---|
//! | [`SseLayer`] | the stream wrapper: whole events, keep-alive, deadlines, observers, the report |
//! | [`IncludeUsageLayer`] | adds `stream_options.include_usage` to streaming OpenAI-style requests |
//! | [`RequestDigestLayer`] | SHA-256 of the request body as the service reads it |
//! | [`StreamLimitLayer`] | at most N open streams; the permit lives in the response body |
//!
//! # Observers
//!
//! Observers watch each stream event by event and write their findings into the report. They
//! compose as tuples; order matters where one reads another's findings (usage before timing,
//! both before metrics).
//!
//! | observer | report field |
//! |---|---|
//! | [`UsageObserver`] | [`usage`](StreamReport::usage), [`finish_reason`](StreamReport::finish_reason) |
//! | [`TimingObserver`] | [`timing`](StreamReport::timing) |
//! | [`DigestObserver`] | [`digest`](StreamReport::digest), [`request_digest`](StreamReport::request_digest) |
//! | `MetricsObserver` (feature `metrics`) | records OpenTelemetry GenAI metrics |
//! | `TraceObserver` (feature `tracing`) | one `tracing` event per finished stream |
//! | your own: implement [`Observer`] | anything, e.g. in [`extensions`](StreamReport::extensions) |
//!
//! # Outcomes
//!
//! | [`Outcome`] | meaning | the client saw |
//! |---|---|---|
//! | `Completed` | the upstream ended normally | every event |
//! | `UpstreamError` | the upstream body failed (or, early-response, its call failed) | the events so far, then an error event |
//! | `ClientDisconnected` | the body was dropped before the end | what it read |
//! | `FirstEventTimeout` | no content event within the first-event timeout | keep-alives, then an error event |
//! | `IdleTimeout` | the upstream went silent too long | the events so far, then an error event |
//! | `DeadlineExceeded` | the total timeout passed | the events so far, then an error event |
//! | `EventTooLarge` | one upstream event passed `max_event_size` | the events before it, then an error event |
//! | `UpstreamTruncated` | the upstream ended in the middle of an event | the complete events, then an error event |
//!
//! # Feature flags
//!
//! | feature | default | adds |
//! |---|---|---|
//! | `registry` | yes | `DigestRegistry` (moka) |
//! | `drain` | yes | `SseLayer::drain_on_disconnect` (tokio `rt`) |
//! | `metrics` | yes | `MetricsObserver`, through the `metrics` facade (never installs an exporter) |
//! | `tracing` | yes | `TraceObserver` |
//! | `full` | — | all of the above |
//!
//! With `default-features = false` the crate is the SSE core, the layers and the observers,
//! without moka or the facades.
//!
//! # Differences from neighbours
//!
//! - axum's `Sse` encodes your own `Event` stream and keeps it alive; this layer works on any
//!   response body (an upstream's, a handler's), decodes it once, and keeps it alive too.
//! - tower-http's `TraceLayer` sees body chunks and misses client disconnects; this layer sees
//!   events and reports disconnects.
//! - tower-http's `TimeoutBody` fails the body (the connection is cut); these deadlines end the
//!   stream with an error event the client can read.
//! - tower's `ConcurrencyLimit` releases its permit when the response head is ready; streams
//!   then escape it. [`StreamLimitLayer`] keeps it until the body ends.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(
    no_crate_inject,
    attr(deny(warnings, rust_2018_idioms), allow(dead_code))
))]

mod body;
mod config;
#[cfg(feature = "drain")]
mod drain;
mod engine;
pub mod include_usage;
mod layer;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
pub mod observe;
mod provider;
mod reframe;
mod report;
pub mod sse;
#[cfg(feature = "tracing")]
mod trace;

pub use body::SseBody;
pub use config::{ErrorEvent, KeepAlive, StreamingRequest, UpstreamErrorPolicy};
pub use include_usage::{IncludeUsage, IncludeUsageLayer, UsageInjected};
pub use layer::{Sse, SseFuture, SseLayer};
pub use observe::digest::Digest;
pub use observe::timing::{Latencies, Timing, TimingObserver};
pub use observe::usage::{Usage, UsageSource};
pub use observe::{EventContext, Observer};
pub use provider::Provider;
pub use report::{Framing, OnEnd, Outcome, StreamReport};
#[cfg(feature = "tracing")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
pub use trace::TraceObserver;

// --- usage (observe/usage): exports added here ---
pub use observe::usage::{
    BuiltinExtractor, CacheCreationInputTokens, HeuristicCounter, TokenCounter, UsageExtractor,
    UsageObserver, UsageState,
};
// --- end usage ---

// --- digest, registry, limit: modules and exports added here ---
pub mod limit;
#[cfg(feature = "registry")]
#[cfg_attr(docsrs, doc(cfg(feature = "registry")))]
pub mod registry;
pub mod request_digest;

pub use limit::{
    ContentTypeIsStream, OpenStreams, StreamLimit, StreamLimitBody, StreamLimitFuture,
    StreamLimitLayer, StreamPredicate, WhenFull,
};
pub use observe::digest::DigestObserver;
#[cfg(feature = "registry")]
#[cfg_attr(docsrs, doc(cfg(feature = "registry")))]
pub use registry::{DigestRecord, DigestRegistration, DigestRegistry, DigestRegistryBuilder};
pub use request_digest::{
    RequestDigest, RequestDigestBody, RequestDigestHandle, RequestDigestLayer,
};
// --- end digest, registry, limit ---

/// The error type of bodies that add failure modes.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
struct ReadmeDoctests;
