//! The edges (issue "trust at the edges"): the client sees what the upstream sent, and the
//! report says what really happened, on every path. Real axum servers and a real HTTP
//! client where HTTP is involved.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body as AxumBody;
use axum::routing::post;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use support::body::{FramesBody, Reports, collect, next_report, report_channel, response, serve};
use tokio::net::TcpListener;
use tower_sse::framing::Framing;
use tower_sse::sse::{Decoder, Item};
use tower_sse::{Outcome, SseLayer};

/// A body of these pieces with this content type and status.
fn answer(status: StatusCode, content_type: &str, pieces: &[&'static str]) -> Response<AxumBody> {
    let stream = futures_util::stream::iter(
        pieces
            .iter()
            .map(|p| Ok::<_, Infallible>(Bytes::from_static(p.as_bytes())))
            .collect::<Vec<_>>(),
    );
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(AxumBody::from_stream(stream))
        .unwrap()
}

/// An axum server answering `POST /` with `make()`, behind `layer`.
async fn serve_layer<O, E>(
    layer: SseLayer<O, E>,
    make: impl Fn() -> Response<AxumBody> + Clone + Send + Sync + 'static,
) -> SocketAddr
where
    O: tower_sse::Observer + Clone + Send + Sync + 'static,
    E: tower_sse::OnEnd + Clone + Send + Sync + 'static,
{
    let app = Router::new()
        .route("/", post(move || std::future::ready(make())))
        .layer(layer);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn send(addr: SocketAddr, accept: &str) -> (StatusCode, HeaderMap, Vec<u8>) {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/"))
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

/// What a spec-exact client makes of a stream: its events' data, and the reconnection time.
fn client_view(bytes: &[u8]) -> (Vec<String>, Option<u64>) {
    let mut decoder = Decoder::new();
    decoder.push(Bytes::copy_from_slice(bytes));
    decoder.finish();
    let mut events = Vec::new();
    for item in decoder.by_ref() {
        if let Item::Event(event) = item.unwrap() {
            events.push(event.data().into_owned());
        }
    }
    (events, decoder.reconnection_time())
}

// 1. An upstream that ends in the middle of an event.

#[tokio::test]
async fn an_upstream_cut_mid_event_reaches_the_client_as_it_came() {
    let (sink, mut reports) = report_channel();
    let addr = serve_layer(SseLayer::new().on_end(sink), || {
        answer(
            StatusCode::OK,
            "text/event-stream",
            &["data: a\n\n", "data: b"],
        )
    })
    .await;
    let (_, _, body) = send(addr, "text/event-stream").await;
    assert_eq!(
        body, b"data: a\n\ndata: b",
        "no error event the upstream never sent"
    );
    assert_eq!(client_view(&body).0, ["a"]);
    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Outcome::UpstreamTruncated);
    assert_eq!(report.bytes_out, body.len() as u64);
    assert_eq!(report.events, 1);
}

#[tokio::test]
async fn a_last_retry_line_without_blank_line_sets_the_clients_reconnection_time() {
    let (sink, mut reports) = report_channel();
    let addr = serve_layer(SseLayer::new().on_end(sink), || {
        answer(
            StatusCode::OK,
            "text/event-stream",
            &["data: a\n\n", "retry:1000\n"],
        )
    })
    .await;
    let (_, _, body) = send(addr, "text/event-stream").await;
    assert_eq!(body, b"data: a\n\nretry:1000\n");
    assert_eq!(client_view(&body), (vec!["a".to_owned()], Some(1000)));
    // No event was lost.
    assert_eq!(next_report(&mut reports).await.outcome, Outcome::Completed);
}

#[tokio::test]
async fn stripped_comments_stay_stripped_in_the_unfinished_block() {
    let reports = Reports::default();
    let layer = SseLayer::new()
        .forward_comments(false)
        .on_end(reports.sink());
    let upstream = FramesBody::data(&[b"data: a\n\n: note\nretry: 7\n: more\ndata: b"]);
    let out = collect(
        serve(layer, response("text/event-stream", upstream))
            .await
            .into_body(),
    )
    .await;
    assert_eq!(out.text(), "data: a\n\nretry: 7\ndata: b");
    assert_eq!(client_view(&out.data), (vec!["a".to_owned()], Some(7)));
    assert_eq!(reports.one().outcome, Outcome::UpstreamTruncated);
}

#[tokio::test]
async fn error_on_truncation_ends_with_the_error_event_and_keeps_retry() {
    let reports = Reports::default();
    let layer = SseLayer::new()
        .error_on_truncation(true)
        .on_end(reports.sink());
    let upstream = FramesBody::data(&[b"data: a\n\nretry: 1000\ndata: b"]);
    let out = collect(
        serve(layer, response("text/event-stream", upstream))
            .await
            .into_body(),
    )
    .await;
    let text = out.text();
    assert!(
        text.starts_with("data: a\n\nretry: 1000\n\nevent: error\n"),
        "{text}"
    );
    assert!(text.contains("upstream_truncated"));
    assert!(!text.contains("data: b"));
    assert_eq!(client_view(&out.data).1, Some(1000));
    assert_eq!(reports.one().outcome, Outcome::UpstreamTruncated);
}

// 2. NDJSON at its end.

#[tokio::test]
async fn ndjson_last_line_without_newline_is_a_record_when_whole() {
    let (sink, mut reports) = report_channel();
    let addr = serve_layer(SseLayer::new().json_lines(true).on_end(sink), || {
        answer(
            StatusCode::OK,
            "application/x-ndjson",
            &["{\"a\":1}\n", "{\"b\":2}"],
        )
    })
    .await;
    // An SSE client gets the lines as events.
    let (_, _, body) = send(addr, "text/event-stream").await;
    assert_eq!(client_view(&body).0, ["{\"a\":1}", "{\"b\":2}"]);
    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(report.events, 2);
}

#[tokio::test]
async fn ndjson_cut_mid_line_is_truncation_and_the_broken_json_is_not_forwarded() {
    let (sink, mut reports) = report_channel();
    let addr = serve_layer(SseLayer::new().json_lines(true).on_end(sink), || {
        answer(
            StatusCode::OK,
            "application/x-ndjson",
            &["{\"a\":1}\n", "{\"b\":[1,"],
        )
    })
    .await;
    // A client that asked for NDJSON gets NDJSON (issue 31): the whole line only.
    let (_, _, body) = send(addr, "application/x-ndjson").await;
    assert_eq!(body, b"{\"a\":1}\n");
    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Outcome::UpstreamTruncated);
    assert_eq!(report.events, 1);
}

// 3. Early response and JSON answers.

#[tokio::test]
async fn early_response_leaves_a_json_answer_to_a_client_that_accepts_json_intact() {
    let (sink, mut reports) = report_channel();
    let layer = SseLayer::new().early_response(true).on_end(sink);
    let addr = serve_layer(layer, || {
        answer(StatusCode::OK, "application/json", &["{\"result\":", "42}"])
    })
    .await;
    // What an MCP Streamable-HTTP client sends.
    let (status, headers, body) = send(addr, "application/json, text/event-stream").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body, b"{\"result\":42}");
    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(report.status, Some(StatusCode::OK));
    assert_eq!(report.framing, Framing::NotAStream);
    assert_eq!(report.bytes_out, body.len() as u64);
}

