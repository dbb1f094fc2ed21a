//! `serve_with_h2_max_streams`: the limit is the one HTTP/2 clients are held to. On one
//! connection limited to one stream, a second request gets its head only after the first
//! stream ended; with hyper's default limit it gets it at once.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tower_sse_mock::MockConfig;

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    FirstEnded,
    SecondHead,
}

fn request(addr: std::net::SocketAddr, tokens: u32) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"model":"m","stream":true,"messages":[],"mock":{{"tokens":{tokens},"delay_ms":100}}}}"#
    );
    Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// Two streams on one HTTP/2 connection to a mock with this limit (`None`: `serve`'s
/// default): in which order the first one's end and the second one's head arrive.
async fn order(limit: Option<u32>) -> Vec<Seen> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        match limit {
            Some(n) => tower_sse_mock::serve_with_h2_max_streams(listener, MockConfig::new(), n)
                .await
                .unwrap(),
            None => tower_sse_mock::serve(listener, MockConfig::new())
                .await
                .unwrap(),
        }
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let (seen, mut order) = mpsc::unbounded_channel();

    // The first stream is open (its head arrived) before the second is sent.
    let first = sender.send_request(request(addr, 3)).await.unwrap();
    let first_seen = seen.clone();
    let first = tokio::spawn(async move {
        first.into_body().collect().await.unwrap();
        first_seen.send(Seen::FirstEnded).unwrap();
    });
    let second = tokio::spawn(async move {
        sender.ready().await.unwrap();
        let response = sender.send_request(request(addr, 1)).await.unwrap();
        seen.send(Seen::SecondHead).unwrap();
        response.into_body().collect().await.unwrap();
    });
    first.await.unwrap();
    second.await.unwrap();
    let mut seen = Vec::new();
    while let Ok(item) = order.try_recv() {
        seen.push(item);
    }
    seen
}

#[tokio::test(start_paused = true)]
async fn one_stream_at_a_time_under_a_limit_of_one() {
    assert_eq!(order(Some(1)).await, [Seen::FirstEnded, Seen::SecondHead]);
    assert_eq!(order(None).await, [Seen::SecondHead, Seen::FirstEnded]);
}
