//! Resumable streams on a real `redis-server` (feature `redis`): a stream produced on one
//! replica resumes on another with every event once; and what happens when Redis is down at
//! the start, lost mid-stream, back again, full or slow. Each test starts its own
//! `redis-server` on a free loopback port (the system package; CI installs it).

#![cfg(feature = "redis")]

mod support;

use std::convert::Infallible;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty};
use support::body::{ChannelBody, Item, channel};
use support::redis::Redis;
use support::sse::client_view;
use tokio::sync::mpsc::UnboundedSender;
use tower::{Layer, Service, ServiceExt};
use tower_sse::resume::{RedisStore, StreamId};
use tower_sse::{BoxError, ResumeLayer, SseLayer};

type UpBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// The upstream's answer: an event stream fed by `body`, or an empty one when this test has
/// no upstream left for the request.
fn stream_answer(body: Option<ChannelBody>) -> Response<UpBody> {
    let body: UpBody = match body {
        Some(body) => body.map_err(Into::into).boxed(),
        None => Empty::new().map_err(|e| match e {}).boxed(),
    };
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap()
}

/// One replica: `ResumeLayer` (on `store`) ─► `SseLayer` ─► an upstream whose one answer is
/// a stream fed by the returned sender.
fn replica(
    store: RedisStore,
    upstream: Option<ChannelBody>,
) -> impl Service<
    Request<Empty<Bytes>>,
    Response = Response<impl Body<Data = Bytes, Error = BoxError> + Send + 'static>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let upstream = std::sync::Arc::new(std::sync::Mutex::new(upstream));
    let inner = tower::service_fn(
        move |_: Request<tower_sse::request::UploadBody<Empty<Bytes>>>| {
            std::future::ready(Ok::<_, Infallible>(stream_answer(
                upstream.lock().unwrap().take(),
            )))
        },
    );
    ResumeLayer::new()
        .store(store)
        .layer(SseLayer::new().layer(inner))
}

fn get(last_event_id: Option<&str>) -> Request<Empty<Bytes>> {
    let mut request = Request::get("/v1/chat/completions").header("authorization", "Bearer k");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    request.body(Empty::new()).unwrap()
}

fn send(tx: &UnboundedSender<Item>, data: &str) {
    tx.send(Ok(Frame::data(Bytes::from(format!("data: {data}\n\n")))))
        .unwrap();
}

/// Read `n` events of a body (or to its end); returns the bytes.
async fn read_events<B>(body: &mut B, n: usize) -> Vec<u8>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut bytes = Vec::new();
    while client_view(&bytes).events.len() < n {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the next event within 10 s");
        match frame {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                }
            }
            _ => break,
        }
    }
    bytes
}

