//! [`RedisStore`]: the logs of resumable streams on Redis, so that a client can resume on
//! any replica (feature `redis`).
//!
//! | file | role |
//! |---|---|
//! | `mod.rs` | the store, its settings, the connection, creating and opening logs |
//! | `wake.rs` | the wake-ups: one subscription per replica, fanned out to the local readers |
//! | `writer.rs` | the log of a stream produced here: memory first, copied to Redis by a writer task |
//! | `reader.rs` | the log of a stream produced on another replica, read from Redis |
//!
//! The digest records a [`DigestRegistry`](crate::DigestRegistry) shares through the same
//! store are in `digest/redis.rs`.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisResult};
use tokio::sync::OnceCell;

use crate::BoxFuture;
use crate::request::Tenant;
use crate::resume::id::StreamId;
use crate::resume::memory::MemoryStore;
use crate::resume::store::{
    NewStream, ReaderCounts, ResumeStore, StoreError, StreamLog, TraceParent,
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

mod reader;
mod wake;
mod writer;

use self::reader::RemoteLog;
use self::writer::ProducerLog;

/// The logs of resumable streams on Redis, shared by every replica of a gateway; give it to
/// [`ResumeLayer::store`](crate::ResumeLayer::store). It also keeps digest records for a
/// [`DigestRegistry`](crate::DigestRegistry) ([`SharedDigests`](crate::digest::SharedDigests)).
///
/// # Data model
///
/// Per stream, keys that share one hash tag (one cluster slot), under a prefix:
///
/// | key | type | holds |
/// |---|---|---|
/// | `<prefix>{<id>}:log` | stream | one entry per event, with the explicit id `0-<seq>`: appends are idempotent, and an append at or below the last seq is refused (a stale writer is fenced out) |
/// | `<prefix>{<id>}:meta` | hash | `tenant`; `trace`, the `traceparent` of the producer's span when it has one (the span of a resume served on any replica links to it); what readers on replicas other than the producer's did, each reader session's totals (`connections:<session>`, `resumes:<session>`, `replayed:<session>`); `lost`, the last seq the mirror could keep when it could not re-sync; at the end, `end` and `head` (the last seq) |
/// | `<prefix>{<id>}:present` | string | present while a replica other than the producer's serves a reader of the stream (refreshed every third of the lease): it keeps the producer's upstream alive |
/// | `<prefix>{<id>}:lease` | string | present while the producer lives (renewed by every write, and by a heartbeat three times per lease while the stream is silent); it expires when the producer's process dies |
///
/// A writer task per stream mirrors its in-process log to Redis, off the live path: what
/// the log has beyond what Redis took goes in one pipelined round trip (one per event when
/// they come apart, fewer in bursts)
/// that refreshes the TTLs and the lease and publishes `<id> <seq>` on `<prefix>wake`. Each replica holds one subscription
/// to that channel and fans the wake-ups out to its local readers; a safety poll nudges them
/// every [`RedisStoreBuilder::poll`] too, so that a lost message only adds delay. A reader on
/// another replica that finds no new entry, no end and no lease learns that the producer
/// died: its resume ends (`Gone`). A replica where a client attaches to a stream produced
/// elsewhere adds to the stream's `meta` counts and, in the same pipelined round trip,
/// publishes `<id> readers` on the same channel: the producer's replica routes it to the
/// producer, which reads the counts at once, so that its report counts that connection even
/// when the stream ends a moment later (one more round trip per such connection, none per
/// event).
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
/// - Redis lost mid-stream (down, slower than the timeout, full, restarted empty): the live
///   stream goes on from memory (and resumes on this replica too); the stream's writer
///   retries on every heartbeat and, once Redis answers, asks where the Redis log stops and
///   re-syncs it from the in-process log. If the in-process log no longer has what Redis
///   misses (its bounds trimmed it meanwhile), the Redis log is marked `lost` after its last
///   entry: resumes past it on other replicas answer `204` (`sse-resume: gone`) and readers
///   there get the `resume_gap` error event and a broken end. Never a silent gap. The
///   writer reads the in-process log rather than a queue, so nothing can overflow.
/// - Redis restarted without persistence: its misses answer `unavailable` (`204`) for one
///   lease while live streams are re-written by their producers; the logs of streams that
///   had already ended are lost (their resumes then answer `204` without a reason). Run
///   Redis with persistence (AOF) to keep them.
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
    wakers: Mutex<wake::Wakers>,
    /// The producers of this replica, by stream: told when a reader attaches elsewhere.
    attach_wakers: Mutex<wake::Wakers>,
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
///
/// Redis is not contacted until the first stream, so this runs without one:
///
/// ```
/// use std::time::Duration;
/// use tower_sse::ResumeLayer;
/// use tower_sse::resume::{MemoryStore, RedisStore, StoreErrorKind};
///
/// let store = RedisStore::builder("redis://127.0.0.1:6379/0")?
///     .prefix("gateway-eu:")
///     .timeout(Duration::from_millis(100))
///     .ended_ttl(Duration::from_secs(120))
///     // This replica's own streams are served from memory, with these bounds.
///     .local(MemoryStore::builder().max_stream_bytes(1 << 20).build())
///     .build();
/// let layer = ResumeLayer::new().store(store);
/// # let _ = layer;
///
/// let error = RedisStore::builder("http://localhost:6379").unwrap_err();
/// assert_eq!(error.kind(), StoreErrorKind::Unavailable);
/// # Ok::<(), tower_sse::resume::StoreError>(())
/// ```
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
    pub(crate) async fn call<T>(
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

    /// The prefix of every key and channel.
    pub(crate) fn prefix(&self) -> &str {
        &self.inner.settings.prefix
    }
}

impl RedisStore {
    /// Whether Redis may have lost its data (a restart without persistence) less than a
    /// lease and a timeout ago: the first miss after it sets `<prefix>since` (no TTL), so
    /// that for one lease after it misses cannot be told from streams not re-synced yet.
    pub(super) async fn recently_emptied(&self) -> Result<bool, StoreError> {
        let key = format!("{}since", self.inner.settings.prefix);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let since: u64 = self
            .call(async |mut c| {
                let (since,): (u64,) = redis::pipe()
                    .cmd("SET")
                    .arg(&key)
                    .arg(now)
                    .arg("NX")
                    .ignore()
                    .get(&key)
                    .query_async(&mut c)
                    .await?;
                Ok(since)
            })
            .await?;
        let settings = &self.inner.settings;
        Ok(now.saturating_sub(since) < millis(settings.lease + settings.timeout))
    }
}

fn unavailable(e: &redis::RedisError) -> StoreError {
    // The kind and code only: a Redis error can quote the command, and so a payload.
    StoreError::unavailable(format!(
        "Redis: {:?}{}",
        e.kind(),
        e.code().map(|c| format!(" {c}")).unwrap_or_default()
    ))
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// How often a silent stream's producer renews its lease: three times per lease, so that one
/// late or lost round trip never lets it lapse.
pub(super) fn heartbeat(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(10))
}

/// The `meta` field of the stream's tenant.
pub(super) const TENANT: &str = "tenant";
/// The `meta` field of the producer's span context ([`TraceParent`], its `traceparent` text).
pub(super) const TRACE: &str = "trace";

/// What readers in other processes did, in `meta`: one field per count and reader session
/// (`connections:<session>`), each that session's total, so that a write sent again after a
/// timeout never counts twice.
pub(super) const COUNTED: [&str; 3] = ["connections", "resumes", "replayed"];

/// The `meta` field of one session's count.
pub(super) fn session_field(count: &str, session: u64) -> String {
    format!("{count}:{session:016x}")
}

/// The stream's counts: the sum of its sessions' totals in `meta` (its `HGETALL`).
pub(super) fn sum_sessions(meta: &HashMap<Vec<u8>, Vec<u8>>) -> ReaderCounts {
    let mut sums = [0u64; 3];
    for (field, value) in meta {
        let Some(colon) = field.iter().position(|b| *b == b':') else {
            continue;
        };
        let Some(slot) = COUNTED.iter().position(|c| c.as_bytes() == &field[..colon]) else {
            continue;
        };
        let n = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        sums[slot] = sums[slot].saturating_add(n);
    }
    ReaderCounts {
        connections: sums[0],
        resumes: sums[1],
        replayed_events: sums[2],
    }
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

    /// How long a producer's lease lasts without a renewal: readers on other replicas learn
    /// that a producer died after this long. A live producer renews it with every write and,
    /// while its upstream is silent (a model thinking before its first token, a tool call),
    /// with a heartbeat every third of the lease: one pipelined round trip per silent stream
    /// per `lease / 3`, none while events flow. Default: 10 s.
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
                wakers: Mutex::default(),
                attach_wakers: Mutex::default(),
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
            // The producer's span context, when it has one: one more field in the same `HSET`.
            let trace = stream.trace_parent.map(|trace| trace.to_string());
            let fields = [
                (TENANT, tenant.as_str()),
                (TRACE, trace.as_deref().unwrap_or("")),
            ];
            let fields = &fields[..if trace.is_some() { 2 } else { 1 }];
            // Redis first: a stream Redis cannot take is not resumable at all (its ids would
            // promise resumes that other replicas cannot serve).
            self.call(async |mut c| {
                redis::pipe()
                    .cmd("HSET")
                    .arg(&meta)
                    .arg(fields)
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
            Ok(Arc::new(ProducerLog::new(self.clone(), local, tenant)) as Arc<dyn StreamLog>)
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
            // The owner and the producer's span context, in one command.
            let (owner, trace): (Option<String>, Option<Vec<u8>>) = self
                .call(async |mut c| {
                    redis::cmd("HMGET")
                        .arg(&meta)
                        .arg(TENANT)
                        .arg(TRACE)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            if owner.is_none() && self.recently_emptied().await? {
                // Redis may have restarted empty: a live stream's producer re-writes its log
                // within a heartbeat. Until then "unknown" would be a lie: say unavailable
                // (`204`, `sse-resume: unavailable`), and the client tries again.
                return Err(StoreError::unavailable(
                    "Redis was emptied recently; the stream may not be re-synced yet",
                ));
            }
            if owner.as_deref() != Some(tenant.to_string().as_str()) {
                // Unknown, expired, or another tenant's: all alike.
                return Ok(None);
            }
            let waker = self.waker(id);
            let trace_parent = trace
                .as_deref()
                .and_then(|trace| std::str::from_utf8(trace).ok())
                .and_then(TraceParent::parse);
            Ok(Some(Arc::new(RemoteLog {
                store: self.clone(),
                id,
                waker,
                trace_parent,
            }) as Arc<dyn StreamLog>))
        })
    }
}
