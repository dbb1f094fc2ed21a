//! The log of a stream produced on this replica: in memory, copied to Redis by a writer task.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use super::reader::parse_entries;
use super::{RedisStore, TENANT, TRACE, heartbeat, millis, sum_sessions};
use crate::BoxFuture;
use crate::resume::id::StreamId;
use crate::resume::store::{
    Read, ReadLimits, ReaderCounts, StoreError, StreamEnd, StreamLog, TraceParent,
};

/// The log of a stream produced on this replica: in memory, and mirrored to Redis for the
/// other replicas by a writer task of its own, which reads the in-process log: the producer
/// (and so the live stream) never waits on Redis, and nothing is queued that could overflow.
pub(super) struct ProducerLog {
    store: RedisStore,
    local: Arc<dyn StreamLog>,
    /// The end, once the producer wrote it: the writer mirrors it, and stops its heartbeat.
    end: Arc<Mutex<Option<(u64, StreamEnd)>>>,
    /// Told when a reader attaches on another replica.
    attached_elsewhere: Arc<watch::Sender<u64>>,
}

/// The most entries sent in one pipelined round trip.
const WRITER_BATCH: usize = 64;

impl ProducerLog {
    pub(super) fn new(store: RedisStore, local: Arc<dyn StreamLog>, tenant: String) -> Self {
        let end = Arc::new(Mutex::new(None));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let mirror = Mirror {
                store: store.clone(),
                local: local.clone(),
                end: end.clone(),
                tenant,
            };
            runtime.spawn(mirror.run());
        }
        let attached_elsewhere = store.attach_waker(local.id());
        Self {
            store,
            local,
            end,
            attached_elsewhere,
        }
    }
}

/// The writer task of one stream: mirrors its in-process log to Redis.
struct Mirror {
    store: RedisStore,
    local: Arc<dyn StreamLog>,
    end: Arc<Mutex<Option<(u64, StreamEnd)>>>,
    tenant: String,
}