/// Whether Redis answers a `PING` within 200 ms.
fn redis_answers_at_once(redis: &Redis) -> bool {
    let out = Command::new("timeout")
        .args(["0.2", "redis-cli", "-p", &redis.port.to_string(), "PING"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("PONG")
}

fn store(redis: &Redis) -> RedisStore {
    store_at(&redis.url())
}

fn store_at(url: &str) -> RedisStore {
    RedisStore::builder(url)
        .unwrap()
        .poll(Duration::from_millis(100))
        .lease(Duration::from_secs(1))
        .build()
}

#[tokio::test]
async fn a_stream_cut_on_one_replica_resumes_on_another_with_every_event_once() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let (tx, upstream) = channel();
    let a = replica(store(&redis), Some(upstream));
    let b = replica(store(&redis), None);

    let response = a.clone().oneshot(get(None)).await.unwrap();
    let stream = response.headers()["sse-stream-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(StreamId::parse(&stream).is_some());
    let mut body = response.into_body();
    for i in 1..=3 {
        send(&tx, &format!("e{i}"));
    }
    let first = read_events(&mut body, 3).await;
    let seen = client_view(&first);
    assert_eq!(seen.events.len(), 3);
    // The client goes away; the upstream goes on.
    drop(body);
    for i in 4..=6 {
        send(&tx, &format!("e{i}"));
    }

    // It comes back on the other replica, with the id of the last event it got.
    let response = b.oneshot(get(Some(&seen.last_event_id))).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let replayed = read_events(&mut body, 3).await;
    // The live tail reaches it on the other replica too (wake-ups through Redis).
    send(&tx, "e7");
    drop(tx);
    let rest = read_events(&mut body, 2).await;
    let all: Vec<String> = [first, replayed, rest]
        .iter()
        .flat_map(|bytes| client_view(bytes).events)
        .map(|(_, data, _)| data)
        .collect();
    assert_eq!(all, ["e1", "e2", "e3", "e4", "e5", "e6", "e7"]);
}

#[tokio::test]
async fn another_tenant_or_an_unknown_id_gets_204_on_any_replica() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let (tx, upstream) = channel();
    let a = replica(store(&redis), Some(upstream));
    let b = replica(store(&redis), None);
    let response = a.oneshot(get(None)).await.unwrap();
    let mut body = response.into_body();
    send(&tx, "one");
    let bytes = read_events(&mut body, 1).await;
    let id = client_view(&bytes).last_event_id;

    let mut other = get(Some(&id));
    other
        .headers_mut()
        .insert("authorization", "Bearer someone-else".parse().unwrap());
    assert_eq!(b.clone().oneshot(other).await.unwrap().status(), 204);
    let unknown = format!("{}.1", StreamId::random().unwrap());
    assert_eq!(b.oneshot(get(Some(&unknown))).await.unwrap().status(), 204);
    drop(tx);
}

#[tokio::test]
async fn redis_down_at_the_start_serves_a_plain_stream_and_back_again_resumable() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let port = redis.stop();
    let store = store_at(&format!("redis://127.0.0.1:{port}/"));
    let (tx, upstream) = channel();
    let a = replica(store.clone(), Some(upstream));
    let response = a.oneshot(get(None)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["sse-resume"], "off");
    let mut body = response.into_body();
    send(&tx, "plain");
    drop(tx);
    let bytes = read_events(&mut body, 1).await;
    assert_eq!(bytes, b"data: plain\n\n", "no ids: not resumable");

    // Redis comes back: the same store makes resumable streams again, no restart.
    let _redis = Redis::start_on(port);
    let (tx, upstream) = channel();
    let a = replica(store, Some(upstream));
    let response = a.oneshot(get(None)).await.unwrap();
    assert!(response.headers().contains_key("sse-stream-id"));
    drop(tx);
}

#[tokio::test]
async fn redis_lost_mid_stream_the_live_stream_goes_on_and_remote_resumes_get_204() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let (tx, upstream) = channel();
    let a = replica(store(&redis), Some(upstream));
    let b = replica(store(&redis), None);
    let response = a.oneshot(get(None)).await.unwrap();
    let mut body = response.into_body();
    send(&tx, "before");
    let first = read_events(&mut body, 1).await;
    let id = client_view(&first).last_event_id;

    redis.stop();
    for i in 1..=3 {
        send(&tx, &format!("after{i}"));
    }
    drop(tx);
    let rest = read_events(&mut body, 3).await;
    let data: Vec<String> = client_view(&rest)
        .events
        .into_iter()
        .map(|(_, data, _)| data)
        .collect();
    assert_eq!(data, ["after1", "after2", "after3"], "nothing lost live");
    // The other replica cannot answer without Redis: 204, never 5xx, and it says why.
    let answer = b.oneshot(get(Some(&id))).await.unwrap();
    assert_eq!(answer.status(), 204);
    assert_eq!(answer.headers()["sse-resume"], "unavailable");
}

#[tokio::test]
async fn a_full_redis_never_holds_up_the_live_stream() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let (tx, upstream) = channel();
    let a = replica(store(&redis), Some(upstream));
    let response = a.oneshot(get(None)).await.unwrap();
    let mut body = response.into_body();
    send(&tx, "one");
    read_events(&mut body, 1).await;
    // Full: writes are refused (OOM with noeviction).
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    redis.cli(&["CONFIG", "SET", "maxmemory", "1"]);
    for data in ["two", "three"] {
        send(&tx, data);
        let bytes = read_events(&mut body, 1).await;
        assert_eq!(client_view(&bytes).events[0].1, data);
    }
    drop(tx);
    // A new stream while it is full: served, not resumable.
    let (tx, upstream) = channel();
    let response = replica(store(&redis), Some(upstream))
        .oneshot(get(None))
        .await
        .unwrap();
    assert_eq!(response.headers()["sse-resume"], "off");
    drop(tx);
}

