//! [`ResumeLayer`]: the settings of resumable streams.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use crate::request::TenantKey;
use crate::resume::Resume;
use crate::resume::gap::ResumeGapKind;
use crate::resume::id::StreamId;
use crate::resume::memory::MemoryStore;
use crate::resume::producers::Producers;
use crate::resume::store::{ReadLimits, ResumeStore};
use crate::stream::Shutdown;
use crate::stream::config::KeepAliveConfig;

/// What happens to a stream's upstream while no client is attached to it.
///
/// A reader that goes away never ends the producer by itself: this policy does, and the
/// total timeout of the [`SseLayer`](crate::SseLayer) inside still caps the producer.
///
/// ```
/// use std::time::Duration;
/// use tower_sse::ResumeLayer;
/// use tower_sse::resume::Detach;
///
/// assert_eq!(Detach::default(), Detach::CancelAfter(Duration::from_secs(30)));
/// // Agents that run for minutes: keep every token for a client that comes back later.
/// let layer = ResumeLayer::new().detach(Detach::Finish);
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Detach {
    /// Read the upstream to its end whatever happens (the Vercel `resumable-stream` way):
    /// every token is paid for and kept for a later resume.
    Finish,
    /// Keep the upstream this long with no reader attached, then cancel it (a reader that
    /// comes back in time resets the clock). The default, with 30 seconds.
    CancelAfter(Duration),
    /// Cancel the upstream as soon as no reader is attached (MCP 2026 semantics: a
    /// disconnect is a cancellation). Already-logged events stay resumable until the log
    /// expires. The `SseLayer`'s
    /// [`drain_on_disconnect`](crate::SseLayer), when set, still reads the upstream on for
    /// its final usage (see [`ResumeLayer`'s layer order](ResumeLayer#layer-order)).
    CancelNow,
}

impl Default for Detach {
    fn default() -> Self {
        Self::CancelAfter(Duration::from_secs(30))
    }
}

/// The light record of one client connection to a resumable stream, given to
/// [`ResumeLayer::on_reader_end`] when the connection's body is dropped.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
///
/// use tower_sse::ResumeLayer;
/// use tower_sse::resume::ReaderRecord;
///
/// // Count the events sent again to resuming clients.
/// let replayed = Arc::new(AtomicU64::new(0));
/// let count = replayed.clone();
/// let layer = ResumeLayer::new().on_reader_end(move |record: ReaderRecord| {
///     if record.resumed {
///         count.fetch_add(record.replayed_events, Ordering::Relaxed);
///     }
/// });
/// # let _ = layer;
/// assert_eq!(replayed.load(Ordering::Relaxed), 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReaderRecord {
    /// The stream.
    pub stream: StreamId,
    /// Whether this connection was a resume (`Last-Event-ID`).
    pub resumed: bool,
    /// Events sent on this connection.
    pub events: u64,
    /// Of those, events that were already in the log when the connection attached.
    pub replayed_events: u64,
    /// Keep-alive comments sent on this connection.
    pub keep_alives: u64,
    /// Bytes sent on this connection.
    pub bytes: u64,
    /// Whether the connection saw the stream's end (as opposed to leaving first).
    pub reached_end: bool,
    /// Set when the connection could not go on without a gap: its client got the
    /// `resume_gap` error event and a broken end ([`ResumeGap`](crate::resume::ResumeGap)).
    pub gap: Option<ResumeGapKind>,
}

