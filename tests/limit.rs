//! The stream limit: permits that live as long as the body, rejection with `503` and
//! `Retry-After`, backpressure in wait mode, and no leaked permit on any path.

mod support;

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::Router;
use axum::body::Body as AxumBody;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Full};
use proptest::prelude::*;
use support::body::{
    ChannelBody, FramesBody, Item, Reports, UpstreamFailed, channel, collect, response,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower::{Layer, Service, ServiceExt};
use tower_sse::limit::{StreamLimit, StreamLimitBody, WhenFull};
use tower_sse::stream::SseBody;
use tower_sse::{Outcome, SseLayer, StreamLimitLayer};

async fn serve_axum(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn data(bytes: &'static str) -> Item {
    Ok(Frame::data(Bytes::from_static(bytes.as_bytes())))
}

/// Guard against hanging forever (not a timing assertion).
async fn guard<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .expect("hung for 30 s")
}

#[tokio::test]
async fn third_stream_is_rejected_until_one_ends_or_its_client_leaves() {
    let limit = StreamLimitLayer::new(2);
    let open = limit.counter();
    let (upstreams_tx, mut upstreams) = mpsc::unbounded_channel::<mpsc::UnboundedSender<Item>>();
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
        .route("/plain", get(|| async { "not a stream" }))
        .layer(limit);
    let addr = serve_axum(app).await;
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/sse");

    // Plain responses give their permit back before they are returned.
    let plain = client
        .get(format!("http://{addr}/plain"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.text().await.unwrap(), "not a stream");
    assert_eq!(open.get(), 0);

    let mut first = client.get(&url).send().await.unwrap();
    let up1 = upstreams.recv().await.unwrap();
    let second = client.get(&url).send().await.unwrap();
    let up2 = upstreams.recv().await.unwrap();
    assert_eq!(
        (first.status(), second.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    assert_eq!(open.get(), 2);

    let third = client.get(&url).send().await.unwrap();
    assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(third.headers()["retry-after"], "1");
    assert_eq!(third.headers()["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&third.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"]["type"], "too_many_streams");
    assert_eq!(open.get(), 2);
    assert_eq!(open.rejected(), 1, "rejections are counted");

    // The first stream ends: once its client read the end, a new stream is admitted.
    up1.send(data("data: bye\n\n")).unwrap();
    drop(up1);
    let mut got = Vec::new();
    while let Some(chunk) = first.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, b"data: bye\n\n");
    assert_eq!(open.get(), 1);
    let fourth = client.get(&url).send().await.unwrap();
    assert_eq!(fourth.status(), StatusCode::OK);
    let _up4 = upstreams.recv().await.unwrap();
    assert_eq!(open.get(), 2);
    // While full, every request is rejected: the limit cannot know in advance which
    // responses will be streams.
    let rejected = client
        .get(format!("http://{addr}/plain"))
        .send()
        .await
        .unwrap();
    assert_eq!(rejected.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(open.rejected(), 2);

    // The second stream's client goes away: the server notices when it writes, drops the
    // body, and with it the permit (released before the body's own drop runs).
    drop(second);
    guard(async {
        while up2.send(data("data: anyone?\n\n")).is_ok() {
            tokio::select! {
                () = up2.closed() => break,
                () = tokio::task::yield_now() => {}
            }
        }
    })
    .await;
    assert_eq!(open.get(), 1);
    let fifth = client.get(&url).send().await.unwrap();
    assert_eq!(fifth.status(), StatusCode::OK);
    drop((fourth, fifth));
}

#[tokio::test]
async fn retry_after_and_rejection_body_are_configurable() {
    let layer = StreamLimitLayer::new(0)
        .retry_after(Duration::from_millis(2500))
        .rejection_body(
            http::HeaderValue::from_static("text/plain"),
            "busy, come back later",
        );
    let service = layer.layer(tower::service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(response("text/event-stream", Empty::<Bytes>::new()))
    }));
    let res = service.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        res.headers()["retry-after"],
        "3",
        "rounded up to whole seconds"
    );
    assert_eq!(res.headers()["content-type"], "text/plain");
    let body = res.into_body();
    assert!(body.is_rejection());
    assert_eq!(body.size_hint().exact(), Some(21));
    assert_eq!(collect(body).await.text(), "busy, come back later");
}

/// A service answering with whatever response the test puts in the request.
fn echo_service() -> impl Service<
    Request<Response<FramesBody>>,
    Response = Response<FramesBody>,
    Error = Infallible,
    Future: Send,
> + Clone {
    tower::service_fn(|request: Request<Response<FramesBody>>| async move {
        Ok::<_, Infallible>(request.into_body())
    })
}

fn stream_of(frames: Vec<Item>, exact_end: bool) -> Request<Response<FramesBody>> {
    Request::new(response(
        "text/event-stream",
        FramesBody::new(frames, exact_end),
    ))
}

#[tokio::test]
async fn permit_lives_in_the_body_and_goes_on_every_end() {
    let layer = StreamLimitLayer::new(1);
    let service = layer.layer(echo_service());

    // Ends with `None`.
    let res = service
        .clone()
        .oneshot(stream_of(vec![data("a")], false))
        .await
        .unwrap();
    let mut body = res.into_body();
    assert!(body.holds_permit());
    assert_eq!(layer.open_streams(), 1);
    body.frame().await.unwrap().unwrap();
    assert_eq!(layer.open_streams(), 1, "not at its end yet");
    assert!(body.frame().await.is_none());
    assert_eq!(layer.open_streams(), 0);

    // Ends with a frame after which the body says it is at its end (hyper stops polling).
    let res = service
        .clone()
        .oneshot(stream_of(vec![data("a")], true))
        .await
        .unwrap();
    let mut body = res.into_body();
    body.frame().await.unwrap().unwrap();
    assert!(body.is_end_stream());
    assert!(!body.holds_permit());
    assert_eq!(layer.open_streams(), 0);

    // Ends with trailers.
    let res = service
        .clone()
        .oneshot(stream_of(
            vec![Ok(Frame::trailers(http::HeaderMap::new()))],
            false,
        ))
        .await
        .unwrap();
    let mut body = res.into_body();
    assert!(body.frame().await.unwrap().unwrap().is_trailers());
    assert_eq!(layer.open_streams(), 0);

    // Fails.
    let res = service
        .clone()
        .oneshot(stream_of(vec![Err(UpstreamFailed)], false))
        .await
        .unwrap();
    let mut body = res.into_body();
    assert!(body.frame().await.unwrap().is_err());
    assert_eq!(layer.open_streams(), 0);

    // Dropped.
    let res = service
        .clone()
        .oneshot(stream_of(vec![data("a")], false))
        .await
        .unwrap();
    assert_eq!(layer.open_streams(), 1);
    drop(res);
    assert_eq!(layer.open_streams(), 0);

    // Not a stream, or already at its end: released before the response is returned.
    let plain = Request::new(response(
        "application/json",
        FramesBody::new(vec![data("{}")], false),
    ));
    let res = service.clone().oneshot(plain).await.unwrap();
    assert!(!res.body().holds_permit());
    assert_eq!(layer.open_streams(), 0);
    let res = service
        .clone()
        .oneshot(stream_of(vec![], true))
        .await
        .unwrap();
    assert!(!res.body().holds_permit());
    assert_eq!(layer.open_streams(), 0);
}

#[tokio::test]
async fn hints_pass_through() {
    let layer = StreamLimitLayer::new(1);
    let service = layer.layer(tower::service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(response(
            "text/event-stream",
            Full::new(Bytes::from_static(b"data: x\n\n")),
        ))
    }));
    let res = service.oneshot(Request::new(())).await.unwrap();
    let mut body = res.into_body();
    assert_eq!(body.size_hint().exact(), Some(9));
    assert!(!body.is_end_stream());
    body.frame().await.unwrap().unwrap();
    assert!(body.is_end_stream());
    assert_eq!(body.size_hint().exact(), Some(0));
    assert!(body.frame().await.is_none());
    assert!(body.frame().await.is_none(), "None after None");
    assert_eq!(layer.open_streams(), 0);
}