#[tokio::test]
async fn a_slow_redis_never_holds_up_the_live_stream() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let (tx, upstream) = channel();
    let a = replica(store(&redis), Some(upstream));
    let response = a.oneshot(get(None)).await.unwrap();
    let mut body = response.into_body();
    send(&tx, "one");
    read_events(&mut body, 1).await;
    // The server sleeps for 2 s.
    let sleeper = std::thread::spawn({
        let port = redis.port.to_string();
        move || {
            let _ = Command::new("redis-cli")
                .args(["-p", &port, "DEBUG", "SLEEP", "2"])
                .output();
        }
    });
    // Wait until it is asleep (a ping no longer answers at once).
    while redis_answers_at_once(&redis) {
        std::thread::sleep(Duration::from_millis(10));
    }
    for data in ["two", "three"] {
        send(&tx, data);
        let bytes = read_events(&mut body, 1).await;
        assert_eq!(client_view(&bytes).events[0].1, data);
    }
    // The events came while Redis still slept: the stream did not wait for it.
    assert!(!sleeper.is_finished(), "the live stream waited for Redis");
    sleeper.join().unwrap();
    drop(tx);
}

/// A live upstream silent for longer than the lease (a model thinking before its first token)
/// is not taken for dead: its producer renews the lease on a heartbeat, so a resume on
/// another replica is served and its reader gets what follows the silence. (The lease lives
/// in Redis's clock: the silence is real time, three leases of 300 ms.)
#[tokio::test]
async fn a_silent_upstream_keeps_its_lease_on_every_replica() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let short_lease = |redis: &Redis| {
        RedisStore::builder(&redis.url())
            .unwrap()
            .poll(Duration::from_millis(100))
            .lease(Duration::from_millis(300))
            .build()
    };
    let (tx, upstream) = channel();
    let a = replica(short_lease(&redis), Some(upstream));
    let b = replica(short_lease(&redis), None);
    let response = a.oneshot(get(None)).await.unwrap();
    let mut body = response.into_body();
    send(&tx, "before");
    let first = read_events(&mut body, 1).await;
    let id = client_view(&first).last_event_id;

    // Silent for three leases.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        redis
            .cli(&[
                "EXISTS",
                &format!("tower-sse:{{{}}}:lease", id.split('.').next().unwrap())
            ])
            .as_deref()
            .map(str::trim),
        Some("1"),
        "the lease of a live producer lapsed"
    );
    let response = b.oneshot(get(Some(&id))).await.unwrap();
    assert_eq!(response.status(), 200, "a live stream was taken for dead");
    let mut remote = response.into_body();
    tokio::time::sleep(Duration::from_millis(900)).await;
    send(&tx, "after");
    drop(tx);
    let rest = read_events(&mut remote, 1).await;
    let data: Vec<_> = client_view(&rest)
        .events
        .into_iter()
        .map(|(_, data, _)| data)
        .collect();
    assert_eq!(data, ["after"]);
    assert!(
        remote.frame().await.is_none(),
        "a clean end after the last event"
    );
}

/// A replica with a short detach grace whose reports go to `reports`.
fn replica_with(
    store: RedisStore,
    upstream: Option<ChannelBody>,
    grace: Duration,
    reports: &support::body::Reports,
) -> impl Service<
    Request<Empty<Bytes>>,
    Response = Response<impl Body<Data = Bytes, Error = BoxError> + Send + 'static>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let upstream = std::sync::Arc::new(std::sync::Mutex::new(upstream));
    let inner = tower::service_fn(
        move |_: Request<tower_sse::request::UploadBody<Empty<Bytes>>>| {
            std::future::ready(Ok::<_, Infallible>(stream_answer(
                upstream.lock().unwrap().take(),
            )))
        },
    );
    ResumeLayer::new()
        .store(store)
        .detach(tower_sse::resume::Detach::CancelAfter(grace))
        .layer(
            SseLayer::new()
                .observer(tower_sse::resume::ResumeObserver::new())
                .on_end(reports.sink())
                .layer(inner),
        )
}

