//! Fail open without losing spend, on a real `redis-server` (feature `redis`): with Redis
//! stopped, requests are admitted against the limits in process and what their streams used
//! waits as local debt; Redis restarted, the debts are settled into it, once per stream id.
#![cfg(feature = "redis")]

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use support::body::{next_report, report_channel};
use support::redis::Redis;
use tower::{Layer, ServiceExt};
use tower_sse::budget::{
    Amounts, BudgetKey, BudgetLayer, BudgetObserver, BudgetRequestBody, BudgetStore, Charge, Limit,
    Measure, OnStoreError, RedisBudgets, Settlement,
};
use tower_sse::{SseLayer, StreamReport, UsageObserver};

type Inner = Full<Bytes>;

/// Every stream: 11 input and 3 output tokens, reported.
const STREAM: &str = concat!(
    "data: {\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
    "data: {\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":3,\"total_tokens\":14}}\n\n",
    "data: [DONE]\n\n",
);

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// What Redis holds for the key's day of total tokens (`None` while it does not answer).
async fn used(store: &RedisBudgets, limits: &[Limit]) -> Option<u64> {
    let status = store.status("team-a", limits, now()).await.ok()?;
    Some(status[0].used)
}

/// Poll `f` until it holds (a bounded wait for the store's background work, not a timing
/// assertion).
async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..400 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debts_run_up_while_redis_was_away_are_settled_into_it_once() {
    let Some(first) = Redis::start() else { return };
    let port = first.port;
    drop(first);
    // Persistent, so that what Redis counted before the stop is still there after it.
    let dir = std::env::temp_dir().join(format!("tower-sse-reconcile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let redis = Redis::start_persistent_on(port, dir.to_str().unwrap());

    let store = RedisBudgets::new(&redis.url())
        .unwrap()
        .prefix("reconcile:")
        .timeout(Duration::from_millis(200));
    let limits = [Limit::per_day(Measure::TotalTokens, 1_000)];
    let budgets = BudgetLayer::new(store.clone())
        .key(BudgetKey::header("x-team"))
        .limits(limits)
        .store_timeout(Duration::from_millis(300))
        .on_store_error(OnStoreError::FailOpen);
    let (sink, mut reports) = report_channel();
    let upstream = tower::service_fn(
        |_: Request<tower_sse::request::UploadBody<BudgetRequestBody<Inner>>>| async {
            let response = Response::builder()
                .header("content-type", "text/event-stream")
                .body(Full::new(Bytes::from_static(STREAM.as_bytes())))
                .unwrap();
            Ok::<_, Infallible>(response)
        },
    );
    let service = budgets.clone().layer(
        SseLayer::new()
            .observer((UsageObserver::new(), BudgetObserver::new()))
            .on_end(sink)
            .layer(upstream),
    );
    // One stream through the stack: its report.
    macro_rules! stream {
        () => {{
            let request = Request::post("/v1/chat/completions")
                .header("x-team", "team-a")
                .body(Full::new(Bytes::from_static(
                    br#"{"model":"m","stream":true,"max_tokens":10}"#,
                )))
                .unwrap();
            let response = service.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.into_body().collect().await.unwrap();
            next_report(&mut reports).await
        }};
    }

    // Redis up: charged there.
    let report: StreamReport = stream!();
    assert!(
        !report
            .extensions
            .get::<Charge>()
            .unwrap()
            .id
            .starts_with("local:")
    );
    until("the first settlement", async || {
        used(&store, &limits).await == Some(14)
    })
    .await;

    // Redis away: both admitted in process, and their use waits as debt.
    let port = redis.stop();
    let mut local = Vec::new();
    for _ in 0..2 {
        let report: StreamReport = stream!();
        let charge = report.extensions.get::<Charge>().cloned().unwrap();
        assert!(charge.id.starts_with("local:"), "{}", charge.id);
        assert_eq!(
            charge.charged.input_tokens + charge.charged.output_tokens,
            14
        );
        local.push(charge);
    }
    let counts = budgets.counts();
    assert_eq!(counts.passed_store_unavailable, 2);
    assert_eq!(counts.local_debts_pending, 2);
    assert_eq!(counts.local_debts_reconciled, 0);

    // Redis back (with what it had): the debts are settled into it, nothing lost.
    let redis = Redis::start_persistent_on(port, dir.to_str().unwrap());
    until("the debts reconciled", async || {
        budgets.counts().local_debts_pending == 0
    })
    .await;
    let counts = budgets.counts();
    assert_eq!(counts.local_debts_reconciled, 2);
    assert_eq!(counts.local_debts_lost, 0);
    assert_eq!(used(&store, &limits).await, Some(14 * 3));

    // Idempotent by stream id: the same debt settled again is refused, and counts once.
    for charge in &local {
        let again = Settlement {
            id: charge.id.clone(),
            key: charge.key.clone(),
            limits: limits.into(),
            reserved: Amounts::default(),
            actual: charge.charged,
            admitted_at: now(),
            now: now(),
        };
        assert!(!store.settle_now(&again).await.unwrap());
    }
    assert_eq!(used(&store, &limits).await, Some(14 * 3));
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}
