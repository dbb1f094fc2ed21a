//! Token usage: what the provider reported, or an estimate when the stream was cut first.
//!
//! [`UsageObserver`] reads the usage and the finish reason that LLM providers put in their
//! streams into [`StreamReport::usage`](crate::StreamReport::usage) and
//! [`StreamReport::finish_reason`](crate::StreamReport::finish_reason). The format comes
//! from the layer's detection ([`EventContext::provider`](crate::EventContext::provider)):
//!
//! | format | usage | finish reason |
//! |---|---|---|
//! | OpenAI Chat Completions, legacy Completions | the `usage` object: the usage-only chunk (`choices: []`), or merged into the finish chunk, or on every chunk (vLLM `continuous_usage_stats`) | `choices[].finish_reason` |
//! | OpenAI Responses | `response.usage` of `response.completed` / `.incomplete` / `.failed` | `incomplete_details.reason`, else `status` |
//! | Anthropic Messages | `message_start` (input, cache), then `message_delta` (cumulative output, restated input and cache) | `delta.stop_reason`; an `error` event's type |
//! | Gemini (`alt=sse`) | `usageMetadata`, a running total on every chunk | `candidates[].finishReason` |
//! | Ollama (NDJSON) | `prompt_eval_count`, `eval_count` of the `"done":true` line | `done_reason` |
//!
//! # Rules
//!
//! - **Replace, never add.** Every count a provider reports replaces the one known so far;
//!   a count it leaves out (or sends as `null`, negative, fractional, or too large) keeps
//!   the known one. Running totals (vLLM, Gemini, Anthropic's `message_delta`) thereby end
//!   at their last value, and restated counts are neither doubled nor lost.
//! - **Unknown is `None`, never 0.** A count the provider did not report stays `None`;
//!   the report has no usage at all when nothing was reported or estimated.
//! - **Counts keep the provider's meaning.** OpenAI's input includes cached tokens and its
//!   output includes reasoning; Anthropic's input excludes cache reads and writes (see
//!   [`CacheCreationInputTokens`]); Gemini's output excludes thinking tokens, its total
//!   includes them.
//! - **Anthropic's `message_start` output count is a placeholder**, not a count: it is used
//!   only when no `message_delta` count comes and no estimate can be made.
//!
//! # Cut streams
//!
//! When a stream ends without completing (an [`Outcome`] other than `Completed`: the
//! client went away, a deadline, an upstream error…), the report carries
//! the last usage seen (a running total, or Anthropic's input tokens). If the output count
//! is still unknown, it is estimated from the text of the content events seen, by a
//! [`TokenCounter`] (by default [`HeuristicCounter`]: bytes / 4, rounded up), and the usage
//! is marked [`UsageSource::Estimated`]. Only the output is estimated; input tokens stay
//! unknown unless reported. A completed stream is never estimated: its usage is what the
//! provider said. To get the provider's final usage after a client disconnect, see
//! [`SseLayer::drain_on_disconnect`](crate::SseLayer) (feature `drain`).
//!
//! # Usage the client did not ask for
//!
//! When a request carries [`UsageInjected`] (a gateway added
//! `stream_options.include_usage` on its own), the usage-only chunk of an OpenAI stream is
//! kept from the client, and its usage still reaches the report. Usage on chunks that also
//! carry choices (vLLM's continuous stats, servers that merge it into the finish chunk) is
//! forwarded as is: removing it would mean rewriting events.
//!
//! # Cost
//!
//! Events are looked at as bytes first (`memmem` for a quoted key, then a look at its
//! value, or the event name), and parsed only when they can carry usage or a finish
//! reason, into small borrowed structs (never `serde_json::Value`). A plain content event
//! costs the pre-filter and, while the output count is unknown, one more `memmem` to find
//! its text for the estimate; it allocates nothing. What is parsed:
//!
//! - OpenAI: the `usage` object alone, deserialized from its `{` in place (vLLM's usage on
//!   every chunk costs a parse of that object only); the whole chunk only when a
//!   `finish_reason` has a string value.
//! - Responses and Anthropic: the few events that carry usage, chosen by event name.
//! - Gemini: the top level of chunks that name `usageMetadata` or `finishReason` (most of
//!   them: Gemini sends usage on every chunk).
//! - Ollama: the `"done":true` line.
//!
//! # When the report is written
//!
//! [`StreamReport::usage`](crate::StreamReport::usage) and `finish_reason` are updated as
//! soon as an event changes them (so later observers see them in `on_event`), and set for
//! good in `on_end`. Put the usage observer before the timing observer in a tuple, so that
//! time per output token can use the output count.
//!
//! # Other formats
//!
//! Implement [`UsageExtractor`] (a closure will do) and add it in front of the built-in
//! ones with [`UsageObserver::prepend_extractor`], or replace them with
//! [`UsageObserver::extractor`].

