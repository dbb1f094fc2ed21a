//! The end-of-stream report, how a stream ended, and where the report goes.

use std::fmt;
use std::time::Duration;

use http::{Extensions, StatusCode};
use tokio::time::Instant;

use crate::observe::digest::Digest;
use crate::observe::timing::Timing;
use crate::observe::usage::Usage;
use crate::provider::Provider;

/// How a stream ended. Exactly one outcome per stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The upstream ended normally and the client received everything.
    Completed,
    /// The upstream body failed (or, in early-response mode, the upstream call failed or
    /// answered with something that is not a stream).
    UpstreamError,
    /// The client went away (the body was dropped) before the stream ended.
    ClientDisconnected,
    /// No event arrived within the first-event timeout.
    FirstEventTimeout,
    /// No complete upstream event (or comment) for longer than the idle timeout: the
    /// upstream went silent, or one event took that long to arrive in full.
    IdleTimeout,
    /// The stream ran past its total timeout.
    DeadlineExceeded,
    /// One upstream event was larger than `max_event_size`.
    EventTooLarge,
    /// The upstream ended in the middle of an event.
    UpstreamTruncated,
}

impl Outcome {
    /// Whether the stream completed.
    pub fn is_success(self) -> bool {
        self == Self::Completed
    }

    /// A short, stable, snake_case name: the `type` of the error event, and the value of
    /// the `error.type` metric attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::UpstreamError => "upstream_error",
            Self::ClientDisconnected => "client_disconnected",
            Self::FirstEventTimeout => "first_event_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::EventTooLarge => "event_too_large",
            Self::UpstreamTruncated => "upstream_truncated",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// How the upstream framed its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Framing {
    /// `text/event-stream`, decoded and forwarded as it came.
    Sse,
    /// One JSON value per line (NDJSON), reframed into SSE `data:` events.
    JsonLines,
}

/// Everything known about one stream when it ended, delivered once to the
/// [`OnEnd`] sink.
///
/// The layer fills in the counts and instants; observers add their findings (timing, usage,
/// response id, digest) in their [`on_end`](crate::Observer::on_end) hook, or in
/// [`extensions`](Self::extensions) for types of your own.
///
/// Payloads are never part of the report.
#[derive(Debug)]
#[non_exhaustive]
pub struct StreamReport {
    /// How the stream ended.
    pub outcome: Outcome,
    /// A short description of what went wrong, when something did (never a payload).
    pub error: Option<String>,
    /// The upstream's status code, when it answered (`None` when it did not: a `504` from the
    /// layer's own header timeout, or a client that left first).
    pub status: Option<StatusCode>,
    /// How the upstream framed the stream.
    pub framing: Framing,
    /// The provider format detected from the request path and the events.
    pub provider: Provider,

    /// Events received from the upstream (dispatched SSE events, or JSON lines).
    pub events: u64,
    /// Of those, the events that carried content (text, reasoning or tool-call deltas).
    pub content_events: u64,
    /// Comment lines received from the upstream (pings).
    pub comments: u64,
    /// Keep-alive comments this layer sent.
    pub keep_alives: u64,
    /// Body bytes received from the upstream.
    pub bytes_in: u64,
    /// Body bytes handed to the client (upstream bytes, keep-alives and error events).
    pub bytes_out: u64,

    /// When the request reached the layer: time to first byte and to first token are
    /// measured from here.
    pub started_at: Instant,
    /// When the upstream's response head arrived.
    pub response_at: Option<Instant>,
    /// When the first body byte arrived from the upstream.
    pub first_byte_at: Option<Instant>,
    /// When the stream ended (the report was made).
    pub ended_at: Instant,

    /// The response id (`chatcmpl-…`, `msg_…`, `resp_…`), from the first event that
    /// carries it (filled by the layer itself, before observers see the event).
    pub response_id: Option<String>,
    /// The model that answered, from the first event that names it (filled by the layer).
    pub model: Option<String>,
    /// The finish or stop reason, when an observer found it.
    pub finish_reason: Option<String>,
    /// Token usage, when the usage observer is on.
    pub usage: Option<Usage>,
    /// Latencies, when the timing observer is on.
    pub timing: Option<Timing>,
    /// SHA-256 of the bytes the client received (keep-alives excluded), when the digest
    /// observer is on.
    pub digest: Option<Digest>,
    /// SHA-256 of the request body, when the request digest layer is on.
    pub request_digest: Option<Digest>,

    /// Findings of observers, keyed by type (see [`Extensions`]).
    pub extensions: Extensions,
}

impl StreamReport {
    /// An empty report of a stream that started at `started_at`, for driving observers by
    /// hand (with [`EventContext::new`](crate::EventContext::new)) in tests and benches.
    pub fn new(started_at: Instant) -> Self {
        Self {
            outcome: Outcome::Completed,
            error: None,
            status: None,
            framing: Framing::Sse,
            provider: Provider::Unknown,
            events: 0,
            content_events: 0,
            comments: 0,
            keep_alives: 0,
            bytes_in: 0,
            bytes_out: 0,
            started_at,
            response_at: None,
            first_byte_at: None,
            ended_at: started_at,
            response_id: None,
            model: None,
            finish_reason: None,
            usage: None,
            timing: None,
            digest: None,
            request_digest: None,
            extensions: Extensions::new(),
        }
    }

    /// Time from the request's arrival at the layer to the end of the stream.
    pub fn duration(&self) -> Duration {
        self.ended_at.saturating_duration_since(self.started_at)
    }

    /// Time from the request's arrival to the first upstream body byte.
    pub fn time_to_first_byte(&self) -> Option<Duration> {
        self.first_byte_at
            .map(|at| at.saturating_duration_since(self.started_at))
    }
}

/// Where the report of each stream goes: called exactly once per stream, from the body's
/// `poll_frame` or from its `Drop`.
///
/// It runs inline, on whatever thread polls or drops the body: it must not block and must
/// not panic. Send the report to a channel or record metrics; do I/O elsewhere.
///
/// Implemented for closures taking a [`StreamReport`] and for `()` (no sink).
pub trait OnEnd {
    /// Take the report.
    fn on_end(self, report: StreamReport);
}

impl<F> OnEnd for F
where
    F: FnOnce(StreamReport),
{
    fn on_end(self, report: StreamReport) {
        self(report);
    }
}

impl OnEnd for () {
    #[inline]
    fn on_end(self, _: StreamReport) {}
}
