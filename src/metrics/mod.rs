//! Every metric the crate emits, through the [`metrics`] facade (feature `metrics`).
//!
//! [`MetricsObserver`] records, per stream, the instruments of the
//! OpenTelemetry GenAI semantic conventions, named as they are there;
//! [`StreamLimitLayer`](crate::StreamLimitLayer) records its own two,
//! [`Failover`](crate::failover::Failover) its three. Nothing else in the crate emits metrics. This table is the one list (a test checks it against [`names`] and
//! [`describe`]):
//!
//! | name | kind | unit | labels | meaning |
//! |---|---|---|---|---|
//! | `gen_ai.client.operation.duration` | histogram | s | GenAI attributes, `error.type` on failure | request to end of stream, recorded at the end |
//! | `gen_ai.client.operation.time_to_first_chunk` | histogram | s | GenAI attributes | request to the first content event, at the end, when content arrived |
//! | `gen_ai.client.operation.time_per_output_chunk` | histogram | s | GenAI attributes | time between consecutive delivered content events, one value per event after the first, kept by the stream and recorded at its end (or four at a time) |
//! | `gen_ai.client.token.usage` | histogram | `{token}` | GenAI attributes, `gen_ai.token.type` = `input` / `output` | tokens, at the end, usage the provider reported only (never estimated); with a [`Failover`](crate::failover::Failover) inside, one more sample per failed attempt that reported tokens |
//! | `gen_ai.server.time_to_first_token` | histogram | s | GenAI attributes | time to first token, at the end, completed streams only |
//! | `gen_ai.server.time_per_output_token` | histogram | s | GenAI attributes | time per output token after the first, at the end, when output tokens are known |
//! | `tower_sse.streams.open` | gauge | `{stream}` | none | streams of [`MetricsObserver`] open now: up at the response head, down at the end |
//! | `tower_sse.streams.ended_total` | counter | `{stream}` | `outcome` = the [`Outcome`](crate::Outcome) name | streams ended, by outcome |
//! | `tower_sse.limit.open_streams` | gauge | `{stream}` | none | permits of [`StreamLimitLayer`](crate::StreamLimitLayer)s held now: requests awaiting their head, open streams, streams still drained after a disconnect |
//! | `tower_sse.limit.rejections_total` | counter | `{request}` | `reason` = `limit_full` | requests a [`StreamLimitLayer`](crate::StreamLimitLayer) answered `503` because every permit was taken |
//! | `tower_sse.resume.requests_total` | counter | `{request}` | `answer` = `replayed` / `finished` / `gone` / `not_found` / `unavailable` / `not_resumable` | resume requests (`Last-Event-ID`) of a `ResumeLayer` (feature `resume`) by answer, and new streams it could not make resumable |
//! | `tower_sse.resume.reader_gaps_total` | counter | `{connection}` | `reason` = `overrun` / `gone` / `store_failed` | readers of resumable streams (feature `resume`) that could not go on without a gap: each got a `resume_gap` error event and a broken end |
//! | `tower_sse.failover.attempts_total` | counter | `{attempt}` | `upstream` = its name or index, `result` = `served` / `call_failed` / `status` / `provider_error` / `no_content` / `body_failed` | upstream attempts of a [`Failover`](crate::failover::Failover), failed ones included |
//! | `tower_sse.failover.skipped_total` | counter | `{request}` | `upstream` | requests that skipped an upstream whose circuit breaker was open |
//! | `tower_sse.failover.circuit_open` | gauge | `{upstream}` | `upstream` | 1 while the upstream's circuit breaker is open, 0 once closed |
//!
//! Counters end in `_total`, so that their Prometheus names pass `promtool check metrics`
//! (exporters turn the dots into underscores; OpenTelemetry's Prometheus exporter adds no second
//! suffix).
//!
//! GenAI attributes: `gen_ai.operation.name`, `gen_ai.provider.name`, `gen_ai.request.model`
//! (from [`RequestModel`](crate::request::RequestModel) when known), `gen_ai.response.model`;
//! `error.type` is the [`Outcome`](crate::Outcome) name. Every label value comes from a short
//! fixed list, except the two model names, which come from the request and the upstream: they
//! are bounded by [`ModelLabels`] (by default the first 100 distinct names of at most 128
//! bytes; any other is recorded as `_OTHER`), so that clients cannot grow the recorder.
//!
//! The limit's metrics sum over every `StreamLimitLayer` of the process (no label tells them
//! apart); per layer, read [`OpenStreams`](crate::limit::OpenStreams), which counts both
//! without the feature. A limit in [`WhenFull::Wait`](crate::limit::WhenFull::Wait) mode
//! rejects nothing (it holds requests back in `poll_ready`, where the wait can be bounded by a
//! timeout or a `LoadShed` outside, which report it), except a `call` made without `poll_ready`
//! while every permit is taken: that one is answered `503` and counted as `limit_full`.
//!
//! The library never installs a recorder or exporter. The facade carries no bucket
//! boundaries: configure your exporter with the ones the conventions advise, in [`buckets`]
//! ([`buckets::ALL`] lists every histogram with its boundaries; for Prometheus,
//! `prometheus::with_buckets` applies them all, feature `prometheus`), and call [`describe`]
//! once after installing it. Put [`MetricsObserver`] **after** the usage and timing
//! observers in the tuple, so that their findings are in the report when it records.

