//! [`ResumeObserver`]: what a resumable stream's readers did, in the stream's report.

use crate::observe::Observer;
use crate::report::{Outcome, StreamReport};
use crate::resume::producers::ResumableStream;

/// Puts a [`ResumeSummary`](super::ResumeSummary) into the report of each resumable
/// stream. Put it among the observers of the [`SseLayer`](crate::SseLayer) inside a
/// [`ResumeLayer`](crate::ResumeLayer); it does nothing for other streams.
///
/// It also gives the report its true outcome when the stream's producer ended the stream
/// itself: [`Outcome::StoreFailed`] when the store failed,
/// [`Outcome::EventTooLarge`] for an event past the
/// [`ResumeLayer::max_event_size`](crate::ResumeLayer::max_event_size), not the
/// [`Outcome::ClientDisconnected`] the dropped body would say. Put it **first** among the
/// observers, so that those after it (metrics, logs) see that outcome too.
///
/// The [module docs](crate::resume#a-whole-stack-with-axums-handleerrorlayer) run it in a
/// whole stack. Outside a `ResumeLayer` there is no summary:
///
/// ```
/// use tower_sse::resume::{ResumeObserver, ResumeSummary};
/// use tower_sse::{Observer, StreamReport};
///
/// let mut observer = ResumeObserver::new();
/// let (request, ()) = http::Request::new(()).into_parts();
/// observer.on_request(&request);
/// let mut report = StreamReport::new(tokio::time::Instant::now());
/// observer.on_end(&mut report);
/// assert!(report.extensions.get::<ResumeSummary>().is_none());
/// ```
#[derive(Debug, Clone, Default)]
pub struct ResumeObserver {
    stream: Option<ResumableStream>,
}

impl ResumeObserver {
    /// An observer (the layer clones it for every request).
    pub fn new() -> Self {
        Self::default()
    }
}

impl Observer for ResumeObserver {
    fn on_request(&mut self, request: &http::request::Parts) {
        self.stream = request.extensions.get::<ResumableStream>().cloned();
    }

    fn on_end(&mut self, report: &mut StreamReport) {
        if let Some(shared) = self.stream.as_ref().and_then(ResumableStream::shared) {
            // The producer ended the stream itself (its store failed, an event past its
            // limit): its body was dropped, which says "disconnected"; the true outcome wins.
            if let Some((outcome, message)) = shared.producer_end()
                && report.outcome == Outcome::ClientDisconnected
            {
                report.outcome = outcome;
                report.error = Some(message.to_owned());
            }
            report.extensions.insert(shared.summary());
        }
    }
}
