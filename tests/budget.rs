//! Budgets in real servers over loopback: a gateway (axum, `BudgetLayer` → `SseLayer` →
//! hyper-util client) in front of an axum upstream, reqwest as the client. Admission before
//! the upstream (429 / 400 in the provider's shape, the upstream never called) and
//! settlement from the report on every exit path (charged = the report's usage).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedReceiver;
use tower::ServiceBuilder;
use tower_sse::budget::{
    Amounts, BudgetLayer, BudgetObserver, Charge, Limit, Measure, MemoryBudgets,
};
use tower_sse::request::Tenant;
use tower_sse::{Outcome, SseLayer, StreamReport, Usage, UsageObserver, UsageSource};

const CHUNK: &str = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"Hello there\"}}]}\n\n";
const USAGE: &str = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":3,\"total_tokens\":14}}\n\ndata: [DONE]\n\n";

/// The upstream: its behaviour picked by `x-mode`, every call counted.
async fn upstream(hits: Arc<AtomicUsize>) -> SocketAddr {
    upstream_with_cut(hits, Arc::new(Notify::new())).await
}

/// The upstream; a `cut` stream fails when `cut` is notified (after the client read its
/// first events, so that they reached it).
async fn upstream_with_cut(hits: Arc<AtomicUsize>, cut: Arc<Notify>) -> SocketAddr {
    let app = Router::new().fallback(move |request: Request| {
        let hits = hits.clone();
        let cut = cut.clone();
        async move {
            hits.fetch_add(1, Ordering::SeqCst);
            let mode = request.headers()["x-mode"].to_str().unwrap().to_owned();
            let pieces: Vec<Result<Bytes, std::io::Error>> = match mode.as_str() {
                "json-error" => {
                    return Response::builder()
                        .status(StatusCode::TOO_MANY_REQUESTS)
                        .header("content-type", "application/json")
                        .body(Body::from(r#"{"error":{"type":"rate_limit"}}"#))
                        .unwrap();
                }
                "cut" => vec![
                    Ok(Bytes::from_static(CHUNK.as_bytes())),
                    Ok(Bytes::from_static(CHUNK.as_bytes())),
                ],
                _ => vec![
                    Ok(Bytes::from_static(CHUNK.as_bytes())),
                    Ok(Bytes::from_static(CHUNK.as_bytes())),
                    Ok(Bytes::from_static(CHUNK.as_bytes())),
                ],
            };
            let tail: Vec<Result<Bytes, std::io::Error>> = match mode.as_str() {
                "complete" => vec![Ok(Bytes::from_static(USAGE.as_bytes()))],
                _ => vec![],
            };
            let stream = futures_util::stream::iter(pieces).chain(futures_util::stream::iter(tail));
            let body = match mode.as_str() {
                "hang" => Body::from_stream(stream.chain(futures_util::stream::pending())),
                "cut" => Body::from_stream(stream.chain(futures_util::stream::once(async move {
                    cut.notified().await;
                    Err(std::io::Error::other("upstream cut"))
                }))),
                _ => Body::from_stream(stream),
            };
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .unwrap()
        }
    });
    serve(app).await
}

/// The gateway: budgets, then the stream layer, then a pooled client to `upstream`.
async fn gateway(
    budgets: BudgetLayer,
    sse: SseLayer,
    upstream: SocketAddr,
) -> (SocketAddr, UnboundedReceiver<StreamReport>) {
    let (sink, reports) = report_channel();
    let forward = to_upstream(upstream);
    let stack = ServiceBuilder::new()
        .map_response(|response: http::Response<_>| response.map(Body::new))
        .layer(budgets)
        .map_response(|response: http::Response<_>| response.map(Body::new))
        .layer(
            sse.observer((UsageObserver::new(), BudgetObserver::new()))
                .on_end(sink),
        )
        .service(forward);
    let app = Router::new().fallback_service(stack);
    (serve(app).await, reports)
}

fn chat(addr: SocketAddr, key: &str, mode: &str, body: Value) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .header("accept", "text/event-stream")
        .header("x-mode", mode)
        .body(body.to_string())
}

fn request_body() -> Value {
    json!({"model": "gpt-4o", "stream": true, "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]})
}

/// What the store holds now for the key's one day limit of total tokens.
fn used(store: &MemoryBudgets, key: &str, limits: &[Limit]) -> Vec<u64> {
    store
        .status_now(key, limits, now())
        .iter()
        .map(|s| s.used)
        .collect()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn charge(report: &StreamReport) -> Charge {
    report
        .extensions
        .get::<Charge>()
        .cloned()
        .expect("the budget observer left its charge")
}

/// What the report says was used, by the documented rule (input: reported, else the
/// estimate when the upstream accepted; output: the report's, reported or estimated).
fn expected(report: &StreamReport, input_estimate: u64) -> Amounts {
    let usage = report.usage.unwrap_or_default();
    let accepted = report.status.is_some_and(|s| s.is_success());
    Amounts {
        requests: 1,
        input_tokens: usage
            .input_tokens
            .unwrap_or(if accepted { input_estimate } else { 0 }),
        output_tokens: usage.output_tokens.unwrap_or(0),
        cost_micros: 0,
    }
}

#[tokio::test]
async fn every_exit_path_is_charged_its_usage_once() {
    let hits = Arc::new(AtomicUsize::new(0));
    let cut = Arc::new(Notify::new());
    let upstream = upstream_with_cut(hits.clone(), cut.clone()).await;
    let store = Arc::new(MemoryBudgets::new());
    let limits = [
        Limit::per_day(Measure::TotalTokens, 1_000_000),
        Limit::per_day(Measure::Requests, 1_000),
        Limit::per_day(Measure::OutputTokens, 1_000_000),
    ];
    let budgets = BudgetLayer::new(store.clone()).limits(limits);
    let (gateway, mut reports) = gateway(budgets, SseLayer::new(), upstream).await;
    let key = Tenant::from_key("sk-alice").to_string();
    let input_estimate = (request_body().to_string().len() as u64).div_ceil(4);
    let mut total = Amounts::default();
    let mut account = |charge: &Charge| {
        total.requests += charge.charged.requests;
        total.input_tokens += charge.charged.input_tokens;
        total.output_tokens += charge.charged.output_tokens;
    };

    // Completed: the provider's counts, the reservation (50 output) refunded to 3.
    let text = chat(gateway, "sk-alice", "complete", request_body())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("[DONE]"));
    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Outcome::Completed);
    let c = charge(&report);
    assert_eq!((c.charged.input_tokens, c.charged.output_tokens), (11, 3));
    assert!(!c.estimated);
    assert_eq!(c.reserved.output_tokens, 50);
    assert_eq!(c.key, key);
    account(&c);
    assert_eq!(used(&store, &key, &limits), [14, 1, 3]);

    // Upstream cut after two content events: the estimate of what was delivered.
    let response = chat(gateway, "sk-alice", "cut", request_body())
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    assert!(stream.next().await.unwrap().unwrap().starts_with(b"data: "));
    cut.notify_one();
    while let Some(Ok(_)) = stream.next().await {}
    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Outcome::UpstreamError);
    let c = charge(&report);
    assert_eq!(c.charged, expected(&report, input_estimate));
    assert!(
        c.charged.output_tokens > 0,
        "tokens that flowed are charged: {report:?}"
    );
    assert_eq!(report.usage.unwrap().source, UsageSource::Estimated);
    assert!(c.estimated);
    account(&c);

    // Client disconnect after the first content event.
    let response = chat(gateway, "sk-alice", "hang", request_body())
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    drop(stream);
    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Outcome::ClientDisconnected);
    let c = charge(&report);
    assert_eq!(c.charged, expected(&report, input_estimate));
    assert!(c.charged.output_tokens > 0);
    account(&c);

    // A non-stream answer (the upstream's own 429 in JSON): the request, no tokens.
    let response = chat(gateway, "sk-alice", "json-error", request_body())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let report = next_report(&mut reports).await;
    let c = charge(&report);
    assert_eq!(
        c.charged,
        Amounts {
            requests: 1,
            ..Amounts::default()
        }
    );
    account(&c);

    // At rest, nothing stays reserved: the store holds exactly what was charged.
    assert_eq!(
        used(&store, &key, &limits),
        [
            total.input_tokens + total.output_tokens,
            total.requests,
            total.output_tokens
        ]
    );
    assert_eq!(hits.load(Ordering::SeqCst), 4);
    assert!(reports.try_recv().is_err(), "one report per stream");
}

