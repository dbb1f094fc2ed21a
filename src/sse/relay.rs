//! What a forwarding body needs from the wire format: the upstream re-cut at event
//! boundaries and handed on as it came.
//!
//! - Whole items only: a partial upstream event is held until its end.
//! - Zero copy: consecutive items of one input chunk go out as one slice of that chunk (the
//!   chunk itself when it is all whole items); only items that straddle chunks are copied.
//! - Re-encoded only when asked to strip comments: an event or an `id:`/`retry:` block that
//!   carried a comment line is written again without it.
//! - A block the decoder completed at a lenient end of input gets the blank line the upstream
//!   never sent; NDJSON lines become `data:` events.
//! - The byte order mark rule of [`Outbox::pop_marked`].
//!
//! No I/O and no runtime here: the stream engine pushes chunks in and pops bytes out.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::decoder::{BOM, Found, FoundKind, Source};
use super::event::terminate_block;
use super::ndjson::JsonLines;
use super::{DecodeError, Decoder, Event, EventRef};

/// Decodes an upstream body and queues what to forward. SSE is the common case: it stays
/// inline rather than costing every stream an allocation.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Relay {
    /// `text/event-stream`: forwarded byte for byte.
    Sse(SseRelay),
    /// One JSON value per line, reframed into `data:` events.
    JsonLines(JsonLines),
    /// One JSON value per line, forwarded as lines (for a client that asked for NDJSON).
    Lines(JsonLines),
}

/// The SSE side of a [`Relay`].
#[derive(Debug)]
pub(crate) struct SseRelay {
    decoder: Decoder,
    /// A range of the decoder's current input to forward as one slice.
    pending: Option<(usize, usize)>,
    /// The current upstream block had a comment line (for `forward_comments == false`).
    comment_in_block: bool,
    forward_comments: bool,
    /// Each event that needs no change goes out as a slice of its own, marked whole
    /// ([`Outbox::push_whole`]): the stream is resumable, and its producer stamps such a
    /// slice without decoding it again.
    split: bool,
}

/// What one call to [`Relay::decode_ready`] found.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Relayed {
    /// Complete upstream items (events, comments, blocks).
    pub(crate) items: bool,
    /// Comment lines among them.
    pub(crate) comments: u64,
}

impl Relay {
    /// Forward SSE, keeping or stripping the upstream's comments.
    pub(crate) fn sse(max_event_size: usize, lenient_eof: bool, forward_comments: bool) -> Self {
        Self::Sse(SseRelay {
            decoder: Decoder::new()
                .max_event_size(max_event_size)
                .lenient_eof(lenient_eof),
            pending: None,
            comment_in_block: false,
            forward_comments,
            split: false,
        })
    }

    /// Hand on each event that needs no change as a slice of its own, marked whole (for a
    /// resumable stream's producer: [`Outbox::pop_marked`]). SSE only.
    #[cfg(feature = "resume")]
    pub(crate) fn split_events(&mut self) {
        if let Self::Sse(sse) = self {
            sse.split = true;
        }
    }

    /// Reframe NDJSON into SSE.
    pub(crate) fn json_lines(max_line: usize) -> Self {
        Self::JsonLines(JsonLines::new(max_line))
    }

    /// Forward NDJSON as NDJSON: whole lines, each ended by `\n`.
    pub(crate) fn lines(max_line: usize) -> Self {
        Self::Lines(JsonLines::new(max_line))
    }

    /// Whether this relays SSE (the common case, which the engine keeps inline).
    #[inline]
    pub(crate) fn is_sse(&self) -> bool {
        matches!(self, Self::Sse(_))
    }

    /// Add an upstream chunk.
    pub(crate) fn push(&mut self, chunk: Bytes) {
        match self {
            Self::Sse(sse) => sse.decoder.push(chunk),
            Self::JsonLines(lines) | Self::Lines(lines) => lines.push(chunk),
        }
    }

    /// The upstream ended: what is left can complete (a lenient last event, a last line).
    pub(crate) fn finish(&mut self) {
        match self {
            Self::Sse(sse) => sse.decoder.finish(),
            Self::JsonLines(lines) | Self::Lines(lines) => lines.finish(),
        }
    }

