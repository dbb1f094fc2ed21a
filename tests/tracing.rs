//! `TraceObserver`: one `tracing` event per finished stream, with the report's fields and
//! never a payload.

#![cfg(feature = "tracing")]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use support::body::{FramesBody, collect, response, serve_with};
use tower_sse::Sha256Digest as Digest;
use tower_sse::{DigestObserver, SseLayer, TimingObserver, TraceObserver, UsageObserver};

/// Collects what the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn one_event_per_stream_with_fields_and_no_payload() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let received = tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let layer = SseLayer::new().observer((
                UsageObserver::new(),
                TimingObserver::new(),
                DigestObserver::new(),
                TraceObserver,
            ));
            let upstream = FramesBody::data(&[
                b"data: {\"id\":\"chatcmpl-7\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-x\",\"choices\":[{\"delta\":{\"content\":\"SECRET-PAYLOAD\"}}]}\n\n",
                b"data: {\"id\":\"chatcmpl-7\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-x\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n",
                b"data: [DONE]\n\n",
            ]);
            let request = Request::post("/v1/chat/completions").body(Empty::<Bytes>::new()).unwrap();
            let body = serve_with(layer, request, response("text/event-stream", upstream)).await.into_body();
            collect(body).await.data
        })
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert_eq!(text.matches("stream ended").count(), 1, "{text}");
    for field in [
        "outcome=completed",
        "provider=openai",
        "model=\"gpt-x\"",
        "response_id=\"chatcmpl-7\"",
        "input_tokens=3",
        "output_tokens=1",
        "events=3",
    ] {
        assert!(text.contains(field), "{field} missing from: {text}");
    }
    // The digest's first 16 hex digits, of what the client received.
    let digest = format!("digest=\"{}\"", &Digest::of(&received).to_hex()[..16]);
    assert!(text.contains(&digest), "{digest} missing from: {text}");
    assert!(text.contains(" INFO "), "{text}");
    assert!(
        !text.contains("SECRET-PAYLOAD"),
        "a payload was logged: {text}"
    );
}
