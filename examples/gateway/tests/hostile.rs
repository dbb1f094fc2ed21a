//! Hostile clients against the real gateway binary, over loopback: what a client can do to
//! a gateway by misbehaving, and that the gateway recovers from each.
//!
//! Every case starts its own gateway process ([`Gateway::start`], the in-process mock
//! upstream, short limits set by flags so that nothing waits long), misbehaves, checks what
//! the gateway did, and ends with [`Gateway::assert_recovered`]: a normal stream is served
//! at once, no stream holds a permit of the stream limit any more (the Prometheus gauge
//! `tower_sse_limit_open_streams` is back to 0), the connections are released (open file
//! descriptors back near the start) and the resident memory stays under [`MAX_RSS_KIB`].
//!
//! To add a case (label floods, stalled uploads, disconnect storms, ...): write an
//! `#[tokio::test]` that starts a `Gateway` with the flags it needs (on top of [`FLAGS`]),
//! does its worst with the raw-socket helpers below or `reqwest`, asserts what the client
//! saw, and calls `assert_recovered` last.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "support/binary.rs"]
mod binary;
mod support;

/// The limits every case runs with: short clocks, so that a case takes seconds.
const FLAGS: &[&str] = &[
    "--header-timeout",
    "1",
    "--idle-connection-timeout",
    "1",
    "--max-header-bytes",
    "16384",
    "--max-body-bytes",
    "65536",
];
/// The header and idle timeouts above.
const TIMEOUT: Duration = Duration::from_secs(1);
/// How late a connection may be closed after its timeout on a loaded 2-core machine (the
/// idle clock is rechecked lazily: up to one more timeout).
const SLACK: Duration = Duration::from_millis(2500);
/// The resident memory a gateway (debug build, with the in-process mock upstream) may
/// reach in any case here. Measured on a 2-core VM: about 15 MiB after a warm-up stream, and
/// about 21 MiB at the peak (300 idle connections).
const MAX_RSS_KIB: u64 = 64 * 1024;

/// The gateway binary, killed when dropped.
struct Gateway {
    child: support::Process,
    addr: String,
    /// Everything it printed on stdout (its log), read by a thread so that it never blocks.
    stdout: Arc<Mutex<String>>,
    fds_at_start: usize,
}

impl Gateway {
    /// Start the binary with [`FLAGS`] and `args` on a free port; wait for its
    /// `listening on http://ADDR` line and serve one stream, so that what a case measures
    /// starts from a warm gateway.
    async fn start(args: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
        command.args(FLAGS).args(args);
        let (child, base, lines) = binary::spawn_reading(command);
        let addr = base.trim_start_matches("http://").to_owned();
        let stdout = Arc::new(Mutex::new(String::new()));
        let log = stdout.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut gateway = Self {
            child,
            addr,
            stdout,
            fds_at_start: 0,
        };
        gateway.normal_stream().await;
        gateway.until_no_open_streams().await;
        gateway.fds_at_start = gateway.open_fds();
        gateway
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A streamed chat completion, read to its end; returns how long it took.
    async fn normal_stream(&self) -> Duration {
        let started = Instant::now();
        let body = reqwest::Client::new()
            .post(self.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(r#"{"model":"gpt-mock","stream":true,"messages":[]}"#)
            .send()
            .await
            .expect("the gateway answers")
            .text()
            .await
            .expect("the stream is read to its end");
        assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
        started.elapsed()
    }

    /// A gauge of `/metrics`; 0 when it was never set.
    async fn gauge(&self, name: &str) -> f64 {
        let text = reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .map_or(0.0, |value| value.trim().parse().unwrap())
    }

    /// Wait until no stream holds a permit of the stream limit (released when its body is
    /// dropped, just after the client read the end).
    async fn until_no_open_streams(&self) {
        let mut open = 0.0;
        for _ in 0..200 {
            open = self.gauge("tower_sse_limit_open_streams").await;
            if open == 0.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{open} streams still hold a permit");
    }

    fn status_field(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.0.id()))
            .expect("/proc/<pid>/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/<pid>/status"))
    }

    /// Resident memory, in KiB.
    fn rss_kib(&self) -> u64 {
        self.status_field("VmRSS:")
    }

    /// Open file descriptors (sockets included).
    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.0.id())).map_or(0, |dir| dir.count())
    }

    /// Wait until the gateway holds at most a few more descriptors than after its start:
    /// the connections a case opened are closed on its side too.
    async fn until_connections_released(&self) {
        let mut open = 0;
        for _ in 0..300 {
            open = self.open_fds();
            if open <= self.fds_at_start + 4 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{open} descriptors open, {} after the start",
            self.fds_at_start
        );
    }

    /// After a case: a normal stream is served, no stream holds a permit, the connections
    /// are released and memory stays bounded. Returns the RSS in KiB.
    async fn assert_recovered(&self) -> u64 {
        let took = self.normal_stream().await;
        assert!(
            took < Duration::from_secs(2),
            "a normal stream took {took:?}"
        );
        self.until_no_open_streams().await;
        self.until_connections_released().await;
        let rss = self.rss_kib();
        let peak = self.status_field("VmHWM:");
        eprintln!("gateway RSS {rss} KiB, peak {peak} KiB");
        assert!(
            peak <= MAX_RSS_KIB,
            "peak RSS {peak} KiB > {MAX_RSS_KIB} KiB"
        );
        rss
    }

    fn log(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }
}

