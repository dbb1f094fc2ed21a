//! Reader spans: one short span per resumed client connection of a resumable stream, linked
//! to the span of the stream's producer (features `otel` and `resume`).
//!
//! A resume (`Last-Event-ID`) is answered from the stream's log by the
//! [`ResumeLayer`](crate::ResumeLayer) and never reaches the `SseLayer`, so no
//! [`SpanObserver`](super::SpanObserver) sees it: the `ResumeLayer` given
//! [`ResumeLayer::spans`](crate::ResumeLayer::spans) opens this span itself when the resume
//! request enters, parented to the caller's trace like the stream's span, and ends it once,
//! when the connection's body is dropped, with what the connection did. The upstream is
//! called once per stream (by the producer): only the producer's span describes that call.
//!
//! The link: the stream's span context is taken from the answer of the `SpanLayer` inside
//! the `ResumeLayer` (a [`ProducerSpan`] in the response's extensions), and added as a span
//! link to each reader span. It travels two ways:
//!
//! - in the stream's shared state while its producer runs in this process (the whole
//!   context, `tracestate` included);
//! - with the stream's log ([`NewStream::trace_parent`](crate::resume::NewStream::trace_parent),
//!   [`StreamLog::trace_parent`](crate::resume::StreamLog::trace_parent)): its `traceparent`
//!   (trace id, span id, sampled flag), kept by the `MemoryStore` and by the `RedisStore` in
//!   the stream's `meta` hash (one field, written with the tenant when the stream is
//!   created, read with it by `open`: no round trip of its own). A resume served after the
//!   producer ended, or by another replica of a shared store, is linked from it.
//!
//! A store that keeps no trace context (the trait's default) links only the resumes served
//! while the producer runs in this process.

use std::sync::Arc;

use http::HeaderMap;
use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{
    SpanBuilder, SpanContext, SpanId, SpanKind, SpanRef, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer,
};
use opentelemetry::{Context, KeyValue};

use super::names::{TOWER_SSE_RESUME_CURSOR, TOWER_SSE_RESUME_STREAM};
use super::propagation::Propagation;
use crate::resume::TraceParent;

/// The name of a reader span (low cardinality: the stream id is an attribute).
pub(crate) const READER_SPAN_NAME: &str = "resume";

/// The span context of a stream's span, in the extensions of the `SpanLayer`'s answer to a
/// request that may become a resumable stream, for the `ResumeLayer` outside to link the
/// stream's reader spans to.
#[derive(Clone, Debug)]
pub(crate) struct ProducerSpan(pub(crate) SpanContext);

impl ProducerSpan {
    /// Its `traceparent`, for the stream's log to keep (`None` for an invalid context).
    pub(crate) fn trace_parent(&self) -> Option<TraceParent> {
        let cx = &self.0;
        if !cx.is_valid() {
            return None;
        }
        TraceParent::new(
            cx.trace_id().to_bytes(),
            cx.span_id().to_bytes(),
            cx.trace_flags().to_u8(),
        )
    }
}

/// The context of a producer's span as the stream's log kept it: remote (it comes from the
/// log, not from a span of this process's tree), sampled as it was, without `tracestate`
/// (the log does not keep it).
pub(crate) fn producer_context(trace: TraceParent) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(trace.trace_id()),
        SpanId::from_bytes(trace.span_id()),
        TraceFlags::new(trace.flags()) & TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    )
}

/// Opens reader spans with a [`SpanLayer`](super::SpanLayer)'s tracer, propagation and
/// switch ([`ResumeLayer::spans`](crate::ResumeLayer::spans)).
#[derive(Clone, Debug)]
pub(crate) struct ReaderSpans {
    tracer: Arc<BoxedTracer>,
    propagation: Propagation,
    /// `false`: the layer is disabled, no span is opened.
    enabled: bool,
}

impl ReaderSpans {
    pub(crate) fn new(tracer: Arc<BoxedTracer>, propagation: Propagation, enabled: bool) -> Self {
        Self {
            tracer,
            propagation,
            enabled,
        }
    }

    /// A span for a resume request with these headers, of kind `INTERNAL` (the connection
    /// is answered from the log, nothing is called): `None` when the layer is disabled.
    pub(crate) fn open(&self, headers: &HeaderMap) -> Option<ReaderSpan> {
        if !self.enabled {
            return None;
        }
        let parent = self.propagation.extract(headers);
        let builder = SpanBuilder::from_name(READER_SPAN_NAME).with_kind(SpanKind::Internal);
        let span = self.tracer.build_with_context(builder, &parent);
        Some(ReaderSpan {
            cx: parent.with_span(span),
        })
    }
}

/// The span of one resumed connection; ended once, by [`end`](Self::end) or when dropped.
#[derive(Debug)]
pub(crate) struct ReaderSpan {
    cx: Context,
}

impl ReaderSpan {
    /// What the resume asked for: the stream, the seq it resumed after, and the link to
    /// the stream's span when it is known.
    pub(crate) fn resumed(&self, stream: &str, cursor: u64, producer: Option<&SpanContext>) {
        let span = self.cx.span();
        if !span.is_recording() {
            return;
        }
        span.set_attribute(KeyValue::new(TOWER_SSE_RESUME_STREAM, stream.to_owned()));
        span.set_attribute(KeyValue::new(
            TOWER_SSE_RESUME_CURSOR,
            i64::try_from(cursor).unwrap_or(i64::MAX),
        ));
        if let Some(producer) = producer.filter(|p| p.is_valid()) {
            span.add_link(producer.clone(), Vec::new());
        }
    }

    /// Records with `f` and ends the span.
    pub(crate) fn end(self, f: impl FnOnce(&SpanRef<'_>)) {
        let span = self.cx.span();
        if span.is_recording() {
            f(&span);
        }
        // Ended here; the drop that follows ends nothing more.
        span.end();
    }
}

/// A span never ended explicitly (a resume whose answer was dropped) still ends once.
impl Drop for ReaderSpan {
    fn drop(&mut self) {
        self.cx.span().end();
    }
}