    /// Whether the upstream ended in the middle of an event (or, for NDJSON, with a last
    /// line that is not a whole JSON value).
    pub(crate) fn is_truncated(&self) -> bool {
        match self {
            Self::Sse(sse) => sse.decoder.is_truncated(),
            Self::JsonLines(lines) | Self::Lines(lines) => lines.is_truncated(),
        }
    }

    /// After the end of input was decoded: queue the unfinished block the upstream ended in.
    ///
    /// `as_sent`: its bytes as they came (comment lines stripped when comments are not
    /// forwarded), so that the client's own parser discards the unfinished event and applies
    /// its complete `retry:` line, exactly as without the relay. Otherwise only that `retry:`
    /// as a block of its own, for a stream that ends with an error event instead (which would
    /// join the unfinished block). NDJSON has nothing to forward: a broken last line is never
    /// sent as an event.
    pub(crate) fn forward_trailing(&mut self, out: &mut Outbox, as_sent: bool) {
        let Self::Sse(sse) = self else {
            return;
        };
        let Some(trailing) = sse.decoder.take_trailing() else {
            return;
        };
        if !as_sent {
            if let Some(retry) = trailing.retry {
                out.push(reencode(None, None, Some(retry)));
            }
        } else if sse.forward_comments {
            out.push(trailing.raw);
        } else {
            let stripped = without_comment_lines(&trailing.raw);
            if !stripped.is_empty() {
                out.push(stripped);
            }
        }
    }

