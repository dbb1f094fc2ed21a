//! Budgets settled from answers that are not streams, in real servers over loopback: a
//! gateway (axum, `BudgetLayer` → `SseLayer` with the usage and budget observers → hyper-util
//! client) in front of an axum upstream, reqwest as the client. A `"stream": false` answer
//! makes no report: the budget layer reads the usage in its JSON at its end and charges
//! exactly that; an upstream error that reports none is charged no tokens; a success that
//! reports none, is too large to read, or is left before its end is charged what it
//! reserved. A stream is still settled once, by its report.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use http::StatusCode;
use serde_json::{Value, json};
use support::body::{next_report, report_channel};
use support::forward::{serve, to_upstream};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tower::ServiceBuilder;
use tower_sse::BoxFuture;
use tower_sse::budget::{
    Admit, Amounts, BudgetLayer, BudgetObserver, BudgetStore, Charge, Decision, Limit, LimitStatus,
    Measure, MemoryBudgets, Settlement, StoreError,
};
use tower_sse::request::Tenant;
use tower_sse::{SseLayer, StreamReport, UsageObserver};

/// Each provider's whole answer (`"stream": false`), as its API sends it, and the path it
/// answers on.
const CHAT: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there, how can I help?","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":8,"completion_tokens":4,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}"#;
const RESPONSES: &str = r#"{"id":"resp_1","object":"response","created_at":1,"status":"completed","model":"o3","output":[{"type":"message","id":"msg_1","role":"assistant","content":[{"type":"output_text","text":"Hi"}]}],"usage":{"input_tokens":31,"input_tokens_details":{"cached_tokens":16},"output_tokens":9,"output_tokens_details":{"reasoning_tokens":5},"total_tokens":40}}"#;
const ANTHROPIC: &str = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":10,"cache_creation_input_tokens":200,"cache_read_input_tokens":1000,"output_tokens":6}}"#;
const GEMINI: &str = r#"{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":14,"candidatesTokenCount":3,"totalTokenCount":25,"thoughtsTokenCount":8},"modelVersion":"gemini-2.5-flash","responseId":"r1"}"#;
const OLLAMA: &str = r#"{"model":"llama3.2","created_at":"2026-12-07T12:00:00Z","message":{"role":"assistant","content":"Hi"},"done_reason":"stop","done":true,"total_duration":1,"prompt_eval_count":26,"eval_count":2}"#;

const OPENAI_ERROR: &str = r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
const ANTHROPIC_ERROR: &str = r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too large"}}"#;
const NO_USAGE: &str = r#"{"id":"chatcmpl-2","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}]}"#;

const SSE: &str = concat!(
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"Hello\"}}]}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":3,\"total_tokens\":14}}\n\n",
    "data: [DONE]\n\n",
);

/// The bound the gateway reads answers up to, in these tests.
const MAX_ANSWER: usize = 4096;

/// A store that tells the test of every settlement it applies (in process).
#[derive(Clone)]
struct Told {
    inner: Arc<MemoryBudgets>,
    settled: UnboundedSender<Settlement>,
}

impl BudgetStore for Told {
    fn admit<'a>(&'a self, admit: Admit<'a>) -> BoxFuture<'a, Result<Decision, StoreError>> {
        self.inner.admit(admit)
    }

    fn settle(&self, settlement: Settlement) {
        self.inner.settle(settlement.clone());
        let _ = self.settled.send(settlement);
    }

    fn status<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        now: u64,
    ) -> BoxFuture<'a, Result<Vec<LimitStatus>, StoreError>> {
        self.inner.status(key, limits, now)
    }
}