/// A raw connection to the gateway.
async fn connect(gateway: &Gateway) -> TcpStream {
    TcpStream::connect(&gateway.addr).await.unwrap()
}

/// Read until the gateway closes the connection (or `limit` passes); returns what it sent
/// and how long after `since` it closed, `None` if it did not.
async fn until_closed(
    stream: &mut TcpStream,
    since: Instant,
    limit: Duration,
) -> (Vec<u8>, Option<Duration>) {
    let mut received = Vec::new();
    let mut buf = [0; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    (received, closed.ok().map(|()| since.elapsed()))
}

fn status_line(response: &[u8]) -> String {
    String::from_utf8_lossy(response)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn half_sent_heads_are_closed_within_the_header_timeout() {
    let gateway = Gateway::start(&[]).await;
    let limit = TIMEOUT + SLACK;
    let mut clients = Vec::new();
    // Silent connections, heads cut off at every stage, and one that trickles a byte every
    // 100 ms (trickling does not buy time: the clock runs from the head's first byte).
    let partial: &[&[u8]] = &[
        b"",
        b"P",
        b"POST /v1/chat/completions HTTP/1.1\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Ty",
        b"PRI * HTTP/2.0\r\n",
    ];
    for (i, head) in partial.iter().cycle().take(50).enumerate() {
        let mut stream = connect(&gateway).await;
        clients.push(tokio::spawn(async move {
            let since = Instant::now();
            stream.write_all(head).await.unwrap();
            let closed = until_closed(&mut stream, since, limit).await;
            (i, closed)
        }));
    }
    let trickle = tokio::spawn({
        let mut stream = connect(&gateway).await;
        async move {
            let since = Instant::now();
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: yes" {
                if stream.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            until_closed(&mut stream, since, limit).await
        }
    });
    for client in clients {
        let (i, (received, closed)) = client.await.unwrap();
        let closed = closed.unwrap_or_else(|| panic!("client {i} still open after {limit:?}"));
        assert!(closed >= TIMEOUT - Duration::from_millis(100), "{closed:?}");
        // Nothing to answer: the connection is just closed (hyper may send a 408 first).
        assert!(
            received.is_empty() || status_line(&received).contains("408"),
            "{}",
            status_line(&received)
        );
    }
    let (_, closed) = trickle.await.unwrap();
    let closed = closed.expect("the trickling client is closed");
    assert!(closed < limit, "{closed:?}");
    gateway.assert_recovered().await;
}

#[tokio::test]
async fn a_half_sent_head_on_a_keep_alive_connection_gets_the_header_timeout_not_the_idle_one() {
    // The idle clock is long here: the head's own clock must close it.
    let gateway = Gateway::start(&["--idle-connection-timeout", "30"]).await;
    let mut stream = connect(&gateway).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(status_line(&buf[..n]).contains("200"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let since = Instant::now();
    stream
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (_, closed) = until_closed(&mut stream, since, TIMEOUT + SLACK).await;
    let closed = closed.expect("closed by the header timeout");
    assert!(closed >= TIMEOUT - Duration::from_millis(100), "{closed:?}");
    gateway.assert_recovered().await;
}

#[tokio::test]
async fn huge_heads_are_refused_with_431() {
    let gateway = Gateway::start(&[]).await;
    let big = "a".repeat(64 * 1024);
    let many: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    for head in [
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"),
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n"),
        format!("GET /{big} HTTP/1.1\r\nHost: x\r\n\r\n"),
    ] {
        let mut stream = connect(&gateway).await;
        let since = Instant::now();
        // The gateway may answer and close before reading it all.
        let _ = stream.write_all(head.as_bytes()).await;
        let (received, closed) = until_closed(&mut stream, since, TIMEOUT + SLACK).await;
        assert!(closed.is_some(), "still open");
        let status = status_line(&received);
        // 431 (or 414 for a long target), or just closed.
        assert!(
            received.is_empty() || status.contains("431") || status.contains("414"),
            "{status}"
        );
    }
    gateway.assert_recovered().await;
}

#[tokio::test]
async fn huge_bodies_are_refused_with_413() {
    let gateway = Gateway::start(&[]).await;
    // Announced: refused from the head, before a byte of the body is sent.
    let mut stream = connect(&gateway).await;
    stream
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 1073741824\r\n\r\n",
        )
        .await
        .unwrap();
    let (received, _) = until_closed(&mut stream, Instant::now(), TIMEOUT + SLACK).await;
    assert!(
        status_line(&received).contains("413"),
        "{}",
        status_line(&received)
    );

    // Not announced (chunked): refused once it grows past the limit, streaming or not.
    for content_type in ["application/json", "application/octet-stream"] {
        let mut stream = connect(&gateway).await;
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n\
             Transfer-Encoding: chunked\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let (mut read, mut write) = stream.into_split();
        let writer = tokio::spawn(async move {
            let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000));
            // 1 MiB, far past the 64 KiB limit; the gateway may stop reading at any point.
            for _ in 0..64 {
                if write.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
            }
            let _ = write.write_all(b"0\r\n\r\n").await;
        });
        let mut received = Vec::new();
        let _ = tokio::time::timeout(TIMEOUT + SLACK, read.read_to_end(&mut received)).await;
        writer.abort();
        assert!(
            status_line(&received).contains("413"),
            "{content_type}: {}",
            status_line(&received)
        );
    }
    gateway.assert_recovered().await;
}

#[tokio::test]
async fn hundreds_of_idle_connections_are_closed_and_streams_go_on() {
    // A longer idle clock here, so that none closes while the others are being opened.
    const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
    let gateway = Gateway::start(&["--idle-connection-timeout", "3"]).await;
    const IDLE: usize = 300;
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        let mut stream = connect(&gateway).await;
        // One request each, then keep-alive silence.
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0; 1024];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(status_line(&buf[..n]).contains("200"));
        idle.push((stream, Instant::now()));
    }
    let fds = gateway.open_fds();
    assert!(
        fds + 4 >= gateway.fds_at_start + IDLE,
        "{fds} fds, {} at the start",
        gateway.fds_at_start
    );
    // While they sit there, a stream is served at once.
    let took = gateway.normal_stream().await;
    assert!(took < Duration::from_secs(1), "a stream took {took:?}");
    let peak_rss = gateway.rss_kib();

    let closing: Vec<_> = idle
        .into_iter()
        .map(|(mut stream, since)| {
            tokio::spawn(async move {
                let (_, closed) = until_closed(&mut stream, since, IDLE_TIMEOUT + SLACK).await;
                closed
            })
        })
        .collect();
    for client in closing {
        let closed = client
            .await
            .unwrap()
            .expect("an idle connection stayed open");
        assert!(
            closed >= IDLE_TIMEOUT - Duration::from_millis(100),
            "{closed:?}"
        );
    }
    let rss = gateway.assert_recovered().await;
    eprintln!("with {IDLE} idle connections: RSS {peak_rss} KiB; after: {rss} KiB");
    assert!(gateway.log().contains("stream ended"));
}

