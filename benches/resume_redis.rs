//! The cost of resumable streams on Redis (`resume::RedisStore`) against the in-process
//! store, in one run, on a `redis-server` this bench starts on a free loopback port.
//!
//! `cargo bench --bench resume_redis --features redis`:
//!
//! - `resume_redis/a_one_bytes_per_event`: the 202-event chat stream through `ResumeLayer` +
//!   `SseLayer` with `MemoryStore`, and with `RedisStore` (every event also appended to Redis
//!   in one pipelined round trip: `XADD`, two `PEXPIRE`, the lease, `PUBLISH`).
//! - `resume_redis/next_event_latency`: one event, from the upstream to a reader: the
//!   producer's own replica (served from memory) against a reader that resumed on another
//!   replica (woken through Redis pub/sub, then reading the stream entry).
//! - Redis commands per event: printed once, from `INFO stats` before and after one stream.

#[path = "../tests/support/inputs.rs"]
mod common;

use std::convert::Infallible;
use std::hint::black_box;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::stream;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, StreamBody};
use tokio::sync::mpsc;
use tower::{Layer, Service, ServiceExt};
use tower_sse::resume::{Detach, MemoryStore, RedisStore};
use tower_sse::{BoxError, ResumeLayer, SseLayer};

type UpBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

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

fn service(
    next: Arc<Mutex<Option<UpBody>>>,
) -> impl Service<
    Request<Empty<Bytes>>,
    Response = Response<UpBody>,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<UpBody>, Infallible>>,
> + Clone {
    tower::service_fn(move |_: Request<Empty<Bytes>>| {
        let body = next.lock().unwrap().take().expect("a prepared body");
        let response = Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap();
        std::future::ready(Ok::<_, Infallible>(response))
    })
}

fn upstream(chunks: &[Bytes]) -> UpBody {
    let frames: Vec<_> = chunks
        .iter()
        .cloned()
        .map(|c| Ok::<_, BoxError>(Frame::data(c)))
        .collect();
    StreamBody::new(stream::iter(frames)).boxed()
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

fn request(last_event_id: Option<&str>) -> Request<Empty<Bytes>> {
    let mut request = Request::get("/v1/chat/completions");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    request.body(Empty::new()).unwrap()
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

fn bench(c: &mut Criterion) {
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
        let resumed = replica_b.clone().oneshot(request(Some(&id))).await.unwrap();
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

criterion_group! {
    name = resume_redis;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(resume_redis);
