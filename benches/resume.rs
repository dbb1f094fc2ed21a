//! The cost of resumable streams, in one run, as ratios against the plain layer.
//!
//! `cargo bench --bench resume`:
//!
//! - `resume/a_one_bytes_per_event`: the 200-event chat stream (202 events) through
//!   `SseLayer` alone, and through `ResumeLayer` + `SseLayer` (spawned producer, stamping,
//!   the log, one reader), each driven to its end on a current-thread Tokio runtime. The
//!   difference over 202 events is the per-event overhead (per-stream setup included).
//! - `resume_replay`: a finished 10 000-event log (about 2 MB) replayed to one resuming
//!   reader: throughput in bytes.
//! - Memory per open resumable stream: printed once (heap bytes held by 1 000 open streams
//!   with 10 events each, per stream, events included), counted by the allocator.

#[path = "../tests/support/inputs.rs"]
mod common;

use std::alloc::System;
use std::convert::Infallible;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::stream;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, StreamBody};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt};
use tower_sse::request::UploadBody;
use tower_sse::resume::{Detach, MemoryStore, StreamId};
use tower_sse::{BoxError, ResumeLayer, SseLayer};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

type UpBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

fn upstream(chunks: &[Bytes]) -> UpBody {
    let frames: Vec<_> = chunks
        .iter()
        .cloned()
        .map(|c| Ok::<_, BoxError>(Frame::data(c)))
        .collect();
    StreamBody::new(stream::iter(frames)).boxed()
}

/// A service answering every request with the next prepared body as an SSE response.
fn service(
    next: Arc<Mutex<Option<UpBody>>>,
) -> impl Service<
    Request<UploadBody<Empty<Bytes>>>,
    Response = Response<UpBody>,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<UpBody>, Infallible>>,
> + Clone {
    tower::service_fn(move |_: Request<UploadBody<Empty<Bytes>>>| {
        let body = next.lock().unwrap().take().expect("a prepared body");
        let response = Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap();
        std::future::ready(Ok::<_, Infallible>(response))
    })
}

async fn drain<B: Body<Data = Bytes>>(body: B) -> usize
where
    B::Error: std::fmt::Debug,
{
    let mut body = std::pin::pin!(body);
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        total += frame.unwrap().data_ref().map_or(0, Bytes::len);
    }
    total
}

fn request(last_event_id: Option<String>) -> Request<Empty<Bytes>> {
    let mut request = Request::post("/v1/chat/completions");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    request.body(Empty::new()).unwrap()
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn per_event(c: &mut Criterion) {
    let single = common::one_bytes_per_event();
    // The same stream ten times over: per-stream costs amortised over 2 020 events.
    let long: Vec<Bytes> = single
        .iter()
        .cycle()
        .take(single.len() * 10)
        .cloned()
        .collect();
    for (name, chunks) in [
        ("resume/a_one_bytes_per_event", single),
        ("resume/b_2020_events", long),
    ] {
        per_event_of(c, name, &chunks);
    }
}

fn per_event_of(c: &mut Criterion, name: &str, chunks: &[Bytes]) {
    let events = chunks.len() as u64;
    let runtime = runtime();
    let next = Arc::new(Mutex::new(None));
    let plain = SseLayer::new().layer(service(next.clone()));
    let resumable = ResumeLayer::new()
        .detach(Detach::Finish)
        .layer(SseLayer::new().layer(service(next.clone())));

    let total = common::total_len(chunks);
    *next.lock().unwrap() = Some(upstream(chunks));
    let plain_len = runtime.block_on(async {
        drain(
            plain
                .clone()
                .oneshot(request(None))
                .await
                .unwrap()
                .into_body(),
        )
        .await
    });
    assert_eq!(plain_len, total);
    *next.lock().unwrap() = Some(upstream(chunks));
    let resumed_len = runtime.block_on(async {
        drain(
            resumable
                .clone()
                .oneshot(request(None))
                .await
                .unwrap()
                .into_body(),
        )
        .await
    });
    // Each event gains its `id: <22 chars>.<seq>\n` line.
    assert!(resumed_len > total);

    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(events));
    g.bench_function("sse_layer", |b| {
        b.iter(|| {
            *next.lock().unwrap() = Some(upstream(chunks));
            runtime.block_on(async {
                let response = plain.clone().oneshot(request(None)).await.unwrap();
                black_box(drain(response.into_body()).await)
            })
        })
    });
    g.bench_function("resume_layer_sse_layer", |b| {
        b.iter(|| {
            *next.lock().unwrap() = Some(upstream(chunks));
            runtime.block_on(async {
                let response = resumable.clone().oneshot(request(None)).await.unwrap();
                assert!(response.headers().contains_key("sse-stream-id"));
                black_box(drain(response.into_body()).await)
            })
        })
    });
    g.finish();
}

