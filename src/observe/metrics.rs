//! [`MetricsObserver`]: the OpenTelemetry GenAI metrics of each stream (feature `metrics`).
//! The catalogue of names and buckets is the public [`metrics`](crate::metrics) module.

use std::time::Duration;

use metrics::{Histogram, Label};
use tokio::time::Instant;

use crate::metrics::names;
use crate::observe::labels::ModelLabels;
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
#[derive(Debug, Clone, Default)]
pub struct MetricsObserver {
    request_model: Option<String>,
    open: bool,
    last_content: Option<Instant>,
    per_chunk: Option<Histogram>,
    models: ModelLabels,
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

    fn labels(&self, report: &StreamReport) -> Vec<Label> {
        let mut labels = vec![
            Label::new("gen_ai.operation.name", report.provider.operation()),
            Label::new("gen_ai.provider.name", report.provider.as_str()),
        ];
        // Client and upstream choose these: bounded, so that they cannot grow the recorder.
        if let Some(model) = &self.request_model {
            labels.push(Label::new("gen_ai.request.model", self.models.value(model)));
        }
        if let Some(model) = &report.model {
            labels.push(Label::new(
                "gen_ai.response.model",
                self.models.value(model),
            ));
        }
        labels
    }
}

impl Observer for MetricsObserver {
    fn on_request(&mut self, request: &http::request::Parts) {
        self.request_model = request
            .extensions
            .get::<RequestModel>()
            .map(|m| m.0.clone());
    }

    fn on_response(&mut self, _response: &http::response::Parts, _report: &mut StreamReport) {
        metrics::gauge!(names::STREAMS_OPEN).increment(1.0);
        self.open = true;
    }

    #[inline]
    fn on_event(&mut self, _event: &EventRef<'_>, cx: &mut EventContext<'_>) {
        if !cx.is_content() || !cx.is_delivered() || !cx.is_forwarded() {
            return;
        }
        let at = cx.at();
        if let Some(last) = self.last_content.replace(at) {
            let labels = &*cx.report;
            let histogram = match &self.per_chunk {
                Some(histogram) => histogram,
                None => {
                    let labels = self.labels(labels);
                    self.per_chunk.insert(metrics::histogram!(
                        names::CLIENT_TIME_PER_OUTPUT_CHUNK,
                        labels
                    ))
                }
            };
            histogram.record(at.saturating_duration_since(last).as_secs_f64());
        }
    }

    fn on_end(&mut self, report: &mut StreamReport) {
        if std::mem::take(&mut self.open) {
            metrics::gauge!(names::STREAMS_OPEN).decrement(1.0);
        }
        let labels = self.labels(report);
        let failed = report.outcome != Outcome::Completed;
        metrics::counter!(names::STREAMS_ENDED, "outcome" => report.outcome.as_str()).increment(1);

        let mut with_error = labels.clone();
        if failed {
            with_error.push(Label::new("error.type", report.outcome.as_str()));
        }
        metrics::histogram!(names::CLIENT_OPERATION_DURATION, with_error)
            .record(report.duration().as_secs_f64());

        let timing = report.timing.unwrap_or_default();
        if let Some(ttft) = timing.time_to_first_token {
            metrics::histogram!(names::CLIENT_TIME_TO_FIRST_CHUNK, labels.clone())
                .record(secs(ttft));
            if !failed {
                metrics::histogram!(names::SERVER_TIME_TO_FIRST_TOKEN, labels.clone())
                    .record(secs(ttft));
            }
        }
        if let Some(tpot) = timing.time_per_output_token {
            metrics::histogram!(names::SERVER_TIME_PER_OUTPUT_TOKEN, labels.clone())
                .record(secs(tpot));
        }
        // Reported counts only: the conventions ask not to report counts that were not
        // counted. An estimated usage has its output estimated, and only that: its input
        // is the provider's (Anthropic's `message_start`, for a stream cut before the end).
        if let Some(usage) = report.usage {
            let output = usage
                .output_tokens
                .filter(|_| usage.source == UsageSource::Reported);
            for (kind, tokens) in [("input", usage.input_tokens), ("output", output)] {
                if let Some(tokens) = tokens {
                    let mut token_labels = labels.clone();
                    token_labels.push(Label::new("gen_ai.token.type", kind));
                    metrics::histogram!(names::CLIENT_TOKEN_USAGE, token_labels)
                        .record(tokens as f64);
                }
            }
        }
    }
}

fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}
