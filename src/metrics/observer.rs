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
/// use http_body_util::{BodyExt, Empty, Full};
/// use metrics_util::debugging::{DebugValue, DebuggingRecorder};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_sse::metrics::names;
/// use tower_sse::{MetricsObserver, SseLayer, TimingObserver, UsageObserver};
/// # use tower_sse::request::UploadBody;
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
/// # let upstream = service_fn(|_: Request<UploadBody<Empty<Bytes>>>| async {
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
/// let request = Request::post("/v1/chat/completions").body(Empty::<Bytes>::new()).unwrap();
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
    /// The gaps between content events not yet given to the recorder, in seconds, oldest
    /// first: recorded at the end of the stream, or when full.
    gaps: GapBuffer,
    /// The handles the gaps of a long stream go to, looked up when its buffer first filled.
    per_chunk: Option<Arc<Handles>>,
    /// What every stream of the layer shares: one `Arc`, so a stream's copy of the observer
    /// is one pointer (and one count up and down) for both.
    shared: Arc<Shared>,
}

/// The model-name bound and the kept handles, shared by the clones of one observer.
#[derive(Debug)]
struct Shared {
    models: ModelLabels,
    handles: HandleCache,
}

/// How many gaps between content events a stream keeps before it records them: a short
/// stream records all of its gaps at its end, with its other metrics and one lookup of its
/// handles; a long one records them [`GAP_BATCH`] at a time.
const GAP_BATCH: usize = 4;

/// The per-chunk gaps of one stream waiting to be recorded (`gen_ai.client.operation.
/// time_per_output_chunk`). Recording them later, in the order they came, gives the
/// recorder the same values: an exporter's bucket counts and sums are the same as with a
/// record per event, and the event path does no recorder call and no handle lookup.
#[derive(Debug, Clone, Copy, Default)]
struct GapBuffer {
    len: u8,
    secs: [f64; GAP_BATCH],
}

impl GapBuffer {
    /// Keep one gap; `false` when the buffer is full and must be recorded first.
    #[inline]
    fn push(&mut self, secs: f64) -> bool {
        match self.secs.get_mut(usize::from(self.len)) {
            Some(slot) => {
                *slot = secs;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// Record the kept gaps, oldest first, and empty the buffer.
    fn record_into(&mut self, histogram: &metrics::Histogram) {
        for &secs in &self.secs[..usize::from(std::mem::take(&mut self.len))] {
            histogram.record(secs);
        }
    }
}

impl Default for MetricsObserver {
    fn default() -> Self {
        Self {
            request_model: None,
            open: false,
            last_content: None,
            gaps: GapBuffer::default(),
            per_chunk: None,
            shared: Arc::new(Shared {
                models: ModelLabels::default(),
                handles: HandleCache::new(DEFAULT_MAX_LABEL_SETS),
            }),
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
        let handles = HandleCache::new(self.shared.handles.max_sets());
        self.shared = Arc::new(Shared { models, handles });
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
        let models = self.shared.models.clone();
        let handles = HandleCache::new(max);
        self.shared = Arc::new(Shared { models, handles });
        self
    }

    fn label_set(&self, report: &StreamReport) -> LabelSet {
        // Client and upstream choose the models: bounded, so that they cannot grow the
        // recorder.
        LabelSet {
            provider: report.provider,
            request_model: self.request_model.clone(),
            response_model: report.model.as_deref().map(|m| self.shared.models.label(m)),
        }
    }
}

impl Observer for MetricsObserver {
    fn on_request(&mut self, request: &http::request::Parts) {
        self.request_model = request
            .extensions
            .get::<RequestModel>()
            .map(|m| self.shared.models.label(&m.0));
    }

    fn on_response(&mut self, _response: &http::response::Parts, _report: &mut StreamReport) {
        self.shared.handles.stream_opened(std::time::Instant::now());
        self.open = true;
    }

    #[inline]
    fn on_event(&mut self, _event: &EventRef<'_>, cx: &mut EventContext<'_>) {
        if !cx.is_content() || !cx.is_delivered() || !cx.is_forwarded() {
            return;
        }
        let at = cx.at();
        if let Some(last) = self.last_content.replace(at) {
            let gap = at.saturating_duration_since(last).as_secs_f64();
            if !self.gaps.push(gap) {
                self.flush_gaps(cx.report, std::time::Instant::now());
                let kept = self.gaps.push(gap);
                debug_assert!(kept, "an emptied buffer takes a gap");
            }
        }
    }

    fn on_end(&mut self, report: &mut StreamReport) {
        // One clock read for the handles' freshness, however many are recorded.
        let now = std::time::Instant::now();
        let was_open = std::mem::take(&mut self.open);
        self.shared
            .handles
            .stream_ended(was_open, report.outcome, now);
        // One lookup of the label set's handles for everything this stream records at its
        // end, the per-chunk gaps it still keeps included.
        let handles = self.shared.handles.handles(&self.label_set(report), now);
        let per_chunk = self.per_chunk.take();
        self.gaps
            .record_into(per_chunk.as_deref().unwrap_or(&handles).per_chunk());
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
        // The attempts of a `Failover` inside that failed before the commit come first: each
        // is an operation of its own, and can have cost tokens (Anthropic's input tokens of a
        // stream that ends in `overloaded_error`).
        let failed_attempts = report
            .failover
            .as_deref()
            .into_iter()
            .flat_map(|failover| failover.failed().filter_map(|attempt| attempt.usage));
        for usage in failed_attempts.chain(report.usage) {
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

impl MetricsObserver {
    /// Record the kept per-chunk gaps now (the buffer is full).
    #[cold]
    fn flush_gaps(&mut self, report: &StreamReport, now: std::time::Instant) {
        let handles = match &self.per_chunk {
            Some(handles) => handles,
            None => {
                let handles = self.shared.handles.handles(&self.label_set(report), now);
                self.per_chunk.insert(handles)
            }
        };
        self.gaps.record_into(handles.per_chunk());
    }
}

fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}
