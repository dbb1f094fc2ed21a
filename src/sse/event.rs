//! Decoded events and the event encoder.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use crate::digits::decimal;

/// One thing the [`Decoder`](super::Decoder) found in the stream.
///
/// Every byte of the input (except a leading byte order mark) belongs to the
/// [`raw`](Event::raw) bytes of exactly one [`Item::Event`] or [`Item::Block`], in order, so
/// a proxy that forwards those raw bytes forwards the upstream byte for byte. Comments are
/// reported on their own as soon as their line ends, but their bytes stay part of the
/// enclosing block.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Item {
    /// A dispatched event: a block with at least one `data` field, ended by a blank line.
    Event(Event),
    /// A comment line (`:` first). Servers use them as pings.
    Comment(Comment),
    /// A block that ended without dispatching an event, because it had no `data` field.
    ///
    /// It still matters to a proxy when it set `id` or `retry`, which change the client's state.
    Block(Block),
}

/// A dispatched Server-Sent Event.
///
/// Text accessors decode UTF-8 with replacement, as the HTML standard says; the `_bytes`
/// accessors give the bytes as sent. Fields are slices of the input where possible.
///
/// ```
/// use bytes::Bytes;
/// use tower_sse::sse::{Decoder, Item};
///
/// let mut decoder = Decoder::new();
/// decoder.push(Bytes::from_static(b"event: delta\nid: 7\ndata: {\"text\":\"Hi\"}\n\n"));
/// let Some(Ok(Item::Event(event))) = decoder.next() else { panic!("one event") };
/// assert_eq!(event.event(), "delta");
/// assert_eq!(event.data(), r#"{"text":"Hi"}"#);
/// assert_eq!(event.last_event_id(), "7");
/// // A proxy forwards the bytes as they came.
/// assert_eq!(&event.raw()[..], b"event: delta\nid: 7\ndata: {\"text\":\"Hi\"}\n\n");
///
/// // NDJSON reframed as SSE:
/// let event = tower_sse::sse::Event::from_data(Bytes::from_static(b"{\"n\":1}"));
/// assert_eq!(&event.raw()[..], b"data: {\"n\":1}\n\n");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Event {
    pub(crate) event: Bytes,
    pub(crate) data: Bytes,
    pub(crate) id: Bytes,
    pub(crate) retry: Option<u64>,
    pub(crate) raw: Bytes,
}

impl Event {
    /// Start building an event to encode.
    pub fn builder() -> EventBuilder {
        EventBuilder::default()
    }

    /// Wrap one payload, such as a line of JSON, as a `data`-only event: the reframing of
    /// NDJSON into SSE. The wire form is `data: <payload>\n\n` (several `data` lines when
    /// the payload holds line breaks), built with one allocation.
    pub fn from_data(data: Bytes) -> Self {
        let raw = encode_data_only(&data);
        let data = if memchr::memchr(b'\r', &data).is_some() {
            normalize_newlines(&data)
        } else {
            data
        };
        Self {
            event: Bytes::new(),
            data,
            id: Bytes::new(),
            retry: None,
            raw,
        }
    }

    /// The event type: the `event` field, or `"message"` when the block had none.
    pub fn event(&self) -> Cow<'_, str> {
        self.as_ref().event()
    }

    /// The `event` field as sent; empty when the block had none.
    pub fn event_bytes(&self) -> &Bytes {
        &self.event
    }

    /// The data: the `data` lines joined with `\n`.
    pub fn data(&self) -> Cow<'_, str> {
        self.as_ref().data()
    }

    /// The data as bytes (a slice of the input when the event had one `data` line).
    pub fn data_bytes(&self) -> &Bytes {
        &self.data
    }

    /// The last event id in force when this event was dispatched (ids persist across events).
    pub fn last_event_id(&self) -> Cow<'_, str> {
        self.as_ref().last_event_id()
    }

    /// The last event id as bytes.
    pub fn last_event_id_bytes(&self) -> &Bytes {
        &self.id
    }

    /// The reconnection time, when this block set a valid `retry` field.
    pub fn retry(&self) -> Option<Duration> {
        self.as_ref().retry()
    }

    /// The bytes of the whole block as received, blank line included.
    ///
    /// A slice of the input when the block arrived in one chunk; copied once otherwise.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Take the raw bytes out of the event.
    pub fn into_raw(self) -> Bytes {
        self.raw
    }

    /// Borrow the event, as observers see it.
    pub fn as_ref(&self) -> EventRef<'_> {
        EventRef {
            event: &self.event,
            data: &self.data,
            id: &self.id,
            retry: self.retry,
            raw: &self.raw,
            unterminated: false,
        }
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Payloads can be private: show sizes, not contents.
        f.debug_struct("Event")
            .field("event", &self.event())
            .field("data_len", &self.data.len())
            .field("id_len", &self.id.len())
            .field("retry", &self.retry)
            .field("raw_len", &self.raw.len())
            .finish()
    }
}