fn replay(c: &mut Criterion) {
    let runtime = runtime();
    let next = Arc::new(Mutex::new(None));
    let store = MemoryStore::builder()
        .max_stream_bytes(64 * 1024 * 1024)
        .build();
    let resumable = ResumeLayer::new()
        .detach(Detach::Finish)
        .store(store)
        .layer(SseLayer::new().layer(service(next.clone())));
    // 10 000 chat events of about 200 bytes, finished.
    let events: Vec<Bytes> = common::one_bytes_per_event()
        .into_iter()
        .cycle()
        .take(10_000)
        .collect();
    *next.lock().unwrap() = Some(upstream(&events));
    let (stream, bytes) = runtime.block_on(async {
        let response = resumable.clone().oneshot(request(None)).await.unwrap();
        let id = response.headers()["sse-stream-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let bytes = drain(response.into_body()).await;
        (id, bytes)
    });
    assert!(StreamId::parse(&stream).is_some());
    let from_start = format!("{stream}.0");

    let mut g = c.benchmark_group("resume_replay");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("10k_events_to_one_reader", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let response = resumable
                    .clone()
                    .oneshot(request(Some(from_start.clone())))
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                black_box(drain(response.into_body()).await)
            })
        })
    });
    g.finish();
}

/// Heap bytes held per open resumable stream (with 10 logged events of the chat stream),
/// and of a plain one, printed for BENCHMARKS.md.
fn memory(_: &mut Criterion) {
    const STREAMS: usize = 1_000;
    let runtime = runtime();
    let ten: Vec<Bytes> = common::one_bytes_per_event().into_iter().take(10).collect();
    let event_bytes = common::total_len(&ten);
    for resumable in [false, true] {
        let next = Arc::new(Mutex::new(None));
        let layer = ResumeLayer::new()
            .enabled(resumable)
            .detach(Detach::Finish)
            .store(MemoryStore::new());
        let service = layer.layer(SseLayer::new().layer(service(next.clone())));
        let region = Region::new(GLOBAL);
        let held = runtime.block_on(async {
            let mut open = Vec::with_capacity(STREAMS);
            let mut senders = Vec::with_capacity(STREAMS);
            for _ in 0..STREAMS {
                let (tx, rx) =
                    tokio::sync::mpsc::unbounded_channel::<Result<Frame<Bytes>, BoxError>>();
                for chunk in &ten {
                    tx.send(Ok(Frame::data(chunk.clone()))).unwrap();
                }
                let body = StreamBody::new(stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|item| (item, rx))
                }))
                .boxed();
                *next.lock().unwrap() = Some(body);
                let response = service.clone().oneshot(request(None)).await.unwrap();
                let mut body = Box::pin(response.into_body());
                // Read the 10 events, as a client would.
                let mut read = 0;
                while read < event_bytes {
                    let frame = body.frame().await.unwrap().unwrap();
                    read += frame.data_ref().map_or(0, Bytes::len);
                }
                open.push(body);
                senders.push(tx);
            }
            tokio::task::yield_now().await;
            let stats = region.change();
            let held = stats.bytes_allocated as i64 - stats.bytes_deallocated as i64
                + stats.bytes_reallocated as i64;
            drop(senders);
            drop(open);
            held
        });
        // The upstream bodies (channels holding nothing now) are counted in both.
        eprintln!(
            "memory: {} stream: {} bytes of heap per open stream (10 events, {} bytes of events each)",
            if resumable { "resumable" } else { "plain" },
            held / STREAMS as i64,
            event_bytes
        );
    }
}

// --- `resume_redis`: the same on Redis (feature `redis`) ---------------------------------
//
// `cargo bench -p tower-sse --features redis --bench resume -- resume_redis` starts its own
// `redis-server` on a free loopback port (nothing is measured without one):
//
// - `resume_redis/a_one_bytes_per_event`: the 202-event chat stream with `MemoryStore`, and
//   with `RedisStore` (each event also copied to Redis by the stream's writer task).
// - `resume_redis/next_event_latency`: one event, upstream to a reader on the producer's
//   replica (from memory), and to a reader that resumed on another replica (woken through
//   Redis pub/sub, then reading the stream entry).
// - Redis commands per event: printed once, from `INFO stats` around one stream.

#[cfg(feature = "redis")]
mod on_redis {
    use super::*;
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;
    use tokio::sync::mpsc;
    use tower_sse::resume::RedisStore;

    struct Redis(Child, u16);

