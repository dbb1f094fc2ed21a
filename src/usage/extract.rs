//! The [`UsageExtractor`] trait and the built-in extractors.

use crate::provider::Provider;
use crate::sse::EventRef;
use crate::usage::UsageState;

/// Reads token usage and the finish reason out of the events of one stream.
///
/// [`UsageObserver`](crate::UsageObserver) calls it for every event, with the provider
/// format the layer detected. Extractors must be cheap on the events that carry nothing for
/// them (look at bytes before parsing) and must not panic on any input.
///
/// Implemented for closures with the same signature, for `()` (reads nothing), and for
/// tuples: `(A, B)` asks `A` first and skips `B` for the events `A` claimed, so
/// `(mine, BuiltinExtractor)` adds a format in front of the built-in ones (see
/// [`UsageObserver::prepend_extractor`](crate::UsageObserver::prepend_extractor)).
///
/// ```
/// use tower_sse::sse::EventRef;
/// use tower_sse::provider::Provider;
/// use tower_sse::usage::UsageState;
/// use tower_sse::{Usage, UsageObserver};
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
/// Ollama's NDJSON. See the [module docs](crate::usage) for what each one reads.
///
/// Each format's reader lives in its file of `src/provider/`. Events whose name belongs to
/// one format (Anthropic's `message_*`, Responses' `response.*`) and `error` events are read
/// whatever the detected format; for an unknown format every reader is tried in turn, the
/// ones that name their event type in the data first (streams relayed without `event:`
/// lines).
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
        provider.usage(event, state)
    }
}