/// A client that leaves replica A and resumes on B at once keeps A's producer alive: its
/// reader on B is attached for A too (presence in Redis), so the upstream is not cancelled
/// after A's detach grace; B's reader gets the rest and a clean end, and A's report counts
/// the resume served by B. (Real time: the grace and the presence live in Redis's clock.)
#[tokio::test]
async fn a_reader_on_another_replica_keeps_the_producer_alive_and_is_counted() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let short_lease = |redis: &Redis| {
        RedisStore::builder(&redis.url())
            .unwrap()
            .poll(Duration::from_millis(100))
            .lease(Duration::from_millis(300))
            .build()
    };
    let reports = support::body::Reports::default();
    let grace = Duration::from_millis(500);
    let (tx, upstream) = channel();
    let a = replica_with(short_lease(&redis), Some(upstream), grace, &reports);
    let b = replica_with(short_lease(&redis), None, grace, &reports);
    let response = a.oneshot(get(None)).await.unwrap();
    let mut body = response.into_body();
    send(&tx, "e1");
    let first = read_events(&mut body, 1).await;
    let id = client_view(&first).last_event_id;
    drop(body);

    let response = b.oneshot(get(Some(&id))).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut remote = response.into_body();
    // Four graces with no reader on A.
    tokio::time::sleep(grace * 4).await;
    assert!(
        tx.send(Ok(Frame::data(Bytes::from_static(b"data: e2\n\n"))))
            .is_ok()
    );
    let rest = read_events(&mut remote, 1).await;
    let data: Vec<_> = client_view(&rest)
        .events
        .into_iter()
        .map(|(_, data, _)| data)
        .collect();
    assert_eq!(
        data,
        ["e2"],
        "the upstream was cancelled under a reader on B"
    );
    drop(tx);
    assert!(
        remote.frame().await.is_none(),
        "a clean end after the last event"
    );
    let report = reports.one();
    assert_eq!(report.outcome, tower_sse::Outcome::Completed);
    let summary = report
        .extensions
        .get::<tower_sse::resume::ResumeSummary>()
        .unwrap();
    assert_eq!(
        (summary.connections, summary.resumes),
        (2, 1),
        "{summary:?}"
    );
}

/// A resume served by another replica while the producer still has a reader of its own
/// (so it never needs to look for readers elsewhere), shortly before the stream ends, is in
/// the producer's report: the reader's replica tells the producer at once. (Before, the
/// producer only learnt of it from a look made while it had no reader of its own: the
/// report said one connection, no resume.)
#[tokio::test]
async fn a_resume_on_another_replica_just_before_the_end_is_in_the_report() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let reports = support::body::Reports::default();
    let grace = Duration::from_secs(30);
    let (tx, upstream) = channel();
    let a = replica_with(store(&redis), Some(upstream), grace, &reports);
    let b = replica_with(store(&redis), None, grace, &reports);
    // The first client stays on A to the end.
    let mut local = a.oneshot(get(None)).await.unwrap().into_body();
    send(&tx, "e1");
    let first = read_events(&mut local, 1).await;
    let id = client_view(&first).last_event_id;

    // A second connection resumes on B and reads the live tail there.
    let response = b.oneshot(get(Some(&id))).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut remote = response.into_body();
    send(&tx, "e2");
    let rest = read_events(&mut remote, 1).await;
    assert_eq!(client_view(&rest).events[0].1, "e2");
    // The stream ends a moment later (the wake-up's round trip, not a presence interval).
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(tx);
    assert_eq!(
        client_view(&read_events(&mut local, 2).await).events.len(),
        1
    );
    let report = reports.one();
    assert_eq!(report.outcome, tower_sse::Outcome::Completed);
    let summary = report
        .extensions
        .get::<tower_sse::resume::ResumeSummary>()
        .unwrap();
    assert_eq!(
        (summary.connections, summary.resumes),
        (2, 1),
        "the resume served by B: {summary:?}"
    );
}

