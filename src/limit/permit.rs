//! Permits, and the count of open streams.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

#[cfg(feature = "metrics")]
use crate::metrics::names::LIMIT_OPEN_STREAMS as OPEN_STREAMS_GAUGE;

/// Reads the number of open streams of a [`StreamLimitLayer`](crate::StreamLimitLayer) (permits held).
#[derive(Clone)]
pub struct OpenStreams {
    pub(super) semaphore: Arc<Semaphore>,
    pub(super) max: usize,
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
}

impl fmt::Debug for OpenStreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenStreams")
            .field("open", &self.get())
            .field("max", &self.max)
            .finish()
    }
}

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
