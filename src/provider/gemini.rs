//! Google Gemini `streamGenerateContent?alt=sse` (and Vertex AI's).
//!
//! - Recognised by the path (`…:streamGenerateContent`) and by `candidates` or
//!   `usageMetadata` in a chunk.
//! - Content: a non-empty `text` part, or a `functionCall`. The response id and model are
//!   `responseId` and `modelVersion`. Gemini sends no terminal event: the stream just ends.
//!
//! Every chunk may carry `usageMetadata`, a running total: `promptTokenCount`,
//! `candidatesTokenCount`, `totalTokenCount`, `cachedContentTokenCount`,
//! `thoughtsTokenCount`. The last one wins. Counts keep Gemini's meaning: the output
//! (`candidatesTokenCount`) excludes the thinking tokens (in
//! [`reasoning_tokens`](crate::Usage::reasoning_tokens)), and the total includes them. The
//! finish reason is the last `candidates[].finishReason`.
//!
//! A chunk is parsed (the top-level object only; candidates are walked without being
//! collected) when it names `usageMetadata` or `finishReason`. Since Gemini sends usage on
//! most chunks, that is most chunks: parsing the whole chunk, rather than a slice at the
//! first `"usageMetadata"`, is what keeps a function call's arguments (free-form objects
//! that may use any key) from being taken for the usage.

use std::borrow::Cow;

use serde::Deserialize;

use crate::sse::EventRef;

use super::error::{self, ProviderError};
use super::{ContentSpan, ErrorAnswer, Format, LazyKind, ResponseMeta, StopEnd, UsageSink, counts};
use crate::json::{
    Count, HasReason, LastReason, Lenient, Text, finders, first_of, parse, present, text_of, values,
};
use crate::policy::StopKind;

finders! {
    USAGE_METADATA = b"\"usageMetadata\"";
    FINISH_REASON = b"\"finishReason\"";
    CANDIDATES = b"\"candidates\"";
    TEXT = b"\"text\"";
    FUNCTION_CALL = b"\"functionCall\"";
}

/// Google Gemini `streamGenerateContent` with `alt=sse`.
pub(super) struct Gemini;

impl Format for Gemini {
    const NAME: &'static str = "gcp.gemini";
    const OPERATION: &'static str = "generate_content";
    const TERMINAL_IS_DISTINCTIVE: bool = false;

    fn matches_path(path: &str) -> bool {
        path.contains(":streamGenerateContent")
    }

    fn recognise(event: &EventRef<'_>) -> bool {
        let data = event.data_bytes();
        CANDIDATES.find(data).is_some() || USAGE_METADATA.find(data).is_some()
    }

    fn content(event: &EventRef<'_>) -> ContentSpan {
        let data = event.data_bytes();
        ContentSpan::located(text_of(data, &TEXT))
            .or_else(|| ContentSpan::when(present(data, &FUNCTION_CALL)))
    }

    fn content_text(event: &EventRef<'_>, f: &mut impl FnMut(&[u8])) {
        first_of(event.data_bytes(), &[&*TEXT], f);
    }

    fn response_meta(event: &EventRef<'_>) -> ResponseMeta {
        #[derive(Deserialize)]
        struct Meta<'a> {
            #[serde(borrow, default, rename = "responseId")]
            id: Option<Cow<'a, str>>,
            #[serde(borrow, default, rename = "modelVersion")]
            model: Option<Cow<'a, str>>,
        }
        parse::<Meta<'_>>(event.data_bytes())
            .map(|m| ResponseMeta {
                id: m.id.map(Cow::into_owned),
                model: m.model.map(Cow::into_owned),
            })
            .unwrap_or_default()
    }

    fn usage(event: &EventRef<'_>, state: &mut impl UsageSink) -> bool {
        extract(event, state)
    }

    fn answer_usage(body: &[u8], named: bool, state: &mut impl UsageSink) -> bool {
        answer(body, named, state)
    }

    fn is_terminal(_: &EventRef<'_>, _: &mut LazyKind<'_, '_>) -> bool {
        false
    }

    fn error(event: &EventRef<'_>, _: &mut LazyKind<'_, '_>) -> Option<ProviderError> {
        error::top_level_error(event.data_bytes())
    }

    fn stop_events(stop: &StopEnd<'_>) -> Vec<(Option<&'static str>, String)> {
        if stop.kind == StopKind::BudgetExceeded {
            // Google's error object, as its API sends one in place of a chunk.
            let mut error = error_object(429, super::BUDGET_EXCEEDED, "RESOURCE_EXHAUSTED");
            error["error"]["details"] = serde_json::json!([{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "BUDGET_EXCEEDED",
            }]);
            return vec![(None, error.to_string())];
        }
        let reason = match stop.kind {
            StopKind::Length => "MAX_TOKENS",
            _ => "SAFETY",
        };
        let mut data = serde_json::json!({
            "candidates": [{
                "content": {"parts": [{"text": ""}], "role": "model"},
                "finishReason": reason,
                "index": 0,
            }],
        });
        if !stop.model.is_empty() {
            data["modelVersion"] = stop.model.into();
        }
        if !stop.id.is_empty() {
            data["responseId"] = stop.id.into();
        }
        vec![(None, data.to_string())]
    }

    fn error_body(error: &ErrorAnswer<'_>) -> serde_json::Value {
        error_object(error.status.as_u16(), error.message, error.google_status)
    }
}

