//! The one-command demonstration: a mock LLM upstream and the tower-sse gateway run
//! in-process on free ports, and a handful of concurrent streaming clients talk to the
//! gateway in five provider formats. One upstream stalls (the client sees keep-alives, then
//! an idle-timeout error event) and one client hangs up early (its usage is still
//! reported). Each finished stream prints one row from its report.
//!
//! ```sh
//! cargo run -p example-demo
//! ```
//!
//! The gateway is the `example-gateway` package (`examples/gateway`); its stack is in
//! `examples/gateway/src/lib.rs`.

use std::time::Duration;

use bytes::Bytes;
use example_gateway::GatewayConfig;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::sync::mpsc;
use tower_sse::{Outcome, StreamReport, UsageSource};

/// The HTTP/1.1 client the demo's streaming clients share.
type Http = HttpClient<HttpConnector, Full<Bytes>>;

/// One client of the demo.
struct Client {
    label: &'static str,
    path: String,
    body: serde_json::Value,
    /// Hang up after this many data frames.
    hang_up_after: Option<usize>,
}

/// What a client saw on the wire.
#[derive(Debug, Default)]
struct Seen {
    status: u16,
    bytes: usize,
    keep_alives: usize,
    error_event: bool,
}

async fn run(http: Http, base: String, client: Client) -> (&'static str, Seen) {
    let mut seen = Seen::default();
    let request = Request::post(format!("{base}{}", client.path))
        .header("accept", "text/event-stream")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(client.body.to_string())))
        .expect("a valid request");
    let response = http.request(request).await.expect("the gateway answers");
    seen.status = response.status().as_u16();
    let mut body = response.into_body();
    let mut data_frames = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            break;
        };
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        let text = String::from_utf8_lossy(&chunk);
        seen.bytes += chunk.len();
        seen.keep_alives += text.matches(": keep-alive").count();
        seen.error_event |= text.contains("event: error");
        if text.contains("data:") {
            data_frames += 1;
        }
        if client.hang_up_after.is_some_and(|n| data_frames >= n) {
            break; // drops the response body: the connection closes
        }
    }
    (client.label, seen)
}

fn millis(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.0}ms", d.as_secs_f64() * 1000.0))
}

fn tokens(n: Option<u64>) -> String {
    n.map_or("-".into(), |n| n.to_string())
}

