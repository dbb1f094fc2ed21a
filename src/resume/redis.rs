//! [`RedisStore`]: the logs of resumable streams on Redis, so that a client can resume on
//! any replica (feature `redis`).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Client, RedisResult, Value};
use tokio::sync::{OnceCell, mpsc, watch};

use crate::digest::{DigestRecord, SharedDigests, SharedFuture};
use crate::report::Digest;
use crate::request::Tenant;
use crate::resume::id::StreamId;
use crate::resume::log::MemoryStore;
use crate::resume::store::{
    Batch, BoxFuture, NewStream, Read, ReadLimits, ResumeStore, StoreError, StreamEnd, StreamLog,
};

/// Default [`RedisStoreBuilder::timeout`]: 250 ms.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);
/// Default [`RedisStoreBuilder::running_ttl`]: 10 minutes without an append.
const DEFAULT_RUNNING_TTL: Duration = Duration::from_secs(600);
/// Default [`RedisStoreBuilder::ended_ttl`]: 5 minutes.
const DEFAULT_ENDED_TTL: Duration = Duration::from_secs(300);
/// Default [`RedisStoreBuilder::lease`]: 10 s.
const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// Default [`RedisStoreBuilder::poll`]: 1 s.
const DEFAULT_POLL: Duration = Duration::from_secs(1);
/// Default [`RedisStoreBuilder::max_stream_events`]: 50 000.
const DEFAULT_MAX_STREAM_EVENTS: usize = 50_000;

/// The logs of resumable streams on Redis, shared by every replica of a gateway; give it to
/// [`ResumeLayer::store`](crate::ResumeLayer::store). It also keeps digest records for a
/// [`DigestRegistry`](crate::DigestRegistry) ([`SharedDigests`]).
///
/// # Data model
///
/// Per stream, keys that share one hash tag (one cluster slot), under a prefix:
///
/// | key | type | holds |
/// |---|---|---|
/// | `<prefix>{<id>}:log` | stream | one entry per event, with the explicit id `0-<seq>`: appends are idempotent, and an append at or below the last seq is refused (a stale writer is fenced out) |
/// | `<prefix>{<id>}:meta` | hash | `tenant`; at the end, `end` and `head` (the last seq) |
/// | `<prefix>{<id>}:lease` | string | present while the producer lives; it expires when the producer's process dies |
///
/// A writer task per stream copies the events to Redis, off the live path: what is queued
/// goes in one pipelined round trip (one per event when they come apart, fewer in bursts)
/// that refreshes the TTLs and the lease and publishes `<id> <seq>` on `<prefix>wake`. Each replica holds one subscription
/// to that channel and fans the wake-ups out to its local readers; a safety poll nudges them
/// every [`RedisStoreBuilder::poll`] too, so that a lost message only adds delay. A reader on
/// another replica that finds no new entry, no end and no lease learns that the producer
/// died: its resume ends (`Gone`).
///
/// # Local first
///
/// A stream is also logged in process (a [`MemoryStore`]): its local readers, and resumes
/// that land on the replica running it, are served from memory. Redis serves the other
/// replicas.
///
/// # Failures
///
/// No call waits on Redis longer than [`RedisStoreBuilder::timeout`]:
///
/// - Redis down when a stream starts: the stream runs, not resumable (no ids are sent).
/// - Redis lost mid-stream: the live stream goes on from memory (and resumes on this replica
///   too); its Redis log stops (resumes on other replicas answer `204` once the lease
///   expires), and the store stops writing it.
/// - Redis back: new streams are resumable again (the connection manager reconnects), with
///   no restart.
///
/// ```no_run
/// use tower_sse::ResumeLayer;
/// use tower_sse::resume::RedisStore;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::builder("redis://127.0.0.1:6379/")?.build();
/// let layer = ResumeLayer::new().store(store);
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
///
/// Cheap to clone: clones share the connection and the subscription.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// Made on first use, and again after a failure (Redis down at start-up).
    connection: OnceCell<ConnectionManager>,
    local: MemoryStore,
    settings: Settings,
    /// The wake-ups of the logs read here, by stream.
    wakers: Mutex<HashMap<StreamId, Weak<watch::Sender<u64>>>>,
    subscribed: AtomicBool,
}

