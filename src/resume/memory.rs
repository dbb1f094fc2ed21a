//! [`MemoryStore`]: the in-process store of stream logs, on moka.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::BoxFuture;
use crate::request::Tenant;
use crate::resume::id::StreamId;
use crate::resume::store::{
    Batch, NewStream, Read, ReadLimits, ResumeStore, StoreError, StoreErrorKind, StreamEnd,
    StreamLog, TraceParent,
};

/// Default [`MemoryStoreBuilder::max_stream_bytes`]: 2 MiB.
const DEFAULT_MAX_STREAM_BYTES: usize = 2 * 1024 * 1024;
/// Default [`MemoryStoreBuilder::max_stream_events`]: 50 000.
const DEFAULT_MAX_STREAM_EVENTS: usize = 50_000;
/// Default [`MemoryStoreBuilder::idle_ttl`]: 10 minutes.
const DEFAULT_IDLE_TTL: Duration = Duration::from_secs(600);
/// Default [`MemoryStoreBuilder::ended_ttl`]: 5 minutes.
const DEFAULT_ENDED_TTL: Duration = Duration::from_secs(300);
/// Default [`MemoryStoreBuilder::max_total_bytes`]: 256 MiB.
const DEFAULT_MAX_TOTAL_BYTES: u64 = 256 * 1024 * 1024;
/// Default [`MemoryStoreBuilder::max_streams_per_tenant`]: 10 000.
const DEFAULT_MAX_STREAMS_PER_TENANT: usize = 10_000;
/// The longest time to live accepted: one day.
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// A log is weighed again (re-inserted into the cache) when it grew by this much, so that
/// the cache's least-recently-used order sees it without a cache write on every append.
/// The bound itself does not wait for it: see [`Counters::held`].
const REWEIGH_BYTES: usize = 64 * 1024;
/// What a log evicted from the cache while its stream runs still keeps, so that attached
/// readers that keep up go on: the evicted positions are gone for resumes.
const EVICTED_KEEP_BYTES: usize = 64 * 1024;
/// Bytes counted per log beyond its events (state, cache entry, channel).
const LOG_OVERHEAD: usize = 512;

/// The in-process store of stream logs: the default store of a
/// [`ResumeLayer`](crate::ResumeLayer).
///
/// Every bound has a safe default and none of them ever cuts a live stream: overflowing one
/// trims the oldest events (resuming before the cut answers `204`), or drops the log from the
/// store (resuming it answers `204`, attached readers go on).
///
/// | bound | default | on overflow |
/// |---|---|---|
/// | [`max_stream_bytes`](MemoryStoreBuilder::max_stream_bytes) | 2 MiB | oldest events trimmed |
/// | [`max_stream_events`](MemoryStoreBuilder::max_stream_events) | 50 000 | oldest events trimmed |
/// | [`idle_ttl`](MemoryStoreBuilder::idle_ttl) | 10 min without an append | the running stream's log expires |
/// | [`ended_ttl`](MemoryStoreBuilder::ended_ttl) | 5 min after the end | the log expires |
/// | [`max_total_bytes`](MemoryStoreBuilder::max_total_bytes) | 256 MiB, counted exactly on every append | least recently used logs dropped |
/// | [`max_streams_per_tenant`](MemoryStoreBuilder::max_streams_per_tenant) | 10 000 running | new streams of that tenant not resumable |
///
/// The total is exact: every append, trim and eviction updates the count of bytes held
/// ([`held_bytes`](MemoryStore::held_bytes)), and an append that takes it past
/// `max_total_bytes` has the least recently used logs dropped before it returns, however
/// many logs are running. The cache itself weighs a running log again only every 64 KiB of
/// growth (a cache write per event would cost more than the event); when the exact count
/// passes the bound, every log is weighed at once, so that its least-recently-used order
/// evicts from true sizes. A running stream whose log was dropped keeps its last 64 KiB
/// for the readers attached to it, outside the bound, until it ends.
///
/// Cheap to clone: clones share the logs.
///
/// ```
/// use std::time::Duration;
/// use tower_sse::ResumeLayer;
/// use tower_sse::resume::MemoryStore;
///
/// let store = MemoryStore::builder()
///     .max_stream_bytes(4 * 1024 * 1024)
///     .ended_ttl(Duration::from_secs(60))
///     .max_total_bytes(1 << 30)
///     .build();
/// let layer = ResumeLayer::new().store(store);
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    cache: Cache<StreamId, Arc<MemLog>>,
    /// The bytes held and the append clock, shared with every log.
    counters: Arc<Counters>,
    /// The logs of running streams: the only ones the cache may have weighed short (an
    /// ended log is weighed at its end), so the only ones [`Inner::evict_to_bound`] weighs
    /// again. A pass over every log the store keeps cost each new stream a scan of
    /// thousands of ended logs once the store was full (about 1 ms per stream at the
    /// default bound).
    running: Mutex<HashMap<StreamId, Weak<MemLog>>>,
    tenants: Mutex<HashMap<Tenant, usize>>,
    limits: Limits,
}

