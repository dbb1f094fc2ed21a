//! Anthropic Messages.
//!
//! - Recognised by the path (`…/messages`) and by its event names (`message_start`,
//!   `content_block_delta`…; not `ping`, which generic servers send too).
//! - Content: `content_block_delta` events, except `signature_delta`s. Their text is in
//!   `text`, `thinking` or `partial_json`.
//! - The response id and model are in `message_start`'s `message`. The stream ends with
//!   `message_stop`.
//! - `message_start` carries `message.usage`: the input tokens, the cache counts, and an
//!   `output_tokens` that is a placeholder (1, or a few), not a count of the output. The
//!   input and cache counts are real and reported as soon as they arrive. The placeholder
//!   is never reported: it is kept aside as a provisional output count, which says that a
//!   real count is to come.
//! - A stream that ends without `message_delta`'s count (an `error` event mid-stream, a
//!   disconnect, a deadline, a truncation, or a relay that closed the stream cleanly) was
//!   cut, whatever its [`Outcome`](crate::Outcome): its output is estimated from the text
//!   delivered, like any cut stream's. The usage then mixes sources: the input and cache
//!   counts as `message_start` reported them, the output estimated, and
//!   [`source`](crate::Usage::source) says [`Estimated`](crate::UsageSource::Estimated)
//!   (only the output is ever estimated). With no text to estimate from, the output is
//!   unknown (`None`), never the placeholder.
//! - `message_delta` carries `usage` with the cumulative `output_tokens`, and may restate
//!   `input_tokens`, `cache_read_input_tokens` and `cache_creation_input_tokens`. Every count
//!   it states replaces the known one (never added: a gateway double-counted cache reads
//!   that way), and the counts it leaves out or sends as `null` are kept (never dropped:
//!   another gateway lost input and cache counts that way). Its `delta.stop_reason` is the
//!   finish reason.
//! - Counts keep Anthropic's meaning: `input_tokens` excludes the cache reads (in
//!   [`cached_input_tokens`](crate::Usage::cached_input_tokens)) and the cache writes (in
//!   [`CacheCreationInputTokens`](crate::usage::CacheCreationInputTokens)). Anthropic sends no
//!   total, so the total stays unknown.
//! - An `error` event (`{"type":"error","error":{"type":"overloaded_error",…}}`, or the
//!   Responses API's `{"type":"error","code":…}`) sets the finish reason to the error's type
//!   (or code, or `"error"`); the usage seen so far stays, and the output is estimated
//!   (above).
//!
//! Every event is known by its name: its `event:` line or, in a stream relayed without
//! `event:` lines, the top-level `type` of its data (`{"type":"content_block_delta",…}`),
//! which Anthropic always sends too. Recognition, content, the id and model, usage and
//! `message_stop` all go by that name, so a data-only stream is read like a named one
//! (content meets the first-event timeout, and counts for TTFT, ITL and estimates). Only
//! the events that carry usage or the id are parsed; content blocks and pings are skipped by
//! their name.

use serde::Deserialize;

use crate::sse::EventRef;

use super::error::{self, ProviderError};
use super::{
    ContentSpan, ErrorAnswer, Format, LazyKind, ResponseMeta, StopEnd, Top, UsageSink, counts,
    event_kind, parse_object,
};
use crate::json::{Count, Lenient, Text, finders, first_of, parse, text_of};
use crate::policy::StopKind;

finders! {
    SIGNATURE_DELTA = b"\"signature_delta\"";
    TEXT_DELTA = b"\"text_delta\"";
    TEXT = b"\"text\"";
    THINKING = b"\"thinking\"";
    PARTIAL_JSON = b"\"partial_json\"";
}

/// Anthropic Messages (`message_start` … `message_stop`).
pub(super) struct Anthropic;

impl Format for Anthropic {
    const NAME: &'static str = "anthropic";
    const NAMES_EVENTS: bool = true;

    fn matches_path(path: &str) -> bool {
        path.ends_with("/messages")
    }

    fn recognise(event: &EventRef<'_>) -> bool {
        matches!(
            event_kind(event),
            b"message_start"
                | b"message_delta"
                | b"message_stop"
                | b"content_block_start"
                | b"content_block_delta"
                | b"content_block_stop"
        )
    }

    fn content(event: &EventRef<'_>) -> ContentSpan {
        ContentSpan::when(
            event_kind(event) == b"content_block_delta"
                && SIGNATURE_DELTA.find(event.data_bytes()).is_none(),
        )
    }