#[tokio::test]
async fn response_future_dropped_or_failed_releases() {
    let layer = StreamLimitLayer::new(1);
    let mut pending = layer.layer(tower::service_fn(|_: Request<()>| {
        std::future::pending::<Result<Response<Empty<Bytes>>, Infallible>>()
    }));
    let future = pending.call(Request::new(()));
    assert_eq!(layer.open_streams(), 1, "held while waiting for the head");
    drop(future);
    assert_eq!(layer.open_streams(), 0);

    let failing = layer.layer(tower::service_fn(|_: Request<()>| async {
        Err::<Response<Empty<Bytes>>, _>("upstream refused")
    }));
    assert!(failing.oneshot(Request::new(())).await.is_err());
    assert_eq!(layer.open_streams(), 0);
}

#[tokio::test]
async fn around_the_sse_layer_with_a_predicate_on_the_body() {
    let reports = Reports::default();
    let limit = StreamLimitLayer::new(1).stream_predicate(
        |response: &Response<SseBody<ChannelBody, (), _>>| response.body().is_stream(),
    );
    let (upstream, body) = channel();
    let mut body = Some(body);
    let service = tower::ServiceBuilder::new()
        .layer(limit.clone())
        .layer(SseLayer::new().on_end(reports.sink()))
        .service(tower::service_fn(
            move |_: Request<
                tower_sse::request::UploadBody<http_body_util::Empty<bytes::Bytes>>,
            >| {
                let body = body.take().unwrap();
                async move { Ok::<_, Infallible>(response("text/event-stream", body)) }
            },
        ));
    let res = service
        .oneshot(Request::new(http_body_util::Empty::<bytes::Bytes>::new()))
        .await
        .unwrap();
    assert!(res.body().holds_permit());
    upstream.send(data("data: one\n\n")).unwrap();
    let mut body = res.into_body();
    body.frame().await.unwrap().unwrap();
    assert_eq!(limit.open_streams(), 1);
    drop(body);
    // The permit went before the stream layer reported the disconnect.
    assert_eq!(limit.open_streams(), 0);
    assert_eq!(reports.one().outcome, Outcome::ClientDisconnected);
}