#[tokio::test]
async fn early_response_error_event_does_not_repeat_upstream_details() {
    let (sink, mut reports) = report_channel();
    let layer = SseLayer::new().early_response(true).on_end(sink);
    let addr = serve_layer(layer, || {
        answer(StatusCode::OK, "application/x-internal-json", &["{}"])
    })
    .await;
    let (status, headers, body) = send(addr, "text/event-stream").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream");
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("event: error"), "{text}");
    assert!(!text.contains("x-internal-json"), "{text}");
    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Outcome::UpstreamError);
    assert!(report.error.unwrap().contains("x-internal-json"));
}

// 5. Non-stream answers to streaming requests are reported.

#[tokio::test]
async fn a_streaming_request_answered_with_a_json_error_is_reported_once() {
    let (sink, mut reports) = report_channel();
    let addr = serve_layer(SseLayer::new().on_end(sink), || {
        answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/json",
            &["{\"error\":\"overloaded\"}"],
        )
    })
    .await;
    let (status, _, body) = send(addr, "text/event-stream").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        body, b"{\"error\":\"overloaded\"}",
        "passed through untouched"
    );
    let report = next_report(&mut reports).await;
    assert_eq!(report.status, Some(StatusCode::INTERNAL_SERVER_ERROR));
    assert_eq!(report.outcome, Outcome::UpstreamError);
    assert_eq!(report.framing, Framing::NotAStream);
    assert_eq!(report.bytes_out, body.len() as u64);
    assert!(reports.try_recv().is_err(), "exactly one report");
}

