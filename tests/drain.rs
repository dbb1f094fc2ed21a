//! Draining the upstream after a client disconnect (feature `drain`): the report still goes
//! out exactly once when the runtime shuts down mid-drain, the drain limit holds against
//! an upstream that never pauses, and a drained stream keeps its `StreamLimitLayer` permit
//! until the drain ends.

#![cfg(feature = "drain")]

mod support;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body as AxumBody;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body::{Body, Frame};
use http_body_util::Empty;
use support::body::{ChannelBody, Item, Reports, channel, next_text, response, serve};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower::{ServiceBuilder, ServiceExt};
use tower_sse::request::UploadBody;
use tower_sse::sse::EventRef;
use tower_sse::{EventContext, Observer, Outcome, SseLayer, StreamLimitLayer};

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

// --- the stream limit holds through a drain ---

fn data(bytes: &'static str) -> Item {
    Ok(Frame::data(Bytes::from_static(bytes.as_bytes())))
}

/// Guard against hanging forever (not a timing assertion).
async fn guard<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .expect("hung for 30 s")
}

/// Yield until `done` holds (bounded by [`guard`]): the drain task runs on this runtime.
async fn until(mut done: impl FnMut() -> bool) {
    guard(async {
        while !done() {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// A service whose every stream is an upstream the test feeds: its sender comes out of
/// `upstreams`.
fn upstream_service() -> (
    impl tower::Service<
        Request<UploadBody<Empty<Bytes>>>,
        Response = http::Response<ChannelBody>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static,
    mpsc::UnboundedReceiver<mpsc::UnboundedSender<Item>>,
) {
    let (upstreams_tx, upstreams) = mpsc::unbounded_channel();
    let service = tower::service_fn(move |_: Request<UploadBody<Empty<Bytes>>>| {
        let (upstream, body) = channel();
        upstreams_tx.send(upstream).unwrap();
        std::future::ready(Ok::<_, Infallible>(response("text/event-stream", body)))
    });
    (service, upstreams)
}

#[tokio::test]
async fn a_drained_stream_keeps_its_limit_permit_until_the_drain_ends() {
    let reports = Reports::default();
    let limit = StreamLimitLayer::new(1);
    let open = limit.counter();
    let (upstream, mut upstreams) = upstream_service();
    // The documented order: the limit outside the stream layer.
    let service = ServiceBuilder::new()
        .layer(limit)
        .layer(
            SseLayer::new()
                .drain_on_disconnect(Duration::from_secs(3600))
                .on_end(reports.sink()),
        )
        .service(upstream);

    let res = service
        .clone()
        .oneshot(Request::new(Empty::new()))
        .await
        .unwrap();
    let up = upstreams.recv().await.unwrap();
    up.send(data("data: one\n\n")).unwrap();
    let mut body = res.into_body();
    assert_eq!(next_text(&mut body).await.unwrap(), "data: one\n\n");
    drop(body); // the client leaves; the drain task reads on

    assert_eq!(open.get(), 1, "the drain holds the permit");
    let rejected = service
        .clone()
        .oneshot(Request::new(Empty::new()))
        .await
        .unwrap();
    assert_eq!(rejected.status(), StatusCode::SERVICE_UNAVAILABLE);
    up.send(data("data: two\n\n")).unwrap();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(reports.len(), 0, "still draining");
    assert_eq!(open.get(), 1, "still draining");

    drop(up); // the upstream ends, and with it the drain
    until(|| reports.len() == 1).await;
    // Released before the report went out, exactly once.
    assert_eq!(open.get(), 0);
    let report = reports.one();
    assert_eq!(report.outcome, Outcome::ClientDisconnected);
    assert_eq!(report.events, 2, "the drain read the upstream to its end");

    let admitted = service.oneshot(Request::new(Empty::new())).await.unwrap();
    assert_eq!(admitted.status(), StatusCode::OK);
    assert!(admitted.body().holds_permit());
    assert_eq!(open.get(), 1);
    drop(upstreams.recv().await.unwrap()); // an empty stream
    let mut body = admitted.into_body();
    assert!(next_text(&mut body).await.is_none());
    assert_eq!(open.get(), 0, "a normal end releases at once");
    assert_eq!(reports.one().outcome, Outcome::Completed);
}

/// The other order (the stream layer outside the limit) holds the permit through a drain
/// too: the drained upstream body is the limit's. Documents `limit`'s "Layer order".
#[tokio::test]
async fn with_the_stream_layer_outside_the_drain_holds_the_permit_too() {
    let reports = Reports::default();
    let limit = StreamLimitLayer::new(1);
    let open = limit.counter();
    let (upstream, mut upstreams) = upstream_service();
    let service = ServiceBuilder::new()
        .layer(
            SseLayer::new()
                .drain_on_disconnect(Duration::from_secs(3600))
                .on_end(reports.sink()),
        )
        .layer(limit)
        .service(upstream);

    let res = service
        .clone()
        .oneshot(Request::new(Empty::new()))
        .await
        .unwrap();
    let up = upstreams.recv().await.unwrap();
    up.send(data("data: one\n\n")).unwrap();
    let mut body = res.into_body();
    next_text(&mut body).await.unwrap();
    drop(body);
    assert_eq!(open.get(), 1, "the drain holds the permit");
    // The limit's 503 reaches the stream layer as a response that is not a stream.
    let rejected = service
        .clone()
        .oneshot(Request::new(Empty::new()))
        .await
        .unwrap();
    assert_eq!(rejected.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(!rejected.body().is_stream());

    drop(up);
    until(|| reports.len() == 1).await;
    assert_eq!(open.get(), 0);
    assert_eq!(reports.one().outcome, Outcome::ClientDisconnected);
}

/// Tells the test that the drain started: it sees an event no client receives.
#[derive(Clone)]
struct DrainStarted(mpsc::UnboundedSender<()>);

impl Observer for DrainStarted {
    fn on_event(&mut self, _: &EventRef<'_>, cx: &mut EventContext<'_>) {
        if !cx.is_delivered() {
            let _ = self.0.send(());
        }
    }
}

/// Over HTTP, limit 1: a client that leaves while its upstream still generates frees no room
/// until the drain ends; then the next request is served.
#[tokio::test]
async fn over_http_a_client_that_leaves_frees_no_room_while_its_upstream_is_drained() {
    let limit = StreamLimitLayer::new(1);
    let open = limit.counter();
    let (upstreams_tx, mut upstreams) = mpsc::unbounded_channel::<mpsc::UnboundedSender<Item>>();
    let (drain_tx, mut drain_started) = mpsc::unbounded_channel();
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let stream_layer = SseLayer::new()
        .drain_on_disconnect(Duration::from_secs(3600))
        .observer(DrainStarted(drain_tx))
        .on_end(move |report: tower_sse::StreamReport| {
            let _ = reports_tx.send(report);
        });
    let app = Router::new()
        .route(
            "/sse",
            get(move || {
                let upstreams_tx = upstreams_tx.clone();
                async move {
                    let (upstream, body) = channel();
                    upstreams_tx.send(upstream).unwrap();
                    response("text/event-stream", AxumBody::new(body))
                }
            }),
        )
        .layer(ServiceBuilder::new().layer(limit).layer(stream_layer));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/sse");

    let mut first = client.get(&url).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let up = upstreams.recv().await.unwrap();
    up.send(data("data: one\n\n")).unwrap();
    assert_eq!(&first.chunk().await.unwrap().unwrap()[..], b"data: one\n\n");

    // The client leaves mid-stream; the upstream goes on generating. The server drops the
    // body when it notices, and the drain starts reading.
    drop(first);
    guard(async {
        loop {
            up.send(data("data: more\n\n")).unwrap();
            tokio::select! {
                Some(()) = drain_started.recv() => break,
                () = tokio::task::yield_now() => {}
            }
        }
    })
    .await;

    assert_eq!(open.get(), 1, "a drained stream counts as open");
    let second = client.get(&url).send().await.unwrap();
    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    second.bytes().await.unwrap();
    assert_eq!(open.get(), 1);

    drop(up); // the upstream ends: the drain ends
    let report = guard(reports.recv()).await.unwrap();
    assert_eq!(report.outcome, Outcome::ClientDisconnected);
    assert_eq!(open.get(), 0, "released before the report");

    let mut third = client.get(&url).send().await.unwrap();
    assert_eq!(third.status(), StatusCode::OK);
    let up = upstreams.recv().await.unwrap();
    up.send(data("data: bye\n\n")).unwrap();
    drop(up);
    assert_eq!(&third.chunk().await.unwrap().unwrap()[..], b"data: bye\n\n");
    assert!(third.chunk().await.unwrap().is_none());
    let report = guard(reports.recv()).await.unwrap();
    assert_eq!(report.outcome, Outcome::Completed);
}

/// The limit's own decisions stand: a response its predicate says is no stream gives its
/// permit back at once, even when the stream layer inside claimed it for a drain.
#[tokio::test]
async fn a_response_the_limit_does_not_count_is_not_held_by_a_drain() {
    let limit = StreamLimitLayer::new(1).stream_predicate(
        |_: &http::Response<tower_sse::stream::SseBody<ChannelBody, (), ()>>| false,
    );
    let open = limit.counter();
    let (upstream, mut upstreams) = upstream_service();
    let service = ServiceBuilder::new()
        .layer(limit)
        .layer(SseLayer::new().drain_on_disconnect(Duration::from_secs(3600)))
        .service(upstream);
    let res = service
        .clone()
        .oneshot(Request::new(Empty::new()))
        .await
        .unwrap();
    assert!(!res.body().holds_permit());
    let _up = upstreams.recv().await.unwrap();
    assert_eq!(open.get(), 0);
    drop(res); // a drain starts, and holds nothing
    assert_eq!(open.get(), 0);
}

/// What the limit leaves in the request for a drain is weak: a service that keeps its
/// requests (no stream layer to claim it) keeps no permit.
#[tokio::test]
async fn a_service_that_keeps_its_requests_keeps_no_permit() {
    let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let limit = StreamLimitLayer::new(1);
    let open = limit.counter();
    let keeper = kept.clone();
    let service = ServiceBuilder::new()
        .layer(limit)
        .service(tower::service_fn(move |request: Request<()>| {
            keeper.lock().unwrap().push(request);
            let (_, body) = channel();
            std::future::ready(Ok::<_, Infallible>(response("text/event-stream", body)))
        }));
    let res = service.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(open.get(), 1);
    drop(res);
    assert_eq!(open.get(), 0);
    let res = service.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(kept.lock().unwrap().len(), 2);
}
