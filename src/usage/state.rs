//! The [`UsageState`] that format readers write into while a stream goes by (through
//! [`UsageSink`]), and [`CacheCreationInputTokens`].

use crate::provider::{Counts, UsageSink};
use crate::report::{Usage, UsageSource};
use crate::usage::UsageStyle;

/// Input tokens written to the provider's prompt cache during the stream (Anthropic's
/// `cache_creation_input_tokens`), put in
/// [`StreamReport::extensions`](crate::StreamReport::extensions) by [`UsageObserver`](crate::UsageObserver) when
/// the provider reported them. They are billed apart from, and not included in,
/// [`Usage::input_tokens`]. The same count is in
/// [`Usage::cache_write_tokens`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheCreationInputTokens(pub u64);

/// What the extractors found so far in one stream. The observer turns it into
/// [`StreamReport::usage`](crate::StreamReport::usage) and
/// [`finish_reason`](crate::StreamReport::finish_reason).
///
/// Counts follow one rule: a count a provider reports replaces the one known so far, and a
/// count it does not report (absent, `null`, or not a valid count) keeps it. Running totals
/// are thereby replaced, never added up, and a provider that restates some counts later
/// (Anthropic's `message_delta`) neither doubles them nor loses them.
#[derive(Debug, Clone, Default)]
pub struct UsageState {
    usage: Usage,
    provisional_output: Option<u64>,
    cache_creation: Option<u64>,
    finish_reason: Option<String>,
    pub(crate) usage_only: bool,
    pub(crate) usage_changed: bool,
    pub(crate) finish_changed: bool,
}

impl UsageState {
    /// Record a usage report: each count it knows replaces the one known so far; the counts
    /// it does not know are kept. Its [`source`](Usage::source) and
    /// [`style`](Usage::style) are ignored (see [`set_style`](Self::set_style)).
    pub fn update(&mut self, report: Usage) {
        let before = self.usage;
        let u = &mut self.usage;
        let fields = [
            (&mut u.input_tokens, report.input_tokens),
            (&mut u.output_tokens, report.output_tokens),
            (&mut u.total_tokens, report.total_tokens),
            (&mut u.cached_input_tokens, report.cached_input_tokens),
            (&mut u.reasoning_tokens, report.reasoning_tokens),
            (&mut u.cache_write_tokens, report.cache_write_tokens),
        ];
        for (known, reported) in fields {
            if reported.is_some() {
                *known = reported;
            }
        }
        u.source = UsageSource::Reported;
        self.usage_changed |= before != self.usage;
    }

    /// The usage reported so far, when any count is known.
    pub fn usage(&self) -> Option<Usage> {
        self.usage.has_counts().then_some(self.usage)
    }

    /// The usage reported so far, counts unknown included.
    pub(crate) fn raw_usage(&self) -> Usage {
        self.usage
    }

    /// Set the finish or stop reason (the latest one wins; empty reasons are ignored).
    pub fn set_finish_reason(&mut self, reason: &str) {
        if reason.is_empty() || self.finish_reason.as_deref() == Some(reason) {
            return;
        }
        match &mut self.finish_reason {
            Some(known) => {
                known.clear();
                known.push_str(reason);
            }
            None => self.finish_reason = Some(reason.to_owned()),
        }
        self.finish_changed = true;
    }

    /// The finish or stop reason, when one was seen.
    pub fn finish_reason(&self) -> Option<&str> {
        self.finish_reason.as_deref()
    }

    pub(crate) fn take_finish_reason(&mut self) -> Option<String> {
        self.finish_reason.take()
    }

    /// An output count announced before the output exists (Anthropic's `message_start`
    /// says `output_tokens: 1`). It is a placeholder, never reported as the output: it says
    /// that a real count is to come. A stream that ends without one, even cleanly, is
    /// treated as cut: its output is estimated from the content delivered and flagged
    /// [`UsageSource::Estimated`], or stays unknown when there is nothing to estimate from.
    pub fn set_provisional_output_tokens(&mut self, tokens: u64) {
        self.provisional_output = Some(tokens);
    }

    /// The provisional output count, if any.
    pub fn provisional_output_tokens(&self) -> Option<u64> {
        self.provisional_output
    }

    /// Input tokens written to the provider's prompt cache (Anthropic's
    /// `cache_creation_input_tokens`), reported as
    /// [`CacheCreationInputTokens`].
    pub fn set_cache_creation_input_tokens(&mut self, tokens: u64) {
        self.cache_creation = Some(tokens);
        let before = self.usage.cache_write_tokens;
        self.usage.cache_write_tokens = Some(tokens);
        self.usage_changed |= before != Some(tokens);
    }

    /// Say how the provider counts ([`Usage::style`]): the built-in readers set it for
    /// their format; the default is [`UsageStyle::OpenAi`].
    pub fn set_style(&mut self, style: UsageStyle) {
        self.usage_changed |= self.usage.style != style;
        self.usage.style = style;
    }

    /// Input tokens written to the prompt cache, if reported.
    pub fn cache_creation_input_tokens(&self) -> Option<u64> {
        self.cache_creation
    }

    /// Say that the current event carries nothing but usage (OpenAI's usage-only chunk):
    /// the observer hides it from clients that did not ask for usage (see
    /// [`UsageInjected`](crate::request::UsageInjected)). Applies to the current event only.
    pub fn mark_usage_only(&mut self) {
        self.usage_only = true;
    }

    /// Whether the current event was marked usage-only.
    pub fn is_usage_only(&self) -> bool {
        self.usage_only
    }
}

/// Build a reported [`Usage`] from the five counts.
pub(crate) fn counts(
    input: Option<u64>,
    output: Option<u64>,
    total: Option<u64>,
    cached: Option<u64>,
    reasoning: Option<u64>,
) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        total_tokens: total,
        cached_input_tokens: cached,
        reasoning_tokens: reasoning,
        source: UsageSource::Reported,
        cache_write_tokens: None,
        style: UsageStyle::OpenAi,
    }
}

impl From<Counts> for Usage {
    fn from(c: Counts) -> Self {
        let mut usage = counts(c.input, c.output, c.total, c.cached, c.reasoning);
        usage.cache_write_tokens = c.cache_write;
        usage
    }
}

/// The format readers of [`provider`](crate::provider) write into a [`UsageState`].
impl UsageSink for UsageState {
    #[inline]
    fn update(&mut self, counts: Counts) {
        UsageState::update(self, counts.into());
    }

    #[inline]
    fn set_finish_reason(&mut self, reason: &str) {
        UsageState::set_finish_reason(self, reason);
    }

    #[inline]
    fn set_provisional_output_tokens(&mut self, tokens: u64) {
        UsageState::set_provisional_output_tokens(self, tokens);
    }

    #[inline]
    fn set_cache_creation_input_tokens(&mut self, tokens: u64) {
        UsageState::set_cache_creation_input_tokens(self, tokens);
    }

    #[inline]
    fn mark_usage_only(&mut self) {
        UsageState::mark_usage_only(self);
    }

    #[inline]
    fn set_style(&mut self, style: UsageStyle) {
        UsageState::set_style(self, style);
    }
}
