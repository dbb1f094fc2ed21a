//! The store traits: where the logs of resumable streams live. [`MemoryStore`] (moka, in
//! process) is the default; a shared store (Redis) implements the same two traits.
//!
//! [`MemoryStore`]: crate::resume::MemoryStore

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use crate::BoxFuture;
use crate::request::Tenant;
use crate::resume::id::StreamId;

/// A store of stream logs, shared by every request of a [`ResumeLayer`].
///
/// The layer calls [`create`](Self::create) once per new stream, before its first event,
/// and [`open`](Self::open) for every resume request. Both may do I/O and may fail: a
/// failed `create` serves the stream as the plain layer would (no ids, not resumable), a
/// failed `open` answers the resume `204 No Content`. Neither ever makes a `5xx`.
///
/// # What a shared store must guarantee
///
/// - **Tenants.** `open` finds a log only for the tenant that created it; for any other
///   tenant it answers `Ok(None)`, exactly as for an unknown id.
/// - **One writer, explicit sequence numbers.** Only the producer appends, with `seq`
///   1, 2, 3… ([`StreamLog::append`]). A store can use them as explicit ids (Redis
///   `XADD key 0-<seq>`), which makes appends idempotent and fences a stale writer.
/// - **The log is the truth; wake-ups are hints.** [`StreamLog::wake_ups`] must change at
///   least once after every append and after the end; a reader marks it seen *before*
///   reading, so a lost or coalesced wake-up only delays it. (Redis: pub/sub or `XREAD
///   BLOCK` fanned out into a local `watch`, plus a periodic safety poll.) A store may skip
///   the wake-up of an append no receiver can be waiting for (none subscribed or read since
///   the last wake-up), as [`MemoryStore`](crate::resume::MemoryStore) does.
/// - **Trimming is explicit.** A read from a position that was trimmed, expired or evicted
///   answers [`Read::Gone`], never the oldest entry still kept (that would hide a gap).
/// - **Producer death.** In process, a producer that dies still writes its end (a drop
///   guard). A shared store should keep a lease in the log that `create` returns (renewed
///   by its appends and by a heartbeat while the stream is silent: liveness is not inferred
///   from events) and answer a read of a log whose lease expired with no end entry with
///   [`StreamEnd::Failed`] as its end, so that readers on other replicas finish too.
/// - **Never block the live stream for long.** Appends sit on the producer's path: a remote
///   store should queue them (one writer task per process, pipelined) and answer at once,
///   reporting a failure on a later append. A failed append ends the log.
///
/// Readers configured with keep-alives read the log again on every keep-alive, so a store
/// whose wake-ups can be lost delays a reader by one keep-alive interval at most.
///
/// [`ResumeLayer`]: crate::ResumeLayer
pub trait ResumeStore: Send + Sync + 'static {
    /// Start the log of a new stream, owned by `stream.tenant`.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot take it (unavailable, or the tenant has too
    /// many streams): the stream is then served without resumption.
    fn create(&self, stream: NewStream) -> BoxFuture<'_, Result<Arc<dyn StreamLog>, StoreError>>;

    /// The log of stream `id`, if it exists, has not expired and belongs to `tenant`.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot answer (the resume is then answered `204`).
    fn open(
        &self,
        id: StreamId,
        tenant: Tenant,
    ) -> BoxFuture<'_, Result<Option<Arc<dyn StreamLog>>, StoreError>>;
}

