//! [`UsageStyle`] (how each provider counts) and [`NormalizedUsage`] (one meaning for all).

use crate::provider::Provider;
use crate::report::{Usage, UsageSource};

/// How a provider counts the tokens of its usage report, in [`Usage::style`]: whether the
/// input count includes the cache counts, and whether the output count includes the
/// reasoning tokens. [`UsageObserver`](crate::UsageObserver) sets it from the format whose
/// reader read the usage; an extractor of your own sets it with
/// [`UsageState::set_style`](crate::usage::UsageState::set_style).
///
/// | style | providers | input includes cache reads and writes | output includes reasoning |
/// |---|---|---|---|
/// | [`OpenAi`](Self::OpenAi) | OpenAI Chat, Completions and Responses; vLLM, SGLang, DeepSeek, OpenRouter; Ollama | yes | yes |
/// | [`Anthropic`](Self::Anthropic) | Anthropic Messages | no | yes (thinking is output, not broken out) |
/// | [`Gemini`](Self::Gemini) | Gemini | yes (`cachedContentTokenCount` is in `promptTokenCount`) | no (`thoughtsTokenCount` is apart from `candidatesTokenCount`) |
///
/// ```
/// use tower_sse::provider::Provider;
/// use tower_sse::usage::UsageStyle;
///
/// assert_eq!(UsageStyle::of(Provider::OpenAiChat), UsageStyle::OpenAi);
/// assert!(!UsageStyle::of(Provider::Anthropic).input_includes_cache());
/// assert!(!UsageStyle::of(Provider::Gemini).output_includes_reasoning());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum UsageStyle {
    /// Input includes cache reads and writes; output includes reasoning. The default: the
    /// OpenAI format is the one most servers speak.
    #[default]
    OpenAi,
    /// Input excludes cache reads and writes (Anthropic's `input_tokens` is the uncached
    /// input); output includes thinking.
    Anthropic,
    /// Input includes cached content; output excludes the thinking tokens.
    Gemini,
}

impl UsageStyle {
    /// The style of a provider format ([`OpenAi`](Self::OpenAi) for an unknown one).
    pub fn of(provider: Provider) -> Self {
        match provider {
            Provider::Anthropic => Self::Anthropic,
            Provider::Gemini => Self::Gemini,
            _ => Self::OpenAi,
        }
    }

    /// Whether the input count includes the cache reads and writes.
    pub fn input_includes_cache(self) -> bool {
        !matches!(self, Self::Anthropic)
    }

    /// Whether the output count includes the reasoning tokens.
    pub fn output_includes_reasoning(self) -> bool {
        !matches!(self, Self::Gemini)
    }
}

/// A [`Usage`] split into five parts that mean the same for every provider, and do not
/// overlap: every token of the request and its answer is in exactly one of them. This is
/// the view to price (see [`PriceTable`](crate::cost::PriceTable)).
///
/// | part | meaning | OpenAI style | Anthropic | Gemini |
/// |---|---|---|---|---|
/// | [`uncached_input`](Self::uncached_input) | input tokens neither read from nor written to the cache | `prompt_tokens − cached − cache writes` | `input_tokens` | `promptTokenCount − cachedContentTokenCount` |
/// | [`cache_read`](Self::cache_read) | input tokens read from the prompt cache | `cached_tokens` (DeepSeek: `prompt_cache_hit_tokens`) | `cache_read_input_tokens` | `cachedContentTokenCount` |
/// | [`cache_write`](Self::cache_write) | input tokens written to the prompt cache | OpenRouter's `cache_write_tokens` | `cache_creation_input_tokens` | never reported |
/// | [`output`](Self::output) | generated tokens not counted as reasoning | `completion_tokens − reasoning_tokens` | `output_tokens` (thinking included: Anthropic does not break it out) | `candidatesTokenCount` |
/// | [`reasoning`](Self::reasoning) | generated tokens the provider reported as reasoning | `reasoning_tokens` | never reported | `thoughtsTokenCount` |
///
/// Rules:
/// - **Unknown stays unknown.** A part is `None` when the count it comes from is: no input
///   count, no `uncached_input`. A cache or reasoning count that is unknown is taken as none
///   when it is subtracted (the whole input is then uncached).
/// - **Never negative.** A subtraction that would go below 0 (a cache count above the
///   input, a malformed report) gives 0.
/// - The [`source`](Self::source) is the usage's: an estimated output is estimated here too.
///
/// ```
/// use tower_sse::Usage;
/// use tower_sse::usage::UsageStyle;
///
/// // OpenAI: 1000 prompt tokens of which 800 cached, 300 completion tokens of which 200
/// // were reasoning.
/// let mut openai = Usage::default();
/// openai.input_tokens = Some(1000);
/// openai.cached_input_tokens = Some(800);
/// openai.output_tokens = Some(300);
/// openai.reasoning_tokens = Some(200);
/// let n = openai.normalized();
/// assert_eq!((n.uncached_input, n.cache_read, n.cache_write), (Some(200), Some(800), None));
/// assert_eq!((n.output, n.reasoning), (Some(100), Some(200)));
/// assert_eq!(n.total(), Some(1300));
///
/// // Anthropic: `input_tokens` is already the uncached input.
/// let mut anthropic = Usage::default();
/// anthropic.style = UsageStyle::Anthropic;
/// anthropic.input_tokens = Some(200);
/// anthropic.cached_input_tokens = Some(800);
/// anthropic.cache_write_tokens = Some(50);
/// anthropic.output_tokens = Some(300);
/// let n = anthropic.normalized();
/// assert_eq!((n.uncached_input, n.cache_read, n.cache_write), (Some(200), Some(800), Some(50)));
/// assert_eq!(n.input(), Some(1050));
/// assert_eq!((n.output, n.reasoning), (Some(300), None));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct NormalizedUsage {
    /// Input tokens neither read from nor written to the prompt cache.
    pub uncached_input: Option<u64>,
    /// Input tokens read from the prompt cache.
    pub cache_read: Option<u64>,
    /// Input tokens written to the prompt cache.
    pub cache_write: Option<u64>,
    /// Generated tokens not counted as reasoning.
    pub output: Option<u64>,
    /// Generated tokens the provider reported as reasoning (thinking).
    pub reasoning: Option<u64>,
    /// Whether the counts were reported or (the output) estimated.
    pub source: UsageSource,
}

