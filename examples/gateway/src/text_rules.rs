//! `--redact REGEX` and `--stop-on REGEX`: the gateway's built-in policy over the text of
//! content events (tower-sse's [`Policy`]), for every provider format the layer reads.
//!
//! - `--redact` replaces every match with `[REDACTED]`, in the provider's JSON (the rest of
//!   each event byte for byte). A match may span events: the stream holds back as many
//!   events as the longest match has bytes (each content event carries at least one), at
//!   most [`MAX_HOLDBACK_EVENTS`]; a pattern without a longest match (`sk-\w+`) gets that
//!   cap, and a match longer than the window is seen in pieces.
//! - `--stop-on` ends the stream at the first content event whose text matches, as the
//!   provider would end one it filtered (OpenAI `finish_reason: "content_filter"`,
//!   Anthropic `stop_reason: "refusal"`…): SDKs end without an exception. It looks at one
//!   event's text at a time.
//!
//! Your own policy plugs in the same way: implement [`Policy`] and give it to
//! [`SseLayer::policy`](tower_sse::SseLayer::policy) where the gateway builds its layer
//! (`Shared::sse_layer` in `lib.rs`).

use regex::Regex;
use tower_sse::policy::{Held, Holdback, Policy, PolicyContext, StopReason, Verdict};

/// The largest holdback window `--redact` sizes, in events.
pub const MAX_HOLDBACK_EVENTS: usize = 64;

/// What redacted text becomes.
pub const REDACTED: &str = "[REDACTED]";

/// The `--redact` and `--stop-on` rules, as one [`Policy`].
#[derive(Debug, Clone, Default)]
pub struct TextRules {
    /// Patterns whose matches are replaced by [`REDACTED`].
    pub redact: Vec<Regex>,
    /// Patterns that stop the stream.
    pub stop_on: Vec<Regex>,
}

impl TextRules {
    /// Whether there is any rule.
    pub fn is_empty(&self) -> bool {
        self.redact.is_empty() && self.stop_on.is_empty()
    }

    /// The holdback window `--redact` needs: as many events as its longest match has bytes
    /// (at most [`MAX_HOLDBACK_EVENTS`]); off without `--redact`.
    pub fn holdback(&self) -> Holdback {
        let events = self
            .redact
            .iter()
            .map(|re| longest_match(re.as_str()).unwrap_or(MAX_HOLDBACK_EVENTS))
            .max()
            .unwrap_or(0);
        Holdback::events(events.min(MAX_HOLDBACK_EVENTS))
    }

    fn matches(&self, text: &str) -> Vec<std::ops::Range<usize>> {
        let mut ranges: Vec<_> = self
            .redact
            .iter()
            .flat_map(|re| re.find_iter(text).map(|m| m.range()))
            .filter(|r| !r.is_empty())
            .collect();
        ranges.sort_by_key(|r| (r.start, std::cmp::Reverse(r.end)));
        // Overlapping matches of different patterns: one redaction over both.
        let mut merged: Vec<std::ops::Range<usize>> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if r.start < last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        merged
    }
}

/// The most bytes a match of `pattern` can have, when bounded.
fn longest_match(pattern: &str) -> Option<usize> {
    regex_syntax::parse(pattern)
        .ok()?
        .properties()
        .maximum_len()
}

impl Policy for TextRules {
    fn on_event(&mut self, cx: &PolicyContext<'_>) -> Verdict {
        let Some(text) = cx.text() else {
            return Verdict::Pass;
        };
        if let Some(i) = self.stop_on.iter().position(|re| re.is_match(&text)) {
            return Verdict::Stop(StopReason::new(format!("--stop-on rule {}", i + 1)));
        }
        // Held events are redacted together in `on_held`; alone, here.
        match cx.redact(REDACTED, |text| self.matches(text)) {
            Some(bytes) => Verdict::Replace(bytes),
            None => Verdict::Pass,
        }
    }

    fn on_held(&mut self, held: &mut Held<'_>) -> Option<StopReason> {
        if !self.redact.is_empty() {
            held.redact(REDACTED, |text| self.matches(text));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_the_longest_match() {
        let rules = |p: &[&str]| TextRules {
            redact: p.iter().map(|p| Regex::new(p).unwrap()).collect(),
            stop_on: Vec::new(),
        };
        assert!(!rules(&[]).holdback().is_on());
        assert_eq!(rules(&["sk-[0-9]{4}"]).holdback(), Holdback::events(7));
        assert_eq!(
            rules(&["a", r"sk-\w+"]).holdback(),
            Holdback::events(MAX_HOLDBACK_EVENTS)
        );
    }

    #[test]
    fn overlapping_matches_merge() {
        let rules = TextRules {
            redact: vec![Regex::new("abc").unwrap(), Regex::new("bcd").unwrap()],
            stop_on: Vec::new(),
        };
        assert_eq!(rules.matches("xabcdx"), vec![1..5]);
    }
}