/// The log of one stream: appended by its producer, read by cursor by its readers.
pub trait StreamLog: Send + Sync + 'static {
    /// The stream this log is of.
    fn id(&self) -> StreamId;

    /// Append event `seq` (the previous append was `seq - 1`, the first is 1): its whole
    /// wire form, `id:` line included. Bounds may trim older entries (they become
    /// [`Read::Gone`]); that is not an error.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the entry could not be recorded; the producer then ends the
    /// stream's log.
    fn append(&self, seq: u64, event: Bytes) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The terminal entry: no event follows `last_seq`, and the stream ended as `end` says.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when it could not be recorded.
    fn end(&self, last_seq: u64, end: StreamEnd) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The entries after `cursor` (the seq the reader has; 0 for none), at most
    /// `limits.max_events` and about `limits.max_bytes` (always at least one when there is
    /// one).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot answer.
    fn read_after(
        &self,
        cursor: u64,
        limits: ReadLimits,
    ) -> BoxFuture<'_, Result<Read, StoreError>>;

    /// Wake-ups: the value changes (at least) after every append and at the end. Its value
    /// is a hint (the last seq known); only [`read_after`](Self::read_after) is the truth.
    ///
    /// A receiver waits only after it subscribed or read the log: a store may leave out the
    /// change for an append that follows neither (no one can be waiting for it), so a
    /// receiver that waits again without reading in between may not see every append.
    fn wake_ups(&self) -> watch::Receiver<u64>;

    /// [`read_after`](Self::read_after) answered at once, when the store can answer without
    /// waiting (an in-process log); `None` (the default) when it cannot, and the reader then
    /// awaits `read_after`.
    ///
    /// The entries go into `buffer` (cleared first) and come back as the batch's `events`, so
    /// that a reader reuses one buffer and a live event costs it no allocation.
    fn read_now(
        &self,
        cursor: u64,
        limits: ReadLimits,
        buffer: &mut Vec<Bytes>,
    ) -> Option<Result<Read, StoreError>> {
        let _ = (cursor, limits, buffer);
        None
    }

    /// The seq of the oldest entry the log would keep if one more entry of `len` bytes were
    /// appended now (its own bounds trimming older ones); `0` when that append would trim
    /// nothing, or when it cannot say (the default) or never trims. The common case, a log
    /// within its bounds, answers `0` so that the producer asks its readers nothing.
    ///
    /// The producer asks before each append: while an attached reader has not read an entry
    /// that would be trimmed, it holds back (and so holds back the upstream), for at most
    /// [`ResumeLayer::slow_reader_hold`](crate::ResumeLayer::slow_reader_hold).
    fn trim_point(&self, len: usize) -> u64 {
        let _ = len;
        0
    }

    /// Whether readers of this log are shared across processes, and how often: `Some(every)`
    /// when a process whose clients read this log must say so with
    /// [`keep_present`](Self::keep_present) at least this often, and the producer learns of
    /// them with [`elsewhere`](Self::elsewhere). `None` (the default): every reader is in
    /// the producer's process (an in-process store), which sees them itself.
    fn presence(&self) -> Option<std::time::Duration> {
        None
    }

    /// Readers of this log are attached in this process (another than the producer's): keep
    /// them counted as attached for about three [`presence`](Self::presence) intervals, and
    /// record `counts`, what this process's readers did in `session` so far, as that
    /// session's totals (`None`: unchanged since the last call the store took). The
    /// stream's counts are the sum over its sessions.
    ///
    /// Totals, not increments: a call that timed out after the store took it is sent again,
    /// and must not count its connections twice. `session` is unique per run of readers in
    /// one process (a process whose readers all left and come back starts a new one).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot take it (the reader goes on; the producer may
    /// then not see it).
    fn keep_present(
        &self,
        session: u64,
        counts: Option<ReaderCounts>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let _ = (session, counts);
        Box::pin(std::future::ready(Ok(())))
    }

    /// Asked by the producer while no reader is attached in its process: whether one is
    /// attached in another (it keeps the upstream alive), and what readers in other processes
    /// did so far (for the stream's report).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot answer: the producer then keeps its upstream as
    /// if a reader were attached elsewhere (it never cuts a reader it cannot see), and asks
    /// again an interval later.
    fn elsewhere(&self) -> BoxFuture<'_, Result<(bool, ReaderCounts), StoreError>> {
        Box::pin(std::future::ready(Ok((false, ReaderCounts::default()))))
    }

    /// Changes when a reader attaches to this log in another process (a shared store tells
    /// the producer's process as soon as it knows): the producer then asks
    /// [`elsewhere`](Self::elsewhere) at once, so that the stream's report counts every
    /// connection and resume made before its end, wherever it was served, not only those
    /// seen at the producer's last look. `None` (the default): the store gives no such
    /// signal (an in-process store, whose readers the producer sees itself).
    fn readers_elsewhere(&self) -> Option<watch::Receiver<u64>> {
        None
    }
}

/// What the readers of a stream did: connections, resumes among them, events replayed.
///
/// ```
/// use tower_sse::resume::ReaderCounts;
///
/// let counts = ReaderCounts { connections: 2, resumes: 1, replayed_events: 7 };
/// assert_eq!(counts - ReaderCounts { connections: 1, ..counts }, ReaderCounts { connections: 1, resumes: 0, replayed_events: 0 });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReaderCounts {
    /// Client connections (the first one and every resume).
    pub connections: u64,
    /// Of those, resumes (`Last-Event-ID`).
    pub resumes: u64,
    /// Events sent again to resuming clients.
    pub replayed_events: u64,
}