    fn content_text(event: &EventRef<'_>, f: &mut impl FnMut(&[u8])) {
        first_of(event.data_bytes(), &[&*TEXT, &*THINKING, &*PARTIAL_JSON], f);
    }

    fn response_meta(event: &EventRef<'_>) -> ResponseMeta {
        #[derive(Deserialize)]
        struct Start<'a> {
            #[serde(borrow)]
            message: Top<'a>,
        }
        if event_kind(event) != b"message_start" {
            return ResponseMeta::default();
        }
        parse::<Start<'_>>(event.data_bytes())
            .map(|start| start.message.into())
            .unwrap_or_default()
    }

    fn claims_event(kind: &[u8]) -> bool {
        matches!(kind, b"message_start" | b"message_delta")
    }

    fn usage(event: &EventRef<'_>, state: &mut impl UsageSink) -> bool {
        extract(event, state)
    }

    fn answer_usage(body: &[u8], named: bool, state: &mut impl UsageSink) -> bool {
        answer(body, named, state)
    }

    fn is_terminal(_: &EventRef<'_>, kind: &mut LazyKind<'_, '_>) -> bool {
        kind.get() == b"message_stop"
    }

    fn error(event: &EventRef<'_>, kind: &mut LazyKind<'_, '_>) -> Option<ProviderError> {
        (kind.get() == b"error").then(|| error::error_event(event.data_bytes()))
    }

    fn text_span(event: &EventRef<'_>) -> Option<(usize, usize)> {
        let data = event.data_bytes();
        if event_kind(event) != b"content_block_delta" || TEXT_DELTA.find(data).is_none() {
            return None;
        }
        text_of(data, &TEXT)
    }

    fn stop_events(stop: &StopEnd<'_>) -> Vec<(Option<&'static str>, String)> {
        if stop.kind == StopKind::BudgetExceeded {
            // Anthropic's mid-stream error event (its SDKs raise it).
            let error = error_object("budget_exceeded", super::BUDGET_EXCEEDED);
            return vec![(Some("error"), error.to_string())];
        }
        let reason = match stop.kind {
            StopKind::Length => "max_tokens",
            _ => "refusal",
        };
        let delta = serde_json::json!({
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": null},
            "usage": {"output_tokens": 0},
        });
        vec![
            (Some("message_delta"), delta.to_string()),
            (
                Some("message_stop"),
                r#"{"type":"message_stop"}"#.to_owned(),
            ),
        ]
    }

    fn error_body(error: &ErrorAnswer<'_>) -> serde_json::Value {
        error_object(error.anthropic_type, error.message)
    }
}

/// Anthropic's error object, `{"type":"error","error":{"type":…,"message":…}}`: the body of
/// its error responses, and the data of its `error` event.
fn error_object(kind: &str, message: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "error",
        "error": {"type": kind, "message": message},
    })
}

#[derive(Deserialize)]
struct AnthropicUsage {
    #[serde(default)]
    input_tokens: Count,
    #[serde(default)]
    output_tokens: Count,
    #[serde(default)]
    cache_read_input_tokens: Count,
    #[serde(default)]
    cache_creation_input_tokens: Count,
}

#[derive(Deserialize)]
struct Start {
    #[serde(default)]
    message: Lenient<Message>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    usage: Lenient<AnthropicUsage>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    delta: Lenient<DeltaBody<'a>>,
    #[serde(default)]
    usage: Lenient<AnthropicUsage>,
}

#[derive(Deserialize)]
struct DeltaBody<'a> {
    #[serde(borrow, default)]
    stop_reason: Text<'a>,
}

/// A whole answer (`"stream": false`): the message, its usage final.
#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Text<'a>,
    #[serde(default)]
    usage: Lenient<AnthropicUsage>,
    #[serde(borrow, default)]
    stop_reason: Text<'a>,
}

/// Read a whole answer: its `usage` (every count real, the output included) and
/// `stop_reason`. Guessed, only one whose `type` is `message` is claimed.
fn answer(body: &[u8], named: bool, state: &mut impl UsageSink) -> bool {
    let Some(answer) = parse_object::<Answer<'_>>(body) else {
        return false;
    };
    if !named && answer.kind.as_str() != Some("message") {
        return false;
    }
    if let Some(usage) = answer.usage.0 {
        record(state, usage, true);
    }
    if let Some(reason) = answer.stop_reason.as_str() {
        state.set_finish_reason(reason);
    }
    true
}

