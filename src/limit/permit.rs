//! Permits, and the count of open streams.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// Reads the number of open streams of a [`StreamLimitLayer`](crate::StreamLimitLayer)
/// (permits held), and how many requests it rejected.
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response, StatusCode};
/// use http_body_util::Full;
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_sse::StreamLimitLayer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let upstream = service_fn(|_: Request<()>| async {
///     let response = Response::builder()
///         .header("content-type", "text/event-stream")
///         .body(Full::new(Bytes::from_static(b"data: hi\n\n")))
///         .unwrap();
///     Ok::<_, std::convert::Infallible>(response)
/// });
/// let layer = StreamLimitLayer::new(1);
/// let open = layer.counter();
/// let service = layer.layer(upstream);
///
/// let first = service.clone().oneshot(Request::new(())).await.unwrap();
/// assert_eq!((open.get(), open.max()), (1, 1)); // the body holds the permit
/// let second = service.clone().oneshot(Request::new(())).await.unwrap();
/// assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
/// assert_eq!(open.rejected(), 1);
/// drop(first);
/// assert_eq!(open.get(), 0);
/// # }
/// ```
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
    /// `tower_sse.limit.rejections_total` counts the same rejections.
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
    crate::metrics::limit_rejected();
}

/// One permit; counted by the gauge while it lives.
pub(crate) struct Permit {
    pub(super) _permit: OwnedSemaphorePermit,
}

impl Permit {
    pub(super) fn new(permit: OwnedSemaphorePermit) -> Self {
        #[cfg(feature = "metrics")]
        crate::metrics::limit_permit_taken();
        Self { _permit: permit }
    }
}

#[cfg(feature = "metrics")]
impl Drop for Permit {
    fn drop(&mut self) {
        crate::metrics::limit_permit_released();
    }
}

/// Where the [`StreamLimitLayer`](crate::StreamLimitLayer)s outside hand their permits
/// when a stream's body is dropped before its end, so that an
/// [`SseLayer`](crate::SseLayer) inside that drains the upstream after a disconnect holds
/// them until the drain ends (then releases them, before its report).
///
/// Made (one allocation) only by a layer that drains after a disconnect, for each stream,
/// and left in the response extensions for the limits outside; a limit that finds none
/// holds its permit in its own body, unshared (no allocation). A limit whose stream ends, or
/// whose response is not a stream, releases its permit itself and hands nothing over.
#[derive(Clone, Default)]
pub(crate) struct DrainPermits(Option<Arc<Mutex<Vec<Permit>>>>);

impl DrainPermits {
    /// A place for the permits of the limits outside (a stream that may drain).
    #[cfg(feature = "drain")]
    pub(crate) fn new() -> Self {
        Self(Some(Arc::default()))
    }

    /// Nowhere: the stream never drains, the limits keep their permits.
    pub(crate) fn none() -> Self {
        Self(None)
    }

    /// Whether this is a place for permits (a stream that may drain).
    pub(crate) fn is_some(&self) -> bool {
        self.0.is_some()
    }

    /// Hand `permit` over (the limit's body is dropped before the stream's end).
    pub(super) fn give(&self, permit: Permit) {
        if let Some(permits) = &self.0 {
            permits
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(permit);
        }
    }

    /// Release the permits handed over.
    pub(crate) fn clear(&mut self) {
        if let Some(permits) = self.0.take() {
            let taken =
                std::mem::take(&mut *permits.lock().unwrap_or_else(PoisonError::into_inner));
            drop(taken);
        }
    }
}

impl fmt::Debug for DrainPermits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DrainPermits")
    }
}

pub(super) type Acquire =
    Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;
