//! The deterministic token text: words from a fixed list, picked by a seeded hash.
//!
//! The list holds multi-byte UTF-8 and characters JSON must escape, so that byte-level
//! chunking splits code points and escapes the way real model output does.

use std::sync::LazyLock;

/// The words tokens are drawn from.
const WORDS: &[&str] = &[
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "and",
    "streams",
    "tokens",
    "to",
    "every",
    "client",
    "while",
    "the",
    "model",
    "thinks",
    "about",
    "latency",
    "bytes",
    "frames",
    "events",
    "usage",
    "in",
    "time",
    "of",
    "café",
    "naïve",
    "über",
    "日本語",
    "🦀",
    "Ωmega",
    "\"quoted\"",
    "back\\slash",
    "tab\tstop",
    "new\nline",
    "<tag>",
    "50%",
    "done.",
];

/// Every word as a JSON string literal, without and with a leading space.
static JSON: LazyLock<Vec<[String; 2]>> = LazyLock::new(|| {
    WORDS
        .iter()
        .map(|word| [json_string(word), json_string(&format!(" {word}"))])
        .collect()
});

/// A JSON string literal (quotes included) for `text`.
pub(crate) fn json_string(text: &str) -> String {
    serde_json::to_string(text).expect("a str always serializes")
}

/// SplitMix64: a tiny, good-enough mixer; the same seed always gives the same sequence.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0).
    pub(crate) fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }
}

/// The token texts of one response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Words {
    seed: u64,
}

impl Words {
    pub(crate) fn new(seed: u64) -> Self {
        Self { seed }
    }

    fn index(self, token: u32) -> usize {
        SplitMix::new(self.seed ^ (u64::from(token) << 32)).below(WORDS.len())
    }

    /// Token `token` as a JSON string literal; every token but the first starts with a space.
    pub(crate) fn json(self, token: u32) -> &'static str {
        &JSON[self.index(token)][usize::from(token > 0)]
    }

    /// The text of the first `tokens` tokens.
    pub(crate) fn text(self, tokens: u32) -> String {
        let mut text = String::new();
        for token in 0..tokens {
            if token > 0 {
                text.push(' ');
            }
            text.push_str(WORDS[self.index(token)]);
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_tokens_join_to_the_text() {
        let words = Words::new(7);
        let joined: String = (0..40)
            .map(|t| serde_json::from_str::<String>(words.json(t)).unwrap())
            .collect();
        assert_eq!(joined, words.text(40));
    }

    #[test]
    fn seeds_change_the_text() {
        assert_ne!(Words::new(1).text(16), Words::new(2).text(16));
        assert_eq!(Words::new(3).text(16), Words::new(3).text(16));
    }
}
