//! Errors a provider reports inside its stream (an `error` event, an error object in place
//! of a chunk): [`ProviderError`], and the readers the format files share.
//!
//! The formats decide which events are errors (see the table in the module docs of
//! [`provider`](crate::provider)); this file only reads an error's type and message out of
//! the event's data, once it is known to be one. Ordinary events never come here.

use serde::Deserialize;

use crate::json::{Lenient, Text, finders, member, parse};

finders! {
    ERROR = b"\"error\"";
}

/// The longest [`ProviderError::message`] kept, in bytes (cut on a character boundary).
pub(crate) const MAX_MESSAGE_LEN: usize = 512;

/// An error the provider reported in the stream, after which the stream ended with
/// [`Outcome::ProviderError`](crate::Outcome::ProviderError): what
/// [`StreamReport::provider_error`](crate::StreamReport::provider_error) holds.
///
/// Both fields are the provider's own words, read from its error event; the client received
/// that event unchanged. Neither ever holds the request.
///
/// ```
/// use tower_sse::provider::ProviderError;
/// use tower_sse::{Outcome, StreamReport};
///
/// /// Retry on another upstream when the provider was overloaded mid-stream.
/// fn overloaded(report: &StreamReport) -> bool {
///     report.outcome == Outcome::ProviderError
///         && report.provider_error.as_ref().and_then(|e| e.kind.as_deref()) == Some("overloaded_error")
/// }
///
/// let mut report = StreamReport::new(tokio::time::Instant::now());
/// report.outcome = Outcome::ProviderError;
/// report.provider_error = Some(ProviderError::new(Some("overloaded_error"), Some("Overloaded")));
/// assert!(overloaded(&report));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ProviderError {
    /// The error's type or code, as the provider names it: Anthropic's `error.type`
    /// (`overloaded_error`), OpenAI's `error.type` or `code` (`server_error`), Gemini's
    /// `status` (`UNAVAILABLE`), or its numeric `code`. `None` when the event names none
    /// (Ollama's errors are a message only).
    pub kind: Option<String>,
    /// The error's message, at most 512 bytes (a longer one is cut on a character
    /// boundary). The type, when longer than that, is cut the same way.
    pub message: Option<String>,
}

impl ProviderError {
    /// An error of this kind with this message (for tests and observers of your own).
    pub fn new(kind: Option<&str>, message: Option<&str>) -> Self {
        Self {
            kind: kind.filter(|k| !k.is_empty()).map(bounded),
            message: message.filter(|m| !m.is_empty()).map(bounded),
        }
    }
}

/// At most [`MAX_MESSAGE_LEN`] bytes of `text`, cut on a character boundary.
fn bounded(text: &str) -> String {
    let mut end = text.len().min(MAX_MESSAGE_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default().to_owned()
}

/// The fields an error object may have, in any of the formats.
#[derive(Deserialize, Default)]
struct Body<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Text<'a>,
    #[serde(borrow, default)]
    status: Text<'a>,
    #[serde(default, deserialize_with = "lenient_code")]
    code: Option<String>,
    #[serde(borrow, default)]
    message: Text<'a>,
}

/// A `code` as text, whatever it was (a string, a number; anything else is `None`). Only
/// error events are parsed, so the allocation does not matter.
fn lenient_code<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(code) if !code.is_empty() => Some(code),
        serde_json::Value::Number(code) => Some(code.to_string()),
        _ => None,
    })
}

impl Body<'_> {
    /// The error, its kind the first of `type`, `status` and `code` it names (`type` skipped
    /// when `type_names_event`: then it is the event's name, `"error"`).
    fn into_error(self, type_names_event: bool) -> ProviderError {
        let kind = (!type_names_event)
            .then(|| self.kind.as_str())
            .flatten()
            .or(self.status.as_str())
            .or(self.code.as_deref());
        ProviderError::new(kind, self.message.as_str())
    }
}

/// The error an error object at the start of `bytes` describes (its `type`, `status` or
/// `code`, and `message`); an empty one when `bytes` are not an object.
fn object(bytes: &[u8], type_names_event: bool) -> ProviderError {
    parse::<Lenient<Body<'_>>>(bytes)
        .and_then(|body| body.0)
        .map(|body| body.into_error(type_names_event))
        .unwrap_or_default()
}

