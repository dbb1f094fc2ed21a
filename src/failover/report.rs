//! What the failover layer did, attempt by attempt: [`FailoverReport`], carried to the
//! [`StreamReport`](crate::StreamReport) in the response's extensions, or in a
//! [`FailoverError`] when no upstream answered at all.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::BoxError;
use crate::provider::ProviderError;
use crate::report::{Outcome, Usage};

/// Every attempt of one request, in the order made: the ledger that billing and metrics read
/// (a failed attempt can cost tokens: its [`Attempt::usage`]).
///
/// ```
/// use tower_sse::StreamReport;
///
/// /// Input tokens the failed attempts were billed for, as their providers reported them.
/// fn wasted_input(report: &StreamReport) -> u64 {
///     let Some(failover) = &report.failover else { return 0 };
///     failover
///         .failed()
///         .filter_map(|attempt| attempt.usage.and_then(|u| u.input_tokens))
///         .sum()
/// }
///
/// let report = StreamReport::new(tokio::time::Instant::now());
/// assert_eq!(wasted_input(&report), 0);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct FailoverReport {
    /// Each attempt, in order.
    pub attempts: Vec<Attempt>,
    /// The index in [`attempts`](Self::attempts) of the one whose answer the client got;
    /// `None` when every attempt failed with an error (then the client got none).
    pub served: Option<usize>,
    /// Whether the request body was kept to be sent again. `false` when it was larger than
    /// [`Failover::max_replay_body`](super::Failover::max_replay_body): it was sent once,
    /// to one upstream, without failover.
    pub replayable: bool,
    /// Upstreams (their index in the layer's list) left out because their circuit breaker
    /// was open.
    pub skipped: Vec<usize>,
    /// The served stream failed after its commit point, once content had reached the client
    /// (filled by the [`SseLayer`](crate::SseLayer) from the stream's outcome and content
    /// count): the client got part of an answer and an error end, and no retry was made.
    pub cut_after_commit: bool,
}

impl FailoverReport {
    /// The attempt that served, if one did.
    pub fn served_attempt(&self) -> Option<&Attempt> {
        self.attempts.get(self.served?)
    }

    /// The attempts that failed before the commit point.
    pub fn failed(&self) -> impl Iterator<Item = &Attempt> {
        self.attempts
            .iter()
            .filter(|a| matches!(a.outcome, AttemptOutcome::Failed(_)))
    }

    /// Record how the served stream ended: cut after the commit when it did not complete
    /// after content reached the client.
    pub(crate) fn settle(&mut self, outcome: Outcome, content_events: u64) {
        self.cut_after_commit =
            self.served.is_some() && content_events > 0 && !outcome.is_success();
    }
}

/// One attempt: which upstream, what it answered, how long it took.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Attempt {
    /// The upstream's index in the layer's list (order of preference).
    pub upstream: usize,
    /// The upstream's name, when it was given one ([`Failover::named`](super::Failover::named)).
    pub name: Option<Arc<str>>,
    /// The status of its response head, when one arrived.
    pub status: Option<StatusCode>,
    /// From the attempt's call to its failure, or to its commit (the release of the head).
    pub duration: Duration,
    /// Usage the upstream reported before the attempt ended (Anthropic's `message_start`
    /// input tokens ahead of an `overloaded_error`). For the attempt that served, the
    /// stream's own usage is [`StreamReport::usage`](crate::StreamReport::usage), counted
    /// by the usage observer over the whole stream; this one holds only what was seen
    /// before the commit.
    pub usage: Option<Usage>,
    /// The provider's in-band error, when that is why the attempt failed.
    pub provider_error: Option<ProviderError>,
    /// Served, or failed and why.
    pub outcome: AttemptOutcome,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttemptOutcome {
    /// Its answer went to the client, released at this commit.
    Served(Commit),
    /// It failed before the commit point; the next upstream was tried (if any was left).
    Failed(AttemptError),
}

/// Why the head of the served answer was released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Commit {
    /// The first content event arrived: the commit point itself.
    Content,
    /// The commit deadline passed before any content.
    Deadline,
    /// [`Failover::max_held_bytes`](super::Failover::max_held_bytes) were held with no
    /// content yet.
    HeldBytes,
    /// Not an event stream, and not a status to retry: served as it came.
    NotAStream,
    /// Not held at all: the last upstream left, an attempt after the commit deadline, or a
    /// body too large to send again. Whatever it answered went to the client.
    Unchecked,
}

/// Why an attempt failed before the commit point.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttemptError {
    /// The service failed (a refused connection, a TLS failure): its error's text, for the
    /// report only (it can name hosts).
    Call(String),
    /// A head whose status is retried (`429`, `529`, `503`, …).
    Status(StatusCode),
    /// An in-band error event before any content ([`Attempt::provider_error`] says which).
    InBand,
    /// The stream ended without one content event.
    NoContent,
    /// The body failed before any content: its error's text.
    Body(String),
}

impl AttemptError {
    /// A short, stable name: the `result` label of the attempts metric.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Call(_) => "call_failed",
            Self::Status(_) => "status",
            Self::InBand => "provider_error",
            Self::NoContent => "no_content",
            Self::Body(_) => "body_failed",
        }
    }
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Call(e) => write!(f, "the upstream call failed: {e}"),
            Self::Status(status) => write!(f, "the upstream answered {status}"),
            Self::InBand => f.write_str("the upstream sent an error event before any content"),
            Self::NoContent => f.write_str("the upstream's stream ended with no content"),
            Self::Body(e) => write!(f, "the upstream's body failed before any content: {e}"),
        }
    }
}

/// Every attempt failed with an error from the service (no upstream answered at all): the
/// last error, and the report of every attempt.
#[derive(Debug)]
pub struct FailoverError {
    /// Each attempt.
    pub report: FailoverReport,
    source: BoxError,
}

impl FailoverError {
    pub(crate) fn new(report: FailoverReport, source: BoxError) -> Self {
        Self { report, source }
    }
}

impl fmt::Display for FailoverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "every upstream failed ({} attempts), the last: {}",
            self.report.attempts.len(),
            self.source
        )
    }
}

impl std::error::Error for FailoverError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// The report a [`FailoverError`] carries, when `error` is one (as itself, or boxed as a
/// [`BoxError`], the [`Failover`](super::Failover)'s own error type): how the
/// [`SseLayer`](crate::SseLayer) fills [`StreamReport::failover`](crate::StreamReport::failover)
/// when the inner service failed before answering.
pub(crate) fn carried_report<Er: 'static>(error: &Er) -> Option<Box<FailoverReport>> {
    let error: &dyn std::any::Any = error;
    let failed = match error.downcast_ref::<BoxError>() {
        Some(boxed) => boxed.downcast_ref::<FailoverError>(),
        None => error.downcast_ref::<FailoverError>(),
    }?;
    Some(Box::new(failed.report.clone()))
}
