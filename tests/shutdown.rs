//! `Shutdown`: a server that shuts down ends its open streams with the error event, and every
//! one of them is reported, once, as `ServerShutdown`.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty};
use support::body::{Reports, channel, collect, next_text, response, serve, serve_with};
use tower::ServiceExt;
use tower_sse::stream::Shutdown;
use tower_sse::{Outcome, SseLayer};

#[tokio::test]
async fn an_open_stream_ends_with_the_error_event_and_is_reported() {
    let reports = Reports::default();
    let shutdown = Shutdown::new();
    let layer = SseLayer::new()
        .shutdown(shutdown.clone())
        .on_end(reports.sink());
    let (tx, upstream) = channel();
    let mut body = serve(layer, response("text/event-stream", upstream))
        .await
        .into_body();
    tx.send(Ok(Frame::data(Bytes::from_static(b"data: one\n\n"))))
        .unwrap();
    assert_eq!(next_text(&mut body).await.unwrap(), "data: one\n\n");

    // Half an event is in flight when the server shuts down: it never reaches the client.
    tx.send(Ok(Frame::data(Bytes::from_static(b"data: ha"))))
        .unwrap();
    let waiting = tokio::spawn(async move { collect(body).await });
    tokio::task::yield_now().await;
    shutdown.end_streams();
    let rest = waiting.await.unwrap();
    let text = rest.text();
    assert!(text.starts_with("event: error\n"), "{text}");
    assert!(text.contains("server_shutdown"), "{text}");
    assert!(!text.contains("ha"), "{text}");
    let report = reports.one();
    assert_eq!(report.outcome, Outcome::ServerShutdown);
    assert_eq!(report.events, 1);
    drop(tx);
}

#[tokio::test]
async fn a_stream_that_starts_after_the_shutdown_ends_at_once() {
    let reports = Reports::default();
    let shutdown = Shutdown::new();
    shutdown.end_streams();
    let layer = SseLayer::new().shutdown(shutdown).on_end(reports.sink());
    let (_tx, upstream) = channel();
    let body = serve(layer, response("text/event-stream", upstream))
        .await
        .into_body();
    let out = collect(body).await;
    assert!(out.text().contains("server_shutdown"));
    assert_eq!(reports.one().outcome, Outcome::ServerShutdown);
}

#[tokio::test]
async fn a_busy_upstream_does_not_delay_the_end() {
    let reports = Reports::default();
    let shutdown = Shutdown::new();
    let layer = SseLayer::new()
        .shutdown(shutdown.clone())
        .on_end(reports.sink());
    let (tx, upstream) = channel();
    let mut body = serve(layer, response("text/event-stream", upstream))
        .await
        .into_body();
    for _ in 0..1000 {
        tx.send(Ok(Frame::data(Bytes::from_static(b"data: x\n\n"))))
            .unwrap();
    }
    assert_eq!(next_text(&mut body).await.unwrap(), "data: x\n\n");
    shutdown.end_streams();
    let out = collect(body).await;
    // What was already decoded goes out, then the end: not the thousand events.
    assert!(out.text().matches("data: x").count() < 1000);
    assert!(out.text().ends_with("\n\n") && out.text().contains("server_shutdown"));
    assert_eq!(reports.one().outcome, Outcome::ServerShutdown);
}

#[tokio::test(start_paused = true)]
async fn a_streaming_request_waiting_for_its_head_gets_a_503() {
    let reports = Reports::default();
    let shutdown = Shutdown::new();
    let layer = SseLayer::new()
        .shutdown(shutdown.clone())
        .on_end(reports.sink());
    let service = tower::Layer::layer(
        &layer,
        tower::service_fn(
            |_req: Request<tower_sse::request::UploadBody<Empty<Bytes>>>| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, std::convert::Infallible>(response(
                    "text/event-stream",
                    Empty::<Bytes>::new(),
                ))
            },
        ),
    );
    let request = Request::builder()
        .header("accept", "text/event-stream")
        .body(Empty::new())
        .unwrap();
    let pending = tokio::spawn(service.oneshot(request));
    tokio::time::sleep(Duration::from_secs(1)).await;
    shutdown.end_streams();
    let response = pending.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(
        std::str::from_utf8(&body)
            .unwrap()
            .contains("server_shutdown")
    );
    assert_eq!(reports.one().outcome, Outcome::ServerShutdown);
}

#[tokio::test]
async fn plain_responses_are_not_touched() {
    let shutdown = Shutdown::new();
    shutdown.end_streams();
    let layer = SseLayer::new().shutdown(shutdown);
    let res = serve_with(
        layer,
        Request::new(Empty::new()),
        response(
            "application/json",
            http_body_util::Full::new(Bytes::from_static(b"{}")),
        ),
    )
    .await;
    assert!(!res.body().is_end_stream());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"{}");
}
