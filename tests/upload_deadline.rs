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
use tower_sse::request::{UploadBody, UploadDeadlineLayer};
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
    let upstream = tower::service_fn(|request: Request<UploadBody<AxumBody>>| async move {
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
/// it comes, but fails at the deadline: the upstream sees an incomplete body (and answers
/// `400`), and the client gets `408` (the `SseLayer` knows the upload timed out before the
/// answer), reported as such; the permit is released with the response. (Was the
/// upstream's `400`, reported as whatever the `400` looked like.)
#[tokio::test(start_paused = true)]
async fn a_stalled_upload_on_any_other_path_fails_at_the_deadline() {
    let (addr, open, mut reports) = server(1024 * 1024).await;
    let status = stalled(addr, "/v1/custom/run", r#"{"inp"#).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(open.get(), 0, "the permit is released");
    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Outcome::RequestTimeout);
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
    let upstream = tower::service_fn(|request: Request<UploadBody<AxumBody>>| async move {
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
        StatusCode::REQUEST_TIMEOUT,
        "not the upstream's 400"
    );
    assert_eq!(open.get(), 0, "the permit is released");
}

/// A plain stack, as an axum user writes it: a limit of one stream, an `UploadDeadlineLayer`
/// (its default timeout), an `SseLayer` (no usage layer), and axum handlers that read the
/// JSON body.
async fn plain_server() -> (
    SocketAddr,
    OpenStreams,
    tokio::sync::mpsc::UnboundedReceiver<tower_sse::StreamReport>,
) {
    plain_server_with(true).await
}

/// [`plain_server`], with or without its `UploadDeadlineLayer` (without: a bare `SseLayer`
/// with its defaults, under the limit).
async fn plain_server_with(
    upload_layer: bool,
) -> (
    SocketAddr,
    OpenStreams,
    tokio::sync::mpsc::UnboundedReceiver<tower_sse::StreamReport>,
) {
    use axum::routing::post;

    async fn answer(axum::Json(body): axum::Json<serde_json::Value>) -> Response<AxumBody> {
        let model = body["model"].as_str().unwrap_or_default().to_owned();
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(AxumBody::from(format!(
                "data: {{\"model\":\"{model}\"}}\n\ndata: [DONE]\n\n"
            )))
            .unwrap()
    }

    let (sink, reports) = report_channel();
    let limit = StreamLimitLayer::new(1);
    let open = limit.counter();
    let handlers = Router::new()
        .route("/v1/messages", post(answer))
        .route("/v1/responses", post(answer));
    let app = if upload_layer {
        Router::new().fallback_service(
            ServiceBuilder::new()
                .layer(limit)
                .layer(UploadDeadlineLayer::new())
                .layer(SseLayer::new().on_end(sink))
                .service(handlers),
        )
    } else {
        Router::new().fallback_service(
            ServiceBuilder::new()
                .layer(limit)
                .layer(SseLayer::new().on_end(sink))
                .service(handlers),
        )
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, open, reports)
}

/// Over a raw connection: the head of a `POST` announcing 1000 bytes, the first `sent` of
/// them, then nothing; the status line of the answer (bounded: a request never timed out
/// fails the test; paused time makes the bound free).
async fn raw_stalled_status(
    addr: SocketAddr,
    path: &str,
    sent: &str,
) -> (u16, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut connection = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         content-length: 1000\r\n\r\n{sent}"
    );
    connection.write_all(head.as_bytes()).await.unwrap();
    let read_head = async {
        let mut seen = Vec::new();
        let mut buffer = [0; 1024];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = connection.read(&mut buffer).await.unwrap();
            assert!(n > 0, "{path}: the connection closed without an answer");
            seen.extend_from_slice(&buffer[..n]);
        }
        seen
    };
    let seen = tokio::time::timeout(Duration::from_secs(3600), read_head)
        .await
        .unwrap_or_else(|_| panic!("{path}: a stalled upload was never timed out"));
    let status = std::str::from_utf8(&seen[9..12]).unwrap().parse().unwrap();
    (status, connection)
}

/// A complete request through the plain stack: its status and body.
async fn complete(client: &reqwest::Client, addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let response = client
        .post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(r#"{"model":"m","stream":true}"#)
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

/// Issue 23, item 9: an `SseLayer` without `IncludeUsageLayer`, under a limit of one stream
/// and an `UploadDeadlineLayer`. A streaming request to Anthropic's or OpenAI's Responses path without `Accept:
/// text/event-stream` whose body stalls gets `408` at the default upload deadline (60 s from
/// its arrival), is reported as a request timeout, and gives its permit back: the next
/// request is served. (A bare `SseLayer` does the same by default: see
/// `a_bare_sse_layer_answers_a_stalled_upload_408_by_default`.)
#[tokio::test(start_paused = true)]
async fn a_plain_sse_layer_answers_a_stalled_upload_408_and_frees_its_permit() {
    let (addr, open, mut reports) = plain_server().await;
    let client = reqwest::Client::new();
    for path in ["/v1/messages", "/v1/responses"] {
        let started = tokio::time::Instant::now();
        let (status, _connection) =
            raw_stalled_status(addr, path, r#"{"model":"claude","str"#).await;
        assert_eq!(status, 408, "{path}");
        assert_eq!(
            started.elapsed().as_secs(),
            tower_sse::request::DEFAULT_UPLOAD_TIMEOUT.as_secs(),
            "{path}: at the default upload deadline"
        );
        assert_eq!(open.get(), 0, "{path}: the permit is released");
        let report = next_report(&mut reports).await;
        assert_eq!(report.outcome, Outcome::RequestTimeout, "{path}");

        // The only permit is free: the next request is served, as a stream.
        let (status, text) = complete(&client, addr, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(
            text, "data: {\"model\":\"m\"}\n\ndata: [DONE]\n\n",
            "{path}"
        );
        let report = next_report(&mut reports).await;
        assert_eq!(report.outcome, Outcome::Completed, "{path}");
        assert_eq!(open.get(), 0, "{path}");
    }
}

/// A complete upload is untouched by the deadline, however long its answer then streams:
/// once the inner service answered, the body is no longer held to it.
#[tokio::test(start_paused = true)]
async fn a_complete_upload_is_unaffected_by_the_upload_deadline() {
    let (addr, _open, mut reports) = plain_server().await;
    let client = reqwest::Client::new();
    let (status, text) = complete(&client, addr, "/v1/messages").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text, "data: {\"model\":\"m\"}\n\ndata: [DONE]\n\n");
    assert_eq!(next_report(&mut reports).await.outcome, Outcome::Completed);
}

/// The same over HTTP/2 (prior knowledge): the stalled stream gets `408` and frees the
/// permit, and the connection serves the next request.
#[tokio::test(start_paused = true)]
async fn a_plain_sse_layer_answers_a_stalled_upload_408_over_http2() {
    let (addr, open, mut reports) = plain_server().await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let request = client
        .post(format!("http://{addr}/v1/messages"))
        .header("content-type", "application/json")
        .body(stalled_body(r#"{"model":"claude","str"#))
        .send();
    let response = tokio::time::timeout(Duration::from_secs(3600), request)
        .await
        .expect("a stalled upload was never timed out")
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(open.get(), 0, "the permit is released");
    assert_eq!(
        next_report(&mut reports).await.outcome,
        Outcome::RequestTimeout
    );
    let (status, _) = complete(&client, addr, "/v1/messages").await;
    assert_eq!(status, StatusCode::OK);
}

/// With the upload timeout set to the stream's own deadline, a stalled upload of a
/// streaming request is the client's fault, not the upstream's: `408` at that deadline
/// rather than the `504` of a slow upstream.
#[tokio::test(start_paused = true)]
async fn an_upload_timeout_at_the_first_event_deadline_answers_408_not_504() {
    let (sink, mut reports) = report_channel();
    let sse = SseLayer::new().first_event_timeout(DEADLINE).on_end(sink);
    let uploads = UploadDeadlineLayer::new().timeout(sse.request_deadline());
    let upstream = tower::service_fn(
        |request: Request<UploadBody<UploadBody<AxumBody>>>| async move {
            let status = match request.into_body().collect().await {
                Ok(_) => StatusCode::OK,
                Err(_) => StatusCode::BAD_GATEWAY,
            };
            let mut response = Response::new(AxumBody::empty());
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        },
    );
    let limit = StreamLimitLayer::new(1);
    let open = limit.counter();
    let stack = ServiceBuilder::new()
        .layer(limit)
        .layer(uploads)
        .layer(sse)
        .service(upstream);
    let app = Router::new().fallback_service(stack);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";
    let started = tokio::time::Instant::now();
    let status = stalled(addr, path, r#"{"contents":[{"parts":[{"te"#).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(started.elapsed(), DEADLINE);
    assert_eq!(open.get(), 0, "the permit is released");
    assert_eq!(
        next_report(&mut reports).await.outcome,
        Outcome::RequestTimeout
    );
}

/// Issue 23, item 9, the library's defaults: a bare `SseLayer` (no `UploadDeadlineLayer`,
/// no `IncludeUsageLayer`) under `StreamLimitLayer::new(1)`, in front of an axum `Json`
/// handler. A stalled upload to `/v1/messages` without `Accept: text/event-stream` gets
/// `408` at the default upload timeout (60 s from its arrival), is reported as a request
/// timeout, and gives the only permit back: the next request is served. Before `SseLayer`
/// held bodies to a deadline itself, the stalled upload held the permit for ever.
#[tokio::test(start_paused = true)]
async fn a_bare_sse_layer_answers_a_stalled_upload_408_by_default() {
    let (addr, open, mut reports) = plain_server_with(false).await;
    let client = reqwest::Client::new();
    let path = "/v1/messages";
    let started = tokio::time::Instant::now();
    let (status, _connection) = raw_stalled_status(addr, path, r#"{"model":"claude","str"#).await;
    assert_eq!(status, 408);
    assert_eq!(
        started.elapsed().as_secs(),
        tower_sse::request::DEFAULT_UPLOAD_TIMEOUT.as_secs(),
        "at the default upload deadline"
    );
    assert_eq!(open.get(), 0, "the permit is released");
    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Outcome::RequestTimeout);

    // The only permit is free: the next request is served, as a stream.
    let (status, text) = complete(&client, addr, path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text, "data: {\"model\":\"m\"}\n\ndata: [DONE]\n\n");
    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(open.get(), 0);
}
