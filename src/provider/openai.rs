//! OpenAI Chat Completions and legacy Completions, and the servers that speak them (vLLM,
//! SGLang, llama.cpp, gateways).
//!
//! - Recognised by the path (`…/chat/completions`, `…/completions`) and by the `object` of a
//!   chunk (`"chat.completion.chunk"`, `"text_completion"`).
//! - Content: a non-empty `content`, `reasoning_content`, `reasoning` or `refusal` string, or
//!   a `tool_calls` / `function_call` delta (Chat); a non-empty `text` (Completions).
//!   Role-only and empty deltas are not content.
//! - The stream ends with `data: [DONE]`. Both APIs take `stream_options.include_usage`.
//!
//! - Usage is the `usage` object: in the usage-only chunk (`choices` empty) that
//!   `stream_options.include_usage` adds before `[DONE]`, merged into the finish chunk by
//!   some servers, or on every chunk with vLLM's `continuous_usage_stats` (a running total:
//!   the last one wins). With `include_usage`, every other chunk says `"usage":null`: the
//!   pre-filter wants `"usage"` followed by an object, so those cost a `memmem` and three
//!   byte compares.
//! - Only the usage object is parsed, straight from its `{` in the event (a
//!   `serde_json::Deserializer` over the rest of the slice, stopped after that object
//!   without checking what follows). Nothing in a chunk other than the top-level usage (or
//!   a gateway's copy of it) is an object with free-form keys, and keys inside strings are
//!   escaped, so the first `"usage":{` is the usage.
//! - The finish reason is the last non-empty `choices[].finish_reason`; the chunk is parsed
//!   only when a `"finish_reason"` has a string value.

use std::borrow::Cow;

use serde::Deserialize;

use crate::sse::EventRef;

use super::error::{self, ProviderError};
use super::{ContentSpan, Counts, Format, LazyKind, StopEnd, UsageSink, counts, parse_object};
use crate::json::{
    Count, HasReason, LastReason, Lenient, Text, finders, first_of, has_string_value,
    is_empty_array_or_absent, object_value, parse, present, text_of,
};
use crate::policy::StopKind;

finders! {
    USAGE = b"\"usage\"";
    FINISH_REASON = b"\"finish_reason\"";
    CHOICES = b"\"choices\"";
    CHAT_CHUNK = b"\"chat.completion.chunk\"";
    TEXT_COMPLETION = b"\"text_completion\"";
    CONTENT = b"\"content\"";
    REASONING_CONTENT = b"\"reasoning_content\"";
    REASONING = b"\"reasoning\"";
    REFUSAL = b"\"refusal\"";
    ARGUMENTS = b"\"arguments\"";
    TOOL_CALLS = b"\"tool_calls\"";
    FUNCTION_CALL = b"\"function_call\"";
    TEXT = b"\"text\"";
}

/// OpenAI Chat Completions (`chat.completion.chunk`).
pub(super) struct Chat;

impl Format for Chat {
    const NAME: &'static str = "openai";
    const ACCEPTS_STREAM_OPTIONS: bool = true;

    fn matches_path(path: &str) -> bool {
        path.ends_with("/chat/completions")
    }

    fn recognise(event: &EventRef<'_>) -> bool {
        CHAT_CHUNK.find(event.data_bytes()).is_some()
    }

    fn content(event: &EventRef<'_>) -> ContentSpan {
        let data = event.data_bytes();
        ContentSpan::located(
            text_of(data, &CONTENT)
                .or_else(|| text_of(data, &REASONING_CONTENT))
                .or_else(|| text_of(data, &REASONING))
                .or_else(|| text_of(data, &REFUSAL)),
        )
        .or_else(|| ContentSpan::when(present(data, &TOOL_CALLS)))
        .or_else(|| ContentSpan::when(present(data, &FUNCTION_CALL)))
    }

