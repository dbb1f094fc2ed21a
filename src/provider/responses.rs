//! OpenAI Responses.
//!
//! - Recognised by the path (`…/responses`) and by its event names (`response.*`). An
//!   event's name is its `event:` line or, in a stream relayed without `event:` lines, the
//!   top-level `type` of its data, which the API always sends too: a data-only stream is
//!   read like a named one, content, id and model, usage and terminal event alike.
//! - Content: the `*.delta` events (output text, reasoning summaries, function-call
//!   arguments), whose text is the `delta` string.
//! - The response id and model are in the `response` object of the lifecycle events.
//! - It rejects `stream_options`: never inject `include_usage` here.
//!
//! The stream ends with one of `response.completed`, `response.incomplete` or
//! `response.failed`, whose `response` object holds the usage (`input_tokens`,
//! `output_tokens`, `total_tokens`, `input_tokens_details.cached_tokens`,
//! `output_tokens_details.reasoning_tokens`). The finish reason is
//! `response.incomplete_details.reason` when there is one (`max_output_tokens`,
//! `content_filter`), else `response.status` (`completed`, `failed`…). Only those three
//! events are parsed, chosen by their name; the many delta events cost a byte compare.

use serde::Deserialize;

use crate::sse::EventRef;

use super::error::{self, ProviderError};
use super::{
    ContentSpan, Format, LazyKind, ResponseMeta, StopEnd, Top, UsageSink, counts, event_kind,
    parse_object,
};
use crate::json::{Count, Lenient, Text, finders, first_of, parse, text_of};
use crate::policy::StopKind;

finders! {
    RESPONSE = b"\"response\"";
    DELTA = b"\"delta\"";
}

/// OpenAI Responses (`response.*` events).
pub(super) struct Responses;

impl Format for Responses {
    const NAME: &'static str = "openai";
    const NAMES_EVENTS: bool = true;

    fn matches_path(path: &str) -> bool {
        path.ends_with("/responses")
    }

    fn recognise(event: &EventRef<'_>) -> bool {
        event_kind(event).starts_with(b"response.")
    }

    fn content(event: &EventRef<'_>) -> ContentSpan {
        ContentSpan::when(event_kind(event).ends_with(b".delta"))
    }

    fn content_text(event: &EventRef<'_>, f: &mut impl FnMut(&[u8])) {
        first_of(event.data_bytes(), &[&*DELTA], f);
    }

    fn response_meta(event: &EventRef<'_>) -> ResponseMeta {
        #[derive(Deserialize)]
        struct Lifecycle<'a> {
            #[serde(borrow)]
            response: Top<'a>,
        }
        if RESPONSE.find(event.data_bytes()).is_none() {
            return ResponseMeta::default();
        }
        parse::<Lifecycle<'_>>(event.data_bytes())
            .map(|l| l.response.into())
            .unwrap_or_default()
    }

    fn claims_event(kind: &[u8]) -> bool {
        kind.starts_with(b"response.")
    }

    fn usage(event: &EventRef<'_>, state: &mut impl UsageSink) -> bool {
        extract(event, state)
    }

    fn answer_usage(body: &[u8], named: bool, state: &mut impl UsageSink) -> bool {
        answer(body, named, state)
    }

    fn is_terminal(_: &EventRef<'_>, kind: &mut LazyKind<'_, '_>) -> bool {
        TERMINAL.contains(&kind.get())
    }

    fn error(event: &EventRef<'_>, kind: &mut LazyKind<'_, '_>) -> Option<ProviderError> {
        match kind.get() {
            b"error" => Some(error::error_event(event.data_bytes())),
            b"response.failed" => Some(error::failed_response(event.data_bytes())),
            _ => None,
        }
    }

    fn text_span(event: &EventRef<'_>) -> Option<(usize, usize)> {
        if event_kind(event) != b"response.output_text.delta" {
            return None;
        }
        text_of(event.data_bytes(), &DELTA)
    }

    fn stop_events(stop: &StopEnd<'_>) -> Vec<(Option<&'static str>, String)> {
        if stop.kind == StopKind::BudgetExceeded {
            // The Responses API's `error` event (its SDKs raise it).
            let error = serde_json::json!({
                "type": "error",
                "code": "budget_exceeded",
                "message": super::BUDGET_EXCEEDED,
                "param": null,
            });
            return vec![(Some("error"), error.to_string())];
        }
        let reason = match stop.kind {
            StopKind::Length => "max_output_tokens",
            _ => "content_filter",
        };
        let data = serde_json::json!({
            "type": "response.incomplete",
            "response": {
                "id": stop.id,
                "object": "response",
                "created_at": 0,
                "status": "incomplete",
                "incomplete_details": {"reason": reason},
                "model": stop.model,
                "output": [],
                "error": null,
            },
        });
        vec![(Some("response.incomplete"), data.to_string())]
    }
}

const TERMINAL: [&[u8]; 3] = [
    b"response.completed",
    b"response.incomplete",
    b"response.failed",
];

#[derive(Deserialize)]
struct Terminal<'a> {
    #[serde(borrow, default)]
    response: Lenient<Response<'a>>,
}

#[derive(Deserialize)]
struct Response<'a> {
    /// `"response"` (read for a whole answer, whose top level is the response).
    #[serde(borrow, default)]
    object: Text<'a>,
    #[serde(borrow, default)]
    status: Text<'a>,
    #[serde(borrow, default)]
    incomplete_details: Lenient<Incomplete<'a>>,
    #[serde(default)]
    usage: Lenient<ResponsesUsage>,
}

#[derive(Deserialize)]
struct Incomplete<'a> {
    #[serde(borrow, default)]
    reason: Text<'a>,
}

