//! A policy at work on one stream: the engine's side of [`Policy`](super::Policy).
//!
//! The engine hands each event here after the observers saw it (the order is written down
//! in `stream/engine.rs`). The relay queues what it forwards itself (the events this
//! returns `true` for, zero copy, and the upstream's blocks and comments) in a staging
//! outbox, which [`Acting::absorb`] moves on in order: to the client's outbox, or behind
//! the held events (so that nothing overtakes them: an `id:` block that did would change
//! the ids the client gives them), or nowhere after a stop. Replaced bytes, released held
//! events and the stop frames go to the client's outbox here.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use crate::provider::Provider;
use crate::report::StreamReport;
use crate::sse::EventRef;
use crate::sse::relay::{Outbox, without_comment_lines};

use super::context::PolicyContext;
use super::held::{Held, HeldEvent};
use super::text;
use super::{BoxPolicy, Holdback, Policy, StopReason, Verdict};

/// A stream's policy and what it holds.
#[derive(Debug)]
pub(crate) struct Acting {
    policy: BoxPolicy,
    holdback: Holdback,
    held: VecDeque<HeldEvent>,
    held_bytes: usize,
    /// The stop, once decided: nothing the upstream sends after it goes out.
    stop: Option<StopReason>,
}

/// How the events of this stream go to the client.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wire {
    /// NDJSON lines (a client that asked for NDJSON), not SSE events.
    pub(crate) lines: bool,
    /// Comment lines are stripped from forwarded events.
    pub(crate) strip_comments: bool,
}

impl Acting {
    pub(crate) fn new(policy: BoxPolicy, holdback: Holdback) -> Self {
        Self {
            policy,
            holdback,
            held: VecDeque::new(),
            held_bytes: 0,
            stop: None,
        }
    }

    /// Move what the relay queued in `staging` on to `out` (or behind what is held; or
    /// drop it after a stop).
    pub(crate) fn absorb(&mut self, staging: &mut Outbox, out: &mut Outbox, now: Instant) {
        while let Some(bytes) = staging.take() {
            if self.stop.is_some() {
                continue;
            }
            if self.held.is_empty() {
                out.push(bytes);
                continue;
            }
            self.held_bytes += bytes.len();
            self.held.push_back(HeldEvent {
                wire: bytes,
                text: None,
                content: false,
                replaced: false,
                dropped: false,
                block: true,
                at: now,
            });
        }
    }

    /// Whether a stop was decided.
    pub(crate) fn stopped(&self) -> Option<&StopReason> {
        self.stop.as_ref()
    }

