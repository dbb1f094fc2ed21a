//! The example gateway over loopback: what a client sees when things go wrong, and the
//! digest and metrics endpoints.

use std::net::SocketAddr;
use std::time::Duration;

use example_gateway::{ConnectionConfig, Gateway, GatewayConfig};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower_sse::{Outcome, StreamReport};
use tower_sse_mock::MockConfig;

mod support;
use support::start;

async fn with_mock(mock: MockConfig) -> (SocketAddr, tower_sse_mock::MockServer, GatewayConfig) {
    let (addr, server) = tower_sse_mock::spawn(mock).await;
    let config = GatewayConfig::new(format!("http://{addr}").parse().unwrap());
    (addr, server, config)
}

fn chat(stream: bool, mock: serde_json::Value) -> String {
    serde_json::json!({"model": "gpt-mock", "stream": stream, "messages": [], "mock": mock})
        .to_string()
}

async fn post(addr: SocketAddr, body: String) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn report(rx: &mut mpsc::UnboundedReceiver<StreamReport>) -> StreamReport {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a report within 30 s")
        .expect("the report channel is open")
}

/// Wait until no stream holds a permit (the permit is released as the body is dropped).
async fn until_no_open_streams(gateway: &Gateway) {
    for _ in 0..500 {
        if gateway.open_streams.get() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} streams still hold a permit", gateway.open_streams.get());
}

#[tokio::test]
async fn unreachable_upstream_is_a_502() {
    // A port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (gateway, _) = start(GatewayConfig::new(
        format!("http://{closed}").parse().unwrap(),
    ))
    .await;
    let response = post(gateway.addr, chat(true, serde_json::json!({}))).await;
    assert_eq!(response.status(), 502);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("upstream_unreachable")
    );
    until_no_open_streams(&gateway).await;
}

#[tokio::test]
async fn upstream_too_slow_to_answer_is_a_504() {
    let (_, _mock, mut config) = with_mock(MockConfig::new()).await;
    config.first_event_timeout = Some(Duration::from_millis(300));
    let (gateway, mut reports) = start(config).await;
    let response = post(
        gateway.addr,
        chat(true, serde_json::json!({"headers_delay_ms": 10_000})),
    )
    .await;
    assert_eq!(response.status(), 504);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("first_event_timeout")
    );
    assert_eq!(
        report(&mut reports).await.outcome,
        Outcome::FirstEventTimeout
    );
    until_no_open_streams(&gateway).await;
}

#[tokio::test]
async fn full_stream_limit_is_a_503_with_retry_after_and_frees_up() {
    let (_, _mock, mut config) = with_mock(MockConfig::new()).await;
    config.max_streams = 1;
    let (gateway, mut reports) = start(config).await;

    // One stream that stalls holds the only permit.
    let mut first = post(
        gateway.addr,
        chat(true, serde_json::json!({"stall_after": 1})),
    )
    .await;
    assert_eq!(first.status(), 200);
    let chunk = first.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&chunk).contains("data:"));
    assert_eq!(gateway.open_streams.get(), 1);

    let rejected = post(gateway.addr, chat(true, serde_json::json!({}))).await;
    assert_eq!(rejected.status(), 503);
    assert!(rejected.headers().contains_key("retry-after"));

    // The first client goes away: its permit comes back.
    drop(first);
    assert_eq!(
        report(&mut reports).await.outcome,
        Outcome::ClientDisconnected
    );
    until_no_open_streams(&gateway).await;
    let admitted = post(gateway.addr, chat(true, serde_json::json!({}))).await;
    assert_eq!(admitted.status(), 200);
    admitted.bytes().await.unwrap();
    until_no_open_streams(&gateway).await;
}

