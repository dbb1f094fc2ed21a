//! The log of a stream produced on another replica, read from Redis.

use std::sync::Arc;

use bytes::Bytes;
use redis::Value;
use tokio::sync::watch;

use super::{COUNTED, RedisStore, heartbeat, millis, session_field};
use crate::BoxFuture;
use crate::resume::id::StreamId;
use crate::resume::store::{
    Batch, Read, ReadLimits, ReaderCounts, StoreError, StreamEnd, StreamLog, TraceParent,
};

/// The log of a stream produced on another replica, read from Redis.
pub(super) struct RemoteLog {
    pub(super) store: RedisStore,
    pub(super) id: StreamId,
    pub(super) waker: Arc<watch::Sender<u64>>,
    /// The producer's span context, read from `meta` by `open`.
    pub(super) trace_parent: Option<TraceParent>,
}

impl StreamLog for RemoteLog {
    fn id(&self) -> StreamId {
        self.id
    }

    fn trace_parent(&self) -> Option<TraceParent> {
        self.trace_parent
    }

    fn append(&self, _seq: u64, _event: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
        // Only the producer's replica appends.
        Box::pin(std::future::ready(Err(StoreError::unavailable(
            "a remote log is read only",
        ))))
    }

    fn end(&self, _last_seq: u64, _end: StreamEnd) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(std::future::ready(Err(StoreError::unavailable(
            "a remote log is read only",
        ))))
    }

    fn read_after(
        &self,
        cursor: u64,
        limits: ReadLimits,
    ) -> BoxFuture<'_, Result<Read, StoreError>> {
        Box::pin(async move {
            let (log, meta, lease) = (
                self.store.key(self.id, "log"),
                self.store.key(self.id, "meta"),
                self.store.key(self.id, "lease"),
            );
            let start = format!("0-{}", cursor.saturating_add(1));
            let count = limits.max_events.max(1);
            let (entries, top, end, head, alive, lost): (
                Value,
                Value,
                Option<String>,
                Option<u64>,
                bool,
                Option<u64>,
            ) = self
                .store
                .call(async |mut c| {
                    redis::pipe()
                        .cmd("XRANGE")
                        .arg(&log)
                        .arg(&start)
                        .arg("+")
                        .arg("COUNT")
                        .arg(count)
                        .cmd("XREVRANGE")
                        .arg(&log)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1)
                        .hget(&meta, "end")
                        .hget(&meta, "head")
                        .exists(&lease)
                        .hget(&meta, "lost")
                        .query_async(&mut c)
                        .await
                })
                .await?;
            let entries = parse_entries(&entries);
            let top = parse_entries(&top).first().map_or(0, |(seq, _)| *seq);
            let end = end.as_deref().and_then(parse_end);
            let head = head.unwrap_or(top).max(top);
            if lost.is_some_and(|lost| cursor >= lost) {
                // The mirror lost what follows (Redis was away longer than the producer's
                // in-process log could bridge): a gap, said as one.
                return Ok(Read::Gone);
            }
            Ok(answer(cursor, entries, head, end, alive, limits))
        })
    }

    fn wake_ups(&self) -> watch::Receiver<u64> {
        self.waker.subscribe()
    }

    fn presence(&self) -> Option<std::time::Duration> {
        Some(heartbeat(self.store.inner.settings.lease))
    }

    fn keep_present(
        &self,
        session: u64,
        counts: Option<ReaderCounts>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let (present, meta) = (
                self.store.key(self.id, "present"),
                self.store.key(self.id, "meta"),
            );
            let settings = &self.store.inner.settings;
            let mut pipe = redis::pipe();
            // Three presence intervals: one late or lost refresh never lets it lapse.
            pipe.pset_ex(&present, 1, millis(settings.lease)).ignore();
            if let Some(counts) = counts {
                // This session's totals, set (not added): sending them again is harmless.
                pipe.hset_multiple(
                    &meta,
                    &[
                        (session_field(COUNTED[0], session), counts.connections),
                        (session_field(COUNTED[1], session), counts.resumes),
                        (session_field(COUNTED[2], session), counts.replayed_events),
                    ],
                )
                .ignore();
                // A reader attached (or read): its producer looks at the counts now (after
                // they are written, on the same connection), so that its report counts it.
                pipe.publish(
                    self.store.wake_channel(),
                    RedisStore::attach_message(self.id),
                )
                .ignore();
            }
            self.store
                .call(async |mut c| pipe.query_async::<()>(&mut c).await)
                .await
        })
    }
}

