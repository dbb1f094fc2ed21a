//! [`KeptBody`]: a request body a layer read before its inner service (whole and kept, or
//! up to a bound and then passed on), and [`read_up_to`], the bounded read behind it.
//!
//! The budget layer reads a body to estimate it and the failover layer to send it again: both
//! hand their inner service the same kind of body, so it is one type, with one read.

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// A request body a tower-sse layer read before calling its inner service: the bytes it
    /// kept (read whole, then sent from memory, as often as the layer needs), or the original
    /// body, after the bytes already read from it when it was larger than the layer keeps.
    ///
    /// [`BudgetLayer`](crate::budget::BudgetLayer) hands it to its inner service as
    /// [`BudgetRequestBody`](crate::budget::BudgetRequestBody) and
    /// [`Failover`](crate::failover::Failover) to each upstream as
    /// [`ReplayBody`](crate::failover::ReplayBody): both names are this type.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use tower_sse::request::KeptBody;
    ///
    /// // What an inner service does with it: read it like any other body.
    /// async fn text(body: KeptBody<Full<Bytes>>) -> String {
    ///     let bytes = body.collect().await.unwrap().to_bytes();
    ///     String::from_utf8(bytes.to_vec()).unwrap()
    /// }
    /// # let _ = text;
    /// ```
    pub struct KeptBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Kept { data: Option<Bytes>, trailers: Option<HeaderMap> },
        Passing { prefix: VecDeque<Bytes>, #[pin] rest: B },
    }
}

impl<B> KeptBody<B> {
    /// The bytes read whole, and the trailers that ended them.
    pub(crate) fn kept(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: Kind::Kept {
                data: (!data.is_empty()).then_some(data),
                trailers,
            },
        }
    }

    /// The chunks read so far, then the rest of `rest`, once.
    pub(crate) fn passing(prefix: VecDeque<Bytes>, rest: B) -> Self {
        Self {
            kind: Kind::Passing { prefix, rest },
        }
    }

    /// `body` untouched (nothing read from it).
    pub(crate) fn original(body: B) -> Self {
        Self::passing(VecDeque::new(), body)
    }
}

impl<B> fmt::Debug for KeptBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Kept { data, .. } => f
                .debug_struct("KeptBody::Kept")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Passing { prefix, .. } => f
                .debug_struct("KeptBody::Passing")
                .field("prefix_chunks", &prefix.len())
                .finish_non_exhaustive(),
        }
    }
}

impl<B> Body for KeptBody<B>
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
            KindProj::Kept { data, trailers } => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
            KindProj::Passing { prefix, rest } => match prefix.pop_front() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => rest.poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Kept { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Passing { prefix, rest } => prefix.is_empty() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Kept { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, Bytes::len) as u64)
            }
            Kind::Passing { prefix, rest } => {
                let held: u64 = prefix.iter().map(|c| c.len() as u64).sum();
                let hint = rest.size_hint();
                let mut sum = SizeHint::new();
                sum.set_lower(hint.lower().saturating_add(held));
                if let Some(upper) = hint.upper() {
                    sum.set_upper(upper.saturating_add(held));
                }
                sum
            }
        }
    }
}

/// A request body read up to a bound by [`read_up_to`].
pub(crate) enum ReadUpTo {
    /// The whole body (at most the bound), and the trailers that ended it.
    Whole(Bytes, Option<HeaderMap>),
    /// Larger than the bound: the chunks read so far (none when the body's size hint said so
    /// before a byte was read). The rest is still in the body.
    Over(VecDeque<Bytes>),
}

/// Read `body` whole if it holds at most `bound` bytes; stop at the first chunk past the
/// bound, so that no more than `bound` bytes plus one chunk are ever held. A body that says
/// it is larger is not read. The body stays the caller's, to pass on what was not read.
pub(crate) async fn read_up_to<B>(mut body: Pin<&mut B>, bound: usize) -> Result<ReadUpTo, B::Error>
where
    B: Body<Data = Bytes>,
{
    if body.size_hint().lower() > bound as u64 {
        return Ok(ReadUpTo::Over(VecDeque::new()));
    }
    let mut chunks = VecDeque::new();
    let mut len = 0usize;
    loop {
        if body.is_end_stream() {
            return Ok(ReadUpTo::Whole(concat(chunks, len), None));
        }
        let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await else {
            return Ok(ReadUpTo::Whole(concat(chunks, len), None));
        };
        match frame?.into_data() {
            Ok(chunk) => {
                len = len.saturating_add(chunk.len());
                chunks.push_back(chunk);
                if len > bound {
                    return Ok(ReadUpTo::Over(chunks));
                }
            }
            Err(frame) => {
                // Trailers end the body.
                let trailers = frame.into_trailers().ok();
                return Ok(ReadUpTo::Whole(concat(chunks, len), trailers));
            }
        }
    }
}

/// The chunks as one `Bytes` (no copy for a body of one chunk, the usual case).
fn concat(mut chunks: VecDeque<Bytes>, len: usize) -> Bytes {
    if chunks.len() <= 1 {
        return chunks.pop_front().unwrap_or_default();
    }
    let mut all = BytesMut::with_capacity(len);
    for chunk in chunks {
        all.extend_from_slice(&chunk);
    }
    all.freeze()
}