    fn content_text(event: &EventRef<'_>, f: &mut impl FnMut(&[u8])) {
        let keys = [
            &*CONTENT,
            &*REASONING_CONTENT,
            &*REASONING,
            &*REFUSAL,
            &*ARGUMENTS,
        ];
        first_of(event.data_bytes(), &keys, f);
    }

    fn usage(event: &EventRef<'_>, state: &mut impl UsageSink) -> bool {
        extract(event, state)
    }

    fn answer_usage(body: &[u8], named: bool, state: &mut impl UsageSink) -> bool {
        answer(body, named, state)
    }

    fn is_terminal(event: &EventRef<'_>, _: &mut LazyKind<'_, '_>) -> bool {
        event.data_bytes() == b"[DONE]"
    }

    fn error(event: &EventRef<'_>, _: &mut LazyKind<'_, '_>) -> Option<ProviderError> {
        error::top_level_error(event.data_bytes())
    }
    fn stop_events(stop: &StopEnd<'_>) -> Vec<(Option<&'static str>, String)> {
        if stop.kind == StopKind::BudgetExceeded {
            return budget_error();
        }
        let chunk = serde_json::json!({
            "id": stop.id,
            "object": "chat.completion.chunk",
            "created": 0,
            "model": stop.model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": finish_reason(stop.kind)}],
        });
        vec![(None, chunk.to_string()), (None, "[DONE]".to_owned())]
    }
}

/// The error object OpenAI puts in place of a chunk (its SDKs raise it), for a stream
/// whose budget ran out: the stream then ends, without `[DONE]`, as OpenAI's own do.
fn budget_error() -> Vec<(Option<&'static str>, String)> {
    let error = error_object(super::BUDGET_EXCEEDED, "budget_exceeded", "budget_exceeded");
    vec![(None, error.to_string())]
}

/// OpenAI's error object, `{"error":{"message":…,"type":…,"param":null,"code":…}}`: the
/// body of its error responses, and what it sends in place of a chunk.
pub(super) fn error_object(message: &str, kind: &str, code: &str) -> serde_json::Value {
    serde_json::json!({
        "error": {"message": message, "type": kind, "param": null, "code": code},
    })
}

/// The `finish_reason` of a chunk that ends a stream stopped for `kind`.
fn finish_reason(kind: StopKind) -> &'static str {
    match kind {
        StopKind::Length => "length",
        _ => "content_filter",
    }
}

/// OpenAI legacy Completions (`text_completion`).
pub(super) struct Completions;

impl Format for Completions {
    const NAME: &'static str = "openai";
    const OPERATION: &'static str = "text_completion";
    const ACCEPTS_STREAM_OPTIONS: bool = true;
    // Chat's reader reads the same chunks.
    const GUESS_USAGE: bool = false;

    fn matches_path(path: &str) -> bool {
        path.ends_with("/completions")
    }

    fn recognise(event: &EventRef<'_>) -> bool {
        TEXT_COMPLETION.find(event.data_bytes()).is_some()
    }

    fn content(event: &EventRef<'_>) -> ContentSpan {
        ContentSpan::located(text_of(event.data_bytes(), &TEXT))
    }

    fn content_text(event: &EventRef<'_>, f: &mut impl FnMut(&[u8])) {
        first_of(event.data_bytes(), &[&*TEXT], f);
    }

    fn usage(event: &EventRef<'_>, state: &mut impl UsageSink) -> bool {
        extract(event, state)
    }

    fn answer_usage(body: &[u8], named: bool, state: &mut impl UsageSink) -> bool {
        answer(body, named, state)
    }

    fn is_terminal(event: &EventRef<'_>, _: &mut LazyKind<'_, '_>) -> bool {
        event.data_bytes() == b"[DONE]"
    }

    fn error(event: &EventRef<'_>, _: &mut LazyKind<'_, '_>) -> Option<ProviderError> {
        error::top_level_error(event.data_bytes())
    }

