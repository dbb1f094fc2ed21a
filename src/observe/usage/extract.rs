//! The [`UsageExtractor`] trait, the [`UsageState`] extractors write into, and the built-in
//! extractors.

use crate::provider::Provider;
use crate::sse::EventRef;

use super::{Usage, UsageSource, anthropic, gemini, ollama, openai, responses};

/// Reads token usage and the finish reason out of the events of one stream.
///
/// [`UsageObserver`](super::UsageObserver) calls it for every event, with the provider
/// format the layer detected. Extractors must be cheap on the events that carry nothing for
/// them (look at bytes before parsing) and must not panic on any input.
///
/// Implemented for closures with the same signature, for `()` (reads nothing), and for
/// tuples: `(A, B)` asks `A` first and skips `B` for the events `A` claimed, so
/// `(mine, BuiltinExtractor)` adds a format in front of the built-in ones (see
/// [`UsageObserver::prepend_extractor`](super::UsageObserver::prepend_extractor)).
///
/// ```
/// use tower_sse::sse::EventRef;
/// use tower_sse::{Provider, Usage, UsageObserver, UsageState};
///
/// // A server that puts `"tokens": N` in an event named `stats`.
/// let observer = UsageObserver::new().prepend_extractor(
///     |event: &EventRef<'_>, _provider: Provider, state: &mut UsageState| {
///         if event.event_bytes() != b"stats" {
///             return false;
///         }
///         #[derive(serde::Deserialize)]
///         struct Stats {
///             tokens: u64,
///         }
///         if let Ok(stats) = serde_json::from_slice::<Stats>(event.data_bytes()) {
///             let mut usage = Usage::default();
///             usage.output_tokens = Some(stats.tokens);
///             state.update(usage);
///         }
///         true
///     },
/// );
/// # let _ = observer;
/// ```
pub trait UsageExtractor {
    /// Read one event. Return `true` when the event was yours: extractors chained after
    /// this one then skip it.
    fn extract(&mut self, event: &EventRef<'_>, provider: Provider, state: &mut UsageState)
    -> bool;
}

impl UsageExtractor for () {
    #[inline]
    fn extract(&mut self, _: &EventRef<'_>, _: Provider, _: &mut UsageState) -> bool {
        false
    }
}

impl<F> UsageExtractor for F
where
    F: FnMut(&EventRef<'_>, Provider, &mut UsageState) -> bool,
{
    #[inline]
    fn extract(
        &mut self,
        event: &EventRef<'_>,
        provider: Provider,
        state: &mut UsageState,
    ) -> bool {
        self(event, provider, state)
    }
}

macro_rules! tuple_extractor {
    ($($name:ident),+) => {
        #[allow(non_snake_case)]
        impl<$($name: UsageExtractor),+> UsageExtractor for ($($name,)+) {
            #[inline]
            fn extract(
                &mut self,
                event: &EventRef<'_>,
                provider: Provider,
                state: &mut UsageState,
            ) -> bool {
                let ($($name,)+) = self;
                $(if $name.extract(event, provider, state) {
                    return true;
                })+
                false
            }
        }
    };
}

tuple_extractor!(A);
tuple_extractor!(A, B);
tuple_extractor!(A, B, C);
tuple_extractor!(A, B, C, D);

/// The built-in formats: OpenAI Chat Completions and legacy Completions (vLLM's continuous
/// usage stats included), OpenAI Responses, Anthropic Messages, Gemini `alt=sse` and
/// Ollama's NDJSON. See the [module docs](super) for what each one reads.
///
/// It dispatches on the event type first (Anthropic's `message_*` events, Responses'
/// `response.*` events and `error` events are recognised whatever the detected format),
/// then on the provider; for an unknown provider it tries every format in turn, the ones
/// that name their event type in the data first (streams relayed without `event:` lines).
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct BuiltinExtractor;

impl BuiltinExtractor {
    /// The built-in extractors.
    pub fn new() -> Self {
        Self
    }
}

impl UsageExtractor for BuiltinExtractor {
    #[inline]
    fn extract(
        &mut self,
        event: &EventRef<'_>,
        provider: Provider,
        state: &mut UsageState,
    ) -> bool {
        let kind = event.event_bytes();
        if !kind.is_empty() {
            match kind {
                b"message_start" | b"message_delta" => return anthropic::extract(event, state),
                b"error" => return anthropic::error(event, state),
                _ if kind.starts_with(b"response.") => return responses::extract(event, state),
                // Other named events (Anthropic content blocks and pings, custom events)
                // carry no usage, except in streams whose format is data-only.
                _ if !matches!(
                    provider,
                    Provider::OpenAiChat
                        | Provider::OpenAiCompletions
                        | Provider::Gemini
                        | Provider::Ollama
                        | Provider::Unknown
                ) =>
                {
                    return false;
                }
                _ => {}
            }
        }
        match provider {
            Provider::OpenAiChat | Provider::OpenAiCompletions => openai::extract(event, state),
            Provider::Gemini => gemini::extract(event, state),
            Provider::Ollama => ollama::extract(event, state),
            Provider::Anthropic => anthropic::extract(event, state),
            Provider::OpenAiResponses => responses::extract(event, state),
            // Formats whose events say their type first (they check it after parsing),
            // then the data-only ones.
            Provider::Unknown => {
                responses::extract(event, state)
                    || anthropic::extract(event, state)
                    || openai::extract(event, state)
                    || gemini::extract(event, state)
                    || ollama::extract(event, state)
            }
        }
    }
}

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
    pub(super) usage_only: bool,
    pub(super) usage_changed: bool,
    pub(super) finish_changed: bool,
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
    pub(super) fn raw_usage(&self) -> Usage {
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

    pub(super) fn take_finish_reason(&mut self) -> Option<String> {
        self.finish_reason.take()
    }

    /// An output count announced before the output exists (Anthropic's `message_start`
    /// says `output_tokens: 1`). It is used only if no real output count ever comes and no
    /// estimate can be made.
    pub fn set_provisional_output_tokens(&mut self, tokens: u64) {
        self.provisional_output = Some(tokens);
    }

    /// The provisional output count, if any.
    pub fn provisional_output_tokens(&self) -> Option<u64> {
        self.provisional_output
    }

    /// Input tokens written to the provider's prompt cache (Anthropic's
    /// `cache_creation_input_tokens`), reported as
    /// [`CacheCreationInputTokens`](super::CacheCreationInputTokens).
    pub fn set_cache_creation_input_tokens(&mut self, tokens: u64) {
        self.cache_creation = Some(tokens);
    }

    /// Input tokens written to the prompt cache, if reported.
    pub fn cache_creation_input_tokens(&self) -> Option<u64> {
        self.cache_creation
    }

    /// Say that the current event carries nothing but usage (OpenAI's usage-only chunk):
    /// the observer hides it from clients that did not ask for usage (see
    /// [`UsageInjected`](crate::UsageInjected)). Applies to the current event only.
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