#[tokio::test]
async fn digest_is_registered_before_the_client_sees_done() {
    let (_, _mock, config) = with_mock(MockConfig::new().tokens(8)).await;
    let (gateway, mut reports) = start(config).await;
    let body = post(gateway.addr, chat(true, serde_json::json!({})))
        .await
        .bytes()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let id = text
        .split("\"id\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();

    // Asked for at once, in the same task, with no delay.
    let record = reqwest::get(format!("http://{}/v1/digests/{id}", gateway.addr))
        .await
        .unwrap();
    assert_eq!(record.status(), 200);
    let record: serde_json::Value = serde_json::from_str(&record.text().await.unwrap()).unwrap();
    let expected = hex(&Sha256::digest(&body));
    assert_eq!(record["response_digest"], expected.as_str(), "{record}");

    let report = report(&mut reports).await;
    assert_eq!(report.digest.unwrap().to_hex(), expected);
    assert!(report.request_digest.is_some());
}

#[tokio::test]
async fn metrics_endpoint_serves_the_genai_metrics() {
    let (_, _mock, config) = with_mock(MockConfig::new().tokens(4)).await;
    let (gateway, mut reports) = start(config).await;
    post(gateway.addr, chat(true, serde_json::json!({})))
        .await
        .bytes()
        .await
        .unwrap();
    report(&mut reports).await;
    let text = reqwest::get(format!("http://{}/metrics", gateway.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "gen_ai_client_operation_duration",
        "gen_ai_client_operation_time_to_first_chunk",
        "gen_ai_client_operation_time_per_output_chunk",
        "gen_ai_client_token_usage",
        "gen_ai_server_time_to_first_token",
        "tower_sse_streams_ended_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    assert!(text.contains("gen_ai_token_type=\"output\""));
    // Prometheus's naming rule (`promtool check metrics`): a counter's name ends in `_total`.
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            assert!(name.ends_with("_total"), "counter {name} lacks `_total`");
        }
    }
    assert!(
        text.contains("# TYPE gateway_requests_total counter"),
        "{text}"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An upstream like Ollama's OpenAI-compatible API: every stream carries the same response
/// id. Its text says whose request it answered, so that the digests differ.
async fn same_id_upstream() -> SocketAddr {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|headers: http::HeaderMap| async move {
            let who = headers
                .get("authorization")
                .map_or("nobody".into(), |v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let body = format!(
                "data: {{\"id\":\"chatcmpl-7\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"for {who}\"}}}}]}}\n\ndata: [DONE]\n\n"
            );
            http::Response::builder()
                .header("content-type", "text/event-stream")
                .body(axum::body::Body::from(body))
                .unwrap()
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(example_gateway::serve(
        listener,
        app,
        ConnectionConfig::default(),
    ));
    addr
}

#[tokio::test]
async fn digests_are_kept_per_tenant() {
    let upstream = same_id_upstream().await;
    let (gateway, mut reports) = start(GatewayConfig::new(
        format!("http://{upstream}").parse().unwrap(),
    ))
    .await;
    let client = reqwest::Client::new();
    let stream = |token: &'static str| {
        let client = client.clone();
        let url = format!("http://{}/v1/chat/completions", gateway.addr);
        async move {
            client
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(chat(true, serde_json::json!({})))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        }
    };
    let lookup = |token: Option<&'static str>| {
        let mut request = client.get(format!("http://{}/v1/digests/chatcmpl-7", gateway.addr));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };

    let alices = stream("sk-alice").await;
    report(&mut reports).await;
    // Bob's stream gets the same response id: it must not replace Alice's record.
    let bobs = stream("sk-bob").await;
    report(&mut reports).await;
    assert_ne!(alices, bobs);

    let (status, record) = lookup(Some("sk-alice")).await;
    assert_eq!(status, 200, "{record}");
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(
        record["response_digest"],
        hex(&Sha256::digest(&alices)).as_str()
    );
    assert_eq!(
        record["tenant"],
        tower_sse::request::Tenant::from_key("sk-alice")
            .to_string()
            .as_str()
    );
    let (status, record) = lookup(Some("sk-bob")).await;
    assert_eq!(status, 200, "{record}");
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(
        record["response_digest"],
        hex(&Sha256::digest(&bobs)).as_str()
    );

    // Nobody else finds either, and learns nothing: the same 404 as for an unknown id.
    let (unknown_status, unknown) = {
        let response = client
            .get(format!(
                "http://{}/v1/digests/chatcmpl-unknown",
                gateway.addr
            ))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    assert_eq!(unknown_status, 404);
    for other in [None, Some("sk-eve"), Some("")] {
        let (status, body) = lookup(other).await;
        assert_eq!(
            (status, body.as_str()),
            (404, unknown.as_str()),
            "{other:?}"
        );
    }
    // The same key as x-api-key is the same tenant.
    let response = client
        .get(format!("http://{}/v1/digests/chatcmpl-7", gateway.addr))
        .header("x-api-key", "sk-alice")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn healthz_answers_and_metrics_can_move_to_their_own_listener() {
    let (_, _mock, mut config) = with_mock(MockConfig::new().tokens(2)).await;
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let (gateway, _reports) = start(config).await;
    let metrics_addr = gateway.metrics_addr.expect("a metrics listener");
    let get = |url: String| async move { reqwest::get(url).await.unwrap().status().as_u16() };
    assert_eq!(get(format!("http://{}/healthz", gateway.addr)).await, 200);
    assert_eq!(get(format!("http://{metrics_addr}/metrics")).await, 200);
    assert_eq!(get(format!("http://{metrics_addr}/healthz")).await, 200);
    // Not on the main listener any more (it goes to the upstream, which knows no such path).
    assert_ne!(get(format!("http://{}/metrics", gateway.addr)).await, 200);
}

/// `--prices`: each stream's report carries its cost (from the usage the gateway asked the
/// upstream for) and its tenant (from the caller's key).
#[tokio::test]
async fn priced_streams_report_their_cost_and_tenant() {
    let (_, _mock, mut config) = with_mock(MockConfig::new().tokens(8)).await;
    config.prices = Some(
        tower_sse::cost::PriceTable::from_json(
            r#"{"models": {"gpt-mock*": {"input": 1, "output": 2}}}"#,
        )
        .unwrap(),
    );
    let (gateway, mut reports) = start(config).await;
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", gateway.addr))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-e2e")
        .body(chat(true, serde_json::json!({})))
        .send()
        .await
        .unwrap();
    response.bytes().await.unwrap();
    let report = report(&mut reports).await;
    assert_eq!(
        report.tenant,
        Some(tower_sse::request::Tenant::from_key("sk-e2e"))
    );
    let usage = report.usage.expect("the gateway asks for usage");
    let (input, output) = (usage.input_tokens.unwrap(), usage.output_tokens.unwrap());
    let cost = report.cost.expect("gpt-mock is priced");
    // 1 and 2 per million tokens: 1 and 2 micro-units per token.
    assert_eq!(cost.total_micros, input + 2 * output);
    assert!(cost.complete && !cost.estimated);
}

/// `--upstream` twice: the first refuses connections (the gateway's own `502` for it), so the
/// request fails over to the second before its first token; the client gets a normal stream
/// and the one report lists both attempts.
#[tokio::test]
async fn a_second_upstream_serves_when_the_first_is_unreachable() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (mock, _mock, _) = with_mock(MockConfig::new()).await;
    let mut config = GatewayConfig::new(format!("http://{closed}").parse().unwrap());
    config.fallback_upstreams = vec![format!("http://{mock}").parse().unwrap()];
    let (gateway, mut reports) = start(config).await;
    let response = post(gateway.addr, chat(true, serde_json::json!({}))).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let report = report(&mut reports).await;
    assert_eq!(report.outcome, Outcome::Completed);
    let failover = report.failover.expect("the attempts");
    assert_eq!(failover.attempts.len(), 2);
    assert_eq!(failover.attempts[0].status.map(|s| s.as_u16()), Some(502));
    assert_eq!(failover.served, Some(1));

    // A request that does not stream fails over too, and gets the JSON answer.
    let response = post(gateway.addr, chat(false, serde_json::json!({}))).await;
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("chat.completion"));
    until_no_open_streams(&gateway).await;
}
