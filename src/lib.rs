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
//!   stream completed, failed, timed out or the client vanished;
//! - **resumable streams**: a client that reconnects with `Last-Event-ID` misses nothing and
//!   sees nothing twice (`ResumeLayer`, feature `resume`).
//!
//! # Example
//!
//! A streaming endpoint behind the whole stack (the same layers wrap a gateway's upstream
//! client: see [A gateway](#a-gateway)):
//!
//! ```
//! use std::time::Duration;
//!
//! use axum::{Router, body::Body, routing::post};
//! use tower::ServiceBuilder;
//! use tower_sse::{
//!     DigestObserver, IncludeUsageLayer, KeepAliveConfig, SseLayer, StreamLimitLayer,
//!     StreamReport, TimingObserver, UsageObserver,
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
//!         // axum's routes take `axum::body::Body`: see "When `map_request_body` is needed".
//!         .layer(IncludeUsageLayer::new().map_request_body(Body::new))
//!         .layer(
//!             SseLayer::new()
//!                 .keep_alive(KeepAliveConfig::new().interval(Duration::from_secs(15)))
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
//! | `ResumeLayer` (feature `resume`) | resumable streams: a producer per stream, a log, readers that resume with `Last-Event-ID` |
//! | [`BudgetLayer`](budget::BudgetLayer) | spend limits per tenant or key (requests, tokens, money; rates and UTC days and months): `429` before the upstream, settled from each report by [`BudgetObserver`](budget::BudgetObserver) |
//!
//! Outermost first: `ResumeLayer`, `StreamLimitLayer`, `RequestDigestLayer`,
//! `IncludeUsageLayer`, `SseLayer`, then the service that answers (a handler, a router, an
//! upstream client).
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
//! | `MetricsObserver` (feature `metrics`) | records OpenTelemetry GenAI metrics (names and buckets in module `metrics`) |
//! | `TraceObserver` (feature `tracing`) | one `tracing` event per finished stream |
//! | your own: implement [`Observer`] (with [`EventContext`]) | anything, e.g. in [`extensions`](StreamReport::extensions) |
//!
//! # Configuration and report types
//!
//! | type | what it is |
//! |---|---|
//! | [`KeepAliveConfig`] | interval and text of keep-alive comments ([`SseLayer::keep_alive`]) |
//! | [`ErrorEvent`] | what a client receives when its stream fails ([`SseLayer::error_event`]) |
//! | [`UpstreamErrorPolicy`](stream::UpstreamErrorPolicy) | error event, or a failed body, when the upstream body fails |
//! | [`OnEnd`] | where each report goes: a closure, or a type of yours |
//! | [`StreamReport`] | everything known about one stream when it ended |
//! | [`Outcome`] | how it ended |
//! | [`ProviderError`](provider::ProviderError) | the error a provider reported inside its stream ([`StreamReport::provider_error`]) |
//! | [`Usage`], [`UsageSource`] | token counts, reported or estimated |
//! | [`Timing`], [`Latencies`] | time to first byte and token, inter-token latency |
//! | [`Sha256Digest`] | a SHA-256 |
//!
//! # Modules
//!
//! Everything a user names often is at the root; the rest is in the module of its concern.
//!
//! | module | what is in it |
//! |---|---|
//! | [`observe`] | the [`Observer`] trait, [`EventContext`], [`BoxObserver`](observe::BoxObserver) (an observer chosen at run time), tuples of up to 16 |
//! | [`sse`] | the wire format: [`Decoder`](sse::Decoder), [`Event`](sse::Event), [`EventRef`](sse::EventRef) |
//! | [`stream`] | the service, future and body of [`SseLayer`]; [`UpstreamErrorPolicy`](stream::UpstreamErrorPolicy) |
//! | [`framing`] | is a response a stream, and how: [`Framing`](framing::Framing), [`detect`](framing::detect) |
//! | [`provider`] | the provider formats: [`Provider`](provider::Provider) |
//! | [`usage`] | how usage is read and estimated: [`UsageExtractor`](usage::UsageExtractor), [`TokenCounter`](usage::TokenCounter) |
//! | [`include_usage`] | the service and bodies of [`IncludeUsageLayer`] |
//! | [`limit`] | the service, future and body of [`StreamLimitLayer`]; open-stream counts |
//! | [`digest`] | [`DigestObserver`], [`RequestDigestLayer`] and the registry |
//! | [`request`] | markers layers leave in requests: [`StreamingRequest`](request::StreamingRequest), [`UsageInjected`](request::UsageInjected), [`RequestModel`](request::RequestModel); who a request is from: [`Tenant`](request::Tenant), [`TenantKey`](request::TenantKey) |
//! | `metrics` (feature `metrics`) | metric names, advised buckets, `describe`; `prometheus::with_buckets` (feature `prometheus`) |
//! | `resume` (feature `resume`) | the service, body and stores of `ResumeLayer`: `MemoryStore`, the `ResumeStore` trait, ids, `ResumeObserver` |
//! | [`budget`] | [`BudgetLayer`](budget::BudgetLayer), limits, the [`BudgetStore`](budget::BudgetStore) trait with `MemoryBudgets` (and `RedisBudgets`, feature `redis`), the settling observer |
//! | `span` (feature `otel`) | `SpanLayer`, `SpanObserver`: one OpenTelemetry span per stream, attribute names |
//!
//! # A gateway
//!
//! In a gateway the layers wrap the upstream client: a pooled
//! `hyper_util::client::legacy::Client` forwards every request to the upstream, and the
//! whole stack is served by axum, as the router's fallback (every path) or from a handler
//! (which can check a key or pick an upstream first).
//!
//! Each side has its own HTTP version. axum serves clients HTTP/1.1 and HTTP/2 (with prior
//! knowledge, h2c); the client speaks HTTP/1.1 to the upstream, several pooled connections,
//! or HTTP/2 when built with `.http2_only(true)`, one connection multiplexing every stream.
//! So `to_upstream` sends the request in the upstream's version, never in the client's.
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//!
//! use axum::Router;
//! use axum::body::Body;
//! use axum::error_handling::HandleErrorLayer;
//! use axum::extract::{Request, State};
//! use axum::response::{IntoResponse, Response};
//! use axum::routing::post;
//! use http::header::{ACCEPT_ENCODING, HOST};
//! use http::uri::PathAndQuery;
//! use http::{HeaderValue, StatusCode, Uri, Version};
//! use hyper_util::client::legacy::Client;
//! use hyper_util::client::legacy::connect::HttpConnector;
//! use hyper_util::rt::TokioExecutor;
//! use tokio::sync::mpsc::UnboundedSender;
//! use tower::util::BoxCloneSyncService;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_sse::request::UploadBody;
//! use tower_sse::{
//!     IncludeUsageLayer, KeepAliveConfig, SseLayer, StreamLimitLayer, StreamReport,
//!     TimingObserver, UsageObserver,
//! };
//!
//! /// The whole stack as one service of the kind axum serves: a cloneable service of
//! /// `Request<Body>` whose error is `Infallible`.
//! type Gateway = BoxCloneSyncService<Request, Response, Infallible>;
//!
//! fn build_gateway(upstream: Uri, reports: UnboundedSender<StreamReport>) -> Gateway {
//!     // One pooled client. It sends `axum::body::Body` requests, held to the upload
//!     // deadline by `SseLayer` (`UploadBody<Body>`; the body type of a client is fixed
//!     // when it is built).
//!     let client: Client<HttpConnector, UploadBody<Body>> =
//!         Client::builder(TokioExecutor::new()).build_http();
//!     let stack = ServiceBuilder::new()
//!         // axum needs `Infallible` errors: a failed upstream call becomes a 502. Handled
//!         // here, outside `SseLayer`, so that the layer still reports the failure
//!         // (`Outcome::UpstreamError`) of a streaming request.
//!         .layer(HandleErrorLayer::new(bad_gateway))
//!         .map_request(move |request| to_upstream(&upstream, request))
//!         .layer(StreamLimitLayer::new(512))
//!         // The client takes `Body`, not the layer's `UsageRequestBody<Body>`.
//!         .layer(IncludeUsageLayer::new().map_request_body(Body::new))
//!         .layer(
//!             SseLayer::new()
//!                 .keep_alive(KeepAliveConfig::new().interval(Duration::from_secs(15)))
//!                 .first_event_timeout(Duration::from_secs(120))
//!                 .idle_timeout(Duration::from_secs(30))
//!                 // `Cache-Control: no-cache`, `X-Accel-Buffering: no`: a proxy in front
//!                 // (nginx) passes each event at once.
//!                 .sse_headers(true)
//!                 .observer((UsageObserver::new(), TimingObserver::new()))
//!                 .on_end(move |report: StreamReport| {
//!                     let _ = reports.send(report);
//!                 }),
//!         )
//!         .service(client);
//!     BoxCloneSyncService::new(stack)
//! }
//!
//! /// Point a request at the upstream: same path and query, the upstream's host, in the
//! /// version the pooled client speaks, without the headers of the client's connection.
//! fn to_upstream(upstream: &Uri, mut request: Request) -> Request {
//!     let mut uri = upstream.clone().into_parts();
//!     uri.path_and_query = Some(
//!         request.uri().path_and_query().cloned().unwrap_or(PathAndQuery::from_static("/")),
//!     );
//!     *request.uri_mut() = Uri::from_parts(uri).expect("an absolute upstream URI");
//!     // The client's version is its connection's (HTTP/2 when it spoke h2 to axum), and the
//!     // pooled client refuses an HTTP/2 request on its HTTP/1.1 connections. Built with
//!     // `.http2_only(true)` (an upstream speaking HTTP/2), it sends HTTP/2 whatever this says.
//!     *request.version_mut() = Version::HTTP_11;
//!     // HTTP/1.1: the client sets the upstream's `host`. HTTP/2: `:authority`, from the URI.
//!     request.headers_mut().remove(HOST);
//!     // Hop-by-hop headers describe the client's connection (HTTP/2 forbids them, and `te`
//!     // but for `trailers`). The example gateway also drops the ones `connection` names.
//!     for name in [
//!         "connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade",
//!     ] {
//!         request.headers_mut().remove(name);
//!     }
//!     // A compressed stream passes through unread (`Framing::Encoded`: limited and
//!     // reported, but no usage, events or content deadlines): ask for it uncompressed.
//!     request
//!         .headers_mut()
//!         .insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
//!     // The example gateway also appends `X-Forwarded-For` and keeps or makes `X-Request-Id`.
//!     request
//! }
//!
//! /// The client's error (no connection to the upstream, a broken one) as a response.
//! async fn bad_gateway(error: hyper_util::client::legacy::Error) -> (StatusCode, &'static str) {
//!     let _ = error; // log it
//!     (StatusCode::BAD_GATEWAY, "the upstream could not be reached")
//! }
//!
//! /// From a handler: do what you need first, then hand the request on.
//! async fn chat(State(gateway): State<Gateway>, request: Request) -> Response {
//!     let Ok(response) = gateway.oneshot(request).await;
//!     response
//! }
//!
//! # async fn upstream_chat(body: String) -> Response {
//! #     let request: serde_json::Value = serde_json::from_str(&body).unwrap();
//! #     let mut stream = String::from(
//! #         "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
//! #     );
//! #     if request["stream_options"]["include_usage"] == true {
//! #         stream.push_str("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[],");
//! #         stream.push_str("\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\n\n");
//! #     }
//! #     stream.push_str("data: [DONE]\n\n");
//! #     ([("content-type", "text/event-stream")], stream).into_response()
//! # }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! #     use http_body_util::BodyExt;
//! #     use tower_sse::Outcome;
//! #     // A local upstream speaking OpenAI Chat.
//! #     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! #     let upstream: Uri = format!("http://{}", listener.local_addr().unwrap()).parse().unwrap();
//! #     let upstream_app = Router::new().route("/v1/chat/completions", post(upstream_chat));
//! #     tokio::spawn(async move { axum::serve(listener, upstream_app).await.unwrap() });
//! let (reports, mut received) = tokio::sync::mpsc::unbounded_channel();
//! let gateway = build_gateway(upstream, reports);
//!
//! let app: Router = Router::new()
//!     .route("/v1/chat/completions", post(chat))
//!     .fallback_service(gateway.clone())
//!     .with_state(gateway);
//! // Serve it: `axum::serve(listener, app).await`.
//! #
//! #     // A client that did not ask for usage: the report has it, the client does not. It
//! #     // spoke HTTP/2 to the gateway: the upstream gets HTTP/1.1.
//! #     let request = Request::post("/v1/chat/completions")
//! #         .version(Version::HTTP_2)
//! #         .header("content-type", "application/json")
//! #         .body(Body::from(r#"{"model":"m","stream":true,"messages":[]}"#))
//! #         .unwrap();
//! #     let response = app.clone().oneshot(request).await.unwrap();
//! #     assert_eq!(response.status(), StatusCode::OK);
//! #     let body = response.into_body().collect().await.unwrap().to_bytes();
//! #     let body = std::str::from_utf8(&body).unwrap();
//! #     assert!(body.contains("\"Hi\"") && body.ends_with("data: [DONE]\n\n"));
//! #     assert!(!body.contains("usage"));
//! #     let report = received.recv().await.unwrap();
//! #     assert_eq!(report.outcome, Outcome::Completed);
//! #     let usage = report.usage.unwrap();
//! #     assert_eq!((usage.input_tokens, usage.output_tokens), (Some(5), Some(1)));
//! #
//! #     // An upstream that cannot be reached: a 502, and a report saying so.
//! #     let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! #     let nowhere: Uri = format!("http://{}", closed.local_addr().unwrap()).parse().unwrap();
//! #     drop(closed);
//! #     let (reports, mut received) = tokio::sync::mpsc::unbounded_channel();
//! #     let app: Router = Router::new().fallback_service(build_gateway(nowhere, reports));
//! #     let request = Request::post("/v1/chat/completions")
//! #         .header("content-type", "application/json")
//! #         .body(Body::from(r#"{"model":"m","stream":true,"messages":[]}"#))
//! #         .unwrap();
//! #     let response = app.oneshot(request).await.unwrap();
//! #     assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
//! #     assert_eq!(received.recv().await.unwrap().outcome, Outcome::UpstreamError);
//! # }
//! ```
//!
//! ## When `map_request_body` is needed
//!
//! [`IncludeUsageLayer`] reads the request body, and hands the service inside it a
//! `Request<UsageRequestBody<B>>` ([`include_usage::UsageRequestBody`]), where `B` is the
//! body it was given. [`IncludeUsageLayer::map_request_body`] converts that body, and is
//! needed exactly when the service inside takes one fixed body type of its own:
//!
//! - a hyper-util `Client<C, Body>`, as above: a client's body type is fixed when it is
//!   built. Map with `.map_request_body(axum::body::Body::new)`;
//! - axum's [`Router::layer`](https://docs.rs/axum/0.8/axum/struct.Router.html#method.layer)
//!   and `route_layer`, as in the [example](#example): the layers wrap the routes, which take
//!   `Request<axum::body::Body>`. Map with `Body::new` too;
//! - any service of your own written for one body type.
//!
//! It is not needed when the service inside is generic over its request body: an axum
//! `Router` or `MethodRouter` used as that service (they convert any body themselves), a
//! `tower::service_fn` over `Request<B>`, the other layers of this crate; nor for a client
//! built for that very type, `Client<HttpConnector, UploadBody<UsageRequestBody<Body>>>`
//! (the [`SseLayer`] inside holds the body to its upload deadline:
//! [`request::UploadBody`]), which saves one boxing per request (the example gateway does
//! this). Without the mapping where it is
//! needed, the stack does not compile: the service does not implement
//! `Service<Request<UsageRequestBody<…>>>`.
//!
//! ## Errors
//!
//! axum serves only services whose error is `Infallible`. The layers add no service errors
//! of their own: every error of the stack is the inner service's (here the client's
//! `hyper_util::client::legacy::Error`), passed through unchanged, so one handler outermost
//! is all the error handling axum needs. axum's `HandleErrorLayer` is that handler: it turns
//! the error into a response (and the stack's responses into axum's `Response`). tower's
//! `map_err` cannot do it (it maps one error to another, and `Infallible` has no values),
//! nor can `map_result` alone, although it sees the error: it converts the errors of
//! `poll_ready` with `From`, and nothing converts into `Infallible`. The other way is to
//! answer the `502` in the innermost service itself, a wrapper around the client whose
//! error is already `Infallible` (the example gateway does this); `SseLayer` then sees a
//! `502` response rather than a failure, passes it through, and makes no report for it
//! (unless [early response](SseLayer::early_response) is on).
//!
//! The stack's own refusals are responses, not errors: `503` from [`StreamLimitLayer`] when
//! it is full, `504` from [`SseLayer`] when a streaming request's response head is late, and
//! `413`/`400` from [`IncludeUsageLayer`] for request bodies it will not or cannot read.
//!
//! The complete gateway, with `/metrics`, `/v1/digests/{id}` and its command line, is the
//! `example-gateway` package (`examples/gateway/src/lib.rs` has the stack).
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
//! | `ServerShutdown` | the server shut down first ([`stream::Shutdown`]) | the events so far, then an error event |
//! | `UpstreamTruncated` | the upstream ended in the middle of an event | every byte the upstream sent (its own parser drops the unfinished event); with `error_on_truncation`, the complete events, then an error event |
//! | `ProviderError` | the provider reported an error in its stream ([`StreamReport::provider_error`]), which then ended (or was cut mid-event) | every event, the provider's own error event among them (the layer adds none) |
//!
//! # Feature flags
//!
//! | feature | default | adds |
//! |---|---|---|
//! | `registry` | yes | `DigestRegistry` (moka) |
//! | `drain` | yes | `SseLayer::drain_on_disconnect` (tokio `rt`) |
//! | `metrics` | yes | `MetricsObserver` and module `metrics`, through the `metrics` facade (never installs an exporter) |
//! | `tracing` | yes | `TraceObserver` |
//! | `resume` | yes | `ResumeLayer` and module `resume` (moka; spawns a producer task per stream: tokio `rt`) |
//! | `redis` | no | `resume::RedisStore`: the logs of resumable streams on Redis, shared by every replica (the `redis` crate; turns on `resume` and `registry`) |
//! | `prometheus` | no | `metrics::prometheus::with_buckets`: the advised buckets on a `metrics-exporter-prometheus` builder (turns on `metrics`) |
//! | `otel` | no | `span::SpanLayer`: one OpenTelemetry span per stream by the GenAI conventions, joined to the caller's trace (the `opentelemetry` API, no SDK) |
//! | `full` | no | every feature above, `redis` and `prometheus` included |
//!
//! With `default-features = false` the crate is the SSE core, the layers and the observers,
//! without moka or the facades.
//!
//! # Differences from neighbours
//!
//! - axum's `Sse` encodes your own `Event` stream and keeps it alive; this layer works on any
//!   response body (an upstream's, a handler's), decodes it once, and keeps it alive too.
//!   Its [`KeepAliveConfig`] and [`sse::Event`] never collide with axum's `KeepAlive` and
//!   `Event` when imported together (the event type stays in its module).
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

