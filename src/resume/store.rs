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

    /// Append events `first_seq`, `first_seq + 1`, … in order, as [`append`](Self::append)
    /// would each; `events` is left empty (its allocation kept, for the next batch).
    ///
    /// The producer hands over what its upstream had ready at once (a burst of frames read
    /// without waiting), so that a store pays its per-append costs (a lock, a clock read, a
    /// wake-up of the readers) once per batch. The default appends them one by one.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when an entry could not be recorded; `events` then keeps the entries
    /// not recorded, the one that failed first (those before it were recorded). The producer
    /// then ends the stream's log after the last recorded entry.
    fn append_all<'a>(
        &'a self,
        first_seq: u64,
        events: &'a mut Vec<Bytes>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut recorded = 0;
            let mut result = Ok(());
            for (seq, event) in (first_seq..).zip(events.iter()) {
                if let Err(error) = self.append(seq, event.clone()).await {
                    result = Err(error);
                    break;
                }
                recorded += 1;
            }
            events.drain(..recorded);
            result
        })
    }

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

    /// The seq of the oldest entry the log would keep if `events` more entries of `bytes` in
    /// all were appended now (its own bounds trimming older ones); `0` when those appends
    /// would trim nothing, or when it cannot say (the default) or never trims. When they
    /// would trim some of the new entries themselves, a seq past the log's last entry (the
    /// first new entry kept, or a lower bound of it). The common case, a log within its
    /// bounds, answers `0` so that the producer asks its readers nothing.
    ///
    /// The producer asks before each [`append_all`](Self::append_all): while an attached
    /// reader has not read an entry that would be trimmed, it holds back (and so holds back
    /// the upstream), for at most
    /// [`ResumeLayer::slow_reader_hold`](crate::ResumeLayer::slow_reader_hold).
    fn trim_point(&self, events: usize, bytes: usize) -> u64 {
        let _ = (events, bytes);
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

    /// The trace context of the span of the stream's producer, as [`NewStream::trace_parent`]
    /// gave it when the log was created: the span of each resumed connection links to it
    /// (feature `otel`, `ResumeLayer::spans`). A shared store keeps it with the log so that a
    /// resume served by another process, or after the producer ended, links too. `None` (the
    /// default): the store does not keep it, and only resumes served while the producer runs
    /// in this process are linked.
    fn trace_parent(&self) -> Option<TraceParent> {
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
    /// The trace context of the span of the stream's producer (the one upstream call), when
    /// it has one (`ResumeLayer::spans`): a store keeps it with the log and gives it back with
    /// [`StreamLog::trace_parent`], so that the span of every resumed connection links to the
    /// producer's span, wherever and whenever the resume is served.
    pub trace_parent: Option<TraceParent>,
}

impl NewStream {
    /// A new stream of this tenant.
    pub fn new(id: StreamId, tenant: Tenant) -> Self {
        Self {
            id,
            tenant,
            trace_parent: None,
        }
    }

    /// With the trace context of its producer's span (`None`: it has none).
    ///
    /// ```
    /// use tower_sse::request::Tenant;
    /// use tower_sse::resume::{NewStream, StreamId, TraceParent};
    ///
    /// let producer = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    /// let stream = NewStream::new(StreamId::random().unwrap(), Tenant::anonymous())
    ///     .with_trace_parent(producer);
    /// assert_eq!(stream.trace_parent, producer);
    /// ```
    #[must_use]
    pub fn with_trace_parent(mut self, trace_parent: Option<TraceParent>) -> Self {
        self.trace_parent = trace_parent;
        self
    }
}

/// The W3C trace context of a span (its `traceparent`: trace id, span id, flags), as a
/// stream's log keeps the context of its producer's span ([`NewStream::trace_parent`],
/// [`StreamLog::trace_parent`]).
///
/// Plain data, without the OpenTelemetry types (the `resume` module does not need the `otel`
/// feature): 25 bytes, `Copy`. Its text is the W3C `traceparent` form, version `00`, which
/// a shared store writes with the log (Redis: one field of the stream's `meta` hash) and
/// reads back with [`parse`](Self::parse). The `tracestate` is not kept: vendor data of up
/// to 512 characters per stream, which a link does not need to find the span.
///
/// ```
/// use tower_sse::resume::TraceParent;
///
/// let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// let parent = TraceParent::parse(text).unwrap();
/// assert_eq!(parent.span_id(), [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
/// assert!(parent.is_sampled());
/// assert_eq!(parent.to_string(), text);
/// // All-zero ids are not a span.
/// assert_eq!(TraceParent::new([0; 16], [1; 8], 1), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

impl TraceParent {
    /// The context of span `span_id` in trace `trace_id`, with the W3C trace flags `flags`
    /// (bit 0: sampled); `None` when either id is all zeros (not a valid span, by the W3C
    /// rules).
    pub fn new(trace_id: [u8; 16], span_id: [u8; 8], flags: u8) -> Option<Self> {
        (trace_id != [0; 16] && span_id != [0; 8]).then_some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// From its `traceparent` text, version `00`: `00-<32 hex>-<16 hex>-<2 hex>` (hex of
    /// either case), exactly 55 characters; `None` for anything else (another version, a
    /// wrong length, a non-hex digit, all-zero ids).
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 55 || !text.starts_with("00-") || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let trace_id = crate::digits::hex_bytes::<16>(text.get(3..35)?)?;
        let span_id = crate::digits::hex_bytes::<8>(text.get(36..52)?)?;
        let [flags] = crate::digits::hex_bytes::<1>(text.get(53..55)?)?;
        Self::new(trace_id, span_id, flags)
    }

    /// The trace's id.
    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The span's id.
    pub fn span_id(&self) -> [u8; 8] {
        self.span_id
    }

    /// The W3C trace flags.
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the span was sampled (flag bit 0).
    pub fn is_sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// The `traceparent` text, version `00`, lower-case hex.
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (mut trace, mut span, mut flags) = ([0u8; 32], [0u8; 16], [0u8; 2]);
        write!(
            f,
            "00-{}-{}-{}",
            crate::digits::hex(&self.trace_id, &mut trace),
            crate::digits::hex(&self.span_id, &mut span),
            crate::digits::hex(&[self.flags], &mut flags),
        )
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

#[cfg(test)]
mod tests {
    use super::TraceParent;

    const TEXT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_trace_parent_round_trips_through_its_text() {
        let parent = TraceParent::parse(TEXT).unwrap();
        assert_eq!(parent.to_string(), TEXT);
        assert_eq!(parent.trace_id()[0], 0x4b);
        assert_eq!(parent.flags(), 1);
        let unsampled = TraceParent::new(parent.trace_id(), parent.span_id(), 0).unwrap();
        assert!(!unsampled.is_sampled());
        assert_eq!(TraceParent::parse(&unsampled.to_string()), Some(unsampled));
    }

    #[test]
    fn anything_but_a_version_00_traceparent_is_refused_without_panicking() {
        let zero_trace = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        let zero_span = "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01";
        // 55 bytes, with a two-byte character across the span id's start.
        let multibyte = "00-4bf92f3577b34da6a3ce929d0e0e4736é0f067aa0ba902b7-01";
        assert_eq!(multibyte.len(), 55);
        for text in [
            "",
            "00",
            zero_trace,
            zero_span,
            multibyte,
            &TEXT.replacen("00-", "01-", 1),
            &TEXT.replacen("00-", "ff-", 1),
            &format!("{TEXT}-"),
            &TEXT[..54],
            &TEXT.replace('-', "_"),
            &TEXT.replacen('4', "g", 1),
            &TEXT.replacen("-01", "-0x", 1),
        ] {
            assert_eq!(TraceParent::parse(text), None, "{text}");
        }
        // Every cut of a valid one, and every byte replaced by a non-ASCII one.
        for at in 0..TEXT.len() {
            assert_eq!(TraceParent::parse(&TEXT[..at]), None);
            let mut bytes = TEXT.as_bytes().to_vec();
            bytes[at] = 0xff;
            let lossy = String::from_utf8_lossy(&bytes);
            assert_eq!(TraceParent::parse(&lossy), None);
        }
    }
}