#[derive(Deserialize)]
struct ResponsesUsage {
    #[serde(default)]
    input_tokens: Count,
    #[serde(default)]
    output_tokens: Count,
    #[serde(default)]
    total_tokens: Count,
    #[serde(default)]
    input_tokens_details: Lenient<InputDetails>,
    #[serde(default)]
    output_tokens_details: Lenient<OutputDetails>,
}

#[derive(Deserialize)]
struct InputDetails {
    #[serde(default)]
    cached_tokens: Count,
}

#[derive(Deserialize)]
struct OutputDetails {
    #[serde(default)]
    reasoning_tokens: Count,
}

/// Read one event of a Responses stream. Returns whether it was a terminal event.
fn extract(event: &EventRef<'_>, state: &mut impl UsageSink) -> bool {
    let kind = event_kind(event);
    if !TERMINAL.contains(&kind) {
        return false;
    }
    let Some(parsed) = parse::<Terminal<'_>>(event.data_bytes()) else {
        return false;
    };
    let Some(response) = parsed.response.0 else {
        return true;
    };
    let ended = kind
        .strip_prefix(b"response.")
        .and_then(|k| std::str::from_utf8(k).ok());
    record(response, ended, state);
    true
}

/// A whole answer (`"stream": false`): the response object itself. Guessed, only one whose
/// `object` is `response` is claimed.
fn answer(body: &[u8], named: bool, state: &mut impl UsageSink) -> bool {
    let Some(response) = parse_object::<Response<'_>>(body) else {
        return false;
    };
    if !named && response.object.as_str() != Some("response") {
        return false;
    }
    record(response, None, state);
    true
}

/// The usage and the finish reason of a response object (`ended`: the reason when it
/// names none, from the name of the event that carried it).
fn record(response: Response<'_>, ended: Option<&str>, state: &mut impl UsageSink) {
    if let Some(usage) = response.usage.0 {
        state.update(counts(
            usage.input_tokens.0,
            usage.output_tokens.0,
            usage.total_tokens.0,
            usage.input_tokens_details.0.and_then(|d| d.cached_tokens.0),
            usage
                .output_tokens_details
                .0
                .and_then(|d| d.reasoning_tokens.0),
        ));
    }
    let reason = response
        .incomplete_details
        .0
        .as_ref()
        .and_then(|d| d.reason.as_str())
        .or(response.status.as_str())
        .or(ended);
    if let Some(reason) = reason {
        state.set_finish_reason(reason);
    }
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
    fn completed_and_incomplete() {
        let mut s = UsageState::default();
        assert!(!run(
            &mut s,
            "response.created",
            r#"{"response":{"status":"in_progress","usage":null}}"#
        ));
        assert!(run(
            &mut s,
            "response.incomplete",
            r#"{"type":"response.incomplete","response":{"status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"output":[{"content":[{"text":"x"}]}],"usage":{"input_tokens":3,"input_tokens_details":{"cached_tokens":0},"output_tokens":16,"output_tokens_details":{"reasoning_tokens":8},"total_tokens":19}}}"#
        ));
        assert_eq!(
            s.usage(),
            Some(counts(Some(3), Some(16), Some(19), Some(0), Some(8)))
        );
        assert_eq!(s.finish_reason(), Some("max_output_tokens"));
    }

    #[test]
    fn unnamed_and_statusless() {
        let mut s = UsageState::default();
        assert!(run(
            &mut s,
            "",
            r#"{"type":"response.failed","response":{"usage":null}}"#
        ));
        assert_eq!(s.finish_reason(), Some("failed"));
        assert!(!run(
            &mut s,
            "",
            r#"{"type":"response.output_text.delta","delta":"response.completed"}"#
        ));
        assert!(run(&mut s, "response.completed", r#"{"response":{}}"#));
        assert_eq!(s.finish_reason(), Some("completed"));
        assert_eq!(s.usage(), None);
    }

    #[test]
    fn error_and_failed_are_provider_errors_incomplete_is_not() {
        use crate::provider::Provider;
        use crate::provider::error::{ProviderError, seen};
        let p = Provider::OpenAiResponses;
        let error = r#"{"type":"error","code":"server_error","message":"The server had an error","param":null,"sequence_number":7}"#;
        let expected = Some(ProviderError::new(
            Some("server_error"),
            Some("The server had an error"),
        ));
        assert_eq!(seen(p, "error", error), expected);
        assert_eq!(seen(p, "", error), expected);
        let failed = r#"{"type":"response.failed","sequence_number":9,"response":{"id":"resp_1","status":"failed","error":{"code":"rate_limit_exceeded","message":"slow down"},"usage":null}}"#;
        let expected = Some(ProviderError::new(
            Some("rate_limit_exceeded"),
            Some("slow down"),
        ));
        assert_eq!(seen(p, "response.failed", failed), expected);
        assert_eq!(seen(p, "", failed), expected);
        for (event, data) in [
            (
                "response.incomplete",
                r#"{"type":"response.incomplete","response":{"status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"error":null}}"#,
            ),
            (
                "response.completed",
                r#"{"type":"response.completed","response":{"status":"completed","error":null}}"#,
            ),
            (
                "response.output_text.delta",
                r#"{"type":"response.output_text.delta","delta":"error"}"#,
            ),
            (
                "response.output_text.done",
                r#"{"type":"response.output_text.done","text":"an \"error\": none"}"#,
            ),
            (
                "",
                r#"{"type":"response.output_item.added","item":{"type":"error"}}"#,
            ),
        ] {
            assert_eq!(seen(p, event, data), None, "{data}");
        }
    }
}
