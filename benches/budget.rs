//! What a budget costs per request, in process ([`MemoryBudgets`]), without Redis.
//!
//! `cargo bench --bench budget`. Cases:
//!
//! - `budget/admit`: one admission against three limits of one key (a request rate, a
//!   token rate, a daily output budget), steady state;
//! - `budget/settle`: one settlement of such a reservation (a new id each time);
//! - `budget/stream_off`: one short chat stream (6 events) through `SseLayer` with the
//!   usage observer, from a request with a JSON body and a bearer token;
//! - `budget/stream_on`: the same inside a `BudgetLayer` with those three limits and the
//!   `BudgetObserver` in the tuple: the body read and estimated, the key found, the
//!   admission, the reservation, the settlement from the report.
//!
//! For instruction counts (exact under load), run one case a fixed number of times under
//! callgrind: `BUDGET_BENCH=stream_on BUDGET_BENCH_ITERS=2000 valgrind --tool=callgrind
//! --toggle-collect='budget::one*' <bench binary>`, and divide the instructions by 2001
//! (BENCHMARKS.md, "Budgets").

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
use http_body_util::Full;
use tower::{Layer, Service};
use tower_sse::budget::{
    Admit, Amounts, BudgetLayer, BudgetObserver, Decision, Limit, Measure, MemoryBudgets,
    Settlement,
};
use tower_sse::{SseLayer, UsageObserver};

use common::drive::{Upstream, drain, upstream};

/// 2026-12-07T06:00:00Z, in nanoseconds.
const NOW: u64 = 1_796_623_200_000_000_000;
const KEY: &str = "0123456789abcdef0123456789abcdef";
const BODY: &[u8] = br#"{"model":"gpt-4o","stream":true,"max_tokens":64,"messages":[{"role":"user","content":"Tell me about server-sent events."}]}"#;

fn limits() -> Arc<[Limit]> {
    Arc::from([
        Limit::rate(Measure::Requests, 1_000_000_000, Duration::from_secs(60)),
        Limit::rate(
            Measure::TotalTokens,
            1_000_000_000_000,
            Duration::from_secs(60),
        ),
        Limit::per_day(Measure::OutputTokens, 1_000_000_000_000),
    ])
}

fn amounts() -> Amounts {
    Amounts {
        requests: 1,
        input_tokens: 40,
        output_tokens: 64,
        cost_micros: 0,
    }
}

/// A two-token completion: role, two content chunks, finish, usage, `[DONE]`.
fn short_stream() -> Vec<Bytes> {
    let events = common::chat_events();
    [0, 1, 2, 199, 200, 201]
        .into_iter()
        .map(|i| Bytes::from(events[i].clone()))
        .collect()
}

/// The upstream: answers every call with the stream of `chunks` (cloneable, as the budget
/// layer needs its inner service to be).
fn answer<B>(
    chunks: &[Bytes],
) -> impl Service<
    Request<B>,
    Response = Response<Upstream>,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<Upstream>, Infallible>>,
> + Clone
+ Send
+ 'static {
    let chunks = chunks.to_vec();
    tower::service_fn(move |_: Request<B>| {
        let response = Response::builder()
            .header("content-type", "text/event-stream")
            .body(upstream(&chunks))
            .expect("a valid response");
        std::future::ready(Ok::<_, Infallible>(response))
    })
}

/// Calls `service` with a streaming chat request of a tenant and drains the answer.
fn call<S, B>(mut service: S) -> usize
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes>,
{
    let request = Request::post("/v1/chat/completions")
        .header("accept", "text/event-stream")
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-bench")
        .body(Full::new(Bytes::from_static(BODY)))
        .expect("a valid request");
    let mut future = pin!(service.call(request));
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(response) => drain(response.expect("an answer").into_body()),
        Poll::Pending => unreachable!("in-memory services and stores are always ready"),
    }
}

struct Case {
    name: String,
    store: MemoryBudgets,
    limits: Arc<[Limit]>,
    layer: BudgetLayer,
    next_id: u64,
}

impl Case {
    fn new(name: &str) -> Self {
        assert!(
            ["admit", "settle", "stream_off", "stream_on"].contains(&name),
            "unknown case {name}"
        );
        let limits = limits();
        Self {
            name: name.to_owned(),
            store: MemoryBudgets::new(),
            layer: BudgetLayer::in_memory().limits(limits.iter().copied()),
            limits,
            next_id: 0,
        }
    }
}

/// One admission (the function callgrind collects in).
#[inline(never)]
fn one_admission(case: &Case) -> bool {
    let admit = Admit {
        key: KEY,
        limits: &case.limits,
        amounts: amounts(),
        now: NOW,
    };
    case.store.admit_now(admit) == Decision::Admitted
}

/// One settlement of a new id (the function callgrind collects in; the id is made
/// outside it).
#[inline(never)]
fn one_settlement(case: &Case, settlement: &Settlement) -> bool {
    case.store.settle_now(settlement)
}

/// One stream through the case's stack (the function callgrind collects in).
#[inline(never)]
fn one_stream(case: &Case, chunks: &[Bytes]) -> usize {
    if case.name == "stream_on" {
        let sse = SseLayer::new().observer((UsageObserver::new(), BudgetObserver::new()));
        call(case.layer.layer(sse.layer(answer(chunks))))
    } else {
        let sse = SseLayer::new().observer(UsageObserver::new());
        call(sse.layer(answer(chunks)))
    }
}

fn run(case: &mut Case, chunks: &[Bytes]) -> usize {
    match case.name.as_str() {
        "admit" => usize::from(one_admission(case)),
        "settle" => {
            case.next_id += 1;
            let settlement = Settlement {
                id: format!("0123456789abcdef-{:x}", case.next_id),
                key: KEY.into(),
                limits: case.limits.clone(),
                reserved: amounts(),
                actual: Amounts {
                    output_tokens: 20,
                    ..amounts()
                },
                admitted_at: NOW,
                now: NOW,
            };
            usize::from(one_settlement(case, &settlement))
        }
        _ => one_stream(case, chunks),
    }
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let chunks = short_stream();
    let mut group = c.benchmark_group("budget");
    for name in ["admit", "settle", "stream_off", "stream_on"] {
        let mut case = Case::new(name);
        group.bench_function(name, |b| b.iter(|| run(&mut case, &chunks)));
    }
    group.finish();
}

criterion_group!(group, benches);

fn main() {
    // A fixed number of one case, for callgrind.
    if let (Ok(name), Ok(iters)) = (
        std::env::var("BUDGET_BENCH"),
        std::env::var("BUDGET_BENCH_ITERS"),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let mut case = Case::new(&name);
        let chunks = short_stream();
        let iters: usize = iters.parse().expect("BUDGET_BENCH_ITERS is a number");
        // One first, outside the count's loop: first-use setup is not per request.
        black_box(run(&mut case, &chunks));
        for _ in 0..iters {
            black_box(run(&mut case, &chunks));
        }
        return;
    }
    group();
    Criterion::default().configure_from_args().final_summary();
}
