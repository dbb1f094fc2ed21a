//! The per-stream engine: decode once, classify, observe, queue whole events for the client.
//!
//! No I/O and no timers here; the body drives it. It is also what keeps reading the upstream
//! after a client went away, when draining is configured.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;
use tokio::time::Instant;

use crate::config::Config;
use crate::observe::{EventContext, Observer};
use crate::provider::Classifier;
use crate::reframe::JsonLines;
use crate::report::{Framing, Outcome, StreamReport};
use crate::sse::{Decoder, Event, EventRef, Found, FoundKind, Source, terminate_block};

/// The UTF-8 byte order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The framing decoder of a stream. SSE is the common case: it stays inline rather than
/// costing every stream an allocation.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Framer {
    Sse(Decoder),
    JsonLines(JsonLines),
}

/// Frames waiting for the client. Nearly every upstream chunk yields one frame (its events,
/// merged into one slice), so the first waits inline: the common case allocates nothing, and
/// the queue's buffer exists only for streams that ever had several frames waiting.
#[derive(Debug, Default)]
struct Outbox {
    first: Option<Bytes>,
    rest: VecDeque<Bytes>,
    /// The upstream's trailers, after every data frame (rare: boxed).
    trailers: Option<Box<HeaderMap>>,
}

impl Outbox {
    #[inline]
    fn push(&mut self, data: Bytes) {
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(data);
        } else {
            self.rest.push_back(data);
        }
    }

    #[inline]
    fn pop(&mut self) -> Option<Frame<Bytes>> {
        if let Some(data) = self.first.take().or_else(|| self.rest.pop_front()) {
            return Some(Frame::data(data));
        }
        self.trailers.take().map(|t| Frame::trailers(*t))
    }

    fn is_empty(&self) -> bool {
        self.first.is_none() && self.rest.is_empty() && self.trailers.is_none()
    }

    #[cfg(feature = "drain")]
    fn clear(&mut self) {
        self.first = None;
        self.rest.clear();
        self.trailers = None;
    }
}

/// What one upstream chunk brought.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Activity {
    /// Complete upstream items (events, comments, blocks).
    pub(crate) items: bool,
    /// At least one of them was a content event.
    pub(crate) content: bool,
}

#[derive(Debug)]
pub(crate) struct Engine<O> {
    pub(crate) config: Arc<Config>,
    framer: Framer,
    pub(crate) observer: O,
    pub(crate) report: StreamReport,
    classifier: Classifier,
    outbox: Outbox,
    /// A range of the decoder's current input to forward as one slice.
    pending: Option<(usize, usize)>,
    /// The current upstream block had a comment line (for `forward_comments(false)`).
    comment_in_block: bool,
    /// Whether events go to a client (`false` while draining after a disconnect).
    pub(crate) delivered: bool,
    /// Whether anything went to the client yet (see [`Engine::pop`] on byte order marks).
    output_started: bool,
}

impl<O: Observer> Engine<O> {
    pub(crate) fn new(
        config: Arc<Config>,
        observer: O,
        report: StreamReport,
        classifier: Classifier,
    ) -> Self {
        let framer = Framer::Sse(
            Decoder::new()
                .max_event_size(config.max_event_size)
                .lenient_eof(config.lenient_eof),
        );
        Self {
            config,
            framer,
            observer,
            report,
            classifier,
            outbox: Outbox::default(),
            pending: None,
            comment_in_block: false,
            delivered: true,
            output_started: false,
        }
    }

    /// Use this framing for the upstream body (SSE is the default).
    pub(crate) fn set_framing(&mut self, framing: Framing) {
        self.report.framing = framing;
        if framing == Framing::JsonLines {
            self.framer = Framer::JsonLines(JsonLines::new(self.config.max_event_size));
        }
    }

    /// Decode one upstream chunk; queue what it completed. `Err` ends the stream.
    pub(crate) fn push(&mut self, chunk: Bytes, now: Instant) -> Result<Activity, Outcome> {
        self.report.bytes_in += chunk.len() as u64;
        if self.report.first_byte_at.is_none() {
            self.report.first_byte_at = Some(now);
        }
        match &mut self.framer {
            Framer::Sse(decoder) => decoder.push(chunk),
            Framer::JsonLines(lines) => lines.push(chunk),
        }
        self.drain(now)
    }

