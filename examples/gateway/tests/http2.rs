//! HTTP/2 end to end (issue #30): clients speaking HTTP/2 (h2c, prior knowledge) to the
//! gateway, the gateway speaking HTTP/2 to an upstream (`--upstream-version 2`), and every
//! mix of the two, with real clients and servers on 127.0.0.1. A request goes upstream in
//! the upstream's version, never the client's; streams arrive whole, keep-alives and reports
//! as over HTTP/1.1; the log line names both versions.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use example_gateway::{GatewayConfig, UpstreamVersion, Versions};
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tower_sse::{Outcome, StreamReport};
use tower_sse_mock::MockConfig;

mod support;
use support::start;

async fn report(rx: &mut mpsc::UnboundedReceiver<StreamReport>) -> StreamReport {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a report within 30 s")
        .expect("the report channel is open")
}

fn chat(tokens: u32, delay_ms: u32) -> String {
    serde_json::json!({
        "model": "gpt-mock",
        "stream": true,
        "messages": [],
        "mock": {"tokens": tokens, "delay_ms": delay_ms},
    })
    .to_string()
}

/// What a client read: the content text, the keep-alive comments, and whether the stream
/// ended with `[DONE]`. Panics unless every event is whole (blank-line terminated, its JSON
/// parses).
#[derive(Debug, Default)]
struct Read {
    content: String,
    comments: usize,
    done: bool,
}

fn read_sse(body: &str) -> Read {
    assert!(body.ends_with("\n\n"), "the last event is cut: {body:?}");
    let mut read = Read::default();
    for event in body.split("\n\n").filter(|e| !e.is_empty()) {
        for line in event.lines() {
            if line.starts_with(':') {
                read.comments += 1;
            } else if let Some(data) = line.strip_prefix("data: ") {
                assert!(!read.done, "an event after [DONE]: {body:?}");
                if data == "[DONE]" {
                    read.done = true;
                    continue;
                }
                let chunk: serde_json::Value = serde_json::from_str(data)
                    .unwrap_or_else(|e| panic!("a cut or broken event ({e}): {data:?}"));
                if let Some(text) = chunk["choices"][0]["delta"]["content"].as_str() {
                    read.content.push_str(text);
                }
            }
        }
    }
    read
}

/// The mock's whole answer for `tokens` was read.
fn assert_whole(body: &str, tokens: u32) -> Read {
    let read = read_sse(body);
    assert!(read.done, "no [DONE]: {body:?}");
    assert_eq!(read.content, tower_sse_mock::content(0, tokens), "{body:?}");
    read
}

fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

fn h1_client() -> reqwest::Client {
    reqwest::Client::builder().http1_only().build().unwrap()
}

async fn post(client: &reqwest::Client, addr: SocketAddr, body: String) -> reqwest::Response {
    client
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_h2c_client_gets_whole_streams_keep_alives_and_reports_as_over_http1() {
    let (upstream, _mock) = tower_sse_mock::spawn(MockConfig::new()).await;
    let mut config = GatewayConfig::new(format!("http://{upstream}").parse().unwrap());
    config.keep_alive = Some(Duration::from_millis(40));
    let (gateway, mut reports) = start(config).await;
    for (client, version) in [
        (h2c_client(), Version::HTTP_2),
        (h1_client(), Version::HTTP_11),
    ] {
        // Four tokens 150 ms apart: keep-alives in between.
        let response = post(&client, gateway.addr, chat(4, 150)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), version);
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{version:?}"
        );
        let body = response.text().await.unwrap();
        let read = assert_whole(&body, 4);
        assert!(read.comments > 0, "{version:?}: no keep-alive: {body:?}");

        let report = report(&mut reports).await;
        assert_eq!(report.outcome, Outcome::Completed, "{version:?}");
        assert_eq!(report.keep_alives as usize, read.comments, "{version:?}");
        assert_eq!(report.content_events, 4);
        let usage = report.usage.expect("usage");
        assert_eq!(usage.output_tokens, Some(4));
        // The upstream was spoken to in HTTP/1.1 (the default) whatever the client spoke.
        assert_eq!(
            report.extensions.get::<Versions>(),
            Some(&Versions {
                client: version,
                upstream: Some(Version::HTTP_11),
            })
        );
    }
}

