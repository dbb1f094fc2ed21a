//! Ollama's native API (`/api/chat`, `/api/generate`): NDJSON, reframed by the layer into
//! one event per line.
//!
//! - Recognised by the path (`/api/chat`, `/api/generate`) and by a line with `done` and a
//!   `message` or `response`.
//! - Content: a non-empty `message.content`, `thinking` or `response` string, or
//!   `tool_calls`. The model is the top-level `model`; Ollama sends no response id.
//! - The stream ends with the `"done":true` line (counted as terminal only in a stream known
//!   to be Ollama's: other formats could have a `done` key).
//!
//! The last line says `"done":true` and carries `prompt_eval_count` (input tokens),
//! `eval_count` (output tokens) and `done_reason`. Ollama sends no total. Only lines with a
//! `"done":true` are parsed, and only their top level counts (tool-call arguments are
//! free-form objects that could hold a `done` key).

use serde::Deserialize;

use crate::sse::EventRef;

use super::error::{self, ProviderError};
use super::{ContentSpan, ErrorAnswer, Format, LazyKind, StopEnd, UsageSink, counts, parse_object};
use crate::json::{Count, Flag, Text, finders, first_of, has_true_value, parse, present, text_of};
use crate::policy::StopKind;

finders! {
    DONE = b"\"done\"";
    MESSAGE = b"\"message\"";
    RESPONSE = b"\"response\"";
    CONTENT = b"\"content\"";
    THINKING = b"\"thinking\"";
    TOOL_CALLS = b"\"tool_calls\"";
}

/// Ollama's native API: NDJSON.
pub(super) struct Ollama;

impl Format for Ollama {
    const NAME: &'static str = "ollama";
    const TERMINAL_IS_DISTINCTIVE: bool = false;

    fn matches_path(path: &str) -> bool {
        path.ends_with("/api/chat") || path.ends_with("/api/generate")
    }

    fn recognise(event: &EventRef<'_>) -> bool {
        let data = event.data_bytes();
        DONE.find(data).is_some() && (MESSAGE.find(data).is_some() || RESPONSE.find(data).is_some())
    }

    fn content(event: &EventRef<'_>) -> ContentSpan {
        let data = event.data_bytes();
        ContentSpan::located(
            text_of(data, &CONTENT)
                .or_else(|| text_of(data, &THINKING))
                .or_else(|| text_of(data, &RESPONSE)),
        )
        .or_else(|| ContentSpan::when(present(data, &TOOL_CALLS)))
    }

    fn content_text(event: &EventRef<'_>, f: &mut impl FnMut(&[u8])) {
        first_of(event.data_bytes(), &[&*CONTENT, &*THINKING, &*RESPONSE], f);
    }

    fn usage(event: &EventRef<'_>, state: &mut impl UsageSink) -> bool {
        extract(event, state)
    }

    fn answer_usage(body: &[u8], _named: bool, state: &mut impl UsageSink) -> bool {
        answer(body, state)
    }

    fn is_terminal(event: &EventRef<'_>, _: &mut LazyKind<'_, '_>) -> bool {
        event.event_bytes().is_empty() && has_true_value(event.data_bytes(), &DONE)
    }

    fn error(event: &EventRef<'_>, _: &mut LazyKind<'_, '_>) -> Option<ProviderError> {
        error::top_level_error(event.data_bytes())
    }

    fn stop_events(stop: &StopEnd<'_>) -> Vec<(Option<&'static str>, String)> {
        if stop.kind == StopKind::BudgetExceeded {
            let error = error_object(super::BUDGET_EXCEEDED);
            return vec![(None, error.to_string())];
        }
        let reason = match stop.kind {
            StopKind::Length => "length",
            _ => "content_filter",
        };
        let line = serde_json::json!({
            "model": stop.model,
            "created_at": "1970-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": ""},
            "done": true,
            "done_reason": reason,
        });
        vec![(None, line.to_string())]
    }

    fn error_body(error: &ErrorAnswer<'_>) -> serde_json::Value {
        error_object(error.message)
    }
}

/// Ollama's error object, a message only: `{"error":…}`.
fn error_object(message: &str) -> serde_json::Value {
    serde_json::json!({"error": message})
}

#[derive(Deserialize)]
struct Final<'a> {
    #[serde(default)]
    done: Flag,
    #[serde(default)]
    prompt_eval_count: Count,
    #[serde(default)]
    eval_count: Count,
    #[serde(borrow, default)]
    done_reason: Text<'a>,
}

/// A whole answer (`"stream": false`): one object, the final line's counts, `"done": true`
/// (which it must say, named or guessed).
fn answer(body: &[u8], state: &mut impl UsageSink) -> bool {
    let Some(line) = parse_object::<Final<'_>>(body).filter(|l| l.done.0) else {
        return false;
    };
    record(line, state);
    true
}

/// Read one Ollama line. Returns whether it was the final one.
fn extract(event: &EventRef<'_>, state: &mut impl UsageSink) -> bool {
    let data = event.data_bytes();
    if !has_true_value(data, &DONE) {
        return false;
    }
    let Some(line) = parse::<Final<'_>>(data).filter(|l| l.done.0) else {
        return false;
    };
    record(line, state);
    true
}

/// The counts and the reason of the final line.
fn record(line: Final<'_>, state: &mut impl UsageSink) {
    state.update(counts(
        line.prompt_eval_count.0,
        line.eval_count.0,
        None,
        None,
        None,
    ));
    if let Some(reason) = line.done_reason.as_str() {
        state.set_finish_reason(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::{UsageState, counts};

    fn run(state: &mut UsageState, data: &str) -> bool {
        extract(&EventRef::new(b"", data.as_bytes(), data.as_bytes()), state)
    }

    #[test]
    fn final_line_only() {
        let mut s = UsageState::default();
        assert!(!run(
            &mut s,
            r#"{"message":{"tool_calls":[{"function":{"arguments":{"done":true}}}]},"done":false}"#
        ));
        assert!(run(
            &mut s,
            r#"{"model":"m","message":{"role":"assistant","content":""},"done_reason":"stop","done": true,"prompt_eval_count":26,"eval_count":290}"#
        ));
        assert_eq!(
            s.usage(),
            Some(counts(Some(26), Some(290), None, None, None))
        );
        assert_eq!(s.finish_reason(), Some("stop"));
    }

    #[test]
    fn error_lines_are_provider_errors() {
        use crate::provider::Provider;
        use crate::provider::error::{ProviderError, seen};
        let p = Provider::Ollama;
        assert_eq!(
            seen(
                p,
                "",
                r#"{"error":"an error was encountered while running the model"}"#
            ),
            Some(ProviderError::new(
                None,
                Some("an error was encountered while running the model")
            ))
        );
        for data in [
            r#"{"model":"m","message":{"role":"assistant","content":"error"},"done":false}"#,
            r#"{"model":"m","message":{"role":"assistant","content":""},"done_reason":"length","done":true,"eval_count":3}"#,
            r#"{"model":"m","response":"","done":true,"done_reason":"stop","error":null}"#,
        ] {
            assert_eq!(seen(p, "", data), None, "{data}");
        }
    }
}
