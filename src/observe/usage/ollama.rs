//! Ollama's native API (`/api/chat`, `/api/generate`): NDJSON, reframed by the layer into
//! one event per line.
//!
//! The last line says `"done":true` and carries `prompt_eval_count` (input tokens),
//! `eval_count` (output tokens) and `done_reason`. Ollama sends no total. Only lines with a
//! `"done":true` are parsed, and only their top level counts (tool-call arguments are
//! free-form objects that could hold a `done` key).

use serde::Deserialize;

use crate::sse::EventRef;

use super::extract::{UsageState, counts};
use super::json::{Count, Flag, Text, finders, has_true_value, parse};

finders! {
    DONE = b"\"done\"";
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

/// Read one Ollama line. Returns whether it was the final one.
pub(super) fn extract(event: &EventRef<'_>, state: &mut UsageState) -> bool {
    let data = event.data_bytes();
    if !has_true_value(data, &DONE) {
        return false;
    }
    let Some(line) = parse::<Final<'_>>(data).filter(|l| l.done.0) else {
        return false;
    };
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
    true
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
