//! [`StreamLimit`], the service.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tokio::sync::TryAcquireError;
use tower_service::Service;

use super::{ContentTypeIsStream, StreamPredicate, WhenFull};
use crate::limit::StreamLimitBody;
use crate::limit::StreamLimitFuture;
use crate::limit::future::FutureKind;
use crate::limit::layer::Settings;
use crate::limit::permit::Acquire;
use crate::limit::permit::{Permit, count_rejection};

/// The service of [`StreamLimitLayer`](crate::StreamLimitLayer).
///
/// Cloning it never copies a permit reserved by `poll_ready`: a clone starts not ready.
pub struct StreamLimit<S, P = ContentTypeIsStream> {
    pub(super) inner: S,
    pub(super) settings: Arc<Settings>,
    pub(super) predicate: P,
    /// Wait mode: the permit `poll_ready` acquired for the next `call`.
    pub(super) reserved: Option<Permit>,
    /// Wait mode: the pending acquisition. In a `Mutex` only so that the service is `Sync`
    /// (never locked: it is only reached through `&mut self`).
    pub(super) acquiring: Mutex<Option<Acquire>>,
}

impl<S, P> StreamLimit<S, P> {
    /// Permits held now: open streams, and requests waiting for their response head.
    pub fn open_streams(&self) -> usize {
        self.settings.max
            - self
                .settings
                .semaphore
                .available_permits()
                .min(self.settings.max)
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwrap the service (a reserved permit is released).
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Wait mode: get a permit for the next call.
    pub(super) fn poll_acquire(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let acquiring = self
            .acquiring
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if acquiring.is_none() {
            match self.settings.semaphore.clone().try_acquire_owned() {
                Ok(permit) => {
                    self.reserved = Some(Permit::new(permit));
                    return Poll::Ready(());
                }
                // Never closed; should it be, `call` answers 503.
                Err(TryAcquireError::Closed) => return Poll::Ready(()),
                Err(TryAcquireError::NoPermits) => {
                    *acquiring = Some(Box::pin(self.settings.semaphore.clone().acquire_owned()));
                }
            }
        }
        let Some(future) = acquiring.as_mut() else {
            return Poll::Ready(());
        };
        let result = ready!(future.as_mut().poll(cx));
        *acquiring = None;
        if let Ok(permit) = result {
            self.reserved = Some(Permit::new(permit));
        }
        Poll::Ready(())
    }
}

impl<S: Clone, P: Clone> Clone for StreamLimit<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            settings: self.settings.clone(),
            predicate: self.predicate.clone(),
            reserved: None,
            acquiring: Mutex::new(None),
        }
    }
}

impl<S: fmt::Debug, P> fmt::Debug for StreamLimit<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamLimit")
            .field("inner", &self.inner)
            .field("settings", &self.settings)
            .field("reserved", &self.reserved.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, P, ReqBody, ResBody> Service<Request<ReqBody>> for StreamLimit<S, P>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    P: StreamPredicate<ResBody> + Clone,
{
    type Response = Response<StreamLimitBody<ResBody>>;
    type Error = S::Error;
    type Future = StreamLimitFuture<S::Future, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.settings.when_full == WhenFull::Wait && self.reserved.is_none() {
            ready!(self.poll_acquire(cx));
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        crate::request::Arrival::stamp(request.extensions_mut());
        let permit = self.reserved.take().or_else(|| {
            self.settings
                .semaphore
                .clone()
                .try_acquire_owned()
                .ok()
                .map(Permit::new)
        });
        let kind = match permit {
            Some(permit) => FutureKind::Waiting {
                future: self.inner.call(request),
                permit: Some(permit),
                predicate: self.predicate.clone(),
            },
            None => {
                // Reject mode, or wait mode called without `poll_ready` reserving a permit:
                // either way, every permit was taken.
                count_rejection(&self.settings.rejected);
                FutureKind::Rejected {
                    settings: self.settings.clone(),
                }
            }
        };
        StreamLimitFuture { kind }
    }
}
