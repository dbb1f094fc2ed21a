//! Two gateway processes on one `redis-server` (`--resumable --redis URL`): a stream started
//! on one and cut resumes on the other with every event once, and only for the tenant that
//! made it. The test starts its own `redis-server` (the system package) on a free port.

use std::time::Duration;

#[path = "support/binary.rs"]
mod binary;
mod support;
use support::{Process, redis};

/// A gateway replica (with its own in-process mock upstream); its base URL.
fn replica(redis: &str) -> (Process, String) {
    binary::start(&["--resumable", "--redis", redis])
}

/// The `data:` of each event, and the last `id:`.
fn events(text: &str) -> (Vec<String>, Option<String>) {
    let mut data = Vec::new();
    let mut last_id = None;
    for block in text.split("\n\n") {
        for line in block.lines() {
            if let Some(value) = line.strip_prefix("data: ") {
                data.push(value.to_owned());
            }
            if let Some(value) = line.strip_prefix("id: ") {
                last_id = Some(value.to_owned());
            }
        }
    }
    (data, last_id)
}

#[tokio::test]
async fn a_stream_cut_on_one_replica_resumes_on_the_other_for_its_tenant_only() {
    let Some((_redis, url)) = redis() else {
        return;
    };
    let (_a, a) = replica(&url);
    let (_b, b) = replica(&url);
    let client = reqwest::Client::new();

    // A stream of 20 content events, 50 ms apart, on replica A; the client reads five
    // events and goes away.
    let mut response = client
        .post(format!("{a}/v1/chat/completions"))
        .header("authorization", "Bearer tenant-one")
        .header("content-type", "application/json")
        .header("x-mock-tokens", "20")
        .header("x-mock-delay-ms", "50")
        .body(r#"{"model":"gpt-mock","stream":true,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("sse-stream-id"));
    let mut first = String::new();
    while events(&first).0.len() < 5 || !first.ends_with("\n\n") {
        let chunk = response.chunk().await.unwrap().expect("more of the stream");
        first.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    drop(response);
    let (seen, last_id) = events(&first);
    let last_id = last_id.expect("events carry ids");

    // Another tenant cannot resume it, on either replica.
    for base in [&a, &b] {
        let other = client
            .get(format!("{base}/v1/chat/completions"))
            .header("authorization", "Bearer tenant-two")
            .header("last-event-id", &last_id)
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), 204);
    }

    // Its tenant resumes on replica B: the rest, each event once, to the end.
    let resumed = client
        .get(format!("{b}/v1/chat/completions"))
        .header("authorization", "Bearer tenant-one")
        .header("last-event-id", &last_id)
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200);
    let rest = tokio::time::timeout(Duration::from_secs(30), resumed.text())
        .await
        .expect("the resumed stream ends")
        .unwrap();
    let (rest, _) = events(&rest);
    let all: Vec<String> = seen.into_iter().chain(rest).collect();

    // What a client that was never cut gets: the same stream, from B's own mock (whose first
    // generation this is, as it was A's: same id, same seeded words).
    let whole = client
        .post(format!("{b}/v1/chat/completions"))
        .header("authorization", "Bearer tenant-one")
        .header("content-type", "application/json")
        .header("x-mock-tokens", "20")
        .header("x-mock-delay-ms", "1")
        .body(r#"{"model":"gpt-mock","stream":true,"messages":[]}"#)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (whole, _) = events(&whole);
    assert_eq!(all.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(
        all, whole,
        "every event once, in order, across the two replicas"
    );
}

#[tokio::test]
async fn a_digest_recorded_by_one_replica_is_served_by_the_other_to_its_tenant_only() {
    let Some((_redis, url)) = redis() else {
        return;
    };
    let (_a, a) = replica(&url);
    let (_b, b) = replica(&url);
    let client = reqwest::Client::new();
    let body = client
        .post(format!("{a}/v1/chat/completions"))
        .header("authorization", "Bearer tenant-one")
        .header("content-type", "application/json")
        .body(r#"{"model":"gpt-mock","stream":true,"messages":[]}"#)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let id = body
        .split("\"id\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let lookup = |base: &String, token: &str| {
        client
            .get(format!("{base}/v1/digests/{id}"))
            .header("authorization", format!("Bearer {token}"))
            .send()
    };
    // Replica A has it at once; B once A's write reached Redis (in the background).
    assert_eq!(lookup(&a, "tenant-one").await.unwrap().status(), 200);
    let mut found = None;
    for _ in 0..200 {
        let response = lookup(&b, "tenant-one").await.unwrap();
        if response.status() == 200 {
            found = Some(response.text().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let record = found.expect("replica B serves A's record");
    let from_a = lookup(&a, "tenant-one")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(record, from_a, "the same record on both replicas");
    // Another tenant finds nothing on either replica.
    for base in [&a, &b] {
        assert_eq!(lookup(base, "tenant-two").await.unwrap().status(), 404);
    }
}