use metrics::Unit;

mod handles;
mod labels;
mod observer;
#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
pub mod prometheus;

pub use self::handles::DEFAULT_MAX_LABEL_SETS;
pub use self::labels::{DEFAULT_DISTINCT_MODELS, DEFAULT_MAX_MODEL_LEN, ModelLabels, OTHER};
pub use self::observer::MetricsObserver;

/// Metric names.
pub mod names {
    /// Duration of the whole operation, request to end of stream.
    pub const CLIENT_OPERATION_DURATION: &str = "gen_ai.client.operation.duration";
    /// Time to the first content chunk.
    pub const CLIENT_TIME_TO_FIRST_CHUNK: &str = "gen_ai.client.operation.time_to_first_chunk";
    /// Time between consecutive content chunks.
    pub const CLIENT_TIME_PER_OUTPUT_CHUNK: &str = "gen_ai.client.operation.time_per_output_chunk";
    /// Input and output tokens.
    pub const CLIENT_TOKEN_USAGE: &str = "gen_ai.client.token.usage";
    /// Time to first token, server side.
    pub const SERVER_TIME_TO_FIRST_TOKEN: &str = "gen_ai.server.time_to_first_token";
    /// Time per output token, server side.
    pub const SERVER_TIME_PER_OUTPUT_TOKEN: &str = "gen_ai.server.time_per_output_token";
    /// Streams open now.
    pub const STREAMS_OPEN: &str = "tower_sse.streams.open";
    /// Streams ended, by outcome.
    pub const STREAMS_ENDED: &str = "tower_sse.streams.ended_total";
    /// Permits of [`StreamLimitLayer`](crate::StreamLimitLayer) held now (open streams).
    pub const LIMIT_OPEN_STREAMS: &str = "tower_sse.limit.open_streams";
    /// Requests rejected by [`StreamLimitLayer`](crate::StreamLimitLayer), by reason.
    pub const LIMIT_REJECTIONS: &str = "tower_sse.limit.rejections_total";
    /// Resume requests (`Last-Event-ID`) by answer (`replayed`, `gone`, `not_found`,
    /// `finished`, `unavailable`), and new streams that could not be made resumable
    /// (`not_resumable`): `ResumeLayer`, feature `resume`.
    pub const RESUME_REQUESTS: &str = "tower_sse.resume.requests_total";
    /// Readers of resumable streams that met a gap (`resume_gap` error event, broken end),
    /// by reason (`overrun`, `gone`, `store_failed`): `ResumeLayer`, feature `resume`.
    pub const RESUME_READER_GAPS: &str = "tower_sse.resume.reader_gaps_total";
    /// Upstream attempts of a [`Failover`](crate::failover::Failover), by `upstream` and
    /// `result` (`served`, or why it failed).
    pub const FAILOVER_ATTEMPTS: &str = "tower_sse.failover.attempts_total";
    /// Requests of a [`Failover`](crate::failover::Failover) that skipped an upstream whose
    /// circuit breaker was open, by `upstream`.
    pub const FAILOVER_SKIPPED: &str = "tower_sse.failover.skipped_total";
    /// 1 while an upstream's circuit breaker is open (skipped), 0 once it closed, by
    /// `upstream`.
    pub const FAILOVER_CIRCUIT_OPEN: &str = "tower_sse.failover.circuit_open";
}

/// Bucket boundaries the conventions advise, for your exporter.
pub mod buckets {
    /// `gen_ai.client.operation.duration`, `…time_to_first_chunk`, `…time_per_output_chunk`.
    pub const OPERATION_DURATION: &[f64] = &[
        0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
    ];
    /// `gen_ai.client.token.usage`.
    pub const TOKEN_USAGE: &[f64] = &[
        1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0,
        4194304.0, 16777216.0, 67108864.0,
    ];
    /// `gen_ai.server.time_to_first_token`.
    pub const SERVER_TIME_TO_FIRST_TOKEN: &[f64] = &[
        0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    ];
    /// `gen_ai.server.time_per_output_token`.
    pub const SERVER_TIME_PER_OUTPUT_TOKEN: &[f64] = &[
        0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
    ];