    fn stop_events(stop: &StopEnd<'_>) -> Vec<(Option<&'static str>, String)> {
        if stop.kind == StopKind::BudgetExceeded {
            return budget_error();
        }
        let chunk = serde_json::json!({
            "id": stop.id,
            "object": "text_completion",
            "created": 0,
            "model": stop.model,
            "choices": [{"index": 0, "text": "", "logprobs": null, "finish_reason": finish_reason(stop.kind)}],
        });
        vec![(None, chunk.to_string()), (None, "[DONE]".to_owned())]
    }
}

#[derive(Deserialize)]
struct ChatUsage {
    #[serde(default)]
    prompt_tokens: Count,
    #[serde(default)]
    completion_tokens: Count,
    #[serde(default)]
    total_tokens: Count,
    #[serde(default)]
    prompt_tokens_details: Lenient<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Lenient<CompletionDetails>,
    /// DeepSeek's name for cached prompt tokens.
    #[serde(default)]
    prompt_cache_hit_tokens: Count,
}

impl ChatUsage {
    /// The counts it reports (DeepSeek's cache hits when `cached_tokens` is absent).
    fn counts(self) -> Counts {
        let details = self.prompt_tokens_details.0;
        let cached = details
            .as_ref()
            .and_then(|d| d.cached_tokens.0)
            .or(self.prompt_cache_hit_tokens.0);
        let mut counts = counts(
            self.prompt_tokens.0,
            self.completion_tokens.0,
            self.total_tokens.0,
            cached,
            self.completion_tokens_details
                .0
                .and_then(|d| d.reasoning_tokens.0),
        );
        counts.cache_write = details.and_then(|d| d.cache_write_tokens.0);
        counts
    }
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Count,
    /// OpenRouter's cache writes (counted in `prompt_tokens`).
    #[serde(default)]
    cache_write_tokens: Count,
}

#[derive(Deserialize)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Count,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow, default)]
    finish_reason: Text<'a>,
}

impl<'a> HasReason<'a> for Choice<'a> {
    fn reason(self) -> Option<Cow<'a, str>> {
        self.finish_reason.0.filter(|r| !r.is_empty())
    }
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default)]
    choices: LastReason<'a, Choice<'a>>,
}

/// A whole answer of Chat Completions (`chat.completion`) or Completions
/// (`text_completion`): its top level only.
#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow, default)]
    object: Text<'a>,
    #[serde(default)]
    usage: Lenient<ChatUsage>,
    #[serde(borrow, default)]
    choices: LastReason<'a, Choice<'a>>,
}

/// Read a whole answer of either API (`"stream": false`): the top-level `usage` and the
/// last `choices[].finish_reason`. Guessed (`named` false), only an answer whose `object`
/// is `chat.completion` or `text_completion` is claimed.
fn answer(body: &[u8], named: bool, state: &mut impl UsageSink) -> bool {
    let Some(answer) = parse_object::<Answer<'_>>(body) else {
        return false;
    };
    let shaped = matches!(
        answer.object.as_str(),
        Some("chat.completion" | "text_completion")
    );
    if !(named || shaped) {
        return false;
    }
    if let Some(usage) = answer.usage.0 {
        state.update(usage.counts());
    }
    if let Some(reason) = answer.choices.0 {
        state.set_finish_reason(&reason);
    }
    true
}