/// The error of data whose top level has a member `error` that is an object (OpenAI,
/// Gemini, Anthropic: `{"error":{"type":…,"message":…}}`) or a string (Ollama:
/// `{"error":"…"}`). `None` when there is no such member (a `null` or `false` one is no
/// error), or when `"error"` is not in the data at all, which costs one `memmem`: that is
/// the price of an ordinary event.
pub(super) fn top_level_error(data: &[u8]) -> Option<ProviderError> {
    if data.first() != Some(&b'{') {
        return None;
    }
    ERROR.find(data)?;
    let found = member(data, "error")?.member?;
    let value = data.get(found.value)?;
    match value.first()? {
        b'{' => Some(object(value, false)),
        b'"' => {
            let message = parse::<Text<'_>>(value)?;
            Some(ProviderError::new(None, message.as_str()))
        }
        _ => None,
    }
}

/// The error of an event known to be an error event (Anthropic's and the Responses API's
/// `error`, an `error` event of an unknown format): its nested `error` object, or else the
/// top level itself (the Responses API's `{"type":"error","code":…,"message":…}`).
pub(super) fn error_event(data: &[u8]) -> ProviderError {
    top_level_error(data).unwrap_or_else(|| object(data, true))
}

/// The error of a Responses `response.failed` event: `response.error`'s `code` and
/// `message`.
pub(super) fn failed_response(data: &[u8]) -> ProviderError {
    #[derive(Deserialize)]
    struct Failed<'a> {
        #[serde(borrow, default)]
        response: Lenient<Response<'a>>,
    }
    #[derive(Deserialize)]
    struct Response<'a> {
        #[serde(borrow, default)]
        error: Lenient<Body<'a>>,
    }
    parse::<Failed<'_>>(data)
        .and_then(|f| f.response.0)
        .and_then(|r| r.error.0)
        .map(|body| body.into_error(false))
        .unwrap_or_default()
}

/// The error the stream engine would record for one event of a stream of `provider`: it
/// asks events that are not content only.
#[cfg(test)]
pub(super) fn seen(provider: super::Provider, event: &str, data: &str) -> Option<ProviderError> {
    let event = crate::sse::EventRef::new(event.as_bytes(), data.as_bytes(), data.as_bytes());
    if provider.content(&event).is_content() {
        return None;
    }
    provider.provider_error(event.event_bytes(), event.data_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(kind: &str, message: &str) -> ProviderError {
        ProviderError::new(Some(kind), Some(message))
    }

    #[test]
    fn top_level_errors() {
        assert_eq!(
            top_level_error(br#"{"error":{"message":"boom","type":"server_error","code":null}}"#),
            Some(err("server_error", "boom"))
        );
        assert_eq!(
            top_level_error(br#"{"error":{"code":503,"message":"busy","status":"UNAVAILABLE"}}"#),
            Some(err("UNAVAILABLE", "busy"))
        );
        assert_eq!(
            top_level_error(br#"{"error":{"code":503,"message":"busy"}}"#),
            Some(err("503", "busy"))
        );
        assert_eq!(
            top_level_error(br#"{"error":"model not found"}"#),
            Some(ProviderError::new(None, Some("model not found")))
        );
        assert_eq!(
            top_level_error(br#"{"error":{}}"#),
            Some(ProviderError::default())
        );
        for data in [
            r#"{"error":null}"#,
            r#"{"error":false}"#,
            r#"{"choices":[{"delta":{"content":"\"error\":{}"}}]}"#,
            r#"{"choices":[{"delta":{"content":"an error"},"finish_reason":"error"}]}"#,
            r#"{"x":{"error":{"type":"nested"}}}"#,
            r#"{"error":{"type":"#,
            "error",
            "",
        ] {
            assert_eq!(top_level_error(data.as_bytes()), None, "{data}");
        }
    }

    #[test]
    fn error_events_and_failed_responses() {
        assert_eq!(
            error_event(
                br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            ),
            err("overloaded_error", "Overloaded")
        );
        assert_eq!(
            error_event(br#"{"type":"error","code":"server_error","message":"x","param":null}"#),
            err("server_error", "x")
        );
        assert_eq!(error_event(b"not json"), ProviderError::default());
        assert_eq!(
            failed_response(
                br#"{"type":"response.failed","response":{"status":"failed","error":{"code":"server_error","message":"m"}}}"#
            ),
            err("server_error", "m")
        );
        assert_eq!(
            failed_response(br#"{"type":"response.failed","response":{"error":null}}"#),
            ProviderError::default()
        );
    }

    #[test]
    fn messages_are_bounded_on_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE_LEN);
        let e = ProviderError::new(None, Some(&long));
        let message = e.message.unwrap();
        assert!(message.len() <= MAX_MESSAGE_LEN && message.len() >= MAX_MESSAGE_LEN - 1);
        assert!(message.chars().all(|c| c == 'é'));
        assert_eq!(
            ProviderError::new(Some(""), Some("")),
            ProviderError::default()
        );
    }
}