#[tokio::test]
async fn a_flood_of_model_names_leaves_metrics_bounded() {
    let gateway = Gateway::start(&["--max-model-labels", "10"]).await;
    let before = reqwest::get(gateway.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .len();
    let client = reqwest::Client::new();
    for i in 0..120 {
        // A distinct 1 KB model name per request (the mock echoes it as the response model).
        let model = format!("{i}-{}", "m".repeat(1024));
        let body = client
            .post(gateway.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"model":"{model}","stream":true,"messages":[]}}"#
            ))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.ends_with("data: [DONE]\n\n"));
    }
    let metrics = reqwest::get(gateway.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Every series of the flood is under `_OTHER` (the names are too long): the text grows
    // by a handful of series, not by 120 of each histogram.
    assert!(metrics.contains("_OTHER"));
    assert!(!metrics.contains(&"m".repeat(1024)));
    let grown = metrics.len().saturating_sub(before);
    eprintln!("/metrics grew by {grown} bytes over 120 model names");
    assert!(grown < 64 * 1024, "/metrics grew by {grown} bytes");
    gateway.assert_recovered().await;
}

#[tokio::test]
async fn a_stalled_upload_gets_a_408_at_the_first_event_deadline_and_frees_its_permit() {
    let gateway = Gateway::start(&["--first-event-timeout", "1", "--max-streams", "1"]).await;
    let mut stream = connect(&gateway).await;
    let body = r#"{"model":"gpt-mock","stream":true,"messages":[]}"#;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let since = Instant::now();
    stream.write_all(head.as_bytes()).await.unwrap();
    // Half the body, then nothing.
    stream
        .write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buf = [0; 4096];
    while !received.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(TIMEOUT + SLACK, stream.read(&mut buf))
            .await
            .expect("an answer within the deadline")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        received.extend_from_slice(&buf[..n]);
    }
    let took = since.elapsed();
    assert!(
        status_line(&received).contains("408"),
        "{}",
        status_line(&received)
    );
    assert!(took >= TIMEOUT - Duration::from_millis(100), "{took:?}");
    // Reported, and the only permit is free again (the normal stream of the check needs it).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gateway.log().contains("outcome=request_timeout") {
        assert!(Instant::now() < deadline, "no report: {}", gateway.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(stream);
    gateway.assert_recovered().await;
}

