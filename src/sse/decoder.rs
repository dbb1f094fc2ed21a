//! The incremental event-stream decoder.

use std::collections::VecDeque;
use std::fmt;

use bytes::{Bytes, BytesMut};

use super::event::{Block, BlockRef, Comment, Event, EventRef, Item, ItemRef, terminate_block};

/// The default for [`Decoder::max_event_size`]: 8 MiB.
///
/// Large enough for events that carry images as base64, small enough that a broken upstream
/// sending one endless line cannot exhaust memory.
pub const DEFAULT_MAX_EVENT_SIZE: usize = 8 * 1024 * 1024;

/// The UTF-8 byte order mark, which may start a stream (and is not part of it).
pub(crate) const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The size of the buffer event ids are copied into (see [`Decoder::set_last_event_id`]).
const ID_BUFFER_BYTES: usize = 256;

/// An incremental, push-based decoder of the `text/event-stream` format, exactly as the
/// HTML standard interprets it.
///
/// Push [`Bytes`] chunks of any size with [`push`](Self::push), then take what they
/// completed, either borrowed with [`next_ref`](Self::next_ref) (no copies, no reference
/// counting, no allocation in steady state) or owned by iterating (events are slices of the
/// input chunk when they arrived in one). Call [`finish`](Self::finish) at the end of input
/// and drain once more.
///
/// - **Spec-exact**: CRLF, LF and CR line ends (a CR that ends a chunk ends its line at once;
///   an LF that starts the next chunk is not a second line end), one leading BOM stripped,
///   comments, fields without a colon, one space stripped after the colon, `data` lines joined
///   with LF, blocks without data dispatch nothing, ids holding NUL ignored, the last event id
///   persisting across events, `retry` with ASCII digits only, unknown fields ignored, and an
///   unterminated final block discarded (unless [`lenient_eof`](Self::lenient_eof) is on).
/// - **Byte-exact**: every input byte but a leading BOM belongs to the raw bytes of exactly
///   one event or block, so forwarding them reproduces the upstream. (If the raw bytes you
///   forward first begin with a BOM of their own, send a BOM before them, or the client strips
///   theirs; `SseLayer` does.)
/// - **Linear**: bytes are scanned for line ends once, with `memchr`; buffered bytes are never
///   scanned again, however the input is split.
/// - **Bounded**: one event may hold at most [`max_event_size`](Self::max_event_size) bytes.
///   A larger one yields [`DecodeError::EventTooLarge`], its bytes are released, and the
///   decoder skips to the end of that block and carries on. The decoder keeps no slice of
///   a chunk it has moved past: the last event id is its own copy (ids are copied into a
///   shared buffer, one allocation per 256 bytes of ids).
///
/// ```
/// use bytes::Bytes;
/// use tower_sse::sse::{Decoder, Item};
///
/// let mut decoder = Decoder::new();
/// decoder.push(Bytes::from_static(b"event: delta\ndata: {\"text\":\"Hel"));
/// assert!(decoder.next().is_none()); // the event is not complete yet
/// decoder.push(Bytes::from_static(b"lo\"}\n\n: ping\n\n"));
/// let Some(Ok(Item::Event(event))) = decoder.next() else { panic!() };
/// assert_eq!(event.event(), "delta");
/// assert_eq!(event.data(), r#"{"text":"Hello"}"#);
/// assert!(matches!(decoder.next(), Some(Ok(Item::Comment(_)))));
/// assert!(matches!(decoder.next(), Some(Ok(Item::Block(_)))));
/// decoder.finish();
/// assert!(decoder.next().is_none());
/// assert!(!decoder.is_truncated());
/// ```
#[must_use]
pub struct Decoder {
    max_event_size: usize,
    lenient_eof: bool,

    /// The chunk being decoded and the position of the next byte to look at.
    input: Bytes,
    pos: usize,
    /// Chunks pushed before the previous one was fully decoded.
    queue: VecDeque<Bytes>,

