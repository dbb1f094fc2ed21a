//! Keep-alives and deadlines, on paused tokio time (never real sleeps).

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty};
use support::body::{Reports, channel, collect, next_text, response, serve, serve_with};
use tokio::time::{Instant, advance, sleep};
use tower_sse::request::StreamingRequest;
use tower_sse::{KeepAliveConfig, Outcome, SseLayer};

fn data(s: &'static str) -> Result<Frame<Bytes>, support::body::UpstreamFailed> {
    Ok(Frame::data(Bytes::from_static(s.as_bytes())))
}

fn streaming_request() -> Request<Empty<Bytes>> {
    let mut request = Request::new(Empty::new());
    request.extensions_mut().insert(StreamingRequest);
    request
}

#[tokio::test(start_paused = true)]
async fn keep_alive_is_sent_after_the_interval_of_silence() {
    let reports = Reports::default();
    let layer = SseLayer::new()
        .keep_alive(KeepAliveConfig::new().interval(Duration::from_secs(15)))
        .on_end(reports.sink());
    let (tx, upstream) = channel();
    let mut body = serve(layer, response("text/event-stream", upstream))
        .await
        .into_body();

    let start = Instant::now();
    assert_eq!(
        next_text(&mut body).await.as_deref(),
        Some(": keep-alive\n\n")
    );
    assert_eq!(start.elapsed(), Duration::from_secs(15));

    // An event resets the silence.
    advance(Duration::from_secs(10)).await;
    tx.send(data("data: a\n\n")).unwrap();
    assert_eq!(next_text(&mut body).await.as_deref(), Some("data: a\n\n"));
    let after_event = Instant::now();
    assert_eq!(
        next_text(&mut body).await.as_deref(),
        Some(": keep-alive\n\n")
    );
    assert_eq!(after_event.elapsed(), Duration::from_secs(15));

    drop(tx);
    assert!(body.frame().await.is_none());
    let report = reports.one();
    assert_eq!(report.keep_alives, 2);
    assert_eq!(report.outcome, Outcome::Completed);
}