/// What every append updates, held by each log as well as by the store (so that an append
/// reaches them without upgrading its weak reference to the store).
struct Counters {
    /// The exact bytes of the logs in the cache (their events and [`LOG_OVERHEAD`]), kept
    /// on every append, trim and eviction. The cache weighs a running log only every
    /// [`REWEIGH_BYTES`]; when this exact count passes `max_total_bytes`, the running logs
    /// are weighed again at once and the cache evicts down to the bound
    /// ([`Inner::enforce`]).
    held: std::sync::atomic::AtomicU64,
    /// Counts appends, so that [`Inner::enforce`] weighs logs again in the order they were
    /// last written (the cache's recency order follows its writes).
    clock: std::sync::atomic::AtomicU64,
    max_total_bytes: u64,
}

impl Counters {
    fn add_held(&self, bytes: usize) {
        self.held
            .fetch_add(bytes as u64, std::sync::atomic::Ordering::AcqRel);
    }

    fn sub_held(&self, bytes: usize) {
        self.held
            .fetch_sub(bytes as u64, std::sync::atomic::Ordering::AcqRel);
    }

    fn over_bound(&self) -> bool {
        self.held.load(std::sync::atomic::Ordering::Acquire) > self.max_total_bytes
    }
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_stream_bytes: usize,
    max_stream_events: usize,
    idle_ttl: Duration,
    ended_ttl: Duration,
    max_streams_per_tenant: usize,
}

impl MemoryStore {
    /// A store with the defaults (see the [type docs](Self)).
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Configure a store.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder::default()
    }

    /// The number of logs in the store (approximate: the cache applies removals lazily).
    pub fn len(&self) -> u64 {
        self.inner.cache.entry_count()
    }

    /// Whether the store holds no log (approximate, as [`len`](Self::len)).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of logs held, as weighed (approximate, as [`len`](Self::len)).
    pub fn weighted_bytes(&self) -> u64 {
        self.inner.cache.weighted_size()
    }

    /// Bytes of logs held, exactly: the events of every log in the store and a fixed
    /// overhead per log, counted on every append, trim and eviction. Never more than
    /// [`max_total_bytes`](MemoryStoreBuilder::max_total_bytes) once an append returns (see
    /// the type docs for the small tail an evicted running stream keeps).
    pub fn held_bytes(&self) -> u64 {
        self.inner
            .counters
            .held
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Apply pending removals and evictions now (the cache otherwise does it as it goes).
    pub fn run_pending_tasks(&self) {
        self.inner.cache.run_pending_tasks();
    }

    fn lock_tenants(&self) -> MutexGuard<'_, HashMap<Tenant, usize>> {
        self.inner
            .tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("limits", &self.inner.limits)
            .field("max_total_bytes", &self.inner.counters.max_total_bytes)
            .field("logs", &self.inner.cache.entry_count())
            .finish()
    }
}

/// Configures a [`MemoryStore`].
///
/// ```
/// use std::time::Duration;
/// use tower_sse::ResumeLayer;
/// use tower_sse::resume::MemoryStore;
///
/// let store = MemoryStore::builder()
///     .max_stream_bytes(512 * 1024)
///     .ended_ttl(Duration::from_secs(60))
///     .max_streams_per_tenant(8)
///     .build();
/// assert!(store.is_empty());
/// // A clone shares the logs: keep one to look at them (`len`, `weighted_bytes`).
/// let layer = ResumeLayer::new().store(store.clone());
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryStoreBuilder {
    limits: Limits,
    max_total_bytes: u64,
}

impl Default for MemoryStoreBuilder {
    fn default() -> Self {
        Self {
            limits: Limits {
                max_stream_bytes: DEFAULT_MAX_STREAM_BYTES,
                max_stream_events: DEFAULT_MAX_STREAM_EVENTS,
                idle_ttl: DEFAULT_IDLE_TTL,
                ended_ttl: DEFAULT_ENDED_TTL,
                max_streams_per_tenant: DEFAULT_MAX_STREAMS_PER_TENANT,
            },
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
        }
    }
}

impl MemoryStoreBuilder {
    /// Bytes of events kept per stream (at least 1); older events are trimmed beyond it.
    /// One event larger than this is kept alone. Default: 2 MiB.
    pub fn max_stream_bytes(mut self, bytes: usize) -> Self {
        self.limits.max_stream_bytes = bytes.max(1);
        self
    }

    /// Events kept per stream (at least 1); older events are trimmed beyond it. Default:
    /// 50 000.
    pub fn max_stream_events(mut self, events: usize) -> Self {
        self.limits.max_stream_events = events.max(1);
        self
    }

    /// How long the log of a running stream is kept after its last append. Default: 10
    /// minutes; at most a day.
    pub fn idle_ttl(mut self, ttl: Duration) -> Self {
        self.limits.idle_ttl = ttl.min(MAX_TTL);
        self
    }

    /// How long the log of an ended stream is kept. Default: 5 minutes; at most a day.
    pub fn ended_ttl(mut self, ttl: Duration) -> Self {
        self.limits.ended_ttl = ttl.min(MAX_TTL);
        self
    }

