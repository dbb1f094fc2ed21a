//! Estimated output tokens, for streams cut before the provider reported any.
//!
//! While the output count is unknown, the observer hands the text of every content event
//! to a [`TokenCounter`]: the string values that hold generated text, as sent (JSON escapes
//! not decoded), found by byte search, never copied. When a stream ends without reaching
//! completion and without an output count, the counter's estimate becomes the output count,
//! flagged [`UsageSource::Estimated`](crate::UsageSource::Estimated). Input tokens are never
//! estimated: they stay unknown unless reported.

/// Estimates tokens from the text of content events.
///
/// It runs inline, once per content event: keep it to arithmetic (no tokenizer that
/// blocks, no allocation). Implemented for `()`, which estimates nothing.
///
/// A counter of your own, for a tokenizer that makes about one token per word:
///
/// ```
/// use tower_sse::UsageObserver;
/// use tower_sse::usage::TokenCounter;
///
/// #[derive(Clone, Default)]
/// struct Words(u64);
///
/// impl TokenCounter for Words {
///     fn add_text(&mut self, text: &[u8]) {
///         self.0 += text.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty()).count() as u64;
///     }
///     fn estimate(&self) -> Option<u64> {
///         (self.0 > 0).then_some(self.0)
///     }
/// }
///
/// let mut words = Words::default();
/// words.add_text(b"Hello there, ");
/// words.add_text(b"how are you?");
/// assert_eq!(words.estimate(), Some(5));
/// let observer = UsageObserver::new().token_counter(Words::default());
/// # let _ = observer;
/// ```
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
///
/// ```
/// use tower_sse::usage::{HeuristicCounter, TokenCounter};
///
/// let mut counter = HeuristicCounter::new();
/// assert_eq!(counter.estimate(), None);
/// counter.add_text(b"Hello, world"); // 12 bytes
/// assert_eq!(counter.estimate(), Some(3));
///
/// // Denser scripts: fewer bytes per token.
/// let mut counter = HeuristicCounter::new().bytes_per_token(3);
/// counter.add_text("こんにちは".as_bytes()); // 15 bytes
/// assert_eq!(counter.estimate(), Some(5));
/// ```
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

#[cfg(test)]
mod tests {
    use super::*;

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
