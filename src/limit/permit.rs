//! Permits, and the count of open streams.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

#[cfg(feature = "metrics")]
use crate::metrics::names::LIMIT_OPEN_STREAMS as OPEN_STREAMS_GAUGE;

/// Reads the number of open streams of a [`StreamLimitLayer`](crate::StreamLimitLayer)
/// (permits held), and how many requests it rejected.
#[derive(Clone)]
pub struct OpenStreams {
    pub(super) semaphore: Arc<Semaphore>,
    pub(super) max: usize,
    pub(super) rejected: Arc<AtomicU64>,
}

impl OpenStreams {
    /// Permits held now.
    pub fn get(&self) -> usize {
        self.max - self.semaphore.available_permits().min(self.max)
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Requests answered `503` because every permit was taken, since the layer was made (by
    /// every service of the layer and its clones). A running total, like a counter: take
    /// differences for rates. With the `metrics` feature the counter
    /// `tower_sse.limit.rejections` counts the same rejections.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for OpenStreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenStreams")
            .field("open", &self.get())
            .field("max", &self.max)
            .field("rejected", &self.rejected())
            .finish()
    }
}

/// Count one rejection: for [`OpenStreams::rejected`], and the metric.
pub(super) fn count_rejection(rejected: &AtomicU64) {
    rejected.fetch_add(1, Ordering::Relaxed);
    #[cfg(feature = "metrics")]
    metrics::counter!(crate::metrics::names::LIMIT_REJECTIONS, "reason" => LIMIT_FULL).increment(1);
}

/// The `reason` of a rejection because every permit was taken (the only reason so far; the
/// label leaves room for others without renaming the metric).
#[cfg(feature = "metrics")]
const LIMIT_FULL: &str = "limit_full";

/// One permit; counted by the gauge while it lives.
pub(super) struct Permit {
    pub(super) _permit: OwnedSemaphorePermit,
}

impl Permit {
    pub(super) fn new(permit: OwnedSemaphorePermit) -> Self {
        #[cfg(feature = "metrics")]
        metrics::gauge!(OPEN_STREAMS_GAUGE).increment(1.0);
        Self { _permit: permit }
    }
}

#[cfg(feature = "metrics")]
impl Drop for Permit {
    fn drop(&mut self) {
        metrics::gauge!(OPEN_STREAMS_GAUGE).decrement(1.0);
    }
}

pub(super) type Acquire =
    Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;
