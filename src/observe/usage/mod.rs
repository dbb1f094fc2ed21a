//! Token usage: what the provider reported, or an estimate when the stream was cut first.

/// Where the numbers of a [`Usage`] come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum UsageSource {
    /// The provider reported them in the stream (possibly a running total, when the stream
    /// was cut before its final usage).
    #[default]
    Reported,
    /// Some numbers were estimated from the content seen, because the provider reported
    /// none before the stream ended (a client disconnect or a deadline).
    Estimated,
}

/// Token counts of one stream. Unknown is `None`, never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct Usage {
    /// Prompt tokens, as the provider counts them (OpenAI includes cached tokens in it;
    /// Anthropic excludes cache reads).
    pub input_tokens: Option<u64>,
    /// Completion tokens (reasoning tokens included where the provider includes them).
    pub output_tokens: Option<u64>,
    /// The provider's total, when it sends one.
    pub total_tokens: Option<u64>,
    /// Input tokens served from the provider's prompt cache.
    pub cached_input_tokens: Option<u64>,
    /// Output tokens spent on reasoning.
    pub reasoning_tokens: Option<u64>,
    /// Whether the numbers were reported or estimated.
    pub source: UsageSource,
}

impl Usage {
    /// Whether any count is known.
    pub fn is_known(&self) -> bool {
        self.input_tokens.is_some() || self.output_tokens.is_some() || self.total_tokens.is_some()
    }
}