#[tokio::main]
async fn main() {
    let started = std::time::Instant::now();

    // The upstream: 24 tokens per answer, 20 ms apart.
    let mock = tower_sse_mock::MockConfig::new()
        .tokens(24)
        .delay(Duration::from_millis(20));
    let (upstream, _mock) = tower_sse_mock::spawn(mock).await;

    // The gateway: keep-alive after 1 s of silence, idle timeout 3 s.
    let mut config = GatewayConfig::new(format!("http://{upstream}").parse().unwrap());
    config.keep_alive = Some(Duration::from_secs(1));
    config.idle_timeout = Some(Duration::from_secs(3));
    config.first_event_timeout = Some(Duration::from_secs(10));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let gw = example_gateway::start(listener, config, Some(reports_tx))
        .await
        .unwrap();
    let base = format!("http://{}", gw.addr);
    println!("mock upstream on http://{upstream}, gateway on {base}\n");

    let messages = json!([{"role": "user", "content": "Tell me about streaming."}]);
    let clients = vec![
        Client {
            label: "openai chat (+usage)",
            path: "/v1/chat/completions".into(),
            body: json!({"model": "gpt-mock", "stream": true, "stream_options": {"include_usage": true}, "messages": messages}),
            hang_up_after: None,
        },
        Client {
            label: "openai chat",
            path: "/v1/chat/completions".into(),
            body: json!({"model": "gpt-mock", "stream": true, "messages": messages}),
            hang_up_after: None,
        },
        Client {
            label: "openai responses",
            path: "/v1/responses".into(),
            body: json!({"model": "o-mock", "stream": true, "input": "Tell me about streaming."}),
            hang_up_after: None,
        },
        Client {
            label: "anthropic messages",
            path: "/v1/messages".into(),
            body: json!({"model": "claude-mock", "stream": true, "max_tokens": 64, "messages": messages}),
            hang_up_after: None,
        },
        Client {
            label: "gemini",
            path: "/v1beta/models/gemini-mock:streamGenerateContent?alt=sse".into(),
            body: json!({"contents": [{"role": "user", "parts": [{"text": "Tell me about streaming."}]}]}),
            hang_up_after: None,
        },
        Client {
            label: "ollama (ndjson)",
            path: "/api/chat".into(),
            body: json!({"model": "llama-mock", "messages": messages}),
            hang_up_after: None,
        },
        Client {
            label: "stalled upstream",
            path: "/v1/chat/completions".into(),
            body: json!({"model": "gpt-mock", "stream": true, "messages": messages, "mock": {"stall_after": 5}}),
            hang_up_after: None,
        },
        Client {
            label: "client hangs up",
            path: "/v1/chat/completions".into(),
            body: json!({"model": "gpt-mock", "stream": true, "messages": messages}),
            hang_up_after: Some(6),
        },
    ];
    let expected = clients.len();

    let http: Http = HttpClient::builder(TokioExecutor::new()).build_http();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|client| tokio::spawn(run(http.clone(), base.clone(), client)))
        .collect();
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.expect("client task"));
    }

    // One report per stream; the last ones may trail the clients by a moment.
    let mut collected: Vec<StreamReport> = Vec::new();
    while collected.len() < expected {
        match tokio::time::timeout(Duration::from_secs(10), reports.recv()).await {
            Ok(Some(report)) => collected.push(report),
            _ => break,
        }
    }

    println!(
        "{:<21} {:<20} {:>8} {:>9} {:>9} {:>6} {:>6} {:<9} {:<16}",
        "stream", "outcome", "ttft", "itl p50", "itl p99", "in", "out", "usage", "digest"
    );
    let mut failures = Vec::new();
    for (label, client_seen) in &seen {
        // Match reports to clients by the model the request named.
        let model_hint = match *label {
            "openai responses" => "o-mock",
            "anthropic messages" => "claude-mock",
            "gemini" => "gemini-mock",
            "ollama (ndjson)" => "llama-mock",
            _ => "gpt-mock",
        };
        let position = collected.iter().position(|r| {
            r.model.as_deref().is_some_and(|m| m.contains(model_hint))
                && match *label {
                    "stalled upstream" => r.outcome == Outcome::IdleTimeout,
                    "client hangs up" => r.outcome == Outcome::ClientDisconnected,
                    "openai chat (+usage)" | "openai chat" => r.outcome == Outcome::Completed,
                    _ => true,
                }
        });
        let Some(position) = position else {
            failures.push(format!("{label}: no report"));
            continue;
        };
        let report = collected.remove(position);
        let timing = report.timing.unwrap_or_default();
        let usage = report.usage.unwrap_or_default();
        let source = match report.usage.map(|u| u.source) {
            Some(UsageSource::Reported) => "reported",
            Some(UsageSource::Estimated) => "estimated",
            _ => "-",
        };
        let digest = report
            .digest
            .map_or("-".into(), |d| d.to_hex()[..16].to_string());
        println!(
            "{:<21} {:<20} {:>8} {:>9} {:>9} {:>6} {:>6} {:<9} {:<16}",
            label,
            report.outcome.as_str(),
            millis(timing.time_to_first_token),
            millis(timing.inter_token.p50),
            millis(timing.inter_token.p99),
            tokens(usage.input_tokens),
            tokens(usage.output_tokens),
            source,
            digest,
        );
        let mut expect = |ok: bool, what: &str| {
            if !ok {
                failures.push(format!("{label}: {what}"));
            }
        };
        match *label {
            "stalled upstream" => {
                expect(client_seen.keep_alives >= 2, "keep-alives while stalled");
                expect(client_seen.error_event, "an idle-timeout error event");
            }
            "client hangs up" => expect(report.usage.is_some(), "usage despite the hang-up"),
            _ => {
                expect(report.outcome == Outcome::Completed, "completed");
                expect(usage.output_tokens == Some(24), "24 output tokens reported");
                expect(
                    timing.time_to_first_token.is_some(),
                    "a time to first token",
                );
            }
        }
    }

    // The metrics, as a client would ask for them.
    let metrics = http
        .get(format!("{base}/metrics").parse().expect("a valid URL"))
        .await
        .expect("the gateway answers")
        .into_body()
        .collect()
        .await
        .expect("the metrics body")
        .to_bytes();
    let metrics = String::from_utf8_lossy(&metrics);
    let ttft_samples = metrics
        .lines()
        .find(|l| l.starts_with("gen_ai_client_operation_time_to_first_chunk_count"))
        .unwrap_or("none");
    println!("\nmetrics: {ttft_samples}");
    println!("open streams now: {}", gw.open_streams.get());
    println!("finished in {:.1}s", started.elapsed().as_secs_f64());

    if failures.is_empty() {
        println!("\nall {expected} streams behaved as expected");
    } else {
        println!("\nunexpected:");
        for failure in &failures {
            println!("  - {failure}");
        }
        std::process::exit(1);
    }
}
