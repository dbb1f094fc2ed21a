//! The gateway as an HTTP proxy (issue 31), against a real upstream on 127.0.0.1 that answers
//! in unusual but legal ways: compressed event streams (gzip, brotli) whether asked or not,
//! a base path in `--upstream`, `HEAD`, `204` and `304` answers, and the headers that keep a
//! buffering proxy in front from holding events back.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use example_gateway::GatewayConfig;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tower_sse::framing::Framing;
use tower_sse::{Outcome, StreamReport};

mod support;
use support::start;

/// `data: {"choices":[{"delta":{"content":"Hi"}}]}\n\ndata: [DONE]\n\n`, gzipped (by
/// Python's `gzip.compress`, `mtime=0`).
const GZIPPED_EVENTS: [u8; 78] = [
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0x4b, 0x49, 0x2c, 0x49, 0xb4, 0x52,
    0xa8, 0x56, 0x4a, 0xce, 0xc8, 0xcf, 0x4c, 0x4e, 0x2d, 0x56, 0xb2, 0x8a, 0xae, 0x56, 0x4a, 0x49,
    0xcd, 0x29, 0x49, 0x54, 0xb2, 0x02, 0x0a, 0xe6, 0xe7, 0x95, 0xa4, 0xe6, 0x95, 0x28, 0x59, 0x29,
    0x79, 0x64, 0x2a, 0xd5, 0xd6, 0xc6, 0xd6, 0x72, 0x71, 0xa5, 0x80, 0xd5, 0x47, 0xbb, 0xf8, 0xfb,
    0xb9, 0xc6, 0x72, 0x71, 0x01, 0x00, 0x2e, 0x69, 0x7c, 0x91, 0x3e, 0x00, 0x00, 0x00,
];

const EVENTS: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n\
data: [DONE]\n\n";

/// An Ollama `/api/chat` stream.
const OLLAMA_LINES: &str = "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"done\":false}\n\
{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"prompt_eval_count\":3,\"eval_count\":1}\n";

/// `data` as a brotli stream of one uncompressed meta-block (RFC 7932, section 9.2): window
/// bits `0` (16), a meta-block that is not the last, 4 nibbles of `MLEN - 1`, uncompressed,
/// padded to a byte; the bytes; then an empty last meta-block (`ISLAST`, `ISLASTEMPTY`).
fn brotli_stored(data: &[u8]) -> Vec<u8> {
    assert!(!data.is_empty() && data.len() <= 1 << 16);
    let header: u32 = ((data.len() as u32 - 1) << 4) | (1 << 20);
    let mut out = header.to_le_bytes()[..3].to_vec();
    out.extend_from_slice(data);
    out.push(0b11);
    out
}

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    version: http::Version,
    path_and_query: String,
    headers: HeaderMap,
}

/// The upstream: answers by path, records every request; `gate` holds the second half of
/// the compressed streams until it turns `true`.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    gate: watch::Sender<bool>,
}

/// A body of one frame, then (once the gate opens) another.
struct Gated {
    first: Option<Bytes>,
    gate: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    rest: Option<Bytes>,
}

impl Body for Gated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if let Some(gate) = self.gate.as_mut() {
            if gate.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.gate = None;
        }
        Poll::Ready(self.rest.take().map(|rest| Ok(Frame::data(rest))))
    }
}

fn gated(data: Vec<u8>, split: usize, gate: &watch::Sender<bool>) -> Gated {
    let data = Bytes::from(data);
    let mut open = gate.subscribe();
    Gated {
        first: Some(data.slice(..split)),
        gate: Some(Box::pin(async move {
            let _ = open.wait_for(|open| *open).await;
        })),
        rest: Some(data.slice(split..)),
    }
}

fn whole(data: impl Into<Bytes>) -> Gated {
    Gated {
        first: Some(data.into()),
        gate: None,
        rest: None,
    }
}

fn empty() -> Gated {
    Gated {
        first: None,
        gate: None,
        rest: None,
    }
}

