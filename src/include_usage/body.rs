//! [`UsageRequestBody`] (the request, as the inner service reads it) and
//! [`IncludeUsageBody`] (the response).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};

use crate::BoxError;

/// The error of a request body that did not arrive before the upload deadline.
const UPLOAD_TIMED_OUT: &str = "the request body did not arrive in time";

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
        // when it has not ended by then (`timed_out` once it did).
        Original { #[pin] body: B, deadline: Option<Pin<Box<Sleep>>>, timed_out: bool },
        // The body read whole: one piece as it came, or the client's bytes around a splice
        // (slices of them and the inserted bytes, in order: never copied into one buffer).
        Buffered { pieces: Pieces, trailers: Option<HeaderMap> },
        // The first bytes read, then the rest of a body too large to read whole: the rest
        // is held to the upload deadline too.
        Chained {
            prefix: Option<Bytes>,
            rest: Pin<Box<B>>,
            deadline: Option<Pin<Box<Sleep>>>,
            timed_out: bool,
        },
        // The upload did not complete in time: what the inner service reads fails.
        Incomplete { failed: bool },
    }
}

impl<B> UsageRequestBody<B> {
    /// The body as it comes, failed if it has not ended by `deadline` (`None`: never).
    pub(super) fn original_until(body: B, deadline: Option<Instant>) -> Self
    where
        B: Body,
    {
        let deadline = timer(deadline, &body);
        Self {
            kind: RequestKind::Original {
                body,
                deadline,
                timed_out: false,
            },
        }
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

    /// `prefix`, then the rest of the body, failed if it has not ended by `deadline`.
    pub(super) fn chained(prefix: Bytes, rest: Pin<Box<B>>, deadline: Option<Instant>) -> Self
    where
        B: Body,
    {
        let deadline = timer(deadline, &*rest);
        Self {
            kind: RequestKind::Chained {
                prefix: Some(prefix),
                rest,
                deadline,
                timed_out: false,
            },
        }
    }
}

/// The upload deadline's timer, for a body not complete yet.
fn timer<B: Body>(deadline: Option<Instant>, body: &B) -> Option<Pin<Box<Sleep>>> {
    deadline
        .filter(|_| !body.is_end_stream())
        .map(|at| Box::pin(sleep_until(at)))
}

/// The next frame of a body held to the upload deadline: an error once it passed.
fn poll_until<B>(
    body: Pin<&mut B>,
    deadline: &mut Option<Pin<Box<Sleep>>>,
    timed_out: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if *timed_out {
        return Poll::Ready(None);
    }
    if let Some(sleep) = deadline
        && sleep.as_mut().poll(cx).is_ready()
    {
        *deadline = None;
        *timed_out = true;
        return Poll::Ready(Some(Err(UPLOAD_TIMED_OUT.into())));
    }
    let frame = ready!(body.poll_frame(cx));
    if frame.is_none() {
        // Complete: the timer is no longer needed.
        *deadline = None;
    }
    Poll::Ready(frame.map(|r| r.map_err(Into::into)))
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
            RequestKindProj::Original {
                body,
                deadline,
                timed_out,
            } => poll_until(body, deadline, timed_out, cx),
            RequestKindProj::Buffered { pieces, trailers } => Poll::Ready(
                pieces
                    .next()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
            RequestKindProj::Chained {
                prefix,
                rest,
                deadline,
                timed_out,
            } => match prefix.take() {
                Some(prefix) => Poll::Ready(Some(Ok(Frame::data(prefix)))),
                None => poll_until(rest.as_mut(), deadline, timed_out, cx),
            },
            RequestKindProj::Incomplete { failed } => Poll::Ready(
                (!std::mem::replace(failed, true)).then(|| Err(UPLOAD_TIMED_OUT.into())),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RequestKind::Original {
                body, timed_out, ..
            } => *timed_out || body.is_end_stream(),
            RequestKind::Buffered { pieces, trailers } => pieces.len == 0 && trailers.is_none(),
            RequestKind::Chained {
                prefix,
                rest,
                timed_out,
                ..
            } => prefix.is_none() && (*timed_out || rest.is_end_stream()),
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
