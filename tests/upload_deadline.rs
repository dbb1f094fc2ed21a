//! Upload deadlines on every path (issue 23, item 9): a request whose body stalls is timed
//! out from its arrival and releases its stream permit, whatever its API and whether or not
//! it sends `Accept: text/event-stream`. A real axum server, a real HTTP client whose body
//! stalls, paused time.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body as AxumBody;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use support::body::{next_report, report_channel};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_sse::limit::OpenStreams;
use tower_sse::{IncludeUsageLayer, Outcome, SseLayer, StreamLimitLayer};

/// The stream's first-event timeout: the deadline the upload is held to.
const DEADLINE: Duration = Duration::from_secs(5);

/// A server with the gateway's stack (limit of one stream, usage layer bounded by the
/// stream's deadline, `SseLayer`) in front of an upstream that reads the whole request
/// body before it answers a stream.
async fn server(
    max_request_size: usize,
) -> (
    SocketAddr,
    OpenStreams,
    tokio::sync::mpsc::UnboundedReceiver<tower_sse::StreamReport>,
) {
    let (sink, reports) = report_channel();
    let sse = SseLayer::new().first_event_timeout(DEADLINE).on_end(sink);
    let limit = StreamLimitLayer::new(1);
    let open = limit.counter();
    let upstream = tower::service_fn(|request: Request<AxumBody>| async move {
        let status = match request.into_body().collect().await {
            Ok(_) => StatusCode::OK,
            Err(_) => StatusCode::BAD_REQUEST,
        };
        let response = Response::builder()
            .status(status)
            .header("content-type", "text/event-stream")
            .body(AxumBody::from("data: {\"ok\":true}\n\ndata: [DONE]\n\n"))
            .unwrap();
        Ok::<_, Infallible>(response)
    });
    let stack = ServiceBuilder::new()
        .layer(limit)
        .layer(
            IncludeUsageLayer::new()
                .max_request_size(max_request_size)
                .upload_timeout(sse.request_deadline().unwrap())
                .map_request_body(AxumBody::new),
        )
        .layer(sse)
        .service(upstream);
    let app = Router::new().fallback_service(stack);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, open, reports)
}

/// Half a JSON body, then nothing (the connection stays open).
fn stalled_body(first: &'static str) -> reqwest::Body {
    let first =
        futures_util::stream::iter([Ok::<_, Infallible>(Bytes::from_static(first.as_bytes()))]);
    reqwest::Body::wrap_stream(first.chain(futures_util::stream::pending()))
}

/// Send a stalled upload; the response's status, bounded so that a request never timed out
/// fails the test rather than hanging it (paused time: the bound costs nothing).
async fn stalled(addr: SocketAddr, path: &str, first: &'static str) -> StatusCode {
    let request = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(stalled_body(first))
        .send();
    let response = tokio::time::timeout(Duration::from_secs(3600), request)
        .await
        .unwrap_or_else(|_| panic!("{path}: a stalled upload was never timed out"))
        .unwrap();
    response.status()
}

#[tokio::test(start_paused = true)]
async fn a_stalled_upload_to_any_llm_api_gets_a_408_and_frees_its_permit() {
    let cases = [
        ("/v1/messages", r#"{"model":"claude","stream":tr"#),
        ("/v1/responses", r#"{"model":"gpt-5","stream":tr"#),
        (
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            r#"{"contents":[{"parts":[{"te"#,
        ),
        ("/v1/chat/completions", r#"{"model":"m","stream":tr"#),
    ];
    for (path, first) in cases {
        let (addr, open, mut reports) = server(1024 * 1024).await;
        assert_eq!(
            stalled(addr, path, first).await,
            StatusCode::REQUEST_TIMEOUT
        );
        assert_eq!(open.get(), 0, "{path}: the permit is released");
        let report = next_report(&mut reports).await;
        assert_eq!(report.outcome, Outcome::RequestTimeout, "{path}");
    }
}

/// On a path the usage layer does not read (no LLM API it knows), the body is handed on as
/// it comes, but fails at the deadline: the upstream sees an incomplete body, and the
/// permit is released with the response.
#[tokio::test(start_paused = true)]
async fn a_stalled_upload_on_any_other_path_fails_at_the_deadline() {
    let (addr, open, _reports) = server(1024 * 1024).await;
    let status = stalled(addr, "/v1/custom/run", r#"{"inp"#).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "the upstream read a failed body"
    );
    assert_eq!(open.get(), 0, "the permit is released");
}

/// A plain `SseLayer` (no usage layer to read bodies) with a first-event timeout: a
/// Gemini streaming request is a stream by its path, so its deadline runs before the head
/// and a stalled upload cannot hold its permit past it (`504`: the layer cannot tell a
/// stalled upload from a slow upstream).
#[tokio::test(start_paused = true)]
async fn a_plain_sse_layer_bounds_a_stalled_gemini_upload() {
    let (sink, mut reports) = report_channel();
    let sse = SseLayer::new().first_event_timeout(DEADLINE).on_end(sink);
    let limit = StreamLimitLayer::new(1);
    let open = limit.counter();
    let upstream = tower::service_fn(|request: Request<AxumBody>| async move {
        let _ = request.into_body().collect().await;
        Ok::<_, Infallible>(Response::new(AxumBody::empty()))
    });
    let stack = ServiceBuilder::new()
        .layer(limit)
        .layer(sse)
        .service(upstream);
    let app = Router::new().fallback_service(stack);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";
    let status = stalled(addr, path, r#"{"contents":[{"parts":[{"te"#).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(open.get(), 0, "the permit is released");
    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Outcome::FirstEventTimeout);
}

/// A body larger than the usage layer reads is handed on past what was read, and its
/// rest is held to the same deadline.
#[tokio::test(start_paused = true)]
async fn the_rest_of_an_oversized_stalled_upload_fails_at_the_deadline() {
    let (addr, open, _reports) = server(16).await;
    let first = r#"{"model":"claude","stream":true,"messages":[{"role":"user","content":"#;
    let status = stalled(addr, "/v1/messages", first).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "the upstream read a failed body"
    );
    assert_eq!(open.get(), 0, "the permit is released");
}
