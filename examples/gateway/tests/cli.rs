//! The gateway binary's command line and endpoints are a contract (the load scripts and the
//! end-to-end script use them): every flag, the `listening on http://ADDR` line, `/metrics`,
//! `/healthz` and `/v1/digests/{id}`, with both runtimes; and what it logs.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdout, Command, Stdio};

const FLAGS: &[&str] = &[
    "--listen",
    "--upstream",
    "--keep-alive",
    "--first-event-timeout",
    "--idle-timeout",
    "--total-timeout",
    "--max-streams",
    "--early-response",
    "--resumable",
    "--runtime",
    "--max-body-bytes",
    "--header-timeout",
    "--idle-connection-timeout",
    "--max-header-bytes",
    "--h2-max-streams",
    "--h2-keepalive",
    "--tls-roots",
    "--upstream-version",
    "--metrics-listen",
    "--log-format",
    "--log-queue",
    "--shutdown-grace",
    "--max-model-labels",
    "--drain",
    "--redis",
    "--stack",
    "--no-sse-headers",
    "--max-headers",
    "--cors-origin",
    "--budgets",
    "--otlp-endpoint",
];

/// The gateway process, killed when dropped.
struct Running {
    child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start the binary with `args` and wait for its `listening on http://ADDR` line; returns the
/// process, its stdout (kept open: the gateway logs one line per stream there) and its URL.
fn start(args: &[&str]) -> (Running, BufReader<ChildStdout>, String) {
    let (running, stdout, base, _) = start_with_metrics(args);
    (running, stdout, base)
}

/// [`start`], and the URL of the metrics listener when it printed one (`metrics on ...`,
/// before the `listening on` line).
fn start_with_metrics(args: &[&str]) -> (Running, BufReader<ChildStdout>, String, Option<String>) {
    let mut running = Running {
        child: Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the gateway binary starts"),
    };
    let mut stdout = BufReader::new(running.child.stdout.take().unwrap());
    let mut line = String::new();
    let mut metrics = None;
    loop {
        line.clear();
        let read = stdout.read_line(&mut line).unwrap();
        assert!(read > 0, "the gateway exited before printing its address");
        if let Some(addr) = line.trim_end().strip_prefix("metrics on http://") {
            metrics = Some(format!("http://{addr}"));
        }
        if let Some(addr) = line.trim_end().strip_prefix("listening on http://") {
            let base = format!("http://{addr}");
            return (running, stdout, base, metrics);
        }
    }
}

/// One streamed chat completion through the gateway, then its digest and the metrics.
async fn exercise(base: &str) {
    let body = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(r#"{"model":"gpt-mock","stream":true,"messages":[]}"#)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    let id = body
        .split("\"id\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap();
    let digest = reqwest::get(format!("{base}/v1/digests/{id}"))
        .await
        .unwrap();
    assert_eq!(digest.status(), 200);
    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics
            .text()
            .await
            .unwrap()
            .contains("gen_ai_client_operation_duration")
    );
}

#[test]
fn help_lists_every_flag() {
    let output = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in FLAGS {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
    assert!(help.contains("per-core"));
}

#[test]
fn unknown_flag_is_refused() {
    let output = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--no-such-flag")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[tokio::test]
async fn multi_runtime_with_every_flag_and_an_upstream() {
    let (upstream, _mock) = tower_sse_mock::spawn(tower_sse_mock::MockConfig::new()).await;
    let upstream = format!("http://{upstream}");
    let (_gateway, _stdout, base) = start(&[
        "--upstream",
        &upstream,
        "--keep-alive",
        "1",
        "--first-event-timeout",
        "10",
        "--idle-timeout",
        "5",
        "--total-timeout",
        "60",
        "--max-streams",
        "8",
        "--early-response",
        "--runtime",
        "multi",
        "--max-body-bytes",
        "100000",
        "--header-timeout",
        "5",
        "--idle-connection-timeout",
        "30",
        "--max-header-bytes",
        "32768",
        "--h2-max-streams",
        "50",
        "--h2-keepalive",
        "10",
        "--tls-roots",
        "webpki",
        "--upstream-version",
        "2",
        "--log-format",
        "text",
        "--log-queue",
        "1024",
        "--shutdown-grace",
        "5",
        "--max-model-labels",
        "20",
        "--drain",
        "2",
    ]);
    exercise(&base).await;
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
}

#[test]
fn bad_values_are_refused_not_panicked_on() {
    for args in [
        ["--max-header-bytes", "100"],
        ["--header-timeout", "inf"],
        ["--h2-max-streams", "-1"],
        ["--tls-roots", "openssl"],
        ["--log-format", "xml"],
        ["--log-queue", "0"],
        ["--metrics-listen", "nowhere"],
        ["--stack", "none"],
        ["--upstream-version", "3"],
        // Issue 31: values that used to start a broken gateway.
        ["--upstream", "ftp://x"],
        ["--upstream", "localhost:9000"],
        ["--max-streams", "0"],
        ["--idle-timeout", "-1"],
        ["--keep-alive", "NaN"],
        ["--shutdown-grace", "-5"],
        ["--total-timeout", "infinity"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        // Clap names the flag, or the value it could not place.
        assert!(
            stderr.contains(args[0]) || stderr.contains(args[1]),
            "{args:?}: {stderr}"
        );
    }
}

/// Read log lines until one contains `needle` (or the gateway stops logging).
fn log_line(stdout: &mut BufReader<ChildStdout>, needle: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        let read = stdout.read_line(&mut line).unwrap();
        assert!(read > 0, "no log line with {needle:?}");
        if line.contains(needle) {
            return line;
        }
    }
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn an_https_upstream_failure_is_logged_without_secrets_in_json() {
    // A plain-HTTP server where the gateway expects TLS: the handshake fails.
    let (plain, _mock) = tower_sse_mock::spawn(tower_sse_mock::MockConfig::new()).await;
    let upstream = format!("https://{plain}");
    let (_gateway, mut stdout, base, metrics) = start_with_metrics(&[
        "--upstream",
        &upstream,
        "--log-format",
        "json",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let response = reqwest::Client::new()
        .post(format!(
            "{base}/v1/chat/completions?api_key=sk-in-the-query"
        ))
        .bearer_auth("sk-in-the-header")
        .body(r#"{"model":"gpt-mock","stream":true,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let line = log_line(&mut stdout, "upstream request failed");
    let record: serde_json::Value = serde_json::from_str(&line).expect("one JSON object");
    let fields = &record["fields"];
    assert_eq!(fields["upstream"], format!("https://{plain}").as_str());
    assert_eq!(fields["path"], "/v1/chat/completions");
    // Why: the TLS handshake met something that is not TLS.
    assert!(
        fields["error"].as_str().unwrap().contains("Connect"),
        "{line}"
    );
    assert!(!line.contains("sk-in-the"), "{line}");
    // Piped, not a terminal: no colour codes.
    assert!(!line.contains('\u{1b}'), "{line}");
    // /metrics is on its own listener.
    let metrics = metrics.expect("a `metrics on` line");
    let scraped = reqwest::get(format!("{metrics}/metrics")).await.unwrap();
    assert_eq!(scraped.status(), 200);
}

#[tokio::test]
async fn per_core_runtime_with_the_in_process_mock() {
    let (_gateway, _stdout, base) = start(&["--runtime", "per-core"]);
    exercise(&base).await;
}

/// `--stack bare` (the benchmark floor): the upstream's bytes as they are, with no tower-sse
/// layer: no usage injected into the request, no stream limit, no digest, no metering.
#[tokio::test]
async fn bare_stack_forwards_the_upstream_bytes_untouched() {
    let (_gateway, _stdout, base) = start(&["--stack", "bare"]);
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(r#"{"model":"gpt-mock","stream":true,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    // The request was not rewritten to ask for usage, so the mock sent no usage chunk.
    assert!(!body.contains("\"usage\""), "{body}");
    let id = body
        .split("\"id\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap();
    let digest = reqwest::get(format!("{base}/v1/digests/{id}"))
        .await
        .unwrap();
    assert_eq!(digest.status(), 404, "no digest without the stack");
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
}

/// Send `signal` (`TERM`, `INT`) to the gateway, as an orchestrator would.
fn signal(running: &Running, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &running.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A streaming request whose mock upstream sends `tokens` content events `delay_ms` apart;
/// returns the body as the client got it.
async fn slow_stream(base: String, tokens: u32, delay_ms: u32) -> String {
    reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-mock-tokens", tokens.to_string())
        .header("x-mock-delay-ms", delay_ms.to_string())
        .body(r#"{"model":"gpt-mock","stream":true,"messages":[]}"#)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Wait until the gateway counts `n` open streams (read from `/metrics`).
async fn until_open_streams(base: &str, n: usize) {
    let line = format!("tower_sse_limit_open_streams {n}");
    loop {
        let text = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.lines().any(|l| l == line) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sigterm_lets_open_streams_finish_refuses_new_connections_and_exits_0() {
    // SIGHUP too (issue 31): its default action would cut the open streams at once.
    for signal_name in ["TERM", "INT", "HUP"] {
        let (mut running, mut stdout, base) = start(&["--shutdown-grace", "30"]);
        // About a second of stream: it outlives the signal, not the grace.
        let stream = tokio::spawn(slow_stream(base.clone(), 10, 100));
        until_open_streams(&base, 1).await;
        signal(&running, signal_name);
        let body = stream.await.unwrap();
        assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
        let line = log_line(&mut stdout, "stream ended");
        assert!(line.contains("outcome=completed"), "{line}");
        // The request id the gateway made is in the line.
        assert!(line.contains("request_id="), "{line}");
        // No new connections once the signal came (the listener is closed).
        let refused = reqwest::Client::new()
            .get(format!("{base}/healthz"))
            .send()
            .await;
        assert!(
            refused.is_err(),
            "{signal_name}: a new connection was served"
        );
        let status = running.child.wait().unwrap();
        assert!(status.success(), "{signal_name}: {status}");
    }
}

/// The log lines are written by a thread of their own, off the runtime: every stream's line
/// still reaches stdout, and those still queued when the signal comes are written before
/// the process exits.
#[tokio::test]
async fn every_log_line_is_on_stdout_when_the_gateway_exits() {
    let (mut running, mut stdout, base) = start(&["--log-queue", "4096"]);
    let streams: Vec<_> = (0..50)
        .map(|_| tokio::spawn(slow_stream(base.clone(), 3, 0)))
        .collect();
    for stream in streams {
        let body = stream.await.unwrap();
        assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    }
    signal(&running, "TERM");
    let status = running.child.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let ended = rest
        .lines()
        .filter(|l| l.contains("stream ended") && l.contains("outcome=completed"))
        .count();
    assert_eq!(ended, 50, "{rest}");
}

#[tokio::test]
async fn after_the_grace_open_streams_end_with_an_error_event_and_are_reported() {
    for signal_name in ["TERM", "HUP"] {
        let (mut running, mut stdout, base) = start(&["--shutdown-grace", "1"]);
        // Ten seconds of stream: longer than the grace.
        let stream = tokio::spawn(slow_stream(base.clone(), 100, 100));
        until_open_streams(&base, 1).await;
        signal(&running, signal_name);
        let body = stream.await.unwrap();
        assert!(body.contains("event: error"), "{signal_name}: {body}");
        assert!(body.contains("server_shutdown"), "{signal_name}: {body}");
        assert!(!body.contains("[DONE]"), "{signal_name}: {body}");
        let line = log_line(&mut stdout, "stream ended");
        assert!(line.contains("outcome=server_shutdown"), "{line}");
        let status = running.child.wait().unwrap();
        assert!(status.success(), "{signal_name}: {status}");
    }
}

/// With `--share-port` on both, a second gateway listens on the first one's port (the kernel
/// spreads connections over both), and serves it alone once the first is gone: several
/// processes behind one port, or a new gateway started before the old one stops.
#[tokio::test]
async fn gateways_given_share_port_listen_on_one_port() {
    let (first, _stdout, base) = start(&["--runtime", "per-core", "--share-port"]);
    let addr = base.trim_start_matches("http://").to_owned();
    let mut second = Running {
        child: Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["--share-port", "--listen", &addr])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    };
    let mut stdout = BufReader::new(second.child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        let read = stdout.read_line(&mut line).unwrap();
        assert!(
            read > 0,
            "the second gateway exited before printing its address"
        );
        if let Some(listening) = line.trim_end().strip_prefix("listening on ") {
            assert_eq!(
                listening, base,
                "the second gateway listens on the same port"
            );
            break;
        }
    }
    drop(first);
    exercise(&base).await;
}

/// Two `--runtime per-core` gateways on one port would split its connections between them
/// (`SO_REUSEPORT`): the second one refuses to start.
#[tokio::test]
async fn a_second_per_core_gateway_on_the_same_port_refuses_to_start() {
    let (_first, _stdout, base) = start(&["--runtime", "per-core"]);
    let addr = base.trim_start_matches("http://").to_owned();
    let mut second = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--runtime", "per-core", "--listen", &addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            panic!("the second per-core gateway started on {addr}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(1));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("another process listens there"), "{stderr}");
    // The first one still serves.
    exercise(&base).await;
}