/// Google's error object, `{"error":{"code":…,"message":…,"status":…}}`: the body of its
/// error responses, and what it sends in place of a chunk.
fn error_object(code: u16, message: &str, status: &str) -> serde_json::Value {
    serde_json::json!({"error": {"code": code, "message": message, "status": status}})
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiUsage {
    #[serde(default)]
    prompt_token_count: Count,
    #[serde(default)]
    candidates_token_count: Count,
    #[serde(default)]
    total_token_count: Count,
    #[serde(default)]
    cached_content_token_count: Count,
    #[serde(default)]
    thoughts_token_count: Count,
}

#[derive(Deserialize)]
struct Candidate<'a> {
    #[serde(borrow, default, rename = "finishReason")]
    finish_reason: Text<'a>,
}

impl<'a> HasReason<'a> for Candidate<'a> {
    fn reason(self) -> Option<Cow<'a, str>> {
        self.finish_reason.0.filter(|r| !r.is_empty())
    }
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, rename = "usageMetadata")]
    usage: Lenient<GeminiUsage>,
    #[serde(borrow, default)]
    candidates: LastReason<'a, Candidate<'a>>,
}

/// A whole answer: `generateContent`'s one object, or `streamGenerateContent`'s JSON array
/// of chunks (without `alt=sse`), whose running totals end at the last `usageMetadata`.
/// Guessed, it is claimed only when it carries `usageMetadata` or a finish reason.
fn answer(body: &[u8], named: bool, state: &mut impl UsageSink) -> bool {
    let start = crate::json::skip_ws(body, 0);
    let chunks = match body.get(start) {
        Some(b'{') => parse::<Chunk<'_>>(&body[start..]).map(|c| vec![Lenient(Some(c))]),
        Some(b'[') => parse::<Vec<Lenient<Chunk<'_>>>>(&body[start..]),
        _ => None,
    };
    let Some(chunks) = chunks else {
        return false;
    };
    let mut found = false;
    for chunk in chunks.into_iter().filter_map(|c| c.0) {
        found |= record(chunk, state);
    }
    found || named
}

/// Read one Gemini chunk. Returns whether it carried usage or a finish reason.
fn extract(event: &EventRef<'_>, state: &mut impl UsageSink) -> bool {
    let data = event.data_bytes();
    let wanted = values(data, &USAGE_METADATA).next().is_some()
        || values(data, &FINISH_REASON).next().is_some();
    if !wanted {
        return false;
    }
    let Some(chunk) = parse::<Chunk<'_>>(data) else {
        return false;
    };
    record(chunk, state)
}

/// The usage and the finish reason of one chunk; whether it had either.
fn record(chunk: Chunk<'_>, state: &mut impl UsageSink) -> bool {
    let mut found = false;
    if let Some(usage) = chunk.usage.0 {
        state.update(counts(
            usage.prompt_token_count.0,
            usage.candidates_token_count.0,
            usage.total_token_count.0,
            usage.cached_content_token_count.0,
            usage.thoughts_token_count.0,
        ));
        found = true;
    }
    if let Some(reason) = chunk.candidates.0 {
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
        extract(&EventRef::new(b"", data.as_bytes(), data.as_bytes()), state)
    }

    #[test]
    fn running_totals_and_nested_lookalikes() {
        let mut s = UsageState::default();
        run(
            &mut s,
            r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{"usageMetadata":{"promptTokenCount":999}}}}]}}],"usageMetadata":{"promptTokenCount":7,"totalTokenCount":7}}"#,
        );
        assert_eq!(s.usage(), Some(counts(Some(7), None, Some(7), None, None)));
        run(
            &mut s,
            r#"{"candidates":[{"content":{"parts":[{"text":"x"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":7,"candidatesTokenCount":4,"totalTokenCount":15,"thoughtsTokenCount":4}}"#,
        );
        assert_eq!(
            s.usage(),
            Some(counts(Some(7), Some(4), Some(15), None, Some(4)))
        );
        assert_eq!(s.finish_reason(), Some("STOP"));
        assert!(!run(
            &mut s,
            r#"{"candidates":[{"content":{"parts":[{"text":"usageMetadata"}]}}]}"#
        ));
    }

    #[test]
    fn error_objects_are_provider_errors() {
        use crate::provider::Provider;
        use crate::provider::error::{ProviderError, seen};
        let p = Provider::Gemini;
        assert_eq!(
            seen(
                p,
                "",
                r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#
            ),
            Some(ProviderError::new(
                Some("UNAVAILABLE"),
                Some("The model is overloaded.")
            ))
        );
        for data in [
            r#"{"candidates":[{"content":{"parts":[{"text":"error"}],"role":"model"}}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":""}]},"finishReason":"MAX_TOKENS"}],"usageMetadata":{"promptTokenCount":3}}"#,
            r#"{"candidates":[{"finishReason":"SAFETY","safetyRatings":[{"category":"error"}]}]}"#,
        ] {
            assert_eq!(seen(p, "", data), None, "{data}");
        }
    }
}
