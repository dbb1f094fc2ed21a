//! [`SpanLayer`]: opens the span when the request enters, passes its context upstream, and
//! makes it current while the inner service's future and the body are polled.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{SpanBuilder, SpanKind, TraceContextExt, Tracer};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::handle::StreamSpan;
use super::observer::SpanObserver;
use super::propagation::Propagation;
use super::record::{self, Conventions};

/// Opens one OpenTelemetry span per request, of kind `CLIENT`, parented to the caller's
/// trace, and passes its context to the upstream (`traceparent` / `tracestate`). The span
/// is current (an attached OpenTelemetry context) while the inner service's future and the
/// response body are polled, so spans the upstream call opens are its children.
///
/// The [`SpanObserver`] from [`observer`](Self::observer), in the observer tuple of an
/// [`SseLayer`](crate::SseLayer) **inside** this layer, ends it from the stream's final
/// report with the GenAI attributes ([module docs](super)). Requests the `SseLayer` does
/// not take as streams end their span when their body ends or is dropped.
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_sse::span::SpanLayer;
/// use tower_sse::{SseLayer, TimingObserver, UsageObserver};
///
/// // The tracer of the global tracer provider: install the provider first.
/// let spans = SpanLayer::new();
/// let stack = ServiceBuilder::new()
///     .layer(spans.clone())
///     // The span observer last: the others' findings are in the report when it ends the span.
///     .layer(SseLayer::new().observer((UsageObserver::new(), TimingObserver::new(), spans.observer())));
/// # let _ = stack;
/// ```
#[derive(Clone, Debug)]
pub struct SpanLayer {
    shared: Arc<Shared>,
}

/// What every span of one layer shares.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    // Shared, so that a builder method on a cloned layer keeps the tracer.
    pub(crate) tracer: Arc<BoxedTracer>,
    pub(crate) conventions: Conventions,
    pub(crate) propagation: Propagation,
    pub(crate) enabled: bool,
    /// The currency label written beside a stream's cost.
    pub(crate) currency: Option<Arc<str>>,
}

impl Default for SpanLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl SpanLayer {
    /// Spans from the global tracer provider's tracer `tower-sse` (as installed when this is
    /// called), W3C propagation, and the conventions `OTEL_SEMCONV_STABILITY_OPT_IN` asks for.
    pub fn new() -> Self {
        Self::with_tracer(opentelemetry::global::tracer("tower-sse"))
    }

    /// Spans from this tracer (an SDK tracer, or a [`BoxedTracer`]).
    pub fn with_tracer<T>(tracer: T) -> Self
    where
        T: Tracer + Send + Sync + 'static,
        T::Span: Send + Sync + 'static,
    {
        Self {
            shared: Arc::new(Shared {
                tracer: Arc::new(BoxedTracer::new(Box::new(tracer))),
                conventions: Conventions::from_env(),
                propagation: Propagation::W3c,
                enabled: true,
                currency: None,
            }),
        }
    }

    /// Writes the latest experimental GenAI names (`gen_ai.provider.name`) instead of the
    /// widely deployed ones (`gen_ai.system`), whatever the environment says.
    #[must_use]
    pub fn latest_conventions(self, latest: bool) -> Self {
        self.map(|shared| shared.conventions = Conventions { latest })
    }

    /// How the caller's context is read and the upstream's written ([`Propagation::W3c`]
    /// by default).
    #[must_use]
    pub fn propagation(self, propagation: Propagation) -> Self {
        self.map(|shared| shared.propagation = propagation)
    }

    /// Whether the layer opens spans at all (on by default). A disabled layer passes requests
    /// and bodies through untouched, so that a stack can keep one type with and without
    /// tracing (a command-line switch).
    #[must_use]
    pub fn enabled(self, enabled: bool) -> Self {
        self.map(|shared| shared.enabled = enabled)
    }

    /// The label of the currency of the costs a [`CostObserver`](crate::cost::CostObserver)
    /// puts into the reports (its [`PriceTable::currency`](crate::cost::PriceTable::currency)),
    /// written beside each span's `tower_sse.cost.micros` as `tower_sse.cost.currency`. The
    /// report's cost carries no currency of its own.
    #[must_use]
    pub fn currency(self, currency: impl Into<String>) -> Self {
        let currency: Arc<str> = Arc::from(currency.into());
        self.map(|shared| shared.currency = Some(currency))
    }

    /// The observer that ends this layer's spans from the stream's report: put it last in
    /// the tuple of the `SseLayer` inside this layer.
    pub fn observer(&self) -> SpanObserver {
        SpanObserver::new(self.shared.conventions, self.shared.currency.clone())
    }

    /// Opens the reader spans of a [`ResumeLayer`](crate::ResumeLayer) with this layer's
    /// tracer.
    #[cfg(feature = "resume")]
    pub(crate) fn reader_spans(&self) -> super::reader::ReaderSpans {
        super::reader::ReaderSpans::new(
            self.shared.tracer.clone(),
            self.shared.propagation,
            self.shared.enabled,
        )
    }