impl ReaderCounts {
    /// Whether all are zero.
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

impl std::ops::Sub for ReaderCounts {
    type Output = Self;

    /// What `self` has beyond `earlier` (saturating).
    fn sub(self, earlier: Self) -> Self {
        Self {
            connections: self.connections.saturating_sub(earlier.connections),
            resumes: self.resumes.saturating_sub(earlier.resumes),
            replayed_events: self.replayed_events.saturating_sub(earlier.replayed_events),
        }
    }
}

/// What [`ResumeStore::create`] is told about a new stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewStream {
    /// Its id.
    pub id: StreamId,
    /// Who made it: only this tenant may resume it.
    pub tenant: Tenant,
}

impl NewStream {
    /// A new stream of this tenant.
    pub fn new(id: StreamId, tenant: Tenant) -> Self {
        Self { id, tenant }
    }
}

/// How much one read returns at most: replay goes out in bounded pieces, never as one
/// write of the whole log.
///
/// ```
/// use tower_sse::ResumeLayer;
/// use tower_sse::resume::ReadLimits;
///
/// let limits = ReadLimits { max_events: 64, ..ReadLimits::default() };
/// assert_eq!(limits.max_bytes, 64 * 1024);
/// let layer = ResumeLayer::new().read_limits(limits);
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// At most this many events.
    pub max_events: usize,
    /// Stop adding events once this many bytes are in (one event may exceed it).
    pub max_bytes: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self {
            max_events: 256,
            max_bytes: 64 * 1024,
        }
    }
}

/// How a stream ended: the terminal entry of its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StreamEnd {
    /// The stream ended cleanly (its last event, an error event included, is in the log).
    Completed,
    /// The stream's body failed (readers fail their connection too, as the original did).
    Failed,
    /// No reader was attached and the detach policy cancelled the upstream, or the server
    /// stopped the producer.
    Cancelled,
}

impl StreamEnd {
    /// A short snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The answer to [`StreamLog::read_after`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Read {
    /// The entries after the cursor (possibly none yet).
    Events(Batch),
    /// The entry after the cursor is no longer kept (trimmed, expired, evicted).
    Gone,
    /// The cursor is beyond the last entry: not a position this stream ever gave out.
    Ahead,
}

/// Entries read from a log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Batch {
    /// The entries, in order, each the whole wire form of one event.
    pub events: Vec<Bytes>,
    /// The seq of the last entry in `events` (the cursor when `events` is empty).
    pub last_seq: u64,
    /// The last seq in the log when it was read.
    pub head: u64,
    /// Set when the log ended and `events` reaches its last entry: nothing follows.
    pub end: Option<StreamEnd>,
}

impl Batch {
    /// A batch of `events` following `cursor`, in a log whose last seq is `head`.
    pub fn new(cursor: u64, events: Vec<Bytes>, head: u64, end: Option<StreamEnd>) -> Self {
        let last_seq = cursor + events.len() as u64;
        Self {
            events,
            last_seq,
            head,
            end: end.filter(|_| last_seq >= head),
        }
    }

    /// Whether more entries were already there than this batch holds.
    pub fn is_partial(&self) -> bool {
        self.last_seq < self.head
    }
}

/// Why a store could not do what was asked.
///
/// ```
/// use tower_sse::resume::{StoreError, StoreErrorKind};
///
/// let error = StoreError::unavailable("connection refused");
/// assert_eq!(error.kind(), StoreErrorKind::Unavailable);
/// assert_eq!(error.to_string(), "the resume store is unavailable: connection refused");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: Option<Arc<str>>,
}

/// The kinds of [`StoreError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The store cannot be reached or failed.
    Unavailable,
    /// The tenant already has as many streams as the store allows.
    TenantLimit,
}

impl StoreError {
    /// An error of this kind.
    pub fn new(kind: StoreErrorKind) -> Self {
        Self {
            kind,
            message: None,
        }
    }

    /// An unavailable store, with a description (never a payload or a credential).
    pub fn unavailable(message: impl Into<Arc<str>>) -> Self {
        Self {
            kind: StoreErrorKind::Unavailable,
            message: Some(message.into()),
        }
    }

    /// Its kind.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            StoreErrorKind::Unavailable => f.write_str("the resume store is unavailable")?,
            StoreErrorKind::TenantLimit => {
                f.write_str("the tenant has too many resumable streams")?
            }
        }
        if let Some(message) = &self.message {
            write!(f, ": {message}")?;
        }
        Ok(())
    }
}

impl std::error::Error for StoreError {}