    /// Bytes of logs kept in the process, all streams together (a moka weigher); the least
    /// recently used logs are dropped beyond it. Default: 256 MiB.
    pub fn max_total_bytes(mut self, bytes: u64) -> Self {
        self.max_total_bytes = bytes;
        self
    }

    /// Running streams per tenant (counted from their start to their end, or until their
    /// log leaves the store); a tenant's next stream beyond it is served without
    /// resumption. Ended logs are bounded by the TTLs and the total bytes. Default: 10 000
    /// (a deployment without credentials has one tenant: keep it at least the stream limit).
    pub fn max_streams_per_tenant(mut self, streams: usize) -> Self {
        self.limits.max_streams_per_tenant = streams;
        self
    }

    /// Build the store.
    pub fn build(self) -> MemoryStore {
        let limits = self.limits;
        MemoryStore {
            inner: Arc::new_cyclic(|weak: &Weak<Inner>| {
                let listener_store = weak.clone();
                let cache = Cache::builder()
                    .max_capacity(self.max_total_bytes)
                    .eviction_policy(EvictionPolicy::lru())
                    .weigher(|_, log: &Arc<MemLog>| u32::try_from(log.weight()).unwrap_or(u32::MAX))
                    .expire_after(Expiry { limits })
                    .eviction_listener(move |id, log: Arc<MemLog>, cause| {
                        if cause == RemovalCause::Replaced {
                            return;
                        }
                        log.evicted();
                        if let Some(inner) = listener_store.upgrade() {
                            log.release(&MemoryStore { inner });
                        }
                        let _ = id;
                    })
                    .build();
                Inner {
                    cache,
                    counters: Arc::new(Counters {
                        held: std::sync::atomic::AtomicU64::new(0),
                        clock: std::sync::atomic::AtomicU64::new(0),
                        max_total_bytes: self.max_total_bytes,
                    }),
                    running: Mutex::new(HashMap::new()),
                    tenants: Mutex::new(HashMap::new()),
                    limits,
                }
            }),
        }
    }
}

impl Inner {
    fn lock_running(&self) -> MutexGuard<'_, HashMap<StreamId, Weak<MemLog>>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Past the bound: weigh every running log whose size changed since the cache last
    /// weighed it, and let the cache evict down to the bound. Costs a pass over the running
    /// logs (not the ended ones), only while the exact count is over the bound.
    #[inline]
    fn enforce(&self) {
        if self.counters.over_bound() {
            self.evict_to_bound();
        }
    }

    /// [`enforce`](Self::enforce) past the bound (out of line: every append asks, few go on).
    #[cold]
    #[inline(never)]
    fn evict_to_bound(&self) {
        let mut changed: Vec<(u64, StreamId, Arc<MemLog>)> = Vec::new();
        // The running table's lock, then each log's (never the other way round). Logs that
        // ended, left the cache or were dropped leave the table here.
        self.lock_running().retain(|id, log| {
            let Some(log) = log.upgrade() else {
                return false;
            };
            let state = log.lock();
            if state.evicted || state.end.is_some() {
                return false;
            }
            let stale = state.weighed != state.bytes;
            let touched = state.touched;
            drop(state);
            if stale {
                changed.push((touched, *id, log));
            }
            true
        });
        // Least recently written first: the cache's recency order stays that of the writes.
        changed.sort_unstable_by_key(|(touched, ..)| *touched);
        for (_, id, log) in changed {
            {
                let mut state = log.lock();
                state.weighed = state.bytes;
            }
            // Outside the log's lock: the cache may call the eviction listener, which takes it.
            self.cache.insert(id, log);
        }
        self.cache.run_pending_tasks();
    }
}

/// The cache's time to live: the idle TTL while the stream runs (refreshed by re-weighing),
/// the end TTL once it ended.
struct Expiry {
    limits: Limits,
}

impl moka::Expiry<StreamId, Arc<MemLog>> for Expiry {
    fn expire_after_create(
        &self,
        _: &StreamId,
        _: &Arc<MemLog>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(self.limits.idle_ttl)
    }

    fn expire_after_update(
        &self,
        _: &StreamId,
        log: &Arc<MemLog>,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(if log.has_ended() {
            self.limits.ended_ttl
        } else {
            self.limits.idle_ttl
        })
    }
}

impl ResumeStore for MemoryStore {
    fn create(&self, stream: NewStream) -> BoxFuture<'_, Result<Arc<dyn StreamLog>, StoreError>> {
        let result = (|| {
            {
                let mut tenants = self.lock_tenants();
                let n = tenants.entry(stream.tenant).or_insert(0);
                if *n >= self.inner.limits.max_streams_per_tenant {
                    return Err(StoreError::new(StoreErrorKind::TenantLimit));
                }
                *n += 1;
            }
            let store = Arc::downgrade(&self.inner);
            let counters = self.inner.counters.clone();
            let log =
                Arc::new_cyclic(|me| MemLog::new(stream, self.inner.limits, store, counters, me));
            self.inner.counters.add_held(LOG_OVERHEAD);
            self.inner
                .lock_running()
                .insert(stream.id, Arc::downgrade(&log));
            self.inner.cache.insert(stream.id, log.clone());
            self.inner.enforce();
            Ok(log as Arc<dyn StreamLog>)
        })();
        Box::pin(std::future::ready(result))
    }

    fn open(
        &self,
        id: StreamId,
        tenant: Tenant,
    ) -> BoxFuture<'_, Result<Option<Arc<dyn StreamLog>>, StoreError>> {
        let found = self
            .inner
            .cache
            .get(&id)
            .filter(|log| log.tenant == tenant && log.is_fresh())
            .map(|log| log as Arc<dyn StreamLog>);
        Box::pin(std::future::ready(Ok(found)))
    }
}

