//! `--resumable` over loopback: a client cut mid-stream resumes with `Last-Event-ID` (or
//! `?last_event_id=`) and gets exactly the rest; another tenant gets `204`; the upstream is
//! called once per stream.

use std::net::SocketAddr;
use std::time::Duration;

use example_gateway::GatewayConfig;
use tokio::sync::mpsc;
use tower_sse::resume::ResumeSummary;
use tower_sse::{Outcome, StreamReport};
use tower_sse_mock::MockConfig;

#[path = "support/binary.rs"]
mod binary;
mod support;
use support::start;

fn chat() -> String {
    serde_json::json!({"model": "gpt-mock", "stream": true, "messages": []}).to_string()
}

/// The blocks of an SSE text, as (id, data) with comments (keep-alives) dropped.
fn events(text: &str) -> Vec<(String, String)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut id = String::new();
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push(v);
                }
            }
            (!data.is_empty()).then(|| (id, data.join("\n")))
        })
        .collect()
}

/// The mock numbers its responses (`chatcmpl-mock-<n>`): compare without the number.
fn same_id(data: &str) -> String {
    match data.split_once("chatcmpl-mock-") {
        Some((head, tail)) => {
            let tail = tail.trim_start_matches(|c: char| c.is_ascii_digit());
            format!("{head}chatcmpl-mock-N{tail}")
        }
        None => data.to_owned(),
    }
}

async fn post(addr: SocketAddr, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(chat())
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

#[tokio::test]
async fn a_cut_client_resumes_and_misses_nothing() {
    let mock = MockConfig::new()
        .tokens(12)
        .delay(Duration::from_millis(20));
    let (upstream, server) = tower_sse_mock::spawn(mock).await;
    let upstream = format!("http://{upstream}").parse().unwrap();

    // What a client that never drops gets, without --resumable.
    let (plain, mut plain_reports) = start(GatewayConfig::new(upstream)).await;
    let response = post(plain.addr, "sk-a").await;
    assert!(response.headers().get("sse-stream-id").is_none());
    let whole = events(&response.text().await.unwrap());
    assert!(whole.len() > 5);
    assert!(whole.iter().all(|(id, _)| id.is_empty()));
    report(&mut plain_reports).await;
    let requests = server.stats().requests();

    let mut config = GatewayConfig::new(format!("http://{}", server.addr()).parse().unwrap());
    config.resumable = true;
    let (gateway, mut reports) = start(config).await;
    let mut first = post(gateway.addr, "sk-a").await;
    assert_eq!(first.status(), 200);
    let stream = first.headers()["sse-stream-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut got = String::new();
    while events(&got).len() < 3 {
        got.push_str(std::str::from_utf8(&first.chunk().await.unwrap().unwrap()).unwrap());
    }
    // Drop mid-stream, keeping only whole events (as a browser does).
    drop(first);
    let cut = got.rfind("\n\n").unwrap() + 2;
    let seen = events(&got[..cut]);
    let last_id = seen.last().unwrap().0.clone();
    assert_eq!(last_id, format!("{stream}.{}", seen.len()));

    // Another tenant: 204, nothing forwarded.
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/chat/completions", gateway.addr);
    let foreign = client
        .get(&url)
        .header("authorization", "Bearer sk-b")
        .header("last-event-id", &last_id)
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 204);

    // The page-reload form: the id in the query.
    let resumed = client
        .get(format!("{url}?last_event_id={last_id}"))
        .header("authorization", "Bearer sk-a")
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200);
    let rest = events(&resumed.text().await.unwrap());
    let joined: Vec<String> = seen.iter().chain(&rest).map(|(_, d)| same_id(d)).collect();
    let expected: Vec<String> = whole.iter().map(|(_, d)| same_id(d)).collect();
    assert_eq!(joined, expected, "every event once, in order");
    let ids: Vec<String> = seen.iter().chain(&rest).map(|(id, _)| id.clone()).collect();
    let numbered: Vec<String> = (1..=ids.len()).map(|n| format!("{stream}.{n}")).collect();
    assert_eq!(ids, numbered);

    // One upstream call for the stream, one report, with the resume in it.
    assert_eq!(server.stats().requests(), requests + 1);
    let report = report(&mut reports).await;
    assert_eq!(report.outcome, Outcome::Completed);
    let summary = report.extensions.get::<ResumeSummary>().unwrap();
    assert_eq!(summary.stream.to_string(), stream);
    assert!(summary.resumes <= 1);
    // At the end of the stream the client is attached: nothing more is resumable then.
    let done = client
        .get(&url)
        .header("authorization", "Bearer sk-a")
        .header("last-event-id", &ids[ids.len() - 1])
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 204);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), reports.recv())
            .await
            .is_err(),
        "exactly one report per stream"
    );
}

/// The binary: `--resumable` is accepted, streams carry ids and resume; `listening on` stays.
#[tokio::test]
async fn the_binary_takes_resumable() {
    let (_running, base) = binary::start(&["--resumable"]);
    let url = format!("{base}/v1/chat/completions");
    let client = reqwest::Client::new();
    let response = client.post(&url).body(chat()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let stream = response.headers()["sse-stream-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let whole = events(&response.text().await.unwrap());
    assert_eq!(whole.last().unwrap().1, "[DONE]");
    let resumed = client
        .get(&url)
        .header("last-event-id", format!("{stream}.1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200);
    let rest = events(&resumed.text().await.unwrap());
    assert_eq!(rest[..], whole[1..]);
}