#[tokio::test]
async fn an_empty_429_to_a_streaming_request_is_reported() {
    let reports = Reports::default();
    let layer = SseLayer::new().on_end(reports.sink());
    let request = Request::builder()
        .header("accept", "text/event-stream")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let upstream = Response::builder()
        .status(StatusCode::TOO_MANY_REQUESTS)
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let res = support::body::serve_with(layer, request, upstream).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    // Hints pass through: an empty body says so.
    assert!(res.body().is_end_stream());
    assert_eq!(res.body().size_hint().exact(), Some(0));
    let report = reports.one();
    assert_eq!(report.status, Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(report.outcome, Outcome::UpstreamError);
    drop(res);
    assert_eq!(reports.len(), 0, "dropping the body does not report twice");
}

#[tokio::test]
async fn a_plain_request_answered_with_json_is_not_reported() {
    let reports = Reports::default();
    let layer = SseLayer::new().on_end(reports.sink());
    let res = serve(
        layer,
        response("application/json", FramesBody::data(&[b"{}"])),
    )
    .await;
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"{}");
    assert_eq!(reports.len(), 0);
}

#[cfg(feature = "metrics")]
#[test]
fn a_non_stream_answer_to_a_streaming_request_is_counted() {
    use metrics_util::debugging::DebugValue;
    use tower_sse::MetricsObserver;
    use tower_sse::metrics::names;

    let snapshot = support::metrics::recorded(false, || async {
        let layer = SseLayer::new().observer(MetricsObserver::new());
        let request = Request::builder()
            .header("accept", "text/event-stream")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let upstream = Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header("content-type", "application/json")
            .body(FramesBody::data(&[b"{\"error\":1}"]))
            .unwrap();
        let res = support::body::serve_with(layer, request, upstream).await;
        collect(res.into_body()).await;
    });
    let ended = snapshot
        .into_iter()
        .find(|(key, ..)| {
            key.key().name() == names::STREAMS_ENDED
                && key
                    .key()
                    .labels()
                    .any(|l| l.key() == "outcome" && l.value() == "upstream_error")
        })
        .map(|(.., value)| value);
    assert_eq!(ended, Some(DebugValue::Counter(1)));
}

// 11. A busy upstream cannot starve the runtime.

/// An upstream that has a frame ready 10,000 times over: comment lines.
struct Busy {
    polls: Arc<AtomicUsize>,
}

const BUSY_FRAMES: usize = 10_000;

impl Body for Busy {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.polls.fetch_add(1, Ordering::Relaxed) >= BUSY_FRAMES {
            return Poll::Pending;
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b": busy\n")))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[tokio::test]
async fn an_upstream_whose_frames_complete_nothing_lets_the_task_yield() {
    let polls = Arc::new(AtomicUsize::new(0));
    let layer = SseLayer::new().forward_comments(false);
    let upstream = Busy {
        polls: polls.clone(),
    };
    let mut body = serve(layer, response("text/event-stream", upstream))
        .await
        .into_body();
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    // Without a budget, this one poll reads every frame there is.
    let first = Pin::new(&mut body).poll_frame(&mut cx);
    assert!(first.is_pending());
    let read = polls.load(Ordering::Relaxed);
    assert!(read > 0 && read <= 64, "{read} frames in one poll");
}

// Deadlines cover the upload (a stalled request body).