/// Makes streams resumable: a client that loses its connection comes back with
/// `Last-Event-ID`, gets what it missed and then the live tail, and sees nothing twice.
///
/// # How it works
///
/// For a new stream (a request without `Last-Event-ID` answered `200 text/event-stream`),
/// a spawned **producer** task owns the response body: it is the one that polls the
/// [`SseLayer`](crate::SseLayer)'s body, so observers run and the report is made exactly
/// once per stream, whatever the clients do. It re-cuts the body's output into events,
/// drops comment-only frames (keep-alives are per reader), stamps each event with the id
/// `<stream-id>.<seq>` and appends it to the stream's log in the [store](Self::store). The
/// client's response body is a **reader** that follows the log by cursor; its id is also in
/// the `sse-stream-id` response header, for fetch-based clients (resume with
/// `Last-Event-ID: <stream-id>.0` to get everything).
///
/// A request carrying `Last-Event-ID` (the header, or `?last_event_id=` for a page reload,
/// whose new `EventSource` sends no header) is a **resume** and is never forwarded: valid and
/// of the same tenant, it is answered `200` with the events after that id, then the live
/// tail, ending as the original ends. Anything else is answered `204 No Content`, which makes
/// a browser's `EventSource` stop for good; never a `5xx`:
///
/// | resume request | answer |
/// |---|---|
/// | valid, same tenant, events after the id (or the stream still running) | `200`, replay then tail |
/// | unknown, expired, another tenant's, malformed, longer than 128 bytes | `204` |
/// | trimmed (the next event is no longer kept) | `204`, `sse-resume: gone` |
/// | at the end of a finished stream (nothing left to send) | `204` |
/// | the store failed | `204` |
///
/// # Layer order
///
/// Outside the `SseLayer` (it reads that layer's output), and outside the
/// [`StreamLimitLayer`](crate::StreamLimitLayer) so that the producer, not the client's
/// connection, holds the stream's permit, and resumes take none:
///
/// ```text
/// ResumeLayer ─► StreamLimitLayer ─► RequestDigestLayer ─► IncludeUsageLayer ─► SseLayer ─► upstream
/// ```
///
/// Put [`ResumeObserver`](crate::resume::ResumeObserver) among the `SseLayer`'s observers
/// to get resumes, replayed events and time detached into the stream's report.
///
/// A client disconnect no longer drops the `SseLayer`'s body (the producer owns it): the
/// [detach policy](Self::detach) decides when the stream is let go. When it cancels (after
/// its grace, or at once with [`Detach::CancelNow`]), the producer drops the `SseLayer`'s
/// body as a client's connection would, so the `SseLayer`'s own disconnect policy applies:
/// with [`SseLayer::drain_on_disconnect`](crate::SseLayer) the upstream is read on, in a
/// spawned task for up to the drain's limit, so that its final usage is reported (the stream
/// keeps its permit meanwhile); without it the upstream is cancelled at once. Either way a
/// cancelled stream is reported as
/// [`Outcome::ClientDisconnected`](crate::Outcome::ClientDisconnected). For "a disconnect is
/// a cancellation" (MCP), use `Detach::CancelNow` without a drain. A failure of the store
/// while the stream runs ends the stream's log (its readers' connections fail, a resume is
/// answered from what was logged) and cancels the upstream the same way; that stream is
/// reported as [`Outcome::StoreFailed`](crate::Outcome::StoreFailed), and one with an event
/// past [`max_event_size`](Self::max_event_size) as
/// [`Outcome::EventTooLarge`](crate::Outcome::EventTooLarge), when
/// [`ResumeObserver`](crate::resume::ResumeObserver) is the first of the `SseLayer`'s
/// observers.
///
/// Keep-alives: give the reader its own ([`keep_alive`](Self::keep_alive)); the
/// `SseLayer`'s are dropped by the producer (it may keep its own to restart its idle
/// clocks, they never reach a client).
///
/// # Runtime
///
/// The producer is spawned on the Tokio runtime that serves the request; without one the
/// stream is served as the plain layer would (not resumable).
///
/// ```
/// use std::time::Duration;
/// use tower::ServiceBuilder;
/// use tower_sse::resume::{Detach, ResumeObserver};
/// use tower_sse::{KeepAliveConfig, ResumeLayer, SseLayer, StreamLimitLayer, UsageObserver};
///
/// let stack = ServiceBuilder::new()
///     .layer(
///         ResumeLayer::new()
///             .detach(Detach::CancelAfter(Duration::from_secs(30)))
///             .keep_alive(KeepAliveConfig::new().interval(Duration::from_secs(15))),
///     )
///     .layer(StreamLimitLayer::new(512))
///     .layer(SseLayer::new().observer((ResumeObserver::new(), UsageObserver::new())));
/// # let _ = stack;
/// ```
#[derive(Clone)]
#[must_use]
pub struct ResumeLayer {
    config: Arc<Config>,
}

/// The settings, shared by every request.
pub(crate) struct Config {
    pub(crate) enabled: bool,
    pub(crate) store: Arc<dyn ResumeStore>,
    pub(crate) tenant_key: TenantKey,
    pub(crate) detach: Detach,
    pub(crate) keep_alive: Option<KeepAliveConfig>,
    pub(crate) read_limits: ReadLimits,
    pub(crate) max_event_size: usize,
    pub(crate) slow_reader_hold: Duration,
    pub(crate) on_reader_end: Option<Arc<dyn Fn(ReaderRecord) + Send + Sync>>,
    /// The producers running in this process, by stream (for their counters).
    pub(crate) producers: Arc<Producers>,
    /// The streams produced in another process that clients of this one read (shared
    /// stores): their presence is kept in the store while they have readers here.
    pub(crate) followers: Arc<Producers>,
    /// Ends the readers of streams produced elsewhere, on shutdown.
    pub(crate) shutdown: Option<Shutdown>,
    /// The readers open now (every connection to a resumable stream this process serves).
    pub(crate) open_readers: OpenReaders,
    /// Opens a span per resumed connection ([`ResumeLayer::spans`]).
    #[cfg(feature = "otel")]
    pub(crate) spans: Option<crate::span::reader::ReaderSpans>,
}

