//! `--max-body-bytes`: tower-http's `RequestBodyLimitLayer` refuses a body whose announced
//! length is over the limit (`413` before a byte of it is read), and fails one that grows
//! past it (chunked, HTTP/2) where it is read: the `IncludeUsageLayer`'s bounded buffer, or
//! the upstream client. Those answer as for any broken body (`400`, `502`); [`Overflow`],
//! just inside the limit, sees the limit's error go by and makes the answer a `413`,
//! whoever read the body.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use axum::body::Body as AxumBody;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, StatusCode};
use http_body_util::LengthLimitError;
use hyper::body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::forward::caused_by;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The layer of [`Overflow`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct OverflowLayer;

impl<S> tower::Layer<S> for OverflowLayer {
    type Service = Overflow<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Overflow { inner }
    }
}

/// Answers `413` when the request body failed because it grew past the limit.
#[derive(Debug, Clone)]
pub(crate) struct Overflow<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for Overflow<S>
where
    S: tower::Service<Request<AxumBody>, Response = Response>,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let overflowed = Arc::new(AtomicBool::new(false));
        let request = request.map(|inner| {
            AxumBody::new(Watch {
                inner,
                overflowed: overflowed.clone(),
            })
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            if overflowed.load(Ordering::Relaxed) {
                return Ok(too_large());
            }
            Ok(response)
        })
    }
}

fn too_large() -> Response {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        [(CONTENT_TYPE, "application/json")],
        r#"{"error":{"type":"request_too_large","message":"the request body is larger than the gateway accepts"}}"#,
    )
        .into_response()
}

pin_project! {
    /// A request body that notes when it failed for being over the limit.
    struct Watch<B> {
        #[pin]
        inner: B,
        overflowed: Arc<AtomicBool>,
    }
}

impl<B> Body for Watch<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match ready!(this.inner.poll_frame(cx)) {
            Some(Err(e)) => {
                let e = e.into();
                // Wrapped on the way (axum boxes body errors into its own).
                if caused_by::<LengthLimitError>(&*e) {
                    this.overflowed.store(true, Ordering::Relaxed);
                }
                Poll::Ready(Some(Err(e)))
            }
            other => Poll::Ready(other.map(|frame| frame.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
