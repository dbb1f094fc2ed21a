//! [`SpanObserver`]: ends a [`SpanLayer`](super::SpanLayer)'s span from the stream's report.

use std::sync::Arc;

use crate::observe::Observer;
use crate::report::StreamReport;
use crate::request::RequestModel;

use super::handle::StreamSpan;
use super::record::{self, Conventions};

/// Ends the span a [`SpanLayer`](super::SpanLayer) opened for the request, once, from the
/// stream's final report: name, GenAI attributes, status ([module docs](super)). Made by
/// [`SpanLayer::observer`](super::SpanLayer::observer); put it last in the tuple, so that
/// the usage, timing and digest observers' findings are in the report when it ends the
/// span. Without a `SpanLayer` outside, it does nothing.
///
/// It keeps nothing per event: a handle to the span (one pointer) and the request's model.
#[derive(Debug, Default)]
pub struct SpanObserver {
    conventions: Conventions,
    /// The label of the report's cost's currency ([`SpanLayer::currency`](super::SpanLayer::currency)).
    currency: Option<Arc<str>>,
    span: Option<StreamSpan>,
    request_model: Option<String>,
}

impl SpanObserver {
    pub(crate) fn new(conventions: Conventions, currency: Option<Arc<str>>) -> Self {
        Self {
            conventions,
            currency,
            span: None,
            request_model: None,
        }
    }
}

/// A clone starts without a span: only the observer that saw the request ends its span (the
/// layer clones its observer for each request before `on_request`).
impl Clone for SpanObserver {
    fn clone(&self) -> Self {
        Self::new(self.conventions, self.currency.clone())
    }
}

impl Observer for SpanObserver {
    fn on_request(&mut self, request: &http::request::Parts) {
        if let Some(span) = request.extensions.get::<StreamSpan>() {
            span.claim();
            self.span = Some(span.clone());
            self.request_model = request
                .extensions
                .get::<RequestModel>()
                .map(|model| model.0.clone());
        }
    }

    fn on_end(&mut self, report: &mut StreamReport) {
        if let Some(span) = self.span.take() {
            let model = self.request_model.as_deref();
            let currency = self.currency.as_deref();
            span.end_with(|s| record::report(s, report, model, currency, self.conventions));
        }
    }
}

/// An observer that saw the request but never its end (the `SseLayer` did not take the
/// request as a stream, so no report comes) hands the span back to the layer, whose body ends
/// it with the answer's status; if the layer's future and body are already gone, it ends here.
impl Drop for SpanObserver {
    fn drop(&mut self) {
        if let Some(span) = self.span.take()
            && span.release()
        {
            span.end_with(|s| record::unreported(s, None));
        }
    }
}