/// A comment line. Its bytes are part of the [`raw`](Event::raw) bytes of the enclosing block.
///
/// ```
/// use bytes::Bytes;
/// use tower_sse::sse::{Decoder, Item};
///
/// let mut decoder = Decoder::new();
/// decoder.push(Bytes::from_static(b": ping\n\n"));
/// let Some(Ok(Item::Comment(comment))) = decoder.next() else { panic!("a comment") };
/// assert_eq!(comment.text(), "ping");
/// // Then the block it was in, which dispatched no event.
/// let Some(Ok(Item::Block(block))) = decoder.next() else { panic!("its block") };
/// assert_eq!(&block.raw()[..], b": ping\n\n");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Comment {
    pub(crate) text: Bytes,
}

impl Comment {
    /// The text after the colon, with one leading space removed.
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.text)
    }

    /// The text as bytes.
    pub fn text_bytes(&self) -> &Bytes {
        &self.text
    }
}

impl fmt::Debug for Comment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Comment")
            .field("len", &self.text.len())
            .finish()
    }
}

/// A block that dispatched no event (no `data` field): blank lines, pings, or `id:` /
/// `retry:` updates.
///
/// ```
/// use std::time::Duration;
///
/// use bytes::Bytes;
/// use tower_sse::sse::{Decoder, Item};
///
/// let mut decoder = Decoder::new();
/// decoder.push(Bytes::from_static(b"retry: 3000\n\n"));
/// let Some(Ok(Item::Block(block))) = decoder.next() else { panic!("a block") };
/// assert_eq!(block.retry(), Some(Duration::from_secs(3)));
/// // It changes what a client does on reconnection: a proxy must forward it.
/// assert!(block.changes_state() && !block.sets_id());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Block {
    pub(crate) raw: Bytes,
    pub(crate) sets_id: bool,
    pub(crate) retry: Option<u64>,
    pub(crate) has_fields: bool,
}

impl Block {
    /// The bytes of the block as received, blank line included.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Whether the block set the last event id, which a client keeps for reconnection.
    pub fn sets_id(&self) -> bool {
        self.sets_id
    }

    /// The reconnection time, when this block set a valid `retry` field.
    pub fn retry(&self) -> Option<Duration> {
        self.retry.map(Duration::from_millis)
    }

    /// Whether the block changes a client's state (`id` or `retry`): a proxy must forward
    /// such blocks to stay transparent; other empty blocks can be dropped.
    pub fn changes_state(&self) -> bool {
        self.sets_id || self.retry.is_some()
    }

    /// Whether the block had any field line (as opposed to only comments and blank lines).
    pub fn has_fields(&self) -> bool {
        self.has_fields
    }
}

impl fmt::Debug for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Block")
            .field("raw_len", &self.raw.len())
            .field("sets_id", &self.sets_id)
            .field("retry", &self.retry)
            .finish()
    }
}

