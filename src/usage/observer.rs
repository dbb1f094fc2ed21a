//! [`UsageObserver`]: token usage and the finish reason of each stream, into its report.

use std::fmt;

use crate::observe::{EventContext, Observer};
use crate::report::{Outcome, StreamReport, UsageSource};
use crate::request::UsageInjected;
use crate::sse::EventRef;
use crate::usage::{CacheCreationInputTokens, InputEstimateHandle, UsageState};

use super::{BuiltinExtractor, HeuristicCounter, TokenCounter, UsageExtractor};

/// Reads token usage and the finish reason of each stream into its
/// [`StreamReport`]. See the [module docs](crate::usage) for the formats
/// and the rules.
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
/// use http_body_util::{BodyExt, Empty, Full};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_sse::{SseLayer, StreamReport, Usage, UsageObserver};
/// use tower_sse::request::UploadBody;
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
/// let upstream = service_fn(|_: Request<UploadBody<Empty<Bytes>>>| async {
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
/// let response = layer.layer(upstream).oneshot(Request::new(Empty::<Bytes>::new())).await.unwrap();
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
    /// The request's body prefix, from [`InputEstimateLayer`](super::InputEstimateLayer).
    input_estimate: Option<InputEstimateHandle>,
}

impl UsageObserver {
    /// An observer for the built-in formats, estimating with [`HeuristicCounter`].
    pub fn new() -> Self {
        Self {
            extractor: BuiltinExtractor,
            counter: HeuristicCounter::new(),
            state: UsageState::default(),
            hide_usage_only: false,
            input_estimate: None,
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
            input_estimate: self.input_estimate.clone(),
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
            input_estimate: self.input_estimate,
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
            input_estimate: self.input_estimate,
        }
    }

    /// Estimate output tokens of cut streams with this counter (`()` to never estimate).
    pub fn token_counter<C2>(self, counter: C2) -> UsageObserver<X, C2> {
        UsageObserver {
            extractor: self.extractor,
            counter,
            state: self.state,
            hide_usage_only: self.hide_usage_only,
            input_estimate: self.input_estimate,
        }
    }
}

impl<X: UsageExtractor, C: TokenCounter> Observer for UsageObserver<X, C> {
    fn on_request(&mut self, request: &http::request::Parts) {
        self.hide_usage_only = request.extensions.get::<UsageInjected>().is_some();
        self.input_estimate = request.extensions.get::<InputEstimateHandle>().cloned();
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
                None => provider.content_text(event, |text| counter.add_text(text)),
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
        // The output count never came: the stream was cut, by us, the client or the
        // upstream, or it ended without the count its provider announced (an Anthropic
        // stream without `message_delta`, after an `error` event say). The placeholder of
        // the announcement is not a count: the output is estimated from the text delivered,
        // or stays unknown.
        let cut =
            report.outcome != Outcome::Completed || state.provisional_output_tokens().is_some();
        if usage.output_tokens.is_none()
            && cut
            && let Some(tokens) = self.counter.estimate()
        {
            usage.output_tokens = Some(tokens);
            usage.source = UsageSource::Estimated;
        }
        // Never reported: from the request's text, when the layer kept it.
        if usage.input_tokens.is_none()
            && cut
            && let Some(tokens) = self.input_estimate.take().and_then(|h| h.estimate())
        {
            usage.input_tokens = Some(tokens);
            usage.source = UsageSource::Estimated;
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