/// The log of one stream in a [`MemoryStore`].
struct MemLog {
    id: StreamId,
    tenant: Tenant,
    /// The context of the producer's span, kept for [`StreamLog::trace_parent`].
    trace_parent: Option<TraceParent>,
    state: Mutex<LogState>,
    wake: watch::Sender<u64>,
    /// A reader read since the last wake-up (or none was sent yet): the next append wakes
    /// them. Set by every read, taken by every append, under the log's lock; an append that
    /// finds it unset skips the `watch` (whose send notifies eight internal `Notify`s): no
    /// reader marked its wake-up seen and then read without finding that append.
    wanted: std::sync::atomic::AtomicBool,
    /// How many bytes and events an append may still add without trimming (0 once evicted),
    /// kept under the log's lock: [`StreamLog::trim_point`] answers the common case, a log
    /// within its bounds, from them without the lock.
    room: Room,
    limits: Limits,
    store: Weak<Inner>,
    counters: Arc<Counters>,
    me: Weak<MemLog>,
    /// Counted among its tenant's running streams.
    counted: std::sync::atomic::AtomicBool,
}

struct LogState {
    events: VecDeque<Bytes>,
    /// The seq of `events[0]` (`last_seq + 1` when empty).
    first_seq: u64,
    last_seq: u64,
    bytes: usize,
    end: Option<StreamEnd>,
    last_change: Instant,
    /// The bytes when the cache last weighed the log.
    weighed: usize,
    /// When it is weighed again at the latest (a quarter of the idle TTL after it was last
    /// weighed): one comparison per append.
    reweigh_at: Instant,
    /// Dropped from the cache: keep only a small tail for attached readers.
    evicted: bool,
    /// The store's clock at the last append ([`Inner::clock`]).
    touched: u64,
}

