//! [`StreamLimitBody`]: holds the permit until the stream ends, or carries a rejection.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::limit::layer::Settings;
use crate::limit::permit::{DrainPermits, Permit};

pub(super) fn rejection<B>(settings: &Settings) -> Response<StreamLimitBody<B>> {
    let mut response = Response::new(StreamLimitBody {
        kind: BodyKind::Rejected {
            data: Some(settings.rejection_body.clone()),
        },
    });
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(RETRY_AFTER, settings.retry_after.clone());
    headers.insert(CONTENT_TYPE, settings.rejection_type.clone());
    response
}

pin_project! {
    /// The response body of [`StreamLimit`]: the inner body, holding the stream's permit
    /// until it ends, fails or is dropped (or, when an [`SseLayer`](crate::SseLayer) inside
    /// drains the upstream after a disconnect, until that drain ends); or the body of a
    /// rejection.
    ///
    /// Frames, errors and hints (`size_hint`, `is_end_stream`) of the inner body pass through
    /// untouched, and its error type is kept.
    pub struct StreamLimitBody<B> {
        #[pin]
        pub(super) kind: BodyKind<B>,
    }

    impl<B> PinnedDrop for StreamLimitBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before the stream's end: a layer inside that drains after a disconnect
            // holds the permit until its drain ends. Runs before the inner body is dropped
            // (which starts the drain).
            if let BodyProj::Limited { permit, drain, .. } = this.project().kind.project()
                && let Some(permit) = permit.take()
            {
                drain.give(permit);
            }
        }
    }
}

pin_project! {
    #[project = BodyProj]
    pub(super) enum BodyKind<B> {
        // The permit is declared first so that it is released before the body's own drop
        // (unless handed to a layer inside that drains, see `DrainPermits`).
        Limited { permit: Option<Permit>, drain: DrainPermits, #[pin] body: B },
        Rejected { data: Option<Bytes> },
    }
}

impl<B> StreamLimitBody<B> {
    /// Whether this body still holds a permit (shared with a draining
    /// [`SseLayer`](crate::SseLayer) inside, if any).
    pub fn holds_permit(&self) -> bool {
        matches!(
            self.kind,
            BodyKind::Limited {
                permit: Some(_),
                ..
            }
        )
    }

    /// Whether this is the body of a rejection (`503`).
    pub fn is_rejection(&self) -> bool {
        matches!(self.kind, BodyKind::Rejected { .. })
    }
}

impl<B> fmt::Debug for StreamLimitBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamLimitBody")
            .field("holds_permit", &self.holds_permit())
            .field("is_rejection", &self.is_rejection())
            .finish_non_exhaustive()
    }
}

impl<B> Body for StreamLimitBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            BodyProj::Limited {
                permit, mut body, ..
            } => {
                let result = ready!(body.as_mut().poll_frame(cx));
                let ended = match &result {
                    Some(Ok(frame)) => frame.is_trailers() || body.is_end_stream(),
                    Some(Err(_)) | None => true,
                };
                if ended {
                    drop(permit.take());
                }
                Poll::Ready(result)
            }
            BodyProj::Rejected { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Limited { body, .. } => body.is_end_stream(),
            BodyKind::Rejected { data } => data.is_none(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Limited { body, .. } => body.size_hint(),
            BodyKind::Rejected { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