    /// The upstream ended: flush what is left. `Some` when it ended badly.
    pub(crate) fn finish(&mut self, now: Instant) -> Option<Outcome> {
        match &mut self.framer {
            Framer::Sse(decoder) => decoder.finish(),
            Framer::JsonLines(lines) => lines.finish(),
        }
        if let Err(outcome) = self.drain(now) {
            return Some(outcome);
        }
        match &self.framer {
            Framer::Sse(decoder) if decoder.is_truncated() => Some(Outcome::UpstreamTruncated),
            _ => None,
        }
    }

    /// Decode everything the framer can complete.
    fn drain(&mut self, now: Instant) -> Result<Activity, Outcome> {
        let Self {
            config,
            framer,
            observer,
            report,
            classifier,
            outbox,
            pending,
            comment_in_block,
            delivered,
            ..
        } = self;
        let mut activity = Activity::default();
        match framer {
            Framer::Sse(decoder) => {
                while let Some(found) = decoder.find_next() {
                    let found = match found {
                        Ok(found) => found,
                        Err(e) => {
                            flush(decoder, pending, outbox);
                            report.error = Some(e.to_string());
                            return Err(Outcome::EventTooLarge);
                        }
                    };
                    activity.items = true;
                    match found.kind {
                        FoundKind::Comment => {
                            report.comments += 1;
                            *comment_in_block = true;
                        }
                        FoundKind::Block => {
                            let strip = !config.forward_comments && *comment_in_block;
                            *comment_in_block = false;
                            if !strip {
                                forward(decoder, &found, pending, outbox);
                            } else if found.sets_id() || found.retry().is_some() {
                                flush(decoder, pending, outbox);
                                outbox.push(reencode(
                                    None,
                                    found
                                        .sets_id()
                                        .then(|| decoder.lend_event(&found).last_event_id_bytes()),
                                    found.retry(),
                                ));
                            }
                        }
                        FoundKind::Event => {
                            let event = decoder.lend_event(&found);
                            let forward_it = observe(
                                event,
                                now,
                                classifier,
                                observer,
                                report,
                                *delivered,
                                &mut activity,
                            );
                            let strip = !config.forward_comments && *comment_in_block;
                            *comment_in_block = false;
                            if !forward_it {
                                continue;
                            }
                            if strip {
                                flush(decoder, pending, outbox);
                                let event = decoder.lend_event(&found);
                                outbox.push(reencode(
                                    Some(event),
                                    found.sets_id().then(|| event.last_event_id_bytes()),
                                    found.retry(),
                                ));
                            } else {
                                forward(decoder, &found, pending, outbox);
                            }
                        }
                    }
                }
                flush(decoder, pending, outbox);
            }
            Framer::JsonLines(lines) => {
                while let Some(line) = lines.next_line() {
                    let line = match line {
                        Ok(line) => line,
                        Err(e) => {
                            report.error = Some(e.to_string());
                            return Err(Outcome::EventTooLarge);
                        }
                    };
                    activity.items = true;
                    let event = Event::from_data(line);
                    if observe(
                        event.as_ref(),
                        now,
                        classifier,
                        observer,
                        report,
                        *delivered,
                        &mut activity,
                    ) {
                        outbox.push(event.into_raw());
                    }
                }
            }
        }
        Ok(activity)
    }

    /// End the stream with a failure: record it and queue the error event, whose message
    /// is `message` (the layer's own words, safe to show a client).
    pub(crate) fn fail(&mut self, outcome: Outcome, message: String) {
        if let Some(bytes) = self.config.error_event.render(outcome, &message) {
            self.outbox.push(bytes);
        }
        self.report.outcome = outcome;
        self.report.error.get_or_insert(message);
    }

    /// End the stream with a failure whose details come from elsewhere (an upstream error's
    /// text can name internal hosts, or a URL with an API key in it): the details go to the
    /// report only; the client's error event says `message`.
    pub(crate) fn fail_privately(&mut self, outcome: Outcome, message: &str, details: String) {
        if let Some(bytes) = self.config.error_event.render(outcome, message) {
            self.outbox.push(bytes);
        }
        self.report.outcome = outcome;
        self.report.error.get_or_insert(details);
    }

