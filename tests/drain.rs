//! Draining the upstream after a client disconnect (feature `drain`): the report still goes
//! out exactly once when the runtime shuts down mid-drain, and the drain limit holds against
//! an upstream that never pauses.

#![cfg(feature = "drain")]

mod support;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use support::body::{Reports, channel, next_text, response, serve};
use tower_sse::{Outcome, SseLayer};

#[test]
fn report_survives_a_runtime_shutdown_during_a_drain() {
    let reports = Reports::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (tx, upstream) = channel();
    runtime.block_on(async {
        let layer = SseLayer::new()
            .drain_on_disconnect(Duration::from_secs(3600))
            .on_end(reports.sink());
        let mut body = serve(layer, response("text/event-stream", upstream))
            .await
            .into_body();
        tx.send(Ok(Frame::data(Bytes::from_static(b"data: one\n\n"))))
            .unwrap();
        next_text(&mut body).await.unwrap();
        drop(body); // the client leaves; the drain task starts and waits on the upstream
    });
    assert_eq!(reports.len(), 0, "still draining");
    drop(runtime); // drops the drain task
    let report = reports.one();
    assert_eq!(report.outcome, Outcome::ClientDisconnected);
    assert_eq!(report.events, 1);
    drop(tx);
}

/// An upstream that always has another event ready.
struct Firehose;

impl Body for Firehose {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"data: x\n\n")))))
    }
}

#[tokio::test]
async fn drain_limit_holds_against_an_upstream_that_never_pauses() {
    let reports = Reports::default();
    let layer = SseLayer::new()
        .drain_on_disconnect(Duration::from_millis(20))
        .on_end(reports.sink());
    let mut body = serve(layer, response("text/event-stream", Firehose))
        .await
        .into_body();
    next_text(&mut body).await.unwrap();
    drop(body);
    // Wait for the drain task to give up (a bounded wait, not a timing assertion).
    for _ in 0..1000 {
        if reports.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let report = reports.one();
    assert_eq!(report.outcome, Outcome::ClientDisconnected);
    assert!(report.events > 1, "the drain read on");
}
