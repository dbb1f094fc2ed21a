//! Reading an answer's stream up to its commit point: the first content event, an in-band
//! error, the end, the commit deadline or the held-bytes bound, whichever comes first.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::time::{Instant, timeout_at};

use crate::provider::{Classifier, Provider, ProviderError};
use crate::sse::{Decoder, ItemRef};
use crate::usage::UsageState;

use super::report::{AttemptError, Commit};

/// Where the gate stopped.
pub(crate) enum Verdict {
    /// Release the head: the client gets the held frames, then the rest.
    Commit(Commit),
    /// Try elsewhere.
    Fail(AttemptError),
}

/// What the gate read.
pub(crate) struct Gated<B> {
    pub(crate) verdict: Verdict,
    pub(crate) held: VecDeque<Frame<Bytes>>,
    /// The rest of the body; `None` when it was read to its end.
    pub(crate) rest: Option<Pin<Box<B>>>,
    pub(crate) usage: UsageState,
    pub(crate) provider_error: Option<ProviderError>,
}

/// Read `body`, an event stream of the format `hint` suggests, until its commit point.
pub(crate) async fn gate<B>(body: B, hint: Provider, deadline: Instant, max_held: usize) -> Gated<B>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut body = Box::pin(body);
    let mut reader = Reader {
        decoder: Decoder::new().max_event_size(max_held.max(1)),
        classifier: Classifier::new(hint, None),
        usage: UsageState::default(),
        provider_error: None,
    };
    let mut held = VecDeque::new();
    let mut held_len = 0usize;
    let verdict = loop {
        let frame = match timeout_at(deadline, poll_fn(|cx| body.as_mut().poll_frame(cx))).await {
            Err(_elapsed) => break Verdict::Commit(Commit::Deadline),
            Ok(frame) => frame,
        };
        let chunk = match frame {
            None => {
                reader.decoder.finish();
                let verdict = reader
                    .read()
                    .unwrap_or(Verdict::Fail(AttemptError::NoContent));
                let rest = None;
                return reader.into_gated(verdict, held, rest);
            }
            Some(Err(e)) => break Verdict::Fail(AttemptError::Body(e.to_string())),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(chunk) => chunk,
                Err(trailers) => {
                    // Trailers end a body: no content came.
                    held.push_back(trailers);
                    break Verdict::Fail(AttemptError::NoContent);
                }
            },
        };
        held_len = held_len.saturating_add(chunk.len());
        reader.decoder.push(chunk.clone());
        held.push_back(Frame::data(chunk));
        if let Some(verdict) = reader.read() {
            break verdict;
        }
        if held_len >= max_held {
            break Verdict::Commit(Commit::HeldBytes);
        }
    };
    reader.into_gated(verdict, held, Some(body))
}

struct Reader {
    decoder: Decoder,
    classifier: Classifier,
    usage: UsageState,
    provider_error: Option<ProviderError>,
}

impl Reader {
    /// Look at every event decoded so far: `Some` once one decides.
    fn read(&mut self) -> Option<Verdict> {
        while let Some(item) = self.decoder.next_ref() {
            let event = match item {
                Ok(ItemRef::Event(event)) => event,
                Ok(_) => continue,
                // An event larger than the bound: the stream layer outside reports it.
                Err(_) => return Some(Verdict::Commit(Commit::HeldBytes)),
            };
            if self.classifier.classify(&event).is_content() {
                return Some(Verdict::Commit(Commit::Content));
            }
            let provider = self.classifier.provider();
            provider.usage(&event, &mut self.usage);
            if let Some(error) = provider.provider_error(event.event_bytes(), event.data_bytes()) {
                self.provider_error = Some(error);
                return Some(Verdict::Fail(AttemptError::InBand));
            }
        }
        None
    }

    fn into_gated<B>(
        self,
        verdict: Verdict,
        held: VecDeque<Frame<Bytes>>,
        rest: Option<Pin<Box<B>>>,
    ) -> Gated<B> {
        Gated {
            verdict,
            held,
            rest,
            usage: self.usage,
            provider_error: self.provider_error,
        }
    }
}