    /// Pass the upstream's trailers on, after every data frame.
    pub(crate) fn push_trailers(&mut self, trailers: HeaderMap) {
        self.outbox.trailers = Some(Box::new(trailers));
    }

    /// Drop queued frames without handing them to anyone (the client is gone).
    #[cfg(feature = "drain")]
    pub(crate) fn discard_output(&mut self) {
        self.outbox.clear();
    }

    pub(crate) fn has_output(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// The next frame for the client.
    ///
    /// The decoder strips the upstream's leading byte order mark, as a client would. If the
    /// first bytes the client gets begin with a BOM anyway (the upstream sent two, or its first
    /// blocks were dropped), the client would strip that one and read the rest differently
    /// from the upstream: so a BOM goes first, for the client to strip instead.
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<Frame<Bytes>> {
        let mut frame = self.outbox.pop()?;
        if !self.output_started
            && let Some(data) = frame.data_ref()
        {
            self.output_started = true;
            if data.starts_with(BOM) {
                let mut with_bom = bytes::BytesMut::with_capacity(BOM.len() + data.len());
                with_bom.extend_from_slice(BOM);
                with_bom.extend_from_slice(data);
                frame = Frame::data(with_bom.freeze());
            }
        }
        if let Some(data) = frame.data_ref() {
            self.report.bytes_out += data.len() as u64;
            self.observer.on_data(data, &mut self.report);
        }
        Some(frame)
    }

    /// Count a keep-alive this layer sent.
    pub(crate) fn count_keep_alive(&mut self, len: usize) {
        self.output_started = true;
        self.report.keep_alives += 1;
        self.report.bytes_out += len as u64;
    }

    /// Close the report: the observers add their findings.
    pub(crate) fn close(&mut self, outcome: Outcome, now: Instant) -> StreamReport {
        // A failure recorded earlier (an error event sent) wins over a later outcome.
        if self.report.outcome == Outcome::Completed {
            self.report.outcome = outcome;
        }
        self.report.ended_at = now;
        self.report.provider = self.classifier.provider();
        self.observer.on_end(&mut self.report);
        let started_at = self.report.started_at;
        std::mem::replace(&mut self.report, StreamReport::new(started_at))
    }
}

/// Classify an event and let the observers see it. Returns whether to forward it.
#[inline]
fn observe<O: Observer>(
    event: EventRef<'_>,
    now: Instant,
    classifier: &mut Classifier,
    observer: &mut O,
    report: &mut StreamReport,
    delivered: bool,
    activity: &mut Activity,
) -> bool {
    report.events += 1;
    let found = classifier.classify(&event);
    classifier.fill_meta(&event, &mut report.response_id, &mut report.model);
    let content = found.is_some();
    if content {
        report.content_events += 1;
        activity.content = true;
    }
    let data = event.data_bytes();
    let mut cx = EventContext {
        at: now,
        content,
        text: found
            .flatten()
            .and_then(|(start, end)| data.get(start..end)),
        delivered,
        forward: true,
        provider: classifier.provider(),
        report,
    };
    observer.on_event(&event, &mut cx);
    cx.forward
}

/// Queue a found block's raw bytes, merging neighbours from the current chunk into one slice.
#[inline]
fn forward(
    decoder: &mut Decoder,
    found: &Found,
    pending: &mut Option<(usize, usize)>,
    outbox: &mut Outbox,
) {
    if found.is_unterminated() {
        flush(decoder, pending, outbox);
        let raw = Bytes::copy_from_slice(decoder.raw(found));
        outbox.push(terminate_block(&raw));
        return;
    }
    match (found.source, pending.as_mut()) {
        (Source::Input, Some((_, end))) if *end == found.raw.0 => *end = found.raw.1,
        (Source::Input, _) => {
            flush(decoder, pending, outbox);
            *pending = Some(found.raw);
        }
        (Source::Carry, _) => {
            flush(decoder, pending, outbox);
            outbox.push(Bytes::copy_from_slice(decoder.raw(found)));
        }
    }
}

#[inline]
fn flush(decoder: &mut Decoder, pending: &mut Option<(usize, usize)>, outbox: &mut Outbox) {
    if let Some((start, end)) = pending.take() {
        outbox.push(decoder.take_input(start, end));
    }
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