#[derive(Debug, Clone)]
struct Settings {
    prefix: String,
    timeout: Duration,
    running_ttl: Duration,
    ended_ttl: Duration,
    lease: Duration,
    poll: Duration,
    max_stream_events: usize,
}

/// Configures a [`RedisStore`].
#[derive(Debug)]
#[must_use]
pub struct RedisStoreBuilder {
    client: Client,
    local: Option<MemoryStore>,
    settings: Settings,
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://host:port/db`), with the defaults.
    ///
    /// # Errors
    ///
    /// When `url` is not a Redis URL. Redis itself is not contacted here.
    pub fn new(url: &str) -> Result<Self, StoreError> {
        Ok(Self::builder(url)?.build())
    }

    /// Configure a store on the Redis at `url`.
    ///
    /// # Errors
    ///
    /// When `url` is not a Redis URL.
    pub fn builder(url: &str) -> Result<RedisStoreBuilder, StoreError> {
        let client = Client::open(url)
            .map_err(|e| StoreError::unavailable(format!("not a Redis URL: {:?}", e.kind())))?;
        Ok(RedisStoreBuilder {
            client,
            local: None,
            settings: Settings {
                prefix: "tower-sse:".to_owned(),
                timeout: DEFAULT_TIMEOUT,
                running_ttl: DEFAULT_RUNNING_TTL,
                ended_ttl: DEFAULT_ENDED_TTL,
                lease: DEFAULT_LEASE,
                poll: DEFAULT_POLL,
                max_stream_events: DEFAULT_MAX_STREAM_EVENTS,
            },
        })
    }

    /// The connection, made now if there is none yet.
    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let settings = &self.inner.settings;
        let client = self.inner.client.clone();
        let connect = self.inner.connection.get_or_try_init(|| async move {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(settings.timeout))
                .set_response_timeout(Some(settings.timeout))
                .set_number_of_retries(1);
            ConnectionManager::new_with_config(client, config).await
        });
        match tokio::time::timeout(settings.timeout, connect).await {
            Ok(Ok(connection)) => Ok(connection.clone()),
            Ok(Err(e)) => Err(unavailable(&e)),
            Err(_) => Err(StoreError::unavailable("Redis did not answer in time")),
        }
    }

    /// Run `f` on the connection, within the timeout.
    async fn call<T>(
        &self,
        f: impl AsyncFnOnce(ConnectionManager) -> RedisResult<T>,
    ) -> Result<T, StoreError> {
        let connection = self.connection().await?;
        match tokio::time::timeout(self.inner.settings.timeout, f(connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(unavailable(&e)),
            Err(_) => Err(StoreError::unavailable("Redis did not answer in time")),
        }
    }

    fn key(&self, id: StreamId, part: &str) -> String {
        format!("{}{{{id}}}:{part}", self.inner.settings.prefix)
    }

    fn digest_key(&self, tenant: Tenant, response_id: &str) -> String {
        format!(
            "{}digest:{{{tenant}}}:{response_id}",
            self.inner.settings.prefix
        )
    }

    fn wake_channel(&self) -> String {
        format!("{}wake", self.inner.settings.prefix)
    }

    /// The local wake-ups of stream `id`, fed by the subscription (started on first use).
    fn waker(&self, id: StreamId) -> Arc<watch::Sender<u64>> {
        self.subscribe();
        let mut wakers = self
            .inner
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        wakers.retain(|_, waker| waker.strong_count() > 0);
        if let Some(waker) = wakers.get(&id).and_then(Weak::upgrade) {
            return waker;
        }
        let waker = Arc::new(watch::channel(0).0);
        wakers.insert(id, Arc::downgrade(&waker));
        waker
    }

    /// Start the replica's one subscription to the wake channel (and the safety poll), once.
    fn subscribe(&self) {
        if self.inner.subscribed.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.inner.subscribed.store(false, Ordering::Release);
            return;
        };
        let store = Arc::downgrade(&self.inner);
        runtime.spawn(wake_loop(store, self.wake_channel()));
    }
}

