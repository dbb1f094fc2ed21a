//! An LLM-like streaming upstream for tower-sse's tests, examples, benchmarks and load runs.
//!
//! It speaks the streaming formats of five APIs with deterministic text and consistent
//! usage, and can be told per request to be slow, chunk oddly, stall, fail in-band or drop
//! the connection mid-event.
//!
//! ```no_run
//! # async fn demo() {
//! let (addr, server) = tower_sse_mock::spawn(tower_sse_mock::MockConfig::new().tokens(8)).await;
//! // POST http://{addr}/v1/chat/completions  {"model":"m","stream":true}
//! # let _ = (addr, server);
//! # }
//! ```
//!
//! # Routes (POST)
//!
//! | Path | Format |
//! |---|---|
//! | `/v1/chat/completions` | OpenAI Chat: `chat.completion.chunk` SSE, role chunk, one chunk per token, finish chunk, `data: [DONE]`; `stream_options.include_usage` adds `"usage":null` to every chunk and a final usage chunk with `"choices":[]` |
//! | `/v1/responses` | OpenAI Responses: `response.created`, `response.in_progress`, item and part added, `response.output_text.delta`…, text/part/item done, `response.completed` with usage |
//! | `/v1/messages` | Anthropic Messages: `message_start` (input tokens, output 1), `content_block_start`, `ping` (then every 8 deltas), `content_block_delta`…, `content_block_stop`, `message_delta` (cumulative usage, `end_turn`), `message_stop` |
//! | `/v1beta/models/{model}:streamGenerateContent` | Gemini: with `?alt=sse` SSE `data:` events (CRLF line ends, as Google sends), else a streamed JSON array; `usageMetadata` running totals, `modelVersion`, `responseId`, `finishReason` on the last chunk. `:generateContent` answers one object |
//! | `/api/chat`, `/api/generate` | Ollama: NDJSON (`application/x-ndjson`), a final `"done":true` line with `done_reason`, `prompt_eval_count`, `eval_count` |
//!
//! `"stream": false` answers one JSON object (`chat.completion`, `response`, `message`,
//! Ollama's final object). Unlike the real APIs, a missing `stream` field means streaming.
//!
//! # Content
//!
//! - Token text comes from a fixed word list (with multi-byte UTF-8 and characters JSON
//!   escapes) picked by the `seed` control: [`content`] gives the full text.
//! - Output tokens = the `tokens` control; input tokens = [`prompt_tokens`] of the request
//!   body (bytes / 4, rounded up); totals add up.
//! - Ids count responses per server: `chatcmpl-mock-<n>`, `resp_mock_<n>`, `msg_mock_<n>`,
//!   `gemini-mock-<n>`, and the `x-request-id` header `req_mock_<n>`.
//! - The model is the request's `"model"` (Gemini: the path's), else [`MockConfig::model`].
//! - `created` is fixed ([`MockConfig::created`]): the same request gives the same bytes.
//!
//! # Controls
//!
//! Each control is set by a key of an optional `"mock"` object in the request body, or by a
//! header; the header wins, and both win over the server defaults ([`MockConfig`]). An
//! unknown name or a bad value is answered with 400.
//!
//! | JSON key | Header | Values | Default | Effect |
//! |---|---|---|---|---|
//! | `tokens` | `x-mock-tokens` | integer | 16 | content tokens |
//! | `delay_ms` | `x-mock-delay-ms` | ms | 0 | pause before each content token |
//! | `headers_delay_ms` | `x-mock-headers-delay-ms` | ms | 0 | pause before the response headers |
//! | `chunking` | `x-mock-chunking` | `whole`, `random`, N | `whole` | one frame per event; random sizes from 1 byte to several events (seeded); N-byte frames |
//! | `seed` | `x-mock-seed` | integer | 0 | seeds the words and random chunking |
//! | `stall_after` | `x-mock-stall-after` | N, `none` | none | after N events send nothing more; the connection stays open until the client goes |
//! | `error_after` | `x-mock-error-after` | N, `none` | none | after N events send the in-band error event, then end cleanly |
//! | `close_after` | `x-mock-close-after` | N, `none` | none | after N events send half of the next one, then abort the connection (HTTP/1: no last chunk) |
//! | `status` | `x-mock-status` | HTTP status, `none` | none | answer this status; non-2xx with the API's JSON error body |
//!
//! Notes:
//! - "Events" are SSE events, NDJSON lines or JSON-array elements (the closing `]` is one
//!   too), counting every kind (role chunks, pings, `[DONE]`).
//! - One fault fires per stream: the smallest count, ties going to `close_after`, then
//!   `error_after`. A stream shorter than the count gets the fault after its last event.
//! - In-band errors: Chat `data: {"error":{...}}`; Responses `event: error`; Anthropic
//!   `event: error` with `overloaded_error`; Gemini `{"error":{"code":500,...}}`; Ollama
//!   `{"error":"..."}`.
//! - Frames never hold bytes across a pause: before a token delay, a stall or the end,
//!   whatever is buffered is sent.
//! - Delays use tokio time, so tests with paused time run instantly. Without streaming,
//!   the answer waits `headers_delay_ms + tokens × delay_ms`; faults do not apply.
//!
//! # Memory
//!
//! Streams are generated event by event from a few counters; nothing is built up front, so
//! ten thousand open streams cost little more than their sockets.

mod api;
mod body;
mod config;
mod format;
mod framer;
mod request;
mod server;
mod stats;
pub mod system;
mod words;

pub use body::Aborted;
pub use config::{CONTROLS, Chunking, ControlError, ControlInfo, Controls, MockConfig};
pub use request::prompt_tokens;
pub use server::{MockServer, router, router_with_stats, serve, serve_with_h2_max_streams, spawn};
pub use stats::MockStats;

/// The full content text of a response with this `seed` and number of `tokens`.
pub fn content(seed: u64, tokens: u32) -> String {
    words::Words::new(seed).text(tokens)
}

/// The routes, as `(method and path, what it answers)`.
pub const ROUTES: &[(&str, &str)] = &[
    (
        "POST /v1/chat/completions",
        "OpenAI Chat Completions (SSE, [DONE])",
    ),
    ("POST /v1/responses", "OpenAI Responses (typed SSE events)"),
    (
        "POST /v1/messages",
        "Anthropic Messages (typed SSE events, pings)",
    ),
    (
        "POST /v1beta/models/{model}:streamGenerateContent[?alt=sse]",
        "Gemini (SSE with alt=sse, else a JSON array)",
    ),
    (
        "POST /v1beta/models/{model}:generateContent",
        "Gemini, one JSON object",
    ),
    ("POST /api/chat", "Ollama chat (NDJSON)"),
    ("POST /api/generate", "Ollama generate (NDJSON)"),
];

/// Plain-text help: routes and controls, for a command line's `--help`.
pub fn help() -> String {
    let mut out = String::from("Routes:\n");
    for (route, about) in ROUTES {
        out.push_str(&format!("  {route:<62} {about}\n"));
    }
    out.push_str(
        "\nControls (JSON key in the body's \"mock\" object, or header; the header wins):\n",
    );
    for control in CONTROLS {
        out.push_str(&format!(
            "  {:<17} {:<24} {:<19} default {:<6} {}\n",
            control.name, control.header, control.values, control.default, control.about
        ));
    }
    out.push_str(
        "\nEvents count SSE events, NDJSON lines or JSON-array elements. \"stream\": false answers\n\
         one JSON object; a missing \"stream\" streams. Usage: output tokens = tokens, input\n\
         tokens = request body bytes / 4 rounded up.\n",
    );
    out
}