/// Resume on `replica` at `id` until it is served (Redis coming back), for up to 5 s.
async fn resume_until_served<S, B>(replica: &S, id: &str) -> Response<B>
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>, Error = Infallible> + Clone,
{
    for _ in 0..50 {
        let response = replica.clone().oneshot(get(Some(id))).await.unwrap();
        if response.status() == 200 {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never served after Redis came back");
}

/// Redis restarts (empty) in the middle of a stream: once it is back, the mirror re-syncs
/// from the producer's in-process log, so a resume on another replica gets every event,
/// those of the outage included, once each.
#[tokio::test]
async fn after_a_redis_restart_the_mirror_resyncs_from_the_in_process_log() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let url = redis.url();
    let store = |url: &str| {
        RedisStore::builder(url)
            .unwrap()
            .poll(Duration::from_millis(100))
            .lease(Duration::from_millis(300))
            .build()
    };
    let (tx, upstream) = channel();
    let a = replica(store(&url), Some(upstream));
    let b = replica(store(&url), None);
    let response = a.oneshot(get(None)).await.unwrap();
    let mut body = response.into_body();
    send(&tx, "before");
    let first = read_events(&mut body, 1).await;
    let id = client_view(&first).last_event_id;

    let port = redis.stop();
    for i in 1..=3 {
        send(&tx, &format!("during{i}"));
    }
    read_events(&mut body, 3).await;
    let _redis = Redis::start_on(port);
    let response = resume_until_served(&b, &id).await;
    let mut remote = response.into_body();
    let replayed = read_events(&mut remote, 3).await;
    send(&tx, "after");
    drop(tx);
    let rest = read_events(&mut remote, 1).await;
    let data: Vec<String> = [replayed, rest]
        .iter()
        .flat_map(|bytes| client_view(bytes).events)
        .map(|(_, data, _)| data)
        .collect();
    assert_eq!(data, ["during1", "during2", "during3", "after"]);
    assert!(remote.frame().await.is_none(), "a clean end");
}

/// Redis refusing writes (full) for longer than the producer's in-process log can bridge:
/// the mirror marks the
/// stream's Redis log lost from its last entry, so a resume past it on another replica is
/// answered `204` with `sse-resume: gone`, and a reader there meets the gap explicitly:
/// never a silent one.
#[tokio::test]
async fn a_mirror_that_cannot_resync_marks_the_gap() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let url = redis.url();
    let store = |url: &str| {
        RedisStore::builder(url)
            .unwrap()
            .poll(Duration::from_millis(100))
            .lease(Duration::from_millis(300))
            .local(
                tower_sse::resume::MemoryStore::builder()
                    .max_stream_events(2)
                    .build(),
            )
            .build()
    };
    let (tx, upstream) = channel();
    let a = replica(store(&url), Some(upstream));
    let b = replica(store(&url), None);
    let response = a.oneshot(get(None)).await.unwrap();
    let mut body = response.into_body();
    send(&tx, "e1");
    let first = read_events(&mut body, 1).await;
    let id = client_view(&first).last_event_id;
    // Wait until the mirror has it.
    let _ = resume_until_served(&b, &format!("{}.0", id.split('.').next().unwrap())).await;

    // Redis refuses every write (full), then takes them again, with its data.
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    redis.cli(&["CONFIG", "SET", "maxmemory", "1"]);
    for i in 2..=6 {
        send(&tx, &format!("e{i}"));
        read_events(&mut body, 1).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.cli(&["CONFIG", "SET", "maxmemory", "0"]);
    let stream = id.split('.').next().unwrap().to_owned();
    let mut marked = false;
    for _ in 0..50 {
        if redis
            .cli(&["HGET", &format!("tower-sse:{{{stream}}}:meta"), "lost"])
            .is_some_and(|out| out.trim() == "1")
        {
            marked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(marked, "the mirror never said where its gap starts");
    let answer = b.clone().oneshot(get(Some(&id))).await.unwrap();
    assert_eq!(answer.status(), 204);
    assert_eq!(answer.headers()["sse-resume"], "gone");
    // A reader from before the gap gets what Redis has, then the error event, then a
    // broken end.
    let answer = b.oneshot(get(Some(&format!("{stream}.0")))).await.unwrap();
    assert_eq!(answer.status(), 200);
    let mut remote = answer.into_body();
    let mut bytes = Vec::new();
    let broken = loop {
        match tokio::time::timeout(Duration::from_secs(10), remote.frame())
            .await
            .expect("an answer within 10 s")
        {
            Some(Ok(frame)) => bytes.extend_from_slice(frame.data_ref().unwrap()),
            Some(Err(_)) => break true,
            None => break false,
        }
    };
    let events = client_view(&bytes).events;
    assert_eq!(events[0].1, "e1");
    assert_eq!(events.last().unwrap().0, "error");
    assert!(events.last().unwrap().1.contains("resume_gap"));
    assert!(broken, "a reader with a gap must not end cleanly");
    drop(tx);
}

/// A small deterministic generator (xorshift), so that a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// One replica of the chaos test: new streams take the next upstream of the shared queue.
fn pool_replica(
    store: RedisStore,
    queue: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<ChannelBody>>>,
) -> impl Service<
    Request<Empty<Bytes>>,
    Response = Response<impl Body<Data = Bytes, Error = BoxError> + Send + 'static>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let inner = tower::service_fn(
        move |_: Request<tower_sse::request::UploadBody<Empty<Bytes>>>| {
            std::future::ready(Ok::<_, Infallible>(stream_answer(
                queue.lock().unwrap().pop_front(),
            )))
        },
    );
    ResumeLayer::new()
        .store(store)
        .detach(tower_sse::resume::Detach::CancelAfter(Duration::from_secs(
            2,
        )))
        .layer(SseLayer::new().layer(inner))
}

/// How one chaos client's stream ended.
#[derive(Debug, Default)]
struct Outcome {
    complete: bool,
    explicit_errors: u32,
    connections: u32,
    data: Vec<String>,
    /// How its last connection ended ("" when it was told, then ran out of connections).
    end: &'static str,
    /// Each connection: replica, status, resume header, events.
    trace: Vec<String>,
}

/// Chaos on a real `redis-server` and two replicas: streams whose upstreams pause for
/// longer than the lease, clients that cut their connection at random points and resume on
/// a random replica after a random pause, slow readers, and a Redis restart in the middle.
/// Every client either collects every event of its stream exactly once, in order, or was
/// told (a `resume_gap` or other error event, a broken end, a `204` with `sse-resume`) and
/// holds no duplicate and no hole in what it got: nothing is lost silently. A client that
/// was told resumes again (as an `EventSource` would), up to 25 connections. Bounded to a
/// few tens of seconds; `CHAOS_SEED` replays a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_cuts_switches_silences_slow_readers_and_a_redis_restart_lose_nothing_silently() {
    let Some(redis) = Redis::start() else {
        return;
    };
    // Persistent, as a production Redis: a restart without persistence also loses the logs
    // of streams that ended before it, which no mirror writes again (see the `RedisStore`
    // docs); live streams re-sync (`after_a_redis_restart_the_mirror_resyncs_...`).
    let dir = std::env::temp_dir().join(format!("tower-sse-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.to_str().unwrap().to_owned();
    let port = redis.stop();
    let redis = Redis::start_persistent_on(port, &dir);
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_abcd);
    println!("CHAOS_SEED={seed}");
    let url = redis.url();
    let store = |url: &str| {
        RedisStore::builder(url)
            .unwrap()
            .poll(Duration::from_millis(100))
            .lease(Duration::from_millis(300))
            .build()
    };
    let queue = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
    let a = pool_replica(store(&url), queue.clone());
    let b = pool_replica(store(&url), queue.clone());
    const STREAMS: usize = 8;
    const EVENTS: usize = 30;
    let mut clients = Vec::new();
    for s in 0..STREAMS {
        let (tx, body) = channel();
        queue.lock().unwrap().push_back(body);
        let mut rng = Rng(seed ^ (s as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        // The upstream: events with random pauses, some longer than the lease.
        let mut feeder_rng = Rng(rng.below(u64::MAX) | 1);
        tokio::spawn(async move {
            for e in 1..=EVENTS {
                let pause = if feeder_rng.below(12) == 0 {
                    400 + feeder_rng.below(400)
                } else {
                    feeder_rng.below(60)
                };
                tokio::time::sleep(Duration::from_millis(pause)).await;
                if tx
                    .send(Ok(Frame::data(Bytes::from(format!("data: s{s}-e{e}\n\n")))))
                    .is_err()
                {
                    return;
                }
            }
        });
        let replicas = (a.clone(), b.clone());
        clients.push(tokio::spawn(async move {
            let mut outcome = Outcome::default();
            let slow = rng.below(3) == 0;
            let mut last_id: Option<String> = None;
            let mut prefix: Option<String> = None;
            while outcome.connections < 25 {
                outcome.connections += 1;
                let on_a = rng.below(2) == 0;
                let request = get(last_id.as_deref());
                let response = if on_a {
                    replicas.0.clone().oneshot(request).await.unwrap()
                } else {
                    replicas.1.clone().oneshot(request).await.unwrap()
                };
                outcome.trace.push(format!(
                    "{}{} {:?} from {:?} have {}",
                    if on_a { "a" } else { "b" },
                    response.status().as_u16(),
                    response.headers().get("sse-resume"),
                    last_id,
                    outcome.data.len()
                ));
                if response.status() == 204 {
                    if response.headers().contains_key("sse-resume") {
                        outcome.explicit_errors += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    // "Finished", or not found: only true when it has everything.
                    outcome.complete = outcome.data.len() == EVENTS;
                    outcome.end = "204";
                    break;
                }
                // `sse-resume: off` (Redis was down when the stream began): the client was told
                // this stream cannot be resumed. Cut or broken, it knows it lost the rest (it
                // would start over with a new request, for which this test has no upstream).
                let not_resumable = response
                    .headers()
                    .get("sse-resume")
                    .is_some_and(|value| value == "off");
                let cut_after = 1 + rng.below(10) as usize;
                let mut body = Box::pin(response.into_body());
                let mut got = 0;
                let mut buffer = Vec::new();
                let ended = loop {
                    if got >= cut_after {
                        break None;
                    }
                    if slow {
                        tokio::time::sleep(Duration::from_millis(rng.below(40))).await;
                    }
                    match tokio::time::timeout(Duration::from_secs(10), body.frame()).await {
                        Err(_) => panic!("no frame within 10 s (stream {s})"),
                        Ok(Some(Ok(frame))) => {
                            buffer.extend_from_slice(frame.data_ref().unwrap());
                            let view = client_view(&buffer);
                            while got < view.events.len() {
                                let (kind, data, id) = &view.events[got];
                                got += 1;
                                if kind == "error" {
                                    outcome.explicit_errors += 1;
                                    continue;
                                }
                                let (p, _) = data.split_once('-').unwrap();
                                assert_eq!(
                                    prefix.get_or_insert_with(|| p.to_owned()),
                                    p,
                                    "another stream's event"
                                );
                                outcome.data.push(data.clone());
                                if !id.is_empty() {
                                    last_id = Some(id.clone());
                                }
                            }
                        }
                        Ok(Some(Err(_))) => break Some(false),
                        Ok(None) => break Some(true),
                    }
                };
                match ended {
                    Some(true) => {
                        outcome.complete = outcome.data.len() == EVENTS;
                        outcome.end = if on_a {
                            "clean end on a"
                        } else {
                            "clean end on b"
                        };
                        break;
                    }
                    Some(false) => {
                        // A broken end: the client knows, and resumes.
                        outcome.explicit_errors += 1;
                    }
                    None => {}
                }
                if not_resumable {
                    outcome.explicit_errors += 1;
                    outcome.end = "cut, told it was not resumable";
                    break;
                }
                drop(body);
                tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
            }
            (s, outcome)
        }));
    }
    // Redis restarts in the middle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let port = redis.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _redis = Redis::start_persistent_on(port, &dir);

    let (mut complete, mut told, mut silent) = (0, 0, 0);
    for client in clients {
        let (s, outcome) = tokio::time::timeout(Duration::from_secs(120), client)
            .await
            .expect("the chaos test is bounded")
            .unwrap();
        // Whatever it got: in order, each once, no hole.
        let expected: Vec<String> = (1..=outcome.data.len())
            .map(|e| {
                format!(
                    "s{}-e{e}",
                    outcome
                        .data
                        .first()
                        .map_or("", |d| &d[1..d.find('-').unwrap()])
                )
            })
            .collect();
        assert_eq!(
            outcome.data, expected,
            "stream {s}: a duplicate or a hole: {outcome:?}"
        );
        if !outcome.complete {
            println!("stream {s} trace: {:?}", outcome.trace);
        }
        // Incomplete, its last connection must have said so: a clean end or a bare `204`
        // with events missing is a silent loss, whatever came before.
        let ended_quietly = outcome.end.starts_with("clean") || outcome.end == "204";
        if outcome.complete {
            complete += 1;
        } else if outcome.explicit_errors > 0 && !ended_quietly {
            told += 1;
        } else {
            silent += 1;
        }
        println!(
            "stream {s}: {} events, {} connections, {} explicit errors, {}, complete: {}",
            outcome.data.len(),
            outcome.connections,
            outcome.explicit_errors,
            outcome.end,
            outcome.complete
        );
    }
    println!("chaos: {complete} complete, {told} told of a gap, {silent} silent losses");
    assert_eq!(silent, 0, "a client lost events without being told");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Calls of `command` Redis served so far (`INFO commandstats`).
fn calls(redis: &Redis, command: &str) -> u64 {
    let stats = redis.cli(&["INFO", "commandstats"]).unwrap_or_default();
    stats
        .lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The Redis round trips of liveness (the producer's heartbeat) and of reader presence (its
/// refresh on the reader's replica, the producer's look), per stream and per second, for
/// BENCHMARKS.md: each such round trip carries exactly one `PSETEX` (heartbeat, presence) or
/// one `EXISTS` (the producer's look). A lease of 300 ms stands for the default 10 s (the
/// rates scale with `1 / lease`). Run with `--ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement for BENCHMARKS.md"]
async fn round_trips_of_heartbeats_and_presence() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let lease = Duration::from_millis(300);
    let window = Duration::from_secs(3);
    let store = |redis: &Redis| {
        RedisStore::builder(&redis.url())
            .unwrap()
            .poll(Duration::from_millis(100))
            .lease(lease)
            .build()
    };
    let reports = support::body::Reports::default();
    let per_second = |n: u64| n as f64 / window.as_secs_f64();

    // A busy stream (an event every 20 ms) with its reader: the lease rides on the writes.
    let (tx, upstream) = channel();
    let a = replica_with(store(&redis), Some(upstream), lease * 4, &reports);
    let response = a.oneshot(get(None)).await.unwrap();
    let mut body = response.into_body();
    let (psetex, xadd) = (calls(&redis, "psetex"), calls(&redis, "xadd"));
    let start = tokio::time::Instant::now();
    while start.elapsed() < window {
        send(&tx, "x");
        read_events(&mut body, 1).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let writes = calls(&redis, "xadd") - xadd;
    let lease_renewals = calls(&redis, "psetex") - psetex;
    println!(
        "busy: {:.1} writes/s (one round trip each at most), {:.1} lease renewals/s, all inside them",
        per_second(writes),
        per_second(lease_renewals)
    );
    drop(tx);
    drop(body);

    // A silent stream with its reader on the producer's replica: heartbeats only.
    let (tx, upstream) = channel();
    let a = replica_with(store(&redis), Some(upstream), lease * 4, &reports);
    let response = a.oneshot(get(None)).await.unwrap();
    let mut body = response.into_body();
    send(&tx, "first");
    let first = read_events(&mut body, 1).await;
    let id = client_view(&first).last_event_id;
    tokio::time::sleep(lease).await;
    let psetex = calls(&redis, "psetex");
    tokio::time::sleep(window).await;
    let heartbeats = calls(&redis, "psetex") - psetex;
    println!(
        "silent, local reader: {:.2} heartbeat round trips/s per stream (lease {lease:?})",
        per_second(heartbeats)
    );

    // The same stream, its reader moved to another replica: heartbeats, presence refreshes
    // there, and the producer's looks.
    drop(body);
    let b = replica_with(store(&redis), None, lease * 4, &reports);
    let response = b.oneshot(get(Some(&id))).await.unwrap();
    assert_eq!(response.status(), 200);
    let remote = response.into_body();
    tokio::time::sleep(lease * 5).await;
    let (psetex, exists) = (calls(&redis, "psetex"), calls(&redis, "exists"));
    tokio::time::sleep(window).await;
    let psetex = calls(&redis, "psetex") - psetex;
    // The remote reader's reads check the lease with `EXISTS` too: count the producer's looks
    // as the `EXISTS` beyond those (one per read; its reads are the safety polls here).
    let exists = calls(&redis, "exists") - exists;
    println!(
        "silent, reader on another replica: {:.2} PSETEX round trips/s (heartbeat + presence), {:.2} EXISTS/s (the producer's looks and the remote reader's polls)",
        per_second(psetex),
        per_second(exists)
    );
    drop(remote);
    drop(tx);
}

/// A replica sends its readers' counts again when a write timed out after Redis took it:
/// written as that reader session's totals, they count once; two sessions add up.
#[tokio::test]
async fn reader_counts_sent_again_count_once() {
    use tower_sse::request::Tenant;
    use tower_sse::resume::{NewStream, ReaderCounts, ResumeStore};

    let Some(redis) = Redis::start() else {
        return;
    };
    let producer_store = RedisStore::builder(&redis.url()).unwrap().build();
    let follower_store = RedisStore::builder(&redis.url()).unwrap().build();
    let id = StreamId::random().unwrap();
    let tenant = Tenant::from_key("k");
    let producer = producer_store
        .create(NewStream::new(id, tenant))
        .await
        .unwrap();
    let follower = follower_store
        .open(id, tenant)
        .await
        .unwrap()
        .expect("the stream is there");

    let first = ReaderCounts {
        connections: 2,
        resumes: 1,
        replayed_events: 5,
    };
    follower.keep_present(7, Some(first)).await.unwrap();
    // The same totals again (the first write's answer was lost), then a bare refresh.
    follower.keep_present(7, Some(first)).await.unwrap();
    follower.keep_present(7, None).await.unwrap();
    // Another run of readers in that process, later.
    let second = ReaderCounts {
        connections: 1,
        resumes: 1,
        replayed_events: 0,
    };
    follower.keep_present(8, Some(second)).await.unwrap();

    let (present, counts) = producer.elsewhere().await.unwrap();
    assert!(present, "a reader elsewhere keeps the stream present");
    assert_eq!(
        counts,
        ReaderCounts {
            connections: 3,
            resumes: 2,
            replayed_events: 5,
        }
    );
}
