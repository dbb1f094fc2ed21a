//! What the gateway says about a request as a proxy: `X-Forwarded-For` (the client's address
//! appended to what the client or a proxy in front sent) and `X-Request-Id` (the client's,
//! when it sent a usable one, else made here), sent upstream, echoed in the response and
//! logged with the stream's line.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;

/// `x-request-id`.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `x-forwarded-for`.
const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The longest request id kept from a client; a longer one (or one with other than visible
/// ASCII) is replaced.
const MAX_REQUEST_ID: usize = 128;

/// The client's address, put into each request's extensions by the connection that read it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub(crate) SocketAddr);

/// Adds the proxy headers (see the module's text).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProxyHeadersLayer;

impl<S> tower::Layer<S> for ProxyHeadersLayer {
    type Service = ProxyHeaders<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ProxyHeaders { inner }
    }
}

/// The service of [`ProxyHeadersLayer`].
#[derive(Debug, Clone)]
pub(crate) struct ProxyHeaders<S> {
    inner: S,
}

impl<S, B, R> tower::Service<Request<B>> for ProxyHeaders<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = WithRequestId<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let id = request
            .headers()
            .get(REQUEST_ID)
            .filter(|id| usable(id))
            .cloned()
            .unwrap_or_else(new_request_id);
        request.headers_mut().insert(REQUEST_ID, id.clone());
        if let Some(ClientAddr(addr)) = request.extensions().get::<ClientAddr>().copied() {
            append_forwarded_for(request.headers_mut(), addr);
        }
        WithRequestId {
            future: self.inner.call(request),
            id: Some(id),
        }
    }
}

pin_project! {
    /// The response, with the request's id.
    pub(crate) struct WithRequestId<F> {
        #[pin]
        future: F,
        id: Option<HeaderValue>,
    }
}

impl<F, R, E> Future for WithRequestId<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.future.poll(cx))?;
        if let Some(id) = this.id.take() {
            response.headers_mut().insert(REQUEST_ID, id);
        }
        Poll::Ready(Ok(response))
    }
}

/// Visible ASCII, not too long: safe to log and to send on.
fn usable(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_REQUEST_ID && bytes.iter().all(u8::is_ascii_graphic)
}

/// 32 hex digits: a counter hashed with this process's random key (unique in the process,
/// not guessable from another id).
fn new_request_id() -> HeaderValue {
    static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let key = KEY.get_or_init(std::collections::hash_map::RandomState::new);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut high = key.build_hasher();
    high.write_u64(n);
    let mut low = key.build_hasher();
    low.write_u64(!n);
    let id = format!("{:016x}{:016x}", high.finish(), low.finish());
    HeaderValue::from_str(&id).expect("hex digits are a header value")
}

/// `X-Forwarded-For: <what came>, <client ip>`.
fn append_forwarded_for(headers: &mut http::HeaderMap, addr: SocketAddr) {
    let ip = addr.ip().to_string();
    let joined = match headers
        .get_all(&FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
    {
        before if before.is_empty() => ip,
        before => format!("{}, {ip}", before.join(", ")),
    };
    if let Ok(value) = HeaderValue::from_str(&joined) {
        headers.insert(FORWARDED_FOR, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_appended() {
        let mut headers = http::HeaderMap::new();
        let addr: SocketAddr = "10.0.0.7:5000".parse().unwrap();
        append_forwarded_for(&mut headers, addr);
        assert_eq!(headers[&FORWARDED_FOR], "10.0.0.7");
        headers.append(FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        append_forwarded_for(&mut headers, addr);
        assert_eq!(headers[&FORWARDED_FOR], "10.0.0.7, 1.2.3.4, 10.0.0.7");
    }

    #[test]
    fn request_ids_are_kept_when_usable_and_made_unique() {
        assert!(usable(&HeaderValue::from_static("abc-123")));
        assert!(!usable(&HeaderValue::from_static("a b")));
        assert!(!usable(&HeaderValue::from_str(&"x".repeat(200)).unwrap()));
        assert_ne!(new_request_id(), new_request_id());
        assert_eq!(new_request_id().len(), 32);
    }
}