    /// One event the observers let through (`forward`), with its content class and the
    /// text range the classifier found. Returns whether the relay forwards it as it came.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn event(
        &mut self,
        event: EventRef<'_>,
        content: bool,
        span: Option<(usize, usize)>,
        provider: Provider,
        wire: Wire,
        report: &mut StreamReport,
        now: Instant,
        out: &mut Outbox,
    ) -> bool {
        if self.stop.is_some() {
            return false;
        }
        let span = if content {
            span.or_else(|| provider.text_span(&event))
        } else {
            None
        };
        let verdict = {
            let cx = PolicyContext {
                event,
                provider,
                content,
                text: span,
                lines: wire.lines,
                report,
            };
            self.policy.on_event(&cx)
        };
        let holding = self.holdback.is_on();
        let (bytes, replaced) = match verdict {
            Verdict::Pass if !holding => {
                report.policy.passed += 1;
                if content && report.policy.first_content_released_at.is_none() {
                    report.policy.first_content_released_at = Some(now);
                }
                return true;
            }
            Verdict::Pass => (wire_of(&event, wire), false),
            Verdict::Replace(bytes) => (bytes, true),
            Verdict::Drop => {
                report.policy.dropped += 1;
                return false;
            }
            Verdict::Stop(reason) => {
                self.halt(reason, provider, wire, report, now, out);
                return false;
            }
        };
        if !holding {
            report.policy.replaced += 1;
            if content && report.policy.first_content_released_at.is_none() {
                report.policy.first_content_released_at = Some(now);
            }
            out.push(bytes);
            return false;
        }
        let text = if replaced {
            None
        } else {
            span.and_then(|(start, end)| {
                text_in_wire(&event, &bytes, wire).map(|at| (at + start, at + end))
            })
        };
        report.policy.held += 1;
        self.held_bytes += bytes.len();
        self.held.push_back(HeldEvent {
            wire: bytes,
            text,
            content,
            replaced,
            dropped: false,
            block: false,
            at: now,
        });
        let mut held = Held {
            events: &mut self.held,
            provider,
        };
        let stop = self.policy.on_held(&mut held);
        // Rewrites change sizes: count again (the window is small and bounded).
        self.held_bytes = self.held.iter().map(|e| e.wire.len()).sum();
        if let Some(reason) = stop {
            self.halt(reason, provider, wire, report, now, out);
            return false;
        }
        self.release_due(report, now, out);
        false
    }

    /// When the oldest held event reaches the holdback's time cap: the body's one timer
    /// wakes then, so that a silent upstream does not keep events held past the cap.
    pub(crate) fn release_at(&self) -> Option<Instant> {
        self.held
            .front()
            .map(|front| crate::stream::deadline::after(front.at, self.holdback.time))
    }

    /// Release what the caps no longer let wait.
    pub(crate) fn release_due(
        &mut self,
        report: &mut StreamReport,
        now: Instant,
        out: &mut Outbox,
    ) {
        while let Some(front) = self.held.front() {
            let events = self.held.iter().filter(|e| !e.block).count();
            let due = front.block
                || events >= self.holdback.events
                || self.held_bytes > self.holdback.bytes
                || now.saturating_duration_since(front.at) >= self.holdback.time;
            if !due {
                break;
            }
            self.release_one(report, now, out);
        }
    }

    fn release_one(&mut self, report: &mut StreamReport, now: Instant, out: &mut Outbox) {
        let Some(event) = self.held.pop_front() else {
            return;
        };
        self.held_bytes = self.held_bytes.saturating_sub(event.wire.len());
        if event.block {
            out.push(event.wire);
            return;
        }
        report.policy.held_time += now.saturating_duration_since(event.at);
        if event.dropped {
            report.policy.dropped += 1;
            return;
        }
        if event.replaced {
            report.policy.replaced += 1;
        } else {
            report.policy.passed += 1;
        }
        if event.content && report.policy.first_content_released_at.is_none() {
            report.policy.first_content_released_at = Some(now);
        }
        out.push(event.wire);
    }

    /// Release every held event (the stream ends, or fails).
    pub(crate) fn release_all(
        &mut self,
        report: &mut StreamReport,
        now: Instant,
        out: &mut Outbox,
    ) {
        while !self.held.is_empty() {
            self.release_one(report, now, out);
        }
    }

    /// Forget what is held (the client went away).
    #[cfg_attr(not(feature = "drain"), allow(dead_code))]
    pub(crate) fn discard(&mut self) {
        self.held.clear();
        self.held_bytes = 0;
    }

    /// Stop: release what is held, then end as the provider would.
    fn halt(
        &mut self,
        reason: StopReason,
        provider: Provider,
        wire: Wire,
        report: &mut StreamReport,
        now: Instant,
        out: &mut Outbox,
    ) {
        self.release_all(report, now, out);
        if let Some(frames) = stop_frames(provider, &reason, report, wire.lines) {
            out.push(frames);
        }
        report.policy.stopped_by = Some(reason.reason().to_owned());
        self.stop = Some(reason);
    }
}

/// The bytes an event goes out as, copied (it waits while later chunks replace the
/// decoder's buffer).
fn wire_of(event: &EventRef<'_>, wire: Wire) -> Bytes {
    if wire.lines {
        let mut line = BytesMut::with_capacity(event.data_bytes().len() + 1);
        line.extend_from_slice(event.data_bytes());
        line.extend_from_slice(b"\n");
        return line.freeze();
    }
    let raw = Bytes::copy_from_slice(event.raw());
    if event.unterminated {
        return crate::sse::terminate_block(&raw);
    }
    if wire.strip_comments {
        return without_comment_lines(&raw);
    }
    raw
}

/// Where the event's data starts in `bytes` (its wire form), when it is there in one piece.
fn text_in_wire(event: &EventRef<'_>, bytes: &[u8], wire: Wire) -> Option<usize> {
    let data = event.data_bytes();
    if wire.lines {
        return Some(0);
    }
    let at = text::offset_in(event.raw(), data).or_else(|| {
        // An NDJSON line the layer framed as `data: <line>`.
        (event.raw().starts_with(b"data: ") && event.raw()[6..].starts_with(data)).then_some(6)
    })?;
    (bytes.get(at..at + data.len()) == Some(data)).then_some(at)
}

/// The frames that end a stopped stream as its provider would: the format's own events
/// (`provider/<format>.rs`), framed for the client. `None` when the format has none (an
/// unknown one): the stream then just ends.
pub(crate) fn stop_frames(
    provider: Provider,
    reason: &StopReason,
    report: &StreamReport,
    lines: bool,
) -> Option<Bytes> {
    let events = provider.stop_events(
        reason.kind(),
        report.response_id.as_deref(),
        report.model.as_deref(),
    );
    if events.is_empty() {
        return None;
    }
    let mut out = BytesMut::new();
    for (name, data) in events {
        if lines {
            out.extend_from_slice(data.as_bytes());
            out.extend_from_slice(b"\n");
            continue;
        }
        if let Some(name) = name {
            out.extend_from_slice(b"event: ");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\n");
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(data.as_bytes());
        out.extend_from_slice(b"\n\n");
    }
    Some(out.freeze())
}
