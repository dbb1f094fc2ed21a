//! Mid-stream enforcement over loopback: a gateway (axum, `BudgetLayer::enforce_mid_stream`
//! → `SseLayer` with `BudgetStop` → hyper-util client) in front of an axum upstream that
//! generates more than the tenant has left, reqwest as the client. The stream ends with the
//! provider's `budget_exceeded` error, the outcome is `BudgetExceeded`, and the charge is
//! what the upstream generated (what the client saw, plus what was read and not sent).

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
use tokio::sync::mpsc::UnboundedReceiver;
use tower::ServiceBuilder;
use tower_sse::budget::{
    BudgetLayer, BudgetObserver, BudgetRequestBody, BudgetStop, Charge, Limit, Measure,
    MemoryBudgets,
};
use tower_sse::request::Tenant;
use tower_sse::{Outcome, SseLayer, StreamReport, UsageObserver, UsageSource};

/// 11 bytes of text per chunk: the usage observer's estimate is `ceil(11 n / 4)`.
const TEXT: &str = "Hello there";

fn chat_chunk() -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{{\"delta\":{{\"content\":\"{TEXT}\"}}}}]}}\n\n"
    )
}

/// An Anthropic stream whose `message_delta` events carry a running output count far above
/// what the text suggests (30 more per delta).
fn anthropic_events(deltas: u64) -> Vec<String> {
    let mut events = vec![
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-x\",\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}\n\n".to_owned(),
    ];
    for n in 1..=deltas {
        events.push(
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n".to_owned(),
        );
        events.push(format!(
            "event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{}},\"usage\":{{\"output_tokens\":{}}}}}\n\n",
            n * 30
        ));
    }
    events.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_owned());
    events
}

/// The upstream: 40 chat chunks (or the Anthropic stream for `/v1/messages`), one per
/// 10 ms of (paused) time, then the usage and `[DONE]`.
async fn upstream() -> SocketAddr {
    upstream_counting(Arc::default()).await
}

/// [`upstream`], counting in `sent` the events its streams produced.
async fn upstream_counting(sent: Arc<AtomicU64>) -> SocketAddr {
    let app = Router::new().fallback(move |request: Request| async move {
        let events: Vec<String> = if request.uri().path() == "/v1/messages" {
            anthropic_events(10)
        } else {
            let mut events = vec![chat_chunk(); 40];
            events.push("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":110,\"total_tokens\":121}}\n\ndata: [DONE]\n\n".to_owned());
            events
        };
        let sent = sent.clone();
        let stream = futures_util::stream::iter(events).then(move |event| {
            let sent = sent.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                sent.fetch_add(1, Ordering::Relaxed);
                Ok::<_, Infallible>(Bytes::from(event))
            }
        });
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(stream))
            .unwrap()
    });
    serve(app).await
}

/// The gateway: budgets (mid-stream enforcement on), the stream layer with `BudgetStop`,
/// a pooled client to `upstream`.
async fn gateway(
    budgets: BudgetLayer,
    upstream: SocketAddr,
) -> (SocketAddr, UnboundedReceiver<StreamReport>) {
    gateway_with(budgets, upstream, SseLayer::new()).await
}

/// [`gateway`] with this stream layer (before its observers, policy and sink are set).
async fn gateway_with(
    budgets: BudgetLayer,
    upstream: SocketAddr,
    layer: SseLayer,
) -> (SocketAddr, UnboundedReceiver<StreamReport>) {
    let (sink, reports) = report_channel();
    let forward = to_upstream(upstream);
    let stack = ServiceBuilder::new()
        .map_response(|response: http::Response<_>| response.map(Body::new))
        .layer(budgets)
        .map_response(|response: http::Response<_>| response.map(Body::new))
        .layer(
            layer
                .observer((UsageObserver::new(), BudgetObserver::new()))
                .policy(BudgetStop::new())
                .on_end(sink),
        )
        .service(forward);
    (serve(Router::new().fallback_service(stack)).await, reports)
}

fn post(addr: SocketAddr, path: &str, key: &str, body: Value) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {key}"))
        .header("x-api-key", key)
        .header("accept", "text/event-stream")
        .body(body.to_string())
}

fn chat_body(max_tokens: u64) -> Value {
    json!({"model": "gpt-4o", "stream": true, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "Hi"}]})
}

