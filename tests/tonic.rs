//! A tonic gRPC server-streaming service behind `SseLayer` keeps working unchanged: gRPC
//! responses are not SSE, so they pass through untouched, trailers (`grpc-status`) included.
//! Checked with a real tonic client over loopback.

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use futures_util::stream::{self, Stream};
use http::uri::PathAndQuery;
use support::body::Reports;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{NamedService, ServerStreamingService};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use tonic::{Code, Status};
use tower_sse::SseLayer;

/// Messages are raw bytes: no protobuf code generation needed.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self {
        *self
    }
    fn decoder(&mut self) -> Self {
        *self
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// `Count(n)` streams `0..n`, then fails with `ABORTED` when `n` ends with `!`.
#[derive(Debug, Clone)]
struct Counter;

impl NamedService for Counter {
    const NAME: &'static str = "test.Counter";
}

type Messages = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

struct Count;

impl ServerStreamingService<Bytes> for Count {
    type Response = Bytes;
    type ResponseStream = Messages;
    type Future = std::future::Ready<Result<tonic::Response<Messages>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let text = String::from_utf8_lossy(request.get_ref()).into_owned();
        let fail = text.ends_with('!');
        let n: u32 = text.trim_end_matches('!').parse().unwrap_or(0);
        let mut items: Vec<Result<Bytes, Status>> =
            (0..n).map(|i| Ok(Bytes::from(i.to_string()))).collect();
        if fail {
            items.push(Err(Status::aborted("counter gave up")));
        }
        std::future::ready(Ok(tonic::Response::new(Box::pin(stream::iter(items)))))
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Counter {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RawCodec);
            Ok(grpc.server_streaming(Count, request).await)
        })
    }
}

async fn count(addr: std::net::SocketAddr, request: &str) -> (Vec<String>, Result<(), Status>) {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.unwrap();
    let response = client
        .server_streaming(
            tonic::Request::new(Bytes::from(request.to_string())),
            PathAndQuery::from_static("/test.Counter/Count"),
            RawCodec,
        )
        .await
        .unwrap();
    let mut messages = response.into_inner();
    let mut got = Vec::new();
    loop {
        match messages.message().await {
            Ok(Some(m)) => got.push(String::from_utf8_lossy(&m).into_owned()),
            Ok(None) => return (got, Ok(())),
            Err(status) => return (got, Err(status)),
        }
    }
}

#[tokio::test]
async fn grpc_streams_and_their_trailers_pass_through_untouched() {
    let reports = Reports::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::builder()
        .layer(
            SseLayer::new()
                .keep_alive(tower_sse::KeepAliveConfig::new())
                .on_end(reports.sink()),
        )
        .add_service(Counter)
        .serve_with_incoming(TcpIncoming::from(listener));
    let server = tokio::spawn(server);

    let (messages, status) = count(addr, "5").await;
    assert_eq!(messages, ["0", "1", "2", "3", "4"]);
    assert!(status.is_ok());

    // The error status travels in the trailers (`grpc-status`, `grpc-message`).
    let (messages, status) = count(addr, "2!").await;
    assert_eq!(messages, ["0", "1"]);
    let status = status.unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(status.message(), "counter gave up");

    assert_eq!(
        reports.len(),
        0,
        "gRPC responses are not streams the layer handles"
    );
    server.abort();
}
