//! The circuit breaker: an upstream that failed [`CircuitBreaker::failures`] times in a row
//! is skipped for [`CircuitBreaker::cool_down`].
//!
//! After the cool-down the upstream is tried again (half-open): one more failure opens it
//! again at once, one success closes it. Requests arriving together may all try it in that
//! moment; the breaker is a cheap guard against paying a dead upstream's latency on every
//! request, not a rate limiter. When every upstream of a request is open, the breaker is
//! ignored for it: trying is better than failing without a try.
//!
//! With the `metrics` feature, `tower_sse.failover.circuit_open` (a gauge per `upstream`)
//! is 1 while an upstream is skipped, and `tower_sse.failover.skipped_total` counts the
//! requests that skipped it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// When to stop trying an upstream for a while.
///
/// ```
/// use std::time::Duration;
/// use tower_sse::failover::CircuitBreaker;
///
/// let breaker = CircuitBreaker::default();
/// assert_eq!(breaker.failures, 5);
/// assert_eq!(breaker.cool_down, Duration::from_secs(30));
/// let strict = CircuitBreaker::new(2, Duration::from_secs(5));
/// assert_eq!(strict.failures, 2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CircuitBreaker {
    /// Failures in a row (attempts that failed before their commit point) that open the
    /// breaker. Default 5; at least 1.
    pub failures: u32,
    /// How long an open upstream is skipped. Default 30 s.
    pub cool_down: Duration,
}

impl CircuitBreaker {
    /// A breaker opening after `failures` failures in a row (at least 1) for `cool_down`.
    pub fn new(failures: u32, cool_down: Duration) -> Self {
        Self {
            failures: failures.max(1),
            cool_down,
        }
    }
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self::new(5, Duration::from_secs(30))
    }
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    open_until: Option<Instant>,
}

/// The health of each upstream of one layer (shared by its clones).
#[derive(Debug)]
pub(crate) struct Health {
    breaker: Option<CircuitBreaker>,
    states: Vec<Mutex<State>>,
}

impl Health {
    pub(crate) fn new(breaker: Option<CircuitBreaker>, upstreams: usize) -> Self {
        Self {
            breaker,
            states: (0..upstreams).map(|_| Mutex::default()).collect(),
        }
    }

    fn state(&self, upstream: usize) -> Option<std::sync::MutexGuard<'_, State>> {
        // A poisoned lock only means a panic elsewhere mid-update: the counts are still
        // numbers, keep using them.
        let lock = self.states.get(upstream)?;
        Some(lock.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether `upstream` may be tried now.
    pub(crate) fn is_available(&self, upstream: usize, now: Instant) -> bool {
        if self.breaker.is_none() {
            return true;
        }
        self.state(upstream)
            .is_none_or(|s| s.open_until.is_none_or(|until| now >= until))
    }

    pub(crate) fn success(&self, upstream: usize, _label: &str) {
        if self.breaker.is_none() {
            return;
        }
        if let Some(mut state) = self.state(upstream) {
            state.failures = 0;
            if state.open_until.take().is_some() {
                #[cfg(feature = "metrics")]
                metrics::gauge!(crate::metrics::names::FAILOVER_CIRCUIT_OPEN, "upstream" => _label.to_owned())
                    .set(0.0);
            }
        }
    }

    pub(crate) fn failure(&self, upstream: usize, now: Instant, _label: &str) {
        let Some(breaker) = self.breaker else {
            return;
        };
        if let Some(mut state) = self.state(upstream) {
            state.failures = state.failures.saturating_add(1);
            if state.failures >= breaker.failures {
                let was_open = state.open_until.is_some();
                state.open_until = Some(now + breaker.cool_down);
                if !was_open {
                    #[cfg(feature = "metrics")]
                    metrics::gauge!(crate::metrics::names::FAILOVER_CIRCUIT_OPEN, "upstream" => _label.to_owned())
                        .set(1.0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_failures_in_a_row_and_half_opens_after_the_cool_down() {
        let health = Health::new(Some(CircuitBreaker::new(2, Duration::from_secs(10))), 2);
        let now = Instant::now();
        health.failure(0, now, "a");
        assert!(health.is_available(0, now));
        health.success(0, "a");
        health.failure(0, now, "a");
        assert!(health.is_available(0, now), "a success reset the count");
        health.failure(0, now, "a");
        assert!(!health.is_available(0, now));
        assert!(health.is_available(1, now), "each upstream has its own");
        tokio::time::advance(Duration::from_secs(10)).await;
        let later = Instant::now();
        assert!(
            health.is_available(0, later),
            "half-open after the cool-down"
        );
        health.failure(0, later, "a");
        assert!(
            !health.is_available(0, later),
            "one more failure opens it again"
        );
        health.success(0, "a");
        assert!(health.is_available(0, later));
    }

    #[test]
    fn no_breaker_never_skips() {
        let health = Health::new(None, 1);
        let now = Instant::now();
        for _ in 0..100 {
            health.failure(0, now, "a");
        }
        assert!(health.is_available(0, now));
    }
}
