//! [`MetricsObserver`]: the OpenTelemetry GenAI metrics of each stream (feature `metrics`).
//! The catalogue of names and buckets is the public [`metrics`](crate::metrics) module.

use std::sync::Arc;
use std::time::Duration;

use metrics::SharedString;
use tokio::time::Instant;

use super::handles::{DEFAULT_MAX_LABEL_SETS, HandleCache, Handles, LabelSet};
use super::labels::ModelLabels;
use crate::observe::{EventContext, Observer};
use crate::report::{Outcome, StreamReport, UsageSource};
use crate::request::RequestModel;
use crate::sse::EventRef;

/// Records the GenAI metrics of each stream. See the [module docs](crate::metrics) for the
/// names, units and attributes.
///
/// It records through the [`metrics`](https://docs.rs/metrics) facade and never installs a
/// recorder: install the exporter of your choice once, configure its histogram buckets with
/// [`buckets`](crate::metrics::buckets), and call [`describe`](crate::metrics::describe).
/// Put it **after** the usage and timing observers, whose findings it records.
///
/// With the Prometheus exporter of
/// [`metrics-exporter-prometheus`](https://docs.rs/metrics-exporter-prometheus), rendered
/// for a `GET /metrics` handler:
///
/// ```no_run
/// use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
/// use tower_sse::metrics::{buckets, names};
/// use tower_sse::{MetricsObserver, SseLayer, TimingObserver, UsageObserver};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Once per process, at start-up.
/// let mut builder = PrometheusBuilder::new();
/// for (name, bounds) in [
///     (names::CLIENT_OPERATION_DURATION, buckets::OPERATION_DURATION),
///     (names::CLIENT_TIME_TO_FIRST_CHUNK, buckets::OPERATION_DURATION),
///     (names::CLIENT_TIME_PER_OUTPUT_CHUNK, buckets::OPERATION_DURATION),
///     (names::CLIENT_TOKEN_USAGE, buckets::TOKEN_USAGE),
///     (names::SERVER_TIME_TO_FIRST_TOKEN, buckets::SERVER_TIME_TO_FIRST_TOKEN),
///     (names::SERVER_TIME_PER_OUTPUT_TOKEN, buckets::SERVER_TIME_PER_OUTPUT_TOKEN),
/// ] {
///     builder = builder.set_buckets_for_metric(Matcher::Full(name.into()), bounds)?;
/// }
/// let prometheus = builder.install_recorder()?;
/// tower_sse::metrics::describe();
///
/// let layer = SseLayer::new().observer((
///     UsageObserver::new(),
///     TimingObserver::new(),
///     MetricsObserver::new(),
/// ));
/// # let _ = layer;
///
/// // In the `GET /metrics` handler (names in Prometheus form: `.` becomes `_`):
/// let text: String = prometheus.render();
/// # let _ = text;
/// # Ok(())
/// # }
/// ```
///
/// (Not compiled here: `metrics-exporter-prometheus` is not a dependency of this crate. The
/// example gateway, `examples/gateway/src/prometheus.rs`, runs this setup.)
///
/// Any recorder works the same way; here `metrics-util`'s debugging recorder, which keeps
/// what it was given for inspection:
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Full};
/// use metrics_util::debugging::{DebugValue, DebuggingRecorder};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_sse::metrics::names;
/// use tower_sse::{MetricsObserver, SseLayer, TimingObserver, UsageObserver};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let recorder = DebuggingRecorder::new();
/// let snapshotter = recorder.snapshotter();
/// recorder.install().expect("the first recorder of this process");
/// tower_sse::metrics::describe();
///
/// let layer = SseLayer::new().observer((
///     UsageObserver::new(),
///     TimingObserver::new(),
///     MetricsObserver::new(),
/// ));
///
/// // An OpenAI Chat upstream: two content chunks, then the usage.
/// # let upstream = service_fn(|_: Request<()>| async {
/// #     let stream = concat!(
/// #         "data: {\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
/// #         "data: {\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n",
/// #         "data: {\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[],",
/// #         "\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n",
/// #         "data: [DONE]\n\n",
/// #     );
/// #     let response = Response::builder()
/// #         .header("content-type", "text/event-stream")
/// #         .body(Full::new(Bytes::from_static(stream.as_bytes())))
/// #         .unwrap();
/// #     Ok::<_, std::convert::Infallible>(response)
/// # });
/// let request = Request::post("/v1/chat/completions").body(()).unwrap();
/// let response = layer.layer(upstream).oneshot(request).await.unwrap();
/// response.into_body().collect().await.unwrap();
///
/// let metrics = snapshotter.snapshot().into_vec();
/// let value = |name: &str| {
///     let found = metrics.iter().filter(|(key, ..)| key.key().name() == name);
///     found.map(|(.., value)| value).collect::<Vec<_>>()
/// };
/// assert_eq!(value(names::STREAMS_ENDED), [&DebugValue::Counter(1)]);
/// assert_eq!(value(names::STREAMS_OPEN), [&DebugValue::Gauge(0.0.into())]);
/// assert_eq!(value(names::CLIENT_OPERATION_DURATION).len(), 1);
/// // Input and output tokens: one histogram each, told apart by `gen_ai.token.type`.
/// assert_eq!(value(names::CLIENT_TOKEN_USAGE).len(), 2);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MetricsObserver {
    request_model: Option<SharedString>,
    open: bool,
    last_content: Option<Instant>,
    per_chunk: Option<Arc<Handles>>,
    models: ModelLabels,
    handles: Arc<HandleCache>,
}

