//! The layer in real servers over loopback: an axum app, a hyper gateway built from a
//! hyper-util client under `ServiceBuilder`, and clients that read everything or vanish.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Body as AxumBody;
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use support::body::{next_report, report_channel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tower::ServiceBuilder;
use tower_sse::request::UploadBody;
use tower_sse::sse::{Decoder, Item};
use tower_sse::{KeepAliveConfig, Outcome, SseLayer, TimingObserver};

fn event_data(bytes: &[u8]) -> Vec<String> {
    let mut decoder = Decoder::new();
    decoder.push(Bytes::copy_from_slice(bytes));
    decoder.finish();
    decoder
        .filter_map(|i| match i.unwrap() {
            Item::Event(e) => Some(e.data().into_owned()),
            _ => None,
        })
        .collect()
}

/// An SSE body made of these pieces, as an axum body.
fn sse_pieces(pieces: Vec<&'static str>) -> Response<AxumBody> {
    let stream = futures_util::stream::iter(
        pieces
            .into_iter()
            .map(|p| Ok::<_, Infallible>(Bytes::from_static(p.as_bytes()))),
    );
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(AxumBody::from_stream(stream))
        .unwrap()
}

const CHAT: &[&str] = &[
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choi",
    "ces\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\r",
    "\n\r\n",
    "data: [DONE]\n\n",
];

async fn serve_axum(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test]
async fn axum_router_layer_streams_whole_events_to_reqwest() {
    let (sink, mut reports) = report_channel();
    let app = Router::new()
        .route(
            "/v1/chat/completions",
            post(|| async { sse_pieces(CHAT.to_vec()) }),
        )
        .route("/plain", get(|| async { "not a stream" }))
        .layer(
            SseLayer::new()
                .keep_alive(KeepAliveConfig::new())
                .observer(TimingObserver::default())
                .on_end(sink),
        );
    let addr = serve_axum(app).await;
    let client = reqwest::Client::new();

    let response = client
        .post(format!("http://{addr}/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        body.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(body, CHAT.concat().as_bytes(), "forwarded byte for byte");
    assert_eq!(event_data(&body).len(), 4);

    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(report.events, 4);
    assert_eq!(report.content_events, 2);
    assert_eq!(report.response_id.as_deref(), Some("chatcmpl-1"));
    assert_eq!(report.model.as_deref(), Some("m"));
    let timing = report.timing.unwrap();
    assert!(timing.time_to_first_token.is_some());
    assert_eq!(timing.inter_token.count, 1);

    let plain = client
        .get(format!("http://{addr}/plain"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.text().await.unwrap(), "not a stream");
    assert!(
        reports.try_recv().is_err(),
        "no report for a plain response"
    );
}

/// Forwards every request to the upstream with a pooled hyper-util client.
#[derive(Clone)]
struct Forward {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, UploadBody<Incoming>>,
    upstream: SocketAddr,
}

impl tower::Service<Request<UploadBody<Incoming>>> for Forward {
    type Response = Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = hyper_util::client::legacy::ResponseFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<UploadBody<Incoming>>) -> Self::Future {
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        *request.uri_mut() = format!("http://{}{path}", self.upstream).parse().unwrap();
        self.client.request(request)
    }
}

#[tokio::test]
async fn gateway_of_hyper_util_client_under_service_builder() {
    // The upstream: an axum server streaming in awkward pieces.
    let upstream = serve_axum(Router::new().route(
        "/v1/chat/completions",
        post(|| async { sse_pieces(CHAT.to_vec()) }),
    ))
    .await;

    // The gateway: hyper server -> SseLayer -> hyper-util client.
    let (sink, mut reports) = report_channel();
    let client = Client::builder(TokioExecutor::new()).build_http::<UploadBody<Incoming>>();
    let service = ServiceBuilder::new()
        .layer(
            SseLayer::new()
                .observer(TimingObserver::default())
                .on_end(sink),
        )
        .service(Forward { client, upstream });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });

    let response = reqwest::Client::new()
        .post(format!("http://{gateway}/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    let body = response.bytes().await.unwrap();
    assert_eq!(&body[..], CHAT.concat().as_bytes());
    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(report.events, 4);
    assert_eq!(report.content_events, 2);
    assert_eq!(report.bytes_in, CHAT.concat().len() as u64);
}

#[tokio::test]
async fn client_that_vanishes_mid_stream_is_reported_once() {
    let (events_tx, events_rx) = mpsc::channel::<&'static str>(1);
    let events_rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(events_rx)));
    let (sink, mut reports) = report_channel();
    let app = Router::new()
        .route(
            "/sse",
            get(move || {
                let events_rx = events_rx.clone();
                async move {
                    let rx = events_rx.lock().await.take().expect("one request");
                    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                        rx.recv()
                            .await
                            .map(|e| (Ok::<_, Infallible>(Bytes::from_static(e.as_bytes())), rx))
                    });
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(AxumBody::from_stream(stream))
                        .unwrap()
                }
            }),
        )
        .layer(SseLayer::new().on_end(sink));
    let addr = serve_axum(app).await;

    // A raw TCP client: sends a request, reads the first event, and hangs up.
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(b"GET /sse HTTP/1.1\r\nhost: test\r\naccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    events_tx.send("data: first\n\n").await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("data: first") {
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "server closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    drop(socket);

    // The server finds out when it writes again; keep the upstream talking until the body
    // is dropped (the channel then closes).
    while events_tx.send("data: more\n\n").await.is_ok() {}

    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Outcome::ClientDisconnected);
    assert!(report.events >= 1);
    assert!(reports.try_recv().is_err(), "exactly one report");
}