/// One thing the decoder found, borrowed from its buffers: see
/// [`Decoder::next_ref`](super::Decoder::next_ref).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ItemRef<'a> {
    /// A dispatched event.
    Event(EventRef<'a>),
    /// A comment line: its text after the colon, one leading space removed.
    Comment(&'a [u8]),
    /// A block that dispatched no event.
    Block(BlockRef<'a>),
}

/// A dispatched event, borrowed from the decoder (or from an owned [`Event`] with
/// [`Event::as_ref`]). This is what observers see: reading it costs nothing.
///
/// [`EventRef::new`] makes one by hand, to test an observer:
///
/// ```
/// use tower_sse::sse::EventRef;
///
/// let raw = b"event: ping\ndata: {}\n\n";
/// let event = EventRef::new(b"ping", b"{}", raw);
/// assert_eq!(event.event(), "ping");
/// assert_eq!(event.data_bytes(), b"{}");
/// assert_eq!(event.raw(), raw);
/// assert_eq!(event.retry(), None);
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub(crate) event: &'a [u8],
    pub(crate) data: &'a [u8],
    pub(crate) id: &'a [u8],
    pub(crate) retry: Option<u64>,
    pub(crate) raw: &'a [u8],
    pub(crate) unterminated: bool,
}

impl<'a> EventRef<'a> {
    /// An event with the given parts, for tests and custom framings. `raw` should be the
    /// event's wire form.
    pub fn new(event: &'a [u8], data: &'a [u8], raw: &'a [u8]) -> Self {
        Self {
            event,
            data,
            id: &[],
            retry: None,
            raw,
            unterminated: false,
        }
    }

    /// The event type: the `event` field, or `"message"` when the block had none.
    pub fn event(&self) -> Cow<'a, str> {
        if self.event.is_empty() {
            Cow::Borrowed("message")
        } else {
            String::from_utf8_lossy(self.event)
        }
    }

    /// The `event` field as sent; empty when the block had none.
    pub fn event_bytes(&self) -> &'a [u8] {
        self.event
    }

    /// The data: the `data` lines joined with `\n`.
    pub fn data(&self) -> Cow<'a, str> {
        String::from_utf8_lossy(self.data)
    }

    /// The data as bytes.
    pub fn data_bytes(&self) -> &'a [u8] {
        self.data
    }

    /// The last event id in force when this event was dispatched.
    pub fn last_event_id(&self) -> Cow<'a, str> {
        String::from_utf8_lossy(self.id)
    }

    /// The last event id as bytes.
    pub fn last_event_id_bytes(&self) -> &'a [u8] {
        self.id
    }

    /// The reconnection time, when this block set a valid `retry` field.
    pub fn retry(&self) -> Option<Duration> {
        self.retry.map(Duration::from_millis)
    }

    /// The bytes of the block as received.
    ///
    /// See [`is_unterminated`](Self::is_unterminated) for the one case where they lack the
    /// blank line.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Whether this event was flushed at the end of input in
    /// [lenient](super::Decoder::lenient_eof) mode without its blank line: forward it with
    /// one added (owned [`Event`]s get it added for you).
    pub fn is_unterminated(&self) -> bool {
        self.unterminated
    }
}

impl fmt::Debug for EventRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventRef")
            .field("event", &self.event())
            .field("data_len", &self.data.len())
            .field("id_len", &self.id.len())
            .field("retry", &self.retry)
            .field("raw_len", &self.raw.len())
            .finish()
    }
}

/// A block that dispatched no event, borrowed from the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef<'a> {
    pub(crate) raw: &'a [u8],
    pub(crate) sets_id: bool,
    pub(crate) retry: Option<u64>,
    pub(crate) has_fields: bool,
    pub(crate) unterminated: bool,
}

impl<'a> BlockRef<'a> {
    /// The bytes of the block as received.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Whether the block set the last event id.
    pub fn sets_id(&self) -> bool {
        self.sets_id
    }

    /// The reconnection time, when this block set a valid `retry` field.
    pub fn retry(&self) -> Option<Duration> {
        self.retry.map(Duration::from_millis)
    }

    /// Whether the block changes a client's state (`id` or `retry`).
    pub fn changes_state(&self) -> bool {
        self.sets_id || self.retry.is_some()
    }

    /// Whether the block had any field line.
    pub fn has_fields(&self) -> bool {
        self.has_fields
    }

    /// Whether the block was flushed at the end of input without its blank line.
    pub fn is_unterminated(&self) -> bool {
        self.unterminated
    }
}

/// Why an event could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The event type contains a CR or LF, which would end the field early.
    EventHasNewline,
    /// The id contains a CR or LF, which would end the field early.
    IdHasNewline,
    /// The id contains NUL, which clients ignore.
    IdHasNul,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::EventHasNewline => "sse event type contains a line break",
            Self::IdHasNewline => "sse event id contains a line break",
            Self::IdHasNul => "sse event id contains a NUL character",
        })
    }
}

impl std::error::Error for EncodeError {}

/// Builds the wire form of one event.
///
/// Unlike axum's `Event`, invalid input is an [`EncodeError`], never a panic. Data holding
/// CR, LF or CRLF becomes several `data` lines; a comment holding line breaks becomes several
/// comment lines. [`encode`](Self::encode) allocates once, at the exact size.
///
/// ```
/// use tower_sse::sse::Event;
///
/// let bytes = Event::builder()
///     .event("error")
///     .data("line one\nline two")
///     .id("42")
///     .encode()
///     .unwrap();
/// assert_eq!(&bytes[..], b"event: error\nid: 42\ndata: line one\ndata: line two\n\n");
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct EventBuilder {
    comments: Vec<Bytes>,
    event: Option<Bytes>,
    id: Option<Bytes>,
    retry: Option<u64>,
    data: Option<Bytes>,
}