/// The upstream: what it answers picked by `x-mode`, every call counted.
async fn upstream(hits: Arc<AtomicUsize>) -> SocketAddr {
    let app = Router::new().fallback(move |request: Request| {
        let hits = hits.clone();
        async move {
            hits.fetch_add(1, Ordering::SeqCst);
            let mode = request.headers()["x-mode"].to_str().unwrap().to_owned();
            let json = |status: u16, body: &'static str| {
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .unwrap()
            };
            // Without a length: several frames, the end known only when it comes.
            let chunked = |pieces: Vec<Bytes>| {
                let frames = pieces.into_iter().map(Ok::<_, Infallible>);
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Body::from_stream(futures_util::stream::iter(frames)))
                    .unwrap()
            };
            match mode.as_str() {
                "chat" => json(200, CHAT),
                "responses" => json(200, RESPONSES),
                "anthropic" => json(200, ANTHROPIC),
                "gemini" => json(200, GEMINI),
                "ollama" => json(200, OLLAMA),
                "chat-chunked" => chunked(
                    CHAT.as_bytes()
                        .chunks(7)
                        .map(Bytes::copy_from_slice)
                        .collect(),
                ),
                "429" => json(429, OPENAI_ERROR),
                "400" => json(400, ANTHROPIC_ERROR),
                "500-empty" => Response::builder().status(500).body(Body::empty()).unwrap(),
                "no-usage" => json(200, NO_USAGE),
                "big" | "big-chunked" => {
                    // A long answer whose usage comes last, past the bound.
                    let text = "x".repeat(2 * MAX_ANSWER);
                    let body = CHAT.replace("Hello there, how can I help?", &text);
                    if mode == "big" {
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(Body::from(body))
                            .unwrap()
                    } else {
                        chunked(
                            body.as_bytes()
                                .chunks(1000)
                                .map(Bytes::copy_from_slice)
                                .collect(),
                        )
                    }
                }
                "gzip" => Response::builder()
                    .header("content-type", "application/json")
                    .header("content-encoding", "gzip")
                    .body(Body::from(&b"\x1f\x8b\x08\x00 not really gzip"[..]))
                    .unwrap(),
                "half" => {
                    // Half of the answer, then nothing: the client leaves first.
                    let half = Bytes::from_static(&CHAT.as_bytes()[..CHAT.len() / 2]);
                    let stream =
                        futures_util::stream::once(async move { Ok::<_, Infallible>(half) })
                            .chain(futures_util::stream::pending());
                    Response::builder()
                        .header("content-type", "application/json")
                        .body(Body::from_stream(stream))
                        .unwrap()
                }
                "sse" => Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from(SSE))
                    .unwrap(),
                other => panic!("no mode {other}"),
            }
        }
    });
    serve(app).await
}

/// The gateway: budgets, then the stream layer, then a pooled client to `upstream`.
async fn gateway(
    budgets: BudgetLayer,
    upstream: SocketAddr,
) -> (SocketAddr, UnboundedReceiver<StreamReport>) {
    let (sink, reports) = report_channel();
    let forward = to_upstream(upstream);
    let stack = ServiceBuilder::new()
        .map_response(|response: http::Response<_>| response.map(Body::new))
        .layer(budgets)
        .map_response(|response: http::Response<_>| response.map(Body::new))
        .layer(
            SseLayer::new()
                .observer((UsageObserver::new(), BudgetObserver::new()))
                .on_end(sink),
        )
        .service(forward);
    let app = Router::new().fallback_service(stack);
    (serve(app).await, reports)
}

/// A store, a layer on it (day limits of every measure), and what it settles.
fn budgets() -> (
    Arc<MemoryBudgets>,
    BudgetLayer,
    UnboundedReceiver<Settlement>,
) {
    let store = Arc::new(MemoryBudgets::new());
    let (settled, rx) = mpsc::unbounded_channel();
    let told = Told {
        inner: store.clone(),
        settled,
    };
    let layer = BudgetLayer::new(told)
        .limits(limits())
        .max_answer_bytes(MAX_ANSWER);
    (store, layer, rx)
}

fn limits() -> [Limit; 4] {
    [
        Limit::per_day(Measure::Requests, 1_000),
        Limit::per_day(Measure::InputTokens, 1_000_000),
        Limit::per_day(Measure::OutputTokens, 1_000_000),
        Limit::per_day(Measure::TotalTokens, 1_000_000),
    ]
}

/// A request of `"stream": false` (no SSE `Accept`) that reserves 4 000 output tokens.
fn body() -> Value {
    json!({"model": "gpt-4o", "stream": false, "max_tokens": 4000, "messages": [{"role": "user", "content": "Hi"}]})
}

fn post(addr: SocketAddr, path: &str, mode: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header("authorization", "Bearer sk-answers")
        .header("x-mode", mode)
        .body(body().to_string())
}

