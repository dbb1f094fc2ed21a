//! The streaming body: paces a script's events, cuts them into frames and injects faults.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::time::{Instant, Sleep};

use crate::config::{Controls, Fault, FaultKind};
use crate::format::Script;
use crate::framer::Framer;
use crate::stats::OpenStream;

/// The error a `close_after` stream ends with. Hyper answers a body error by dropping the
/// connection (HTTP/1: no terminating chunk; HTTP/2: a stream reset), which is the point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aborted;

impl fmt::Display for Aborted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("mock upstream aborted the connection (close_after)")
    }
}

impl std::error::Error for Aborted {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    /// Waiting out the token delay of `delayed`.
    Waiting,
    /// `stall_after`: nothing more, ever; the body lives until the client goes.
    Stalled,
    /// `close_after`: the partial event is queued. Yield once so hyper flushes it, then fail.
    Aborting {
        yielded: bool,
    },
    Done,
}

/// A lazily generated response body.
#[derive(Debug)]
pub(crate) struct MockBody<S> {
    script: S,
    framer: Framer,
    delay: Duration,
    fault: Option<Fault>,
    /// Events handed to the framer so far.
    sent: u32,
    state: State,
    /// The token event waiting out its delay.
    delayed: Option<Bytes>,
    /// Allocated on the first delay, then reset for the next ones.
    sleep: Option<Pin<Box<Sleep>>>,
    _open: OpenStream,
}

impl<S: Script> MockBody<S> {
    pub(crate) fn new(script: S, controls: &Controls, open: OpenStream) -> Self {
        Self {
            script,
            framer: Framer::new(controls.chunking, controls.seed),
            delay: controls.delay,
            fault: controls.fault(),
            sent: 0,
            state: State::Running,
            delayed: None,
            sleep: None,
            _open: open,
        }
    }

    fn emit(&mut self, bytes: Bytes) {
        self.framer.push(bytes);
        self.sent += 1;
    }

    /// Produce the next event (or fault) into the framer, or change state.
    fn advance(&mut self) {
        if let Some(fault) = self.fault
            && fault.after <= self.sent
        {
            return self.fire(fault.kind);
        }
        match self.script.next_step() {
            None => match self.fault {
                // The stream was shorter than the fault's count: the fault ends it anyway.
                Some(fault) => self.fire(fault.kind),
                None => {
                    self.framer.flush();
                    self.state = State::Done;
                }
            },
            Some(step) if step.is_token && !self.delay.is_zero() => {
                self.framer.flush();
                self.delayed = Some(step.bytes);
                let deadline = Instant::now() + self.delay;
                match &mut self.sleep {
                    Some(sleep) => sleep.as_mut().reset(deadline),
                    None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
                self.state = State::Waiting;
            }
            Some(step) => self.emit(step.bytes),
        }
    }

    fn fire(&mut self, kind: FaultKind) {
        self.fault = None;
        match kind {
            FaultKind::Stall => self.state = State::Stalled,
            FaultKind::Error => {
                let event = self.script.error_event(self.sent);
                self.framer.push(event);
                self.state = State::Done;
            }
            FaultKind::Close => {
                if let Some(step) = self.script.next_step() {
                    let half = step.bytes.len().div_ceil(2).min(step.bytes.len() - 1);
                    self.framer.push(step.bytes.slice(..half));
                }
                self.state = State::Aborting { yielded: false };
            }
        }
        self.framer.flush();
    }
}

impl<S: Script> Body for MockBody<S> {
    type Data = Bytes;
    type Error = Aborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Aborted>>> {
        let this = self.get_mut();
        loop {
            if let Some(frame) = this.framer.take() {
                return Poll::Ready(Some(Ok(Frame::data(frame))));
            }
            match this.state {
                State::Running => this.advance(),
                State::Waiting => {
                    if let Some(sleep) = &mut this.sleep {
                        ready!(sleep.as_mut().poll(cx));
                    }
                    if let Some(bytes) = this.delayed.take() {
                        this.emit(bytes);
                    }
                    this.state = State::Running;
                }
                // No waker is kept: nothing will ever wake this body. Hyper drops it when
                // it sees the client close the connection.
                State::Stalled => return Poll::Pending,
                State::Aborting { yielded: false } => {
                    this.state = State::Aborting { yielded: true };
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                State::Aborting { yielded: true } => {
                    this.state = State::Done;
                    return Poll::Ready(Some(Err(Aborted)));
                }
                State::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done && self.framer.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::anthropic::AnthropicScript;
    use crate::format::chat::ChatScript;
    use crate::format::gemini::GeminiScript;
    use crate::format::ollama::OllamaScript;
    use crate::format::responses::ResponsesScript;

    #[test]
    fn a_stream_stays_small() {
        // Load runs hold 10k+ of these at once; heap parts (model name, a chunk head, the
        // sleep after the first delay) add a few hundred bytes more.
        let sizes = [
            size_of::<MockBody<ChatScript>>(),
            size_of::<MockBody<ResponsesScript>>(),
            size_of::<MockBody<AnthropicScript>>(),
            size_of::<MockBody<GeminiScript>>(),
            size_of::<MockBody<OllamaScript>>(),
        ];
        assert!(sizes.iter().all(|&size| size <= 320), "{sizes:?}");
    }
}
