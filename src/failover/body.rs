//! The two bodies of the layer: [`ReplayBody`], the request body each attempt sends, and
//! [`FailoverBody`], the answer's bytes held before the commit followed by the rest.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::request::{KeptBody, ReadUpTo, read_up_to};

/// The request body an upstream of [`Failover`](super::Failover) receives: the client's
/// body, kept whole so that it can be sent again, or (larger than the bound) the bytes read
/// so far followed by the rest of the client's body, sent once. It is [`KeptBody`], the
/// body every tower-sse layer that reads a request hands on; this name stays for the
/// failover layer's signatures.
pub type ReplayBody<B> = KeptBody<B>;

/// A request body, read: kept whole (at most `bound` bytes), or too large to keep.
pub(crate) enum Read<B> {
    Kept(Bytes, Option<HeaderMap>),
    /// Larger than the bound: the chunks read so far and the rest, to send once.
    TooLarge(ReplayBody<B>),
}

/// Read the client's body up to `bound` bytes. A body that says it is larger is not read.
pub(crate) async fn read<B>(mut body: B, bound: usize) -> Result<Read<B>, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    Ok(match read_up_to(Pin::new(&mut body), bound).await? {
        ReadUpTo::Whole(data, trailers) => Read::Kept(data, trailers),
        ReadUpTo::Over(prefix) => Read::TooLarge(KeptBody::passing(prefix, body)),
    })
}

/// The response body of [`Failover`](super::Failover): the frames read before the commit
/// (held with the head), then the rest of the upstream's body as it comes. Hints are the
/// upstream's once the held frames are out.
pub struct FailoverBody<B> {
    held: VecDeque<Frame<Bytes>>,
    /// `None` once the upstream body ended (read to its end before the commit).
    rest: Option<Pin<Box<B>>>,
}

impl<B> FailoverBody<B> {
    /// `body` as it is, nothing held: for an answer a service wrapping the layer makes
    /// itself (a gateway's own `413` when the client's body could not be read).
    pub fn passing(body: B) -> Self {
        Self::new(VecDeque::new(), Some(Box::pin(body)))
    }

    pub(crate) fn new(held: VecDeque<Frame<Bytes>>, rest: Option<Pin<Box<B>>>) -> Self {
        Self { held, rest }
    }
}

impl<B> fmt::Debug for FailoverBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailoverBody")
            .field("held_frames", &self.held.len())
            .field("upstream_done", &self.rest.is_none())
            .finish()
    }
}

impl<B> Body for FailoverBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(frame) = this.held.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        let Some(rest) = this.rest.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = rest.as_mut().poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.rest = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_empty() && self.rest.as_ref().is_none_or(|rest| rest.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let held: u64 = self
            .held
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum();
        let Some(rest) = &self.rest else {
            return SizeHint::with_exact(held);
        };
        let hint = rest.size_hint();
        let mut sum = SizeHint::new();
        sum.set_lower(hint.lower().saturating_add(held));
        if let Some(upper) = hint.upper() {
            sum.set_upper(upper.saturating_add(held));
        }
        sum
    }
}
