//! One OpenTelemetry span per streamed call, by the GenAI semantic conventions (feature
//! `otel`).
//!
//! [`SpanLayer`] opens a span of kind `CLIENT` when the request enters it, parented to the
//! caller's trace (W3C `traceparent` / `tracestate`, or the global propagator), writes the
//! span's context into the request that goes upstream, so that the upstream's spans join the
//! same trace, and makes the span current while the inner service's future and the response
//! body are polled. Its [`SpanObserver`], last in the observer tuple of the
//! [`SseLayer`](crate::SseLayer) inside it, ends the span **once**, from the stream's final
//! [`StreamReport`](crate::StreamReport), on every path the report covers: completion,
//! upstream errors, deadlines, a client that left, a drained upstream, shutdown. A request
//! the `SseLayer` does not take as a stream ends its span when its body ends or is dropped,
//! with the HTTP status.
//!
//! Memory per stream is constant: no span event per chunk; the attributes are written once,
//! at the end, from the report. No payload is ever written (counts, names, ids, a digest).
//!
//! # Why the OpenTelemetry API, and not a `tracing` span
//!
//! - **Context propagation needs the OpenTelemetry API anyway.** Reading the caller's
//!   `traceparent` and writing the upstream's are OpenTelemetry concepts: a `tracing` span
//!   can only be joined to a remote parent through `tracing-opentelemetry`, which brings the
//!   OpenTelemetry SDK into the library. The `opentelemetry` crate with `trace` alone and no
//!   default features adds four small crates (`futures-core`, `futures-sink`,
//!   `pin-project-lite`, `thiserror`) and no SDK; the application picks its SDK and exporter.
//! - **Ended exactly once, explicitly.** An OpenTelemetry span ends when [`SpanObserver`]
//!   ends it from the report. A `tracing` span closes when its last clone is dropped, so a
//!   clone kept anywhere (a drain task, a spawned reader) holds it open: the "span never ends
//!   for an abandoned stream" bug of the peers.
//! - **The conventions' shapes.** Kind `CLIENT`, a name known only at the end
//!   (`{gen_ai.operation.name} {gen_ai.request.model}`), `gen_ai.response.finish_reasons` as
//!   a string array, typed integer counts and an error status are native here; through
//!   `tracing` they are `otel.*` field conventions of one bridge, with at most 32 fields
//!   declared up front.
//! - **`tracing-opentelemetry` users still nest.** While the body is polled the span's
//!   context is attached, and `tracing-opentelemetry` parents a span with no `tracing` parent
//!   to the attached OpenTelemetry context; the crate's `tracing` feature
//!   (`TraceObserver`) still logs one event per stream beside it.
//!
//! # Attributes
//!
//! Written at the end, when the report has them (an unknown count is left out, never 0).
//! The names are the constants in [`names`].
//!
//! | attribute | type | value |
//! |---|---|---|
//! | span name | | `{gen_ai.operation.name} {gen_ai.request.model}` (the response model, or the operation alone, when the request's is unknown) |
//! | span kind | | `CLIENT` |
//! | `gen_ai.operation.name` | string | `chat`, `text_completion`, `generate_content` (from the stream's format) |
//! | `gen_ai.system` | string | the provider (`openai`, `anthropic`, `gcp.gemini`, `ollama`, `unknown`): the default names |
//! | `gen_ai.provider.name` | string | the same, instead of `gen_ai.system`, with `OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental` or [`SpanLayer::latest_conventions`] |
//! | `gen_ai.request.model` | string | [`RequestModel`](crate::request::RequestModel), set by [`IncludeUsageLayer`](crate::IncludeUsageLayer) |
//! | `gen_ai.request.stream` | bool | `true` |
//! | `gen_ai.response.model` | string | the model the stream named |
//! | `gen_ai.response.id` | string | the stream's response id |
//! | `gen_ai.response.finish_reasons` | string[] | the finish reason the stream gave |
//! | `gen_ai.response.time_to_first_chunk` | double, s | request to the first content event ([`TimingObserver`](crate::TimingObserver)) |
//! | `gen_ai.usage.input_tokens` | int | provider-reported or estimated ([`UsageObserver`](crate::UsageObserver)) |
//! | `gen_ai.usage.output_tokens` | int | the same |
//! | `gen_ai.usage.cache_read.input_tokens` | int | cached input tokens, when reported |
//! | `gen_ai.usage.cache_creation.input_tokens` | int | input tokens written to the prompt cache, when reported ([`Usage::cache_write_tokens`](crate::Usage::cache_write_tokens)) |
//! | `gen_ai.usage.reasoning.output_tokens` | int | reasoning tokens, when reported (a name proposed to the conventions) |
//! | `error.type` | string | the [`Outcome`](crate::Outcome) name when the stream did not complete (status `Error`); the status code of a 4xx/5xx answer that was not a stream |
//! | `http.response.status_code` | int | the upstream's status |
//! | `tower_sse.outcome` | string | the [`Outcome`](crate::Outcome) name, `completed` included |
//! | `tower_sse.events` | int | events forwarded |
//! | `tower_sse.content_events` | int | content events among them |
//! | `tower_sse.bytes` | int | bytes handed to the client |
//! | `tower_sse.digest` | string | SHA-256 of what the client received, hex ([`DigestObserver`](crate::DigestObserver)) |
//! | `tower_sse.usage.estimated` | bool | whether the usage counts were estimated |
//! | `tower_sse.provider_error` | string | the type of the error the provider reported in its stream |
//! | `tower_sse.cost.micros` | int | what the stream cost, in micro-units of the currency, when a [`CostObserver`](crate::cost::CostObserver) priced it |
//! | `tower_sse.cost.currency` | string | the currency's label, from [`SpanLayer::currency`] |
//! | `tower_sse.cost.estimated` | bool | the cost was priced from estimated usage (a cut stream) |
//! | `tower_sse.cost.complete` | bool | both the input and the output counts were known (`false`: the cost is low) |
//! | `tower_sse.resume.stream` | string | a resumable stream's id (`sse-stream-id`), with `resume::ResumeObserver` (feature `resume`) |
//! | `tower_sse.resume.connections` | int | client connections that read it (the first and the resumes) |
//! | `tower_sse.resume.resumes` | int | of those, resumes |
//! | `tower_sse.resume.replayed_events` | int | events sent again to resuming clients |
//!
//! No tenant, credential or hash of one is written: a span is often kept where credentials
//! must not be.
//!
//! # Resumed streams
//!
//! With a `ResumeLayer` outside (features `resume` and `otel`), the
//! stream's span above is the **producer's**: the one upstream call, ended from the one
//! report, whatever the clients do. Put the `SpanLayer` inside the `ResumeLayer` (just
//! outside the `SseLayer`, so that the producer polls the body with the span current) and
//! give the `ResumeLayer` the same layer (`ResumeLayer::spans`):
//! each resumed connection then gets a short span of its own, kind `INTERNAL`, named
//! `resume`, parented to the resuming caller's trace, with a **span link** to the
//! producer's span, ended once when the connection ends:
//!
//! | attribute | type | value |
//! |---|---|---|
//! | `tower_sse.resume.stream` | string | the stream's id |
//! | `tower_sse.resume.cursor` | int | the seq of the event it resumed after (its `Last-Event-ID`) |
//! | `tower_sse.events` | int | events sent on this connection |
//! | `tower_sse.resume.replayed_events` | int | of those, events already in the log when it attached |
//! | `tower_sse.keep_alives` | int | keep-alive comments sent |
//! | `tower_sse.bytes` | int | bytes sent |
//! | `tower_sse.resume.reader_end` | string | `stream_end`, `client_left`, `gap` (status `Error`, `error.type` `resume_gap`), `shutdown` |
//! | `tower_sse.resume.gap` | string | why a gap: `gone`, `overrun`, `store_failed` |
//! | `http.response.status_code` | int | `200`; `204` for a resume answered without a reader (with `tower_sse.resume.answer`, the `sse-resume` reason) |
//!
//! The link is there wherever and whenever the resume is served: the stream's log keeps
//! the producer span's `traceparent` (trace id, span id, sampled flag; not its
//! `tracestate`), in memory with the `MemoryStore` and in the stream's `meta` hash with the
//! `RedisStore`, so a resume served after the producer ended, or by another replica, is
//! linked too (its link is a remote span context). A third-party store that does not keep it
//! (`StreamLog::trace_parent`'s default) links only resumes served while the producer runs
//! in this process.
//!
//! # Metrics beside the spans
//!
//! The metrics stay on the `metrics` facade (`MetricsObserver`,
//! feature `metrics`), by the same GenAI conventions; the library installs no exporter. To
//! send them both to Prometheus and to an OTLP collector, install one
//! `metrics-exporter-prometheus` recorder (with the advised buckets of
//! `metrics::prometheus::with_buckets`, feature `prometheus`), serve its rendering at
//! `/metrics` (the example gateway does), and let the collector scrape it and forward over
//! OTLP with its `prometheus` receiver:
//!
//! ```yaml
//! receivers:
//!   prometheus:
//!     config:
//!       scrape_configs:
//!         - job_name: tower-sse
//!           scrape_interval: 15s
//!           static_configs: [{ targets: ["gateway:8080"] }]
//!   otlp:
//!     protocols: { http: { endpoint: 0.0.0.0:4318 } }   # the spans (--otlp-endpoint)
//! exporters:
//!   otlphttp: { endpoint: http://backend:4318 }
//! service:
//!   pipelines:
//!     metrics: { receivers: [prometheus], exporters: [otlphttp] }
//!     traces: { receivers: [otlp], exporters: [otlphttp] }
//! ```
//!
//! Prometheus keeps scraping the same endpoint; the names arrive with dots turned into
//! underscores (`gen_ai_client_operation_duration`), as every Prometheus exporter writes them.
//!
//! # Example
//!
//! ```
//! use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
//! use opentelemetry::trace::TracerProvider as _;
//! use tower::ServiceBuilder;
//! use tower_sse::span::SpanLayer;
//! use tower_sse::{SseLayer, UsageObserver};
//!
//! let exporter = InMemorySpanExporter::default();
//! let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
//! let spans = SpanLayer::with_tracer(provider.tracer("gateway")).latest_conventions(true);
//! let stack = ServiceBuilder::new()
//!     .layer(spans.clone())
//!     .layer(SseLayer::new().observer((UsageObserver::new(), spans.observer())));
//! # let _ = stack;
//! ```

mod handle;
mod layer;
pub mod names;
mod observer;
mod propagation;
#[cfg(feature = "resume")]
pub(crate) mod reader;
pub(crate) mod record;

pub use self::handle::StreamSpan;
pub use self::layer::{SpanBody, SpanFuture, SpanLayer, SpanService};
pub use self::observer::SpanObserver;
pub use self::propagation::Propagation;