    /// Every histogram the crate records, by name, with its boundaries: what to give an
    /// exporter, one entry per metric (with feature `prometheus`,
    /// `metrics::prometheus::with_buckets` does it for Prometheus).
    ///
    /// ```
    /// use tower_sse::metrics::{buckets, names};
    ///
    /// let duration = buckets::ALL.iter().find(|(name, _)| *name == names::CLIENT_OPERATION_DURATION);
    /// assert_eq!(duration, Some(&(names::CLIENT_OPERATION_DURATION, buckets::OPERATION_DURATION)));
    /// assert_eq!(buckets::ALL.len(), 6);
    /// for (name, bounds) in buckets::ALL {
    ///     assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{name}: increasing");
    /// }
    /// ```
    pub const ALL: &[(&str, &[f64])] = &[
        (super::names::CLIENT_OPERATION_DURATION, OPERATION_DURATION),
        (super::names::CLIENT_TIME_TO_FIRST_CHUNK, OPERATION_DURATION),
        (
            super::names::CLIENT_TIME_PER_OUTPUT_CHUNK,
            OPERATION_DURATION,
        ),
        (super::names::CLIENT_TOKEN_USAGE, TOKEN_USAGE),
        (
            super::names::SERVER_TIME_TO_FIRST_TOKEN,
            SERVER_TIME_TO_FIRST_TOKEN,
        ),
        (
            super::names::SERVER_TIME_PER_OUTPUT_TOKEN,
            SERVER_TIME_PER_OUTPUT_TOKEN,
        ),
    ];
}

/// Describe every metric (unit and help text) to the installed recorder. Call it once, after
/// installing one.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        names::CLIENT_OPERATION_DURATION,
        Unit::Seconds,
        "GenAI operation duration"
    );
    describe_histogram!(
        names::CLIENT_TIME_TO_FIRST_CHUNK,
        Unit::Seconds,
        "Time to receive the first content chunk"
    );
    describe_histogram!(
        names::CLIENT_TIME_PER_OUTPUT_CHUNK,
        Unit::Seconds,
        "Time between consecutive content chunks"
    );
    describe_histogram!(
        names::CLIENT_TOKEN_USAGE,
        Unit::Count,
        "Number of input and output tokens used"
    );
    describe_histogram!(
        names::SERVER_TIME_TO_FIRST_TOKEN,
        Unit::Seconds,
        "Time to generate the first token"
    );
    describe_histogram!(
        names::SERVER_TIME_PER_OUTPUT_TOKEN,
        Unit::Seconds,
        "Time per output token after the first"
    );
    describe_gauge!(names::STREAMS_OPEN, Unit::Count, "Streams open now");
    describe_gauge!(
        names::LIMIT_OPEN_STREAMS,
        Unit::Count,
        "Stream limit permits held now"
    );
    describe_counter!(
        names::STREAMS_ENDED,
        Unit::Count,
        "Streams ended, by outcome"
    );
    describe_counter!(
        names::LIMIT_REJECTIONS,
        Unit::Count,
        "Requests rejected by the stream limit (503), by reason"
    );
    describe_counter!(
        names::RESUME_REQUESTS,
        Unit::Count,
        "Resume requests by answer, and streams that could not be made resumable"
    );
    describe_counter!(
        names::RESUME_READER_GAPS,
        Unit::Count,
        "Readers of resumable streams ended by a gap (resume_gap error event), by reason"
    );
    describe_counter!(
        names::FAILOVER_ATTEMPTS,
        Unit::Count,
        "Upstream attempts of the failover layer, by upstream and result"
    );
    describe_counter!(
        names::FAILOVER_SKIPPED,
        Unit::Count,
        "Upstreams skipped by the failover layer's open circuit breaker"
    );
    describe_gauge!(
        names::FAILOVER_CIRCUIT_OPEN,
        Unit::Count,
        "1 while an upstream's circuit breaker is open"
    );
}

// The instruments the layers record themselves (the observer records the rest).

/// A permit of a [`StreamLimitLayer`](crate::StreamLimitLayer) taken.
pub(crate) fn limit_permit_taken() {
    metrics::gauge!(names::LIMIT_OPEN_STREAMS).increment(1.0);
}

/// A permit of a [`StreamLimitLayer`](crate::StreamLimitLayer) given back.
pub(crate) fn limit_permit_released() {
    metrics::gauge!(names::LIMIT_OPEN_STREAMS).decrement(1.0);
}

/// The `reason` of a rejection because every permit was taken (the only reason so far; the
/// label leaves room for others without renaming the metric).
const LIMIT_FULL: &str = "limit_full";

/// A request a [`StreamLimitLayer`](crate::StreamLimitLayer) answered `503`.
pub(crate) fn limit_rejected() {
    metrics::counter!(names::LIMIT_REJECTIONS, "reason" => LIMIT_FULL).increment(1);
}

#[cfg(feature = "resume")]
/// A resume answer of the `ResumeLayer` (`replayed`, `gone`, …).
#[cfg(feature = "resume")]
pub(crate) fn resume_answer(answer: &'static str) {
    metrics::counter!(names::RESUME_REQUESTS, "answer" => answer).increment(1);
}

/// A reader of a resumable stream ended by a gap (`overrun`, `gone`, `store_failed`).
#[cfg(feature = "resume")]
pub(crate) fn resume_reader_gap(reason: &'static str) {
    metrics::counter!(names::RESUME_READER_GAPS, "reason" => reason).increment(1);
}
