//! [`UsageRequestBody`] (the request, as the inner service reads it) and
//! [`IncludeUsageBody`] (the response).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::BoxError;
use crate::request::{UploadBody, UploadTimedOut, UploadWatch};

pin_project! {
    /// The request body handed to the inner service: the original body, or the bytes the
    /// layer read (changed or not), or those bytes followed by the rest of a large body.
    pub struct UsageRequestBody<B> {
        #[pin]
        pub(super) kind: RequestKind<B>,
    }
}

pin_project! {
    #[project = RequestKindProj]
    pub(super) enum RequestKind<B> {
        // Not read by the layer: handed on as it comes, but failed at the upload deadline
        // when it has not ended by then.
        Original { #[pin] body: UploadBody<B> },
        // The body read whole: one piece as it came, or the client's bytes around a splice
        // (slices of them and the inserted bytes, in order: never copied into one buffer).
        Buffered { pieces: Pieces, trailers: Option<HeaderMap> },
        // The first bytes read, then the rest of a body too large to read whole: the rest
        // is held to the upload deadline too.
        Chained {
            prefix: Option<Bytes>,
            #[pin]
            rest: UploadBody<Pin<Box<B>>>,
        },
        // The upload did not complete in time: what the inner service reads fails.
        Incomplete { failed: bool },
    }
}

impl<B> UsageRequestBody<B> {
    /// The body as it comes, failed if it has not ended by `deadline` (`None`: never), and
    /// the watch an `SseLayer` inside reads to answer `408` when it did.
    pub(super) fn original_until(body: B, deadline: Option<Instant>) -> (Self, Option<UploadWatch>)
    where
        B: Body,
    {
        let (body, watch) = UploadBody::watched(body, deadline);
        (
            Self {
                kind: RequestKind::Original { body },
            },
            watch,
        )
    }

    pub(super) fn buffered(pieces: impl Into<Pieces>, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: RequestKind::Buffered {
                pieces: pieces.into(),
                trailers,
            },
        }
    }

    pub(super) fn incomplete() -> Self {
        Self {
            kind: RequestKind::Incomplete { failed: false },
        }
    }

    /// `prefix`, then the rest of the body, failed if it has not ended by `deadline`; and
    /// its watch.
    pub(super) fn chained(
        prefix: Bytes,
        rest: Pin<Box<B>>,
        deadline: Option<Instant>,
    ) -> (Self, Option<UploadWatch>)
    where
        B: Body,
    {
        let (rest, watch) = UploadBody::watched(rest, deadline);
        (
            Self {
                kind: RequestKind::Chained {
                    prefix: Some(prefix),
                    rest,
                },
            },
            watch,
        )
    }
}

impl<B> fmt::Debug for UsageRequestBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageRequestBody").finish_non_exhaustive()
    }
}

impl<B> Body for UsageRequestBody<B>
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
        match self.project().kind.project() {
            RequestKindProj::Original { body } => body.poll_frame(cx),
            RequestKindProj::Buffered { pieces, trailers } => Poll::Ready(
                pieces
                    .next()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
            RequestKindProj::Chained { prefix, rest } => match prefix.take() {
                Some(prefix) => Poll::Ready(Some(Ok(Frame::data(prefix)))),
                None => rest.poll_frame(cx),
            },
            RequestKindProj::Incomplete { failed } => Poll::Ready(
                (!std::mem::replace(failed, true)).then(|| Err(Box::new(UploadTimedOut).into())),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RequestKind::Original { body } => body.is_end_stream(),
            RequestKind::Buffered { pieces, trailers } => pieces.len == 0 && trailers.is_none(),
            RequestKind::Chained { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
            RequestKind::Incomplete { failed } => *failed,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RequestKind::Original { body, .. } => body.size_hint(),
            RequestKind::Incomplete { .. } => SizeHint::default(),
            RequestKind::Buffered { pieces, .. } => SizeHint::with_exact(pieces.len as u64),
            RequestKind::Chained { prefix, rest, .. } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + extra);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
        }
    }
}

/// The bytes of a buffered body, in order, and how many are left. Empty pieces are never
/// handed out.
#[derive(Debug, Default)]
pub(super) struct Pieces {
    first: Option<Bytes>,
    /// The pieces after `first`, last one first (taken from the end).
    rest: Vec<Bytes>,
    pub(super) len: usize,
}

impl Pieces {
    /// The pieces in order (a spliced body).
    pub(super) fn from_vec(mut pieces: Vec<Bytes>) -> Self {
        pieces.retain(|p| !p.is_empty());
        let len = pieces.iter().map(Bytes::len).sum();
        pieces.reverse();
        Self {
            first: pieces.pop(),
            rest: pieces,
            len,
        }
    }

    fn next(&mut self) -> Option<Bytes> {
        let piece = self.first.take().or_else(|| self.rest.pop())?;
        self.len -= piece.len();
        Some(piece)
    }

    /// All the bytes, copied into one buffer (tests).
    #[cfg(test)]
    pub(super) fn to_vec(&self) -> Vec<u8> {
        self.first
            .iter()
            .chain(self.rest.iter().rev())
            .flat_map(|p| p.iter().copied())
            .collect()
    }
}

impl From<Bytes> for Pieces {
    fn from(data: Bytes) -> Self {
        Self {
            len: data.len(),
            first: (!data.is_empty()).then_some(data),
            rest: Vec::new(),
        }
    }
}

pin_project! {
    /// The response body of [`IncludeUsage`]: the inner service's, or the layer's own error.
    pub struct IncludeUsageBody<B> {
        #[pin]
        pub(super) kind: ResponseKind<B>,
    }
}

pin_project! {
    #[project = ResponseKindProj]
    pub(super) enum ResponseKind<B> {
        Inner { #[pin] body: B },
        Full { data: Option<Bytes> },
    }
}

impl<B> IncludeUsageBody<B> {
    pub(super) fn inner(body: B) -> Self {
        Self {
            kind: ResponseKind::Inner { body },
        }
    }

    pub(super) fn full(data: Bytes) -> Self {
        Self {
            kind: ResponseKind::Full { data: Some(data) },
        }
    }
}

impl<B> fmt::Debug for IncludeUsageBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncludeUsageBody").finish_non_exhaustive()
    }
}

impl<B> Body for IncludeUsageBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            ResponseKindProj::Inner { body } => {
                Poll::Ready(ready!(body.poll_frame(cx)).map(|r| r.map_err(Into::into)))
            }
            ResponseKindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ResponseKind::Inner { body } => body.is_end_stream(),
            ResponseKind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ResponseKind::Inner { body } => body.size_hint(),
            ResponseKind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
