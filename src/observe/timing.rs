//! Latency of a stream, event by event: time to first byte, time to first token,
//! inter-token latency.
//!
//! "Token" means a **content event** delivered to the client: a text, reasoning or tool-call
//! delta, as the provider format (or the layer's
//! [`content_predicate`](crate::SseLayer::content_predicate)) decides. A role-only first
//! chunk, `message_start`, `response.created`, pings and comments do not stop the clock —
//! gateways that let them report a time to first token that is far too short.
//!
//! Times are stamped with the one clock read the layer makes per upstream frame, as the frame
//! is decoded (its events go to the client in the same poll), and measured from the request's
//! arrival at the layer. Events drained after a client went away are not counted.
//!
//! # Differences from tower-http's `TraceLayer`
//!
//! `TraceLayer` sees body chunks; a chunk can hold half an event or ten of them. This
//! observer sees whole events, and only the ones that carry content.

use std::time::Duration;

use tokio::time::Instant;

use crate::observe::{EventContext, Observer};
use crate::report::{Latencies, StreamReport, Timing};
use crate::sse::EventRef;

const BUCKETS: usize = 48;
const BASE_MICROS: u64 = 100;

/// A fixed log-scale histogram of durations in microseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Histogram {
    counts: [u32; BUCKETS],
    count: u64,
    sum_micros: u64,
    max_micros: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: [0; BUCKETS],
            count: 0,
            sum_micros: 0,
            max_micros: 0,
        }
    }
}

/// Lower bound of bucket `i`, in microseconds: `100 × 2^(i/3)`.
fn bucket_floor(i: usize) -> f64 {
    if i == 0 {
        0.0
    } else {
        BASE_MICROS as f64 * 2f64.powf(i as f64 / 3.0)
    }
}

/// The bucket of a sample: integer arithmetic only (this runs per content event).
#[inline]
fn bucket_of(micros: u64) -> usize {
    if micros < BASE_MICROS * 2 {
        // [0, 126) -> 0, [126, 159) -> 1, [159, 200) -> 2
        return match micros {
            m if m < 126 => 0,
            m if m < 159 => 1,
            _ => 2,
        };
    }
    let ratio = micros / BASE_MICROS; // >= 2
    let doubling = (63 - ratio.leading_zeros()) as usize; // floor(log2(ratio))
    // Where the sample falls inside its doubling: thirds at 2^(1/3) ≈ 1.26, 2^(2/3) ≈ 1.587.
    let low = BASE_MICROS << doubling;
    let third = if micros * 1000 < low * 1260 {
        0
    } else if micros * 1000 < low * 1587 {
        1
    } else {
        2
    };
    (doubling * 3 + third).min(BUCKETS - 1)
}

impl Histogram {
    #[inline]
    fn record(&mut self, sample: Duration) {
        let micros = u64::try_from(sample.as_micros()).unwrap_or(u64::MAX);
        let bucket = bucket_of(micros);
        self.counts[bucket] = self.counts[bucket].saturating_add(1);
        self.count += 1;
        self.sum_micros = self.sum_micros.saturating_add(micros);
        self.max_micros = self.max_micros.max(micros);
    }

    fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let rank = (q * self.count as f64).ceil().max(1.0);
        let mut seen = 0f64;
        for (i, &n) in self.counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let before = seen;
            seen += f64::from(n);
            if seen >= rank {
                let (low, high) = (bucket_floor(i), bucket_floor(i + 1));
                let within = (rank - before) / f64::from(n);
                let micros = (low + (high - low) * within).min(self.max_micros as f64);
                return Some(Duration::from_micros(micros as u64));
            }
        }
        Some(Duration::from_micros(self.max_micros))
    }

    fn summary(&self) -> Latencies {
        Latencies {
            count: self.count,
            mean: (self.count > 0).then(|| Duration::from_micros(self.sum_micros / self.count)),
            p50: self.quantile(0.50),
            p90: self.quantile(0.90),
            p99: self.quantile(0.99),
            max: (self.count > 0).then(|| Duration::from_micros(self.max_micros)),
        }
    }
}

