//! Per-event cost of `SseBody` against the bare upstream body, on the 200-event chat stream.
//!
//! `cargo bench --bench body`. Each iteration drives one whole stream: the layer's call
//! (per-stream setup included, amortised over 202 events), then every frame, polled with a
//! no-op waker as hyper would. Keep-alive is configured: its timer costs nothing per frame
//! (it is re-armed lazily from the time of the last frame, and only polled when the
//! upstream is pending, which an in-memory body never is).

#[path = "../tests/support/inputs.rs"]
mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tower_sse::sse::EventRef;
use tower_sse::{EventContext, KeepAliveConfig, Observer, SseLayer, TimingObserver, UsageObserver};

use common::drive::{drain, through, upstream};

/// An observer that does a little: counts events and content events.
#[derive(Clone, Default)]
struct Count(u64, u64);

impl Observer for Count {
    #[inline]
    fn on_event(&mut self, _: &EventRef<'_>, cx: &mut EventContext<'_>) {
        self.0 += 1;
        self.1 += u64::from(cx.is_content());
    }
}

/// What hand-rolled gateway taps do: parse every event into a `serde_json::Value`, then
/// look for usage in it.
#[derive(Clone, Default)]
struct ValueTap(u64);

impl Observer for ValueTap {
    #[inline]
    fn on_event(&mut self, event: &EventRef<'_>, _: &mut EventContext<'_>) {
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(event.data_bytes())
            && let Some(tokens) = value.get("usage").and_then(|u| u.get("completion_tokens"))
        {
            self.0 += tokens.as_u64().unwrap_or(0);
        }
    }
}

fn benches(c: &mut Criterion) {
    let layer =
        SseLayer::new().keep_alive(KeepAliveConfig::new().interval(Duration::from_secs(15)));
    let observed = layer.clone().observer(Count::default());
    for (name, chunks) in [
        ("body/a_one_bytes_per_event", common::one_bytes_per_event()),
        ("body/b_7_61_splits", common::split_7_61()),
    ] {
        let total = common::total_len(&chunks);
        assert_eq!(drain(upstream(&chunks)), total);
        assert_eq!(drain(through(&layer, upstream(&chunks))), total);
        assert_eq!(drain(through(&observed, upstream(&chunks))), total);

        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Elements(202));
        g.bench_function("bare_body", |b| {
            b.iter_batched(
                || upstream(&chunks),
                |u| black_box(drain(u)),
                BatchSize::SmallInput,
            )
        });
        g.bench_function("sse_body", |b| {
            b.iter_batched(
                || upstream(&chunks),
                |u| black_box(drain(through(&layer, u))),
                BatchSize::SmallInput,
            )
        });
        g.bench_function("sse_body_trivial_observer", |b| {
            b.iter_batched(
                || upstream(&chunks),
                |u| black_box(drain(through(&observed, u))),
                BatchSize::SmallInput,
            )
        });
        g.finish();
    }

    // Issue 4: the full metering stack (decode, keep-alive, usage, timing) on the 200-event
    // chat stream, against the bare body and against a `serde_json::Value`-per-event tap.
    let metering = layer
        .clone()
        .observer((UsageObserver::new(), TimingObserver::new()));
    let value_tap = layer.observer(ValueTap::default());
    let chunks = common::one_bytes_per_event();
    let mut g = c.benchmark_group("metering/a_one_bytes_per_event");
    g.throughput(Throughput::Elements(202));
    g.bench_function("bare_body", |b| {
        b.iter_batched(
            || upstream(&chunks),
            |u| black_box(drain(u)),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("sse_body_usage_timing", |b| {
        b.iter_batched(
            || upstream(&chunks),
            |u| black_box(drain(through(&metering, u))),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("sse_body_value_tap", |b| {
        b.iter_batched(
            || upstream(&chunks),
            |u| black_box(drain(through(&value_tap, u))),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = body;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = benches
}
criterion_main!(body);
