//! Token usage as providers report it: [`Usage`], and the [`UsageState`] that format readers
//! write into while a stream goes by.
//!
//! The value types live here, beside the formats that produce them; the report and the usage
//! observer only read them.

use serde::Deserialize;

use crate::sse::EventRef;

use super::json::{Lenient, Text, parse};

/// Where the numbers of a [`Usage`] come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum UsageSource {
    /// The provider reported them in the stream (possibly a running total, when the stream
    /// was cut before its final usage).
    #[default]
    Reported,
    /// The output count was estimated from the content delivered, because the provider
    /// reported none before the stream ended (a client disconnect, a deadline, an upstream
    /// error, an Anthropic stream that ended before `message_delta`).
    ///
    /// Only [`output_tokens`](Usage::output_tokens) is ever estimated: the other counts,
    /// when known, are the provider's own (Anthropic's input and cache counts from
    /// `message_start`, a running total's input), so a usage can mix reported input with
    /// estimated output.
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

    /// Whether any count at all is known (cache or reasoning counts included).
    pub(crate) fn has_counts(&self) -> bool {
        self.is_known() || self.cached_input_tokens.is_some() || self.reasoning_tokens.is_some()
    }
}

/// Input tokens written to the provider's prompt cache during the stream (Anthropic's
/// `cache_creation_input_tokens`), put in
/// [`StreamReport::extensions`](crate::StreamReport::extensions) by [`UsageObserver`](crate::UsageObserver) when
/// the provider reported them. They are billed apart from, and not included in,
/// [`Usage::input_tokens`].
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
    /// it does not know are kept. Its [`source`](Usage::source) is ignored.
    pub fn update(&mut self, report: Usage) {
        let before = self.usage;
        let u = &mut self.usage;
        let fields = [
            (&mut u.input_tokens, report.input_tokens),
            (&mut u.output_tokens, report.output_tokens),
            (&mut u.total_tokens, report.total_tokens),
            (&mut u.cached_input_tokens, report.cached_input_tokens),
            (&mut u.reasoning_tokens, report.reasoning_tokens),
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
pub(super) fn counts(
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
    }
}

#[derive(Deserialize)]
struct ErrorEvent<'a> {
    #[serde(borrow, default)]
    error: Lenient<ErrorBody<'a>>,
    #[serde(borrow, default)]
    code: Text<'a>,
}

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Text<'a>,
    #[serde(borrow, default)]
    code: Text<'a>,
}

/// An `error` event, of Anthropic's shape (`{"type":"error","error":{"type":…}}`) or the
/// Responses API's (`{"type":"error","code":…}`): its error type (or code, or `"error"`)
/// becomes the finish reason; the usage seen so far stays.
pub(crate) fn error_event(event: &EventRef<'_>, state: &mut UsageState) -> bool {
    let parsed = parse::<ErrorEvent<'_>>(event.data_bytes());
    let reason = parsed
        .as_ref()
        .and_then(|e| {
            let body = e.error.0.as_ref();
            body.and_then(|b| b.kind.as_str().or(b.code.as_str()))
                .or(e.code.as_str())
        })
        .unwrap_or("error");
    state.set_finish_reason(reason);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_events() {
        let mut s = UsageState::default();
        let ev = |d: &'static str| EventRef::new(b"error", d.as_bytes(), d.as_bytes());
        error_event(
            &ev(r#"{"type":"error","error":{"type":"overloaded_error","message":"x"}}"#),
            &mut s,
        );
        assert_eq!(s.finish_reason(), Some("overloaded_error"));
        error_event(
            &ev(r#"{"type":"error","code":"server_error","message":"x"}"#),
            &mut s,
        );
        assert_eq!(s.finish_reason(), Some("server_error"));
        error_event(&ev("not json"), &mut s);
        assert_eq!(s.finish_reason(), Some("error"));
    }
}