/// Read one event of an OpenAI-style stream. Returns whether it carried usage or a finish
/// reason.
fn extract(event: &EventRef<'_>, state: &mut impl UsageSink) -> bool {
    let data = event.data_bytes();
    let mut found = false;
    if let Some(at) = object_value(data, &USAGE)
        && let Some(usage) = data.get(at..).and_then(parse::<ChatUsage>)
    {
        let usage = usage.counts();
        if is_empty_array_or_absent(data, &CHOICES) {
            state.mark_usage_only();
        }
        // A usage object without a single count says nothing (or is another format's).
        found = usage.has_counts();
        state.update(usage);
    }
    if has_string_value(data, &FINISH_REASON)
        && let Some(chunk) = parse::<Chunk<'_>>(data)
        && let Some(reason) = chunk.choices.0
    {
        state.set_finish_reason(&reason);
        found = true;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::{UsageState, counts};

    fn run(state: &mut UsageState, data: &str) -> bool {
        state.usage_only = false;
        extract(&EventRef::new(b"", data.as_bytes(), data.as_bytes()), state)
    }

    #[test]
    fn usage_only_chunk() {
        let mut s = UsageState::default();
        assert!(run(
            &mut s,
            r#"{"id":"c","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":1}}}"#
        ));
        assert!(s.is_usage_only());
        assert_eq!(
            s.usage(),
            Some(counts(Some(9), Some(3), Some(12), Some(4), Some(1)))
        );
    }

    #[test]
    fn null_usage_is_not_usage() {
        let mut s = UsageState::default();
        assert!(!run(
            &mut s,
            r#"{"choices":[{"delta":{"content":"usage"}}],"usage":null}"#
        ));
        assert!(!run(
            &mut s,
            r#"{"choices":[{"delta":{"content":"\"usage\":{"}}],"usage": null}"#
        ));
        assert_eq!(s.usage(), None);
    }

    #[test]
    fn merged_finish_and_usage() {
        let mut s = UsageState::default();
        assert!(run(
            &mut s,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#
        ));
        assert!(!s.is_usage_only());
        assert_eq!(s.finish_reason(), Some("length"));
        assert_eq!(
            s.usage(),
            Some(counts(Some(1), Some(2), Some(3), None, None))
        );
    }

    #[test]
    fn garbage_keeps_the_last_good_values() {
        let mut s = UsageState::default();
        run(
            &mut s,
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7}}"#,
        );
        run(
            &mut s,
            r#"{"choices":[],"usage":{"prompt_tokens":-1,"completion_tokens":1e99}}"#,
        );
        run(&mut s, r#"{"choices":[],"usage":{"prompt_tokens":1,"#);
        run(
            &mut s,
            r#"{"choices":[],"usage":{"prompt_tokens":{"a":[1]},"completion_tokens":"8"}}"#,
        );
        assert_eq!(s.usage(), Some(counts(Some(5), Some(7), None, None, None)));
        run(
            &mut s,
            r#"{"choices":[{"finish_reason":17}],"x":{"finish_reason":"y"}}"#,
        );
        assert_eq!(s.finish_reason(), None);
    }

    #[test]
    fn error_chunks_are_provider_errors_length_is_not() {
        use crate::provider::Provider;
        use crate::provider::error::{ProviderError, seen};
        for p in [Provider::OpenAiChat, Provider::OpenAiCompletions] {
            assert_eq!(
                seen(
                    p,
                    "",
                    r#"{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}"#
                ),
                Some(ProviderError::new(
                    Some("server_error"),
                    Some("The server had an error")
                ))
            );
            // OpenRouter: the error beside an empty delta and `finish_reason: error`.
            assert_eq!(
                seen(
                    p,
                    "",
                    r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}],"error":{"code":502,"message":"Provider disconnected"}}"#
                ),
                Some(ProviderError::new(
                    Some("502"),
                    Some("Provider disconnected")
                ))
            );
            for data in [
                r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"error"}}]}"#,
                r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"{\"error\":{}}"}}]}"#,
                r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#,
                r#"{"id":"c","object":"text_completion","choices":[{"index":0,"text":"","finish_reason":"length"}]}"#,
                r#"{"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":1},"error":null}"#,
                r#"{"id":"c","choices":[{"delta":{"role":"assistant","content":""}}],"x":{"error":{"type":"nested"}}}"#,
                "[DONE]",
            ] {
                assert_eq!(seen(p, "", data), None, "{data}");
            }
        }
    }
}