fn answer(request: &Request<Incoming>, gate: &watch::Sender<bool>) -> Response<Gated> {
    let path = request.uri().path();
    let accepts_gzip = request
        .headers()
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .any(|v| v.to_str().unwrap_or_default().contains("gzip"));
    let sse = |status: StatusCode, body: Gated| {
        Response::builder()
            .status(status)
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap()
    };
    let encoded = |encoding: &str, data: Vec<u8>| {
        let split = data.len() / 2;
        let mut response = sse(StatusCode::OK, gated(data, split, gate));
        response
            .headers_mut()
            .insert("content-encoding", encoding.parse().unwrap());
        response
    };
    if request.method() == Method::HEAD {
        return sse(StatusCode::OK, empty());
    }
    match path {
        "/api/chat" => Response::builder()
            .header("content-type", "application/x-ndjson")
            .body(whole(OLLAMA_LINES))
            .unwrap(),
        // Compressed whatever the request asked for.
        "/force/gzip" => encoded("gzip", GZIPPED_EVENTS.to_vec()),
        "/force/br" => encoded("br", brotli_stored(EVENTS.as_bytes())),
        "/no-content" => sse(StatusCode::NO_CONTENT, empty()),
        "/not-modified" => sse(StatusCode::NOT_MODIFIED, empty()),
        // Compressed only when asked to, as servers do.
        _ if accepts_gzip => encoded("gzip", GZIPPED_EVENTS.to_vec()),
        _ => sse(StatusCode::OK, whole(EVENTS)),
    }
}

