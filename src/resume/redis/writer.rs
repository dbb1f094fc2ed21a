//! The log of a stream produced on this replica: in memory, copied to Redis by a writer task.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use super::{RedisStore, millis};
use crate::BoxFuture;
use crate::resume::id::StreamId;
use crate::resume::store::{Read, ReadLimits, ReaderCounts, StoreError, StreamEnd, StreamLog};

/// The log of a stream produced on this replica: in memory, and copied to Redis for the
/// other replicas as long as Redis takes it. The copy is a writer task of its own, fed by a
/// bounded queue: the producer (and so the live stream) never waits on Redis.
pub(super) struct ProducerLog {
    store: RedisStore,
    local: Arc<dyn StreamLog>,
    writer: mpsc::Sender<Op>,
    /// Cleared at the end: no heartbeat renews the lease of an ended stream.
    alive: Arc<AtomicBool>,
}

/// What the writer task copies to Redis, in order.
enum Op {
    Append(u64, Bytes),
    End(u64, StreamEnd),
}

/// The most copies waiting for Redis per stream; beyond it (Redis slow or gone) the Redis
/// log of the stream stops.
const WRITER_QUEUE: usize = 1024;
/// The most operations sent in one pipelined round trip.
const WRITER_BATCH: usize = 64;

impl ProducerLog {
    pub(super) fn new(store: RedisStore, local: Arc<dyn StreamLog>) -> Self {
        let (writer, queue) = mpsc::channel(WRITER_QUEUE);
        let alive = Arc::new(AtomicBool::new(true));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(write_loop(store.clone(), local.id(), queue, alive.clone()));
        }
        Self {
            store,
            local,
            writer,
            alive,
        }
    }

    fn copy(&self, op: Op) {
        // Full or closed: the Redis side is behind or broken, and stops (its lease expires).
        let _ = self.writer.try_send(op);
    }
}

/// How often a silent stream's producer renews its lease: three times per lease, so that one
/// late or lost round trip never lets it lapse.
pub(super) fn heartbeat(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(10))
}

/// Copy one stream's log to Redis: what is queued goes in one pipelined round trip (the
/// entries with their explicit ids, the TTLs, the lease, one `PUBLISH`). While nothing is
/// queued, a heartbeat renews the lease and the TTLs (liveness is not inferred from events:
/// an upstream silent for longer than the lease, a model thinking, is alive). The first
/// failure ends the copy: the other replicas learn it from the lease.
async fn write_loop(
    store: RedisStore,
    id: StreamId,
    mut queue: mpsc::Receiver<Op>,
    alive: Arc<AtomicBool>,
) {
    let settings = store.inner.settings.clone();
    let (log, meta, lease) = (
        store.key(id, "log"),
        store.key(id, "meta"),
        store.key(id, "lease"),
    );
    let channel = store.wake_channel();
    let mut batch = Vec::with_capacity(WRITER_BATCH);
    let period = heartbeat(settings.lease);
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let got = std::future::poll_fn(|cx| {
            if let Poll::Ready(n) = queue.poll_recv_many(cx, &mut batch, WRITER_BATCH) {
                return Poll::Ready(Some(n));
            }
            beat.poll_tick(cx).map(|_| None)
        })
        .await;
        let mut pipe = redis::pipe();
        match got {
            Some(0) => return,
            Some(_) => {}
            None => {
                if !alive.load(Ordering::Acquire) {
                    return;
                }
                // The heartbeat: the producer runs, silent.
                let ttl = millis(settings.running_ttl) as i64;
                pipe.pset_ex(&lease, 1, millis(settings.lease))
                    .ignore()
                    .pexpire(&log, ttl)
                    .ignore()
                    .pexpire(&meta, ttl)
                    .ignore();
                let renewed = store
                    .call(async |mut c| pipe.query_async::<()>(&mut c).await)
                    .await;
                if renewed.is_err() {
                    return;
                }
                continue;
            }
        }
        let mut last = 0;
        let mut ended = false;
        for op in batch.drain(..) {
            match op {
                Op::Append(seq, event) => {
                    pipe.cmd("XADD")
                        .arg(&log)
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(settings.max_stream_events)
                        .arg(format!("0-{seq}"))
                        .arg("e")
                        .arg(event.as_ref())
                        .ignore();
                    last = seq;
                }
                Op::End(last_seq, end) => {
                    pipe.hset(&meta, "end", end.as_str())
                        .ignore()
                        .hset(&meta, "head", last_seq)
                        .ignore()
                        .del(&lease)
                        .ignore();
                    last = last_seq;
                    ended = true;
                }
            }
        }
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
        pipe.publish(&channel, format!("{id} {last}")).ignore();
        let written = store
            .call(async |mut c| pipe.query_async::<()>(&mut c).await)
            .await;
        if written.is_err() || ended {
            return;
        }
        // The lease was just renewed.
        beat.reset();
    }
}

impl StreamLog for ProducerLog {
    fn id(&self) -> StreamId {
        self.local.id()
    }

    fn append(&self, seq: u64, event: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.local.append(seq, event.clone()).await?;
            self.copy(Op::Append(seq, event));
            Ok(())
        })
    }

    fn end(&self, last_seq: u64, end: StreamEnd) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.alive.store(false, Ordering::Release);
            self.local.end(last_seq, end).await?;
            self.copy(Op::End(last_seq, end));
            Ok(())
        })
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

    fn trim_point(&self, len: usize) -> u64 {
        self.local.trim_point(len)
    }

    fn presence(&self) -> Option<Duration> {
        Some(heartbeat(self.store.inner.settings.lease))
    }

    fn elsewhere(&self) -> BoxFuture<'_, Result<(bool, ReaderCounts), StoreError>> {
        Box::pin(async move {
            let (present, meta) = (
                self.store.key(self.id(), "present"),
                self.store.key(self.id(), "meta"),
            );
            let (present, (connections, resumes, replayed)): (
                bool,
                (Option<u64>, Option<u64>, Option<u64>),
            ) = self
                .store
                .call(async |mut c| {
                    redis::pipe()
                        .exists(&present)
                        .cmd("HMGET")
                        .arg(&meta)
                        .arg("connections")
                        .arg("resumes")
                        .arg("replayed")
                        .query_async(&mut c)
                        .await
                })
                .await?;
            let counts = ReaderCounts {
                connections: connections.unwrap_or(0),
                resumes: resumes.unwrap_or(0),
                replayed_events: replayed.unwrap_or(0),
            };
            Ok((present, counts))
        })
    }
}