mod anthropic;
mod estimate;
mod extract;
mod gemini;
mod json;
mod ollama;
mod openai;
mod responses;

use std::fmt;

use crate::include_usage::UsageInjected;
use crate::observe::{EventContext, Observer};
use crate::report::{Outcome, StreamReport};
use crate::sse::EventRef;

pub use self::estimate::{HeuristicCounter, TokenCounter};
pub use self::extract::{BuiltinExtractor, UsageExtractor, UsageState};

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

    /// Whether any count at all is known (cache or reasoning counts included).
    fn has_counts(&self) -> bool {
        self.is_known() || self.cached_input_tokens.is_some() || self.reasoning_tokens.is_some()
    }
}

/// Input tokens written to the provider's prompt cache during the stream (Anthropic's
/// `cache_creation_input_tokens`), put in
/// [`StreamReport::extensions`](crate::StreamReport::extensions) by [`UsageObserver`] when
/// the provider reported them. They are billed apart from, and not included in,
/// [`Usage::input_tokens`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheCreationInputTokens(pub u64);

/// Reads token usage and the finish reason of each stream into its
/// [`StreamReport`]. See the [module docs](self) for the formats and
/// the rules.
///
/// Generic over how usage is read (`X`, the [built-in formats](BuiltinExtractor) by
/// default) and how output is estimated for cut streams (`C`, [`HeuristicCounter`] by
/// default). Cheap to clone: the layer clones it for every request.
///
/// ```
/// use std::sync::{Arc, Mutex};
///
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Full};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_sse::{SseLayer, StreamReport, Usage, UsageObserver};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let seen: Arc<Mutex<Option<Usage>>> = Arc::default();
/// let sink = seen.clone();
/// let layer = SseLayer::new()
///     .observer(UsageObserver::default())
///     .on_end(move |report: StreamReport| *sink.lock().unwrap() = report.usage);
///
/// // An upstream answering with an OpenAI stream that ends with its usage chunk.
/// let upstream = service_fn(|_: Request<()>| async {
///     let stream = concat!(
///         "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
///         "data: {\"object\":\"chat.completion.chunk\",\"choices\":[],",
///         "\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\n\n",
///         "data: [DONE]\n\n",
///     );
///     let response = Response::builder()
///         .header("content-type", "text/event-stream")
///         .body(Full::new(Bytes::from_static(stream.as_bytes())))
///         .unwrap();
///     Ok::<_, std::convert::Infallible>(response)
/// });
/// let response = layer.layer(upstream).oneshot(Request::new(())).await.unwrap();
/// response.into_body().collect().await.unwrap();
///
/// let usage = seen.lock().unwrap().expect("the stream reported its usage");
/// assert_eq!(usage.input_tokens, Some(5));
/// assert_eq!(usage.output_tokens, Some(1));
/// # }
/// ```
#[must_use]
pub struct UsageObserver<X = BuiltinExtractor, C = HeuristicCounter> {
    extractor: X,
    counter: C,
    state: UsageState,
    /// The request carried [`UsageInjected`]: hide usage-only chunks.
    hide_usage_only: bool,
}

impl UsageObserver {
    /// An observer for the built-in formats, estimating with [`HeuristicCounter`].
    pub fn new() -> Self {
        Self {
            extractor: BuiltinExtractor,
            counter: HeuristicCounter::new(),
            state: UsageState::default(),
            hide_usage_only: false,
        }
    }
}

