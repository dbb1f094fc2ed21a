//! What the failover layer costs per stream, in process, polled by hand as hyper would.
//!
//! `cargo bench --bench failover`. Each iteration drives one short chat stream whole (role
//! chunk, two content chunks, finish, usage, `[DONE]`: 6 events) through `SseLayer` with the
//! usage and timing observers:
//!
//! - `failover/off`: `SseLayer` straight to the upstream;
//! - `failover/on`: `SseLayer` → `Failover` [this upstream, a second one never called], the
//!   head held until the first content event (the default settings, circuit breaker
//!   included);
//! - `failover/fail`: `SseLayer` → `Failover` [an upstream whose stream opens with an
//!   in-band error event, this upstream] with no backoff and no circuit breaker (so that the
//!   failing upstream is tried on every stream): one failed attempt, then the served one.
//!
//! For instruction counts (exact under load), run one case a fixed number of times under
//! callgrind: `FAILOVER_BENCH=on FAILOVER_BENCH_ITERS=2000 valgrind --tool=callgrind
//! --toggle-collect='failover::one_stream*' <bench binary>`, and divide the instructions by
//! 2001 (BENCHMARKS.md).

#[path = "../tests/support/inputs.rs"]
mod common;

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group};
use http::{Request, Response};
use http_body::Body;
use http_body_util::Empty;
use tower::{Layer, Service};
use tower_sse::failover::Failover;
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

/// A stream that fails before any content: an in-band error event (OpenAI's shape).
fn failing_stream() -> Vec<Bytes> {
    vec![Bytes::from_static(
        b"data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n",
    )]
}

/// An in-memory upstream answering every call with these chunks as an SSE stream.
#[derive(Clone)]
struct Answer {
    chunks: Arc<[Bytes]>,
}

impl Answer {
    fn new(chunks: Vec<Bytes>) -> Self {
        Self {
            chunks: chunks.into(),
        }
    }
}

impl<B> Service<Request<B>> for Answer {
    type Response = Response<Upstream>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Upstream>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        let response = Response::builder()
            .header("content-type", "text/event-stream")
            .body(upstream(&self.chunks))
            .expect("a valid response");
        std::future::ready(Ok(response))
    }
}

/// Calls `service` with a streaming request and drains the answer.
fn call<S, B>(mut service: S) -> usize
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes>,
{
    let request = Request::post("/v1/chat/completions")
        .header("accept", "text/event-stream")
        .body(Empty::new())
        .expect("a valid request");
    let mut future = pin!(service.call(request));
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(response) => drain(response.expect("an answer").into_body()),
        Poll::Pending => unreachable!("in-memory services are always ready"),
    }
}

/// The cases: the upstream that serves, and the failover layer in front of it (if any).
#[derive(Clone)]
struct Case {
    serving: Answer,
    failover: Option<Failover<Answer>>,
}

impl Case {
    fn new(name: &str) -> Self {
        let serving = Answer::new(short_stream());
        let failover = match name {
            "off" => None,
            // The second upstream is never called: the first one commits.
            "on" => Some(Failover::new([serving.clone(), serving.clone()])),
            "fail" => Some(
                Failover::new([Answer::new(failing_stream()), serving.clone()])
                    .backoff(Duration::ZERO)
                    .circuit_breaker(None),
            ),
            other => panic!("unknown case {other}"),
        };
        Self { serving, failover }
    }
}

/// One stream through the case's stack (the function callgrind collects in).
#[inline(never)]
fn one_stream(case: &Case) -> usize {
    let sse = SseLayer::new().observer((UsageObserver::new(), TimingObserver::new()));
    match &case.failover {
        None => call(sse.layer(case.serving.clone())),
        Some(failover) => call(sse.layer(failover.clone())),
    }
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let mut group = c.benchmark_group("failover");
    for name in ["off", "on", "fail"] {
        let case = Case::new(name);
        group.bench_function(name, |b| b.iter(|| one_stream(&case)));
    }
    group.finish();
}

criterion_group!(group, benches);

fn main() {
    // A fixed number of streams of one case, for callgrind.
    if let (Ok(name), Ok(iters)) = (
        std::env::var("FAILOVER_BENCH"),
        std::env::var("FAILOVER_BENCH_ITERS"),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let case = Case::new(&name);
        let iters: usize = iters.parse().expect("FAILOVER_BENCH_ITERS is a number");
        // One stream first, outside the count's loop: first-use setup is not per stream;
        // and a check that the case serves the whole stream.
        let whole: usize = short_stream().iter().map(Bytes::len).sum();
        assert_eq!(
            one_stream(&case),
            whole,
            "the client gets the serving stream whole"
        );
        for _ in 0..iters {
            black_box(one_stream(&case));
        }
        return;
    }
    group();
    Criterion::default().configure_from_args().final_summary();
}