/// Fan the wake channel out to the local readers, and nudge them all every `poll` (a
/// message lost while the subscription was down only delays them). Ends with the store.
async fn wake_loop(store: Weak<Inner>, channel: String) {
    use futures_util::StreamExt;
    loop {
        let Some(inner) = store.upgrade() else {
            return;
        };
        let (client, poll) = (inner.client.clone(), inner.settings.poll);
        drop(inner);
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub.into_on_message())
        };
        let mut messages = tokio::time::timeout(poll, subscribed)
            .await
            .ok()
            .and_then(Result::ok);
        loop {
            // `None`: the safety poll is due (or there is no subscription).
            let message = match &mut messages {
                Some(messages) => match tokio::time::timeout(poll, messages.next()).await {
                    Ok(Some(message)) => Some(Some(message)),
                    // The subscription broke.
                    Ok(None) => Some(None),
                    Err(_) => None,
                },
                None => {
                    tokio::time::sleep(poll).await;
                    None
                }
            };
            let Some(inner) = store.upgrade() else {
                return;
            };
            match message {
                // A wake-up: `<id> <seq>`.
                Some(Some(message)) => {
                    if let Some((id, seq)) = parse_wake(message.get_payload_bytes()) {
                        let waker = inner
                            .wakers
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get(&id)
                            .and_then(Weak::upgrade);
                        if let Some(waker) = waker {
                            waker.send_replace(seq);
                        }
                    }
                }
                broken => {
                    nudge_all(&inner);
                    // Subscribe again when it broke or never worked.
                    if broken.is_some() || messages.is_none() {
                        break;
                    }
                }
            }
        }
    }
}

fn nudge_all(inner: &Inner) {
    let wakers = inner.wakers.lock().unwrap_or_else(PoisonError::into_inner);
    for waker in wakers.values().filter_map(Weak::upgrade) {
        waker.send_modify(|_| {});
    }
}

fn parse_wake(payload: &[u8]) -> Option<(StreamId, u64)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (id, seq) = text.split_once(' ')?;
    Some((StreamId::parse(id)?, seq.parse().ok()?))
}