    /// [`decode_ready`](Self::decode_ready) for SSE alone (nothing for the other framings):
    /// the engine's inlined path, which no NDJSON code joins.
    #[inline]
    pub(crate) fn decode_sse(
        &mut self,
        out: &mut Outbox,
        mut on_event: impl FnMut(EventRef<'_>) -> bool,
    ) -> Result<Relayed, DecodeError> {
        let mut relayed = Relayed::default();
        if let Self::Sse(sse) = self {
            let mut on_event = |event: EventRef<'_>, _: &mut Outbox| on_event(event);
            sse.decode_ready::<false>(out, &mut on_event, &mut relayed)?;
        }
        Ok(relayed)
    }

    /// Decode every item the input completes. Each event goes to `on_event`, which says
    /// whether to forward it; what goes to the client is queued in `out`. On an oversized
    /// event, what came before it is queued and the error returned.
    pub(crate) fn decode_ready(
        &mut self,
        out: &mut Outbox,
        mut on_event: impl FnMut(EventRef<'_>) -> bool,
    ) -> Result<Relayed, DecodeError> {
        let mut on_event = |event: EventRef<'_>, _: &mut Outbox| on_event(event);
        let mut relayed = Relayed::default();
        match self {
            Self::Sse(sse) => sse.decode_ready::<false>(out, &mut on_event, &mut relayed)?,
            Self::JsonLines(lines) => {
                json_lines_ready(lines, false, out, &mut on_event, &mut relayed)?
            }
            Self::Lines(lines) => json_lines_ready(lines, true, out, &mut on_event, &mut relayed)?,
        }
        Ok(relayed)
    }

    /// [`decode_ready`](Self::decode_ready) for a stream a policy acts on: `on_event` gets the
    /// outbox too, to queue bytes of its own in the place of the event (everything queued
    /// before the event is in the outbox by then). It returns whether the relay forwards the
    /// event as it came.
    pub(crate) fn decode_acting(
        &mut self,
        out: &mut Outbox,
        mut on_event: impl FnMut(EventRef<'_>, &mut Outbox) -> bool,
    ) -> Result<Relayed, DecodeError> {
        let mut relayed = Relayed::default();
        match self {
            Self::Sse(sse) => sse.decode_ready::<true>(out, &mut on_event, &mut relayed)?,
            Self::JsonLines(lines) => {
                json_lines_ready(lines, false, out, &mut on_event, &mut relayed)?
            }
            Self::Lines(lines) => json_lines_ready(lines, true, out, &mut on_event, &mut relayed)?,
        }
        Ok(relayed)
    }
}

/// The NDJSON side of [`Relay::decode_ready`]: each line is an event, reframed into a
/// `data:` event, or kept as a line (`keep_lines`, for a client that asked for NDJSON).
///
/// One loop for both NDJSON variants (the engine calls it from its out-of-line NDJSON path:
/// SSE events never pay for it).
fn json_lines_ready(
    lines: &mut JsonLines,
    keep_lines: bool,
    out: &mut Outbox,
    on_event: &mut impl FnMut(EventRef<'_>, &mut Outbox) -> bool,
    relayed: &mut Relayed,
) -> Result<(), DecodeError> {
    while let Some(line) = lines.next_line() {
        let line = line?;
        relayed.items = true;
        if keep_lines {
            let event = Event::from_data(line.clone());
            if on_event(event.as_ref(), out) {
                let mut kept = BytesMut::with_capacity(line.len() + 1);
                kept.extend_from_slice(&line);
                kept.extend_from_slice(b"\n");
                out.push(kept.freeze());
            }
        } else {
            let event = Event::from_data(line);
            if on_event(event.as_ref(), out) {
                out.push(event.into_raw());
            }
        }
    }
    Ok(())
}

impl SseRelay {
    /// Always inline: its two callers ([`Relay::decode_sse`] on the engine's hot path,
    /// [`Relay::decode_ready`] on its NDJSON path) would otherwise make it a call per
    /// upstream frame, with the observers' closure passed by reference (measured: +3% per
    /// SSE event).
    ///
    /// `OWN_OUTPUT`: `on_event` may queue bytes itself, so what is pending goes to the
    /// outbox before each event (a policy acts on the stream: [`Relay::decode_acting`]).
    #[inline(always)]
    fn decode_ready<const OWN_OUTPUT: bool>(
        &mut self,
        out: &mut Outbox,
        on_event: &mut impl FnMut(EventRef<'_>, &mut Outbox) -> bool,
        relayed: &mut Relayed,
    ) -> Result<(), DecodeError> {
        while let Some(found) = self.decoder.find_next() {
            let found = match found {
                Ok(found) => found,
                Err(e) => {
                    self.flush(out);
                    return Err(e);
                }
            };
            relayed.items = true;
            let strip = !self.forward_comments && self.comment_in_block;
            match found.kind {
                FoundKind::Comment => {
                    relayed.comments += 1;
                    self.comment_in_block = true;
                    continue;
                }
                FoundKind::Block if !strip => self.forward(&found, out),
                FoundKind::Block => {
                    if found.sets_id() || found.retry().is_some() {
                        self.flush(out);
                        let id = found
                            .sets_id()
                            .then(|| self.decoder.lend_event(&found).last_event_id_bytes());
                        out.push(reencode(None, id, found.retry()));
                    }
                }
                FoundKind::Event => {
                    if OWN_OUTPUT {
                        self.flush(out);
                    }
                    let forward = on_event(self.decoder.lend_event(&found), out);
                    if forward && strip {
                        self.flush(out);
                        let event = self.decoder.lend_event(&found);
                        let id = found.sets_id().then(|| event.last_event_id_bytes());
                        out.push(reencode(Some(event), id, found.retry()));
                    } else if forward && self.split {
                        self.forward_whole(&found, out);
                    } else if forward {
                        self.forward(&found, out);
                    }
                }
            }
            self.comment_in_block = false;
        }
        self.flush(out);
        Ok(())
    }

    /// Queue a found block's raw bytes, merging neighbours from the current chunk into one
    /// slice.
    #[inline]
    fn forward(&mut self, found: &Found, out: &mut Outbox) {
        if found.is_unterminated() {
            self.flush(out);
            let raw = Bytes::copy_from_slice(self.decoder.raw(found));
            out.push(terminate_block(&raw));
            return;
        }
        match (found.source, self.pending.as_mut()) {
            (Source::Input, Some((_, end))) if *end == found.raw.0 => *end = found.raw.1,
            (Source::Input, _) => {
                self.flush(out);
                self.pending = Some(found.raw);
            }
            (Source::Carry, _) => {
                self.flush(out);
                out.push(Bytes::copy_from_slice(self.decoder.raw(found)));
            }
        }
    }

    /// Queue a found event as a slice of its own, marked whole when it is one terminated
    /// event without an `id` line (else as [`forward`](Self::forward) does).
    #[cold]
    #[inline(never)]
    fn forward_whole(&mut self, found: &Found, out: &mut Outbox) {
        #[cfg(feature = "resume")]
        if !found.is_unterminated() && !found.has_id_line() {
            self.flush(out);
            let event = match found.source {
                Source::Input => self.decoder.take_input(found.raw.0, found.raw.1),
                Source::Carry => Bytes::copy_from_slice(self.decoder.raw(found)),
            };
            out.push_whole(event);
            return;
        }
        self.forward(found, out);
    }

    #[inline]
    fn flush(&mut self, out: &mut Outbox) {
        if let Some((start, end)) = self.pending.take() {
            out.push(self.decoder.take_input(start, end));
        }
    }
}

/// `raw` without the lines that begin with `:` (line ends: CRLF, LF or CR; the last line may
/// have none).
pub(crate) fn without_comment_lines(raw: &Bytes) -> Bytes {
    let mut out = BytesMut::with_capacity(raw.len());
    let mut rest = &raw[..];
    while !rest.is_empty() {
        let end = memchr::memchr2(b'\r', b'\n', rest).map_or(rest.len(), |i| {
            if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                i + 2
            } else {
                i + 1
            }
        });
        let (line, after) = rest.split_at(end);
        if !line.starts_with(b":") {
            out.extend_from_slice(line);
        }
        rest = after;
    }
    out.freeze()
}

/// Encode an upstream event or block again, without its comment lines.
fn reencode(event: Option<EventRef<'_>>, id: Option<&[u8]>, retry: Option<u64>) -> Bytes {
    let mut builder = Event::builder();
    if let Some(event) = event {
        if !event.event_bytes().is_empty() {
            builder = builder.event(Bytes::copy_from_slice(event.event_bytes()));
        }
        builder = builder.data(Bytes::copy_from_slice(event.data_bytes()));
    }
    if let Some(id) = id {
        builder = builder.id(Bytes::copy_from_slice(id));
    }
    if let Some(ms) = retry {
        builder = builder.retry(std::time::Duration::from_millis(ms));
    }
    // Decoded fields never hold line breaks, and ids never hold NUL: encoding cannot fail.
    builder.encode().unwrap_or_default()
}

/// Bytes waiting for the client. Nearly every upstream chunk yields one slice (its events,
/// merged), so the first waits inline: the common case allocates nothing, and the queue's
/// buffer exists only for streams that ever had several slices waiting.
///
/// Each slice is marked whether it is one whole event as the upstream sent it, terminated and
/// without an `id` line ([`push_whole`](Self::push_whole)): a resumable stream's producer
/// stamps those without decoding them again.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    first: Option<Bytes>,
    first_whole: bool,
    rest: VecDeque<(Bytes, bool)>,
    /// Whether anything went to the client yet (see [`Outbox::pop_marked`]).
    started: bool,
}

impl Outbox {
    #[inline]
    pub(crate) fn push(&mut self, data: Bytes) {
        self.push_marked(data, false);
    }

    /// Queue one whole event (see the type docs).
    #[cfg(feature = "resume")]
    #[inline]
    pub(crate) fn push_whole(&mut self, data: Bytes) {
        self.push_marked(data, true);
    }

    #[inline]
    fn push_marked(&mut self, data: Bytes, whole: bool) {
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(data);
            self.first_whole = whole;
        } else {
            self.rest.push_back((data, whole));
        }
    }

    /// The next bytes for the client, and whether they are one whole event (see the type
    /// docs).
    ///
    /// The decoder strips the upstream's leading byte order mark, as a client would. If the
    /// first bytes the client gets begin with a BOM anyway (the upstream sent two, or its
    /// first blocks were dropped), the client would strip that one and read the rest
    /// differently from the upstream: so a BOM goes first, for the client to strip instead.
    #[inline]
    pub(crate) fn pop_marked(&mut self) -> Option<(Bytes, bool)> {
        let (data, whole) = match self.first.take() {
            Some(data) => (data, self.first_whole),
            None => self.rest.pop_front()?,
        };
        if self.started {
            return Some((data, whole));
        }
        let first = self.first_out(data);
        // A BOM put in front: no longer the event as it came.
        let whole = whole && !first.starts_with(BOM);
        Some((first, whole))
    }

    /// The first bytes for the client: the BOM rule (kept out of line, so that `pop_marked` stays
    /// small enough to inline into the body's poll loop).
    #[cold]
    fn first_out(&mut self, data: Bytes) -> Bytes {
        self.started = true;
        if !data.starts_with(BOM) {
            return data;
        }
        let mut with_bom = BytesMut::with_capacity(BOM.len() + data.len());
        with_bom.extend_from_slice(BOM);
        with_bom.extend_from_slice(&data);
        with_bom.freeze()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none() && self.rest.is_empty()
    }

    /// Bytes the body added itself (a keep-alive) went out first.
    pub(crate) fn mark_started(&mut self) {
        self.started = true;
    }

    /// Drop what is queued (the client is gone).
    #[cfg_attr(not(feature = "drain"), allow(dead_code))]
    pub(crate) fn clear(&mut self) {
        self.first = None;
        self.rest.clear();
    }

    /// The next queued slice as it was queued (a staging outbox's, moved on elsewhere).
    pub(crate) fn take(&mut self) -> Option<Bytes> {
        self.first
            .take()
            .or_else(|| self.rest.pop_front().map(|(data, _)| data))
    }
}

#[cfg(all(test, feature = "resume"))]
mod tests {
    use super::*;

    /// A resumable stream's relay hands on each event that needs no change as a slice of its
    /// own, marked whole; everything else as before, unmarked.
    #[test]
    fn split_events_are_marked_whole() {
        let mut relay = Relay::sse(1 << 20, false, true);
        relay.split_events();
        let mut out = Outbox::default();
        relay.push(Bytes::from_static(
            b"data: a\n\n: c\n\ndata: b\nid: x\n\ndata: c\n\nretry: 5\n\ndata: d",
        ));
        relay.decode_ready(&mut out, |_| true).unwrap();
        // The end of the event that began in the first chunk (copied: it straddles chunks).
        relay.push(Bytes::from_static(b"\n\n"));
        relay.decode_ready(&mut out, |_| true).unwrap();
        let mut popped = Vec::new();
        while let Some((data, whole)) = out.pop_marked() {
            popped.push((String::from_utf8(data.to_vec()).unwrap(), whole));
        }
        let expected = [
            ("data: a\n\n", true),
            // A comment block, and an event with an `id` line of its own: decoded again.
            (": c\n\ndata: b\nid: x\n\n", false),
            ("data: c\n\n", true),
            ("retry: 5\n\n", false),
            ("data: d\n\n", true),
        ];
        let expected: Vec<_> = expected
            .iter()
            .map(|(data, whole)| ((*data).to_owned(), *whole))
            .collect();
        assert_eq!(popped, expected);

        // Not split (the plain layer): one slice, unmarked.
        let mut relay = Relay::sse(1 << 20, false, true);
        relay.push(Bytes::from_static(b"data: a\n\ndata: c\n\n"));
        relay.decode_ready(&mut out, |_| true).unwrap();
        assert_eq!(
            out.pop_marked(),
            Some((Bytes::from_static(b"data: a\n\ndata: c\n\n"), false))
        );
    }

    /// The hand-off matches the very bytes marked, not equal bytes elsewhere, and once.
    #[test]
    fn handoff_matches_the_marked_bytes_once() {
        let handoff = crate::resume::shared::Handoff::default();
        let event = Bytes::from_static(b"data: a\n\n");
        handoff.handed(Some(&event));
        assert!(!handoff.is_whole(&Bytes::copy_from_slice(&event)));
        handoff.handed(Some(&event));
        assert!(handoff.is_whole(&event));
        assert!(!handoff.is_whole(&event));
        handoff.handed(Some(&event));
        assert!(!handoff.is_whole(&event.slice(..8)));
        handoff.handed(None);
        assert!(!handoff.is_whole(&event));
    }

    /// A decoder is idle only with nothing of the input held.
    #[test]
    fn decoder_idle() {
        let mut decoder = Decoder::new();
        assert!(decoder.is_idle());
        decoder.push(Bytes::from_static(b"data: a\n\ndata: b"));
        assert!(!decoder.is_idle());
        while decoder.find_next().is_some() {}
        assert!(!decoder.is_idle(), "inside an event");
        decoder.push(Bytes::from_static(b"\n\r"));
        while decoder.find_next().is_some() {}
        assert!(!decoder.is_idle(), "a CR that may be followed by its LF");
        decoder.push(Bytes::from_static(b"\n"));
        while decoder.find_next().is_some() {}
        assert!(decoder.is_idle());
        decoder.finish();
        assert!(!decoder.is_idle(), "the input ended");
    }
}