// --- wait mode ---

fn stream_service() -> impl Service<
    Request<()>,
    Response = Response<ChannelBody>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|_: Request<()>| async {
        // Never polled here: the body stays open until dropped.
        let (_, body) = channel();
        Ok::<_, Infallible>(response("text/event-stream", body))
    })
}

/// Poll `poll_ready` once.
async fn ready_now<S: Service<Request<()>>>(service: &mut S) -> Poll<Result<(), S::Error>> {
    poll_fn(|cx| Poll::Ready(service.poll_ready(cx))).await
}

#[tokio::test]
async fn wait_mode_applies_backpressure_until_a_stream_ends() {
    let layer = StreamLimitLayer::new(1).when_full(WhenFull::Wait);
    let mut first = layer.layer(stream_service());
    let mut second = first.clone();

    assert!(ready_now(&mut first).await.is_ready());
    assert_eq!(layer.open_streams(), 1, "the permit is taken in poll_ready");
    // A clone of a ready service is not ready: the permit was not copied.
    let mut clone_of_ready = first.clone();
    assert!(ready_now(&mut clone_of_ready).await.is_pending());
    drop(clone_of_ready);
    assert!(ready_now(&mut second).await.is_pending());
    assert_eq!(layer.open_streams(), 1);

    let res = first.call(Request::new(())).await.unwrap();
    assert!(res.body().holds_permit());
    assert!(ready_now(&mut second).await.is_pending());

    // A task waits on `second`; it wakes when the stream's body goes away.
    let waiter = tokio::spawn(async move {
        poll_fn(|cx| second.poll_ready(cx)).await.unwrap();
        second
    });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(
        !waiter.is_finished(),
        "still waiting while the stream is open"
    );
    drop(res);
    let mut second = guard(waiter).await.unwrap();
    assert_eq!(layer.open_streams(), 1, "now held by the ready service");
    let res = second.call(Request::new(())).await.unwrap();
    assert!(res.body().holds_permit());
    drop(res);
    assert_eq!(layer.open_streams(), 0);

    // A ready service dropped without being called gives its permit back.
    let mut third = layer.layer(stream_service());
    assert!(ready_now(&mut third).await.is_ready());
    assert_eq!(layer.open_streams(), 1);
    drop(third);
    assert_eq!(layer.open_streams(), 0);
}

#[tokio::test]
async fn wait_mode_call_without_poll_ready_rejects_instead_of_panicking() {
    let layer = StreamLimitLayer::new(1).when_full(WhenFull::Wait);
    let mut holder = layer.layer(stream_service());
    assert!(ready_now(&mut holder).await.is_ready());
    let mut other = layer.layer(stream_service());
    let res = other.call(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(layer.counter().rejected(), 1, "counted as a rejection");
    drop(holder);
    let res = other.call(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[cfg(feature = "metrics")]
#[test]
fn open_streams_gauge() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Snapshots hand out what changed since the last one: keep the running value.
    let mut value = 0.0;
    let mut gauge = || {
        let delta = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .find(|(key, ..)| key.key().name() == "tower_sse.limit.open_streams")
            .map(|(.., value)| value);
        if let Some(DebugValue::Gauge(delta)) = delta {
            value += delta.into_inner();
        }
        value
    };
    metrics::with_local_recorder(&recorder, || {
        let layer = StreamLimitLayer::new(2);
        let service = layer.layer(echo_service());
        let a = now(service.clone().oneshot(stream_of(vec![data("a")], false))).unwrap();
        let b = now(service.oneshot(stream_of(vec![data("b")], false))).unwrap();
        assert_eq!(gauge(), 2.0);
        drop(a);
        assert_eq!(gauge(), 1.0);
        drop(b);
        assert_eq!(gauge(), 0.0);
    });
}

// --- no leaks, whatever happens ---

/// Poll a future that must be ready at once.
fn now<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("not ready"),
    }
}