// For the default parameters only, so that `UsageObserver::default()` needs no annotation.
impl Default for UsageObserver {
    fn default() -> Self {
        Self::new()
    }
}

impl<X: Clone, C: Clone> Clone for UsageObserver<X, C> {
    fn clone(&self) -> Self {
        Self {
            extractor: self.extractor.clone(),
            counter: self.counter.clone(),
            state: self.state.clone(),
            hide_usage_only: self.hide_usage_only,
        }
    }
}

impl<X, C> fmt::Debug for UsageObserver<X, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageObserver")
            .field("extractor", &std::any::type_name::<X>())
            .field("counter", &std::any::type_name::<C>())
            .field("state", &self.state)
            .field("hide_usage_only", &self.hide_usage_only)
            .finish()
    }
}

impl<X, C> UsageObserver<X, C> {
    /// Read usage with this extractor only, instead of the current one.
    pub fn extractor<X2>(self, extractor: X2) -> UsageObserver<X2, C> {
        UsageObserver {
            extractor,
            counter: self.counter,
            state: self.state,
            hide_usage_only: self.hide_usage_only,
        }
    }

    /// Ask this extractor first; the current ones (the built-in formats by default) still
    /// read the events it does not claim.
    pub fn prepend_extractor<X2>(self, first: X2) -> UsageObserver<(X2, X), C> {
        UsageObserver {
            extractor: (first, self.extractor),
            counter: self.counter,
            state: self.state,
            hide_usage_only: self.hide_usage_only,
        }
    }

    /// Estimate output tokens of cut streams with this counter (`()` to never estimate).
    pub fn token_counter<C2>(self, counter: C2) -> UsageObserver<X, C2> {
        UsageObserver {
            extractor: self.extractor,
            counter,
            state: self.state,
            hide_usage_only: self.hide_usage_only,
        }
    }
}

impl<X: UsageExtractor, C: TokenCounter> Observer for UsageObserver<X, C> {
    fn on_request(&mut self, request: &http::request::Parts) {
        self.hide_usage_only = request.extensions.get::<UsageInjected>().is_some();
    }

    #[inline]
    fn on_event(&mut self, event: &EventRef<'_>, cx: &mut EventContext<'_>) {
        let provider = cx.provider();
        let state = &mut self.state;
        state.usage_only = false;
        self.extractor.extract(event, provider, state);
        if state.usage_only && self.hide_usage_only {
            cx.drop_event();
        }
        // Text is only worth counting while the output count is unknown.
        if cx.is_content() && state.raw_usage().output_tokens.is_none() {
            let counter = &mut self.counter;
            // The layer located the text already for most formats: no second search.
            match cx.content_text() {
                Some(text) => counter.add_text(text),
                None => estimate::content_text(provider, event, |text| counter.add_text(text)),
            }
        }
        if std::mem::take(&mut state.usage_changed) {
            cx.report().usage = state.usage();
        }
        if std::mem::take(&mut state.finish_changed) {
            cx.report().finish_reason = state.finish_reason().map(str::to_owned);
        }
    }

    fn on_end(&mut self, report: &mut StreamReport) {
        let state = &mut self.state;
        let mut usage = state.raw_usage();
        if usage.output_tokens.is_none() {
            let estimate = match report.outcome {
                Outcome::Completed => None,
                _ => self.counter.estimate(),
            };
            if let Some(tokens) = estimate {
                usage.output_tokens = Some(tokens);
                usage.source = UsageSource::Estimated;
            } else if let Some(tokens) = state.provisional_output_tokens() {
                usage.output_tokens = Some(tokens);
            }
        }
        report.usage = usage.has_counts().then_some(usage);
        if let Some(reason) = state.take_finish_reason() {
            report.finish_reason = Some(reason);
        }
        if let Some(tokens) = state.cache_creation_input_tokens() {
            report.extensions.insert(CacheCreationInputTokens(tokens));
        }
    }
}