/// A streaming request (`Accept: text/event-stream`, the upstream's `sse` mode): the text
/// the client received.
async fn stream(addr: SocketAddr) -> String {
    post(addr, "/v1/chat/completions", "sse")
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// What a request reserves: 1 request, the body's bytes / 4 of input, its 4 000 output.
fn reserved() -> Amounts {
    Amounts {
        requests: 1,
        input_tokens: (body().to_string().len() as u64).div_ceil(4),
        output_tokens: 4000,
        cost_micros: 0,
    }
}

fn tokens(input: u64, output: u64) -> Amounts {
    Amounts {
        requests: 1,
        input_tokens: input,
        output_tokens: output,
        cost_micros: 0,
    }
}

/// The next settlement the store applied.
async fn next(settled: &mut UnboundedReceiver<Settlement>) -> Settlement {
    // A guard against hanging forever, not a timing assertion.
    tokio::time::timeout(Duration::from_secs(30), settled.recv())
        .await
        .expect("a settlement")
        .expect("the store is alive")
}

/// The next charge `on_answer` was told of.
async fn told(charges: &mut UnboundedReceiver<Charge>) -> Charge {
    // A guard against hanging forever, not a timing assertion.
    tokio::time::timeout(Duration::from_secs(30), charges.recv())
        .await
        .expect("on_answer was told")
        .expect("the layer is alive")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// What the store holds for the key: requests, input, output, total.
fn used(store: &MemoryBudgets) -> Vec<u64> {
    let key = Tenant::from_key("sk-answers").to_string();
    store
        .status_now(&key, &limits(), now())
        .iter()
        .map(|s| s.used)
        .collect()
}

fn add(total: &mut Amounts, a: Amounts) {
    total.requests += a.requests;
    total.input_tokens += a.input_tokens;
    total.output_tokens += a.output_tokens;
}

#[tokio::test]
async fn each_providers_answer_is_charged_exactly_its_usage() {
    let hits = Arc::new(AtomicUsize::new(0));
    let upstream = upstream(hits.clone()).await;
    let (store, layer, mut settled) = budgets();
    let (gateway, mut reports) = gateway(layer.clone(), upstream).await;
    let mut total = Amounts::default();

    // The provider's counts, as each one counts (Anthropic's input without its cache reads
    // and writes; Gemini's output without its thinking tokens).
    let cases: [(&str, &str, &str, Amounts); 6] = [
        ("/v1/chat/completions", "chat", CHAT, tokens(8, 4)),
        ("/v1/chat/completions", "chat-chunked", CHAT, tokens(8, 4)),
        ("/v1/responses", "responses", RESPONSES, tokens(31, 9)),
        ("/v1/messages", "anthropic", ANTHROPIC, tokens(10, 6)),
        (
            "/v1beta/models/gemini-2.5-flash:generateContent",
            "gemini",
            GEMINI,
            tokens(14, 3),
        ),
        ("/api/chat", "ollama", OLLAMA, tokens(26, 2)),
    ];
    for (path, mode, answer, usage) in cases {
        let response = post(gateway, path, mode).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        // The client gets the answer untouched.
        assert_eq!(response.text().await.unwrap(), answer, "{mode}");
        let settlement = next(&mut settled).await;
        assert_eq!(settlement.reserved, reserved(), "{mode}");
        assert_eq!(
            settlement.actual, usage,
            "{mode}: charged its usage, not its reservation"
        );
        add(&mut total, usage);
    }

    // Settled once each, nothing reported (no stream), nothing left reserved.
    assert!(settled.try_recv().is_err(), "one settlement per answer");
    assert!(reports.try_recv().is_err(), "an answer makes no report");
    assert_eq!(layer.counts().settled, 6);
    assert_eq!(layer.counts().overrun_tokens, 0);
    assert_eq!(
        used(&store),
        [
            total.requests,
            total.input_tokens,
            total.output_tokens,
            total.input_tokens + total.output_tokens
        ]
    );
    assert_eq!(hits.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn an_upstream_error_is_charged_no_tokens() {
    let upstream = upstream(Arc::default()).await;
    let (store, layer, mut settled) = budgets();
    let (gateway, _reports) = gateway(layer.clone(), upstream).await;

    for (path, mode, status) in [
        ("/v1/chat/completions", "429", 429),
        ("/v1/messages", "400", 400),
        ("/v1/chat/completions", "500-empty", 500),
    ] {
        let response = post(gateway, path, mode).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status);
        let _ = response.bytes().await.unwrap();
        let settlement = next(&mut settled).await;
        assert_eq!(
            settlement.actual,
            tokens(0, 0),
            "{mode}: the request, and no tokens"
        );
    }
    assert!(settled.try_recv().is_err());
    assert_eq!(used(&store), [3, 0, 0, 0]);
}

#[tokio::test]
async fn an_answer_that_measures_nothing_is_charged_its_reservation() {
    let upstream = upstream(Arc::default()).await;
    let (store, layer, mut settled) = budgets();
    let (gateway, _reports) = gateway(layer.clone(), upstream).await;

    // No usage in it; over the bound (announced, or only found out as it passes);
    // compressed (not JSON until decompressed).
    for mode in ["no-usage", "big", "big-chunked", "gzip"] {
        let response = post(gateway, "/v1/chat/completions", mode)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.bytes().await.unwrap();
        if mode.starts_with("big") {
            assert!(
                body.len() > MAX_ANSWER,
                "the whole answer reached the client"
            );
        }
        let settlement = next(&mut settled).await;
        assert_eq!(
            settlement.actual,
            reserved(),
            "{mode}: nothing measured it, what it reserved stands (never zero)"
        );
    }
    assert!(settled.try_recv().is_err());
    let r = reserved();
    assert_eq!(
        used(&store),
        [
            4,
            4 * r.input_tokens,
            4 * r.output_tokens,
            4 * (r.input_tokens + r.output_tokens)
        ]
    );
}

#[tokio::test]
async fn a_client_that_leaves_before_the_end_is_charged_the_reservation() {
    let upstream = upstream(Arc::default()).await;
    let (_store, layer, mut settled) = budgets();
    let (gateway, _reports) = gateway(layer.clone(), upstream).await;

    let response = post(gateway, "/v1/chat/completions", "half")
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"{\"id\""));
    drop(body);
    let settlement = next(&mut settled).await;
    assert_eq!(settlement.actual, reserved());
    assert!(settled.try_recv().is_err());
    assert_eq!(layer.counts().settled, 1);
}

#[tokio::test]
async fn a_stream_is_settled_once_by_its_report() {
    let upstream = upstream(Arc::default()).await;
    let (store, layer, mut settled) = budgets();
    let (gateway, mut reports) = gateway(layer.clone(), upstream).await;

    // A stream: its report settles it, the answer path does not.
    assert_eq!(stream(gateway).await, SSE);
    let report = next_report(&mut reports).await;
    let charge = report.extensions.get::<Charge>().cloned().expect("charged");
    assert_eq!(charge.charged, tokens(11, 3));
    assert_eq!(next(&mut settled).await.actual, tokens(11, 3));

    // A streaming request answered with an error that is no stream: its report settles it
    // (no tokens), once.
    let response = post(gateway, "/v1/chat/completions", "429")
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let _ = response.bytes().await.unwrap();
    let report = next_report(&mut reports).await;
    let charge = report.extensions.get::<Charge>().cloned().expect("charged");
    assert_eq!(charge.charged, tokens(0, 0));
    assert_eq!(next(&mut settled).await.actual, tokens(0, 0));

    // A streaming request answered with a whole JSON answer: the report has no usage from
    // the body, so a success is charged its reserved output (flagged), once.
    let response = post(gateway, "/v1/chat/completions", "chat")
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), CHAT);
    let report = next_report(&mut reports).await;
    let charge = report.extensions.get::<Charge>().cloned().expect("charged");
    assert_eq!(charge.charged, reserved());
    assert!(charge.estimated);
    assert_eq!(next(&mut settled).await.actual, reserved());

    assert!(settled.try_recv().is_err(), "never settled twice");
    assert_eq!(layer.counts().settled, 3);
    let r = reserved();
    assert_eq!(
        used(&store),
        [
            3,
            11 + r.input_tokens,
            3 + r.output_tokens,
            14 + r.input_tokens + r.output_tokens
        ]
    );
}

