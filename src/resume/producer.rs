//! The producer: the one task that owns a resumable stream's body, re-cuts its output into
//! events, stamps their ids and appends them to the log.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;

use bytes::{BufMut, Bytes, BytesMut};
use http_body::{Body, Frame};
use tokio::time::{Instant, Sleep, sleep, sleep_until};

use crate::BoxError;
use crate::digits::decimal;
use crate::report::Outcome;
use crate::resume::id::StreamId;
use crate::resume::layer::{Config, Detach};
use crate::resume::shared::{Handoff, Shared};
use crate::resume::store::{StreamEnd, StreamLog};
use crate::sse::{DecodeError, Decoder, Event, EventRef, FoundKind, terminate_block};

/// How many upstream frames the producer reads before it yields to the runtime.
const FRAMES_PER_YIELD: u32 = 64;

/// How many entries' room a waiting producer keeps for its next batch (a live stream's bursts
/// are an event or a few; a larger one's room is given back when the producer waits).
const KEEP_BATCH_ROOM: usize = 4;

/// How many bytes the stamper takes from the allocator at once for its first entries.
const ARENA_BYTES: usize = 4096;

/// The most it takes at once: each next buffer is half as large as what the stream has
/// written before it, up to this (a long stream then pays an allocation per 32 KiB of
/// entries).
const MAX_ARENA_BYTES: usize = 32 * 1024;

/// Stamps ids on events: `id: <stream-id>.<seq>` in front of the event's own bytes, or the
/// event re-encoded when it carries an `id` of its own (ours must be the one that counts).
///
/// Entries are written one after the other into a shared buffer of [`ARENA_BYTES`] (each
/// next one half as large as what was written before it, up to [`MAX_ARENA_BYTES`]) and cut
/// off it (`BytesMut::split`): one allocation per buffer rather than two per event (the
/// entry, and the shared header a `Bytes` made from a `Vec` allocates at its first clone),
/// and cloning an entry for a reader is a reference count. A buffer is freed once every
/// entry cut from it is dropped: a log holds at most one buffer's worth more than its
/// entries (its newest buffer, partly written; or its oldest, partly trimmed). The newest
/// is at most half the size of the entries before it (or [`ARENA_BYTES`]), so a log kept
/// after its stream ended, for resumes, holds at most half as much again as its entries.
pub(crate) struct Stamper {
    prefix: Bytes,
    arena: BytesMut,
    /// The bytes of the entries written so far: the next buffer is sized from them.
    written: usize,
    /// The id line of entry `line_seq` (`id: <stream-id>.<seq>\n`), kept so that the next
    /// entry's is made by counting up its digits in place.
    line: Vec<u8>,
    line_seq: u64,
}

impl Stamper {
    pub(crate) fn new(id: StreamId) -> Self {
        Self {
            prefix: id.id_line_prefix(),
            arena: BytesMut::new(),
            written: 0,
            line: Vec::new(),
            line_seq: 0,
        }
    }

    /// Make `line` the id line of entry `seq`: the last one's last digit counted up (nine
    /// entries in ten), else [`set_line_again`](Self::set_line_again).
    #[inline]
    fn set_line(&mut self, seq: u64) {
        if seq == self.line_seq.wrapping_add(1)
            && let [.., last, b'\n'] = self.line.as_mut_slice()
            && matches!(last, b'0'..=b'8')
        {
            *last += 1;
            self.line_seq = seq;
            return;
        }
        self.set_line_again(seq);
    }

    /// [`set_line`](Self::set_line) with a carry, for the first entry, or a seq out of turn.
    #[cold]
    #[inline(never)]
    fn set_line_again(&mut self, seq: u64) {
        let digits = self.prefix.len()..self.line.len().saturating_sub(1);
        if self.line.is_empty()
            || seq != self.line_seq.wrapping_add(1)
            || !count_up(&mut self.line[digits])
        {
            let mut digits = [0; 20];
            let digits = decimal(seq, &mut digits);
            self.line.clear();
            self.line.extend_from_slice(&self.prefix);
            self.line.extend_from_slice(digits);
            self.line.push(b'\n');
        }
        self.line_seq = seq;
    }

