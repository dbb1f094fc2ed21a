//! The handle to one request's span, shared by the layer (which opens it and ends it with
//! the body when no observer takes it over) and the [`SpanObserver`](super::SpanObserver)
//! (which ends it from the report): whoever ends it first ends it, once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::Context;
use opentelemetry::trace::TraceContextExt;

use super::record;

/// The span of one request, in the request's extensions (where the [`SpanObserver`](super::SpanObserver) finds
/// it, and where handlers may read its [`context`](Self::context) to parent spans of their
/// own).
#[derive(Clone, Debug)]
pub struct StreamSpan {
    inner: Arc<SpanState>,
}

#[derive(Debug)]
struct SpanState {
    cx: Context,
    /// An observer took the span over: it ends it, not the body.
    observed: AtomicBool,
    /// The span was ended (once).
    ended: AtomicBool,
}

impl StreamSpan {
    /// A handle to the span current in `cx`, not yet taken over by an observer.
    pub(super) fn new(cx: Context) -> Self {
        Self {
            inner: Arc::new(SpanState {
                cx,
                observed: AtomicBool::new(false),
                ended: AtomicBool::new(false),
            }),
        }
    }

    /// The OpenTelemetry context whose current span is this request's span.
    pub fn context(&self) -> &Context {
        &self.inner.cx
    }

    /// Whether the span has ended.
    pub fn is_ended(&self) -> bool {
        self.inner.ended.load(Ordering::Acquire)
    }

    pub(crate) fn claim(&self) {
        self.inner.observed.store(true, Ordering::Release);
    }

    /// Gives the span back to the layer; whether nothing else holds it any more (then the
    /// caller ends it).
    pub(crate) fn release(&self) -> bool {
        self.inner.observed.store(false, Ordering::Release);
        Arc::strong_count(&self.inner) == 1
    }

    pub(super) fn is_observed(&self) -> bool {
        self.inner.observed.load(Ordering::Acquire)
    }

    /// Records with `f` and ends the span, unless it has already ended. Returns whether this
    /// call ended it.
    pub(crate) fn end_with(&self, f: impl FnOnce(&opentelemetry::trace::SpanRef<'_>)) -> bool {
        if self.inner.ended.swap(true, Ordering::AcqRel) {
            return false;
        }
        let span = self.inner.cx.span();
        f(&span);
        span.end();
        true
    }
}

impl StreamSpan {
    pub(super) fn record_status(&self, status: http::StatusCode) {
        if self.is_ended() {
            return;
        }
        let span = self.inner.cx.span();
        record::status(&span, status);
    }
}
