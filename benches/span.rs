//! What one OpenTelemetry span per stream costs (feature `otel`), in process, without export.
//!
//! `cargo bench --bench span --features otel`. Each iteration drives one short chat stream
//! whole (role chunk, two content chunks, finish, usage, `[DONE]`: 6 events) through the
//! stack, polled by hand as hyper would, from a request carrying a W3C `traceparent`:
//!
//! - `span/off`: `SseLayer` with the usage and timing observers, no span layer;
//! - `span/disabled`: the same inside `SpanLayer::enabled(false)` (the gateway without
//!   `--otlp-endpoint`), with the `SpanObserver` in the tuple;
//! - `span/noop`: a `SpanLayer` on the global tracer with no provider installed (the API's
//!   no-op tracer: parent read, context passed upstream, nothing recorded);
//! - `span/sdk`: a `SpanLayer` on an SDK tracer provider whose processor drops each ended
//!   span (a span recorded with all its attributes; the cost of exporting it is left out).
//!
//! For instruction counts (exact under load), run one case a fixed number of times under
//! callgrind: `SPAN_BENCH=sdk SPAN_BENCH_ITERS=2000 valgrind --tool=callgrind
//! --toggle-collect='span::one_stream*' <bench binary>`, and divide the instructions by
//! 2000 (BENCHMARKS.md).

#[path = "../tests/support/inputs.rs"]
mod common;

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{Criterion, criterion_group};
use http::{Request, Response};
use http_body::Body;
use http_body_util::Empty;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanProcessor};
use tower::{Layer, Service};
use tower_sse::request::UploadBody;
use tower_sse::span::{SpanLayer, SpanObserver};
use tower_sse::{SseLayer, TimingObserver, UsageObserver};

use common::drive::{Upstream, drain, upstream};

/// A two-token completion: role, two content chunks, finish, usage, `[DONE]`.
fn short_stream() -> Vec<Bytes> {
    let events = common::chat_events();
    [0, 1, 2, 199, 200, 201]
        .into_iter()
        .map(|i| Bytes::from(events[i].clone()))
        .collect()
}

/// Drops every span it is given.
#[derive(Debug)]
struct Discard;

impl SpanProcessor for Discard {
    fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}
    fn on_end(&self, span: SpanData) {
        black_box(span);
    }
    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(
        &self,
        _: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

/// Calls `service` with a traced streaming request and drains the answer.
fn call<S, B>(mut service: S) -> usize
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes>,
{
    let request = Request::post("/v1/chat/completions")
        .header("accept", "text/event-stream")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(Empty::new())
        .expect("a valid request");
    let mut future = pin!(service.call(request));
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(response) => drain(response.expect("an answer").into_body()),
        Poll::Pending => unreachable!("in-memory services are always ready"),
    }
}

fn answer(
    body: Upstream,
) -> impl Service<
    Request<UploadBody<Empty<Bytes>>>,
    Response = Response<Upstream>,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<Upstream>, Infallible>>,
> {
    let mut body = Some(body);
    tower::service_fn(move |_: Request<UploadBody<Empty<Bytes>>>| {
        let response = Response::builder()
            .header("content-type", "text/event-stream")
            .body(body.take().expect("one call"))
            .expect("a valid response");
        std::future::ready(Ok::<_, Infallible>(response))
    })
}

/// The cases: `None` is the stack without a span layer.
#[derive(Clone)]
struct Case {
    spans: Option<SpanLayer>,
}

impl Case {
    fn new(name: &str) -> Self {
        let spans = match name {
            "off" => None,
            "disabled" => Some(SpanLayer::new().enabled(false)),
            "noop" => Some(SpanLayer::new()),
            "sdk" => {
                let provider = SdkTracerProvider::builder()
                    .with_span_processor(Discard)
                    .build();
                Some(SpanLayer::with_tracer(provider.tracer("bench")))
            }
            other => panic!("unknown case {other}"),
        };
        Self { spans }
    }
}

/// One stream through the case's stack (the function callgrind collects in).
#[inline(never)]
fn one_stream(case: &Case, chunks: &[Bytes]) -> usize {
    let body = upstream(chunks);
    match &case.spans {
        None => {
            let sse = SseLayer::new().observer((UsageObserver::new(), TimingObserver::new()));
            call(sse.layer(answer(body)))
        }
        Some(spans) => {
            let observers: (UsageObserver, TimingObserver, SpanObserver) = (
                UsageObserver::new(),
                TimingObserver::new(),
                spans.observer(),
            );
            let sse = SseLayer::new().observer(observers);
            call(spans.layer(sse.layer(answer(body))))
        }
    }
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let chunks = short_stream();
    let mut group = c.benchmark_group("span");
    for name in ["off", "disabled", "noop", "sdk"] {
        let case = Case::new(name);
        group.bench_function(name, |b| b.iter(|| one_stream(&case, &chunks)));
    }
    group.finish();
}

criterion_group!(group, benches);

fn main() {
    // A fixed number of streams of one case, for callgrind.
    if let (Ok(name), Ok(iters)) = (
        std::env::var("SPAN_BENCH"),
        std::env::var("SPAN_BENCH_ITERS"),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let case = Case::new(&name);
        let chunks = short_stream();
        let iters: usize = iters.parse().expect("SPAN_BENCH_ITERS is a number");
        // One stream first, outside the count's loop: first-use setup is not per stream.
        black_box(one_stream(&case, &chunks));
        for _ in 0..iters {
            black_box(one_stream(&case, &chunks));
        }
        return;
    }
    group();
    Criterion::default().configure_from_args().final_summary();
}
