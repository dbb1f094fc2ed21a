//! [`StreamLimitLayer`]: its settings, shared by its services.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use tokio::sync::Semaphore;
use tower_layer::Layer;

use super::{ContentTypeIsStream, WhenFull};
use crate::limit::OpenStreams;
use crate::limit::StreamLimit;

pub(super) const DEFAULT_REJECTION: &str =
    r#"{"error":{"type":"too_many_streams","message":"too many open streams, retry later"}}"#;

/// Limits open streams; see the [module docs](crate::limit).
///
/// ```
/// use std::time::Duration;
/// use tower_sse::StreamLimitLayer;
/// use tower_sse::limit::WhenFull;
///
/// let reject = StreamLimitLayer::new(1000).retry_after(Duration::from_secs(5));
/// let wait = StreamLimitLayer::new(64).when_full(WhenFull::Wait);
/// # let _ = (reject, wait);
/// ```
#[must_use]
pub struct StreamLimitLayer<P = ContentTypeIsStream> {
    pub(super) settings: Arc<Settings>,
    pub(super) predicate: P,
}

#[derive(Clone)]
pub(super) struct Settings {
    pub(super) semaphore: Arc<Semaphore>,
    pub(super) max: usize,
    /// Rejections so far, for [`OpenStreams::rejected`].
    pub(super) rejected: Arc<AtomicU64>,
    pub(super) when_full: WhenFull,
    pub(super) retry_after: HeaderValue,
    pub(super) rejection_type: HeaderValue,
    pub(super) rejection_body: Bytes,
}

impl StreamLimitLayer {
    /// At most `max` open streams (clamped to Tokio's largest semaphore, `usize::MAX >> 3`).
    /// Rejects with `503` when full; `Retry-After: 1`.
    pub fn new(max: usize) -> Self {
        let max = max.min(Semaphore::MAX_PERMITS);
        Self {
            settings: Arc::new(Settings {
                semaphore: Arc::new(Semaphore::new(max)),
                max,
                rejected: Arc::new(AtomicU64::new(0)),
                when_full: WhenFull::Reject,
                retry_after: HeaderValue::from_static("1"),
                rejection_type: HeaderValue::from_static("application/json"),
                rejection_body: Bytes::from_static(DEFAULT_REJECTION.as_bytes()),
            }),
            predicate: ContentTypeIsStream,
        }
    }
}

impl<P> StreamLimitLayer<P> {
    pub(super) fn with(mut self, f: impl FnOnce(&mut Settings)) -> Self {
        f(Arc::make_mut(&mut self.settings));
        self
    }

    /// Reject (the default) or wait when every permit is taken.
    pub fn when_full(self, when_full: WhenFull) -> Self {
        self.with(|s| s.when_full = when_full)
    }

    /// The `Retry-After` of rejections, in whole seconds (rounded up). Default: 1 second.
    pub fn retry_after(self, after: Duration) -> Self {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        self.with(|s| s.retry_after = HeaderValue::from(secs))
    }

    /// The body of rejections, and its content type. Default: `application/json`,
    /// `{"error":{"type":"too_many_streams","message":"too many open streams, retry later"}}`.
    pub fn rejection_body(self, content_type: HeaderValue, body: impl Into<Bytes>) -> Self {
        let body = body.into();
        self.with(|s| {
            s.rejection_type = content_type;
            s.rejection_body = body;
        })
    }

    /// Decide which responses are streams that keep their permit (default:
    /// [`ContentTypeIsStream`]).
    pub fn stream_predicate<P2>(self, predicate: P2) -> StreamLimitLayer<P2> {
        StreamLimitLayer {
            settings: self.settings,
            predicate,
        }
    }

    /// Permits held now: open streams, and requests waiting for their response head.
    pub fn open_streams(&self) -> usize {
        self.counter().get()
    }

    /// A handle that reads [`open_streams`](Self::open_streams) and the count of
    /// [rejections](OpenStreams::rejected), for metrics or health checks elsewhere.
    pub fn counter(&self) -> OpenStreams {
        OpenStreams {
            semaphore: self.settings.semaphore.clone(),
            max: self.settings.max,
            rejected: self.settings.rejected.clone(),
        }
    }
}

impl<P: Clone> Clone for StreamLimitLayer<P> {
    fn clone(&self) -> Self {
        Self {
            settings: self.settings.clone(),
            predicate: self.predicate.clone(),
        }
    }
}

impl<P> fmt::Debug for StreamLimitLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamLimitLayer")
            .field("settings", &self.settings)
            .field("predicate", &std::any::type_name::<P>())
            .finish()
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("max", &self.max)
            .field(
                "open",
                &(self.max - self.semaphore.available_permits().min(self.max)),
            )
            .field("when_full", &self.when_full)
            .field("retry_after", &self.retry_after)
            .field("rejection_type", &self.rejection_type)
            .finish_non_exhaustive()
    }
}

impl<S, P: Clone> Layer<S> for StreamLimitLayer<P> {
    type Service = StreamLimit<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamLimit {
            inner,
            settings: self.settings.clone(),
            predicate: self.predicate.clone(),
            reserved: None,
            acquiring: Mutex::new(None),
        }
    }
}
