//! The digest path against SHA-256 alone over the same bytes, and the whole layer with and
//! without the digest observer, on the 200-event chat stream, in one run.
//!
//! `cargo bench --bench digest --features registry` (the registry lines need the feature).
//! Groups:
//!
//! - `digest/observer_per_event`: `sha256_alone` hashes the 202 event slices and finalizes;
//!   `digest_observer` drives a fresh `DigestObserver` through the same slices as the layer
//!   does (`on_event` then `on_data` per event, `on_end`); `digest_observer_registry` adds a
//!   registry (one insert per stream, at `[DONE]`).
//! - `digest/layer`: one whole stream through `SseLayer` (setup included, polled with a
//!   no-op waker as hyper would), without an observer, with `DigestObserver`, and with
//!   `DigestObserver::with_registry`.

#[path = "../tests/support/inputs.rs"]
mod common;

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;
#[cfg(feature = "registry")]
use tower_sse::DigestRegistry;
use tower_sse::Sha256Digest as Digest;
use tower_sse::provider::Provider;
use tower_sse::sse::EventRef;
use tower_sse::{DigestObserver, EventContext, Observer, SseLayer, StreamReport};

use common::drive::{drain, through, upstream};

/// A report as the layer makes it (with the response id and model of the stream), to drive
/// an observer by hand.
fn report_of(chunks: &[Bytes]) -> StreamReport {
    let slot = Arc::new(Mutex::new(None));
    let sink = {
        let slot = slot.clone();
        move |report| *slot.lock().unwrap() = Some(report)
    };
    drain(through(&SseLayer::new().on_end(sink), upstream(chunks)));
    let report = slot.lock().unwrap().take().unwrap();
    assert!(report.response_id.is_some());
    report
}

/// The observer as the layer drives it: per event `on_event` then `on_data` (one event per
/// frame here), then `on_end`.
fn observe<O: Observer>(
    mut observer: O,
    events: &[(Bytes, usize)],
    report: &mut StreamReport,
) -> Option<Digest> {
    let at = Instant::now();
    for (raw, data_end) in events {
        let event = EventRef::new(b"", &raw[6..*data_end], raw);
        let mut cx = EventContext::new(at, true, Provider::OpenAiChat, report);
        observer.on_event(&event, &mut cx);
        observer.on_data(raw, report);
    }
    observer.on_end(report);
    report.digest
}

fn sha256_alone(chunks: &[Bytes]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for chunk in chunks {
        hasher.update(chunk);
    }
    hasher.finalize().into()
}

fn benches(c: &mut Criterion) {
    let chunks = common::one_bytes_per_event();
    let events: Vec<(Bytes, usize)> = chunks
        .iter()
        .map(|c| {
            assert!(c.starts_with(b"data: ") && c.ends_with(b"\n\n"));
            (c.clone(), c.len() - 2)
        })
        .collect();
    let all: Vec<u8> = chunks.concat();
    let expected = Digest::of(&all);
    let mut report = report_of(&chunks);
    let plain = DigestObserver::new();
    #[cfg(feature = "registry")]
    let registry = DigestRegistry::new();
    #[cfg(feature = "registry")]
    let registered = DigestObserver::with_registry(registry.clone());

    // Same answers on every path.
    assert_eq!(Digest(sha256_alone(&chunks)), expected);
    assert_eq!(observe(plain.clone(), &events, &mut report), Some(expected));
    #[cfg(feature = "registry")]
    {
        assert_eq!(
            observe(registered.clone(), &events, &mut report),
            Some(expected)
        );
        let id = report.response_id.clone().unwrap();
        assert_eq!(
            registry
                .get(tower_sse::request::Tenant::anonymous(), &id)
                .unwrap()
                .response_digest,
            expected
        );
    }

    let mut g = c.benchmark_group("digest/observer_per_event");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("sha256_alone", |b| {
        b.iter(|| black_box(sha256_alone(black_box(&chunks))))
    });
    g.bench_function("digest_observer", |b| {
        b.iter(|| black_box(observe(plain.clone(), black_box(&events), &mut report)))
    });
    #[cfg(feature = "registry")]
    g.bench_function("digest_observer_registry", |b| {
        b.iter(|| black_box(observe(registered.clone(), black_box(&events), &mut report)))
    });
    g.finish();

    let bare = SseLayer::new();
    let digest = SseLayer::new().observer(DigestObserver::new());
    let total = all.len();
    assert_eq!(drain(through(&bare, upstream(&chunks))), total);
    assert_eq!(drain(through(&digest, upstream(&chunks))), total);
    #[cfg(feature = "registry")]
    let digest_registry = SseLayer::new().observer(DigestObserver::with_registry(registry));
    #[cfg(feature = "registry")]
    assert_eq!(drain(through(&digest_registry, upstream(&chunks))), total);

    let mut g = c.benchmark_group("digest/layer");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("sse_body", |b| {
        b.iter_batched(
            || upstream(&chunks),
            |u| black_box(drain(through(&bare, u))),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("sse_body_digest", |b| {
        b.iter_batched(
            || upstream(&chunks),
            |u| black_box(drain(through(&digest, u))),
            BatchSize::SmallInput,
        )
    });
    #[cfg(feature = "registry")]
    g.bench_function("sse_body_digest_registry", |b| {
        b.iter_batched(
            || upstream(&chunks),
            |u| black_box(drain(through(&digest_registry, u))),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = digest;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(40);
    targets = benches
}
criterion_main!(digest);