/// Record the counts of one usage object. `message_start`'s output count is provisional.
fn record(state: &mut impl UsageSink, usage: AnthropicUsage, output_is_real: bool) {
    let output = if output_is_real {
        usage.output_tokens.0
    } else {
        if let Some(placeholder) = usage.output_tokens.0 {
            state.set_provisional_output_tokens(placeholder);
        }
        None
    };
    state.update(counts(
        usage.input_tokens.0,
        output,
        None,
        usage.cache_read_input_tokens.0,
        None,
    ));
    if let Some(written) = usage.cache_creation_input_tokens.0 {
        state.set_cache_creation_input_tokens(written);
    }
}

/// Read one event of an Anthropic stream. Returns whether it carried usage or a reason.
fn extract(event: &EventRef<'_>, state: &mut impl UsageSink) -> bool {
    let data = event.data_bytes();
    let kind = event_kind(event);
    if kind == b"message_start"
        && let Some(start) = parse::<Start>(data)
    {
        if let Some(usage) = start.message.0.and_then(|m| m.usage.0) {
            record(state, usage, false);
        }
        return true;
    }
    if kind == b"message_delta"
        && let Some(delta) = parse::<Delta<'_>>(data)
    {
        if let Some(usage) = delta.usage.0 {
            record(state, usage, true);
        }
        if let Some(reason) = delta.delta.0.as_ref().and_then(|d| d.stop_reason.as_str()) {
            state.set_finish_reason(reason);
        }
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::{UsageState, counts};

    fn run(state: &mut UsageState, event: &str, data: &str) -> bool {
        extract(
            &EventRef::new(event.as_bytes(), data.as_bytes(), data.as_bytes()),
            state,
        )
    }

    #[test]
    fn restated_counts_replace_and_missing_ones_stay() {
        let mut s = UsageState::default();
        run(
            &mut s,
            "message_start",
            r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":10,"cache_read_input_tokens":100,"cache_creation_input_tokens":20,"output_tokens":1}}}"#,
        );
        assert_eq!(
            s.usage(),
            Some(crate::report::Usage {
                cache_write_tokens: Some(20),
                ..counts(Some(10), None, None, Some(100), None)
            })
        );
        assert_eq!(s.provisional_output_tokens(), Some(1));
        run(
            &mut s,
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":10,"cache_read_input_tokens":100,"cache_creation_input_tokens":null,"output_tokens":30}}"#,
        );
        assert_eq!(
            s.usage(),
            Some(crate::report::Usage {
                cache_write_tokens: Some(20),
                ..counts(Some(10), Some(30), None, Some(100), None)
            })
        );
        assert_eq!(s.cache_creation_input_tokens(), Some(20));
        assert_eq!(s.finish_reason(), Some("end_turn"));
    }

    #[test]
    fn unnamed_events_are_recognised_from_their_type() {
        let mut s = UsageState::default();
        assert!(run(
            &mut s,
            "",
            r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":5}}"#
        ));
        assert!(!run(
            &mut s,
            "",
            r#"{"type":"content_block_delta","delta":{"text":"\"message_delta\""}}"#
        ));
        assert!(!run(
            &mut s,
            "",
            r#"{"type":"x","note":"message_delta","usage":{"output_tokens":9}}"#
        ));
        assert_eq!(s.usage(), Some(counts(None, Some(5), None, None, None)));
        assert_eq!(s.finish_reason(), Some("max_tokens"));
    }

    #[test]
    fn error_events_are_provider_errors() {
        use crate::provider::Provider;
        use crate::provider::error::{ProviderError, seen};
        let p = Provider::Anthropic;
        let overloaded =
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let expected = Some(ProviderError::new(
            Some("overloaded_error"),
            Some("Overloaded"),
        ));
        assert_eq!(seen(p, "error", overloaded), expected);
        // Relayed without `event:` lines: the `type` names it.
        assert_eq!(seen(p, "", overloaded), expected);
        for (event, data) in [
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"an error"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"{\"type\":\"error\"}"}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":5}}"#,
            ),
            (
                "message_start",
                r#"{"type":"message_start","message":{"id":"m","content":[]}}"#,
            ),
            ("ping", r#"{"type": "ping"}"#),
            ("message_stop", r#"{"type":"message_stop"}"#),
            (
                "",
                r#"{"type":"content_block_start","content_block":{"type":"error"}}"#,
            ),
        ] {
            assert_eq!(seen(p, event, data), None, "{data}");
        }
    }
}