#[tokio::test]
async fn a_hundred_streams_multiplexed_on_one_h2c_connection_are_each_whole() {
    let (upstream, _mock) = tower_sse_mock::spawn(MockConfig::new()).await;
    let config = GatewayConfig::new(format!("http://{upstream}").parse().unwrap());
    let (gateway, mut reports) = start(config).await;

    // One TCP connection, HTTP/2 with prior knowledge: every stream is on it.
    let tcp = TcpStream::connect(gateway.addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let url = format!("http://{}/v1/chat/completions", gateway.addr);
    let streams: Vec<_> = (0..100u32)
        .map(|i| {
            let mut sender = sender.clone();
            let tokens = 10 + i % 7;
            let request = Request::post(url.as_str())
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(chat(tokens, 5))))
                .unwrap();
            tokio::spawn(async move {
                sender.ready().await.unwrap();
                let response = sender.send_request(request).await.unwrap();
                assert_eq!(response.status(), 200);
                assert_eq!(response.version(), Version::HTTP_2);
                let body = response.into_body().collect().await.unwrap().to_bytes();
                assert_whole(std::str::from_utf8(&body).unwrap(), tokens);
            })
        })
        .collect();
    for stream in streams {
        stream.await.unwrap();
    }
    for _ in 0..100 {
        let report = report(&mut reports).await;
        assert_eq!(report.outcome, Outcome::Completed);
        let versions = report.extensions.get::<Versions>().unwrap();
        assert_eq!(versions.client, Version::HTTP_2);
        assert_eq!(versions.upstream, Some(Version::HTTP_11));
    }
}

/// What an HTTP/2-only upstream saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    version: Version,
    authority: Option<String>,
    host: Option<String>,
    te: Option<String>,
    hop: bool,
}

/// An upstream that speaks HTTP/2 only (h2c, prior knowledge: an HTTP/1.1 request is a
/// protocol error), answering an OpenAI Chat stream of `tokens` words; it records what it
/// saw and counts its connections.
struct H2Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
}

const H2_TOKENS: u32 = 5;