impl MemLog {
    fn new(
        stream: NewStream,
        limits: Limits,
        store: Weak<Inner>,
        counters: Arc<Counters>,
        me: &Weak<MemLog>,
    ) -> Self {
        let now = Instant::now();
        Self {
            id: stream.id,
            tenant: stream.tenant,
            trace_parent: stream.trace_parent,
            state: Mutex::new(LogState {
                events: VecDeque::new(),
                first_seq: 1,
                last_seq: 0,
                bytes: 0,
                end: None,
                last_change: now,
                weighed: 0,
                reweigh_at: now + limits.idle_ttl / 4,
                evicted: false,
                touched: 0,
            }),
            wake: watch::Sender::new(0),
            // The first reader waits for the first append without a read before it.
            wanted: std::sync::atomic::AtomicBool::new(true),
            room: Room {
                bytes: std::sync::atomic::AtomicUsize::new(limits.max_stream_bytes),
                events: std::sync::atomic::AtomicUsize::new(limits.max_stream_events),
            },
            limits,
            store,
            counters,
            me: me.clone(),
            counted: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// No longer one of its tenant's running streams (once).
    fn release(&self, store: &MemoryStore) {
        if !self
            .counted
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let mut tenants = store.lock_tenants();
        if let Some(n) = tenants.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                tenants.remove(&self.tenant);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn weight(&self) -> usize {
        LOG_OVERHEAD + self.lock().weighed
    }

    fn has_ended(&self) -> bool {
        self.lock().end.is_some()
    }

    /// Within its time to live (checked on every open, so that expiry is exact in the
    /// runtime's clock; the cache's own expiry frees the memory).
    fn is_fresh(&self) -> bool {
        let state = self.lock();
        let ttl = match state.end {
            Some(_) => self.limits.ended_ttl,
            None => self.limits.idle_ttl,
        };
        !state.evicted && state.last_change.elapsed() < ttl
    }

    fn evicted(&self) {
        let mut state = self.lock();
        if !state.evicted {
            // No longer in the store's bound (what it keeps for attached readers is its own).
            self.counters.sub_held(state.bytes + LOG_OVERHEAD);
        }
        state.evicted = true;
        trim(
            &mut state,
            EVICTED_KEEP_BYTES,
            self.limits.max_stream_events,
        );
        // Evicted: every append may trim (the log keeps a small tail).
        self.room.set(0, 0);
    }

    /// Weigh the log again (re-insert it) when it grew enough, aged enough, or ended.
    fn reweigh(&self, state: &mut LogState, force: bool) -> bool {
        let due = !state.evicted
            && (force
                || state.bytes.abs_diff(state.weighed) >= REWEIGH_BYTES
                || state.last_change >= state.reweigh_at);
        if due {
            state.weighed = state.bytes;
            state.reweigh_at = state.last_change + self.limits.idle_ttl / 4;
        }
        due
    }

    /// Re-insert the log into the cache, outside its lock.
    fn insert_again(&self) {
        // Outside the lock: the cache may call the eviction listener, which takes it.
        if let Some(store) = self.store.upgrade()
            && let Some(me) = self.me.upgrade()
        {
            store.cache.insert(self.id, me);
        }
    }
}

impl MemLog {
    /// Append `events` as entries `first_seq`, `first_seq + 1`, …: under one lock, with one
    /// clock read, one bound check and at most one wake-up of the readers for all of them.
    /// All or none: on error nothing was taken from `events`.
    ///
    /// `push` moves the `count` entries into the log's queue and says how many bytes they are.
    fn push_all(
        &self,
        first_seq: u64,
        count: usize,
        push: impl FnOnce(&mut VecDeque<Bytes>) -> usize,
    ) -> Result<(), StoreError> {
        if count == 0 {
            return Ok(());
        }
        let last_seq = first_seq + count as u64 - 1;
        let (reweigh, counted, wake) = {
            let mut state = self.lock();
            if state.end.is_some() || first_seq != state.last_seq + 1 {
                return Err(StoreError::unavailable("append out of sequence"));
            }
            let added = push(&mut state.events);
            state.bytes += added;
            state.last_seq = last_seq;
            state.last_change = Instant::now();
            let max_bytes = if state.evicted {
                EVICTED_KEEP_BYTES
            } else {
                self.limits.max_stream_bytes
            };
            let trimmed = trim(&mut state, max_bytes, self.limits.max_stream_events);
            if !state.evicted {
                self.room.set(
                    max_bytes.saturating_sub(state.bytes),
                    self.limits
                        .max_stream_events
                        .saturating_sub(state.events.len()),
                );
            }
            // Counted under the log's lock, so that an eviction subtracts what was added.
            let counted = !state.evicted;
            if counted {
                let counters = &self.counters;
                state.touched = counters
                    .clock
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if added >= trimmed {
                    counters.add_held(added - trimmed);
                } else {
                    counters.sub_held(trimmed - added);
                }
            }
            // Every access to `wanted` is under the log's lock: a load, and a store only
            // when a reader wants waking (no locked read-modify-write per append).
            let wake = self.wanted.load(std::sync::atomic::Ordering::Relaxed);
            if wake {
                self.wanted
                    .store(false, std::sync::atomic::Ordering::Relaxed);
            }
            (self.reweigh(&mut state, false), counted, wake)
        };
        if wake {
            self.wake.send_replace(last_seq);
        }
        if reweigh {
            self.insert_again();
        }
        // Outside the lock: the exact bound, whatever the cache has weighed so far.
        if counted
            && self.counters.over_bound()
            && let Some(store) = self.store.upgrade()
        {
            store.evict_to_bound();
        }
        Ok(())
    }

    /// The entries after `cursor`, into `events` (empty).
    fn read_into(&self, cursor: u64, limits: ReadLimits, mut events: Vec<Bytes>) -> Read {
        let state = self.lock();
        // Under the lock: an append after this read sees it and wakes the reader.
        self.wanted
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if cursor > state.last_seq {
            Read::Ahead
        } else if cursor.saturating_add(1) < state.first_seq {
            Read::Gone
        } else {
            let skip = (cursor + 1 - state.first_seq) as usize;
            let mut bytes = 0;
            for event in state.events.range(skip..) {
                if events.len() >= limits.max_events.max(1)
                    || (!events.is_empty() && bytes + event.len() > limits.max_bytes)
                {
                    break;
                }
                bytes += event.len();
                events.push(event.clone());
            }
            Read::Events(Batch::new(cursor, events, state.last_seq, state.end))
        }
    }
}

/// What a log can still take without trimming: a hint for [`StreamLog::trim_point`], written
/// under the log's lock by its appends and its eviction (the producer, the only writer of
/// appends, reads it between its own appends).
struct Room {
    bytes: std::sync::atomic::AtomicUsize,
    events: std::sync::atomic::AtomicUsize,
}

impl Room {
    fn set(&self, bytes: usize, events: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.bytes.store(bytes, Relaxed);
        self.events.store(events, Relaxed);
    }

    /// Whether `events` more entries of `bytes` in all fit for sure.
    fn fits(&self, events: usize, bytes: usize) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.events.load(Relaxed) >= events && self.bytes.load(Relaxed) >= bytes
    }
}

/// The answer of a successful append, ready at once.
struct Appended;

impl std::future::Future for Appended {
    type Output = Result<(), StoreError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// The answer of an append, ready at once: a success is a zero-sized future, so boxing it
/// allocates nothing, on every append.
fn appended(result: Result<(), StoreError>) -> BoxFuture<'static, Result<(), StoreError>> {
    match result {
        Ok(()) => Box::pin(Appended),
        Err(error) => Box::pin(std::future::ready(Err(error))),
    }
}

/// Drop the oldest events until the log is within its bounds (the newest event stays);
/// the bytes dropped.
fn trim(state: &mut LogState, max_bytes: usize, max_events: usize) -> usize {
    let before = state.bytes;
    while state.events.len() > 1 && (state.bytes > max_bytes || state.events.len() > max_events) {
        if let Some(old) = state.events.pop_front() {
            state.bytes -= old.len();
            state.first_seq += 1;
        }
    }
    before - state.bytes
}

impl StreamLog for MemLog {
    fn id(&self) -> StreamId {
        self.id
    }

    fn trace_parent(&self) -> Option<TraceParent> {
        self.trace_parent
    }

    fn append(&self, seq: u64, event: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
        let push = |events: &mut VecDeque<Bytes>| {
            let added = event.len();
            events.push_back(event);
            added
        };
        appended(self.push_all(seq, 1, push))
    }

    fn append_all<'a>(
        &'a self,
        first_seq: u64,
        events: &'a mut Vec<Bytes>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let count = events.len();
        let push = |log: &mut VecDeque<Bytes>| {
            let mut added = 0;
            for event in events.drain(..) {
                added += event.len();
                log.push_back(event);
            }
            added
        };
        appended(self.push_all(first_seq, count, push))
    }

    fn end(&self, last_seq: u64, end: StreamEnd) -> BoxFuture<'_, Result<(), StoreError>> {
        let result = {
            let mut state = self.lock();
            if state.end.is_some() || last_seq != state.last_seq {
                Err(StoreError::unavailable("end out of sequence"))
            } else {
                state.end = Some(end);
                state.last_change = Instant::now();
                Ok(self.reweigh(&mut state, true))
            }
        };
        self.wake.send_replace(last_seq);
        if let Some(inner) = self.store.upgrade() {
            inner.lock_running().remove(&self.id);
            self.release(&MemoryStore { inner });
        }
        if result == Ok(true) {
            self.insert_again();
        }
        let result = result.map(drop);
        Box::pin(std::future::ready(result))
    }

