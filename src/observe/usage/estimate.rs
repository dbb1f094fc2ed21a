//! Estimated output tokens, for streams cut before the provider reported any.
//!
//! While the output count is unknown, the observer hands the text of every content event
//! to a [`TokenCounter`]: the string values that hold generated text, as sent (JSON escapes
//! not decoded), found by byte search, never copied. When a stream ends without reaching
//! completion and without an output count, the counter's estimate becomes the output count,
//! flagged [`UsageSource::Estimated`](super::UsageSource::Estimated). Input tokens are never
//! estimated: they stay unknown unless reported.

use crate::provider::Provider;
use crate::sse::EventRef;

use memchr::memmem::Finder;

use super::json::{finders, string_values};

/// Estimates tokens from the text of content events.
///
/// It runs inline, once per content event: keep it to arithmetic (no tokenizer that
/// blocks, no allocation). Implemented for `()`, which estimates nothing.
pub trait TokenCounter {
    /// Add one piece of generated text: the contents of a JSON string as sent (escapes
    /// such as `\n` or `\u00e9` not decoded), or for an unknown format the whole event data.
    fn add_text(&mut self, text: &[u8]);

    /// The estimated tokens of all text added, or `None` when there is no basis for one.
    fn estimate(&self) -> Option<u64>;
}

impl TokenCounter for () {
    #[inline]
    fn add_text(&mut self, _: &[u8]) {}

    fn estimate(&self) -> Option<u64> {
        None
    }
}

/// The default [`TokenCounter`]: bytes of text divided by a ratio (4 by default, about
/// right for English with current tokenizers), rounded up.
///
/// It is a rough figure, meant for billing a cut stream something rather than nothing;
/// plug in a better counter for languages or models where the ratio is far off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct HeuristicCounter {
    bytes: u64,
    bytes_per_token: u64,
}

impl HeuristicCounter {
    /// A counter with 4 bytes per token.
    pub fn new() -> Self {
        Self {
            bytes: 0,
            bytes_per_token: 4,
        }
    }

    /// Use this many bytes per token (at least 1).
    pub fn bytes_per_token(mut self, bytes: u32) -> Self {
        self.bytes_per_token = u64::from(bytes.max(1));
        self
    }
}

impl Default for HeuristicCounter {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenCounter for HeuristicCounter {
    #[inline]
    fn add_text(&mut self, text: &[u8]) {
        self.bytes = self.bytes.saturating_add(text.len() as u64);
    }

    fn estimate(&self) -> Option<u64> {
        (self.bytes > 0).then(|| self.bytes.div_ceil(self.bytes_per_token.max(1)))
    }
}

finders! {
    CONTENT = b"\"content\"";
    REASONING_CONTENT = b"\"reasoning_content\"";
    REASONING = b"\"reasoning\"";
    REFUSAL = b"\"refusal\"";
    ARGUMENTS = b"\"arguments\"";
    TEXT = b"\"text\"";
    DELTA = b"\"delta\"";
    THINKING = b"\"thinking\"";
    PARTIAL_JSON = b"\"partial_json\"";
    RESPONSE = b"\"response\"";
}

/// Call `f` with the generated text of one content event of this format.
///
/// Keys are tried in order and the search stops at the first that has text, so the usual
/// event costs one `memmem` and one scan of its text.
pub(super) fn content_text(provider: Provider, event: &EventRef<'_>, mut f: impl FnMut(&[u8])) {
    let data = event.data_bytes();
    let f = &mut f;
    match provider {
        Provider::OpenAiChat => first_of(
            data,
            &[
                &*CONTENT,
                &*REASONING_CONTENT,
                &*REASONING,
                &*REFUSAL,
                &*ARGUMENTS,
            ],
            f,
        ),
        Provider::OpenAiCompletions | Provider::Gemini => first_of(data, &[&*TEXT], f),
        Provider::OpenAiResponses => first_of(data, &[&*DELTA], f),
        Provider::Anthropic => first_of(data, &[&*TEXT, &*THINKING, &*PARTIAL_JSON], f),
        Provider::Ollama => first_of(data, &[&*CONTENT, &*THINKING, &*RESPONSE], f),
        Provider::Unknown => f(data),
    }
}

fn first_of(data: &[u8], keys: &[&Finder<'static>], f: &mut impl FnMut(&[u8])) {
    for key in keys {
        if string_values(data, key, f) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(provider: Provider, event: &str, data: &str) -> Vec<String> {
        let mut out = Vec::new();
        content_text(
            provider,
            &EventRef::new(event.as_bytes(), data.as_bytes(), data.as_bytes()),
            |t| out.push(String::from_utf8_lossy(t).into_owned()),
        );
        out
    }

    #[test]
    fn text_per_format() {
        assert_eq!(
            text(
                Provider::OpenAiChat,
                "",
                r#"{"choices":[{"delta":{"content":"Hi"},"logprobs":{"content":[]}}]}"#
            ),
            ["Hi"]
        );
        assert_eq!(
            text(
                Provider::OpenAiChat,
                "",
                r#"{"choices":[{"delta":{"content":null,"reasoning_content":"hm"}}]}"#
            ),
            ["hm"]
        );
        assert_eq!(
            text(
                Provider::OpenAiChat,
                "",
                r#"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{\"a\":1}"}}]}}]}"#
            ),
            [r#"{\"a\":1}"#]
        );
        assert_eq!(
            text(
                Provider::Gemini,
                "",
                r#"{"candidates":[{"content":{"parts":[{"text":"a"},{"text":"bc"}]}}]}"#
            ),
            ["a", "bc"]
        );
        assert_eq!(
            text(
                Provider::Anthropic,
                "content_block_delta",
                r#"{"delta":{"type":"thinking_delta","thinking":"t"}}"#
            ),
            ["t"]
        );
        assert_eq!(
            text(
                Provider::OpenAiResponses,
                "response.output_text.delta",
                r#"{"type":"x","delta":"d"}"#
            ),
            ["d"]
        );
        assert_eq!(text(Provider::Unknown, "", "raw"), ["raw"]);
    }

    #[test]
    fn heuristic_rounds_up_and_knows_nothing_without_text() {
        let mut c = HeuristicCounter::new();
        assert_eq!(c.estimate(), None);
        c.add_text(b"hello");
        assert_eq!(c.estimate(), Some(2));
        let mut c = HeuristicCounter::new().bytes_per_token(0);
        c.add_text(b"abc");
        assert_eq!(c.estimate(), Some(3));
    }
}
