//! Token usage: what the provider reported, or an estimate when the stream was cut first.
//!
//! [`UsageObserver`] reads the usage and the finish reason that LLM providers put in their
//! streams into [`StreamReport::usage`](crate::StreamReport::usage) and
//! [`StreamReport::finish_reason`](crate::StreamReport::finish_reason). The format comes
//! from the layer's detection ([`EventContext::provider`](crate::EventContext::provider)):
//!
//! | format | usage | finish reason |
//! |---|---|---|
//! | OpenAI Chat Completions, legacy Completions | the `usage` object: the usage-only chunk (`choices: []`), or merged into the finish chunk, or on every chunk (vLLM `continuous_usage_stats`) | `choices[].finish_reason` |
//! | OpenAI Responses | `response.usage` of `response.completed` / `.incomplete` / `.failed` | `incomplete_details.reason`, else `status` |
//! | Anthropic Messages | `message_start` (input, cache), then `message_delta` (cumulative output, restated input and cache) | `delta.stop_reason`; an `error` event's type |
//! | Gemini (`alt=sse`) | `usageMetadata`, a running total on every chunk | `candidates[].finishReason` |
//! | Ollama (NDJSON) | `prompt_eval_count`, `eval_count` of the `"done":true` line | `done_reason` |
//!
//! # Rules
//!
//! - **Replace, never add.** Every count a provider reports replaces the one known so far;
//!   a count it leaves out (or sends as `null`, negative, fractional, or too large) keeps
//!   the known one. Running totals (vLLM, Gemini, Anthropic's `message_delta`) thereby end
//!   at their last value, and restated counts are neither doubled nor lost.
//! - **Unknown is `None`, never 0.** A count the provider did not report stays `None`;
//!   the report has no usage at all when nothing was reported or estimated.
//! - **Counts keep the provider's meaning.** OpenAI's input includes cached tokens and its
//!   output includes reasoning; Anthropic's input excludes cache reads and writes (see
//!   [`Usage::cache_write_tokens`](crate::Usage::cache_write_tokens)); Gemini's output
//!   excludes thinking tokens, its total includes them. [`Usage::style`](crate::Usage::style)
//!   says which ([`UsageStyle`]), and [`Usage::normalized`](crate::Usage::normalized) gives
//!   the one meaning for every provider (below).
//! - **Anthropic's `message_start` output count is a placeholder**, not a count: it is never
//!   reported. A stream that ends without `message_delta`'s count is a cut stream (below),
//!   even when it ended cleanly.
//!
//! # One meaning for every provider
//!
//! [`Usage::normalized`](crate::Usage::normalized) splits a usage into five parts that do
//! not overlap and mean the same whatever the provider: what to price
//! ([`cost`](crate::cost)). Where each comes from:
//!
//! | part | OpenAI Chat, Completions (vLLM, SGLang, DeepSeek, OpenRouter) | OpenAI Responses | Anthropic | Gemini | Ollama |
//! |---|---|---|---|---|---|
//! | uncached input | `prompt_tokens` − cached − cache writes | `input_tokens` − `cached_tokens` | `input_tokens` | `promptTokenCount` − `cachedContentTokenCount` | `prompt_eval_count` |
//! | cache read | `prompt_tokens_details.cached_tokens` (DeepSeek: `prompt_cache_hit_tokens`) | `input_tokens_details.cached_tokens` | `cache_read_input_tokens` | `cachedContentTokenCount` | — |
//! | cache write | `prompt_tokens_details.cache_write_tokens` (OpenRouter) | — | `cache_creation_input_tokens` | — | — |
//! | output | `completion_tokens` − reasoning | `output_tokens` − reasoning | `output_tokens` (thinking included) | `candidatesTokenCount` | `eval_count` |
//! | reasoning | `completion_tokens_details.reasoning_tokens` | `output_tokens_details.reasoning_tokens` | — | `thoughtsTokenCount` | — |
//!
//! A dash: the provider does not report it (the part is `None`). See [`NormalizedUsage`]
//! for the rules (unknown stays unknown, never negative).
//!
//! # Cut streams
//!
//! When a stream ends without completing (an [`Outcome`](crate::Outcome) other than `Completed`: the
//! client went away, a deadline, an upstream error…), or ends without the output count its
//! provider announced (Anthropic's `message_start` announces `message_delta`'s: an `error`
//! event mid-stream, or a relay that closed the stream early), the report carries
//! the last usage seen (a running total, or Anthropic's input tokens). If the output count
//! is still unknown, it is estimated from the text of the content events seen, by a
//! [`TokenCounter`] (by default [`HeuristicCounter`]: bytes / 4, rounded up), and the usage
//! is marked [`UsageSource::Estimated`](crate::UsageSource::Estimated). The input and
//! cache counts stay as reported (so an estimated usage can hold reported input); an input
//! count the provider never reported is estimated from the request's text when
//! [`InputEstimateLayer`] is on, else it stays unknown. With no text to estimate from, the
//! output stays unknown.
//! Any other completed stream is never estimated: its usage is what the provider said. To get the provider's final usage after a client disconnect, see
//! [`SseLayer::drain_on_disconnect`][drain_on_disconnect] (feature `drain`).
//!
//! # Usage the client did not ask for
//!
//! When a request carries [`UsageInjected`](crate::request::UsageInjected) (a gateway added
//! `stream_options.include_usage` on its own), the usage-only chunk of an OpenAI stream is
//! kept from the client, and its usage still reaches the report. Usage on chunks that also
//! carry choices (vLLM's continuous stats, servers that merge it into the finish chunk) is
//! forwarded as is: removing it would mean rewriting events.
//!
//! # Cost
//!
//! Events are looked at as bytes first (`memmem` for a quoted key, then a look at its
//! value, or the event name), and parsed only when they can carry usage or a finish
//! reason, into small borrowed structs (never `serde_json::Value`). A plain content event
//! costs the pre-filter and, while the output count is unknown, one more `memmem` to find
//! its text for the estimate; it allocates nothing. What is parsed:
//!
//! - OpenAI: the `usage` object alone, deserialized from its `{` in place (vLLM's usage on
//!   every chunk costs a parse of that object only); the whole chunk only when a
//!   `finish_reason` has a string value.
//! - Responses and Anthropic: the few events that carry usage, chosen by event name.
//! - Gemini: the top level of chunks that name `usageMetadata` or `finishReason` (most of
//!   them: Gemini sends usage on every chunk).
//! - Ollama: the `"done":true` line.
//!
//! # When the report is written
//!
//! [`StreamReport::usage`](crate::StreamReport::usage) and `finish_reason` are updated as
//! soon as an event changes them (so later observers see them in `on_event`), and set for
//! good in `on_end`. Put the usage observer before the timing observer in a tuple, so that
//! time per output token can use the output count.
//!
//! # Other formats
//!
//! Implement [`UsageExtractor`] (a closure will do) and add it in front of the built-in
//! ones with [`UsageObserver::prepend_extractor`](crate::UsageObserver::prepend_extractor), or replace them with
//! [`UsageObserver::extractor`](crate::UsageObserver::extractor).
//!
// Without feature `drain` (a per-feature docs build), the link leads to the feature table.
#![cfg_attr(
    feature = "drain",
    doc = "\n[drain_on_disconnect]: crate::SseLayer::drain_on_disconnect"
)]
#![cfg_attr(
    not(feature = "drain"),
    doc = "\n[drain_on_disconnect]: crate#feature-flags"
)]

mod estimate;
mod extract;
mod input;
mod normalized;
mod observer;
mod state;

pub use self::estimate::{HeuristicCounter, TokenCounter};
pub use self::extract::{BuiltinExtractor, UsageExtractor};
pub use self::input::{
    DEFAULT_MAX_BYTES, InputEstimate, InputEstimateBody, InputEstimateHandle, InputEstimateLayer,
};
pub use self::normalized::{NormalizedUsage, UsageStyle};
pub use self::observer::UsageObserver;
#[cfg(test)]
pub(crate) use self::state::counts;
pub use self::state::{CacheCreationInputTokens, UsageState};