/// Poll once; `None` when pending.
fn poll_once<F: Future + Unpin>(future: &mut F) -> Option<F::Output> {
    match Pin::new(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

#[derive(Debug, Clone)]
enum Answer {
    /// A stream of these frames (`true`: data, `false`: an error), optionally ending exactly.
    Stream(Vec<bool>, bool),
    /// Not a stream.
    Plain,
    /// The service fails.
    Fail,
    /// The head never comes.
    Never,
}

#[derive(Debug, Clone)]
enum Op {
    Call(Answer),
    /// Poll a body (by index, modulo) for a frame.
    Poll(usize),
    /// Drop a body or a pending future.
    Drop(usize),
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        4 => (proptest::collection::vec(any::<bool>(), 0..4), any::<bool>())
            .prop_map(|(frames, exact)| Answer::Stream(frames, exact)),
        1 => Just(Answer::Plain),
        1 => Just(Answer::Fail),
        1 => Just(Answer::Never),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => answer().prop_map(Op::Call),
        3 => any::<usize>().prop_map(Op::Poll),
        1 => any::<usize>().prop_map(Op::Drop),
    ]
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

fn scripted() -> impl Service<
    Request<Answer>,
    Response = Response<FramesBody>,
    Error = &'static str,
    Future = BoxFuture<Result<Response<FramesBody>, &'static str>>,
> + Clone {
    tower::service_fn(|request: Request<Answer>| -> BoxFuture<_> {
        match request.into_body() {
            Answer::Stream(frames, exact) => {
                let frames = frames
                    .into_iter()
                    .map(|ok| {
                        if ok {
                            data("data: x\n\n")
                        } else {
                            Err(UpstreamFailed)
                        }
                    })
                    .collect();
                Box::pin(std::future::ready(Ok(response(
                    "text/event-stream",
                    FramesBody::new(frames, exact),
                ))))
            }
            Answer::Plain => Box::pin(std::future::ready(Ok(response(
                "application/json",
                FramesBody::new(vec![data("{}")], false),
            )))),
            Answer::Fail => Box::pin(std::future::ready(Err("refused"))),
            Answer::Never => Box::pin(std::future::pending()),
        }
    })
}

enum Live<F> {
    Body(StreamLimitBody<FramesBody>),
    Future(F),
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_permit_ever_leaks(max in 1usize..4, ops in proptest::collection::vec(op(), 0..40)) {
        let layer = StreamLimitLayer::new(max);
        let mut service: StreamLimit<_> = layer.layer(scripted());
        let mut live = Vec::new();
        let mut rejections = 0;
        for op in ops {
            match op {
                Op::Call(answer) => {
                    prop_assert!(now(poll_fn(|cx| service.poll_ready(cx))).is_ok());
                    let full = layer.open_streams() == max;
                    let mut future = service.call(Request::new(answer.clone()));
                    match poll_once(&mut future) {
                        Some(Ok(res)) => {
                            prop_assert_eq!(full, res.status() == StatusCode::SERVICE_UNAVAILABLE);
                            rejections += u64::from(full);
                            let body = res.into_body();
                            if !full {
                                let stream = matches!(&answer, Answer::Stream(frames, exact) if !(frames.is_empty() && *exact));
                                prop_assert_eq!(body.holds_permit(), stream);
                            }
                            live.push(Live::Body(body));
                        }
                        Some(Err(_)) => prop_assert!(matches!(answer, Answer::Fail)),
                        None => {
                            prop_assert!(matches!(answer, Answer::Never));
                            live.push(Live::Future(future));
                        }
                    }
                }
                Op::Poll(i) if !live.is_empty() => {
                    let i = i % live.len();
                    if let Live::Body(body) = &mut live[i] {
                        let _ = now(body.frame());
                    }
                }
                Op::Drop(i) if !live.is_empty() => {
                    let i = i % live.len();
                    drop(live.swap_remove(i));
                }
                Op::Poll(_) | Op::Drop(_) => {}
            }
            let held = live
                .iter()
                .filter(|l| match l {
                    Live::Body(body) => body.holds_permit(),
                    Live::Future(_) => true,
                })
                .count();
            prop_assert_eq!(layer.open_streams(), held);
            prop_assert!(held <= max);
            prop_assert_eq!(layer.counter().rejected(), rejections);
        }
        drop(live);
        prop_assert_eq!(layer.open_streams(), 0);
        let mut admitted = Vec::new();
        for _ in 0..max {
            let res = now(service.call(Request::new(Answer::Stream(vec![true], false)))).unwrap();
            prop_assert!(res.body().holds_permit());
            admitted.push(res);
        }
        prop_assert_eq!(layer.open_streams(), max);
        let res = now(service.call(Request::new(Answer::Plain))).unwrap();
        prop_assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}

#[test]
fn huge_limits_do_not_panic() {
    let layer = StreamLimitLayer::new(usize::MAX);
    assert_eq!(layer.open_streams(), 0);
    assert!(layer.counter().max() > 1 << 40);
}