async fn h2_only_upstream() -> H2Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let (recorded, counted) = (seen.clone(), connections.clone());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            let recorded = recorded.clone();
            let service = hyper::service::service_fn(move |request: Request<_>| {
                let header = |name: &str| {
                    request
                        .headers()
                        .get(name)
                        .map(|v| v.to_str().unwrap().to_owned())
                };
                recorded.lock().unwrap().push(Seen {
                    version: request.version(),
                    authority: request.uri().authority().map(|a| a.to_string()),
                    host: header("host"),
                    te: header("te"),
                    hop: request.headers().contains_key("x-hop"),
                });
                let mut body = String::new();
                for word in tower_sse_mock::content(0, H2_TOKENS).split_inclusive(' ') {
                    let chunk = serde_json::json!({
                        "id": "chatcmpl-h2",
                        "object": "chat.completion.chunk",
                        "model": "h2-only",
                        "choices": [{"delta": {"content": word}}],
                    });
                    body.push_str(&format!("data: {chunk}\n\n"));
                }
                body.push_str("data: [DONE]\n\n");
                let response = Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    H2Upstream {
        addr,
        seen,
        connections,
    }
}

#[tokio::test]
async fn http1_and_h2c_clients_in_front_of_an_http2_only_upstream() {
    let upstream = h2_only_upstream().await;
    let url: http::Uri = format!("http://{}", upstream.addr).parse().unwrap();

    // In HTTP/1.1 (the default) this upstream cannot be spoken to: a 502, not a hang.
    let (gateway, _) = start(GatewayConfig::new(url.clone())).await;
    let response = post(&h1_client(), gateway.addr, chat(1, 0)).await;
    assert_eq!(response.status(), 502);
    upstream.seen.lock().unwrap().clear();
    let before = upstream.connections.load(Ordering::SeqCst);

    let mut config = GatewayConfig::new(url);
    config.upstream_version = UpstreamVersion::Http2;
    let (gateway, mut reports) = start(config).await;
    for (client, version) in [
        (h1_client(), Version::HTTP_11),
        (h2c_client(), Version::HTTP_2),
    ] {
        let requests: Vec<_> = (0..10)
            .map(|_| {
                let mut request = client
                    .post(format!("http://{}/v1/chat/completions", gateway.addr))
                    .header("content-type", "application/json")
                    .body(chat(H2_TOKENS, 0));
                if version == Version::HTTP_11 {
                    // Headers of the client's connection: never forwarded.
                    request = request
                        .header("connection", "keep-alive, x-hop")
                        .header("x-hop", "1")
                        .header("te", "trailers");
                }
                request.send()
            })
            .collect();
        for request in requests {
            let response = request.await.unwrap();
            assert_eq!(response.status(), 200, "{version:?}");
            assert_eq!(response.version(), version);
            assert_whole(&response.text().await.unwrap(), H2_TOKENS);
        }
        for _ in 0..10 {
            let report = report(&mut reports).await;
            assert_eq!(report.outcome, Outcome::Completed);
            assert_eq!(report.model.as_deref(), Some("h2-only"));
            assert_eq!(
                report.extensions.get::<Versions>(),
                Some(&Versions {
                    client: version,
                    upstream: Some(Version::HTTP_2),
                })
            );
        }
    }
    let seen = upstream.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 20);
    for request in seen {
        assert_eq!(request.version, Version::HTTP_2);
        // `:authority` is the upstream's; no `host`, no hop-by-hop header.
        assert_eq!(
            request.authority.as_deref(),
            Some(upstream.addr.to_string().as_str())
        );
        assert_eq!(request.host, None);
        assert_eq!(request.te, None);
        assert!(!request.hop);
    }
    // Twenty streams, one multiplexed connection (the tests' runtime is the gateway's one).
    assert_eq!(upstream.connections.load(Ordering::SeqCst) - before, 1);
}

/// The gateway binary, killed when dropped.
struct Running {
    child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The gateway binary with `args`, JSON logs: the process, its stdout (one log line per
/// stream) and its URL.
fn run(args: &[&str]) -> (Running, BufReader<ChildStdout>, String) {
    let mut running = Running {
        child: Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the gateway binary starts"),
    };
    let mut stdout = BufReader::new(running.child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the gateway exited"
        );
        if let Some(addr) = line.trim_end().strip_prefix("listening on http://") {
            let base = format!("http://{addr}");
            return (running, stdout, base);
        }
    }
}

/// The next `stream ended` line, as JSON.
fn stream_ended(stdout: &mut BufReader<ChildStdout>) -> serde_json::Value {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "no log line");
        if line.contains("stream ended") {
            return serde_json::from_str(&line).expect("one JSON object");
        }
    }
}