/// Switch to the `echo` protocol: every byte the client sends comes back.
fn echo_upgrade(request: &mut Request<Incoming>) -> Response<Gated> {
    let upgraded = hyper::upgrade::on(&mut *request);
    tokio::spawn(async move {
        let mut io = TokioIo::new(upgraded.await.unwrap());
        let mut buffer = [0u8; 64];
        loop {
            let read = tokio::io::AsyncReadExt::read(&mut io, &mut buffer)
                .await
                .unwrap();
            if read == 0 {
                return;
            }
            tokio::io::AsyncWriteExt::write_all(&mut io, &buffer[..read])
                .await
                .unwrap();
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(empty())
        .unwrap()
}

async fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let gate = watch::channel(false).0;
    let (record, answers) = (seen.clone(), gate.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (record, answers) = (record.clone(), answers.clone());
            let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                record.lock().unwrap().push(Seen {
                    method: request.method().clone(),
                    version: request.version(),
                    path_and_query: request
                        .uri()
                        .path_and_query()
                        .map_or("/".to_owned(), |p| p.to_string()),
                    headers: request.headers().clone(),
                });
                let response = if request.headers().contains_key("upgrade") {
                    echo_upgrade(&mut request)
                } else {
                    answer(&request, &answers)
                };
                async move { Ok::<_, Infallible>(response) }
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Upstream { addr, seen, gate }
}

async fn report(rx: &mut mpsc::UnboundedReceiver<StreamReport>) -> StreamReport {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a report within 30 s")
        .expect("the report channel is open")
}

fn config(upstream: &str) -> GatewayConfig {
    GatewayConfig::new(upstream.parse().unwrap())
}

/// A streaming request as a browser's `EventSource` or an SDK sends it, accepting gzip and br.
fn streaming(client: &reqwest::Client, method: Method, url: String) -> reqwest::RequestBuilder {
    client
        .request(method, url)
        .header("accept", "text/event-stream")
        .header("accept-encoding", "gzip, br")
}

#[tokio::test]
async fn a_client_accepting_gzip_cannot_opt_out_of_metering() {
    let upstream = upstream().await;
    let (gateway, mut reports) = start(config(&format!("http://{}", upstream.addr))).await;
    let client = reqwest::Client::new();
    let response = streaming(
        &client,
        Method::POST,
        format!("http://{}/v1/chat/completions", gateway.addr),
    )
    .body(r#"{"model":"m","stream":true,"messages":[]}"#)
    .send()
    .await
    .unwrap();
    assert!(response.headers().get("content-encoding").is_none());
    // What keeps nginx in front from buffering the events.
    assert_eq!(response.headers()["cache-control"], "no-cache");
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    let body = response.text().await.unwrap();
    assert!(body.contains("\"content\":\"Hi\""), "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    // The upstream was asked for identity, whatever the client accepts.
    let seen = upstream.seen.lock().unwrap().clone();
    assert_eq!(seen[0].headers["accept-encoding"], "identity");
    let report = report(&mut reports).await;
    assert_eq!(report.framing, Framing::Sse);
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(report.content_events, 1);
    assert_eq!(report.usage.map(|u| u.output_tokens), Some(Some(1)));
}

#[tokio::test]
async fn compressed_streams_are_limited_counted_and_reported_gzip_and_brotli() {
    let upstream = upstream().await;
    let mut config = config(&format!("http://{}", upstream.addr));
    config.max_streams = 1;
    let (gateway, mut reports) = start(config).await;
    let client = reqwest::Client::new();
    let expected = [
        ("gzip", GZIPPED_EVENTS.to_vec()),
        ("br", brotli_stored(EVENTS.as_bytes())),
    ];
    for (encoding, bytes) in expected {
        upstream.gate.send_replace(false);
        let url = format!("http://{}/force/{encoding}", gateway.addr);
        let mut first = streaming(&client, Method::GET, url.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(first.status(), 200);
        assert_eq!(first.headers()["content-encoding"], encoding);
        assert_eq!(first.headers()["cache-control"], "no-cache");
        assert_eq!(first.headers()["x-accel-buffering"], "no");
        let mut received = first.chunk().await.unwrap().unwrap().to_vec();
        // The open encoded stream holds the one permit.
        let second = streaming(&client, Method::GET, url).send().await.unwrap();
        assert_eq!(
            second.status(),
            503,
            "{encoding}: a second stream got past the limit"
        );
        upstream.gate.send_replace(true);
        while let Some(chunk) = first.chunk().await.unwrap() {
            received.extend_from_slice(&chunk);
        }
        // Passed through byte for byte: no keep-alive or event added to compressed bytes.
        assert_eq!(received, bytes, "{encoding}");
        let report = report(&mut reports).await;
        assert_eq!(report.framing, Framing::Encoded, "{encoding}");
        assert_eq!(report.outcome, Outcome::Completed, "{encoding}");
        assert_eq!(report.bytes_in, bytes.len() as u64, "{encoding}");
        assert_eq!(report.bytes_out, bytes.len() as u64, "{encoding}");
    }
    // One report per stream, no more (the 503s were never streams; the metrics recorder
    // is the process's, shared by the tests running beside this one).
    assert!(reports.try_recv().is_err());
    assert_eq!(gateway.open_streams.get(), 0);
}

#[tokio::test]
async fn the_upstream_path_is_a_base_path() {
    let upstream = upstream().await;
    let (gateway, _reports) = start(config(&format!(
        "http://{}/prefix/v1/?api-version=2",
        upstream.addr
    )))
    .await;
    let response = reqwest::get(format!("http://{}/chat/completions?stream=1", gateway.addr))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.seen.lock().unwrap().clone();
    assert_eq!(
        seen[0].path_and_query,
        "/prefix/v1/chat/completions?api-version=2&stream=1"
    );
}

#[tokio::test]
async fn head_204_and_304_answers_are_not_client_disconnects() {
    let upstream = upstream().await;
    let (gateway, mut reports) = start(config(&format!("http://{}", upstream.addr))).await;
    let client = reqwest::Client::new();
    let base = format!("http://{}", gateway.addr);
    let head = streaming(&client, Method::HEAD, format!("{base}/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(upstream.seen.lock().unwrap()[0].method, Method::HEAD);
    for (path, status) in [("/no-content", 204), ("/not-modified", 304)] {
        let response = streaming(&client, Method::GET, format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status);
        let report = report(&mut reports).await;
        assert_eq!(report.outcome, Outcome::Completed, "{path}");
        assert_eq!(report.framing, Framing::NotAStream, "{path}");
        assert_eq!(report.status.map(|s| s.as_u16()), Some(status));
    }
    // The HEAD request was not taken as a stream: no report was made for it (the reports
    // above were the next ones), and nothing counts as a disconnect.
    let metrics = gateway.metrics.render();
    assert!(!metrics.contains("client_disconnected"), "{metrics}");
    assert!(reports.try_recv().is_err());
}

#[tokio::test]
async fn ndjson_stays_ndjson_for_a_client_that_asked_for_it() {
    let upstream = upstream().await;
    let (gateway, mut reports) = start(config(&format!("http://{}", upstream.addr))).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/api/chat", gateway.addr);
    let body = r#"{"model":"m","messages":[]}"#;
    // An Ollama client reading lines.
    let response = client
        .post(&url)
        .header("accept", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    assert_eq!(response.text().await.unwrap(), OLLAMA_LINES);
    let lines = report(&mut reports).await;
    assert_eq!(lines.framing, Framing::JsonLines);
    assert_eq!(lines.outcome, Outcome::Completed);
    assert_eq!(lines.events, 2);
    assert_eq!(lines.content_events, 1);
    // A client that takes SSE (or did not say) gets the lines as SSE events.
    for accept in ["text/event-stream", "*/*"] {
        let response = client
            .post(&url)
            .header("accept", accept)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let text = response.text().await.unwrap();
        let first = OLLAMA_LINES.lines().next().unwrap();
        assert!(text.starts_with(&format!("data: {first}\n\n")), "{text}");
        assert_eq!(report(&mut reports).await.events, 2);
    }
}

#[tokio::test]
async fn upgrades_are_proxied_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let upstream = upstream().await;
    let (gateway, _reports) = start(config(&format!("http://{}", upstream.addr))).await;
    let mut client = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    client
        .write_all(
            b"GET /ws HTTP/1.1\r\nhost: gateway\r\nconnection: Upgrade\r\nupgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        assert_eq!(client.read(&mut byte).await.unwrap(), 1, "{head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");
    let seen = upstream.seen.lock().unwrap().clone();
    assert_eq!(seen[0].headers["upgrade"], "echo");
    // The connections are joined: bytes go both ways.
    for message in [&b"ping"[..], b"second message"] {
        client.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        client.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, message);
    }
}

#[tokio::test]
async fn forwarded_for_and_request_ids_go_upstream_and_back() {
    let upstream = upstream().await;
    let (gateway, _reports) = start(config(&format!("http://{}", upstream.addr))).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/chat/completions", gateway.addr);
    // A request id and a proxy chain from the client are kept, and appended to.
    let kept = client
        .get(&url)
        .header("x-request-id", "client-id-1")
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["x-request-id"], "client-id-1");
    // Without one, one is made: unique per request.
    let made = client.get(&url).send().await.unwrap();
    let made_id = made.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(made_id.len(), 32);
    let seen = upstream.seen.lock().unwrap().clone();
    assert_eq!(seen[0].headers["x-request-id"], "client-id-1");
    assert_eq!(seen[0].headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen[1].headers["x-request-id"], made_id.as_str());
    assert_eq!(seen[1].headers["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test]
async fn an_http_1_0_request_goes_upstream_as_http_1_1() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let upstream = upstream().await;
    let (gateway, _reports) = start(config(&format!("http://{}", upstream.addr))).await;
    let mut client = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    client
        .write_all(b"GET /v1/models HTTP/1.0\r\nhost: gateway\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).unwrap();
    // The client is answered in its own version; the upstream got HTTP/1.1 with a host.
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let seen = upstream.seen.lock().unwrap().clone();
    assert_eq!(seen[0].version, http::Version::HTTP_11);
    assert_eq!(seen[0].headers["host"], upstream.addr.to_string().as_str());
}

#[tokio::test]
async fn the_header_count_limit_is_configurable() {
    let upstream = upstream().await;
    let mut config = config(&format!("http://{}", upstream.addr));
    config.connections.max_headers = 10;
    let (gateway, _reports) = start(config).await;
    let url = format!("http://{}/v1/models", gateway.addr);
    let mut request = reqwest::Client::new().get(&url);
    for i in 0..12 {
        request = request.header(format!("x-h{i}"), "1");
    }
    assert_eq!(request.send().await.unwrap().status(), 431);
    let fine = reqwest::Client::new().get(&url).send().await.unwrap();
    assert_eq!(fine.status(), 200);
}

#[tokio::test]
async fn a_gzip_request_body_is_reported_as_include_usage_not_applied() {
    let upstream = upstream().await;
    let (gateway, mut reports) = start(config(&format!("http://{}", upstream.addr))).await;
    // `{"model":"m","stream":true,"messages":[]}`, gzipped (Python's `gzip.compress`,
    // `mtime=0`): forwarded unread.
    const BODY: &[u8] = &[
        0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0xab, 0x56, 0xca, 0xcd, 0x4f,
        0x49, 0xcd, 0x51, 0xb2, 0x52, 0xca, 0x55, 0xd2, 0x51, 0x2a, 0x2e, 0x29, 0x4a, 0x4d, 0xcc,
        0x55, 0xb2, 0x2a, 0x29, 0x2a, 0x4d, 0xd5, 0x51, 0xca, 0x4d, 0x2d, 0x2e, 0x4e, 0x4c, 0x4f,
        0x2d, 0x56, 0xb2, 0x8a, 0x8e, 0xad, 0x05, 0x00, 0x6c, 0x9b, 0xf4, 0xb6, 0x29, 0x00, 0x00,
        0x00,
    ];
    let body = BODY.to_vec();
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", gateway.addr))
        .header("accept", "text/event-stream")
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap();
    let encoded = report(&mut reports).await;
    assert_eq!(
        encoded
            .extensions
            .get::<example_gateway::IncludeUsageNotApplied>(),
        Some(&example_gateway::IncludeUsageNotApplied {
            encoding: "gzip".to_owned()
        })
    );
    // The upstream got the client's bytes as they were.
    let seen = upstream.seen.lock().unwrap().clone();
    assert_eq!(seen[0].headers["content-encoding"], "gzip");
    // A plain body is read and rewritten: no such note.
    let plain = reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", gateway.addr))
        .header("accept", "text/event-stream")
        .body(r#"{"model":"m","stream":true,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    plain.text().await.unwrap();
    let read = report(&mut reports).await;
    assert!(
        read.extensions
            .get::<example_gateway::IncludeUsageNotApplied>()
            .is_none()
    );
}