    /// Room for the next entry, `len` bytes, in the current buffer, or a new one.
    fn reserve(&mut self, len: usize) {
        if self.arena.capacity() < len {
            let next = (self.written / 2).clamp(ARENA_BYTES, MAX_ARENA_BYTES);
            self.arena = BytesMut::with_capacity(len.max(next));
        }
        self.written += len;
    }

    /// The wire form of a whole event, terminated, without an `id` line of its own (`raw`,
    /// its bytes as they came), as event `seq` of the stream.
    #[inline]
    pub(crate) fn whole(&mut self, seq: u64, raw: &[u8]) -> Bytes {
        self.set_line(seq);
        self.reserve(self.line.len() + raw.len());
        self.arena.extend_from_slice(&self.line);
        self.arena.extend_from_slice(raw);
        self.arena.split().freeze()
    }

    /// The wire form of `event` as event `seq` of the stream; `id_line`: the event has an
    /// `id` field line of its own (valid or not), which ours replaces.
    pub(crate) fn event(&mut self, seq: u64, event: EventRef<'_>, id_line: bool) -> Bytes {
        if !id_line {
            if event.is_unterminated() {
                // The input ended without the blank line (a lenient end): add it, as a
                // decoded event's own bytes would have it.
                let terminated = terminate_block(&Bytes::copy_from_slice(event.raw()));
                return self.whole(seq, &terminated);
            }
            return self.whole(seq, event.raw());
        }
        // Our id: the id line without its `id: ` and its line end.
        self.set_line(seq);
        let id = Bytes::copy_from_slice(&self.line[4..self.line.len() - 1]);
        let mut builder = Event::builder()
            .data(Bytes::copy_from_slice(event.data_bytes()))
            .id(id);
        if !event.event_bytes().is_empty() {
            builder = builder.event(Bytes::copy_from_slice(event.event_bytes()));
        }
        if let Some(retry) = event.retry() {
            builder = builder.retry(retry);
        }
        // Our id and a decoded event type never hold a line break or NUL.
        let entry = builder.encode().unwrap_or_default();
        // A `Bytes` made from a `Vec` allocates its shared header at its first clone: do it
        // here, once, so that the readers' clones of the entry never allocate.
        drop(entry.clone());
        entry
    }

    /// A block that sets `retry` (and nothing a client sees as an event), as entry `seq`.
    pub(crate) fn retry(&mut self, seq: u64, retry_ms: u64) -> Bytes {
        self.set_line(seq);
        let mut ms = [0; 20];
        let ms = decimal(retry_ms, &mut ms);
        self.reserve(self.line.len() + 9 + ms.len());
        self.arena.extend_from_slice(&self.line);
        self.arena.put_slice(b"retry: ");
        self.arena.put_slice(ms);
        self.arena.put_slice(b"\n\n");
        self.arena.split().freeze()
    }
}

/// Add one to a decimal number written in ASCII digits, in place; `false` (and the digits
/// all `0`) when it needs one more digit.
fn count_up(digits: &mut [u8]) -> bool {
    for digit in digits.iter_mut().rev() {
        if *digit == b'9' {
            *digit = b'0';
        } else {
            *digit += 1;
            return true;
        }
    }
    false
}

/// The next entry of the log in what `decoder` has, stamped as entry `seq`: events, and
/// blocks that set `retry`; comments (keep-alives and pings: per reader) are never logged.
/// `Err` when the decoder refused an event (past its limit).
///
/// Items are found in place (nothing owned, nothing reference counted): the stamper copies
/// what it logs.
pub(crate) fn next_entry(
    decoder: &mut Decoder,
    stamper: &mut Stamper,
    seq: u64,
) -> Option<Result<Bytes, DecodeError>> {
    loop {
        let found = match decoder.find_next()? {
            Ok(found) => found,
            Err(error) => return Some(Err(error)),
        };
        match found.kind {
            FoundKind::Event => {
                let event = decoder.lend_event(&found);
                return Some(Ok(stamper.event(seq, event, found.has_id_line())));
            }
            FoundKind::Block => {
                if let Some(retry_ms) = found.retry() {
                    return Some(Ok(stamper.retry(seq, retry_ms)));
                }
            }
            FoundKind::Comment => {}
        }
    }
}

