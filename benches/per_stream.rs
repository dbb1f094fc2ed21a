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
//! - `per_stream/service_clone`: cloning the `SseService` of a gateway's observer set (usage,
//!   timing, digest into a registry, metrics, a log line). tower's services clone their inner
//!   service in `call`, and axum clones a route's service for every request: a request
//!   through the example gateway's stack clones it about a dozen times.

#[path = "../tests/support/inputs.rs"]
mod common;

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tower::Layer;
use tower_sse::metrics::{buckets, names};
use tower_sse::{
    DigestObserver, DigestRegistry, MetricsObserver, SseLayer, TimingObserver, TraceObserver,
    UsageObserver,
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

criterion_group! {
    name = per_stream;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = benches
}
criterion_main!(per_stream);