    fn read_after(
        &self,
        cursor: u64,
        limits: ReadLimits,
    ) -> BoxFuture<'_, Result<Read, StoreError>> {
        let read = self.read_into(cursor, limits, Vec::new());
        Box::pin(std::future::ready(Ok(read)))
    }

    fn read_now(
        &self,
        cursor: u64,
        limits: ReadLimits,
        buffer: &mut Vec<Bytes>,
    ) -> Option<Result<Read, StoreError>> {
        let mut events = std::mem::take(buffer);
        events.clear();
        Some(Ok(self.read_into(cursor, limits, events)))
    }

    fn trim_point(&self, events: usize, bytes: usize) -> u64 {
        if self.room.fits(events, bytes) {
            // Within its bounds (the common case): this append trims nothing.
            return 0;
        }
        let state = self.lock();
        if state.end.is_some() {
            return 0;
        }
        let max_bytes = if state.evicted {
            EVICTED_KEEP_BYTES
        } else {
            self.limits.max_stream_bytes
        };
        // What `trim` would drop after this append.
        let (mut bytes, mut count, mut first) = (
            state.bytes + bytes,
            state.events.len() + events,
            state.first_seq,
        );
        if bytes <= max_bytes && count <= self.limits.max_stream_events {
            // Within its bounds (the common case): this append trims nothing.
            return 0;
        }
        for old in &state.events {
            if count <= 1 || (bytes <= max_bytes && count <= self.limits.max_stream_events) {
                break;
            }
            bytes -= old.len();
            count -= 1;
            first += 1;
        }
        if count > 1 && (bytes > max_bytes || count > self.limits.max_stream_events) {
            // The new entries themselves would be trimmed (the newest stays): at least the
            // first of them, and as many as are past the count bound.
            let past = count.saturating_sub(self.limits.max_stream_events).max(1);
            return first + past as u64;
        }
        if first == state.first_seq { 0 } else { first }
    }

    fn wake_ups(&self) -> watch::Receiver<u64> {
        // A new receiver may wait before it reads: the next append wakes it.
        let _state = self.lock();
        self.wanted
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.wake.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(store: &MemoryStore, tenant: Tenant) -> Arc<dyn StreamLog> {
        let id = StreamId::random().unwrap();
        futures_ready(store.create(NewStream::new(id, tenant))).unwrap()
    }

    fn futures_ready<T>(future: BoxFuture<'_, T>) -> T {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut future = future;
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(value) => value,
            std::task::Poll::Pending => panic!("the memory store never waits"),
        }
    }

    fn rd(future: BoxFuture<'_, Result<Read, StoreError>>) -> Read {
        futures_ready(future).unwrap()
    }

    fn events(read: Read) -> (Vec<Bytes>, Option<StreamEnd>) {
        match read {
            Read::Events(batch) => (batch.events, batch.end),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn appends_reads_and_ends() {
        let store = MemoryStore::new();
        let log = log(&store, Tenant::anonymous());
        let limits = ReadLimits::default();
        assert_eq!(events(rd(log.read_after(0, limits))), (vec![], None));
        futures_ready(log.append(1, Bytes::from_static(b"a"))).unwrap();
        futures_ready(log.append(2, Bytes::from_static(b"b"))).unwrap();
        assert!(futures_ready(log.append(2, Bytes::from_static(b"b"))).is_err());
        assert_eq!(rd(log.read_after(3, limits)), Read::Ahead);
        assert_eq!(
            events(rd(log.read_after(1, limits))).0,
            vec![Bytes::from_static(b"b")]
        );
        futures_ready(log.end(2, StreamEnd::Completed)).unwrap();
        assert_eq!(
            events(rd(log.read_after(2, limits))),
            (vec![], Some(StreamEnd::Completed))
        );
        let (all, end) = events(rd(log.read_after(0, limits)));
        assert_eq!((all.len(), end), (2, Some(StreamEnd::Completed)));
        // A bounded read says there is more, and no end yet.
        let one = ReadLimits {
            max_events: 1,
            max_bytes: 1,
        };
        let Read::Events(batch) = rd(log.read_after(0, one)) else {
            panic!()
        };
        assert!(batch.is_partial() && batch.end.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_appended_as_its_entries_one_by_one_would_be() {
        let store = MemoryStore::builder().max_stream_events(3).build();
        let log = log(&store, Tenant::anonymous());
        let mut wake = log.wake_ups();
        let x = |b: &'static [u8]| Bytes::from_static(b);
        // Nothing to wake for when nothing came.
        futures_ready(log.append_all(1, &mut Vec::new())).unwrap();
        assert!(!wake.has_changed().unwrap());
        // A reader waiting is woken once, with the batch's last seq.
        let mut batch = vec![x(b"a"), x(b"bb")];
        futures_ready(log.append_all(1, &mut batch)).unwrap();
        assert!(batch.is_empty(), "the batch is emptied");
        assert_eq!(*wake.borrow_and_update(), 2);
        assert_eq!(store.held_bytes(), LOG_OVERHEAD as u64 + 3);
        // Out of sequence: refused, nothing appended.
        let mut refused = vec![x(b"c")];
        assert!(futures_ready(log.append_all(2, &mut refused)).is_err());
        assert_eq!(refused, vec![x(b"c")], "what was not recorded stays");
        // Past the bound: the oldest trimmed, the newest kept, as one by one.
        let mut batch = vec![x(b"c"), x(b"d"), x(b"e")];
        assert_eq!(log.trim_point(3, 3), 3);
        // A batch that would trim its own first entries says so (past the log's last).
        assert_eq!(log.trim_point(4, 4), 4);
        assert_eq!(log.trim_point(6, 6), 6);
        futures_ready(log.append_all(3, &mut batch)).unwrap();
        let limits = ReadLimits::default();
        assert_eq!(rd(log.read_after(1, limits)), Read::Gone);
        assert_eq!(
            events(rd(log.read_after(2, limits))).0,
            vec![x(b"c"), x(b"d"), x(b"e")]
        );
        assert_eq!(store.held_bytes(), LOG_OVERHEAD as u64 + 3);
        // Then one by one again, after the batch.
        futures_ready(log.append(6, x(b"f"))).unwrap();
        futures_ready(log.end(6, StreamEnd::Completed)).unwrap();
        assert!(futures_ready(log.append_all(7, &mut vec![x(b"g")])).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn trimming_makes_old_positions_gone() {
        let store = MemoryStore::builder().max_stream_events(3).build();
        let log = log(&store, Tenant::anonymous());
        for seq in 1..=5 {
            futures_ready(log.append(seq, Bytes::from_static(b"x"))).unwrap();
        }
        let limits = ReadLimits::default();
        assert_eq!(rd(log.read_after(0, limits)), Read::Gone);
        assert_eq!(rd(log.read_after(1, limits)), Read::Gone);
        assert_eq!(events(rd(log.read_after(2, limits))).0.len(), 3);
        assert_eq!(events(rd(log.read_after(5, limits))).0.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn tenants_ttls_and_limits() {
        let store = MemoryStore::builder()
            .max_streams_per_tenant(1)
            .ended_ttl(Duration::from_secs(10))
            .idle_ttl(Duration::from_secs(60))
            .build();
        let alice = Tenant::from_key("alice");
        let log = log(&store, alice);
        let id = log.id();
        let err = futures_ready(store.create(NewStream::new(StreamId::random().unwrap(), alice)));
        assert_eq!(
            err.err().map(|e| e.kind()),
            Some(StoreErrorKind::TenantLimit)
        );
        assert!(futures_ready(store.open(id, alice)).unwrap().is_some());
        assert!(
            futures_ready(store.open(id, Tenant::from_key("bob")))
                .unwrap()
                .is_none()
        );
        assert!(
            futures_ready(store.open(id, Tenant::anonymous()))
                .unwrap()
                .is_none()
        );
        tokio::time::advance(Duration::from_secs(59)).await;
        futures_ready(log.append(1, Bytes::from_static(b"x"))).unwrap();
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(futures_ready(store.open(id, alice)).unwrap().is_some());
        futures_ready(log.end(1, StreamEnd::Completed)).unwrap();
        // Ended: no longer counted among the tenant's running streams.
        let another = self::log(&store, alice);
        futures_ready(another.end(0, StreamEnd::Cancelled)).unwrap();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(futures_ready(store.open(id, alice)).unwrap().is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(futures_ready(store.open(id, alice)).unwrap().is_none());
        // Idle while running.
        store.inner.cache.invalidate(&id);
        store.run_pending_tasks();
        let log = self::log(&store, alice);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(
            futures_ready(store.open(log.id(), alice))
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn eviction_keeps_the_live_tail() {
        let store = MemoryStore::builder().max_total_bytes(200 * 1024).build();
        let a = log(&store, Tenant::anonymous());
        let big = Bytes::from(vec![b'x'; 100 * 1024]);
        futures_ready(a.append(1, big.clone())).unwrap();
        let b = log(&store, Tenant::from_key("b"));
        futures_ready(b.append(1, big.clone())).unwrap();
        futures_ready(b.append(2, big)).unwrap();
        store.run_pending_tasks();
        assert!(store.weighted_bytes() <= 200 * 1024 + 2 * LOG_OVERHEAD as u64);
        // Whatever was dropped: appends still work and readers at the head go on.
        futures_ready(a.append(2, Bytes::from_static(b"tail"))).unwrap();
        let (tail, _) = events(rd(a.read_after(1, ReadLimits::default())));
        assert_eq!(tail, vec![Bytes::from_static(b"tail")]);
    }

    /// Issue 23, item 4: thousands of running logs, each below the 64 KiB at which the
    /// cache weighs it again, never hold more than `max_total_bytes` between them. Counted
    /// from what the store still serves (every log it opens, read whole), after every
    /// append.
    #[tokio::test(start_paused = true)]
    async fn many_running_logs_stay_within_the_total_bound_exactly() {
        const MAX: u64 = 1024 * 1024;
        let store = MemoryStore::builder().max_total_bytes(MAX).build();
        let tenant = Tenant::anonymous();
        let logs: Vec<_> = (0..1000).map(|_| log(&store, tenant)).collect();
        let event = Bytes::from(vec![b'x'; 4096]);
        let held = |store: &MemoryStore| -> u64 {
            logs.iter()
                .filter_map(|log| futures_ready(store.open(log.id(), tenant)).unwrap())
                .map(|log| {
                    let (events, _) = events(rd(log.read_after(
                        0,
                        ReadLimits {
                            max_events: usize::MAX,
                            max_bytes: usize::MAX,
                        },
                    )));
                    events.iter().map(|e| e.len() as u64).sum::<u64>()
                })
                .sum()
        };
        for seq in 1..=15 {
            for log in &logs {
                futures_ready(log.append(seq, event.clone())).unwrap();
            }
            let served = held(&store);
            assert!(
                served <= MAX,
                "after {seq} events each: {served} bytes served, bound {MAX}"
            );
        }
        // A log written last is kept (the least recently written ones go), and appends to
        // logs that left the store still work (for their attached readers).
        let fresh = log(&store, tenant);
        futures_ready(fresh.append(1, event.clone())).unwrap();
        assert!(
            futures_ready(store.open(fresh.id(), tenant))
                .unwrap()
                .is_some()
        );
        assert!(
            futures_ready(store.open(logs[0].id(), tenant))
                .unwrap()
                .is_none()
        );
        assert!(store.held_bytes() <= MAX);
        futures_ready(logs[0].append(16, event)).unwrap();
    }

    /// Past the bound, only running logs are weighed again: ended logs (weighed at their
    /// end) leave the running table, so that a store full of them costs a new stream no
    /// scan of them. The bound still holds exactly.
    #[tokio::test(start_paused = true)]
    async fn a_full_store_of_ended_logs_weighs_only_the_running_ones() {
        const MAX: u64 = 256 * 1024;
        let store = MemoryStore::builder().max_total_bytes(MAX).build();
        let tenant = Tenant::anonymous();
        let event = Bytes::from(vec![b'x'; 1000]);
        for _ in 0..40 {
            let log = log(&store, tenant);
            for seq in 1..=20 {
                futures_ready(log.append(seq, event.clone())).unwrap();
                assert!(store.held_bytes() <= MAX);
            }
            futures_ready(log.end(20, StreamEnd::Completed)).unwrap();
        }
        // 40 logs of 20 kB each went through a store of 256 KiB: the oldest were evicted.
        store.run_pending_tasks();
        assert!(store.len() < 40);
        assert!(store.inner.lock_running().is_empty());
        let running = log(&store, tenant);
        for seq in 1..=100 {
            futures_ready(running.append(seq, event.clone())).unwrap();
            assert!(store.held_bytes() <= MAX, "after {seq} appends");
            assert_eq!(store.inner.lock_running().len(), 1);
        }
        // The running log is the one written last: kept.
        assert!(
            futures_ready(store.open(running.id(), tenant))
                .unwrap()
                .is_some()
        );
        futures_ready(running.end(100, StreamEnd::Completed)).unwrap();
        assert!(store.inner.lock_running().is_empty());
    }
}