/// Issue 23, item 9: the same on every provider's streaming API, without `Accept:
/// text/event-stream`: Anthropic's `/v1/messages`, `/v1/responses`, Gemini's
/// `:streamGenerateContent`. Each stalled upload is answered `408` and frees the only permit.
#[tokio::test]
async fn a_stalled_upload_to_any_provider_api_gets_a_408_and_frees_its_permit() {
    let gateway = Gateway::start(&["--first-event-timeout", "1", "--max-streams", "1"]).await;
    for (path, body) in [
        (
            "/v1/messages",
            r#"{"model":"claude","stream":true,"messages":[]}"#,
        ),
        (
            "/v1/responses",
            r#"{"model":"gpt-mock","stream":true,"input":"hi"}"#,
        ),
        (
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#,
        ),
    ] {
        let mut stream = connect(&gateway).await;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream
            .write_all(&body.as_bytes()[..body.len() / 2])
            .await
            .unwrap();
        let mut received = Vec::new();
        let mut buf = [0; 4096];
        while !received.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(TIMEOUT + SLACK, stream.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{path}: no answer within the deadline"))
                .unwrap();
            assert!(n > 0, "{path}: closed without an answer");
            received.extend_from_slice(&buf[..n]);
        }
        assert!(
            status_line(&received).contains("408"),
            "{path}: {}",
            status_line(&received)
        );
        drop(stream);
    }
    gateway.assert_recovered().await;
}

#[tokio::test]
async fn a_disconnect_storm_with_draining_stays_within_the_limit() {
    let gateway = Gateway::start(&["--drain", "5", "--max-streams", "4"]).await;
    let client = reqwest::Client::new();
    let mut storm = Vec::new();
    for _ in 0..50 {
        let client = client.clone();
        let url = gateway.url("/v1/chat/completions");
        storm.push(tokio::spawn(async move {
            // About a second of stream; the client leaves after its first bytes.
            let response = client
                .post(url)
                .header("content-type", "application/json")
                .header("x-mock-tokens", "20")
                .header("x-mock-delay-ms", "50")
                .body(r#"{"model":"gpt-mock","stream":true,"messages":[]}"#)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            if status == 200 {
                let mut response = response;
                let _ = response.chunk().await;
            }
            status
        }));
    }
    let mut served = 0;
    let mut peak_open = 0.0_f64;
    for client in storm {
        let status = client.await.unwrap();
        assert!(status == 200 || status == 503, "{status}");
        served += usize::from(status == 200);
        peak_open = peak_open.max(gateway.gauge("tower_sse_limit_open_streams").await);
    }
    // Drained streams keep their permits: never more than the limit read at once.
    assert!(served >= 4, "{served}");
    assert!(peak_open <= 4.0, "{peak_open} open");
    // The drains end with their upstreams, and each is reported as a disconnect.
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway.gauge("tower_sse_limit_open_streams").await > 0.0 {
        assert!(Instant::now() < deadline, "drains still hold permits");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The log lines follow the reports by up to a few milliseconds (the log writer gathers
    // lines), so the gauge at zero may come first.
    let disconnects = || gateway.log().matches("outcome=client_disconnected").count();
    while disconnects() < served {
        assert!(
            Instant::now() < deadline,
            "{} disconnects logged for {served} streams served",
            disconnects()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The drained upstream connections go back to the gateway's pool (idle for 30 s): up to
    // one per permit, two descriptors each (the in-process mock holds the other end).
    let mut gateway = gateway;
    gateway.fds_at_start += 2 * 4;
    gateway.assert_recovered().await;
}
