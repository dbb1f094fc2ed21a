//! What the layers ask of the types around them (issue 33): the services, futures and bodies
//! are `Send` and `Sync` where their parts are, box into `BoxBody`, compose with tower-http,
//! hyper-util and tonic; and the futures refuse to be polled after completion.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Waker};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_sse::request::UploadBody;
use tower_sse::{SseLayer, StreamLimitLayer};

fn assert_send<T: Send>() {}
fn assert_sync<T: Sync>() {}

async fn hello<B>(_: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"hello"))))
}

/// Poll `future` until it is ready, then once more.
fn poll_twice<F: Future>(future: F) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut future = pin!(future);
    for _ in 0..100 {
        if future.as_mut().poll(&mut cx).is_ready() {
            let _ = future.as_mut().poll(&mut cx);
            return;
        }
    }
    unreachable!("not ready after 100 polls");
}

#[tokio::test]
#[should_panic(expected = "`SseFuture` polled after completion")]
async fn sse_future_panics_when_polled_after_completion() {
    let mut service = SseLayer::new().layer(service_fn(hello::<UploadBody<Full<Bytes>>>));
    let service = service.ready().await.unwrap();
    poll_twice(service.call(Request::new(Full::new(Bytes::new()))));
}

#[tokio::test]
#[should_panic(expected = "`SseFuture` polled after completion")]
async fn early_sse_future_panics_when_polled_after_completion() {
    let mut service = SseLayer::new()
        .early_response(true)
        .layer(service_fn(hello::<UploadBody<Full<Bytes>>>));
    let service = service.ready().await.unwrap();
    let request = Request::builder()
        .header("accept", "text/event-stream")
        .body(Full::new(Bytes::new()))
        .unwrap();
    poll_twice(service.call(request));
}

#[tokio::test]
#[should_panic(expected = "`StreamLimitFuture` polled after completion")]
async fn stream_limit_future_panics_when_polled_after_completion() {
    let mut service = StreamLimitLayer::new(1).layer(service_fn(hello::<Full<Bytes>>));
    let service = service.ready().await.unwrap();
    poll_twice(service.call(Request::new(Full::new(Bytes::new()))));
}

#[tokio::test]
#[should_panic(expected = "`StreamLimitFuture` polled after completion")]
async fn rejecting_stream_limit_future_panics_when_polled_after_completion() {
    let limit = StreamLimitLayer::new(0);
    let mut service = limit.layer(service_fn(hello::<Full<Bytes>>));
    poll_twice(service.call(Request::new(Full::new(Bytes::new()))));
}

#[test]
fn services_are_send_and_sync() {
    assert_send::<
        tower_sse::stream::Sse<
            tower::util::BoxCloneSyncService<
                Request<Full<Bytes>>,
                Response<Full<Bytes>>,
                Infallible,
            >,
        >,
    >();
    assert_sync::<
        tower_sse::stream::Sse<
            tower::util::BoxCloneSyncService<
                Request<Full<Bytes>>,
                Response<Full<Bytes>>,
                Infallible,
            >,
        >,
    >();
}

type Upstream = Full<Bytes>;

#[test]
fn bodies_are_send_and_sync() {
    assert_send::<tower_sse::stream::SseBody<Upstream>>();
    assert_sync::<tower_sse::stream::SseBody<Upstream>>();
    assert_send::<tower_sse::limit::StreamLimitBody<tower_sse::stream::SseBody<Upstream>>>();
    assert_sync::<tower_sse::limit::StreamLimitBody<tower_sse::stream::SseBody<Upstream>>>();
    assert_send::<tower_sse::include_usage::IncludeUsageBody<Upstream>>();
    assert_sync::<tower_sse::include_usage::IncludeUsageBody<Upstream>>();
    #[cfg(feature = "resume")]
    {
        assert_send::<tower_sse::resume::ResumeBody<Upstream>>();
        assert_sync::<tower_sse::resume::ResumeBody<Upstream>>();
    }
}

/// An early response (whose body holds the upstream call) boxes into `BoxBody`, which asks
/// for `Sync`, and still streams.
#[tokio::test]
async fn early_response_body_boxes_into_box_body() {
    use http_body_util::BodyExt;
    use http_body_util::combinators::BoxBody;

    let mut service = SseLayer::new().early_response(true).layer(service_fn(
        |_: Request<UploadBody<Full<Bytes>>>| async {
            let mut response = Response::new(Full::new(Bytes::from_static(b"data: hi\n\n")));
            response
                .headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            Ok::<_, Infallible>(response)
        },
    ));
    let request = Request::builder()
        .header("accept", "text/event-stream")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    assert!(response.body().is_stream());
    let body: BoxBody<Bytes, tower_sse::BoxError> = response.into_body().boxed();
    let bytes = body.collect().await.unwrap().to_bytes();
    assert_eq!(&bytes[..], b"data: hi\n\n");
}