/// Run the producer of one stream to its end: read `body`, append to `log`, follow the
/// detach policy; then write the terminal entry.
///
/// The body comes boxed: a body taken by value would keep its size in the task's state for
/// the stream's life, beside the box it is moved into (a parameter's place in an `async fn`
/// is never reused), and a full stack's body is 2.6 KB.
pub(crate) async fn produce<B>(
    body: Pin<Box<B>>,
    log: Arc<dyn StreamLog>,
    shared: Arc<Shared>,
    config: Arc<Config>,
    handoff: Option<Arc<Handoff>>,
) where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let id = shared.id;
    let mut stamper = Stamper::new(id);
    let mut readers = shared.readers();
    let mut attached = *readers.borrow_and_update();
    let mut decoder = Decoder::new().max_event_size(config.max_event_size);
    let mut seq = 0u64;
    let mut grace: Option<Pin<Box<Sleep>>> = None;
    // Readers in other processes (a shared store): how often to look for them, and when one
    // was last seen.
    let presence = log.presence();
    let mut seen_elsewhere: Option<Instant> = None;
    // Told when a reader attaches in another process: its counts are fetched at once, so
    // that the report (made when the body ends, maybe before the next look) has them.
    let mut attached_elsewhere = log.readers_elsewhere();

    enum Step {
        Frame(Got),
        Readers,
        /// A reader attached in another process (`false`: the signal is gone for good).
        Elsewhere(bool),
        Cancel,
    }

    // Written if this task dies first (a panic in an observer, a runtime shutting down), so
    // that no reader waits for an end that would never come.
    let mut guard = EndGuard {
        log: Some(log.clone()),
        seq: 0,
        shared: shared.clone(),
        config: config.clone(),
    };
    // Boxed, so that cancelling can drop it before the end is written. Declared after the
    // guard, so that if this task is dropped the body goes first: its report (made in the
    // `SseLayer`'s body) still finds this producer in `config.producers`.
    let mut body = body;
    let mut frames = 0u32;
    // Entries stamped and not yet appended: what the body had ready at once goes to the log
    // in one `append_all` (see [`Batch`]).
    let mut batch = Batch::default();
    let end = 'stream: loop {
        frames += 1;
        if frames.is_multiple_of(FRAMES_PER_YIELD) {
            if let Err(appended) = batch.flush(&*log, seq).await {
                seq = appended;
                break 'stream store_failed(&shared);
            }
            guard.seq = seq;
            // An upstream that is always ready must not hold the runtime's thread.
            tokio::task::yield_now().await;
        }
        // Read only when it changed: a look at the version, not the value's lock.
        if readers.has_changed().unwrap_or(false) {
            attached = *readers.borrow_and_update();
        }
        if attached > 0 {
            if grace.is_some() {
                grace = None;
            }
            seen_elsewhere = None;
        } else {
            match config.detach {
                Detach::Finish => {}
                // Readers may be attached in other processes: look before cancelling.
                Detach::CancelNow if presence.is_none() => break StreamEnd::Cancelled,
                Detach::CancelNow | Detach::CancelAfter(_) => {
                    if grace.is_none() {
                        grace = Some(Box::pin(sleep(grace_of(config.detach))));
                    }
                }
            }
        }
        // The body first, alone: a ready frame (the common case) needs none of the waits
        // below. When it is not ready, its waker is registered (this task's), so the wait
        // below need not poll it again until woken.
        let ready = poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx).map(Got::from))).await;
        let step = if let Poll::Ready(frame) = ready {
            Step::Frame(frame)
        } else if !batch.is_empty() {
            // Nothing more ready: what was read goes to the log before this task waits; then
            // the body is asked again (the append may have waited, and its wake-up with it).
            if let Err(appended) = batch.flush(&*log, seq).await {
                seq = appended;
                break 'stream store_failed(&shared);
            }
            guard.seq = seq;
            // A stream that waits holds no more than a live event's room for its next batch.
            batch.entries.shrink_to(KEEP_BATCH_ROOM);
            continue;
        } else {
            let mut registered = true;
            let mut changed = pin!(readers.changed());
            let watch_elsewhere = attached_elsewhere.is_some();
            let mut elsewhere = pin!(async {
                match attached_elsewhere.as_mut() {
                    Some(signal) => signal.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            });
            poll_fn(|cx| {
                if !std::mem::take(&mut registered)
                    && let Poll::Ready(frame) = body.as_mut().poll_frame(cx)
                {
                    return Poll::Ready(Step::Frame(Got::from(frame)));
                }
                if let Poll::Ready(result) = changed.as_mut().poll(cx) {
                    // The sender lives in `shared`, which this task holds: never closed.
                    let _ = result;
                    return Poll::Ready(Step::Readers);
                }
                if watch_elsewhere && let Poll::Ready(alive) = elsewhere.as_mut().poll(cx) {
                    return Poll::Ready(Step::Elsewhere(alive));
                }
                if let Some(grace) = grace.as_mut()
                    && grace.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Step::Cancel);
                }
                Poll::Pending
            })
            .await
        };
        // A frame that is one whole event, handed over by the `SseLayer` (see [`Handoff`]).
        let (whole, last) = match step {
            Step::Readers => {
                // `changed` marked the new count seen: read it here.
                attached = *readers.borrow_and_update();
                continue;
            }
            Step::Elsewhere(false) => {
                attached_elsewhere = None;
                continue;
            }
            Step::Elsewhere(true) => {
                // Looked up beside the stream, which never waits on the store.
                let (log, shared) = (log.clone(), shared.clone());
                tokio::spawn(async move {
                    if let Ok((_, counts)) = log.elsewhere().await {
                        shared.set_elsewhere(counts);
                    }
                });
                continue;
            }
            Step::Cancel => {
                let Some(every) = presence else {
                    break StreamEnd::Cancelled;
                };
                // No reader here: is one attached in another process? The grace counts from
                // the last reader anywhere.
                let now = Instant::now();
                let present = match log.elsewhere().await {
                    Ok((present, counts)) => {
                        shared.set_elsewhere(counts);
                        present
                    }
                    // Unknown (the store is away): never cut a reader it cannot see; an
                    // abandoned stream then runs on until the store answers again.
                    Err(_) => true,
                };
                if present {
                    seen_elsewhere = Some(now);
                    grace = Some(Box::pin(sleep(every)));
                    continue;
                }
                match seen_elsewhere.map(|seen| seen + grace_of(config.detach)) {
                    Some(until) if until > now => {
                        grace = Some(Box::pin(sleep_until(until.min(now + every))));
                        continue;
                    }
                    _ => break StreamEnd::Cancelled,
                }
            }
            Step::Frame(Got::Failed) => break StreamEnd::Failed,
            Step::Frame(Got::Data(data)) => {
                // One whole event the `SseLayer` framed already: stamped as it is, when this
                // decoder holds nothing before it and the event is within its limit (else
                // decoded, which fails it as before).
                if handoff
                    .as_ref()
                    .is_some_and(|handoff| handoff.is_whole(&data))
                    && decoder.is_idle()
                    && data.len() <= config.max_event_size
                {
                    decoder.skipped_input();
                    (Some(data), false)
                } else {
                    decoder.push(data);
                    (None, false)
                }
            }
            Step::Frame(Got::Other) => (None, false),
            Step::Frame(Got::End) => {
                decoder.finish();
                (None, true)
            }
        };
        let mut stamped = whole.map(|event| stamper.whole(seq + 1, &event));
        // After a whole event the decoder holds nothing: no need to ask it.
        let decode = stamped.is_none();
        loop {
            let entry = match stamped.take() {
                Some(entry) => entry,
                None if !decode => break,
                None => match next_entry(&mut decoder, &mut stamper, seq + 1) {
                    Some(Ok(entry)) => entry,
                    Some(Err(_)) => {
                        // The report says why, not "disconnected" (its body is dropped below).
                        shared.producer_ended(
                            Outcome::EventTooLarge,
                            "an event was larger than the resume layer's max_event_size",
                        );
                        break 'stream StreamEnd::Failed;
                    }
                    None => break,
                },
            };
            // A connected reader is never trimmed past silently: hold back (and so hold the
            // upstream back) while one has not read what this entry's append would trim. An
            // entry that would trim goes alone: the batch before it first (it trims nothing).
            let hold = config.slow_reader_hold;
            let len = entry.len();
            if !hold.is_zero() && log.trim_point(batch.len() + 1, batch.bytes + len) > 0 {
                if let Err(appended) = batch.flush(&*log, seq).await {
                    seq = appended;
                    break 'stream store_failed(&shared);
                }
                guard.seq = seq;
                let keep = log.trim_point(1, len);
                if keep > 0 && shared.lagging(keep) {
                    shared.hold(hold, || log.trim_point(1, len)).await;
                }
            }
            seq += 1;
            batch.push(entry);
        }
        if last {
            break StreamEnd::Completed;
        }
    };
    // What was read before the end goes to the log before it (a failed flush left the
    // batch empty).
    let end = match batch.flush(&*log, seq).await {
        Ok(()) => end,
        Err(appended) => {
            seq = appended;
            store_failed(&shared)
        }
    };
    guard.seq = seq;
    // Cancelling drops the body here: the `SseLayer`'s body reports the stream.
    drop(body);
    guard.log = None;
    let _ = log.end(seq, end).await;
    config.producers.remove(id);
}