impl EventBuilder {
    /// Set the event type (`event:` field).
    pub fn event(mut self, event: impl Into<Bytes>) -> Self {
        self.event = Some(event.into());
        self
    }

    /// Set the data. Without data the block dispatches nothing on the client (an `id` or
    /// `retry` update); with empty data it dispatches an event whose data is empty.
    pub fn data(mut self, data: impl Into<Bytes>) -> Self {
        self.data = Some(data.into());
        self
    }

    /// Set the `id:` field. An empty id resets the client's last event id.
    pub fn id(mut self, id: impl Into<Bytes>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Set the `retry:` field, in whole milliseconds.
    pub fn retry(mut self, retry: Duration) -> Self {
        self.retry = Some(u64::try_from(retry.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Add a comment line (may be called more than once).
    pub fn comment(mut self, comment: impl Into<Bytes>) -> Self {
        self.comments.push(comment.into());
        self
    }

    /// Encode the event.
    ///
    /// # Errors
    ///
    /// When the event type or id holds a line break, or the id holds NUL.
    pub fn encode(&self) -> Result<Bytes, EncodeError> {
        if let Some(event) = &self.event
            && memchr::memchr2(b'\r', b'\n', event).is_some()
        {
            return Err(EncodeError::EventHasNewline);
        }
        if let Some(id) = &self.id {
            if memchr::memchr2(b'\r', b'\n', id).is_some() {
                return Err(EncodeError::IdHasNewline);
            }
            if memchr::memchr(0, id).is_some() {
                return Err(EncodeError::IdHasNul);
            }
        }
        let mut retry_digits = itoa_buf();
        let retry = self.retry.map(|ms| decimal(ms, &mut retry_digits));

        let mut len = 1; // the blank line
        for comment in &self.comments {
            len += lines_len(comment, 1);
        }
        if let Some(event) = &self.event {
            len += field_len(b"event", event);
        }
        if let Some(id) = &self.id {
            len += field_len(b"id", id);
        }
        if let Some(retry) = retry {
            len += field_len(b"retry", retry);
        }
        if let Some(data) = &self.data {
            len += lines_len(data, b"data:".len());
        }

        let mut out = BytesMut::with_capacity(len);
        for comment in &self.comments {
            put_lines(&mut out, b":", comment);
        }
        if let Some(event) = &self.event {
            put_field(&mut out, b"event", event);
        }
        if let Some(id) = &self.id {
            put_field(&mut out, b"id", id);
        }
        if let Some(retry) = retry {
            put_field(&mut out, b"retry", retry);
        }
        if let Some(data) = &self.data {
            put_lines(&mut out, b"data:", data);
        }
        out.put_u8(b'\n');
        debug_assert_eq!(out.len(), len);
        Ok(out.freeze())
    }
}

/// A comment block (`: text\n\n`, one line per line of text), for keep-alives and pings.
pub fn comment_block(text: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(lines_len(text, 1) + 1);
    put_lines(&mut out, b":", text);
    out.put_u8(b'\n');
    out.freeze()
}

/// The raw bytes of a block with the blank line that ends it added when it is missing, so
/// that a block flushed at end of input is still a whole event downstream.
pub(crate) fn terminate_block(raw: &Bytes) -> Bytes {
    let tail: &[u8] = match raw.last() {
        // `\r` may be completed to CRLF by a following `\n`, so end it with a blank line of its own.
        Some(b'\n') => b"\n",
        Some(b'\r') => b"\r",
        _ => b"\n\n",
    };
    let mut out = BytesMut::with_capacity(raw.len() + tail.len());
    out.extend_from_slice(raw);
    out.extend_from_slice(tail);
    out.freeze()
}

fn encode_data_only(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(lines_len(data, b"data:".len()) + 1);
    put_lines(&mut out, b"data:", data);
    out.put_u8(b'\n');
    out.freeze()
}

/// Replace CRLF and lone CR with LF, as a decoder would see the data.
pub(crate) fn normalize_newlines(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len());
    let mut lines = Lines::new(data).peekable();
    while let Some(line) = lines.next() {
        out.extend_from_slice(line);
        if lines.peek().is_some() {
            out.put_u8(b'\n');
        }
    }
    out.freeze()
}

fn field_len(name: &[u8], value: &[u8]) -> usize {
    name.len() + 2 + value.len() + 1
}

fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.put_u8(b'\n');
}

/// Length of `value` written as lines of `prefix` (`prefix_len` bytes) plus `" value\n"`.
fn lines_len(value: &[u8], prefix_len: usize) -> usize {
    Lines::new(value)
        .map(|line| prefix_len + usize::from(!line.is_empty()) + line.len() + 1)
        .sum()
}

fn put_lines(out: &mut BytesMut, prefix: &[u8], value: &[u8]) {
    for line in Lines::new(value) {
        out.extend_from_slice(prefix);
        if !line.is_empty() {
            out.put_u8(b' ');
            out.extend_from_slice(line);
        }
        out.put_u8(b'\n');
    }
}

/// Splits on CRLF, CR and LF; always yields at least one (possibly empty) line.
struct Lines<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Lines<'a> {
    fn new(value: &'a [u8]) -> Self {
        Self { rest: Some(value) }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        match memchr::memchr2(b'\r', b'\n', rest) {
            Some(i) => {
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                self.rest = Some(&rest[i + skip..]);
                Some(&rest[..i])
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

fn itoa_buf() -> [u8; 20] {
    [0; 20]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digits::decimal as format_u64;

    #[test]
    fn data_with_crlf_becomes_several_data_lines() {
        let bytes = Event::builder().data("a\r\nb\rc\nd").encode().unwrap();
        assert_eq!(&bytes[..], b"data: a\ndata: b\ndata: c\ndata: d\n\n");
    }

    #[test]
    fn empty_data_is_one_empty_data_line() {
        let bytes = Event::builder().data("").encode().unwrap();
        assert_eq!(&bytes[..], b"data:\n\n");
    }

    #[test]
    fn trailing_newline_in_data_adds_an_empty_data_line() {
        let bytes = Event::builder().data("a\n").encode().unwrap();
        assert_eq!(&bytes[..], b"data: a\ndata:\n\n");
    }

    #[test]
    fn leading_space_in_data_is_kept() {
        let bytes = Event::builder().data("  x").encode().unwrap();
        assert_eq!(&bytes[..], b"data:   x\n\n");
    }

    #[test]
    fn newline_in_event_type_is_an_error() {
        let err = Event::builder()
            .event("a\nb")
            .data("x")
            .encode()
            .unwrap_err();
        assert_eq!(err, EncodeError::EventHasNewline);
        assert_eq!(err.to_string(), "sse event type contains a line break");
    }

    #[test]
    fn newline_or_nul_in_id_is_an_error() {
        assert_eq!(
            Event::builder().id("a\rb").encode().unwrap_err(),
            EncodeError::IdHasNewline
        );
        assert_eq!(
            Event::builder().id("a\0b").encode().unwrap_err(),
            EncodeError::IdHasNul
        );
    }

    #[test]
    fn every_field_in_order() {
        let bytes = Event::builder()
            .comment("hi\nthere")
            .event("update")
            .id("7")
            .retry(Duration::from_millis(3000))
            .data("x")
            .encode()
            .unwrap();
        assert_eq!(
            &bytes[..],
            b": hi\n: there\nevent: update\nid: 7\nretry: 3000\ndata: x\n\n"
        );
    }

    #[test]
    fn comment_block_splits_lines() {
        assert_eq!(&comment_block(b"keep-alive")[..], b": keep-alive\n\n");
        assert_eq!(&comment_block(b"")[..], b":\n\n");
        assert_eq!(&comment_block(b"a\r\nb")[..], b": a\n: b\n\n");
    }

    #[test]
    fn from_data_frames_a_json_line() {
        let event = Event::from_data(Bytes::from_static(br#"{"a":1}"#));
        assert_eq!(&event.raw()[..], b"data: {\"a\":1}\n\n");
        assert_eq!(event.data(), r#"{"a":1}"#);
        assert_eq!(event.event(), "message");
    }

    #[test]
    fn terminate_block_adds_only_what_is_missing() {
        assert_eq!(
            &terminate_block(&Bytes::from_static(b"data: x"))[..],
            b"data: x\n\n"
        );
        assert_eq!(
            &terminate_block(&Bytes::from_static(b"data: x\n"))[..],
            b"data: x\n\n"
        );
        assert_eq!(
            &terminate_block(&Bytes::from_static(b"data: x\r"))[..],
            b"data: x\r\r"
        );
    }

    #[test]
    fn format_u64_edges() {
        let mut buf = itoa_buf();
        assert_eq!(format_u64(0, &mut buf), b"0");
        let mut buf = itoa_buf();
        assert_eq!(format_u64(u64::MAX, &mut buf), b"18446744073709551615");
    }
}