    /// The bytes of the current block when it began in an earlier chunk (`carrying`). The
    /// buffer is reused from block to block.
    carry: BytesMut,
    carrying: bool,
    /// The last item lent out lives in `carry`: clear it before decoding on.
    release_carry: bool,
    /// Where the current block begins in `input` when not carrying.
    block_start: usize,
    /// Where the current line begins, relative to the block.
    line_start: usize,
    block: BlockState,
    /// The data of a block with several `data` lines, joined with LF; reused.
    joined: BytesMut,

    skip_lf: SkipLf,
    bom_checked: bool,
    /// After an oversized event: skipping to the end of its block.
    discarding: bool,
    eof: EofState,
    truncated: bool,
    /// The bytes of a block the input ended in, kept for a relay to forward (strict mode).
    trailing: Option<Trailing>,

    last_event_id: Bytes,
    /// Where ids are copied to, one after the other (see [`Self::set_last_event_id`]).
    ids: BytesMut,
    reconnection_time: Option<u64>,
}

#[derive(Debug, Default, Clone, Copy)]
struct BlockState {
    data: Data,
    event: Option<(usize, usize)>,
    id: Option<(usize, usize)>,
    retry: Option<u64>,
    has_fields: bool,
    /// An `id` field line, valid or not (one holding NUL is ignored by `id` but is there).
    #[cfg_attr(not(feature = "resume"), allow(dead_code))]
    id_line: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Data {
    #[default]
    None,
    /// One `data` line: a range of the block, so it can be a slice of the input.
    One(usize, usize),
    /// Several lines, joined in `Decoder::joined`.
    Joined,
}

/// Where an LF that completes a CRLF split across chunks belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SkipLf {
    No,
    /// The CR ended a line inside the current block: the LF joins the block.
    Inside,
    /// The CR ended a block: the LF is handed on at once as a block of its own, so that raw
    /// bytes come out the same however the input is split.
    Emit,
    /// The CR ended a line of a discarded block: the LF is discarded too.
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EofState {
    Open,
    /// Input ended; the final block still has to be dealt with.
    Ending,
    /// The partial last line was processed (lenient mode); the block end comes next.
    LineFlushed,
    Done,
}

/// Where the bytes of a found item live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Input,
    Carry,
}

/// The bytes of the block a strict decoder's input ended in, which it discarded: what a
/// relay forwards so that a client's own parser sees the end of the stream as it came.
#[derive(Debug, Clone)]
pub(crate) struct Trailing {
    /// The block as the upstream sent it, up to the end of input.
    pub(crate) raw: Bytes,
    /// A complete `retry:` line in it (a client applies it even though the block is lost).
    pub(crate) retry: Option<u64>,
}

/// An item located in the decoder's buffers, before it is lent or copied out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Found {
    pub(crate) kind: FoundKind,
    pub(crate) source: Source,
    /// The raw bytes (for a comment: its text).
    pub(crate) raw: (usize, usize),
    block: BlockState,
    /// Raw bytes need the blank line that the input did not send (lenient end of input).
    unterminated: bool,
}

impl Found {
    /// Whether the block set the last event id.
    pub(crate) fn sets_id(&self) -> bool {
        self.block.id.is_some()
    }

    /// Whether the block has an `id` field line, valid or not: a layer that stamps ids of
    /// its own must replace it rather than put a second one beside it.
    #[cfg(feature = "resume")]
    pub(crate) fn has_id_line(&self) -> bool {
        self.block.id_line
    }

    /// The `retry` the block set.
    pub(crate) fn retry(&self) -> Option<u64> {
        self.block.retry
    }