/// What a poll of the body gave, kept small: a `Frame` has room for a `HeaderMap`, and moving
/// it through the producer's state on every event cost more than the stamping (measured).
/// Only whether a frame failed matters (and the error need not be `Send`).
enum Got {
    Data(Bytes),
    /// A frame that is not data (trailers): nothing to log.
    Other,
    End,
    Failed,
}

impl<E> From<Option<Result<Frame<Bytes>, E>>> for Got {
    #[inline]
    fn from(frame: Option<Result<Frame<Bytes>, E>>) -> Self {
        match frame {
            Some(Ok(frame)) => frame.into_data().map_or(Got::Other, Got::Data),
            Some(Err(_)) => Got::Failed,
            None => Got::End,
        }
    }
}

/// The stream's log could not take its entries: its readers end, and resumes find it gone.
fn store_failed(shared: &Shared) -> StreamEnd {
    shared.producer_ended(
        Outcome::StoreFailed,
        "the resume store failed: the stream's log could not take an event",
    );
    StreamEnd::Failed
}

/// Entries stamped and not yet appended: what the body had ready at once, appended in one
/// [`StreamLog::append_all`] when the body has nothing more ready (before the producer
/// waits), before it yields the thread, and at the end. A reader sees an entry at most one
/// burst of ready frames later than one by one, and the log's lock, clock read and reader
/// wake-up are paid once per burst.
#[derive(Default)]
struct Batch {
    entries: Vec<Bytes>,
    bytes: usize,
}

