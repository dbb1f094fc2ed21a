//! The wire formats: one lazy event script per API, plus its whole-JSON answer and error
//! bodies.
//!
//! Scripts produce one event at a time from a few counters, so an open stream costs a few
//! hundred bytes whatever its length. Events are written by hand with `format!` around
//! pre-escaped JSON literals: cheap enough that the mock is not the bottleneck of a load run.

pub(crate) mod anthropic;
pub(crate) mod chat;
pub(crate) mod gemini;
pub(crate) mod ollama;
pub(crate) mod responses;

use std::time::Duration;

use bytes::Bytes;

use crate::request::Call;
use crate::words::{Words, json_string};

/// One event of a script, as wire bytes.
#[derive(Debug)]
pub(crate) struct Step {
    pub(crate) bytes: Bytes,
    /// A content token: the token delay applies before it.
    pub(crate) is_token: bool,
}

impl Step {
    fn meta(bytes: impl Into<Bytes>) -> Self {
        Self {
            bytes: bytes.into(),
            is_token: false,
        }
    }

    fn token(bytes: impl Into<Bytes>) -> Self {
        Self {
            bytes: bytes.into(),
            is_token: true,
        }
    }
}

/// A lazily generated stream of events.
pub(crate) trait Script: Send + Unpin + 'static {
    /// The next event, or `None` after the last.
    fn next_step(&mut self) -> Option<Step>;

    /// The format's in-band error event, sent by the `error_after` fault after `after` events.
    fn error_event(&mut self, after: u32) -> Bytes;
}

/// What every format needs to know about one response.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    /// The response number: ids are `chatcmpl-mock-<n>`, `msg_mock_<n>`, ...
    pub(crate) number: u64,
    pub(crate) created: u64,
    /// The model as a JSON string literal.
    pub(crate) model: String,
    pub(crate) words: Words,
    pub(crate) tokens: u32,
    pub(crate) prompt_tokens: u64,
    pub(crate) include_usage: bool,
    pub(crate) delay: Duration,
    pub(crate) headers_delay: Duration,
}

impl Reply {
    pub(crate) fn new(call: &Call, number: u64, created: u64) -> Self {
        Self {
            number,
            created,
            model: json_string(&call.model),
            words: Words::new(call.controls.seed),
            tokens: call.controls.tokens,
            prompt_tokens: call.prompt_tokens,
            include_usage: call.include_usage,
            delay: call.controls.delay,
            headers_delay: call.controls.headers_delay,
        }
    }

    pub(crate) fn total_tokens(&self) -> u64 {
        self.prompt_tokens + u64::from(self.tokens)
    }

    /// The whole content as a JSON string literal (built when needed, never kept).
    pub(crate) fn text_json(&self) -> String {
        json_string(&self.words.text(self.tokens))
    }
}

/// An SSE event: an optional `event:` line, one `data:` line and the blank line, with the
/// given line end.
pub(crate) fn sse(event: Option<&str>, data: &str, eol: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 32);
    if let Some(event) = event {
        out.push_str("event: ");
        out.push_str(event);
        out.push_str(eol);
    }
    out.push_str("data: ");
    out.push_str(data);
    out.push_str(eol);
    out.push_str(eol);
    Bytes::from(out)
}

/// The in-band error message every format carries, as a JSON string literal.
pub(crate) fn fault_message(after: u32) -> String {
    json_string(&format!("mock error after {after} events"))
}

/// `seconds` since the Unix epoch as RFC 3339 UTC (`2025-06-15T15:06:40Z`), for Ollama.
pub(crate) fn rfc3339(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// The OpenAI error `type` and `code` for an HTTP status.
pub(crate) fn openai_error_body(status: u16, message: &str) -> String {
    let (kind, code) = match status {
        400 => ("invalid_request_error", "null"),
        401 => ("invalid_request_error", "\"invalid_api_key\""),
        403 => ("permission_error", "null"),
        404 => ("invalid_request_error", "null"),
        429 => ("rate_limit_error", "\"rate_limit_exceeded\""),
        500..=599 => ("server_error", "null"),
        _ => ("invalid_request_error", "null"),
    };
    format!(
        r#"{{"error":{{"message":{},"type":"{kind}","param":null,"code":{code}}}}}"#,
        json_string(message)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_750_000_000), "2025-06-15T15:06:40Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
