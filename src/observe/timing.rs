//! Latency of a stream, event by event: time to first byte, time to first token,
//! inter-token latency.

use std::time::Duration;

/// Latency findings of one stream, measured from the request's arrival at the layer.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct Timing {
    /// Request arrival to the first upstream body byte.
    pub time_to_first_byte: Option<Duration>,
    /// Request arrival to the first content event delivered to the client.
    pub time_to_first_token: Option<Duration>,
    /// Gaps between consecutive content events delivered to the client.
    pub inter_token: Latencies,
    /// First to last content event.
    pub decode_time: Option<Duration>,
    /// `decode_time / (output tokens - 1)`, when output tokens are known.
    pub time_per_output_token: Option<Duration>,
    /// Output tokens per second of decode time, when output tokens are known.
    pub output_tokens_per_second: Option<f64>,
}

/// A summary of latency samples, from a small fixed histogram (percentiles are bucket
/// upper bounds, capped at the maximum seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Latencies {
    /// Number of samples.
    pub count: u64,
    /// Mean.
    pub mean: Option<Duration>,
    /// Median.
    pub p50: Option<Duration>,
    /// 90th percentile.
    pub p90: Option<Duration>,
    /// 99th percentile.
    pub p99: Option<Duration>,
    /// Largest sample.
    pub max: Option<Duration>,
}