impl NormalizedUsage {
    /// All input tokens: uncached, cache reads and cache writes; `None` when none of them
    /// is known.
    pub fn input(&self) -> Option<u64> {
        sum([self.uncached_input, self.cache_read, self.cache_write])
    }

    /// All generated tokens: output and reasoning; `None` when neither is known.
    pub fn generated(&self) -> Option<u64> {
        sum([self.output, self.reasoning])
    }

    /// Every token of the request and its answer; `None` when no part is known.
    pub fn total(&self) -> Option<u64> {
        sum([self.input(), self.generated()])
    }
}

/// The sum of the known counts (saturating), `None` when none is known.
fn sum<const N: usize>(parts: [Option<u64>; N]) -> Option<u64> {
    parts
        .into_iter()
        .flatten()
        .reduce(|a, b| a.saturating_add(b))
}

impl Usage {
    /// The counts split into the five parts of [`NormalizedUsage`], which mean the same for
    /// every provider (this usage's [`style`](Usage::style) says how its counts overlap).
    pub fn normalized(&self) -> NormalizedUsage {
        let cache_read = self.cached_input_tokens;
        let cache_write = self.cache_write_tokens;
        let reasoning = self.reasoning_tokens;
        let uncached_input = self.input_tokens.map(|input| {
            if self.style.input_includes_cache() {
                input
                    .saturating_sub(cache_read.unwrap_or(0))
                    .saturating_sub(cache_write.unwrap_or(0))
            } else {
                input
            }
        });
        let output = self.output_tokens.map(|output| {
            if self.style.output_includes_reasoning() {
                output.saturating_sub(reasoning.unwrap_or(0))
            } else {
                output
            }
        });
        NormalizedUsage {
            uncached_input,
            cache_read,
            cache_write,
            output,
            reasoning,
            source: self.source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(style: UsageStyle, counts: [Option<u64>; 5], write: Option<u64>) -> Usage {
        let mut u = Usage {
            style,
            ..Usage::default()
        };
        [
            u.input_tokens,
            u.output_tokens,
            u.cached_input_tokens,
            u.reasoning_tokens,
            _,
        ] = counts;
        u.cache_write_tokens = write;
        u
    }

    #[test]
    fn openai_subtracts_cache_and_reasoning() {
        let u = usage(
            UsageStyle::OpenAi,
            [Some(100), Some(40), Some(30), Some(25), None],
            Some(20),
        );
        let n = u.normalized();
        assert_eq!(n.uncached_input, Some(50));
        assert_eq!(n.output, Some(15));
        assert_eq!(n.total(), Some(140));
    }

    #[test]
    fn gemini_keeps_output_apart_from_thoughts() {
        let u = usage(
            UsageStyle::Gemini,
            [Some(14), Some(9), Some(4), Some(76), None],
            None,
        );
        let n = u.normalized();
        assert_eq!((n.uncached_input, n.cache_read), (Some(10), Some(4)));
        assert_eq!((n.output, n.reasoning), (Some(9), Some(76)));
        assert_eq!(n.total(), Some(99));
    }

    #[test]
    fn malformed_counts_never_go_negative() {
        let u = usage(
            UsageStyle::OpenAi,
            [Some(5), Some(1), Some(9), Some(3), None],
            Some(u64::MAX),
        );
        let n = u.normalized();
        assert_eq!((n.uncached_input, n.output), (Some(0), Some(0)));
        assert_eq!(n.input(), Some(u64::MAX));
    }

    #[test]
    fn unknown_stays_unknown() {
        let n = Usage::default().normalized();
        assert_eq!(n, NormalizedUsage::default());
        assert_eq!(n.total(), None);
    }
}
