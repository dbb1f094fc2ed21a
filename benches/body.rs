//! Per-event cost of `SseBody` against the bare upstream body, on the 200-event chat stream.
//!
//! `cargo bench --bench body`. Each iteration drives one whole stream: the layer's call
//! (per-stream setup included, amortised over 202 events), then every frame, polled with a
//! no-op waker as hyper would. Keep-alive is configured: its timer costs nothing per frame
//! (it is re-armed lazily from the time of the last frame, and only polled when the
//! upstream is pending, which an in-memory body never is).
//!
//! `body/interleaved_<n>`: `n` streams open at once, each polled for one frame in turn, as
//! a server with `n` open streams sees their events arrive: with many streams, a stream's
//! state has left the CPU's caches by its next event, so each event pays for the cache
//! lines its stream's state spreads over. One iteration is a round (`n` events); the bare
//! upstream bodies and the metered ones (usage, timing and digest observers, as a gateway
//! meters) side by side, for `n` = 1 (every stream's state in cache) and 4,096 (over 10 MB
//! of state: out of cache).

#[path = "../tests/support/inputs.rs"]
mod common;

use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use http_body::Body;
use tower_sse::sse::EventRef;
use tower_sse::{
    DigestObserver, EventContext, KeepAliveConfig, Observer, SseLayer, TimingObserver,
    UsageObserver,
};

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

type BoxedBody = Pin<Box<dyn Body<Data = Bytes, Error = tower_sse::BoxError>>>;

/// `n` streams open at once, polled one frame each in turn, round after round; the time of
/// the rounds of `rounds` events per stream, per round. New streams replace the drained
/// ones between measurements (not timed).
fn interleaved(
    n: usize,
    rounds: usize,
    open: &dyn Fn() -> BoxedBody,
) -> impl FnMut(u64) -> Duration {
    let mut cx = Context::from_waker(Waker::noop());
    let mut streams: Vec<BoxedBody> = (0..n).map(|_| open()).collect();
    let mut round = 0;
    move |iters| {
        let mut elapsed = Duration::ZERO;
        let mut done = 0;
        while done < iters {
            if round == rounds {
                streams = (0..n).map(|_| open()).collect();
                round = 0;
            }
            let batch = (iters - done).min((rounds - round) as u64);
            let start = Instant::now();
            for _ in 0..batch {
                poll_round(&mut streams, &mut cx);
            }
            elapsed += start.elapsed();
            round += batch as usize;
            done += batch;
        }
        elapsed
    }
}

/// One frame from each stream (a function of its own, so that a profiler can count inside
/// it alone: `valgrind --tool=callgrind --toggle-collect='body::poll_round'`).
#[inline(never)]
fn poll_round(streams: &mut [BoxedBody], cx: &mut Context<'_>) {
    for stream in streams {
        match stream.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                black_box(frame.data_ref().map_or(0, Bytes::len));
            }
            other => panic!("a frame was expected: {:?}", other.is_ready()),
        }
    }
}

fn interleaved_benches(c: &mut Criterion) {
    let chunks = common::one_bytes_per_event();
    let metered = SseLayer::new()
        .keep_alive(KeepAliveConfig::new().interval(Duration::from_secs(15)))
        .observer((
            UsageObserver::new(),
            TimingObserver::new(),
            DigestObserver::new(),
        ));
    // Every stream ends with `[DONE]`; the rounds stop before the last events.
    let rounds = chunks.len() - 2;
    let bare = || -> BoxedBody {
        Box::pin(http_body_util::BodyExt::map_err(
            upstream(&chunks),
            |e| match e {},
        ))
    };
    let sse = || -> BoxedBody {
        Box::pin(http_body_util::BodyExt::map_err(
            through(&metered, upstream(&chunks)),
            |_| -> tower_sse::BoxError { "the stream failed".into() },
        ))
    };
    for n in [1, 4096] {
        let mut g = c.benchmark_group(format!("body/interleaved_{n}"));
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function("bare_body", |b| {
            b.iter_custom(interleaved(n, rounds, &bare))
        });
        g.bench_function("sse_body_usage_timing_digest", |b| {
            b.iter_custom(interleaved(n, rounds, &sse))
        });
        g.finish();
    }
}

criterion_group! {
    name = body;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = benches, interleaved_benches
}
criterion_main!(body);
