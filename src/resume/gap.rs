//! [`ResumeGap`]: why a connected reader could not be given every event of its stream.
//!
//! A reader of a resumable stream never ends cleanly with events missing: a client that
//! sees a clean end takes its response for complete. When the reader cannot go on without
//! a gap it sends one SSE error event (`resume_gap`), then its body fails, so that the
//! server aborts the connection (HTTP/1.1: no terminating chunk; HTTP/2: `RST_STREAM`) and
//! the client knows its response is incomplete.

use std::fmt;

use bytes::Bytes;

use crate::sse::Event;

/// Why a reader could not follow its stream's log without a gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResumeGapKind {
    /// The reader lagged behind the log for longer than the producer may be held back
    /// ([`ResumeLayer::slow_reader_hold`](crate::ResumeLayer::slow_reader_hold)), and the
    /// positions it had not read were trimmed.
    Overrun,
    /// The log no longer has the next position (trimmed, expired or evicted by the store's
    /// bounds, or a shared store lost it).
    Gone,
    /// The store failed to answer a read.
    StoreFailed,
}

impl ResumeGapKind {
    /// A short snake_case name (the `reason` of the metric).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Overrun => "overrun",
            Self::Gone => "gone",
            Self::StoreFailed => "store_failed",
        }
    }
}

/// The error a reader's body fails with when it cannot follow its stream's log without a
/// gap, after its `resume_gap` error event. Its client got every event up to
/// [`after_seq`](Self::after_seq) and none after it.
///
/// ```
/// use tower_sse::resume::{ResumeGap, ResumeGapKind};
///
/// let gap = ResumeGap::new(ResumeGapKind::Overrun, 41);
/// assert_eq!(gap.kind(), ResumeGapKind::Overrun);
/// assert_eq!(gap.after_seq(), 41);
/// let event = String::from_utf8(gap.event().to_vec()).unwrap();
/// assert!(event.starts_with("event: error\ndata: {\"error\":{\"type\":\"resume_gap\""));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeGap {
    kind: ResumeGapKind,
    after_seq: u64,
}

impl ResumeGap {
    /// A gap of this kind after event `after_seq` (the last one the client got).
    pub fn new(kind: ResumeGapKind, after_seq: u64) -> Self {
        Self { kind, after_seq }
    }

    /// Why.
    pub fn kind(&self) -> ResumeGapKind {
        self.kind
    }

    /// The seq of the last event the client got.
    pub fn after_seq(&self) -> u64 {
        self.after_seq
    }

    /// The SSE error event the client receives before its body fails: `event: error` with
    /// an OpenAI-style JSON error of type `resume_gap` (the shape of the
    /// [`SseLayer`](crate::SseLayer)'s default [`ErrorEvent`](crate::ErrorEvent)).
    pub fn event(&self) -> Bytes {
        let data = format!(
            r#"{{"error":{{"type":"resume_gap","code":"{}","message":"{}"}}}}"#,
            self.kind.as_str(),
            self
        );
        Event::builder()
            .event("error")
            .data(data)
            .encode()
            .unwrap_or_else(|_| Bytes::from_static(b"event: error\ndata: {}\n\n"))
    }
}

impl fmt::Display for ResumeGap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.kind {
            ResumeGapKind::Overrun => "the reader fell too far behind the stream",
            ResumeGapKind::Gone => "the stream's log no longer has the next event",
            ResumeGapKind::StoreFailed => "the resume store failed",
        };
        write!(f, "{why}: events after {} are missing", self.after_seq)
    }
}

impl std::error::Error for ResumeGap {}