/// `on_answer` is told of each answer's charge once, on every exit path, and of no stream's
/// (a stream's charge is in its report).
#[tokio::test]
async fn on_answer_is_told_each_answers_charge_once() {
    let upstream = upstream(Arc::default()).await;
    let (_store, layer, mut settled) = budgets();
    let (tell, mut charges) = mpsc::unbounded_channel::<Charge>();
    let layer = layer.on_answer(move |charge| {
        let _ = tell.send(charge.clone());
    });
    let (gateway, mut reports) = gateway(layer.clone(), upstream).await;

    // (mode, the charge, whether it is an estimate): usage read; an error, no tokens;
    // nothing measured, the reservation.
    for (mode, charged, estimated) in [
        ("chat", tokens(8, 4), false),
        ("429", tokens(0, 0), false),
        ("no-usage", reserved(), true),
    ] {
        let response = post(gateway, "/v1/chat/completions", mode)
            .send()
            .await
            .unwrap();
        let _ = response.bytes().await.unwrap();
        let settlement = next(&mut settled).await;
        let charge = told(&mut charges).await;
        assert_eq!(charge.charged, charged, "{mode}");
        assert_eq!(
            charge.charged, settlement.actual,
            "{mode}: what the store got"
        );
        assert_eq!(charge.estimated, estimated, "{mode}");
        assert_eq!(charge.reserved, reserved(), "{mode}");
        assert_eq!(charge.id, settlement.id, "{mode}");
    }

    // A client that leaves before the end: told at the drop, the reservation.
    let response = post(gateway, "/v1/chat/completions", "half")
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let _ = body.next().await.unwrap().unwrap();
    drop(body);
    let settlement = next(&mut settled).await;
    let charge = told(&mut charges).await;
    assert_eq!((charge.charged, charge.estimated), (reserved(), true));
    assert_eq!(charge.id, settlement.id);

    // A stream: settled by its report, not told here.
    assert_eq!(stream(gateway).await, SSE);
    let report = next_report(&mut reports).await;
    assert!(report.extensions.get::<Charge>().is_some());
    assert_eq!(next(&mut settled).await.actual, tokens(11, 3));
    assert!(
        charges.try_recv().is_err(),
        "one call per answer, none per stream"
    );
    assert!(format!("{layer:?}").contains("on_answer: true"));
}

