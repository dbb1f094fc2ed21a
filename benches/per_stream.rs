//! Per-stream costs, on short streams where they are all there is.
//!
//! `cargo bench --bench per_stream`.
//!
//! - `per_stream/metrics`: `MetricsObserver` into a real Prometheus recorder, with the
//!   recorder's handles kept per label set (the default) and looked up for every stream (as
//!   before they were kept: `max_label_sets(0)`), against the same stream without the
//!   observer. Each iteration drives one short chat stream whole: the layer's call, a role
//!   chunk, two content chunks, the finish chunk, the usage chunk and `[DONE]` (6 events),
//!   polled by hand as hyper would. A stream records nine metrics at its end and one per
//!   content gap.
//! - `per_stream/service_clone`: cloning the `Sse` of a gateway's observer set (usage,
//!   timing, digest into a registry, metrics, a log line). tower's services clone their inner
//!   service in `call`, and axum clones a route's service for every request: a request
//!   through the example gateway's stack clones it about a dozen times.
//! - `per_stream/request_<size>`: what the request side costs, on a chat request of about 1 KB
//!   and about 100 KB (an LLM prompt of a few dozen pages): the body read whole by the inner
//!   service with no layer, then with `IncludeUsageLayer` (read, look at the JSON, splice
//!   `stream_options` in), `RequestDigestLayer` (SHA-256 of the body) and both, as in the
//!   example gateway. The body comes in frames of at most 16 KiB, as hyper hands an upload
//!   over (one frame for the 1 KB request). Run on a current-thread runtime (the layers'
//!   timers need one).

#[path = "../tests/support/inputs.rs"]
mod common;

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tower::{Layer, Service, ServiceExt};
use tower_sse::metrics::{buckets, names};
use tower_sse::{
    DigestObserver, DigestRegistry, IncludeUsageLayer, MetricsObserver, RequestDigestLayer,
    SseLayer, TimingObserver, TraceObserver, UsageObserver,
};

use common::drive::{drain, through, upstream};

/// A two-token completion: role, two content chunks, finish, usage, `[DONE]`.
fn short_stream() -> Vec<Bytes> {
    let events = common::chat_events();
    [0, 1, 2, 199, 200, 201]
        .into_iter()
        .map(|i| Bytes::from(events[i].clone()))
        .collect()
}

fn install_prometheus() {
    let mut builder = PrometheusBuilder::new();
    for (name, bounds) in [
        (
            names::CLIENT_OPERATION_DURATION,
            buckets::OPERATION_DURATION,
        ),
        (
            names::CLIENT_TIME_TO_FIRST_CHUNK,
            buckets::OPERATION_DURATION,
        ),
        (
            names::CLIENT_TIME_PER_OUTPUT_CHUNK,
            buckets::OPERATION_DURATION,
        ),
        (names::CLIENT_TOKEN_USAGE, buckets::TOKEN_USAGE),
        (
            names::SERVER_TIME_TO_FIRST_TOKEN,
            buckets::SERVER_TIME_TO_FIRST_TOKEN,
        ),
        (
            names::SERVER_TIME_PER_OUTPUT_TOKEN,
            buckets::SERVER_TIME_PER_OUTPUT_TOKEN,
        ),
    ] {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.into()), bounds)
            .expect("valid buckets");
    }
    builder
        .install_recorder()
        .expect("the bench's only recorder");
    tower_sse::metrics::describe();
}