pub mod budget;
pub mod cost;
pub mod digest;
mod digits;
pub mod failover;
pub mod framing;
pub mod include_usage;
mod json;
pub mod limit;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
pub mod observe;
pub mod policy;
pub mod provider;
mod report;
pub mod request;
#[cfg(feature = "resume")]
#[cfg_attr(docsrs, doc(cfg(feature = "resume")))]
pub mod resume;
#[cfg(feature = "otel")]
#[cfg_attr(docsrs, doc(cfg(feature = "otel")))]
pub mod span;
pub mod sse;
pub mod stream;
mod timing;
#[cfg(feature = "tracing")]
mod trace;
pub mod usage;

// The layers.
pub use digest::RequestDigestLayer;
pub use include_usage::IncludeUsageLayer;
pub use limit::StreamLimitLayer;
#[cfg(feature = "resume")]
#[cfg_attr(docsrs, doc(cfg(feature = "resume")))]
pub use resume::ResumeLayer;
pub use stream::SseLayer;

// The observers.
pub use digest::DigestObserver;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use metrics::MetricsObserver;
pub use observe::{EventContext, Observer};
pub use timing::TimingObserver;
#[cfg(feature = "tracing")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
pub use trace::TraceObserver;
pub use usage::UsageObserver;

// The report.
pub use report::{
    Latencies, OnEnd, Outcome, Sha256Digest, StreamReport, Timing, Usage, UsageSource,
};

// Configuration.
#[cfg(feature = "registry")]
#[cfg_attr(docsrs, doc(cfg(feature = "registry")))]
pub use digest::DigestRegistry;
pub use stream::config::{ErrorEvent, KeepAliveConfig};

/// Renamed to [`Sha256Digest`]: `Digest` clashed with the `sha2::Digest` trait.
#[deprecated(note = "renamed to `Sha256Digest`")]
pub type Digest = Sha256Digest;

/// The error type of bodies that add failure modes.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed future that is `Send`: what the store traits return
/// (`resume::ResumeStore`, `digest::SharedDigests`; features `resume` and `registry`).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
struct ReadmeDoctests;
