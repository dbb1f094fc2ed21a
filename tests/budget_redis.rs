//! Budgets on a real `redis-server` (feature `redis`): two replicas (two stores, two
//! connections) admit exactly under concurrency, settle once per id, and the layer's
//! failure policy holds when Redis is down, then recovers when it is back.
#![cfg(feature = "redis")]

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use support::redis::Redis;
use tower::{Layer, ServiceExt};
use tower_sse::budget::{
    Admit, Amounts, BudgetLayer, BudgetRequestBody, BudgetStore, Decision, Limit, Measure,
    OnStoreError, RedisBudgets, Settlement,
};

/// How many scripts `redis` has run (`INFO commandstats`).
fn evals(redis: &Redis) -> u64 {
    let text = redis
        .cli(&["INFO", "commandstats"])
        .expect("redis-cli runs");
    text.lines()
        .find_map(|line| line.strip_prefix("cmdstat_eval:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// 2026-12-07T06:00:00Z, in nanoseconds.
const NOW: u64 = 1_796_623_200_000_000_000;

fn tokens(input: u64, output: u64) -> Amounts {
    Amounts {
        requests: 1,
        input_tokens: input,
        output_tokens: output,
        cost_micros: 0,
    }
}

/// The issue's new user: three concurrent requests against a budget of 30 must not all get
/// through. Here, on two replicas: 80 concurrent admissions of 70 tokens against a day of
/// 1000 admit exactly 14; settlement corrects each once, whichever replica settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_admit_exactly_and_settle_once() {
    let Some(redis) = Redis::start() else { return };
    let a = RedisBudgets::new(&redis.url()).unwrap();
    let b = RedisBudgets::new(&redis.url()).unwrap();
    let limits: Arc<[Limit]> = Arc::from([
        Limit::per_day(Measure::TotalTokens, 1000),
        Limit::rate(Measure::Requests, 1000, Duration::from_secs(60)),
    ]);
    let mut tasks = Vec::new();
    for i in 0..80 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let limits = limits.clone();
        tasks.push(tokio::spawn(async move {
            let admit = Admit {
                key: "tenant-1",
                limits: &limits,
                amounts: tokens(30, 40),
                now: NOW,
            };
            store.admit(admit).await.unwrap() == Decision::Admitted
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        admitted += u64::from(task.await.unwrap());
    }
    assert_eq!(admitted, 14);
    let status = a.status("tenant-1", &limits, NOW).await.unwrap();
    assert_eq!(status[0].used, 14 * 70);
    assert_eq!(
        status[1].used, 14,
        "a refused request reserved nothing anywhere"
    );

    // Each stream used 30 + 10: settled once, even when both replicas try.
    for i in 0..14 {
        let settlement = Settlement {
            id: format!("stream-{i}"),
            key: "tenant-1".into(),
            limits: limits.clone(),
            reserved: tokens(30, 40),
            actual: tokens(30, 10),
            admitted_at: NOW,
            now: NOW,
        };
        assert!(a.settle_now(&settlement).await.unwrap());
        assert!(!b.settle_now(&settlement).await.unwrap(), "settled twice");
    }
    let status = b.status("tenant-1", &limits, NOW).await.unwrap();
    assert_eq!(status[0].used, 14 * 40);
    assert_eq!(status[0].remaining, 1000 - 14 * 40);
}

#[tokio::test]
async fn rates_on_redis_give_the_same_waits_as_in_memory() {
    let Some(redis) = Redis::start() else { return };
    let store = RedisBudgets::new(&redis.url()).unwrap();
    let limits = [Limit::rate(Measure::Requests, 2, Duration::from_secs(60))];
    let admit = |now| Admit {
        key: "k",
        limits: &limits,
        amounts: tokens(0, 0),
        now,
    };
    assert_eq!(store.admit(admit(NOW)).await.unwrap(), Decision::Admitted);
    assert_eq!(store.admit(admit(NOW)).await.unwrap(), Decision::Admitted);
    let Decision::Rejected(rejection) = store.admit(admit(NOW)).await.unwrap() else {
        panic!("a third request in the same instant")
    };
    assert_eq!(rejection.retry_after, Some(Duration::from_secs(30)));
    // Continuous refill: 30 s later one request fits again.
    assert_eq!(
        store.admit(admit(NOW + 30_000_000_000)).await.unwrap(),
        Decision::Admitted
    );
    // Never fits: more than the burst.
    let big = Admit {
        amounts: Amounts {
            requests: 3,
            ..Amounts::default()
        },
        ..admit(NOW)
    };
    let Decision::Rejected(rejection) = store.admit(big).await.unwrap() else {
        panic!()
    };
    assert_eq!(rejection.retry_after, None);
    // One cluster slot per key: every key of a budget key has its hash tag.
    assert!(store.limit_key("k", &limits[0]).contains("{k}"));
}

/// Settlement through the trait is handed to a task (the end of a stream never waits on
/// Redis) and lands once.
#[tokio::test]
async fn settlement_is_handed_off_and_applied() {
    let Some(redis) = Redis::start() else { return };
    let store = RedisBudgets::new(&redis.url()).unwrap();
    let limits: Arc<[Limit]> = Arc::from([Limit::per_day(Measure::OutputTokens, 100)]);
    let admit = Admit {
        key: "k",
        limits: &limits,
        amounts: tokens(0, 60),
        now: NOW,
    };
    assert_eq!(store.admit(admit).await.unwrap(), Decision::Admitted);
    let settlement = Settlement {
        id: "s".into(),
        key: "k".into(),
        limits: limits.clone(),
        reserved: tokens(0, 60),
        actual: tokens(0, 75),
        admitted_at: NOW,
        now: NOW,
    };
    assert_eq!(evals(&redis), 1, "one round trip to admit");
    BudgetStore::settle(&store, settlement.clone());
    let mut used = 0;
    for _ in 0..200 {
        used = store.status("k", &limits, NOW).await.unwrap()[0].used;
        if used != 60 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(used, 75, "the overrun is debt, charged once");
    assert_eq!(evals(&redis), 2, "one round trip to settle");
    // Settled again (a retry, another replica): applied once.
    assert!(!store.settle_now(&settlement).await.unwrap());
    assert_eq!(store.status("k", &limits, NOW).await.unwrap()[0].used, 75);
    assert_eq!(store.lost_settlements(), 0);
}

type Inner = Full<Bytes>;

/// Redis stopped: fail-closed answers `503` within the timeout and the inner service never
/// sees the request; fail-open lets it through; Redis back, admissions resume.
#[tokio::test]
async fn redis_down_fails_closed_or_open_then_recovers() {
    let Some(redis) = Redis::start() else { return };
    let port = redis.stop();
    let url = format!("redis://127.0.0.1:{port}/");
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let inner = tower::service_fn(move |_: Request<BudgetRequestBody<Inner>>| {
        counted.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))))
    });
    let limits = [Limit::rate(Measure::Requests, 10, Duration::from_secs(60))];
    let request = || {
        Request::post("/v1/chat/completions")
            .body(Full::new(Bytes::from_static(br#"{"model":"m"}"#)))
            .unwrap()
    };
    let store = RedisBudgets::new(&url)
        .unwrap()
        .timeout(Duration::from_millis(200));
    let closed = BudgetLayer::new(store.clone())
        .limits(limits)
        .store_timeout(Duration::from_millis(300))
        .layer(inner.clone());
    let response = closed.clone().oneshot(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    let open = BudgetLayer::new(store.clone())
        .limits(limits)
        .on_store_error(OnStoreError::FailOpen)
        .layer(inner);
    let response = open.oneshot(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let _redis = Redis::start_on(port);
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..50 {
        status = closed.clone().oneshot(request()).await.unwrap().status();
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        status,
        StatusCode::OK,
        "admissions resume once Redis is back"
    );
}

/// Make `redis` slow: `DEBUG SLEEP secs` from another client (the server answers nothing
/// meanwhile; commands sent to it queue in their sockets and run when it wakes). Returns
/// once the sleep has begun.
fn asleep(redis: &Redis, secs: &str) -> std::process::Child {
    let child = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "DEBUG", "SLEEP", secs])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("redis-cli runs");
    // Until the server stops answering (a PING unanswered for 30 ms; the PING itself
    // then waits in its socket, harmlessly).
    for _ in 0..500 {
        use std::io::{Read, Write};
        let mut ping = std::net::TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
        ping.set_read_timeout(Some(Duration::from_millis(30)))
            .unwrap();
        ping.write_all(b"PING\r\n").unwrap();
        if ping.read(&mut [0; 16]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child
}

/// Poll `key`'s first limit until its use is not `from` (or 3 s passed).
async fn used_after(store: &RedisBudgets, limits: &[Limit], from: u64) -> u64 {
    let mut used = from;
    for _ in 0..300 {
        if let Ok(status) = store.status("k", limits, NOW).await {
            used = status[0].used;
            if used != from {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    used
}

fn settlement(limits: &Arc<[Limit]>, reserved: u64, actual: u64) -> Settlement {
    Settlement {
        id: "stream-1".into(),
        key: "k".into(),
        limits: limits.clone(),
        reserved: tokens(0, reserved),
        actual: tokens(0, actual),
        admitted_at: NOW,
        now: NOW,
    }
}

/// A slow Redis at the end of a stream: the settlement times out (100 ms) while Redis
/// sleeps, is retried, and Redis, once awake, runs every attempt it received. The settle
/// script's settled marker makes the first one apply and the others nothing: charged once
/// (the resume store's counts had exactly this bug: a write retried after a timeout that
/// Redis had in fact applied counted twice).
#[tokio::test]
async fn a_settlement_retried_after_a_timeout_that_redis_applied_is_charged_once() {
    let Some(redis) = Redis::start() else { return };
    let store = RedisBudgets::new(&redis.url())
        .unwrap()
        .timeout(Duration::from_millis(100));
    let limits: Arc<[Limit]> = Arc::from([
        Limit::per_day(Measure::OutputTokens, 1000),
        Limit::rate(Measure::OutputTokens, 1000, Duration::from_secs(3600)),
    ]);
    let admit = Admit {
        key: "k",
        limits: &limits,
        amounts: tokens(0, 60),
        now: NOW,
    };
    assert_eq!(store.admit(admit).await.unwrap(), Decision::Admitted);
    let before = evals(&redis);
    let mut sleeper = asleep(&redis, "0.45");
    BudgetStore::settle(&store, settlement(&limits, 60, 75));
    let _ = sleeper.wait();
    assert_eq!(used_after(&store, &limits, 60).await, 75);
    // Every attempt Redis received has run by now; later ones would too.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let status = store.status("k", &limits, NOW).await.unwrap();
    assert_eq!(status[0].used, 75, "the day budget is charged once");
    assert_eq!(status[1].used, 75, "the rate is charged once");
    println!(
        "settlement attempts Redis ran: {} (the rest timed out unread)",
        evals(&redis) - before
    );

    // The same settlement delivered twice, both queued while Redis sleeps and both run when
    // it wakes (two connections that wait: a retry whose first attempt Redis did apply):
    // one applies, the other nothing.
    let admit = Admit {
        amounts: tokens(0, 40),
        ..admit
    };
    assert_eq!(store.admit(admit).await.unwrap(), Decision::Admitted);
    let patient = || {
        RedisBudgets::new(&redis.url())
            .unwrap()
            .timeout(Duration::from_secs(3))
    };
    let patient = [patient(), patient()];
    for store in &patient {
        store.status("k", &limits, NOW).await.unwrap();
    }
    let twice = Settlement {
        id: "stream-2".into(),
        ..settlement(&limits, 40, 10)
    };
    let before = evals(&redis);
    let mut sleeper = asleep(&redis, "0.3");
    let (first, second) =
        tokio::join!(patient[0].settle_now(&twice), patient[1].settle_now(&twice));
    let _ = sleeper.wait();
    assert_eq!(evals(&redis) - before, 2, "both deliveries ran");
    assert!(
        first.unwrap() ^ second.unwrap(),
        "exactly one delivery applied"
    );
    let status = store.status("k", &limits, NOW).await.unwrap();
    assert_eq!(status[0].used, 75 + 10, "the day budget is charged once");
    assert_eq!(status[1].used, 75 + 10, "the rate is charged once");
}

/// Redis stopped while a stream runs (a persistent server, as production runs it): the
/// stream's settlement is retried and lands once Redis is back within the retries.
#[tokio::test]
async fn redis_stopped_mid_stream_settles_once_when_it_is_back() {
    let Some(redis) = Redis::start() else { return };
    let dir = std::env::temp_dir().join(format!("budget-redis-back-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = redis.stop();
    let redis = Redis::start_persistent_on(port, dir.to_str().unwrap());
    let store = RedisBudgets::new(&redis.url()).unwrap();
    let limits: Arc<[Limit]> = Arc::from([Limit::per_day(Measure::OutputTokens, 1000)]);
    let admit = Admit {
        key: "k",
        limits: &limits,
        amounts: tokens(0, 60),
        now: NOW,
    };
    assert_eq!(store.admit(admit).await.unwrap(), Decision::Admitted);
    // The stream runs; Redis goes away; the stream ends.
    let port = redis.stop();
    BudgetStore::settle(&store, settlement(&limits, 60, 75));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let redis = Redis::start_persistent_on(port, dir.to_str().unwrap());
    assert_eq!(
        used_after(&store, &limits, 60).await,
        75,
        "settled when back"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(store.status("k", &limits, NOW).await.unwrap()[0].used, 75);
    assert_eq!(store.lost_settlements(), 0);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Redis away for longer than a settlement's retries: the settlement is counted lost and
/// its reservation stays (the documented loss: charged what it reserved until the key's
/// state expires), never the reservation and the usage both.
#[tokio::test]
async fn redis_away_past_the_retries_counts_the_loss_and_keeps_the_reservation() {
    let Some(redis) = Redis::start() else { return };
    let dir = std::env::temp_dir().join(format!("budget-redis-away-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = redis.stop();
    let redis = Redis::start_persistent_on(port, dir.to_str().unwrap());
    let store = RedisBudgets::new(&redis.url())
        .unwrap()
        .timeout(Duration::from_millis(100));
    let limits: Arc<[Limit]> = Arc::from([Limit::per_day(Measure::OutputTokens, 1000)]);
    let admit = Admit {
        key: "k",
        limits: &limits,
        amounts: tokens(0, 60),
        now: NOW,
    };
    assert_eq!(store.admit(admit).await.unwrap(), Decision::Admitted);
    let port = redis.stop();
    BudgetStore::settle(&store, settlement(&limits, 60, 75));
    for _ in 0..300 {
        if store.lost_settlements() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.lost_settlements(), 1);
    let redis = Redis::start_persistent_on(port, dir.to_str().unwrap());
    let mut used = None;
    for _ in 0..100 {
        if let Ok(status) = store.status("k", &limits, NOW).await {
            used = Some(status[0].used);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(used, Some(60), "the reservation stands, charged once");
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A slow Redis at admission: the layer answers `503` within its timeout (no request hangs
/// on Redis), the inner service never sees the request, and the admission Redis runs late
/// (it was queued in the socket while Redis slept) reserves nothing for a request that was
/// refused: nothing stays reserved.
#[tokio::test]
async fn a_late_admission_is_refused_and_reserves_nothing_when_redis_runs_it() {
    let Some(redis) = Redis::start() else { return };
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let inner = tower::service_fn(move |_: Request<BudgetRequestBody<Inner>>| {
        counted.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))))
    });
    let store = RedisBudgets::new(&redis.url())
        .unwrap()
        .timeout(Duration::from_millis(100));
    let limits = [
        Limit::per_day(Measure::Requests, 100),
        Limit::rate(Measure::Requests, 100, Duration::from_secs(3600)),
    ];
    let service = BudgetLayer::new(store.clone())
        .limits(limits)
        .store_timeout(Duration::from_millis(150))
        .layer(inner);
    let request = || {
        Request::post("/v1/chat/completions")
            .body(Full::new(Bytes::from_static(br#"{"model":"m"}"#)))
            .unwrap()
    };
    // Connected first (a connection is made once).
    let status = store.status("anonymous", &limits, NOW).await.unwrap();
    assert_eq!(status[0].used, 0);

    let mut sleeper = asleep(&redis, "0.5");
    let started = std::time::Instant::now();
    let response = service.clone().oneshot(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "answered within the timeout, not when Redis woke: {:?}",
        started.elapsed()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let _ = sleeper.wait();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let status = store.status("anonymous", &limits, now).await.unwrap();
    assert_eq!(
        (status[0].used, status[1].used),
        (0, 0),
        "a refused request reserved nothing"
    );
    // Redis awake: admitted, and reserved once.
    assert_eq!(
        service.oneshot(request()).await.unwrap().status(),
        StatusCode::OK
    );
    let status = store.status("anonymous", &limits, now).await.unwrap();
    assert_eq!(status[0].used, 1);
}