/// The charge reaches the metrics as a stream's does.
#[cfg(feature = "metrics")]
#[test]
fn an_answers_charge_is_in_the_metrics() {
    use metrics_util::debugging::DebugValue;
    use tower_sse::budget::metrics::names;

    let snapshot = support::metrics::recorded(false, || async {
        let upstream = upstream(Arc::default()).await;
        let (_store, layer, mut settled) = budgets();
        let (gateway, _reports) = gateway(layer, upstream).await;
        let response = post(gateway, "/v1/messages", "anthropic")
            .send()
            .await
            .unwrap();
        assert_eq!(response.text().await.unwrap(), ANTHROPIC);
        assert_eq!(next(&mut settled).await.actual, tokens(10, 6));
    });
    let charged = |kind: &str| {
        snapshot
            .iter()
            .filter(|(key, ..)| {
                key.key().name() == names::TOKENS_CHARGED
                    && key.key().labels().any(|l| l.value() == kind)
            })
            .map(|(.., value)| match value {
                DebugValue::Counter(n) => *n,
                other => panic!("a counter: {other:?}"),
            })
            .sum::<u64>()
    };
    assert_eq!((charged("input"), charged("output")), (10, 6));
}

/// On a real `redis-server`: an answer's usage is what the store counts, settled once.
#[cfg(feature = "redis")]
#[tokio::test]
async fn on_redis_an_answer_is_charged_its_usage_once() {
    use tower_sse::budget::RedisBudgets;

    /// Redis budgets that tell the test of each settlement once the store took it.
    struct ToldRedis {
        inner: RedisBudgets,
        settled: UnboundedSender<(Settlement, bool)>,
    }

    impl BudgetStore for ToldRedis {
        fn admit<'a>(&'a self, admit: Admit<'a>) -> BoxFuture<'a, Result<Decision, StoreError>> {
            self.inner.admit(admit)
        }

        fn settle(&self, settlement: Settlement) {
            let (store, tell) = (self.inner.clone(), self.settled.clone());
            tokio::spawn(async move {
                let applied = store.settle_now(&settlement).await.unwrap();
                let _ = tell.send((settlement, applied));
            });
        }

        fn status<'a>(
            &'a self,
            key: &'a str,
            limits: &'a [Limit],
            now: u64,
        ) -> BoxFuture<'a, Result<Vec<LimitStatus>, StoreError>> {
            self.inner.status(key, limits, now)
        }
    }

    let Some(redis) = support::redis::Redis::start() else {
        return;
    };
    let store = RedisBudgets::new(&redis.url()).unwrap();
    let (tell, mut settled) = mpsc::unbounded_channel();
    let layer = BudgetLayer::new(ToldRedis {
        inner: store.clone(),
        settled: tell,
    })
    .limits(limits());
    let upstream = upstream(Arc::default()).await;
    let (gateway, _reports) = gateway(layer, upstream).await;

    for (path, mode, usage) in [
        ("/v1/responses", "responses", tokens(31, 9)),
        ("/v1/chat/completions", "429", tokens(0, 0)),
    ] {
        let response = post(gateway, path, mode).send().await.unwrap();
        let _ = response.bytes().await.unwrap();
        let (settlement, applied) = tokio::time::timeout(Duration::from_secs(30), settled.recv())
            .await
            .expect("a settlement")
            .unwrap();
        assert!(applied, "{mode}: applied once");
        assert_eq!(settlement.actual, usage, "{mode}");
    }
    assert!(settled.try_recv().is_err());
    let key = Tenant::from_key("sk-answers").to_string();
    let used: Vec<u64> = store
        .status(&key, &limits(), now())
        .await
        .unwrap()
        .iter()
        .map(|s| s.used)
        .collect();
    assert_eq!(used, [2, 31, 9, 40]);
}