impl Mirror {
    /// Mirror the log: on every wake-up of the in-process log, what it has beyond the last
    /// entry Redis took goes in one pipelined round trip (the entries with their explicit
    /// ids, the TTLs, the lease, one `PUBLISH`; at the end the end). While nothing changes, a
    /// heartbeat renews the lease and the TTLs: liveness is not inferred from events (an
    /// upstream silent for longer than the lease, a model thinking, is alive).
    ///
    /// Redis failing (down, slow past the timeout, full) never loses entries silently: the
    /// writer retries on every heartbeat and, once Redis answers, asks it where its log
    /// stops and re-syncs from there (Redis restarted empty: from the start). When the
    /// in-process log no longer has what Redis misses (trimmed meanwhile), the Redis log is
    /// marked `lost` after its last entry: readers on other replicas meet the gap explicitly
    /// (`resume_gap`), resumes past it answer `204`.
    async fn run(self) {
        let settings = self.store.inner.settings.clone();
        let id = self.local.id();
        let (log, meta, lease) = (
            self.store.key(id, "log"),
            self.store.key(id, "meta"),
            self.store.key(id, "lease"),
        );
        let channel = self.store.wake_channel();
        let mut wake = self.local.wake_ups();
        let period = heartbeat(settings.lease);
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let limits = ReadLimits {
            max_events: WRITER_BATCH,
            max_bytes: 1 << 20,
        };
        let mut buffer = Vec::new();
        // The last seq Redis has; where the Redis log stops for good, once marked.
        let mut synced = 0u64;
        let mut lost: Option<u64> = None;
        let mut lost_marked = false;
        let mut failing_since: Option<tokio::time::Instant> = None;
        let mut again = false;
        let mut emptied = false;
        // The producer's span context, written by `create`; again once Redis may have lost
        // it (a failure, a restart), in the next write that re-creates `meta`.
        let trace = self.local.trace_parent().map(|trace| trace.to_string());
        let mut trace_written = true;
        loop {
            if !again {
                let mut changed = std::pin::pin!(wake.changed());
                std::future::poll_fn(|cx| {
                    if changed.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(());
                    }
                    beat.poll_tick(cx).map(drop)
                })
                .await;
            }
            again = false;
            // Marked seen as it subscribes, as `borrow_and_update` would: a fresh receiver
            // also tells the in-process log that this writer waits, so that every append
            // wakes it (the log skips its wake-up when no one read since the last one, and
            // this writer does not read on every path).
            wake = self.local.wake_ups();
            if emptied {
                // Redis lost the stream (a restart without persistence) while this writer saw
                // no failure: what it just wrote has a hole before it. Start over.
                let dropped = self
                    .store
                    .call(async |mut c| redis::cmd("DEL").arg(&log).query_async::<()>(&mut c).await)
                    .await;
                if dropped.is_err() {
                    failing_since.get_or_insert_with(tokio::time::Instant::now);
                    continue;
                }
                emptied = false;
                lost_marked = false;
                synced = 0;
            } else if failing_since.is_some() {
                // Back: where does the Redis log stop? (Empty after a restart.)
                lost_marked = false;
                match self.redis_head(&log).await {
                    Ok(head) => synced = head,
                    Err(_) => {
                        if self.give_up(failing_since, settings.ended_ttl) {
                            return;
                        }
                        continue;
                    }
                }
            }
            let end = *self.end.lock().unwrap_or_else(PoisonError::into_inner);
            let mut pipe = redis::pipe();
            // First, and answered: more than 0 when the meta was gone (Redis lost the stream).
            // The producer's span context goes in the same command (with its tenant, never
            // after it) while Redis may have lost it; a field it adds then is never taken for
            // a loss: that write follows a failure, or a loss already seen (`synced` is 0).
            pipe.cmd("HSET").arg(&meta).arg(TENANT).arg(&self.tenant);
            if let Some(trace) = trace.as_deref().filter(|_| !trace_written) {
                pipe.arg(TRACE).arg(trace);
            }
            let mut next = synced;
            if lost.is_none() {
                let read = match self.local.read_now(synced, limits, &mut buffer) {
                    Some(read) => read,
                    None => self.local.read_after(synced, limits).await,
                };
                match read {
                    Ok(Read::Events(mut batch)) => {
                        for event in batch.events.drain(..) {
                            next += 1;
                            pipe.cmd("XADD")
                                .arg(&log)
                                .arg("MAXLEN")
                                .arg("~")
                                .arg(settings.max_stream_events)
                                .arg(format!("0-{next}"))
                                .arg("e")
                                .arg(event.as_ref())
                                .ignore();
                        }
                        again = batch.is_partial();
                        buffer = batch.events;
                    }
                    _ => lost = Some(synced),
                }
            }
            if let Some(at) = lost
                && !lost_marked
            {
                pipe.hset(&meta, "lost", at).ignore();
            }
            let ended = match end {
                Some((last, end)) if lost.is_some() || next >= last => {
                    pipe.hset(&meta, "end", end.as_str())
                        .ignore()
                        .hset(&meta, "head", last)
                        .ignore()
                        .del(&lease)
                        .ignore();
                    true
                }
                _ => false,
            };
            let ttl = millis(if ended {
                settings.ended_ttl
            } else {
                settings.running_ttl
            }) as i64;
            pipe.pexpire(&log, ttl)
                .ignore()
                .pexpire(&meta, ttl)
                .ignore();
            if !ended {
                pipe.pset_ex(&lease, 1, millis(settings.lease)).ignore();
            }
            if next > synced || ended || (lost.is_some() && !lost_marked) {
                pipe.publish(&channel, format!("{id} {next}")).ignore();
            }
            let written = self
                .store
                .call(async |mut c| pipe.query_async::<(i64,)>(&mut c).await)
                .await;
            match written {
                Ok((added,)) if added > 0 && failing_since.is_none() && synced > 0 => {
                    emptied = true;
                    again = true;
                    trace_written = false;
                }
                Ok(_) => {
                    synced = next;
                    failing_since = None;
                    trace_written = true;
                    lost_marked |= lost.is_some();
                    if ended {
                        return;
                    }
                    // The lease was just renewed.
                    beat.reset();
                }
                Err(_) => {
                    failing_since.get_or_insert_with(tokio::time::Instant::now);
                    trace_written = false;
                    again = false;
                    if self.give_up(failing_since, settings.ended_ttl) {
                        return;
                    }
                }
            }
        }
    }

    /// The seq of the last entry of the Redis log (0 when it has none).
    async fn redis_head(&self, log: &str) -> Result<u64, StoreError> {
        let top: redis::Value = self
            .store
            .call(async |mut c| {
                redis::cmd("XREVRANGE")
                    .arg(log)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(parse_entries(&top).first().map_or(0, |(seq, _)| *seq))
    }

    /// Stop retrying once the stream ended and Redis stayed unreachable for `ttl` (its Redis
    /// log would have expired by then anyway).
    fn give_up(&self, failing_since: Option<tokio::time::Instant>, ttl: Duration) -> bool {
        let ended = self
            .end
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        ended && failing_since.is_some_and(|since| since.elapsed() >= ttl)
    }
}

impl StreamLog for ProducerLog {
    fn id(&self) -> StreamId {
        self.local.id()
    }

    fn trace_parent(&self) -> Option<TraceParent> {
        self.local.trace_parent()
    }

    fn append(&self, seq: u64, event: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
        // The mirror follows the in-process log's wake-ups.
        self.local.append(seq, event)
    }

    fn append_all<'a>(
        &'a self,
        first_seq: u64,
        events: &'a mut Vec<Bytes>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.local.append_all(first_seq, events)
    }

    fn end(&self, last_seq: u64, end: StreamEnd) -> BoxFuture<'_, Result<(), StoreError>> {
        {
            let mut ended = self.end.lock().unwrap_or_else(PoisonError::into_inner);
            if ended.is_none() {
                *ended = Some((last_seq, end));
            }
        }
        self.local.end(last_seq, end)
    }

    fn read_after(
        &self,
        cursor: u64,
        limits: ReadLimits,
    ) -> BoxFuture<'_, Result<Read, StoreError>> {
        self.local.read_after(cursor, limits)
    }

    fn wake_ups(&self) -> watch::Receiver<u64> {
        self.local.wake_ups()
    }

    fn read_now(
        &self,
        cursor: u64,
        limits: ReadLimits,
        buffer: &mut Vec<Bytes>,
    ) -> Option<Result<Read, StoreError>> {
        self.local.read_now(cursor, limits, buffer)
    }

    fn trim_point(&self, events: usize, bytes: usize) -> u64 {
        self.local.trim_point(events, bytes)
    }

    fn presence(&self) -> Option<Duration> {
        Some(heartbeat(self.store.inner.settings.lease))
    }

    fn readers_elsewhere(&self) -> Option<watch::Receiver<u64>> {
        Some(self.attached_elsewhere.subscribe())
    }

    fn elsewhere(&self) -> BoxFuture<'_, Result<(bool, ReaderCounts), StoreError>> {
        Box::pin(async move {
            let (present, meta) = (
                self.store.key(self.id(), "present"),
                self.store.key(self.id(), "meta"),
            );
            let (present, meta): (bool, HashMap<Vec<u8>, Vec<u8>>) = self
                .store
                .call(async |mut c| {
                    redis::pipe()
                        .exists(&present)
                        .hgetall(&meta)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            let counts = sum_sessions(&meta);
            // Redis emptied recently (a restart): the readers' presence is being re-written;
            // do not take its absence for an answer yet.
            let present = present || self.store.recently_emptied().await.unwrap_or(true);
            Ok((present, counts))
        })
    }
}
