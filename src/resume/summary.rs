//! [`ResumeSummary`]: what a resumable stream's readers did, as of its end.

use std::time::Duration;

use crate::resume::id::StreamId;

/// What a resumable stream's readers did, as of the stream's end: in
/// [`StreamReport::extensions`](crate::StreamReport::extensions) when
/// [`ResumeObserver`](super::ResumeObserver) is among the `SseLayer`'s observers.
///
/// ```
/// use tower_sse::StreamReport;
/// use tower_sse::resume::ResumeSummary;
///
/// fn on_end(report: StreamReport) {
///     if let Some(resume) = report.extensions.get::<ResumeSummary>() {
///         println!(
///             "{}: {} resumes, {} events replayed, detached {:?}",
///             resume.stream, resume.resumes, resume.replayed_events, resume.detached
///         );
///     }
/// }
/// # let _ = on_end;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResumeSummary {
    /// The stream's id.
    pub stream: StreamId,
    /// Client connections that read the stream (the first one and the resumes).
    pub connections: u64,
    /// Of those, resumes (`Last-Event-ID`).
    pub resumes: u64,
    /// Events sent again to resuming clients (they were in the log when they attached).
    pub replayed_events: u64,
    /// How long the stream ran with no client attached.
    pub detached: Duration,
}