impl Clone for Config {
    fn clone(&self) -> Self {
        Self {
            enabled: self.enabled,
            store: self.store.clone(),
            tenant_key: self.tenant_key.clone(),
            detach: self.detach,
            keep_alive: self.keep_alive.clone(),
            read_limits: self.read_limits,
            max_event_size: self.max_event_size,
            slow_reader_hold: self.slow_reader_hold,
            on_reader_end: self.on_reader_end.clone(),
            producers: self.producers.clone(),
            followers: self.followers.clone(),
            shutdown: self.shutdown.clone(),
            open_readers: self.open_readers.clone(),
            #[cfg(feature = "otel")]
            spans: self.spans.clone(),
        }
    }
}

/// The number of client connections to resumable streams open now
/// ([`ResumeLayer::open_readers`]).
#[derive(Clone, Default)]
pub struct OpenReaders(pub(crate) Arc<std::sync::atomic::AtomicUsize>);

impl OpenReaders {
    /// Readers open now.
    pub fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl fmt::Debug for OpenReaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("OpenReaders").field(&self.get()).finish()
    }
}

/// Default [`ResumeLayer::slow_reader_hold`].
const DEFAULT_SLOW_READER_HOLD: Duration = Duration::from_secs(30);

impl ResumeLayer {
    /// Resumable streams with an in-process [`MemoryStore`] and the defaults.
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config {
                enabled: true,
                store: Arc::new(MemoryStore::new()),
                tenant_key: TenantKey::credentials(),
                detach: Detach::default(),
                keep_alive: None,
                read_limits: ReadLimits::default(),
                max_event_size: 8 * 1024 * 1024,
                slow_reader_hold: DEFAULT_SLOW_READER_HOLD,
                on_reader_end: None,
                producers: Arc::default(),
                followers: Arc::default(),
                shutdown: None,
                open_readers: OpenReaders::default(),
                #[cfg(feature = "otel")]
                spans: None,
            }),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// Turn resumption on (the default) or off. Off, every request and response passes
    /// through untouched, so that one stack type serves both (a command-line switch).
    pub fn enabled(self, enabled: bool) -> Self {
        self.with(|c| c.enabled = enabled)
    }

    /// Where the logs live. Default: a [`MemoryStore`] with its defaults (give the store
    /// a clone of yours to share it between layers, or to look at it).
    pub fn store(self, store: impl ResumeStore) -> Self {
        self.with(|c| c.store = Arc::new(store))
    }

    /// How a request's tenant is found: a stream is resumed only by the tenant that made
    /// it. Default: [`TenantKey::credentials`] (a hash of the request's credential: bearer token, `x-api-key`,
    /// `x-goog-api-key`, `?key=` or `api-key`), as the
    /// `DigestRegistry`'s (feature `registry`); give both the same key.
    pub fn tenant_key(self, key: TenantKey) -> Self {
        self.with(|c| c.tenant_key = key)
    }

    /// What happens to the upstream while no client is attached. Default:
    /// [`Detach::CancelAfter`] 30 seconds.
    pub fn detach(self, detach: Detach) -> Self {
        self.with(|c| c.detach = detach)
    }

    /// Keep-alive comments per client connection (never logged, never replayed). Off by
    /// default. Each keep-alive also makes the reader read the log again: a safety poll for
    /// stores whose wake-ups can be lost.
    pub fn keep_alive(self, keep_alive: KeepAliveConfig) -> Self {
        self.with(|c| c.keep_alive = Some(keep_alive))
    }

    /// How much a reader takes from the log at once: replay goes out as many frames,
    /// one per event, read at most this many events and bytes at a time. Default: 256
    /// events, 64 KiB.
    pub fn read_limits(self, limits: ReadLimits) -> Self {
        self.with(|c| c.read_limits = limits)
    }

    /// The largest event the producer re-cuts, in bytes (the `SseLayer`'s own limit
    /// already bounds what it sends). A larger one ends the log. Default: 8 MiB.
    pub fn max_event_size(self, limit: usize) -> Self {
        self.with(|c| c.max_event_size = limit)
    }

    /// How long the producer may wait for a slow reader. When the next append would trim
    /// (by the store's bounds) an entry that a reader attached in this process has not read
    /// yet, the producer holds back, and so stops reading the upstream: the same
    /// backpressure a plain stream gets from TCP. A reader that reads nothing on for this
    /// long is let go: it meets the trimmed positions as a gap, gets the `resume_gap` error
    /// event and a broken end ([`ResumeGap`](crate::resume::ResumeGap)), never a clean one.
    /// Readers that keep up cost nothing (one comparison per append). `Duration::ZERO` never
    /// holds back. Default: 30 seconds.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_sse::ResumeLayer;
    ///
    /// let layer = ResumeLayer::new().slow_reader_hold(Duration::from_secs(10));
    /// # let _ = layer;
    /// ```
    pub fn slow_reader_hold(self, bound: Duration) -> Self {
        self.with(|c| c.slow_reader_hold = bound)
    }

    /// End the readers this process serves when `shutdown` ends the streams: each sends what
    /// it has read, then the error event (`server_shutdown`) and ends, so that its client
    /// resumes on another replica. Give the same handle to the [`SseLayer`](crate::SseLayer)
    /// inside: a stream produced here ends through its log (its readers get its
    /// `server_shutdown` event, logged); the handle ends the readers of streams produced in
    /// another process (a shared store) or already ended, which hold no stream permit. Wait
    /// for [`open_readers`](Self::open_readers) as well as for the permits before exiting.
    ///
    /// ```
    /// use tower_sse::stream::Shutdown;
    /// use tower_sse::{ResumeLayer, SseLayer};
    ///
    /// let shutdown = Shutdown::new();
    /// let resume = ResumeLayer::new().shutdown(shutdown.clone());
    /// let sse = SseLayer::new().shutdown(shutdown.clone());
    /// let readers = resume.open_readers();
    /// assert_eq!(readers.get(), 0);
    /// # let _ = sse;
    /// ```
    pub fn shutdown(self, shutdown: Shutdown) -> Self {
        self.with(|c| c.shutdown = Some(shutdown))
    }

    /// A handle on the number of client connections to resumable streams open now, in every
    /// service of this layer and its clones (a graceful shutdown waits for it to reach 0).
    pub fn open_readers(&self) -> OpenReaders {
        self.config.open_readers.clone()
    }

    /// Called with each client connection's [`ReaderRecord`] when its body is dropped
    /// (inline: it must not block).
    pub fn on_reader_end<F>(self, f: F) -> Self
    where
        F: Fn(ReaderRecord) + Send + Sync + 'static,
    {
        self.with(|c| c.on_reader_end = Some(Arc::new(f)))
    }

    /// One short OpenTelemetry span per resumed connection (feature `otel`), with the
    /// tracer of `spans`, the [`SpanLayer`](crate::span::SpanLayer) **inside** this layer
    /// (just outside the `SseLayer`), whose span of the stream (the producer's: the one
    /// upstream call) each reader span is linked to.
    ///
    /// A resume is answered from the log and never reaches the `SpanLayer`: this layer
    /// opens its span (kind `INTERNAL`, named `resume`, parented to the caller's trace) when
    /// the request enters, and ends it once, when the connection ends, with the stream's
    /// id, the seq it resumed after, the events it sent and replayed, its keep-alives and
    /// bytes, and how it ended (`tower_sse.resume.reader_end`; a gap is an error). A resume
    /// answered `204` ends its span at once, with the status. The link is added wherever
    /// and whenever the resume is served: the stream's log keeps the `traceparent` of the
    /// producer's span ([`StreamLog::trace_parent`](crate::resume::StreamLog::trace_parent);
    /// the `MemoryStore` in memory, the `RedisStore` in the stream's `meta` hash), so a
    /// resume after the producer ended, or on another replica, links to it too. (A store
    /// that keeps none links only resumes served while the producer runs in this process.)
    /// The names are in [`span::names`](crate::span::names).
    ///
    /// ```
    /// use tower::ServiceBuilder;
    /// use tower_sse::resume::ResumeObserver;
    /// use tower_sse::span::SpanLayer;
    /// use tower_sse::{ResumeLayer, SseLayer};
    ///
    /// let spans = SpanLayer::new();
    /// let stack = ServiceBuilder::new()
    ///     .layer(ResumeLayer::new().spans(&spans))
    ///     .layer(spans.clone())
    ///     .layer(SseLayer::new().observer((ResumeObserver::new(), spans.observer())));
    /// # let _ = stack;
    /// ```
    #[cfg(feature = "otel")]
    pub fn spans(self, spans: &crate::span::SpanLayer) -> Self {
        let spans = spans.reader_spans();
        self.with(|c| c.spans = Some(spans))
    }
}

impl Default for ResumeLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ResumeLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResumeLayer")
            .field("enabled", &self.config.enabled)
            .field("tenant_key", &self.config.tenant_key)
            .field("detach", &self.config.detach)
            .field("keep_alive", &self.config.keep_alive)
            .field("read_limits", &self.config.read_limits)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for ResumeLayer {
    type Service = Resume<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Resume::new(inner, self.config.clone())
    }
}