fn charge(report: &StreamReport) -> Charge {
    report
        .extensions
        .get::<Charge>()
        .cloned()
        .expect("the budget observer left its charge")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[tokio::test(start_paused = true)]
async fn a_stream_past_its_budget_ends_with_the_providers_error_and_is_charged_what_was_generated()
{
    let store = Arc::new(MemoryBudgets::new());
    let limits = [Limit::per_day(Measure::OutputTokens, 40)];
    let budgets = BudgetLayer::new(store.clone())
        .limits(limits)
        .enforce_mid_stream(true);
    let (addr, mut reports) = gateway(budgets, upstream().await).await;

    // Reserved 10 output tokens of 40: the stream may use 30 left + its 10 = 40, and 40
    // chunks of 11 bytes would be 110.
    let response = post(addr, "/v1/chat/completions", "tenant-a", chat_body(10))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    let report = next_report(&mut reports).await;

    // The client: whole chunks while the estimate stayed within 40 (ceil(11 * 14 / 4) =
    // 39; the 15th makes 42), then OpenAI's error object, and no `[DONE]`.
    let seen = text.matches(TEXT).count();
    assert_eq!(seen, 14, "{text}");
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    let error: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(error["error"]["type"], "budget_exceeded");
    assert_eq!(error["error"]["code"], "budget_exceeded");
    assert!(!text.contains("[DONE]"));

    // The report and the charge: what the upstream generated (every content event read,
    // the one that passed the allowance included), estimated since its usage never came.
    assert_eq!(report.outcome, Outcome::BudgetExceeded);
    assert!(
        report
            .policy
            .stopped_by
            .as_deref()
            .is_some_and(|r| r.contains("output_tokens"))
    );
    let generated = report.content_events;
    assert!(
        generated > seen as u64,
        "the stopping event was read: {generated}"
    );
    let usage = report.usage.expect("usage");
    assert_eq!(usage.source, UsageSource::Estimated);
    assert_eq!(usage.output_tokens, Some((11 * generated).div_ceil(4)));
    let charged = charge(&report);
    assert_eq!(charged.charged.output_tokens, (11 * generated).div_ceil(4));
    assert!(charged.estimated);

    // The store holds exactly that charge: over the day's 40, a debt the next request sees.
    let key = Tenant::from_key("tenant-a").to_string();
    let status = store.status_now(&key, &limits, now());
    assert_eq!(status[0].used, charged.charged.output_tokens);
    let next = post(addr, "/v1/chat/completions", "tenant-a", chat_body(10))
        .send()
        .await
        .unwrap();
    assert_eq!(next.status(), StatusCode::TOO_MANY_REQUESTS);

    // Another tenant with room for the whole stream: untouched, completed, charged its
    // reported usage.
    let roomy = BudgetLayer::new(MemoryBudgets::new())
        .limits([Limit::per_day(Measure::OutputTokens, 1_000)])
        .enforce_mid_stream(true);
    let (addr, mut reports) = gateway(roomy, upstream().await).await;
    let text = post(addr, "/v1/chat/completions", "tenant-b", chat_body(10))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let report = next_report(&mut reports).await;
    assert_eq!(text.matches(TEXT).count(), 40);
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(charge(&report).charged.output_tokens, 110);
}

#[tokio::test(start_paused = true)]
async fn cumulative_usage_events_stop_an_anthropic_stream_with_its_error_event() {
    let store = Arc::new(MemoryBudgets::new());
    // Total tokens: input estimate plus running output. The deltas report 30, 60, 90, ...
    let limits = [Limit::per_day(Measure::TotalTokens, 100)];
    let budgets = BudgetLayer::new(store.clone())
        .limits(limits)
        .enforce_mid_stream(true);
    let (addr, mut reports) = gateway(budgets, upstream().await).await;
    let body = json!({"model": "claude-x", "stream": true, "max_tokens": 20, "messages": [{"role": "user", "content": "Hi"}]});
    let response = post(addr, "/v1/messages", "tenant-c", body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    let report = next_report(&mut reports).await;

    // Input 7 (reported by message_start): 7 + 90 = 97 fits 100, 7 + 120 does not.
    assert_eq!(text.matches("\"output_tokens\":90").count(), 1, "{text}");
    assert!(!text.contains("\"output_tokens\":120"));
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    let data = last.strip_prefix("event: error\ndata: ").expect(&text);
    let error: Value = serde_json::from_str(data).unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "budget_exceeded");
    assert!(!text.contains("message_stop"));
    assert_eq!(report.outcome, Outcome::BudgetExceeded);
    let usage = report.usage.expect("usage");
    assert_eq!(usage.input_tokens, Some(7));
    assert_eq!(usage.output_tokens, Some(120));
    let charged = charge(&report);
    assert_eq!(charged.charged.input_tokens, 7);
    assert_eq!(charged.charged.output_tokens, 120);
    let key = Tenant::from_key("tenant-c").to_string();
    let status = store.status_now(&key, &limits, now());
    assert_eq!(status[0].used, 127);
}

/// Every format ends a stream past its budget with its own error: OpenAI Chat and
/// Completions an error object, Responses and Anthropic (above) an `error` event, Gemini
/// `RESOURCE_EXHAUSTED`, Ollama an `error` line.
#[tokio::test]
async fn each_provider_gets_its_own_budget_exceeded_error() {
    use http_body_util::{BodyExt, Full};
    use tower::{Layer, ServiceExt};

    let cases: [(&str, &str, &str); 5] = [
        (
            "/v1/chat/completions",
            "text/event-stream",
            "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"Hello there\"}}]}\n\n",
        ),
        (
            "/v1/completions",
            "text/event-stream",
            "data: {\"object\":\"text_completion\",\"choices\":[{\"text\":\"Hello there\"}]}\n\n",
        ),
        (
            "/v1/responses",
            "text/event-stream",
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hello there\"}\n\n",
        ),
        (
            "/v1beta/models/gemini-x:streamGenerateContent",
            "text/event-stream",
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hello there\"}],\"role\":\"model\"}}]}\n\n",
        ),
        (
            "/api/chat",
            "application/x-ndjson",
            "{\"model\":\"llama\",\"message\":{\"role\":\"assistant\",\"content\":\"Hello there\"},\"done\":false}\n",
        ),
    ];
    for (path, content_type, event) in cases {
        let (sink, mut reports) = report_channel();
        let body = event.repeat(10);
        let upstream = tower::service_fn(
            move |_: http::Request<
                tower_sse::request::UploadBody<BudgetRequestBody<Full<Bytes>>>,
            >| {
                let body = body.clone();
                async move {
                    let response = http::Response::builder()
                        .header("content-type", content_type)
                        .body(Full::new(Bytes::from(body)))
                        .unwrap();
                    Ok::<_, Infallible>(response)
                }
            },
        );
        // 1 output token reserved of 5: the second event's 22 bytes (6 tokens) pass it.
        let service = BudgetLayer::in_memory()
            .limits([Limit::per_day(Measure::OutputTokens, 5)])
            .default_output_tokens(1)
            .enforce_mid_stream(true)
            .layer(
                SseLayer::new()
                    .json_lines(true)
                    .observer((UsageObserver::new(), BudgetObserver::new()))
                    .policy(BudgetStop::new())
                    .on_end(sink)
                    .layer(upstream),
            );
        let request = http::Request::post(path)
            .body(Full::new(Bytes::from_static(
                br#"{"model":"m","stream":true}"#,
            )))
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert_eq!(status, http::StatusCode::OK, "{path}: {text}");
        let report = next_report(&mut reports).await;
        assert_eq!(report.outcome, Outcome::BudgetExceeded, "{path}: {text}");
        assert_eq!(text.matches("Hello there").count(), 1, "{path}: {text}");
        let last = text.trim_end().rsplit("\n\n").next().unwrap();
        let (name, data) = match last.split_once("\ndata: ") {
            Some((name, data)) => (name.strip_prefix("event: "), data),
            None => (None, last.strip_prefix("data: ").expect(&text)),
        };
        let error: Value = serde_json::from_str(data).unwrap();
        match path {
            "/v1/responses" => {
                assert_eq!(name, Some("error"));
                assert_eq!(error["code"], "budget_exceeded");
            }
            "/api/chat" => assert!(error["error"].as_str().unwrap().contains("budget")),
            p if p.starts_with("/v1beta") => {
                assert_eq!(error["error"]["status"], "RESOURCE_EXHAUSTED");
                assert_eq!(error["error"]["code"], 429);
            }
            _ => {
                assert_eq!(name, None);
                assert_eq!(error["error"]["type"], "budget_exceeded");
            }
        }
        assert_eq!(
            charge(&report).charged.output_tokens,
            (11 * report.content_events).div_ceil(4)
        );
    }
}

/// A budget stop drops the upstream at once, even where the layer drains after
/// disconnects (as it does after a policy stop): reading on would let the upstream go on
/// generating, and costing, past the budget the stop enforces.
#[cfg(feature = "drain")]
#[tokio::test(start_paused = true)]
async fn a_budget_stop_drops_the_upstream_even_when_the_layer_drains() {
    let sent = Arc::new(AtomicU64::new(0));
    let budgets = BudgetLayer::new(MemoryBudgets::new())
        .limits([Limit::per_day(Measure::OutputTokens, 40)])
        .enforce_mid_stream(true);
    let layer = SseLayer::new().drain_on_disconnect(Duration::from_secs(30));
    let (addr, mut reports) =
        gateway_with(budgets, upstream_counting(sent.clone()).await, layer).await;

    let text = post(addr, "/v1/chat/completions", "tenant-a", chat_body(10))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("budget_exceeded"), "{text}");
    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Outcome::BudgetExceeded);
    let usage = report.usage.expect("usage");
    assert_eq!(
        usage.source,
        UsageSource::Estimated,
        "the upstream's own count (after its 40th chunk) never came: it was dropped"
    );
    let generated = report.content_events;
    assert_eq!(
        charge(&report).charged.output_tokens,
        (11 * generated).div_ceil(4)
    );

    // A drain would have read all 41 events (one per 10 ms): well after that, the
    // upstream produced only what was read before the stop, and what the connection
    // could hold.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let produced = sent.load(Ordering::Relaxed);
    assert!(
        produced < 41,
        "the upstream stopped producing at the budget stop ({produced} events)"
    );
}