fn benches(c: &mut Criterion) {
    install_prometheus();
    let chunks = short_stream();
    let total = common::total_len(&chunks);
    let layer = SseLayer::new();
    let without = layer
        .clone()
        .observer((UsageObserver::new(), TimingObserver::new()));
    let kept = layer.clone().observer((
        UsageObserver::new(),
        TimingObserver::new(),
        MetricsObserver::new(),
    ));
    let looked_up = layer.observer((
        UsageObserver::new(),
        TimingObserver::new(),
        MetricsObserver::new().max_label_sets(0),
    ));
    for layer in [&kept, &looked_up] {
        assert_eq!(drain(through(layer, upstream(&chunks))), total);
    }
    assert_eq!(drain(through(&without, upstream(&chunks))), total);

    let mut g = c.benchmark_group("per_stream/metrics");
    g.throughput(Throughput::Elements(1));
    g.bench_function("usage_timing", |b| {
        b.iter_batched(
            || upstream(&chunks),
            |u| black_box(drain(through(&without, u))),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("metrics_handles_kept", |b| {
        b.iter_batched(
            || upstream(&chunks),
            |u| black_box(drain(through(&kept, u))),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("metrics_looked_up_per_stream", |b| {
        b.iter_batched(
            || upstream(&chunks),
            |u| black_box(drain(through(&looked_up, u))),
            BatchSize::SmallInput,
        )
    });
    g.finish();

    let gateway = SseLayer::new().observer((
        UsageObserver::new(),
        TimingObserver::new(),
        DigestObserver::with_registry(DigestRegistry::new()),
        MetricsObserver::new(),
        TraceObserver,
    ));
    let service = gateway.layer(tower::service_fn(|_: http::Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    }));
    let mut g = c.benchmark_group("per_stream/service_clone");
    g.throughput(Throughput::Elements(1));
    g.bench_function("gateway_observers", |b| {
        b.iter(|| black_box(service.clone()))
    });
    g.finish();
}

/// A streaming chat request whose messages add up to about `size` bytes.
fn chat_request(size: usize) -> Bytes {
    let message = r#"{"role":"user","content":"Summarise the following text, keeping every number and name as written. \u00e9t\u00e9"}"#;
    let count = (size / (message.len() + 1)).max(1);
    let messages = vec![message; count].join(",");
    Bytes::from(format!(
        r#"{{"model":"gpt-4o-mini","messages":[{messages}],"stream":true,"temperature":0.2}}"#
    ))
}

/// The upstream of the request benches: reads the request body whole, answers `200`.
#[derive(Clone, Copy)]
struct ReadsBody;

impl<B> Service<http::Request<B>> for ReadsBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
{
    type Response = http::Response<Empty<Bytes>>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        Box::pin(async move {
            let read = request.into_body().collect().await.is_ok();
            assert!(read, "the request body reads whole");
            Ok(http::Response::new(Empty::new()))
        })
    }
}

/// The frames a client upload arrives in: at most 16 KiB each.
const FRAME: usize = 16 * 1024;

/// A client upload as hyper hands it over: frames of at most [`FRAME`] bytes, its length
/// known from `Content-Length`.
struct Upload(std::collections::VecDeque<Bytes>, u64);

impl Upload {
    fn new(body: &Bytes) -> Self {
        let frames = (0..body.len())
            .step_by(FRAME)
            .map(|at| body.slice(at..body.len().min(at + FRAME)))
            .collect();
        Self(frames, body.len() as u64)
    }
}

impl http_body::Body for Upload {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let frame = self.0.pop_front();
        if let Some(frame) = &frame {
            self.1 -= frame.len() as u64;
        }
        std::task::Poll::Ready(frame.map(|f| Ok(http_body::Frame::data(f))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.1)
    }
}

/// Send `body` through `service` (which reads it whole) and wait for the answer.
async fn send<S, B>(service: &S, body: Bytes) -> usize
where
    S: Service<
            http::Request<Upload>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
        > + Clone,
{
    let request = http::Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(Upload::new(&body))
        .expect("a valid request");
    let response = service.clone().oneshot(request).await.expect("infallible");
    response.status().as_u16() as usize
}

fn requests(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let reads_body = ReadsBody;
    let usage = IncludeUsageLayer::new().layer(reads_body);
    let digest = RequestDigestLayer::new().layer(reads_body);
    let both = RequestDigestLayer::new().layer(IncludeUsageLayer::new().layer(reads_body));
    for (name, size) in [("request_1k", 1024), ("request_100k", 100 * 1024)] {
        let body = chat_request(size);
        let mut g = c.benchmark_group(format!("per_stream/{name}"));
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function("no_layer", |b| {
            b.iter(|| runtime.block_on(send(&reads_body, body.clone())))
        });
        g.bench_function("include_usage", |b| {
            b.iter(|| runtime.block_on(send(&usage, body.clone())))
        });
        g.bench_function("request_digest", |b| {
            b.iter(|| runtime.block_on(send(&digest, body.clone())))
        });
        g.bench_function("both", |b| {
            b.iter(|| runtime.block_on(send(&both, body.clone())))
        });
        g.finish();
    }
}

criterion_group! {
    name = per_stream;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = benches, requests
}
criterion_main!(per_stream);