/// An observer that counts with a `Cell`: `Send`, not `Sync`.
#[derive(Clone, Default)]
struct CellCounter {
    events: std::cell::Cell<u64>,
}

impl tower_sse::Observer for CellCounter {
    fn on_event(&mut self, _: &tower_sse::sse::EventRef<'_>, _: &mut tower_sse::EventContext<'_>) {
        self.events.set(self.events.get() + 1);
    }
}

type Inner =
    tower::util::BoxCloneSyncService<Request<UploadBody<Upstream>>, Response<Upstream>, Infallible>;

/// A service whose observer is `Send` but not `Sync` is still `Send` (hyper-util and tonic on
/// a multi-thread runtime ask for it), and so are its futures and bodies.
#[test]
fn service_with_a_cell_observer_is_send() {
    fn send_service<S: Send, F: Send>(_: &S, _: fn(&mut S) -> F) {}
    let service = SseLayer::new()
        .observer(CellCounter::default())
        .layer(Inner::new(service_fn(hello)));
    send_service(&service, |s| s.call(Request::new(Full::new(Bytes::new()))));
    assert_send::<tower_sse::stream::Sse<Inner, CellCounter>>();
    assert_send::<tower_sse::stream::SseBody<Upstream, CellCounter>>();
    // And `Sync`, so it goes where a `Sync` service is asked for (axum's router, tower's
    // `BoxCloneSyncService`).
    assert_sync::<tower_sse::stream::Sse<Inner, CellCounter>>();
    let _: tower::util::BoxCloneSyncService<_, _, _> = tower::util::BoxCloneSyncService::new(
        SseLayer::new()
            .observer(CellCounter::default())
            .layer(Inner::new(service_fn(hello))),
    );
}

/// Counts its clones, and carries a kilobyte as a metering stack's observers do.
struct CountedClones {
    clones: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _state: [u8; 1024],
}

impl Clone for CountedClones {
    fn clone(&self) -> Self {
        self.clones
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self {
            clones: self.clones.clone(),
            _state: self._state,
        }
    }
}

impl tower_sse::Observer for CountedClones {}

/// Routers clone a service for every request, at every layer (axum: once per layer of a
/// router): a clone of the service shares its observer, which is cloned once per request,
/// for the stream, and the service stays small whatever the observer's size.
#[tokio::test]
async fn service_clones_share_the_observer() {
    use std::sync::atomic::Ordering;

    let clones = std::sync::Arc::default();
    let service = SseLayer::new()
        .observer(CountedClones {
            clones: std::sync::Arc::clone(&clones),
            _state: [0; 1024],
        })
        .layer(Inner::new(service_fn(hello)));
    // The layer keeps its own observer and gave the service a clone.
    let made = clones.load(Ordering::Relaxed);
    let copies: Vec<_> = (0..5).map(|_| service.clone()).collect();
    assert_eq!(
        clones.load(Ordering::Relaxed),
        made,
        "a service clone cloned the observer"
    );
    assert!(
        std::mem::size_of_val(&service) < 256,
        "{} bytes",
        std::mem::size_of_val(&service)
    );
    for copy in copies {
        copy.oneshot(Request::new(Full::new(Bytes::new())))
            .await
            .unwrap();
    }
    assert_eq!(
        clones.load(Ordering::Relaxed) - made,
        5,
        "one clone per request"
    );
}