#[tokio::test(start_paused = true)]
async fn a_stalled_upload_gets_a_408_is_reported_and_frees_its_permit() {
    use tower::ServiceBuilder;
    use tower_sse::{IncludeUsageLayer, StreamLimitLayer};

    let reports = Reports::default();
    let sse = SseLayer::new()
        .first_event_timeout(Duration::from_secs(5))
        .on_end(reports.sink());
    let limit = StreamLimitLayer::new(1);
    let open = limit.counter();
    let called = Arc::new(AtomicUsize::new(0));
    let inner_called = called.clone();
    let service = ServiceBuilder::new()
        .layer(limit)
        .layer(IncludeUsageLayer::new().upload_timeout(sse.request_deadline().unwrap()))
        .layer(sse)
        .service(tower::service_fn(move |_req: Request<_>| {
            inner_called.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Ok::<_, Infallible>(response(
                "text/event-stream",
                http_body_util::Empty::<Bytes>::new(),
            )))
        }));

    // Half a body, then nothing.
    let (tx, body) = support::body::channel();
    tx.send(Ok(Frame::data(Bytes::from_static(
        b"{\"model\":\"m\",\"stre",
    ))))
    .unwrap();
    let request = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let started = tokio::time::Instant::now();
    let response = tower::ServiceExt::oneshot(service, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(5),
        "the stream's deadline"
    );
    assert_eq!(called.load(Ordering::Relaxed), 0, "never forwarded");
    assert_eq!(open.get(), 0, "the permit is released");
    let report = reports.one();
    assert_eq!(report.outcome, Outcome::RequestTimeout);
    drop(tx);
}

// 4. Compressed streams and bodiless answers (issue 31).

#[tokio::test]
async fn an_early_response_refuses_a_compressed_stream_with_an_error_event() {
    let (sink, mut reports) = report_channel();
    let layer = SseLayer::new().early_response(true).on_end(sink);
    let addr = serve_layer(layer, || {
        let mut response = answer(StatusCode::OK, "text/event-stream", &["\x1f\u{8b}gz"]);
        response
            .headers_mut()
            .insert("content-encoding", "gzip".parse().unwrap());
        response
    })
    .await;
    // The head went out as plain SSE before the upstream answered: gzip cannot follow it.
    let (status, headers, body) = send(addr, "text/event-stream").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get("content-encoding").is_none());
    let text = String::from_utf8(body).unwrap();
    assert!(text.starts_with("event: error\n"), "{text}");
    assert!(text.contains("upstream_error"), "{text}");
    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Outcome::UpstreamError);
    assert_eq!(report.framing, Framing::Encoded);
}

#[tokio::test(start_paused = true)]
async fn a_compressed_stream_past_its_deadline_ends_without_added_bytes() {
    let reports = Reports::default();
    let layer = SseLayer::new()
        .keep_alive(tower_sse::KeepAliveConfig::new().interval(Duration::from_secs(1)))
        .total_timeout(Duration::from_secs(10))
        .on_end(reports.sink());
    // One compressed frame, then silence past the deadline (keep-alives would be due).
    let frames = futures_util::StreamExt::chain(
        futures_util::stream::iter([Ok::<_, Infallible>(Frame::data(Bytes::from_static(
            b"\x1f\x8bpart",
        )))]),
        futures_util::stream::pending(),
    );
    let mut upstream = response("text/event-stream", http_body_util::StreamBody::new(frames));
    upstream
        .headers_mut()
        .insert("content-encoding", "br".parse().unwrap());
    let res = serve(layer, upstream).await;
    assert_eq!(res.headers()["content-encoding"], "br");
    // Only the upstream's bytes: no keep-alive or error event inside the compressed body.
    assert_eq!(collect(res.into_body()).await.data, b"\x1f\x8bpart");
    let report = reports.one();
    assert_eq!(report.outcome, Outcome::DeadlineExceeded);
    assert_eq!(report.framing, Framing::Encoded);
    assert_eq!(report.keep_alives, 0);
}

#[tokio::test]
async fn an_ndjson_client_gets_a_failure_as_a_json_line() {
    let (sink, mut reports) = report_channel();
    let layer = SseLayer::new()
        .json_lines(true)
        .max_event_size(16)
        .keep_alive(tower_sse::KeepAliveConfig::new())
        .on_end(sink);
    let addr = serve_layer(layer, || {
        answer(
            StatusCode::OK,
            "application/x-ndjson",
            &["{\"a\":1}\n", "{\"far_too_long\":\"xxxxxxxxxxxxxxxx\"}\n"],
        )
    })
    .await;
    let (_, headers, body) = send(addr, "application/x-ndjson").await;
    assert_eq!(headers["content-type"], "application/x-ndjson");
    let text = String::from_utf8(body).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["a"], 1);
    assert_eq!(lines[1]["error"]["type"], "event_too_large");
    assert_eq!(
        next_report(&mut reports).await.outcome,
        Outcome::EventTooLarge
    );
}
