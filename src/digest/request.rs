//! [`RequestDigestLayer`]: SHA-256 of the request body; see the [module docs](crate::digest).

use std::fmt;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use bytes::Buf;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use sha2::Digest as _;
use sha2::Sha256;
use tower_layer::Layer;
use tower_service::Service;

use crate::report::Sha256Digest;

/// Hashes request bodies as they are read; see the [module docs](crate::digest).
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Full};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_sse::digest::{RequestDigestBody, RequestDigestHandle};
/// use tower_sse::{BoxError, RequestDigestLayer, Sha256Digest};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // A handler that reads the body, then answers with its digest.
/// let handler = service_fn(|request: Request<RequestDigestBody<Full<Bytes>>>| async move {
///     let handle = request.extensions().get::<RequestDigestHandle>().unwrap().clone();
///     assert_eq!(handle.digest(), None, "not read yet");
///     request.into_body().collect().await?;
///     let digest = handle.digest().expect("read to its end");
///     Ok::<_, BoxError>(Response::new(digest.to_hex()))
/// });
/// let service = RequestDigestLayer::new().layer(handler);
///
/// let body = Full::new(Bytes::from_static(br#"{"model":"m"}"#));
/// let response = service.oneshot(Request::new(body)).await.unwrap();
/// assert_eq!(response.into_body(), Sha256Digest::of(br#"{"model":"m"}"#).to_hex());
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
#[must_use]
pub struct RequestDigestLayer {
    _private: (),
}

impl RequestDigestLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for RequestDigestLayer {
    type Service = RequestDigest<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestDigest { inner }
    }
}

/// The service of [`RequestDigestLayer`]: wraps the request body in a
/// [`RequestDigestBody`] and puts its [`RequestDigestHandle`] into the request extensions.
#[derive(Debug, Clone)]
pub struct RequestDigest<S> {
    inner: S,
}

impl<S> RequestDigest<S> {
    /// Wrap a service.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwrap the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for RequestDigest<S>
where
    S: Service<Request<RequestDigestBody<B>>>,
    B: Body,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        crate::request::Arrival::stamp(&mut parts.extensions);
        let body = RequestDigestBody::new(body);
        parts.extensions.insert(body.handle());
        self.inner.call(Request::from_parts(parts, body))
    }
}

/// Where the digest of one request body appears once the body was read to its end.
///
/// Cheap to clone (one reference count); every clone sees the same digest.
/// [`RequestDigestLayer`] puts one into the request extensions, where a
/// [`DigestObserver`](crate::DigestObserver) or a handler picks it up.
#[derive(Clone)]
pub struct RequestDigestHandle(Arc<OnceLock<Sha256Digest>>);

impl RequestDigestHandle {
    fn new() -> Self {
        Self(Arc::new(OnceLock::new()))
    }

    /// The SHA-256 of the request body, once it was read to its end; `None` before that, and
    /// for ever if the body failed or was dropped before its end.
    pub fn digest(&self) -> Option<Sha256Digest> {
        self.0.get().copied()
    }

    fn set(&self, digest: Sha256Digest) {
        // Set once: the body finishes at most once.
        let _ = self.0.set(digest);
    }
}

impl fmt::Debug for RequestDigestHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RequestDigestHandle")
            .field(&self.digest())
            .finish()
    }
}

pin_project! {
    /// A request body that hashes its data frames as they are read; see the
    /// [module docs](crate::digest).
    ///
    /// Frames, errors, trailers and hints pass through untouched.
    pub struct RequestDigestBody<B> {
        #[pin]
        inner: B,
        // `None` once the digest is known, or lost (error, data that cannot be hashed).
        hasher: Option<Sha256>,
        handle: RequestDigestHandle,
    }
}

impl<B: Body> RequestDigestBody<B> {
    /// Wrap a body. A body already at its end gets the digest of nothing at once.
    pub fn new(inner: B) -> Self {
        let handle = RequestDigestHandle::new();
        let hasher = if inner.is_end_stream() {
            handle.set(Sha256Digest::from_hasher(Sha256::new()));
            None
        } else {
            Some(Sha256::new())
        };
        Self {
            inner,
            hasher,
            handle,
        }
    }
}

impl<B> RequestDigestBody<B> {
    /// The handle where the digest appears.
    pub fn handle(&self) -> RequestDigestHandle {
        self.handle.clone()
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Unwrap the body (the digest then never appears, unless it already did).
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> fmt::Debug for RequestDigestBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestDigestBody")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

impl<B> Body for RequestDigestBody<B>
where
    B: Body,
    B::Data: Buf,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let result = ready!(this.inner.as_mut().poll_frame(cx));
        match &result {
            None => finish(this.hasher, this.handle),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    hash_buf(this.hasher, data);
                } else if frame.is_trailers() {
                    finish(this.hasher, this.handle);
                }
                if this.inner.is_end_stream() {
                    finish(this.hasher, this.handle);
                }
            }
            Some(Err(_)) => *this.hasher = None,
        }
        Poll::Ready(result)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn finish(hasher: &mut Option<Sha256>, handle: &RequestDigestHandle) {
    if let Some(hasher) = hasher.take() {
        handle.set(Sha256Digest::from_hasher(hasher));
    }
}

/// Hash a buffer without consuming it. A buffer that cannot show all its bytes at once
/// (more than 64 pieces) makes the digest unavailable rather than wrong.
fn hash_buf(hasher: &mut Option<Sha256>, data: &impl Buf) {
    let Some(h) = hasher else {
        return;
    };
    let chunk = data.chunk();
    if chunk.len() == data.remaining() {
        h.update(chunk);
        return;
    }
    let mut slices = [IoSlice::new(&[]); 64];
    let n = data.chunks_vectored(&mut slices);
    let slices = &slices[..n];
    if slices.iter().map(|s| s.len()).sum::<usize>() != data.remaining() {
        *hasher = None;
        return;
    }
    for slice in slices {
        h.update(&**slice);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn chained_buffers_hash_like_their_bytes() {
        let mut hasher = Some(Sha256::new());
        let chain = Bytes::from_static(b"ab").chain(Bytes::from_static(b"c"));
        hash_buf(&mut hasher, &chain);
        let digest = Sha256Digest::from_hasher(hasher.unwrap());
        assert_eq!(digest, Sha256Digest::of(b"abc"));
    }
}