/// tower-http's `RequestBodyTimeoutLayer` outside `IncludeUsageLayer`: its `TimeoutBody` is
/// not `Unpin`, and an oversized body (read in part, then handed on) still reaches the inner
/// service whole.
#[tokio::test]
async fn include_usage_composes_inside_request_body_timeout() {
    use http_body_util::BodyExt;
    use tower::ServiceBuilder;
    use tower_http::timeout::RequestBodyTimeoutLayer;
    use tower_sse::IncludeUsageLayer;

    let mut service = ServiceBuilder::new()
        .layer(RequestBodyTimeoutLayer::new(
            std::time::Duration::from_secs(30),
        ))
        .layer(IncludeUsageLayer::new().max_request_size(20))
        .service_fn(
            |request: Request<tower_sse::include_usage::UsageRequestBody<_>>| async {
                let body = request.into_body().collect().await?.to_bytes();
                Ok::<_, tower_sse::BoxError>(Response::new(Full::new(body)))
            },
        );
    for (body, rewritten) in [
        (r#"{"stream":true}"#, true),
        (r#"{"stream":true,"messages":["a long one"]}"#, false),
    ] {
        let request = Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert_eq!(text.contains("include_usage"), rewritten, "{text}");
        if !rewritten {
            assert_eq!(text, body);
        }
    }
}

/// An observer chosen at run time, boxed, goes into the layer (which clones it per request),
/// and the service stays `Send`.
#[tokio::test]
async fn boxed_observer_goes_into_the_layer() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tower_sse::observe::BoxObserver;

    #[derive(Clone, Default)]
    struct Requests(Arc<AtomicU64>);
    impl tower_sse::Observer for Requests {
        fn on_request(&mut self, _: &http::request::Parts) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    let requests = Requests::default();
    let observer = if requests.0.load(Ordering::Relaxed) == 0 {
        BoxObserver::new((requests.clone(), CellCounter::default()))
    } else {
        BoxObserver::new(CellCounter::default())
    };
    let mut service = SseLayer::new()
        .observer(observer)
        .layer(Inner::new(service_fn(hello)));
    assert_send::<tower_sse::stream::Sse<Inner, BoxObserver>>();
    for _ in 0..2 {
        let request = Request::new(Full::new(Bytes::new()));
        service.ready().await.unwrap().call(request).await.unwrap();
    }
    assert_eq!(requests.0.load(Ordering::Relaxed), 2);
}

/// A slow upload does not hold the inner service's readiness: behind a
/// `ConcurrencyLimit(1)`, a second request is served while the first is still uploading.
#[tokio::test(start_paused = true)]
async fn a_slow_upload_holds_no_permit_of_the_inner_service() {
    use std::time::Duration;

    use http_body::Frame;
    use http_body_util::{BodyExt, StreamBody};
    use tokio::sync::mpsc;
    use tower::limit::ConcurrencyLimitLayer;
    use tower_sse::IncludeUsageLayer;

    fn request(
        body: impl http_body::Body<Data = Bytes, Error = Infallible> + Send + 'static,
    ) -> Request<http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>> {
        Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(body.boxed_unsync())
            .unwrap()
    }

    let mut service = tower::ServiceBuilder::new()
        .layer(IncludeUsageLayer::new().upload_timeout(Duration::from_secs(600)))
        .layer(ConcurrencyLimitLayer::new(1))
        .service_fn(
            |request: Request<tower_sse::include_usage::UsageRequestBody<_>>| async {
                let body = request.into_body().collect().await?.to_bytes();
                Ok::<_, tower_sse::BoxError>(Response::new(Full::new(body)))
            },
        );

    // The first request's body comes in two parts, the second one much later.
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let slow = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
        let data = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(data)), rx))
    }));
    tx.send(Bytes::from_static(b"{\"stream\":")).await.unwrap();
    let first = service.ready().await.unwrap().call(request(slow));
    let first = tokio::spawn(first);
    tokio::task::yield_now().await;

    let second = async {
        let body = Full::new(Bytes::from_static(b"{\"stream\":true}"));
        service.ready().await.unwrap().call(request(body)).await
    };
    let response = tokio::time::timeout(Duration::from_secs(1), second)
        .await
        .expect("the second request waited for the first one's upload")
        .unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert!(bytes.ends_with(b"\"stream\":true}"), "{bytes:?}");

    tx.send(Bytes::from_static(b"true}")).await.unwrap();
    drop(tx);
    let response = first.await.unwrap().unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert!(bytes.ends_with(b"\"stream\":true}"), "{bytes:?}");
}

/// The layers around hyper-util's client, used as a `Service`: the stack is `Send` and
/// `Clone` with an observer that is not `Sync` (its calls are spawned on a multi-thread
/// runtime), and `Sync` too with one that is (a `BoxCloneSyncService`, its bodies boxed into
/// `BoxBody`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_compose_around_hyper_util_client() {
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tower_sse::IncludeUsageLayer;
    use tower_sse::include_usage::UsageRequestBody;

    let client = Client::builder(TokioExecutor::new())
        .build_http::<UploadBody<UsageRequestBody<Full<Bytes>>>>();
    let sync_stack = tower::ServiceBuilder::new()
        .layer(IncludeUsageLayer::new())
        .layer(StreamLimitLayer::new(8))
        .layer(SseLayer::new())
        .service(client.clone());
    let mut sync_stack = tower::util::BoxCloneSyncService::new(sync_stack);
    let send_stack = tower::ServiceBuilder::new()
        .layer(IncludeUsageLayer::new())
        .layer(StreamLimitLayer::new(8))
        .layer(SseLayer::new().observer(CellCounter::default()))
        .service(client);
    let mut send_stack = tower::util::BoxCloneService::new(send_stack);

    // Nothing listens on port 9 of localhost: the calls fail, from spawned tasks.
    let request = || {
        Request::post("http://127.0.0.1:9/v1/chat/completions")
            .body(Full::new(Bytes::from_static(b"{\"stream\":true}")))
            .unwrap()
    };
    let sync_call = tokio::spawn(async move { sync_stack.ready().await?.call(request()).await });
    let send_call = tokio::spawn(async move { send_stack.ready().await?.call(request()).await });
    if let Ok(response) = sync_call.await.unwrap() {
        let _ = response.into_body().boxed();
    }
    let _ = send_call.await.unwrap();
}