#[tokio::test]
async fn the_log_line_names_the_client_and_the_upstream_versions() {
    let (upstream, _mock) = tower_sse_mock::spawn(MockConfig::new()).await;
    let upstream = format!("http://{upstream}");

    // An h2c client, an HTTP/1.1 upstream (the default).
    let (gateway, mut stdout, base) = run(&["--upstream", &upstream]);
    let url = format!("{base}/v1/chat/completions");
    let body = chat(6, 0);
    let (curl_url, curl_body) = (url.clone(), body.clone());
    // Blocking, off the runtime that serves the mock.
    let curl = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args([
                "-sS",
                "--http2-prior-knowledge",
                "-N",
                &curl_url,
                "-d",
                &curl_body,
            ])
            .output()
    })
    .await
    .unwrap();
    match curl {
        Ok(output) => {
            assert!(output.status.success(), "{output:?}");
            assert_whole(std::str::from_utf8(&output.stdout).unwrap(), 6);
        }
        Err(e) => {
            eprintln!("curl not found ({e}): skipping the curl --http2-prior-knowledge check");
            let response = h2c_client().post(&url).body(body).send().await.unwrap();
            assert_eq!(response.version(), Version::HTTP_2);
            assert_whole(&response.text().await.unwrap(), 6);
        }
    }
    let line = stream_ended(&mut stdout);
    assert_eq!(line["fields"]["outcome"], "completed", "{line}");
    assert_eq!(line["span"]["client_version"], "HTTP/2.0", "{line}");
    assert_eq!(line["span"]["upstream_version"], "HTTP/1.1", "{line}");
    drop(gateway);

    // An HTTP/1.1 client, an HTTP/2 upstream (the mock speaks h2c too).
    let (_gateway, mut stdout, base) = run(&["--upstream", &upstream, "--upstream-version", "2"]);
    let response = h1_client()
        .post(format!("{base}/v1/chat/completions"))
        .body(chat(6, 0))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), Version::HTTP_11);
    assert_whole(&response.text().await.unwrap(), 6);
    let line = stream_ended(&mut stdout);
    assert_eq!(line["fields"]["outcome"], "completed", "{line}");
    assert_eq!(line["span"]["client_version"], "HTTP/1.1", "{line}");
    assert_eq!(line["span"]["upstream_version"], "HTTP/2.0", "{line}");
}

/// A chat request with these mock controls.
fn chat_with(mock: serde_json::Value) -> String {
    serde_json::json!({"model": "gpt-mock", "stream": true, "messages": [], "mock": mock})
        .to_string()
}

/// The deadlines as over HTTP/1.1, on streams that share one h2c connection: an upstream
/// that sends no head is a 504 (`first_event_timeout`), one that stalls mid-stream ends with
/// the in-band `idle_timeout` error event; each ends its own stream only, the one next to them
/// completes and the connection takes new streams after.
#[tokio::test]
async fn deadlines_end_one_h2c_stream_not_the_streams_beside_it() {
    let (upstream, _mock) = tower_sse_mock::spawn(MockConfig::new()).await;
    let mut config = GatewayConfig::new(format!("http://{upstream}").parse().unwrap());
    config.first_event_timeout = Some(Duration::from_millis(300));
    config.idle_timeout = Some(Duration::from_millis(300));
    let (gateway, mut reports) = start(config).await;

    let tcp = TcpStream::connect(gateway.addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let url = format!("http://{}/v1/chat/completions", gateway.addr);
    let send = |mock: serde_json::Value| {
        let mut sender = sender.clone();
        let request = Request::post(url.as_str())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(chat_with(mock))))
            .unwrap();
        tokio::spawn(async move {
            sender.ready().await.unwrap();
            let response = sender.send_request(request).await.unwrap();
            assert_eq!(response.version(), Version::HTTP_2);
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        })
    };
    let no_head = send(serde_json::json!({"headers_delay_ms": 10_000}));
    // The role chunk and two words, then nothing.
    let stalls = send(serde_json::json!({"tokens": 4, "stall_after": 3}));
    let whole = send(serde_json::json!({"tokens": 4, "delay_ms": 100}));

    let (status, body) = no_head.await.unwrap();
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("first_event_timeout"), "{body}");
    let (status, body) = stalls.await.unwrap();
    assert_eq!(status, 200);
    assert!(body.ends_with("\n\n"), "{body:?}");
    let last = body.trim_end().rsplit("\n\n").next().unwrap();
    assert!(
        last.starts_with("event: error\n") && last.contains("\"idle_timeout\""),
        "{body:?}"
    );
    let (status, body) = whole.await.unwrap();
    assert_eq!(status, 200);
    assert_whole(&body, 4);

    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let report = report(&mut reports).await;
        assert_eq!(
            report.extensions.get::<Versions>().map(|v| v.client),
            Some(Version::HTTP_2)
        );
        outcomes.push(report.outcome);
    }
    outcomes.sort_by_key(|o| o.as_str());
    assert_eq!(
        outcomes,
        [
            Outcome::Completed,
            Outcome::FirstEventTimeout,
            Outcome::IdleTimeout
        ]
    );

    // The connection outlived the deadlines of two of its streams.
    let (status, body) = send(serde_json::json!({"tokens": 2})).await.unwrap();
    assert_eq!(status, 200);
    assert_whole(&body, 2);
    assert!(!connection.is_finished());
}

