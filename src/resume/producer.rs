//! The producer: the one task that owns a resumable stream's body, re-cuts its output into
//! events, stamps their ids and appends them to the log.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Body;
use tokio::time::{Instant, Sleep, sleep, sleep_until};

use crate::BoxError;
use crate::digits::decimal;
use crate::report::Outcome;
use crate::resume::id::StreamId;
use crate::resume::layer::{Config, Detach};
use crate::resume::shared::Shared;
use crate::resume::store::{StreamEnd, StreamLog};
use crate::sse::{Decoder, Event, Item};

/// How many upstream frames the producer reads before it yields to the runtime.
const FRAMES_PER_YIELD: u32 = 64;

/// Stamps ids on events: `id: <stream-id>.<seq>` in front of the event's own bytes, or the
/// event re-encoded when it carries an `id` of its own (ours must be the one that counts).
pub(crate) struct Stamper {
    prefix: Bytes,
}

impl Stamper {
    pub(crate) fn new(id: StreamId) -> Self {
        Self {
            prefix: id.id_line_prefix(),
        }
    }

    /// The wire form of `event` as event `seq` of the stream.
    pub(crate) fn event(&self, seq: u64, event: &Event) -> Bytes {
        let mut digits = [0; 20];
        let digits = decimal(seq, &mut digits);
        let raw = event.raw();
        if !has_id_field(raw) {
            let mut out = BytesMut::with_capacity(self.prefix.len() + digits.len() + 1 + raw.len());
            out.put_slice(&self.prefix);
            out.put_slice(digits);
            out.put_u8(b'\n');
            out.put_slice(raw);
            return out.freeze();
        }
        let mut id = BytesMut::with_capacity(self.prefix.len() + digits.len());
        id.put_slice(&self.prefix[4..]);
        id.put_slice(digits);
        let mut builder = Event::builder()
            .data(event.data_bytes().clone())
            .id(id.freeze());
        if !event.event_bytes().is_empty() {
            builder = builder.event(event.event_bytes().clone());
        }
        if let Some(retry) = event.retry() {
            builder = builder.retry(retry);
        }
        // Our id and a decoded event type never hold a line break or NUL.
        builder.encode().unwrap_or_default()
    }

    /// A block that sets `retry` (and nothing a client sees as an event), as entry `seq`.
    pub(crate) fn retry(&self, seq: u64, retry_ms: u128) -> Bytes {
        let mut digits = [0; 20];
        let digits = decimal(seq, &mut digits);
        let mut ms = [0; 20];
        let ms = decimal(u64::try_from(retry_ms).unwrap_or(u64::MAX), &mut ms);
        let mut out = BytesMut::with_capacity(self.prefix.len() + digits.len() + 9 + ms.len());
        out.put_slice(&self.prefix);
        out.put_slice(digits);
        out.put_slice(b"\nretry: ");
        out.put_slice(ms);
        out.put_slice(b"\n\n");
        out.freeze()
    }
}

/// Whether a raw event has an `id` field line (`id` alone, or `id:` first on a line).
fn has_id_field(raw: &[u8]) -> bool {
    let is_id = |line: &[u8]| {
        line.starts_with(b"id") && matches!(line.get(2), None | Some(b':' | b'\n' | b'\r'))
    };
    is_id(raw) || memchr::memchr2_iter(b'\n', b'\r', raw).any(|end| is_id(&raw[end + 1..]))
}