impl Default for MetricsObserver {
    fn default() -> Self {
        Self {
            request_model: None,
            open: false,
            last_content: None,
            per_chunk: None,
            models: ModelLabels::default(),
            handles: Arc::new(HandleCache::new(DEFAULT_MAX_LABEL_SETS)),
        }
    }
}

impl MetricsObserver {
    /// A fresh observer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Which model names become label values (request and response model alike); the rest
    /// are recorded as `_OTHER`. Default: the first
    /// [`DEFAULT_DISTINCT_MODELS`](crate::metrics::DEFAULT_DISTINCT_MODELS) distinct names
    /// of at most [`DEFAULT_MAX_MODEL_LEN`](crate::metrics::DEFAULT_MAX_MODEL_LEN) bytes.
    #[must_use]
    pub fn model_labels(mut self, models: ModelLabels) -> Self {
        self.models = models;
        self
    }

    /// For how many label sets (provider, request and response model) the recorder's handles
    /// are kept. Default:
    /// [`DEFAULT_MAX_LABEL_SETS`](crate::metrics::DEFAULT_MAX_LABEL_SETS).
    ///
    /// Looking a metric up in the recorder builds its key and hashes it, about a dozen
    /// allocations per metric; the observer does it once a second per label set instead of
    /// for every stream. Streams of label sets beyond the bound are recorded as if there
    /// were no cache. Handles are looked up again after a second, so an exporter that drops
    /// idle series (the Prometheus exporter's `idle_timeout`, at least one second) never has
    /// a handle recording into a dropped series, and a recorder installed after the first
    /// streams is picked up. Clones share the kept handles.
    #[must_use]
    pub fn max_label_sets(mut self, max: usize) -> Self {
        self.handles = Arc::new(HandleCache::new(max));
        self
    }

    fn label_set(&self, report: &StreamReport) -> LabelSet {
        // Client and upstream choose the models: bounded, so that they cannot grow the
        // recorder.
        LabelSet {
            provider: report.provider,
            request_model: self.request_model.clone(),
            response_model: report.model.as_deref().map(|m| self.models.label(m)),
        }
    }
}

impl Observer for MetricsObserver {
    fn on_request(&mut self, request: &http::request::Parts) {
        self.request_model = request
            .extensions
            .get::<RequestModel>()
            .map(|m| self.models.label(&m.0));
    }

    fn on_response(&mut self, _response: &http::response::Parts, _report: &mut StreamReport) {
        self.handles.stream_opened(std::time::Instant::now());
        self.open = true;
    }

    #[inline]
    fn on_event(&mut self, _event: &EventRef<'_>, cx: &mut EventContext<'_>) {
        if !cx.is_content() || !cx.is_delivered() || !cx.is_forwarded() {
            return;
        }
        let at = cx.at();
        if let Some(last) = self.last_content.replace(at) {
            let handles = match &self.per_chunk {
                Some(handles) => handles,
                None => {
                    let set = self.label_set(cx.report);
                    let handles = self.handles.handles(&set, std::time::Instant::now());
                    self.per_chunk.insert(handles)
                }
            };
            handles
                .per_chunk()
                .record(at.saturating_duration_since(last).as_secs_f64());
        }
    }

    fn on_end(&mut self, report: &mut StreamReport) {
        // One clock read for the handles' freshness, however many are recorded.
        let now = std::time::Instant::now();
        let was_open = std::mem::take(&mut self.open);
        self.handles.stream_ended(was_open, report.outcome, now);
        let handles = self.handles.handles(&self.label_set(report), now);
        let failed = report.outcome != Outcome::Completed;
        handles
            .duration(report.outcome)
            .record(report.duration().as_secs_f64());

        let timing = report.timing.unwrap_or_default();
        if let Some(ttft) = timing.time_to_first_token {
            handles.first_chunk().record(secs(ttft));
            if !failed {
                handles.first_token().record(secs(ttft));
            }
        }
        if let Some(tpot) = timing.time_per_output_token {
            handles.per_token().record(secs(tpot));
        }
        // Reported counts only: the conventions ask not to report counts that were not
        // counted. An estimated usage has its output estimated, and only that: its input
        // is the provider's (Anthropic's `message_start`, for a stream cut before the end).
        if let Some(usage) = report.usage {
            let output = usage
                .output_tokens
                .filter(|_| usage.source == UsageSource::Reported);
            for (is_output, tokens) in [(false, usage.input_tokens), (true, output)] {
                if let Some(tokens) = tokens {
                    handles.tokens(is_output).record(tokens as f64);
                }
            }
        }
    }
}

fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}