#[tokio::test(start_paused = true)]
async fn a_deadline_is_charged_its_usage() {
    let upstream = upstream(Arc::new(AtomicUsize::new(0))).await;
    let store = Arc::new(MemoryBudgets::new());
    let limits = [Limit::per_day(Measure::TotalTokens, 1_000_000)];
    let budgets = BudgetLayer::new(store.clone()).limits(limits);
    let sse = SseLayer::new().total_timeout(Duration::from_secs(5));
    let (gateway, mut reports) = gateway(budgets, sse, upstream).await;
    let key = Tenant::from_key("sk-bob").to_string();
    let input_estimate = (request_body().to_string().len() as u64).div_ceil(4);

    let _ = chat(gateway, "sk-bob", "hang", request_body())
        .send()
        .await
        .unwrap()
        .bytes()
        .await;
    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Outcome::DeadlineExceeded);
    let c = charge(&report);
    assert_eq!(c.charged, expected(&report, input_estimate));
    assert_eq!(
        used(&store, &key, &limits),
        [c.charged.input_tokens + c.charged.output_tokens]
    );
}

#[tokio::test]
async fn over_budget_is_refused_before_the_upstream_in_the_providers_shape() {
    let hits = Arc::new(AtomicUsize::new(0));
    let upstream = upstream(hits.clone()).await;
    // A fixed clock: the wait is exact.
    let clock = Arc::new(AtomicU64::new(1_796_623_200_000_000_000));
    let at = clock.clone();
    let budgets = BudgetLayer::in_memory()
        .clock(move || at.load(Ordering::SeqCst))
        .limits([Limit::rate(Measure::Requests, 1, Duration::from_secs(60))])
        .limits_for(
            Tenant::from_key("sk-small").to_string(),
            [Limit::rate(
                Measure::OutputTokens,
                40,
                Duration::from_secs(60),
            )],
        );
    let (gateway, mut reports) = gateway(budgets, SseLayer::new(), upstream).await;

    let first = chat(gateway, "sk-alice", "complete", request_body())
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    first.bytes().await.unwrap();
    next_report(&mut reports).await;
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // OpenAI's shape, Retry-After from the limit's state (a request a minute: 60 s).
    let second = chat(gateway, "sk-alice", "complete", request_body())
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(second.headers()["retry-after"], "60");
    let error: Value = serde_json::from_slice(&second.bytes().await.unwrap()).unwrap();
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("requests 1/60s")
    );
    // 20 s later, 40 s to go.
    clock.fetch_add(20_000_000_000, Ordering::SeqCst);
    let third = chat(gateway, "sk-alice", "complete", request_body())
        .send()
        .await
        .unwrap();
    assert_eq!(third.headers()["retry-after"], "40");

    // Anthropic's and Gemini's shapes.
    let anthropic = reqwest::Client::new()
        .post(format!("http://{gateway}/v1/messages"))
        .header("x-api-key", "sk-alice")
        .header("x-mode", "complete")
        .body(r#"{"model":"claude","max_tokens":10,"stream":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(anthropic.status(), StatusCode::TOO_MANY_REQUESTS);
    let error: Value = serde_json::from_slice(&anthropic.bytes().await.unwrap()).unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "rate_limit_error");
    let gemini = reqwest::Client::new()
        .post(format!(
            "http://{gateway}/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse&key=sk-alice"
        ))
        .header("x-mode", "complete")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(gemini.status(), StatusCode::TOO_MANY_REQUESTS);
    let error: Value = serde_json::from_slice(&gemini.bytes().await.unwrap()).unwrap();
    assert_eq!(error["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(error["error"]["code"], 429);

    // A request that can never fit: 400, no Retry-After.
    let never = chat(gateway, "sk-small", "complete", request_body())
        .send()
        .await
        .unwrap();
    assert_eq!(never.status(), StatusCode::BAD_REQUEST);
    assert!(never.headers().get("retry-after").is_none());
    let error: Value = serde_json::from_slice(&never.bytes().await.unwrap()).unwrap();
    assert_eq!(error["error"]["code"], "budget_exceeded");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("never fit")
    );

    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the upstream saw only the first"
    );
    assert!(
        reports.try_recv().is_err(),
        "refusals never reach the stream layer"
    );
}