/// Run the producer of one stream to its end: read `body`, append to `log`, follow the
/// detach policy; then write the terminal entry.
pub(crate) async fn produce<B>(
    body: B,
    log: Arc<dyn StreamLog>,
    shared: Arc<Shared>,
    config: Arc<Config>,
) where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let id = shared.id;
    let stamper = Stamper::new(id);
    let mut readers = shared.readers();
    let mut decoder = Decoder::new().max_event_size(config.max_event_size);
    let mut seq = 0u64;
    let mut grace: Option<Pin<Box<Sleep>>> = None;
    // Readers in other processes (a shared store): how often to look for them, and when one
    // was last seen.
    let presence = log.presence();
    let mut seen_elsewhere: Option<Instant> = None;

    enum Step<F> {
        Frame(Option<F>),
        Readers,
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
    let mut body = Box::pin(body);
    let mut frames = 0u32;
    let end = 'stream: loop {
        frames += 1;
        if frames.is_multiple_of(FRAMES_PER_YIELD) {
            // An upstream that is always ready must not hold the runtime's thread.
            tokio::task::yield_now().await;
        }
        let attached = *readers.borrow_and_update();
        if attached > 0 {
            grace = None;
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
        let step = {
            let mut changed = pin!(readers.changed());
            poll_fn(|cx| {
                if let Poll::Ready(frame) = body.as_mut().poll_frame(cx) {
                    // Only whether it failed matters (and the error need not be `Send`).
                    return Poll::Ready(Step::Frame(frame.map(|r| r.map_err(drop))));
                }
                if let Poll::Ready(result) = changed.as_mut().poll(cx) {
                    // The sender lives in `shared`, which this task holds: never closed.
                    let _ = result;
                    return Poll::Ready(Step::Readers);
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
        let last = match step {
            Step::Readers => continue,
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
            Step::Frame(Some(Err(_))) => break StreamEnd::Failed,
            Step::Frame(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    decoder.push(data);
                }
                false
            }
            Step::Frame(None) => {
                decoder.finish();
                true
            }
        };
        for item in decoder.by_ref() {
            let entry = match item {
                Ok(Item::Event(event)) => stamper.event(seq + 1, &event),
                Ok(Item::Block(block)) => match block.retry() {
                    Some(retry) => stamper.retry(seq + 1, retry.as_millis()),
                    None => continue,
                },
                // Keep-alives and pings: per reader, never logged.
                Ok(_) => continue,
                Err(_) => {
                    // The report says why, not "disconnected" (its body is dropped below).
                    shared.producer_ended(
                        Outcome::EventTooLarge,
                        "an event was larger than the resume layer's max_event_size",
                    );
                    break 'stream StreamEnd::Failed;
                }
            };
            seq += 1;
            // A `Bytes` made from a `Vec` allocates its shared header at its first clone: do
            // it here, once, so that the readers' clones of the entry never allocate.
            drop(entry.clone());
            // A connected reader is never trimmed past silently: hold back (and so hold the
            // upstream back) while one has not read what this append would trim.
            let hold = config.slow_reader_hold;
            if !hold.is_zero() {
                let keep = log.trim_point(entry.len());
                if keep > 0 && shared.lagging(keep) {
                    let len = entry.len();
                    shared.hold(hold, || log.trim_point(len)).await;
                }
            }
            if log.append(seq, entry).await.is_err() {
                // The log cannot follow: its readers end, and resumes find it gone.
                seq -= 1;
                shared.producer_ended(
                    Outcome::StoreFailed,
                    "the resume store failed: the stream's log could not take an event",
                );
                break 'stream StreamEnd::Failed;
            }
            guard.seq = seq;
        }
        if last {
            break StreamEnd::Completed;
        }
    };
    // Cancelling drops the body here: the `SseLayer`'s body reports the stream.
    drop(body);
    guard.log = None;
    let _ = log.end(seq, end).await;
    config.producers.remove(id);
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

    fn event(raw: &'static [u8]) -> Event {
        let mut decoder = Decoder::new();
        decoder.push(Bytes::from_static(raw));
        match decoder.next() {
            Some(Ok(Item::Event(event))) => event,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stamps_ids() {
        let id = StreamId::from_bytes([0; 16]);
        let stamper = Stamper::new(id);
        let stamped = stamper.event(7, &event(b"event: x\ndata: a\r\n\r\n"));
        assert_eq!(
            &stamped[..],
            b"id: AAAAAAAAAAAAAAAAAAAAAA.7\nevent: x\ndata: a\r\n\r\n"
        );
        // An event with its own id is re-encoded with ours.
        let stamped = stamper.event(8, &event(b"data: a\nid: theirs\ndata: b\nretry: 5\n\n"));
        assert_eq!(
            &stamped[..],
            b"id: AAAAAAAAAAAAAAAAAAAAAA.8\nretry: 5\ndata: a\ndata: b\n\n"
        );
        assert_eq!(
            &stamper.retry(9, 3000)[..],
            b"id: AAAAAAAAAAAAAAAAAAAAAA.9\nretry: 3000\n\n"
        );
        assert!(has_id_field(b"id\n"));
        assert!(has_id_field(b"data: x\rid: 1\r\r"));
        assert!(!has_id_field(b"data: id: 1\n\n"));
        assert!(!has_id_field(b": id\n\n"));
    }
}
