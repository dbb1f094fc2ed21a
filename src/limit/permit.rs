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
    crate::metrics::limit_rejected();
}

/// One permit; counted by the gauge while it lives.
pub(super) struct Permit {
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

/// The permit of one admitted request, as the limit's future and body hold it.
///
/// It is shared (an `Arc`) so that a layer inside the limit can keep the permit past the
/// body's drop: an [`SseLayer`](crate::SseLayer) draining the upstream after a disconnect
/// claims it (`claim`). The permit goes back to the semaphore, exactly once, at the first of:
///
/// - [`release`](Self::release), called by the limit when the stream ends or turns out not to
///   be one: whoever else holds the handle then holds an empty one;
/// - the drop of the last handle (the client went away and nothing drains, or the drain ended).
pub(crate) struct SharedPermit(Arc<Mutex<Option<Permit>>>);

impl SharedPermit {
    pub(super) fn new(permit: Permit) -> Self {
        Self(Arc::new(Mutex::new(Some(permit))))
    }

    /// Give the permit back now, whoever else holds this handle.
    pub(super) fn release(self) {
        let permit = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        drop(permit);
    }

    /// What the limit leaves in the request extensions for `claim`.
    #[cfg(feature = "drain")]
    fn claimable(&self) -> Claimable {
        Claimable(Arc::downgrade(&self.0))
    }
}

impl fmt::Debug for SharedPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedPermit")
    }
}

/// A weak reference to a [`SharedPermit`]'s permit. Weak, so that a service that keeps the
/// request (or its extensions) never keeps a permit by accident; only `claim` turns it into
/// a handle.
#[cfg(feature = "drain")]
#[derive(Clone)]
struct Claimable(std::sync::Weak<Mutex<Option<Permit>>>);

/// The request extension: the permits of the limits this request passed (usually one;
/// nested limits each add theirs).
#[cfg(feature = "drain")]
#[derive(Clone)]
struct Claimables(Vec<Claimable>);

/// Leave `permit` claimable by a layer inside the limit (see `claim`).
#[cfg(feature = "drain")]
pub(super) fn offer<B>(mut request: http::Request<B>, permit: &SharedPermit) -> http::Request<B> {
    let extensions = request.extensions_mut();
    match extensions.get_mut::<Claimables>() {
        Some(claimables) => claimables.0.push(permit.claimable()),
        None => {
            extensions.insert(Claimables(vec![permit.claimable()]));
        }
    }
    request
}

/// Take the permits that limits outside left in these request extensions: the caller holds
/// them until it drops them (the drain task of an [`SseLayer`](crate::SseLayer)), unless the
/// limit releases them first (the stream ended, or was not one). Removes the extension, so
/// that the service inside never sees it.
#[cfg(feature = "drain")]
pub(crate) fn claim(extensions: &mut http::Extensions) -> Vec<SharedPermit> {
    extensions
        .remove::<Claimables>()
        .map(|claimables| {
            claimables
                .0
                .into_iter()
                .filter_map(|c| c.0.upgrade().map(SharedPermit))
                .collect()
        })
        .unwrap_or_default()
}

pub(super) type Acquire =
    Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;
