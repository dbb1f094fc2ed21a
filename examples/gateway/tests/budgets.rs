//! `--budgets FILE` with the gateway binary: a tenant over its budget gets `429` with a
//! right `Retry-After` and an OpenAI-shaped error, and the upstream receives nothing;
//! `GET /v1/budgets/self` shows the caller its own budget; a bad file stops the start with
//! an error that names the place.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[path = "support/binary.rs"]
mod binary;
mod support;
use binary::start;
use support::{sse_upstream, temp_file};

const STREAM: &str = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":1,\"total_tokens\":8}}\n\ndata: [DONE]\n\n";

/// An upstream on a thread: every request counted, answered with one short SSE stream.
fn upstream(hits: Arc<AtomicUsize>) -> String {
    sse_upstream(STREAM.to_owned(), hits)
}

fn budgets_file(name: &str, json: &str) -> std::path::PathBuf {
    temp_file(&format!("budgets-{name}"), "json", json)
}

#[tokio::test]
async fn over_budget_gets_429_before_the_upstream_and_sees_its_budget() {
    let hits = Arc::new(AtomicUsize::new(0));
    let upstream = upstream(hits.clone());
    let file = budgets_file(
        "ok",
        r#"{"default": [{"measure": "requests", "amount": 1, "per": 60}]}"#,
    );
    let (_gateway, base) = start(&["--upstream", &upstream, "--budgets", file.to_str().unwrap()]);
    let client = reqwest::Client::new();
    let chat = || {
        client
            .post(format!("{base}/v1/chat/completions"))
            .header("authorization", "Bearer sk-alice")
            .header("content-type", "application/json")
            .body(r#"{"model":"m","stream":true,"max_tokens":5}"#)
    };

    let first = chat().send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.text().await.unwrap().contains("[DONE]"));
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    let second = chat().send().await.unwrap();
    assert_eq!(second.status(), 429);
    let retry: u64 = second.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((59..=60).contains(&retry), "Retry-After {retry}");
    let error: serde_json::Value = serde_json::from_slice(&second.bytes().await.unwrap()).unwrap();
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the upstream received nothing"
    );

    // Another tenant has its own budget.
    let bob = client
        .post(format!("{base}/v1/chat/completions"))
        .header("authorization", "Bearer sk-bob")
        .body(r#"{"model":"m","stream":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bob.status(), 200);
    bob.bytes().await.unwrap();

    let own = client
        .get(format!("{base}/v1/budgets/self"))
        .header("authorization", "Bearer sk-alice")
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
    let own: serde_json::Value = serde_json::from_slice(&own.bytes().await.unwrap()).unwrap();
    let alice = {
        use sha2::Digest;
        let hash = sha2::Sha256::digest(b"sk-alice");
        hash[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert_eq!(own["key"], alice.as_str());
    assert_eq!(own["limits"][0]["used"], 1);
    assert_eq!(own["limits"][0]["remaining"], 0);
    let _ = std::fs::remove_file(file);
}

#[test]
fn a_bad_budget_file_stops_the_start_with_its_place() {
    let file = budgets_file(
        "bad",
        r#"{"keys": {"team-a": [{"measure": "total_tokens", "amount": 10, "per": "week"}]}}"#,
    );
    let output = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--budgets",
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--budgets"), "{stderr}");
    let _ = std::fs::remove_file(file);
}

/// `Retry-After` of a token rate is the limit's arithmetic, within a second: 100 total
/// tokens per 1 000 s (one token back every 10 s), the first stream settled at the 8 tokens
/// it used, then a request that needs the whole burst waits for those 8: 80 s.
#[tokio::test]
async fn retry_after_of_a_token_rate_is_its_arithmetic() {
    let hits = Arc::new(AtomicUsize::new(0));
    let upstream = upstream(hits.clone());
    let file = budgets_file(
        "rate",
        r#"{"default": [{"measure": "total_tokens", "amount": 100, "per": 1000}]}"#,
    );
    let (_gateway, base) = start(&["--upstream", &upstream, "--budgets", file.to_str().unwrap()]);
    let client = reqwest::Client::new();
    let chat = |body: String| {
        client
            .post(format!("{base}/v1/chat/completions"))
            .header("authorization", "Bearer sk-carol")
            .header("content-type", "application/json")
            .body(body)
    };
    let first = chat(r#"{"model":"m","stream":true,"max_tokens":50}"#.into())
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    first.bytes().await.unwrap();
    // Settled at what the stream used: 7 + 1 tokens.
    let mut used = 0;
    for _ in 0..100 {
        let own = client
            .get(format!("{base}/v1/budgets/self"))
            .header("authorization", "Bearer sk-carol")
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let own: serde_json::Value = serde_json::from_slice(&own).unwrap();
        used = own["limits"][0]["used"].as_u64().unwrap();
        if used <= 8 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(used, 8, "settled at the reported usage");
    // The second request reserves its input (its body's bytes / 4, rounded up) and its
    // `max_tokens`: the whole burst of 100.
    let body = |max: u64| format!(r#"{{"model":"m","stream":true,"max_tokens":{max:02}}}"#);
    let input = body(0).len().div_ceil(4) as u64;
    let second = chat(body(100 - input)).send().await.unwrap();
    assert_eq!(second.status(), 429);
    let retry: u64 = second.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // 8 tokens at 10 s each, less the (sub-second) drain since the settlement.
    assert!((79..=80).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the upstream received nothing more"
    );
    let _ = std::fs::remove_file(file);
}
