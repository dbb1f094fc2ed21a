//! `--budgets FILE.toml` with the gateway binary: the TOML form of the budgets document,
//! with the same checks as JSON and errors that say where; `enforce_mid_stream = true` ends
//! a stream that runs past its tenant's budget with OpenAI's `budget_exceeded` error.

use std::process::Command;

#[path = "support/binary.rs"]
mod binary;
mod support;
use binary::start;
use support::{sse_upstream, temp_file};

/// 40 chunks of 11 bytes of text each, then the usage and `[DONE]`.
fn long_stream() -> String {
    let chunk = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"Hello there\"}}]}\n\n";
    let mut stream = chunk.repeat(40);
    stream.push_str("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":110,\"total_tokens\":117}}\n\ndata: [DONE]\n\n");
    stream
}

/// An upstream on a thread, answering every request with [`long_stream`].
fn upstream() -> String {
    sse_upstream(long_stream(), Default::default())
}

fn toml_file(name: &str, text: &str) -> std::path::PathBuf {
    temp_file(&format!("budgets-{name}"), "toml", text)
}

/// The gateway's error when it refuses to start with `--budgets file`.
fn start_error(file: &std::path::Path) -> String {
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
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_bad_toml_budget_file_stops_the_start_with_its_place() {
    // A misspelt field: TOML's line and column, and the field.
    let file = toml_file(
        "misspelt",
        "key = \"tenant\"\n\n[[default]]\nmeasure = \"requests\"\namout = 10\nper = 60\n",
    );
    let error = start_error(&file);
    assert!(error.contains("--budgets"), "{error}");
    assert!(error.contains("line 5, column 1"), "{error}");
    assert!(error.contains("amout"), "{error}");
    let _ = std::fs::remove_file(file);

    // Not TOML at all: where it stops parsing.
    let file = toml_file("syntax", "key = \"tenant\"\n[[default]\nmeasure = 1\n");
    let error = start_error(&file);
    assert!(error.contains("line 2"), "{error}");
    let _ = std::fs::remove_file(file);

    // Valid TOML, an unusable limit: the limit's place, as for JSON.
    let file = toml_file(
        "zero",
        "[keys]\nteam-a = [{ measure = \"total_tokens\", amount = 10, per = 60 }, { measure = \"requests\", amount = 0, per = \"day\" }]\n",
    );
    let error = start_error(&file);
    assert!(error.contains("keys.team-a[1]"), "{error}");
    let _ = std::fs::remove_file(file);
}

#[tokio::test]
async fn a_toml_budget_with_mid_stream_enforcement_stops_the_stream_that_runs_past_it() {
    let upstream = upstream();
    let file = toml_file(
        "stop",
        "enforce_mid_stream = true\n\n[[default]]\nmeasure = \"output_tokens\"\namount = 40\nper = \"day\"\n",
    );
    let (_gateway, base) = start(&["--upstream", &upstream, "--budgets", file.to_str().unwrap()]);
    let client = reqwest::Client::new();
    let request = || {
        client
            .post(format!("{base}/v1/chat/completions"))
            .header("authorization", "Bearer sk-toml")
            .header("accept", "text/event-stream")
            .body(r#"{"model":"m","stream":true,"max_tokens":10,"messages":[{"role":"user","content":"Hi"}]}"#)
    };
    let response = request().send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    // 30 left + 10 reserved: 14 chunks (39 tokens estimated), then the error.
    assert_eq!(text.matches("Hello there").count(), 14, "{text}");
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    let error: serde_json::Value =
        serde_json::from_str(last.strip_prefix("data: ").expect(&text)).unwrap();
    assert_eq!(error["error"]["type"], "budget_exceeded");
    assert!(!text.contains("[DONE]"));

    // Charged what was generated: over the day's 40, so the next request waits.
    let next = request().send().await.unwrap();
    assert_eq!(next.status(), 429);
    let _ = std::fs::remove_file(file);
}