/// Make the answer of a read from Redis: the entries after `cursor`, or `Gone` when the next
/// one was trimmed (or its producer died before the end), or `Ahead`.
fn answer(
    cursor: u64,
    entries: Vec<(u64, Bytes)>,
    head: u64,
    end: Option<StreamEnd>,
    producer_alive: bool,
    limits: ReadLimits,
) -> Read {
    if cursor > head {
        return match (end, producer_alive) {
            // A position the producer gave out (from its memory) that its mirror has not
            // written yet: wait for it, as for the next event.
            (None, true) => Read::Events(Batch::new(cursor, Vec::new(), cursor, None)),
            // Not written, and the producer's lease lapsed (it died, or Redis was away):
            // what follows cannot be served, and is said to be gone.
            (None, false) => Read::Gone,
            (Some(_), _) => Read::Ahead,
        };
    }
    match entries.first() {
        // A hole: the next entry was trimmed or expired.
        Some((first, _)) if *first != cursor + 1 => return Read::Gone,
        None if cursor < head => return Read::Gone,
        None if end.is_none() && !producer_alive => return Read::Gone,
        _ => {}
    }
    let mut events = Vec::new();
    let mut bytes = 0;
    for (expected, (seq, event)) in (cursor + 1..).zip(entries) {
        if seq != expected || (!events.is_empty() && bytes >= limits.max_bytes) {
            break;
        }
        bytes += event.len();
        events.push(event);
    }
    Read::Events(Batch::new(cursor, events, head, end))
}

fn parse_end(text: &str) -> Option<StreamEnd> {
    Some(match text {
        "completed" => StreamEnd::Completed,
        "failed" => StreamEnd::Failed,
        "cancelled" => StreamEnd::Cancelled,
        _ => return None,
    })
}

/// The entries of an `XRANGE` reply: `[[id, [field, value, ...]], ...]`, as `(seq, event)`.
/// Anything else (a reply this store did not write) is skipped.
pub(super) fn parse_entries(reply: &Value) -> Vec<(u64, Bytes)> {
    let Value::Array(entries) = reply else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else {
                return None;
            };
            let [id, fields] = parts.as_slice() else {
                return None;
            };
            let id = match id {
                Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?,
                Value::SimpleString(text) => text.as_str(),
                _ => return None,
            };
            let seq = id.strip_prefix("0-")?.parse().ok()?;
            let Value::Array(fields) = fields else {
                return None;
            };
            match fields.as_slice() {
                [_, Value::BulkString(event)] => Some((seq, Bytes::copy_from_slice(event))),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(seqs: &[u64]) -> Vec<(u64, Bytes)> {
        seqs.iter()
            .map(|s| (*s, Bytes::from(format!("id: x.{s}\ndata: {s}\n\n"))))
            .collect()
    }

    const LIMITS: ReadLimits = ReadLimits {
        max_events: 100,
        max_bytes: 1 << 20,
    };

    #[test]
    fn reads_are_gap_free_or_gone() {
        let Read::Events(batch) = answer(2, entries(&[3, 4]), 4, None, true, LIMITS) else {
            panic!("events expected");
        };
        assert_eq!(batch.events.len(), 2);
        assert_eq!(batch.last_seq, 4);
        // The entry after the cursor was trimmed.
        assert_eq!(
            answer(2, entries(&[5, 6]), 6, None, true, LIMITS),
            Read::Gone
        );
        assert_eq!(answer(2, Vec::new(), 6, None, true, LIMITS), Read::Gone);
        // Beyond the end of the log.
        assert_eq!(answer(9, Vec::new(), 6, None, false, LIMITS), Read::Gone);
        let ended = Some(StreamEnd::Completed);
        assert_eq!(answer(9, Vec::new(), 6, ended, true, LIMITS), Read::Ahead);
        // Beyond what the mirror wrote of a live stream: the producer may have sent it from
        // memory already; wait for it.
        let Read::Events(batch) = answer(9, Vec::new(), 6, None, true, LIMITS) else {
            panic!("a wait expected");
        };
        assert!(batch.events.is_empty() && batch.end.is_none() && !batch.is_partial());
        // Caught up with a live producer: nothing yet; with a dead one: gone.
        assert!(matches!(
            answer(6, Vec::new(), 6, None, true, LIMITS),
            Read::Events(_)
        ));
        assert_eq!(answer(6, Vec::new(), 6, None, false, LIMITS), Read::Gone);
        // Caught up with an ended stream: the end.
        let Read::Events(batch) =
            answer(6, Vec::new(), 6, Some(StreamEnd::Completed), false, LIMITS)
        else {
            panic!("events expected");
        };
        assert_eq!(batch.end, Some(StreamEnd::Completed));
    }
}