    /// Raw bytes lack the blank line the input never sent (lenient end of input).
    pub(crate) fn is_unterminated(&self) -> bool {
        self.unterminated
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FoundKind {
    Event,
    Comment,
    Block,
}

/// Why the decoder refused input.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// One event (or one line) grew past the configured limit. The decoder released its
    /// bytes and skips to the end of that block.
    EventTooLarge {
        /// The limit in force, in bytes.
        limit: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EventTooLarge { limit } => {
                write!(f, "sse event larger than the limit of {limit} bytes")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("max_event_size", &self.max_event_size)
            .field("lenient_eof", &self.lenient_eof)
            .field("buffered", &self.buffered())
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

impl Decoder {
    /// A decoder with the default limit and strict end-of-input handling.
    pub fn new() -> Self {
        Self {
            max_event_size: DEFAULT_MAX_EVENT_SIZE,
            lenient_eof: false,
            input: Bytes::new(),
            pos: 0,
            queue: VecDeque::new(),
            carry: BytesMut::new(),
            carrying: false,
            release_carry: false,
            block_start: 0,
            line_start: 0,
            block: BlockState::default(),
            joined: BytesMut::new(),
            skip_lf: SkipLf::No,
            bom_checked: false,
            discarding: false,
            eof: EofState::Open,
            truncated: false,
            trailing: None,
            last_event_id: Bytes::new(),
            ids: BytesMut::new(),
            reconnection_time: None,
        }
    }

    /// Limit the bytes of one event: its lines up to the blank line that ends it (line
    /// ends counted as one byte). Default: [`DEFAULT_MAX_EVENT_SIZE`]. `0` is treated as 1.
    pub fn max_event_size(mut self, limit: usize) -> Self {
        self.max_event_size = limit.max(1);
        self
    }

    /// Dispatch a final block that the input ends without a blank line (real servers omit
    /// it). Off by default: the standard discards such a block.
    ///
    /// The raw bytes of such a block get the missing line end and blank line appended, so
    /// that forwarding them delivers the event to a client.
    pub fn lenient_eof(mut self, lenient: bool) -> Self {
        self.lenient_eof = lenient;
        self
    }

    /// The configured event size limit.
    pub fn event_size_limit(&self) -> usize {
        self.max_event_size
    }

    /// Add a chunk of input. Chunks may split the stream anywhere, even inside a CRLF or a
    /// UTF-8 character. Pushing after [`finish`](Self::finish) is ignored.
    ///
    /// Push when the previous chunk is drained to stay copy-free; pushing earlier is correct
    /// too (the chunk waits in a queue).
    #[inline]
    pub fn push(&mut self, chunk: Bytes) {
        if self.eof != EofState::Open || chunk.is_empty() {
            return;
        }
        if self.pos >= self.input.len() && self.queue.is_empty() {
            self.advance_to(chunk);
        } else {
            self.queue.push_back(chunk);
        }
    }

    /// Mark the end of input. Drain afterwards to get the remaining items, including a final
    /// unterminated event in [lenient](Self::lenient_eof) mode.
    pub fn finish(&mut self) {
        if self.eof == EofState::Open {
            self.eof = EofState::Ending;
        }
    }

    /// Whether [`finish`](Self::finish) was called and everything was drained.
    pub fn is_finished(&self) -> bool {
        self.eof == EofState::Done
    }

    /// After [`finish`](Self::finish) and draining: whether the input ended inside an event
    /// that was discarded (a block with `data` but no blank line after it).
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// The last event id, as a client would send it in `Last-Event-ID` when reconnecting.
    pub fn last_event_id(&self) -> &Bytes {
        &self.last_event_id
    }

    /// The reconnection time the stream asked for with `retry`, in milliseconds.
    pub fn reconnection_time(&self) -> Option<u64> {
        self.reconnection_time
    }

    /// Bytes held for the event being assembled (the memory that
    /// [`max_event_size`](Self::max_event_size) bounds).
    pub fn buffered(&self) -> usize {
        if self.discarding {
            0
        } else if self.carrying {
            self.carry.len()
        } else {
            self.input.len().saturating_sub(self.block_start)
        }
    }

    /// Whether the decoder is inside a block: some of its bytes arrived, its blank line not yet.
    pub fn in_block(&self) -> bool {
        self.block_len() > 0 || self.discarding
    }

    /// Whether the decoder holds nothing of the input: every pushed byte was decoded, no
    /// block is open, no line end is split across chunks, and the input has not ended. A
    /// whole event pushed now would be decoded alone, exactly as from the start.
    #[cfg(feature = "resume")]
    pub(crate) fn is_idle(&self) -> bool {
        self.pos >= self.input.len()
            && self.queue.is_empty()
            && !self.carrying
            && self.block_len() == 0
            && !self.discarding
            && self.skip_lf == SkipLf::No
            && self.eof == EofState::Open
    }

    /// Input was taken past the decoder (a whole event it did not need to see): a byte order
    /// mark can no longer come first.
    #[cfg(feature = "resume")]
    pub(crate) fn skipped_input(&mut self) {
        self.bom_checked = true;
    }

    /// The next item, borrowed from the decoder's buffers until the next call.
    ///
    /// This is the fastest way to decode: nothing is copied, reference counted or allocated
    /// (buffers for events that span chunks are reused).
    #[inline]
    pub fn next_ref(&mut self) -> Option<Result<ItemRef<'_>, DecodeError>> {
        match self.find_next()? {
            Ok(found) => Some(Ok(self.lend(&found))),
            Err(e) => Some(Err(e)),
        }
    }

    /// Find the next item.
    #[inline]
    pub(crate) fn find_next(&mut self) -> Option<Result<Found, DecodeError>> {
        if self.release_carry {
            self.release_carry = false;
            self.carry.clear();
        }
        let found = self.decode_next();
        if let Some(Ok(found)) = &found
            && found.source == Source::Carry
            && found.kind != FoundKind::Comment
        {
            self.release_carry = true;
        }
        found
    }

    fn source(&self, source: Source) -> &[u8] {
        match source {
            Source::Input => &self.input,
            Source::Carry => &self.carry,
        }
    }

    /// Borrow a found item.
    #[inline]
    pub(super) fn lend(&self, found: &Found) -> ItemRef<'_> {
        let raw = self.raw(found);
        match found.kind {
            FoundKind::Comment => ItemRef::Comment(raw),
            FoundKind::Block => ItemRef::Block(BlockRef {
                raw,
                sets_id: found.block.id.is_some(),
                retry: found.block.retry,
                has_fields: found.block.has_fields,
                unterminated: found.unterminated,
            }),
            FoundKind::Event => ItemRef::Event(self.lend_event(found)),
        }
    }

    /// The raw bytes of a found item (for a comment: its text).
    #[inline]
    pub(crate) fn raw(&self, found: &Found) -> &[u8] {
        &self.source(found.source)[found.raw.0..found.raw.1]
    }

    /// Borrow a found event.
    #[inline]
    pub(crate) fn lend_event(&self, found: &Found) -> EventRef<'_> {
        let bytes = self.source(found.source);
        let range = |r: Option<(usize, usize)>| r.map_or(&[][..], |(s, e)| &bytes[s..e]);
        EventRef {
            event: range(found.block.event),
            data: match found.block.data {
                Data::One(s, e) => &bytes[s..e],
                Data::Joined => &self.joined,
                Data::None => &[],
            },
            id: &self.last_event_id,
            retry: found.block.retry,
            raw: &bytes[found.raw.0..found.raw.1],
            unterminated: found.unterminated,
        }
    }

    /// The unfinished block the input ended in, once (strict mode, after draining).
    pub(super) fn take_trailing(&mut self) -> Option<Trailing> {
        self.trailing.take()
    }

    /// Bytes `[start, end)` of the current input chunk. When that is the whole chunk and
    /// the decoder needs nothing more from it, the chunk itself is handed over (no reference
    /// count touched).
    #[inline]
    pub(super) fn take_input(&mut self, start: usize, end: usize) -> Bytes {
        let len = self.input.len();
        if start == 0
            && end == len
            && self.pos >= len
            && self.queue.is_empty()
            && (self.carrying || self.block_start >= len)
        {
            self.pos = 0;
            self.block_start = 0;
            std::mem::take(&mut self.input)
        } else {
            self.input.slice(start..end)
        }
    }

    /// Turn a found item into an owned one: slices of the input, copies of buffered bytes.
    fn own(&self, found: &Found) -> Item {
        let bytes = |(start, end): (usize, usize)| match found.source {
            Source::Input => self.input.slice(start..end),
            Source::Carry => Bytes::copy_from_slice(&self.carry[start..end]),
        };
        let mut raw = bytes(found.raw);
        if found.unterminated {
            raw = terminate_block(&raw);
        }
        match found.kind {
            FoundKind::Comment => Item::Comment(Comment { text: raw }),
            FoundKind::Block => Item::Block(Block {
                raw,
                sets_id: found.block.id.is_some(),
                retry: found.block.retry,
                has_fields: found.block.has_fields,
            }),
            FoundKind::Event => Item::Event(Event {
                event: found.block.event.map_or_else(Bytes::new, bytes),
                data: match found.block.data {
                    Data::One(s, e) => bytes((s, e)),
                    Data::Joined => Bytes::copy_from_slice(&self.joined),
                    Data::None => Bytes::new(),
                },
                id: self.last_event_id.clone(),
                retry: found.block.retry,
                raw,
            }),
        }
    }

    /// Switch to a new chunk; the current one is fully consumed.
    fn advance_to(&mut self, chunk: Bytes) {
        if !self.carrying && self.block_start < self.input.len() {
            // The current block continues in the new chunk: keep what it has so far.
            if self.release_carry {
                self.release_carry = false;
                self.carry.clear();
            }
            self.carry
                .extend_from_slice(&self.input[self.block_start..]);
            self.carrying = true;
        }
        self.input = chunk;
        self.pos = 0;
        self.block_start = 0;
    }

    /// Length of the current block so far.
    fn block_len(&self) -> usize {
        if self.carrying {
            self.carry.len()
        } else {
            self.pos - self.block_start
        }
    }

    /// The bytes of the current block so far.
    fn block_bytes(&self) -> &[u8] {
        if self.carrying {
            &self.carry
        } else {
            &self.input[self.block_start..self.pos]
        }
    }

    /// Where block-relative offsets point, and what to add to make them absolute.
    fn block_source(&self) -> (Source, usize) {
        if self.carrying {
            (Source::Carry, 0)
        } else {
            (Source::Input, self.block_start)
        }
    }

    /// Consume bytes `[pos, end)` of the input into the current block.
    #[inline]
    fn consume(&mut self, end: usize) {
        if self.carrying {
            self.carry.extend_from_slice(&self.input[self.pos..end]);
        }
        self.pos = end;
    }

    #[inline]
    fn decode_next(&mut self) -> Option<Result<Found, DecodeError>> {
        loop {
            if self.pos >= self.input.len() {
                if let Some(chunk) = self.queue.pop_front() {
                    self.advance_to(chunk);
                    continue;
                }
                return match self.eof {
                    EofState::Open | EofState::Done => None,
                    _ => self.end_of_input(),
                };
            }
            if !self.bom_checked {
                match self.check_bom() {
                    // The BOM may have been the whole chunk: look again.
                    Bom::Decided | Bom::Joined => continue,
                    Bom::NeedMore => return None,
                }
            }
            if self.skip_lf != SkipLf::No {
                let skip_lf = std::mem::replace(&mut self.skip_lf, SkipLf::No);
                if self.input[self.pos] == b'\n' {
                    match skip_lf {
                        SkipLf::Inside => {
                            self.consume(self.pos + 1);
                            self.line_start = self.block_len();
                        }
                        SkipLf::Emit => {
                            self.consume(self.pos + 1);
                            return Some(Ok(self.dispatch(false)));
                        }
                        SkipLf::Drop | SkipLf::No => {
                            self.pos += 1;
                            self.block_start = self.pos;
                        }
                    }
                    continue;
                }
            }
            if self.discarding {
                self.skip_discarded();
                continue;
            }

            if self.pos == self.block_start
                && !self.carrying
                && let Some(found) = self.single_data_line_event()
            {
                return Some(Ok(found));
            }

            // Find the end of the current line. A blank line is checked for directly: it
            // follows every event, and calling memchr for it costs more than looking.
            let first = self.input[self.pos];
            let eol = if first == b'\n' || first == b'\r' {
                self.pos
            } else {
                match memchr::memchr2(b'\n', b'\r', &self.input[self.pos + 1..]) {
                    Some(i) => self.pos + 1 + i,
                    None => {
                        // A partial line: keep it, but not past the limit.
                        let end = self.input.len();
                        if self.block_len() + (end - self.pos) > self.max_event_size {
                            return Some(Err(self.too_large()));
                        }
                        self.consume(end);
                        continue;
                    }
                }
            };
            // Block-relative end of the line's content.
            let line_end = self.block_len() + (eol - self.pos);
            let blank = line_end == self.line_start;
            let terminator = if self.input[eol] == b'\r' {
                match self.input.get(eol + 1) {
                    Some(b'\n') => 2,
                    Some(_) => 1,
                    None => {
                        self.skip_lf = if blank { SkipLf::Emit } else { SkipLf::Inside };
                        1
                    }
                }
            } else {
                1
            };
            // The limit counts the line end as one byte, whether it is CR, LF or CRLF.
            if !blank && line_end + 1 > self.max_event_size {
                self.skip_lf = SkipLf::No;
                return Some(Err(self.too_large()));
            }
            self.consume(eol + terminator);
            let next_line = self.block_len();
            let line_start = std::mem::replace(&mut self.line_start, next_line);
            if blank {
                return Some(Ok(self.dispatch(false)));
            }
            if let Some(found) = self.process_line(line_start, line_end) {
                return Some(Ok(found));
            }
        }
    }

    /// The shape of nearly every LLM stream event, `data: <payload>` and a blank line, whole
    /// in the current chunk: decoded in one scan. Anything else is left to the general path.
    #[inline]
    fn single_data_line_event(&mut self) -> Option<Found> {
        let rest = &self.input[self.pos..];
        if !rest.starts_with(b"data:") {
            return None;
        }
        let eol = 5 + memchr::memchr2(b'\n', b'\r', &rest[5..])?;
        let end = match (
            rest[eol],
            rest.get(eol + 1),
            rest.get(eol + 2),
            rest.get(eol + 3),
        ) {
            (b'\n', Some(b'\n'), ..) => eol + 2,
            (b'\r', Some(b'\n'), Some(b'\r'), Some(b'\n')) => eol + 4,
            _ => return None,
        };
        if eol + 1 > self.max_event_size {
            return None;
        }
        let start = self.pos;
        let value = start + 5 + usize::from(eol > 5 && rest[5] == b' ');
        self.pos += end;
        self.block_start = self.pos;
        Some(Found {
            kind: FoundKind::Event,
            source: Source::Input,
            raw: (start, self.pos),
            block: BlockState {
                data: Data::One(value, start + eol),
                has_fields: true,
                ..BlockState::default()
            },
            unterminated: false,
        })
    }

    /// Strip a leading BOM once.
    fn check_bom(&mut self) -> Bom {
        let rest = &self.input[self.pos..];
        let prefix = rest.len().min(BOM.len());
        if rest[..prefix] != BOM[..prefix] {
            self.bom_checked = true;
            return Bom::Decided;
        }
        if rest.len() >= BOM.len() {
            self.pos += BOM.len();
            self.block_start = self.pos;
            self.bom_checked = true;
            return Bom::Decided;
        }
        // A BOM prefix split across chunks (1 or 2 bytes so far): join it with the next chunk.
        match self.queue.pop_front() {
            Some(next) => {
                let mut joined = BytesMut::with_capacity(rest.len() + next.len());
                joined.extend_from_slice(rest);
                joined.extend_from_slice(&next);
                self.input = joined.freeze();
                self.pos = 0;
                self.block_start = 0;
                Bom::Joined
            }
            None if self.eof != EofState::Open => {
                self.bom_checked = true;
                Bom::Decided
            }
            // Keep the bytes where they are; the next push queues behind them.
            None => Bom::NeedMore,
        }
    }

    /// Skip bytes of an oversized block up to its blank line, holding none of them.
    fn skip_discarded(&mut self) {
        let rest = &self.input[self.pos..];
        let Some(i) = memchr::memchr2(b'\n', b'\r', rest) else {
            self.line_start = 1; // the line being skipped has bytes
            self.pos = self.input.len();
            self.block_start = self.pos;
            return;
        };
        let blank = i == 0 && self.line_start == 0;
        let mut end = self.pos + i + 1;
        if rest[i] == b'\r' {
            match rest.get(i + 1) {
                Some(b'\n') => end += 1,
                Some(_) => {}
                None => self.skip_lf = SkipLf::Drop,
            }
        }
        self.pos = end;
        self.block_start = end;
        self.line_start = 0;
        if blank {
            self.discarding = false;
        }
    }

    /// Give up on the current block: release its bytes and skip to its end.
    fn too_large(&mut self) -> DecodeError {
        if let Some((start, end)) = self.block.id {
            // The id line was processed: the last event id buffer keeps it.
            self.last_event_id = Bytes::copy_from_slice(&self.block_bytes()[start..end]);
        }
        self.block = BlockState::default();
        self.carry = BytesMut::new();
        self.joined = BytesMut::new();
        self.carrying = false;
        self.release_carry = false;
        self.block_start = self.pos;
        // The offending line has bytes, so its end is not the blank line that ends the block.
        self.line_start = 1;
        self.discarding = true;
        DecodeError::EventTooLarge {
            limit: self.max_event_size,
        }
    }

    /// Interpret one complete, non-empty line `[start, end)` of the current block.
    fn process_line(&mut self, start: usize, end: usize) -> Option<Found> {
        let (field, value) = {
            let line = &self.block_bytes()[start..end];
            if line[0] == b':' {
                let text = start + 1 + usize::from(line.get(1) == Some(&b' '));
                let (source, base) = self.block_source();
                return Some(Found {
                    kind: FoundKind::Comment,
                    source,
                    raw: (base + text, base + end),
                    block: BlockState::default(),
                    unterminated: false,
                });
            }
            // Most lines of LLM streams are `data:` lines: check for them first.
            let colon = if line.starts_with(b"data:") {
                Some(4)
            } else {
                memchr::memchr(b':', line)
            };
            match colon {
                // Exactly one space after the colon is not part of the value.
                Some(colon) => (
                    Field::from_name(&line[..colon]),
                    (
                        start + colon + 1 + usize::from(line.get(colon + 1) == Some(&b' ')),
                        end,
                    ),
                ),
                None => (Field::from_name(line), (end, end)),
            }
        };
        self.block.has_fields = true;
        match field {
            Field::Data => self.push_data(value),
            Field::Event => self.block.event = Some(value),
            Field::Id => {
                self.block.id_line = true;
                if memchr::memchr(0, &self.block_bytes()[value.0..value.1]).is_none() {
                    self.block.id = Some(value);
                }
            }
            Field::Retry => {
                if let Some(ms) = parse_retry(&self.block_bytes()[value.0..value.1]) {
                    self.block.retry = Some(ms);
                    self.reconnection_time = Some(ms);
                }
            }
            Field::Other => {}
        }
        None
    }

    fn push_data(&mut self, (start, end): (usize, usize)) {
        match self.block.data {
            Data::None => self.block.data = Data::One(start, end),
            Data::One(first_start, first_end) => {
                self.joined.clear();
                let bytes = if self.carrying {
                    &self.carry[..]
                } else {
                    &self.input[self.block_start..self.pos]
                };
                self.joined
                    .extend_from_slice(&bytes[first_start..first_end]);
                self.joined.extend_from_slice(b"\n");
                self.joined.extend_from_slice(&bytes[start..end]);
                self.block.data = Data::Joined;
            }
            Data::Joined => {
                let bytes = if self.carrying {
                    &self.carry[..]
                } else {
                    &self.input[self.block_start..self.pos]
                };
                self.joined.extend_from_slice(b"\n");
                self.joined.extend_from_slice(&bytes[start..end]);
            }
        }
    }

    /// Make `id` the last event id: always a copy, never a slice of the input, which would
    /// keep the whole chunk alive, and the chunk is often a slice of an HTTP client's read
    /// buffer (8 KiB or more), held for as long as the id lasts: the stream's life when only
    /// its first event sets one. Ids are copied one after the other into a buffer of
    /// [`ID_BUFFER_BYTES`] and split off it, so that ids changing from event to event cost
    /// an allocation per buffer, not per event, and an event's id is shared by counting.
    fn set_last_event_id(last: &mut Bytes, ids: &mut BytesMut, id: &[u8]) {
        if last[..] == *id {
            return;
        }
        if ids.capacity() < id.len() {
            *ids = BytesMut::with_capacity(id.len().max(ID_BUFFER_BYTES));
        }
        ids.extend_from_slice(id);
        *last = ids.split().freeze();
    }

    /// A blank line (or the end of input in lenient mode) ends the block.
    fn dispatch(&mut self, unterminated: bool) -> Found {
        let mut block = std::mem::take(&mut self.block);
        let (source, base) = self.block_source();
        let raw = (base, base + self.block_len());
        let shift = |r: Option<(usize, usize)>| r.map(|(s, e)| (base + s, base + e));
        block.event = shift(block.event);
        block.id = shift(block.id);
        if let Data::One(s, e) = block.data {
            block.data = Data::One(base + s, base + e);
        }
        if let Some((start, end)) = block.id {
            let id = match source {
                Source::Input => &self.input[start..end],
                Source::Carry => &self.carry[start..end],
            };
            Self::set_last_event_id(&mut self.last_event_id, &mut self.ids, id);
        }
        // A new block starts after this one; the carry is released on the next call.
        self.carrying = false;
        self.block_start = self.pos;
        self.line_start = 0;
        Found {
            kind: if block.data == Data::None {
                FoundKind::Block
            } else {
                FoundKind::Event
            },
            source,
            raw,
            block,
            unterminated,
        }
    }

    /// All input is consumed and [`finish`](Self::finish) was called.
    fn end_of_input(&mut self) -> Option<Result<Found, DecodeError>> {
        if self.discarding {
            self.discarding = false;
            return self.end_of_input_done();
        }
        let len = self.block_len();
        if len == 0 {
            self.eof = EofState::Done;
            return None;
        }
        let partial_line = self.line_start < len;
        if self.eof == EofState::Ending {
            if !self.lenient_eof {
                // Truncated means an event was lost: the block had data, or its unfinished
                // last line was a data line. A block of `id`/`retry`/comments dispatches nothing.
                let partial = &self.block_bytes()[self.line_start..];
                let name = memchr::memchr(b':', partial).map_or(partial, |colon| &partial[..colon]);
                let partial_is_data = partial_line && name == b"data";
                self.truncated = self.block.data != Data::None || partial_is_data;
                self.trailing = Some(Trailing {
                    raw: if self.carrying {
                        self.carry.split().freeze()
                    } else {
                        self.input.slice(self.block_start..self.pos)
                    },
                    retry: self.block.retry,
                });
                return self.end_of_input_done();
            }
            self.eof = EofState::LineFlushed;
            if partial_line {
                let start = std::mem::replace(&mut self.line_start, len);
                if let Some(found) = self.process_line(start, len) {
                    return Some(Ok(found));
                }
            }
        }
        self.eof = EofState::Done;
        Some(Ok(self.dispatch(true)))
    }

    fn end_of_input_done(&mut self) -> Option<Result<Found, DecodeError>> {
        self.eof = EofState::Done;
        self.block = BlockState::default();
        self.carry = BytesMut::new();
        self.joined = BytesMut::new();
        self.carrying = false;
        self.block_start = self.input.len();
        None
    }
}

impl Iterator for Decoder {
    type Item = Result<Item, DecodeError>;

    /// The next item, owned. `None` means "nothing more until the next push" (or, after
    /// [`finish`](Decoder::finish), the end).
    fn next(&mut self) -> Option<Self::Item> {
        match self.find_next()? {
            Ok(found) => Some(Ok(self.own(&found))),
            Err(e) => Some(Err(e)),
        }
    }
}

enum Bom {
    Decided,
    Joined,
    NeedMore,
}

#[derive(Debug, Clone, Copy)]
enum Field {
    Data,
    Event,
    Id,
    Retry,
    Other,
}

impl Field {
    #[inline]
    fn from_name(name: &[u8]) -> Self {
        match name {
            b"data" => Self::Data,
            b"event" => Self::Event,
            b"id" => Self::Id,
            b"retry" => Self::Retry,
            _ => Self::Other,
        }
    }
}

/// `retry` takes ASCII digits only; values that do not fit a `u64` are ignored.
fn parse_retry(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |acc, digit| {
        acc.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })
}