impl Batch {
    fn push(&mut self, entry: Bytes) {
        self.bytes += entry.len();
        self.entries.push(entry);
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Append the entries to `log`, the last of them being entry `last_seq`. On failure those
    /// not recorded are dropped, and the error is the seq of the last entry recorded.
    async fn flush(&mut self, log: &dyn StreamLog, last_seq: u64) -> Result<(), u64> {
        if self.entries.is_empty() {
            return Ok(());
        }
        let first = last_seq + 1 - self.entries.len() as u64;
        self.bytes = 0;
        let appended = log.append_all(first, &mut self.entries).await;
        let unrecorded = self.entries.len() as u64;
        self.entries.clear();
        appended.map_err(|_| last_seq - unrecorded.min(last_seq))
    }
}

/// How long the producer keeps its upstream with no reader attached anywhere.
fn grace_of(detach: Detach) -> std::time::Duration {
    match detach {
        Detach::CancelAfter(after) => after,
        _ => std::time::Duration::ZERO,
    }
}

/// Ends the log, as far as it can without waiting, when the producer dies before its end.
struct EndGuard {
    log: Option<Arc<dyn StreamLog>>,
    seq: u64,
    shared: Arc<Shared>,
    config: Arc<Config>,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            let mut end = log.end(self.seq, StreamEnd::Failed);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let _ = end.as_mut().poll(&mut cx);
            self.config.producers.remove(self.shared.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a raw event has an `id` field line (`id` alone, or `id:` first on a line):
    /// the scan the stamper did before the decoder told it.
    fn has_id_field(raw: &[u8]) -> bool {
        let is_id = |line: &[u8]| {
            line.starts_with(b"id") && matches!(line.get(2), None | Some(b':' | b'\n' | b'\r'))
        };
        is_id(raw) || memchr::memchr2_iter(b'\n', b'\r', raw).any(|end| is_id(&raw[end + 1..]))
    }

    /// Stamp the first event of `raw` as entry `seq`, as the producer does.
    fn stamp(stamper: &mut Stamper, seq: u64, raw: &'static [u8]) -> Bytes {
        let mut decoder = Decoder::new();
        decoder.push(Bytes::from_static(raw));
        decoder.finish();
        loop {
            match decoder.find_next() {
                Some(Ok(found)) if found.kind == FoundKind::Event => {
                    assert_eq!(found.has_id_line(), has_id_field(decoder.raw(&found)));
                    let event = decoder.lend_event(&found);
                    return stamper.event(seq, event, found.has_id_line());
                }
                Some(Ok(_)) => continue,
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn the_stamper_takes_larger_buffers_as_a_stream_grows() {
        let mut stamper = Stamper::new(StreamId::from_bytes([0; 16]));
        let raw = [b"data: ".as_slice(), &[b'x'; 90], b"\n\n"].concat();
        let entries: Vec<Bytes> = (1..=600).map(|seq| stamper.whole(seq, &raw)).collect();
        // A new buffer starts where an entry does not follow the one before it in memory.
        let buffers = 1 + entries
            .windows(2)
            .filter(|pair| pair[0].as_ptr().wrapping_add(pair[0].len()) != pair[1].as_ptr())
            .count();
        // About 75 KB of entries: 4 + 4 + 4 + 6 + 9 + 13.5 + 20 + 30 KiB (fixed 4 KiB
        // buffers would have taken 19).
        let total: usize = entries.iter().map(Bytes::len).sum();
        assert!(total > 70_000, "{total}");
        assert!(buffers <= 8, "{buffers} buffers");
        // The room left in the newest buffer, held as long as the log: at most half of
        // what was written (or the first buffer's size), wherever the stream ends.
        for events in [10, 50, 150, 280, 600] {
            let mut stamper = Stamper::new(StreamId::from_bytes([0; 16]));
            let total: usize = (1..=events).map(|seq| stamper.whole(seq, &raw).len()).sum();
            assert_eq!(stamper.written, total);
            let room = stamper.arena.capacity();
            assert!(
                room <= (total / 2).max(ARENA_BYTES),
                "{room} bytes of room after {events} entries, {total} bytes"
            );
        }
    }

    #[test]
    fn stamps_ids() {
        let id = StreamId::from_bytes([0; 16]);
        let mut stamper = Stamper::new(id);
        let stamped = stamp(&mut stamper, 7, b"event: x\ndata: a\r\n\r\n");
        assert_eq!(
            &stamped[..],
            b"id: AAAAAAAAAAAAAAAAAAAAAA.7\nevent: x\ndata: a\r\n\r\n"
        );
        // An event with its own id is re-encoded with ours.
        let stamped = stamp(
            &mut stamper,
            8,
            b"data: a\nid: theirs\ndata: b\nretry: 5\n\n",
        );
        assert_eq!(
            &stamped[..],
            b"id: AAAAAAAAAAAAAAAAAAAAAA.8\nretry: 5\ndata: a\ndata: b\n\n"
        );
        // An id the decoder ignores (it holds NUL) is still a line of its own: replaced.
        let stamped = stamp(&mut stamper, 9, b"id: a\0b\ndata: c\n\n");
        assert_eq!(&stamped[..], b"id: AAAAAAAAAAAAAAAAAAAAAA.9\ndata: c\n\n");
        // Entries cut from one buffer stay apart.
        let first = stamp(&mut stamper, 10, b": note\ndata: d\n\n");
        let second = stamp(&mut stamper, 11, b"data: e\n\n");
        assert_eq!(
            &first[..],
            b"id: AAAAAAAAAAAAAAAAAAAAAA.10\n: note\ndata: d\n\n"
        );
        assert_eq!(&second[..], b"id: AAAAAAAAAAAAAAAAAAAAAA.11\ndata: e\n\n");
        // An event larger than a buffer gets one of its own.
        let big: &'static [u8] = Box::leak(
            [b"data: ".as_slice(), &[b'x'; 2 * ARENA_BYTES], b"\n\n"]
                .concat()
                .into_boxed_slice(),
        );
        let stamped = stamp(&mut stamper, 12, big);
        assert_eq!(&stamped[..30], b"id: AAAAAAAAAAAAAAAAAAAAAA.12\n");
        assert_eq!(&stamped[30..], big);
        assert_eq!(
            &stamper.retry(13, 3000)[..],
            b"id: AAAAAAAAAAAAAAAAAAAAAA.13\nretry: 3000\n\n"
        );
        // Ids counted up in place, across a new digit, and out of turn.
        for (seq, line) in [
            (99, "id: AAAAAAAAAAAAAAAAAAAAAA.99\n"),
            (100, "id: AAAAAAAAAAAAAAAAAAAAAA.100\n"),
            (101, "id: AAAAAAAAAAAAAAAAAAAAAA.101\n"),
            (109, "id: AAAAAAAAAAAAAAAAAAAAAA.109\n"),
            (110, "id: AAAAAAAAAAAAAAAAAAAAAA.110\n"),
            (7, "id: AAAAAAAAAAAAAAAAAAAAAA.7\n"),
            (8, "id: AAAAAAAAAAAAAAAAAAAAAA.8\n"),
            (9, "id: AAAAAAAAAAAAAAAAAAAAAA.9\n"),
            (10, "id: AAAAAAAAAAAAAAAAAAAAAA.10\n"),
        ] {
            let stamped = stamper.whole(seq, b"data: x\n\n");
            assert_eq!(
                &stamped[..],
                [line.as_bytes(), b"data: x\n\n"].concat(),
                "{seq}"
            );
        }
        let mut digits = *b"1999";
        assert!(count_up(&mut digits));
        assert_eq!(&digits, b"2000");
        let mut digits = *b"99";
        assert!(!count_up(&mut digits));
        assert!(has_id_field(b"id\n"));
        assert!(has_id_field(b"data: x\rid: 1\r\r"));
        assert!(!has_id_field(b"data: id: 1\n\n"));
        assert!(!has_id_field(b": id\n\n"));
        for raw in [
            b"id\ndata: x\n\n".as_slice(),
            b"data: x\rid: 1\r\r",
            b"data: id: 1\n\n",
            b": id\ndata: x\n\n",
            b"idx: 1\ndata: x\n\n",
        ] {
            let mut decoder = Decoder::new();
            decoder.push(Bytes::copy_from_slice(raw));
            let found = loop {
                match decoder.find_next() {
                    Some(Ok(found)) if found.kind == FoundKind::Event => break found,
                    Some(Ok(_)) => continue,
                    other => panic!("{other:?}"),
                }
            };
            assert_eq!(found.has_id_line(), has_id_field(raw), "{raw:?}");
        }
    }
}