    impl Drop for Redis {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn start_redis() -> Option<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let redis = Redis(child, port);
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(redis);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    fn commands_processed(redis: &Redis) -> u64 {
        let out = Command::new("redis-cli")
            .args(["-p", &redis.1.to_string(), "INFO", "stats"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// An upstream fed by hand, one event at a time.
    fn fed() -> (mpsc::UnboundedSender<Bytes>, UpBody) {
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            let chunk = rx.recv().await?;
            Some((Ok::<_, BoxError>(Frame::data(chunk)), rx))
        });
        (tx, StreamBody::new(frames).boxed())
    }

    /// The next data frame of a body that holds an event (keep-alives skipped).
    async fn next_event<B>(body: &mut B) -> Bytes
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Debug,
    {
        loop {
            let frame = body.frame().await.expect("more").unwrap();
            if let Ok(data) = frame.into_data()
                && data.starts_with(b"id:")
            {
                return data;
            }
        }
    }

    pub(super) fn redis(c: &mut Criterion) {
        let Some(redis) = start_redis() else {
            eprintln!("resume_redis: no redis-server on this machine, nothing measured");
            return;
        };
        let url = format!("redis://127.0.0.1:{}/", redis.1);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let chunks = common::one_bytes_per_event();
        let events = chunks.len() as u64;
        let next = Arc::new(Mutex::new(None));
        let store = |url: &str| RedisStore::builder(url).unwrap().build();
        let memory = ResumeLayer::new()
            .detach(Detach::Finish)
            .store(MemoryStore::new())
            .layer(SseLayer::new().layer(service(next.clone())));
        let on_redis = ResumeLayer::new()
            .detach(Detach::Finish)
            .store(store(&url))
            .layer(SseLayer::new().layer(service(next.clone())));

        // Redis commands per event, over one whole stream (after a warm-up stream).
        for round in 0..2 {
            let before = commands_processed(&redis);
            *next.lock().unwrap() = Some(upstream(&chunks));
            runtime.block_on(async {
                let response = on_redis.clone().oneshot(request(None)).await.unwrap();
                assert!(response.headers().contains_key("sse-stream-id"));
                drain(response.into_body()).await
            });
            // Let the last appends land.
            std::thread::sleep(Duration::from_millis(200));
            let after = commands_processed(&redis);
            if round == 1 {
                eprintln!(
                    "resume_redis: {} Redis commands for a {events}-event stream ({:.2} per event, \
                     one pipelined round trip per event)",
                    after - before,
                    (after - before) as f64 / events as f64
                );
            }
        }

        let mut g = c.benchmark_group("resume_redis/a_one_bytes_per_event");
        g.throughput(Throughput::Elements(events));
        for (name, layer) in [("memory_store", &memory), ("redis_store", &on_redis)] {
            g.bench_function(name, |b| {
                b.iter(|| {
                    *next.lock().unwrap() = Some(upstream(&chunks));
                    runtime.block_on(async {
                        let response = layer.clone().oneshot(request(None)).await.unwrap();
                        black_box(drain(response.into_body()).await)
                    })
                })
            });
        }
        g.finish();

        // One event, upstream to reader: on the producer's replica, and on another one.
        let replica_b = ResumeLayer::new()
            .store(store(&url))
            .layer(SseLayer::new().layer(service(next.clone())));
        let (tx, body) = fed();
        *next.lock().unwrap() = Some(body);
        let (mut local, mut remote) = runtime.block_on(async {
            let response = on_redis.clone().oneshot(request(None)).await.unwrap();
            let mut local = response.into_body();
            tx.send(Bytes::from_static(b"data: first\n\n")).unwrap();
            let first = next_event(&mut local).await;
            let id = std::str::from_utf8(&first)
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("id: "))
                .unwrap()
                .to_owned();
            let resumed = replica_b.clone().oneshot(request(Some(id))).await.unwrap();
            assert_eq!(resumed.status(), 200);
            (local, resumed.into_body())
        });
        let mut g = c.benchmark_group("resume_redis/next_event_latency");
        g.bench_function("producer_replica_from_memory", |b| {
            b.iter_custom(|iterations| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iterations {
                        let start = Instant::now();
                        tx.send(Bytes::from_static(b"data: x\n\n")).unwrap();
                        black_box(next_event(&mut local).await);
                        total += start.elapsed();
                        // Keep the other reader caught up.
                        black_box(next_event(&mut remote).await);
                    }
                    total
                })
            })
        });
        g.bench_function("other_replica_through_redis", |b| {
            b.iter_custom(|iterations| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iterations {
                        let start = Instant::now();
                        tx.send(Bytes::from_static(b"data: x\n\n")).unwrap();
                        black_box(next_event(&mut remote).await);
                        total += start.elapsed();
                        black_box(next_event(&mut local).await);
                    }
                    total
                })
            })
        });
        g.finish();
        drop(tx);
    }
}

#[cfg(feature = "redis")]
use on_redis::redis;

#[cfg(not(feature = "redis"))]
fn redis(_: &mut Criterion) {}

criterion_group! {
    name = resume;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = memory, per_event, replay, redis
}
criterion_main!(resume);
