//! A browser page on another origin (`--cors-origin`): headless Chromium's `EventSource` and a
//! preflighted `fetch` (a JSON `POST`) through the gateway, and the same `EventSource`
//! refused by a gateway that allows no origin.
//!
//! Needs `chromium` (the CI installs it); skipped without it.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{Html, Response};
use axum::routing::{get, post};
use example_gateway::GatewayConfig;
use tokio::net::TcpListener;

/// The page, with `GATEWAY` and `CLOSED` replaced by the two gateways' addresses.
const PAGE: &str = r#"<!doctype html><meta charset="utf-8"><script>
const log = (q) => fetch(`/log?${q}`);
const source = new EventSource("http://GATEWAY/stream");
const seen = [];
source.onmessage = (e) => {
  seen.push(e.data);
  if (e.data === "end") {
    source.close();
    log(`kind=events&data=${encodeURIComponent(seen.join(","))}`);
  }
};
source.onerror = () => log(`kind=error&state=${source.readyState}`);
fetch("http://GATEWAY/v1/echo", {
  method: "POST",
  headers: { "content-type": "application/json", "x-custom": "1" },
  body: "{\"a\":1}",
}).then(async (r) => log(`kind=fetch&status=${r.status}&body=${encodeURIComponent(await r.text())}&id=${r.headers.get("x-request-id") ? "yes" : "no"}`))
  .catch(() => log("kind=fetch-failed"));
const closed = new EventSource("http://CLOSED/stream");
closed.onmessage = () => log("kind=closed-message");
closed.onerror = () => { log(`kind=closed-error&state=${closed.readyState}`); closed.close(); };
</script>"#;

#[derive(Clone, Default)]
struct Shared {
    log: Arc<Mutex<Vec<String>>>,
    page: Arc<Mutex<String>>,
}

async fn page(State(shared): State<Shared>) -> Html<String> {
    Html(shared.page.lock().unwrap().clone())
}

async fn record(
    State(shared): State<Shared>,
    Query(query): Query<Vec<(String, String)>>,
) -> &'static str {
    let line = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    shared.log.lock().unwrap().push(line);
    "ok"
}

async fn stream() -> Response<axum::body::Body> {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(axum::body::Body::from(
            "data: one\n\ndata: two\n\ndata: end\n\n",
        ))
        .unwrap()
}

async fn echo(body: String) -> String {
    body
}

async fn gateway(upstream: std::net::SocketAddr, origins: Vec<String>) -> example_gateway::Gateway {
    let mut config = GatewayConfig::new(format!("http://{upstream}").parse().unwrap());
    config.cors_origins = origins;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    example_gateway::start(listener, config, None)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_origin_streams_through_an_allowing_gateway() {
    let Some(browser) =
        tower_sse_mock::system::program_or_skip(&["chromium", "chromium-browser"], "chromium")
    else {
        return;
    };
    let shared = Shared::default();
    // The page's origin, and the upstream, on one server (the gateways are other origins).
    let app = Router::new()
        .route("/page", get(page))
        .route("/log", get(record))
        .route("/stream", get(stream))
        .route("/v1/echo", post(echo))
        .with_state(shared.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let origin = format!("http://{origin_addr}");
    let allowing = gateway(origin_addr, vec![origin.clone()]).await;
    let closed = gateway(origin_addr, Vec::new()).await;
    *shared.page.lock().unwrap() = PAGE
        .replace("GATEWAY", &allowing.addr.to_string())
        .replace("CLOSED", &closed.addr.to_string());

    let profile =
        std::env::temp_dir().join(format!("tower-sse-chromium-cors-{}", std::process::id()));
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("{origin}/page"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let finished = |log: &[String]| {
        ["kind=events", "kind=fetch", "kind=closed-error"]
            .iter()
            .all(|kind| log.iter().any(|l| l.starts_with(kind)))
    };
    for _ in 0..600 {
        if finished(&shared.log.lock().unwrap()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&profile);

    let log = shared.log.lock().unwrap().clone();
    assert!(finished(&log), "the page did not finish: {log:?}");
    assert!(
        log.contains(&"kind=events data=one,two,end".to_owned()),
        "{log:?}"
    );
    // The preflighted POST went through, and the page may read the request id.
    assert!(
        log.contains(&r#"kind=fetch status=200 body={"a":1} id=yes"#.to_owned()),
        "{log:?}"
    );
    // A gateway that allows no origin: the browser refuses the stream (closed, state 2).
    assert!(
        log.contains(&"kind=closed-error state=2".to_owned()),
        "{log:?}"
    );
    assert!(!log.iter().any(|l| l == "kind=closed-message"), "{log:?}");
}