#[tokio::test(start_paused = true)]
async fn keep_alive_never_lands_inside_an_event() {
    let layer = SseLayer::new().keep_alive(
        KeepAliveConfig::new()
            .interval(Duration::from_secs(1))
            .text("ping"),
    );
    let (tx, upstream) = channel();
    let body = serve(layer, response("text/event-stream", upstream))
        .await
        .into_body();
    let driver = tokio::spawn(async move {
        tx.send(data("data: hal")).unwrap();
        sleep(Duration::from_millis(3500)).await;
        tx.send(data("f\n\n")).unwrap();
    });
    let out = collect(body).await;
    driver.await.unwrap();
    // Three keep-alives while half an event was held back, then the whole event.
    assert_eq!(out.text(), ": ping\n\n: ping\n\n: ping\n\ndata: half\n\n");
    let mut decoder = tower_sse::sse::Decoder::new();
    decoder.push(Bytes::from(out.data));
    let events: Vec<_> = decoder
        .filter_map(|i| match i.unwrap() {
            tower_sse::sse::Item::Event(e) => Some(e.data().into_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(events, vec!["half"]);
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_ends_the_stream_with_an_error_event() {
    let reports = Reports::default();
    let layer = SseLayer::new()
        .keep_alive(KeepAliveConfig::new().interval(Duration::from_secs(5)))
        .idle_timeout(Duration::from_secs(12))
        .on_end(reports.sink());
    let (tx, upstream) = channel();
    let body = serve(layer, response("text/event-stream", upstream))
        .await
        .into_body();
    tx.send(data("data: a\n\n")).unwrap();
    let started = Instant::now();
    let out = collect(body).await;
    // The event, two keep-alives (which do not count as upstream activity), then the error.
    assert_eq!(
        out.text(),
        "data: a\n\n: keep-alive\n\n: keep-alive\n\nevent: error\ndata: {\"error\":{\"type\":\"idle_timeout\",\"message\":\"no upstream event for 12s\"}}\n\n"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(12));
    assert!(tx.is_closed(), "the upstream body was dropped");
    let report = reports.one();
    assert_eq!(report.outcome, Outcome::IdleTimeout);
    assert_eq!(report.keep_alives, 2);
}

#[tokio::test(start_paused = true)]
async fn upstream_pings_count_as_activity_for_the_idle_timeout() {
    let reports = Reports::default();
    let layer = SseLayer::new()
        .idle_timeout(Duration::from_secs(10))
        .on_end(reports.sink());
    let (tx, upstream) = channel();
    let body = serve(layer, response("text/event-stream", upstream))
        .await
        .into_body();
    let driver = tokio::spawn(async move {
        for _ in 0..3 {
            sleep(Duration::from_secs(8)).await;
            tx.send(data(": ping\n\n")).unwrap();
        }
        tx.send(data("data: done\n\n")).unwrap();
    });
    let out = collect(body).await;
    driver.await.unwrap();
    assert_eq!(out.text(), ": ping\n\n: ping\n\n: ping\n\ndata: done\n\n");
    assert_eq!(reports.one().outcome, Outcome::Completed);
}

#[tokio::test(start_paused = true)]
async fn first_event_timeout_waits_for_content_not_for_the_first_byte() {
    let reports = Reports::default();
    let layer = SseLayer::new()
        .first_event_timeout(Duration::from_secs(30))
        .idle_timeout(Duration::from_secs(5))
        .on_end(reports.sink());
    let (tx, upstream) = channel();
    let mut upstream_response = response("text/event-stream", upstream);
    *upstream_response.status_mut() = StatusCode::OK;
    let request = Request::post("/v1/chat/completions")
        .body(Empty::new())
        .unwrap();
    let body = serve_with(layer, request, upstream_response)
        .await
        .into_body();
    // A role-only chunk is not content: the first-event timeout keeps running, and the idle
    // timeout (5 s) does not start before content.
    tx.send(data(
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
    ))
    .unwrap();
    let started = Instant::now();
    let out = collect(body).await;
    assert!(out.text().ends_with("\"type\":\"first_event_timeout\",\"message\":\"no content from the upstream within 30s\"}}\n\n"), "{}", out.text());
    assert_eq!(started.elapsed(), Duration::from_secs(30));
    let report = reports.one();
    assert_eq!(report.outcome, Outcome::FirstEventTimeout);
    assert_eq!(report.events, 1);
    assert_eq!(report.content_events, 0);
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn total_timeout_cuts_even_a_busy_stream() {
    let reports = Reports::default();
    let layer = SseLayer::new()
        .total_timeout(Duration::from_secs(3))
        .on_end(reports.sink());
    let (tx, upstream) = channel();
    let body = serve(layer, response("text/event-stream", upstream))
        .await
        .into_body();
    let driver = tokio::spawn(async move {
        while tx.send(data("data: tick\n\n")).is_ok() {
            sleep(Duration::from_millis(500)).await;
        }
    });
    let out = collect(body).await;
    driver.await.unwrap();
    assert_eq!(out.text().matches("data: tick").count(), 6);
    assert!(out.text().contains("deadline_exceeded"));
    assert_eq!(reports.one().outcome, Outcome::DeadlineExceeded);
}

#[tokio::test(start_paused = true)]
async fn early_response_sends_keep_alives_before_the_upstream_answers() {
    let reports = Reports::default();
    let layer = SseLayer::new()
        .early_response(true)
        .keep_alive(KeepAliveConfig::new().interval(Duration::from_secs(10)))
        .on_end(reports.sink());
    let (tx, upstream) = channel();
    let mut slot = Some(response("text/event-stream", upstream));
    let service = tower::Layer::layer(
        &layer,
        tower::service_fn(
            move |_req: Request<tower_sse::request::UploadBody<Empty<Bytes>>>| {
                let upstream_response = slot.take().expect("called once");
                async move {
                    // A reasoning model: 25 s before the response head.
                    sleep(Duration::from_secs(25)).await;
                    Ok::<_, std::convert::Infallible>(upstream_response)
                }
            },
        ),
    );
    let started = Instant::now();
    let response = tower::ServiceExt::oneshot(service, streaming_request())
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO, "answered at once");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[http::header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut body = response.into_body();
    assert_eq!(
        next_text(&mut body).await.as_deref(),
        Some(": keep-alive\n\n")
    );
    assert_eq!(
        next_text(&mut body).await.as_deref(),
        Some(": keep-alive\n\n")
    );
    assert_eq!(started.elapsed(), Duration::from_secs(20));
    tx.send(data("data: hello\n\n")).unwrap();
    drop(tx);
    assert_eq!(
        next_text(&mut body).await.as_deref(),
        Some("data: hello\n\n")
    );
    assert!(body.frame().await.is_none());
    let report = reports.one();
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(report.keep_alives, 2);
    assert_eq!(
        report.response_at.unwrap() - report.started_at,
        Duration::from_secs(25)
    );
}

#[tokio::test(start_paused = true)]
async fn early_response_turns_an_upstream_failure_into_an_error_event() {
    let reports = Reports::default();
    let layer = SseLayer::new().early_response(true).on_end(reports.sink());
    let service = tower::Layer::layer(
        &layer,
        tower::service_fn(
            |_req: Request<tower_sse::request::UploadBody<Empty<Bytes>>>| async {
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .status(StatusCode::TOO_MANY_REQUESTS)
                        .header("content-type", "application/json")
                        .body(http_body_util::Full::new(Bytes::from_static(
                            b"{\"error\":\"slow down\"}",
                        )))
                        .unwrap(),
                )
            },
        ),
    );
    let response = tower::ServiceExt::oneshot(service, streaming_request())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let out = collect(response.into_body()).await;
    assert!(out.text().starts_with("event: error\n"));
    assert!(
        out.text().contains("429 Too Many Requests"),
        "{}",
        out.text()
    );
    let report = reports.one();
    assert_eq!(report.outcome, Outcome::UpstreamError);
    assert_eq!(report.status, Some(StatusCode::TOO_MANY_REQUESTS));
}

#[tokio::test(start_paused = true)]
async fn slow_response_head_of_a_streaming_request_gets_a_504() {
    let reports = Reports::default();
    let layer = SseLayer::new()
        .first_event_timeout(Duration::from_secs(10))
        .on_end(reports.sink());
    let service = tower::Layer::layer(
        &layer,
        tower::service_fn(
            |_req: Request<tower_sse::request::UploadBody<Empty<Bytes>>>| async {
                sleep(Duration::from_secs(60)).await;
                Ok::<_, std::convert::Infallible>(response(
                    "text/event-stream",
                    Empty::<Bytes>::new(),
                ))
            },
        ),
    );
    let started = Instant::now();
    let response = tower::ServiceExt::oneshot(service, streaming_request())
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    let body = response.into_body();
    assert!(!body.is_end_stream());
    assert_eq!(
        collect(body).await.text(),
        "{\"error\":{\"type\":\"first_event_timeout\",\"message\":\"the upstream did not answer in time\"}}"
    );
    let report = reports.one();
    assert_eq!(report.outcome, Outcome::FirstEventTimeout);
    assert_eq!(report.status, None, "the upstream never answered");
    assert_eq!(report.bytes_out, 88, "the 504 body the client got");
}

#[tokio::test(start_paused = true)]
async fn streaming_request_whose_client_leaves_before_the_head_is_reported() {
    let reports = Reports::default();
    let layer = SseLayer::new().on_end(reports.sink());
    let service = tower::Layer::layer(
        &layer,
        tower::service_fn(
            |_req: Request<tower_sse::request::UploadBody<Empty<Bytes>>>| async {
                sleep(Duration::from_secs(60)).await;
                Ok::<_, std::convert::Infallible>(response(
                    "text/event-stream",
                    Empty::<Bytes>::new(),
                ))
            },
        ),
    );
    let call = tower::ServiceExt::oneshot(service, streaming_request());
    // The client gives up after 5 s, before any head.
    assert!(
        tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .is_err()
    );
    let report = reports.one();
    assert_eq!(report.outcome, Outcome::ClientDisconnected);
    assert_eq!(report.status, None);
}

#[tokio::test(start_paused = true)]
async fn streaming_request_whose_inner_service_fails_is_reported() {
    let reports = Reports::default();
    let layer = SseLayer::new().on_end(reports.sink());
    let service = tower::Layer::layer(
        &layer,
        tower::service_fn(
            |_req: Request<tower_sse::request::UploadBody<Empty<Bytes>>>| async {
                Err::<http::Response<Empty<Bytes>>, _>(std::io::Error::other("no route"))
            },
        ),
    );
    assert!(
        tower::ServiceExt::oneshot(service, streaming_request())
            .await
            .is_err()
    );
    assert_eq!(reports.one().outcome, Outcome::UpstreamError);

    // A request that is not a stream makes no report either way.
    let reports = Reports::default();
    let service = tower::Layer::layer(
        &SseLayer::new().on_end(reports.sink()),
        tower::service_fn(
            |_req: Request<tower_sse::request::UploadBody<Empty<Bytes>>>| async {
                Err::<http::Response<Empty<Bytes>>, _>(std::io::Error::other("no route"))
            },
        ),
    );
    assert!(
        tower::ServiceExt::oneshot(service, Request::new(Empty::new()))
            .await
            .is_err()
    );
    assert_eq!(reports.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn duration_max_means_never_not_a_panic() {
    let reports = Reports::default();
    let layer = SseLayer::new()
        .keep_alive(KeepAliveConfig::new().interval(Duration::MAX))
        .first_event_timeout(Duration::MAX)
        .idle_timeout(Duration::MAX)
        .total_timeout(Duration::MAX)
        .on_end(reports.sink());
    let (tx, upstream) = channel();
    let mut slot = Some(response("text/event-stream", upstream));
    let service = tower::Layer::layer(
        &layer,
        tower::service_fn(
            move |_req: Request<tower_sse::request::UploadBody<Empty<Bytes>>>| {
                std::future::ready(Ok::<_, std::convert::Infallible>(slot.take().unwrap()))
            },
        ),
    );
    let response = tower::ServiceExt::oneshot(service, streaming_request())
        .await
        .unwrap();
    let mut body = response.into_body();
    tx.send(data("data: a\n\n")).unwrap();
    assert_eq!(next_text(&mut body).await.as_deref(), Some("data: a\n\n"));
    drop(tx);
    assert!(body.frame().await.is_none());
    assert_eq!(reports.one().outcome, Outcome::Completed);
}

#[tokio::test(start_paused = true)]
async fn non_streaming_requests_are_not_timed_while_waiting_for_their_head() {
    let layer = SseLayer::new().first_event_timeout(Duration::from_secs(10));
    let service = tower::Layer::layer(
        &layer,
        tower::service_fn(
            |_req: Request<tower_sse::request::UploadBody<Empty<Bytes>>>| async {
                sleep(Duration::from_secs(60)).await;
                Ok::<_, std::convert::Infallible>(response(
                    "application/json",
                    Empty::<Bytes>::new(),
                ))
            },
        ),
    );
    let response = tower::ServiceExt::oneshot(service, Request::new(Empty::new()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn timers_are_not_armed_when_none_is_configured() {
    let reports = Reports::default();
    let (tx, upstream) = channel();
    let body = serve(
        SseLayer::new().on_end(reports.sink()),
        response("text/event-stream", upstream),
    )
    .await
    .into_body();
    let driver = tokio::spawn(async move {
        sleep(Duration::from_secs(3600)).await;
        tx.send(data("data: late\n\n")).unwrap();
    });
    assert_eq!(collect(body).await.text(), "data: late\n\n");
    driver.await.unwrap();
    assert_eq!(reports.one().keep_alives, 0);
}
