//! The names of the span's attributes, as constants (the `gen_ai.*` ones are the GenAI
//! conventions' names, status "Development": the `opentelemetry-semantic-conventions` crate has
//! deprecated its own constants for them, so this crate defines the ones it writes).

/// What was asked: `chat`, `text_completion`, `generate_content`.
pub const GEN_AI_OPERATION_NAME: &str = "gen_ai.operation.name";
/// The provider, by the widely deployed conventions (up to semantic conventions 1.36).
pub const GEN_AI_SYSTEM: &str = "gen_ai.system";
/// The provider, by the latest experimental conventions
/// (`OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental`).
pub const GEN_AI_PROVIDER_NAME: &str = "gen_ai.provider.name";
/// The model the request asked for ([`RequestModel`](crate::request::RequestModel)).
pub const GEN_AI_REQUEST_MODEL: &str = "gen_ai.request.model";
/// Whether the request asked for a stream (always `true` on a stream's span).
pub const GEN_AI_REQUEST_STREAM: &str = "gen_ai.request.stream";
/// The model that answered, as the stream named it.
pub const GEN_AI_RESPONSE_MODEL: &str = "gen_ai.response.model";
/// The provider's id of the response.
pub const GEN_AI_RESPONSE_ID: &str = "gen_ai.response.id";
/// Why the generation stopped, as the provider said (a list of strings).
pub const GEN_AI_RESPONSE_FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
/// Seconds from the request to the first content chunk.
pub const GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: &str = "gen_ai.response.time_to_first_chunk";
/// Input tokens the provider reported.
pub const GEN_AI_USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
/// Output tokens the provider reported.
pub const GEN_AI_USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
/// Input tokens read from the provider's prompt cache.
pub const GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: &str = "gen_ai.usage.cache_read.input_tokens";
/// Input tokens written to the provider's prompt cache.
pub const GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: &str =
    "gen_ai.usage.cache_creation.input_tokens";
/// Output tokens spent on reasoning.
pub const GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: &str = "gen_ai.usage.reasoning.output_tokens";
/// Why the call failed: the [`Outcome`](crate::Outcome) name (as in the metrics).
pub const ERROR_TYPE: &str = "error.type";
/// The HTTP status of the upstream's answer.
pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
/// How the stream ended: the [`Outcome`](crate::Outcome) name, `completed` included.
pub const TOWER_SSE_OUTCOME: &str = "tower_sse.outcome";
/// Events forwarded.
pub const TOWER_SSE_EVENTS: &str = "tower_sse.events";
/// Content events (text, reasoning, tool-call deltas) among them.
pub const TOWER_SSE_CONTENT_EVENTS: &str = "tower_sse.content_events";
/// Bytes handed to the client.
pub const TOWER_SSE_BYTES: &str = "tower_sse.bytes";
/// The SHA-256 of what the client received, in hex, when a digest observer ran.
pub const TOWER_SSE_DIGEST: &str = "tower_sse.digest";
/// Whether the usage was estimated rather than reported by the provider.
pub const TOWER_SSE_USAGE_ESTIMATED: &str = "tower_sse.usage.estimated";
/// The type of the error the provider reported in its stream (`overloaded_error`).
pub const TOWER_SSE_PROVIDER_ERROR: &str = "tower_sse.provider_error";
/// What the stream cost, in integer micro-units of its currency (1 unit is `1_000_000`),
/// when a [`CostObserver`](crate::cost::CostObserver) priced its usage.
pub const TOWER_SSE_COST_MICROS: &str = "tower_sse.cost.micros";
/// The label of the cost's currency ([`SpanLayer::currency`](super::SpanLayer::currency)).
pub const TOWER_SSE_COST_CURRENCY: &str = "tower_sse.cost.currency";
/// Whether the cost was priced from estimated usage (a cut stream).
pub const TOWER_SSE_COST_ESTIMATED: &str = "tower_sse.cost.estimated";
/// Whether both the input and the output counts were known (`false`: the cost is low).
pub const TOWER_SSE_COST_COMPLETE: &str = "tower_sse.cost.complete";
/// The id of a resumable stream (the `sse-stream-id` header), on its span and its readers'.
pub const TOWER_SSE_RESUME_STREAM: &str = "tower_sse.resume.stream";
/// Client connections that read a resumable stream (the first and the resumes).
pub const TOWER_SSE_RESUME_CONNECTIONS: &str = "tower_sse.resume.connections";
/// Of those, resumes (`Last-Event-ID`).
pub const TOWER_SSE_RESUME_RESUMES: &str = "tower_sse.resume.resumes";
/// Events sent again to resuming clients: over the stream on its span, over one connection
/// on a reader span.
pub const TOWER_SSE_RESUME_REPLAYED_EVENTS: &str = "tower_sse.resume.replayed_events";
/// On a reader span: the seq of the event the connection resumed after (its
/// `Last-Event-ID`).
pub const TOWER_SSE_RESUME_CURSOR: &str = "tower_sse.resume.cursor";
/// On a reader span: how the connection ended: `stream_end` (it sent the stream's end),
/// `client_left`, `gap` (it could not go on without one: the `resume_gap` error event),
/// `shutdown` (the server's shutdown ended it).
pub const TOWER_SSE_RESUME_READER_END: &str = "tower_sse.resume.reader_end";
/// On a reader span that ended with a gap: why (`gone`, `overrun`, `store_failed`).
pub const TOWER_SSE_RESUME_GAP: &str = "tower_sse.resume.gap";
/// On a reader span: keep-alive comments sent on the connection.
pub const TOWER_SSE_KEEP_ALIVES: &str = "tower_sse.keep_alives";
/// On the span of a resume answered `204`: the `sse-resume` reason (`gone`, `unavailable`,
/// `cancelled`, `failed`), when there is one.
pub const TOWER_SSE_RESUME_ANSWER: &str = "tower_sse.resume.answer";