    fn map(self, f: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = Arc::unwrap_or_clone(self.shared);
        f(&mut shared);
        Self {
            shared: Arc::new(shared),
        }
    }
}

impl<S> Layer<S> for SpanLayer {
    type Service = SpanService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SpanService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of a [`SpanLayer`].
#[derive(Clone, Debug)]
pub struct SpanService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SpanService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<SpanBody<ResBody>>;
    type Error = S::Error;
    type Future = SpanFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let shared = &self.shared;
        if !shared.enabled {
            return SpanFuture {
                future: self.inner.call(request),
                handle: None,
                resumable: false,
            };
        }
        // A `ResumeLayer` outside may make the answer a resumable stream: it links the
        // stream's reader spans to this one.
        #[cfg(feature = "resume")]
        let resumable = request
            .extensions()
            .get::<crate::resume::ResumableStream>()
            .is_some();
        #[cfg(not(feature = "resume"))]
        let resumable = false;
        let parent = shared.propagation.extract(request.headers());
        let builder = SpanBuilder::from_name(record::INITIAL_NAME).with_kind(SpanKind::Client);
        let span = shared.tracer.build_with_context(builder, &parent);
        let cx = parent.with_span(span);
        shared.propagation.inject(&cx, request.headers_mut());
        let handle = StreamSpan::new(cx);
        request.extensions_mut().insert(handle.clone());
        let future = {
            let _current = handle.context().clone().attach();
            self.inner.call(request)
        };
        SpanFuture {
            future,
            handle: Some(handle),
            resumable,
        }
    }
}

pin_project! {
    /// The response future of a [`SpanService`].
    #[derive(Debug)]
    pub struct SpanFuture<F> {
        #[pin]
        future: F,
        handle: Option<StreamSpan>,
        // The request may become a resumable stream: the answer carries the span's context.
        resumable: bool,
    }

    impl<F> PinnedDrop for SpanFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before the head: the caller gave up (or a timeout outside fired).
            if let Some(handle) = this.project().handle.take()
                && !handle.is_observed()
            {
                handle.end_with(|span| record::unreported(span, Some("cancelled")));
            }
        }
    }
}

impl<F, B, E> Future for SpanFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<SpanBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _current = this.handle.as_ref().map(|h| h.context().clone().attach());
            ready!(this.future.poll(cx))
        };
        let Some(handle) = this.handle.take() else {
            // A disabled layer: the body passes through.
            return Poll::Ready(result.map(|response| {
                response.map(|body| SpanBody {
                    inner: body,
                    handle: None,
                })
            }));
        };
        Poll::Ready(match result {
            Ok(mut response) => {
                if !handle.is_observed() {
                    handle.record_status(response.status());
                }
                if *this.resumable {
                    producer_span(&mut response, &handle);
                }
                Ok(response.map(|body| SpanBody {
                    inner: body,
                    handle: Some(handle),
                }))
            }
            Err(error) => {
                if !handle.is_observed() {
                    handle.end_with(|span| record::unreported(span, Some("_OTHER")));
                }
                Err(error)
            }
        })
    }
}

/// Puts the span's context into the answer, for the `ResumeLayer` outside.
#[cfg(feature = "resume")]
fn producer_span<B>(response: &mut Response<B>, handle: &StreamSpan) {
    let context = handle.context().span().span_context().clone();
    response
        .extensions_mut()
        .insert(super::reader::ProducerSpan(context));
}

#[cfg(not(feature = "resume"))]
fn producer_span<B>(_: &mut Response<B>, _: &StreamSpan) {}

pin_project! {
    /// The response body of a [`SpanService`]: the inner body, polled with the span current.
    /// Ends the span when the body ends or is dropped, unless a [`SpanObserver`] took it over.
    #[derive(Debug)]
    pub struct SpanBody<B> {
        #[pin]
        inner: B,
        // `None` when the layer is disabled.
        handle: Option<StreamSpan>,
    }

    impl<B> PinnedDrop for SpanBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(handle) = this.project().handle
                && !handle.is_observed()
            {
                handle.end_with(|span| record::unreported(span, None));
            }
        }
    }
}

impl<B: Body> Body for SpanBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let Some(handle) = this.handle.as_ref() else {
            return this.inner.poll_frame(cx);
        };
        let frame = {
            let _current = handle.context().clone().attach();
            ready!(this.inner.as_mut().poll_frame(cx))
        };
        if !handle.is_observed() {
            match &frame {
                None => {
                    handle.end_with(|span| record::unreported(span, None));
                }
                Some(Err(_)) => {
                    handle.end_with(|span| record::unreported(span, Some("_OTHER")));
                }
                Some(Ok(_)) if this.inner.is_end_stream() => {
                    handle.end_with(|span| record::unreported(span, None));
                }
                Some(Ok(_)) => {}
            }
        }
        Poll::Ready(frame)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