/// Money budgets with a pricing of the test's own; debt from an overrun blocks the next
/// admission until it refills.
#[tokio::test]
async fn money_budget_reserves_prices_and_records_overrun_as_debt() {
    let upstream = upstream(Arc::new(AtomicUsize::new(0))).await;
    let store = Arc::new(MemoryBudgets::new());
    // 1 micro-unit per input token, 10 per output token, for gpt-4o only.
    let pricing = |model: Option<&str>, usage: &Usage| -> Option<u64> {
        (model? == "gpt-4o")
            .then(|| usage.input_tokens.unwrap_or(0) + 10 * usage.output_tokens.unwrap_or(0))
    };
    let limits = [Limit::per_month(Measure::CostMicros, 1_000)];
    let budgets = BudgetLayer::new(store.clone())
        .pricing(pricing)
        .default_output_tokens(2)
        .limits(limits);
    let (gateway, mut reports) = gateway(budgets, SseLayer::new(), upstream).await;
    let key = Tenant::from_key("sk-carol").to_string();
    // No max_tokens: 2 output tokens reserved, 3 generated: an overrun of 1.
    let body = json!({"model": "gpt-4o", "stream": true});
    chat(gateway, "sk-carol", "complete", body.clone())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let c = charge(&next_report(&mut reports).await);
    assert_eq!(c.reserved.output_tokens, 2);
    assert_eq!(c.charged.cost_micros, 11 + 30);
    assert_eq!(used(&store, &key, &limits), [41]);
}