fn unavailable(e: &redis::RedisError) -> StoreError {
    // The kind and code only: a Redis error can quote the command, and so a payload.
    StoreError::unavailable(format!(
        "Redis: {:?}{}",
        e.kind(),
        e.code().map(|c| format!(" {c}")).unwrap_or_default()
    ))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisStoreBuilder {
    /// The prefix of every key and channel. Default: `tower-sse:`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.settings.prefix = prefix.into();
        self
    }

    /// The longest any call waits on Redis (connecting included). Default: 250 ms.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = timeout;
        self
    }

    /// How long a running stream's log lives without an append. Default: 10 minutes.
    pub fn running_ttl(mut self, ttl: Duration) -> Self {
        self.settings.running_ttl = ttl;
        self
    }

    /// How long a log lives after its stream ended. Default: 5 minutes.
    pub fn ended_ttl(mut self, ttl: Duration) -> Self {
        self.settings.ended_ttl = ttl;
        self
    }

    /// How long a producer's lease lasts without an append: readers on other replicas learn
    /// that a producer died after this long. Default: 10 s.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.settings.lease = lease;
        self
    }

    /// The safety poll of readers on other replicas. Default: 1 s.
    pub fn poll(mut self, poll: Duration) -> Self {
        self.settings.poll = poll.max(Duration::from_millis(10));
        self
    }

    /// The most events kept per stream in Redis (older ones are trimmed, approximately, and
    /// resuming before them answers `204`). Default: 50 000.
    pub fn max_stream_events(mut self, events: usize) -> Self {
        self.settings.max_stream_events = events.max(1);
        self
    }

    /// The in-process store that serves this replica's own streams (its bounds apply to
    /// them). Default: [`MemoryStore::new`].
    pub fn local(mut self, local: MemoryStore) -> Self {
        self.local = Some(local);
        self
    }

    /// The store.
    pub fn build(self) -> RedisStore {
        RedisStore {
            inner: Arc::new(Inner {
                client: self.client,
                connection: OnceCell::new(),
                local: self.local.unwrap_or_default(),
                settings: self.settings,
                wakers: Mutex::new(HashMap::new()),
                subscribed: AtomicBool::new(false),
            }),
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl ResumeStore for RedisStore {
    fn create(&self, stream: NewStream) -> BoxFuture<'_, Result<Arc<dyn StreamLog>, StoreError>> {
        Box::pin(async move {
            let meta = self.key(stream.id, "meta");
            let lease = self.key(stream.id, "lease");
            let settings = &self.inner.settings;
            let tenant = stream.tenant.to_string();
            // Redis first: a stream Redis cannot take is not resumable at all (its ids would
            // promise resumes that other replicas cannot serve).
            self.call(async |mut c| {
                redis::pipe()
                    .hset(&meta, "tenant", &tenant)
                    .ignore()
                    .pexpire(&meta, millis(settings.running_ttl) as i64)
                    .ignore()
                    .pset_ex(&lease, 1, millis(settings.lease))
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await?;
            let local = self.inner.local.create(stream).await?;
            Ok(Arc::new(ProducerLog::new(self.clone(), local)) as Arc<dyn StreamLog>)
        })
    }

    fn open(
        &self,
        id: StreamId,
        tenant: Tenant,
    ) -> BoxFuture<'_, Result<Option<Arc<dyn StreamLog>>, StoreError>> {
        Box::pin(async move {
            // The producer is here: serve from memory.
            if let Ok(Some(local)) = self.inner.local.open(id, tenant).await {
                return Ok(Some(local));
            }
            let meta = self.key(id, "meta");
            let owner: Option<String> = self
                .call(async |mut c| c.hget(&meta, "tenant").await)
                .await?;
            if owner.as_deref() != Some(tenant.to_string().as_str()) {
                // Unknown, expired, or another tenant's: all alike.
                return Ok(None);
            }
            let waker = self.waker(id);
            Ok(Some(Arc::new(RemoteLog {
                store: self.clone(),
                id,
                waker,
            }) as Arc<dyn StreamLog>))
        })
    }
}

/// The log of a stream produced on this replica: in memory, and copied to Redis for the
/// other replicas as long as Redis takes it. The copy is a writer task of its own, fed by a
/// bounded queue: the producer (and so the live stream) never waits on Redis.
struct ProducerLog {
    local: Arc<dyn StreamLog>,
    writer: mpsc::Sender<Op>,
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
    fn new(store: RedisStore, local: Arc<dyn StreamLog>) -> Self {
        let (writer, queue) = mpsc::channel(WRITER_QUEUE);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(write_loop(store, local.id(), queue));
        }
        Self { local, writer }
    }

    fn copy(&self, op: Op) {
        // Full or closed: the Redis side is behind or broken, and stops (its lease expires).
        let _ = self.writer.try_send(op);
    }
}

/// Copy one stream's log to Redis: what is queued goes in one pipelined round trip (the
/// entries with their explicit ids, the TTLs, the lease, one `PUBLISH`). The first failure
/// ends the copy: the other replicas learn it from the lease.
async fn write_loop(store: RedisStore, id: StreamId, mut queue: mpsc::Receiver<Op>) {
    let settings = store.inner.settings.clone();
    let (log, meta, lease) = (
        store.key(id, "log"),
        store.key(id, "meta"),
        store.key(id, "lease"),
    );
    let channel = store.wake_channel();
    let mut batch = Vec::with_capacity(WRITER_BATCH);
    while queue.recv_many(&mut batch, WRITER_BATCH).await > 0 {
        let mut pipe = redis::pipe();
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
}

/// The log of a stream produced on another replica, read from Redis.
struct RemoteLog {
    store: RedisStore,
    id: StreamId,
    waker: Arc<watch::Sender<u64>>,
}

impl StreamLog for RemoteLog {
    fn id(&self) -> StreamId {
        self.id
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
            let (entries, top, end, head, alive): (
                Value,
                Value,
                Option<String>,
                Option<u64>,
                bool,
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
                        .query_async(&mut c)
                        .await
                })
                .await?;
            let entries = parse_entries(&entries);
            let top = parse_entries(&top).first().map_or(0, |(seq, _)| *seq);
            let end = end.as_deref().and_then(parse_end);
            let head = head.unwrap_or(top).max(top);
            Ok(answer(cursor, entries, head, end, alive, limits))
        })
    }

    fn wake_ups(&self) -> watch::Receiver<u64> {
        self.waker.subscribe()
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
        return Read::Ahead;
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
fn parse_entries(reply: &Value) -> Vec<(u64, Bytes)> {
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

/// Digest records on Redis: `<prefix>digest:{<tenant>}:<response id>`, a hash with the
/// record's fields, expiring with the registry's time to live. The tenant is part of the key:
/// another tenant's record of the same id is another key.
impl SharedDigests for RedisStore {
    fn put(&self, record: DigestRecord, ttl: Duration) -> SharedFuture<()> {
        let store = self.clone();
        Box::pin(async move {
            let key = store.digest_key(record.tenant, &record.response_id);
            let at = record
                .finished_at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            let request = record
                .request_digest
                .map(|d| d.to_hex())
                .unwrap_or_default();
            let model = record.model.clone().unwrap_or_default();
            // Best effort: the registry in process has the record anyway.
            let _ = store
                .call(async |mut c| {
                    redis::pipe()
                        .hset_multiple(
                            &key,
                            &[
                                ("tenant", record.tenant.to_string()),
                                ("id", record.response_id.clone()),
                                ("request", request),
                                ("response", record.response_digest.to_hex()),
                                ("model", model),
                                ("at", at.to_string()),
                            ],
                        )
                        .ignore()
                        .pexpire(&key, millis(ttl) as i64)
                        .ignore()
                        .query_async::<()>(&mut c)
                        .await
                })
                .await;
        })
    }

    fn fetch(&self, tenant: Tenant, response_id: String) -> SharedFuture<Option<DigestRecord>> {
        let store = self.clone();
        Box::pin(async move {
            let key = store.digest_key(tenant, &response_id);
            let fields: HashMap<String, String> =
                store.call(async |mut c| c.hgetall(&key).await).await.ok()?;
            let field = |name: &str| fields.get(name).map(String::as_str);
            let mut record = DigestRecord::new(
                field("id")?.to_owned(),
                Digest::from_hex(field("response")?)?,
            );
            record.tenant = Tenant::parse(field("tenant")?)?;
            record.request_digest = field("request").and_then(Digest::from_hex);
            record.model = field("model")
                .filter(|model| !model.is_empty())
                .map(str::to_owned);
            let at: u64 = field("at")?.parse().ok()?;
            record.finished_at = std::time::UNIX_EPOCH + Duration::from_millis(at);
            (record.tenant == tenant && record.response_id == response_id).then_some(record)
        })
    }
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
        assert_eq!(answer(9, Vec::new(), 6, None, true, LIMITS), Read::Ahead);
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

    #[test]
    fn wake_messages_parse_strictly() {
        let id = StreamId::random().unwrap();
        assert_eq!(parse_wake(format!("{id} 7").as_bytes()), Some((id, 7)));
        assert_eq!(parse_wake(b"nonsense"), None);
        assert_eq!(parse_wake(format!("{id} x").as_bytes()), None);
    }
}
