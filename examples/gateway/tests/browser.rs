//! A real browser `EventSource` through `--resumable`, with a proxy that cuts its first
//! connection in the middle of an event: the browser reconnects by itself with
//! `Last-Event-ID` and its page sees every event once, in order, while the upstream is
//! called once.
//!
//! Needs `chromium` (the CI installs it: `apt-get install -y chromium`); skipped without it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{Html, Response};
use axum::routing::get;
use bytes::Bytes;
use example_gateway::GatewayConfig;
use hyper::body::{Body, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Events the upstream sends after its `retry:` block.
const EVENTS: usize = 30;

const PAGE: &str = r#"<!doctype html><meta charset="utf-8"><script>
let n = 0;
const log = (q) => fetch(`/log?n=${n++}&${q}`);
const source = new EventSource("/stream");
source.onopen = () => log("kind=open");
source.onerror = () => log(`kind=error&state=${source.readyState}`);
source.onmessage = (e) => {
  log(`kind=message&data=${encodeURIComponent(e.data)}&id=${encodeURIComponent(e.lastEventId)}`);
  if (e.data === "end") { source.close(); log("kind=done"); }
};
</script>"#;

/// A streaming body fed from a channel.
struct ChannelBody(mpsc::UnboundedReceiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

#[derive(Clone, Default)]
struct Upstream {
    log: Arc<Mutex<Vec<(usize, String)>>>,
    streams: Arc<AtomicUsize>,
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn record(
    State(upstream): State<Upstream>,
    Query(query): Query<Vec<(String, String)>>,
) -> &'static str {
    let n = query
        .iter()
        .find(|(k, _)| k == "n")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(usize::MAX);
    let line = query
        .iter()
        .filter(|(k, _)| k != "n")
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    upstream.log.lock().unwrap().push((n, line));
    "ok"
}

/// The stream: `retry: 300`, then `EVENTS` events 20 ms apart, then `end`.
async fn stream(State(upstream): State<Upstream>) -> Response<axum::body::Body> {
    upstream.streams.fetch_add(1, Ordering::SeqCst);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _ = tx.send(Bytes::from_static(b"retry: 300\n\n"));
        for i in 1..=EVENTS {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = tx.send(Bytes::from(format!("data: {i}\n\n")));
        }
        let _ = tx.send(Bytes::from_static(b"data: end\n\n"));
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(axum::body::Body::new(ChannelBody(rx)))
        .unwrap()
}

/// A TCP proxy to `to`; the first connection that asks for `/stream` is cut after `cut`
/// response bytes (the headers and some events, then the middle of one).
async fn cutting_proxy(to: SocketAddr, cut: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cut_done = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let cut_done = cut_done.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(to).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                // Set when a request on this connection asks for `/stream` (a connection
                // may first have carried the page).
                let streaming = Arc::new(AtomicUsize::new(0));
                let seen = streaming.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 8192];
                    loop {
                        let Ok(n) = client_read.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        if buf[..n].windows(12).any(|w| w == b"GET /stream ") {
                            seen.store(1, Ordering::SeqCst);
                        }
                        if server_write.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
                let mut sent = 0;
                let mut buf = vec![0; 4096];
                loop {
                    let Ok(n) = server_read.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    let cut_this = streaming.load(Ordering::SeqCst) == 1
                        && (sent > 0 || cut_done.fetch_add(1, Ordering::SeqCst) == 0);
                    let n = if cut_this { n.min(cut - sent) } else { n };
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    if cut_this {
                        sent += n;
                        if sent >= cut {
                            // Drop both halves: the browser sees a network error.
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_source_reconnects_through_a_cut_and_misses_nothing() {
    let Some(browser) =
        tower_sse_mock::system::program_or_skip(&["chromium", "chromium-browser"], "chromium")
    else {
        return;
    };
    let upstream = Upstream::default();
    let app = Router::new()
        .route("/page", get(page))
        .route("/log", get(record))
        .route("/stream", get(stream))
        .with_state(upstream.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut config = GatewayConfig::new(format!("http://{upstream_addr}").parse().unwrap());
    config.resumable = true;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = example_gateway::start(listener, config, None)
        .await
        .unwrap();
    // The response head is about 200 bytes, each event about 40: cut in the middle of the
    // fourth or so.
    let proxy = cutting_proxy(gateway.addr, 380).await;

    let profile = std::env::temp_dir().join(format!("tower-sse-chromium-{}", std::process::id()));
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("http://{proxy}/page"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let mut done = false;
    for _ in 0..600 {
        if upstream
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|(_, l)| l == "kind=done")
        {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&profile);

    let mut log = upstream.log.lock().unwrap().clone();
    log.sort();
    assert!(done, "the page did not finish: {log:?}");
    let data: Vec<String> = log
        .iter()
        .filter_map(|(_, l)| l.strip_prefix("kind=message data="))
        .map(|l| l.split(" id=").next().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (1..=EVENTS)
        .map(|i| i.to_string())
        .chain(["end".to_owned()])
        .collect();
    assert_eq!(data, expected, "every event once, in order: {log:?}");
    let opens = log.iter().filter(|(_, l)| l == "kind=open").count();
    assert!(opens >= 2, "the browser reconnected: {log:?}");
    assert!(
        log.iter().any(|(_, l)| l == "kind=error state=0"),
        "a network error, then a reconnection: {log:?}"
    );
    assert_eq!(
        upstream.streams.load(Ordering::SeqCst),
        1,
        "one upstream call"
    );
}