/// Measures time to first token and inter-token latency, into
/// [`StreamReport::timing`].
///
/// Put it after [`UsageObserver`](crate::observe::usage) in the observer tuple so that
/// the output tokens are known when it computes time per output token.
///
/// ```
/// use tower_sse::SseLayer;
/// use tower_sse::TimingObserver;
///
/// let layer = SseLayer::new()
///     .observer(TimingObserver::default())
///     .on_end(|report: tower_sse::StreamReport| {
///         if let Some(timing) = report.timing {
///             println!("ttft {:?}, itl p99 {:?}", timing.time_to_first_token, timing.inter_token.p99);
///         }
///     });
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Default)]
pub struct TimingObserver {
    first: Option<Instant>,
    last: Option<Instant>,
    gaps: Histogram,
}

impl TimingObserver {
    /// A fresh observer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Observer for TimingObserver {
    #[inline]
    fn on_event(&mut self, _event: &EventRef<'_>, cx: &mut EventContext<'_>) {
        if !cx.is_content() || !cx.is_delivered() || !cx.is_forwarded() {
            return;
        }
        let at = cx.at();
        match self.last {
            None => self.first = Some(at),
            Some(last) => self.gaps.record(at.saturating_duration_since(last)),
        }
        self.last = Some(at);
    }

    fn on_end(&mut self, report: &mut StreamReport) {
        let decode_time = self
            .first
            .zip(self.last)
            .map(|(first, last)| last.saturating_duration_since(first));
        let output_tokens = report.usage.and_then(|u| u.output_tokens);
        let time_per_output_token = match (decode_time, output_tokens) {
            (Some(decode), Some(tokens)) if tokens > 1 && !decode.is_zero() => {
                Some(decode / u32::try_from(tokens - 1).unwrap_or(u32::MAX))
            }
            _ => None,
        };
        report.timing = Some(Timing {
            time_to_first_byte: report.time_to_first_byte(),
            time_to_first_token: self
                .first
                .map(|first| first.saturating_duration_since(report.started_at)),
            inter_token: self.gaps.summary(),
            decode_time,
            time_per_output_token,
            output_tokens_per_second: time_per_output_token.map(|tpot| 1.0 / tpot.as_secs_f64()),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_match_their_floors() {
        let mut last = 0;
        for micros in (0..10_000_000).step_by(997) {
            let b = bucket_of(micros);
            assert!(b >= last, "bucket went down at {micros}");
            last = b;
            if b + 1 < BUCKETS {
                assert!(
                    micros as f64 >= bucket_floor(b) * 0.999,
                    "{micros} below floor of {b}"
                );
                assert!(
                    (micros as f64) < bucket_floor(b + 1) * 1.001,
                    "{micros} above ceiling of {b}"
                );
            }
        }
        assert_eq!(bucket_of(u64::MAX / 2000), BUCKETS - 1);
    }

    #[test]
    fn percentiles_are_within_a_bucket_of_the_truth() {
        let mut h = Histogram::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let s = h.summary();
        assert_eq!(s.count, 100);
        assert_eq!(s.max, Some(Duration::from_millis(100)));
        assert_eq!(s.mean, Some(Duration::from_micros(50_500)));
        for (got, want) in [(s.p50, 50.0), (s.p90, 90.0), (s.p99, 99.0)] {
            let got = got.unwrap().as_secs_f64() * 1000.0;
            assert!((got - want).abs() / want < 0.14, "{got} vs {want}");
        }
    }

    #[test]
    fn empty_histogram_has_no_percentiles() {
        let s = Histogram::default().summary();
        assert_eq!(s, Latencies::default());
    }

    #[test]
    fn one_sample_is_its_own_percentiles() {
        let mut h = Histogram::default();
        h.record(Duration::from_millis(20));
        let s = h.summary();
        assert_eq!(s.p50, Some(Duration::from_millis(20)));
        assert_eq!(s.p99, Some(Duration::from_millis(20)));
    }
}