/// The version of the `curl` on the path, `(major, minor)`, if there is one.
fn curl_version() -> Option<(u32, u32)> {
    let output = Command::new("curl").arg("--version").output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let version = text.split_whitespace().nth(1)?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

/// Through the gateway binary, 100 streams multiplexed on one h2c connection: first hyper's
/// client on one TCP connection, then curl's `--parallel` transfers (curl counts the
/// connections it opened), each stream whole, each with its log line. curl before 8.0 cannot
/// reuse a prior-knowledge connection ("Error in the HTTP2 framing layer", curl issue 10634,
/// fixed in 8.0.0): with such a curl the curl half is skipped, saying so.
#[tokio::test]
async fn a_hundred_streams_multiplexed_through_the_binary_hyper_and_curl() {
    let (upstream, _mock) = tower_sse_mock::spawn(MockConfig::new()).await;
    let (_gateway, mut stdout, base) = run(&["--upstream", &format!("http://{upstream}")]);
    // Read while the clients run: a full pipe would hold up the gateway's log.
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(
        move || {
            while lines_tx.send(stream_ended(&mut stdout)).is_ok() {}
        },
    );
    let ended = |n: usize| {
        for _ in 0..n {
            let line = lines
                .recv_timeout(Duration::from_secs(30))
                .expect("a log line");
            assert_eq!(line["fields"]["outcome"], "completed", "{line}");
            assert_eq!(line["span"]["client_version"], "HTTP/2.0", "{line}");
        }
    };
    let url = format!("{base}/v1/chat/completions");

    let addr = base.trim_start_matches("http://").to_owned();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let streams: Vec<_> = (0..100u32)
        .map(|i| {
            let mut sender = sender.clone();
            let tokens = 6 + i % 5;
            let request = Request::post(url.as_str())
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(chat(tokens, 20))))
                .unwrap();
            tokio::spawn(async move {
                sender.ready().await.unwrap();
                let response = sender.send_request(request).await.unwrap();
                assert_eq!(response.status(), 200);
                let body = response.into_body().collect().await.unwrap().to_bytes();
                assert_whole(std::str::from_utf8(&body).unwrap(), tokens);
            })
        })
        .collect();
    for stream in streams {
        stream.await.unwrap();
    }
    ended(100);

    match curl_version() {
        Some(version) if version >= (8, 0) => {}
        other => {
            eprintln!("curl {other:?}: not 8.0 or later, skipping its --parallel half");
            return;
        }
    }
    let dir = std::env::temp_dir().join(format!("tower-sse-h2-curl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut args: Vec<String> = [
        "-sS",
        "--http2-prior-knowledge",
        "--parallel",
        "--parallel-max",
        "100",
        "-H",
        "content-type: application/json",
        "-d",
        &chat(8, 20),
        "-w",
        "%{num_connects} %{http_version} %{http_code}\n",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    for i in 0..100 {
        args.push("-o".into());
        args.push(dir.join(format!("{i}.sse")).display().to_string());
        args.push(url.clone());
    }
    let output = tokio::task::spawn_blocking(move || Command::new("curl").args(&args).output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stats = String::from_utf8(output.stdout).unwrap();
    let mut connects = 0;
    for line in stats.lines() {
        let mut fields = line.split(' ');
        connects += fields.next().unwrap().parse::<u32>().unwrap();
        assert_eq!(fields.next(), Some("2"), "{stats}");
        assert_eq!(fields.next(), Some("200"), "{stats}");
    }
    assert_eq!(stats.lines().count(), 100, "{stats}");
    assert_eq!(connects, 1, "one connection for every transfer: {stats}");
    for i in 0..100 {
        let body = std::fs::read_to_string(dir.join(format!("{i}.sse"))).unwrap();
        assert_whole(&body, 8);
    }
    std::fs::remove_dir_all(&dir).unwrap();
    ended(100);
}