/// A named gRPC service for tonic's server: answers `UNIMPLEMENTED`.
#[derive(Clone)]
struct Unimplemented;

impl tonic::server::NamedService for Unimplemented {
    const NAME: &'static str = "test.Unimplemented";
}

impl Service<Request<tonic::body::Body>> for Unimplemented {
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<tonic::body::Body>) -> Self::Future {
        std::future::ready(Ok(tonic::Status::unimplemented("no").into_http()))
    }
}

/// The layers in tonic's server, with an observer that is not `Sync`: the server's future is
/// `Send` (spawned on a multi-thread runtime).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_compose_in_tonic_server() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let layers = tower::ServiceBuilder::new()
        .layer(StreamLimitLayer::new(8))
        .layer(SseLayer::new().observer(CellCounter::default()))
        .into_inner();
    let server = tonic::transport::Server::builder()
        .layer(layers)
        .add_service(Unimplemented)
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    tokio::spawn(server).abort();
}

/// An observer that is not `Send`: it counts into an `Rc` shared with the test.
#[derive(Clone, Default)]
struct RcCounter {
    events: std::rc::Rc<std::cell::Cell<u64>>,
}

impl tower_sse::Observer for RcCounter {
    fn on_event(&mut self, _: &tower_sse::sse::EventRef<'_>, _: &mut tower_sse::EventContext<'_>) {
        self.events.set(self.events.get() + 1);
    }
}

/// An upstream that holds an `Rc`: its future is not `Send`.
fn rc_upstream() -> impl tower::Service<
    Request<UploadBody<hyper::body::Incoming>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>>,
> + Clone {
    let events = std::rc::Rc::new(b"data: one\n\ndata: two\n\n".to_vec());
    service_fn(move |_: Request<UploadBody<hyper::body::Incoming>>| {
        let events = events.clone();
        async move {
            let mut response = Response::new(Full::new(Bytes::from(events.as_ref().clone())));
            response
                .headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            Ok(response)
        }
    })
}

/// A stack that is not `Send` (an `Rc` in the upstream and in the observer) runs on a
/// `LocalSet` behind a real hyper server, with tower-http's `TimeoutLayer` around it, as
/// `SseLayer::local()` does not ask for `Send`; and on a single `oneshot`.
#[tokio::test]
async fn a_local_stack_serves_on_a_local_set() {
    use std::time::Duration;

    use http_body_util::BodyExt;
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    use tower_http::timeout::TimeoutLayer;

    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let counter = RcCounter::default();
            let stack = tower::ServiceBuilder::new()
                .layer(StreamLimitLayer::new(8))
                .layer(TimeoutLayer::with_status_code(
                    http::StatusCode::REQUEST_TIMEOUT,
                    Duration::from_secs(30),
                ))
                .layer(
                    SseLayer::new()
                        .local()
                        .observer(counter.clone())
                        .idle_timeout(Duration::from_secs(30))
                        .keep_alive(tower_sse::KeepAliveConfig::new()),
                )
                .service(rc_upstream());

            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server_stack = stack.clone();
            tokio::task::spawn_local(async move {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let service = TowerToHyperService::new(server_stack.clone());
                    // Not `Send`: spawned on this thread's `LocalSet`.
                    tokio::task::spawn_local(
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service),
                    );
                }
            });

            let response = reqwest::get(format!("http://{addr}/v1/chat/completions"))
                .await
                .unwrap();
            assert_eq!(
                response.headers()["content-type"],
                "text/event-stream",
                "{response:?}"
            );
            let body = response.text().await.unwrap();
            assert_eq!(body, "data: one\n\ndata: two\n\n");
            assert_eq!(counter.events.get(), 2);

            // The same stack type, one request at a time through `oneshot`.
            let upstream = service_fn(|_: Request<UploadBody<Full<Bytes>>>| {
                let rc = std::rc::Rc::new(());
                async move {
                    let _held = rc;
                    let mut response =
                        Response::new(Full::new(Bytes::from_static(b"data: hi\n\n")));
                    response
                        .headers_mut()
                        .insert("content-type", "text/event-stream".parse().unwrap());
                    Ok::<_, Infallible>(response)
                }
            });
            let response = SseLayer::new()
                .local()
                .observer(counter.clone())
                .layer(upstream)
                .oneshot(Request::new(Full::new(Bytes::new())))
                .await
                .unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"data: hi\n\n");
            assert_eq!(counter.events.get(), 3);
        })
        .await;
}
