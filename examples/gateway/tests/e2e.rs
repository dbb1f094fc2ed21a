//! The example gateway over loopback: what a client sees when things go wrong, and the
//! digest and metrics endpoints.

use std::net::SocketAddr;
use std::time::Duration;

use example_gateway::{Gateway, GatewayConfig};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower_sse::{Outcome, StreamReport};
use tower_sse_mock::MockConfig;

async fn start(config: GatewayConfig) -> (Gateway, mpsc::UnboundedReceiver<StreamReport>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    (
        example_gateway::start(listener, config, Some(tx))
            .await
            .unwrap(),
        rx,
    )
}

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
        "tower_sse_streams_ended",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    assert!(text.contains("gen_ai_token_type=\"output\""));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
