//! Digests: of what the client received (keep-alives excluded, any chunking), of the request
//! body, and the registry that must hold the record before the client sees the end.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body as AxumBody;
use axum::routing::post;
use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Full};
use proptest::prelude::*;
use support::body::{
    FramesBody, Item, Reports, UpstreamFailed, channel, collect, next_report, report_channel,
    response, serve,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower::ServiceBuilder;
use tower_sse::Sha256Digest as Digest;
use tower_sse::digest::{RequestDigestBody, RequestDigestHandle};
use tower_sse::{DigestObserver, KeepAliveConfig, Outcome, RequestDigestLayer, SseLayer};

const CHAT: &[&str] = &[
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-x\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-x\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\r\n\r\n",
    ": ping\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-x\",\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\r\r",
    "data: [DONE]\n\n",
];

async fn serve_axum(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The upstream senders of the streams an app served, handed to the test one per request.
type Upstreams = mpsc::UnboundedReceiver<mpsc::UnboundedSender<Item>>;

/// A handler that answers with an SSE stream the test feeds by hand.
fn channel_route(content_type: &'static str) -> (axum::routing::MethodRouter, Upstreams) {
    let (tx, rx) = mpsc::unbounded_channel();
    let route = post(move || {
        let tx = tx.clone();
        async move {
            let (upstream, body) = channel();
            tx.send(upstream).unwrap();
            response(content_type, AxumBody::new(body))
        }
    });
    (route, rx)
}

fn data(bytes: &'static str) -> Item {
    Ok(Frame::data(Bytes::from_static(bytes.as_bytes())))
}

const KEEP_ALIVE: &str = ": keep-alive\n\n";

#[tokio::test]
async fn digest_is_sha256_of_what_a_real_client_read_without_keep_alives() {
    let (sink, mut reports) = report_channel();
    let (route, mut upstreams) = channel_route("text/event-stream");
    let app = Router::new().route("/v1/chat/completions", route).layer(
        SseLayer::new()
            .keep_alive(KeepAliveConfig::new().interval(Duration::from_millis(1)))
            .observer(DigestObserver::new())
            .on_end(sink),
    );
    let addr = serve_axum(app).await;
    let mut response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    let upstream = upstreams.recv().await.unwrap();

    // After each upstream piece, read until a keep-alive arrived after it: keep-alives are
    // interleaved with the events for certain, without the test sleeping.
    let mut received = Vec::new();
    let mut keep_alives = 0;
    for piece in CHAT {
        upstream.send(data(piece)).unwrap();
        let before = received.len();
        while !String::from_utf8_lossy(&received[before..]).contains(KEEP_ALIVE) {
            let chunk = response.chunk().await.unwrap().expect("stream ended early");
            received.extend_from_slice(&chunk);
        }
        keep_alives += 1;
    }
    drop(upstream);
    while let Some(chunk) = response.chunk().await.unwrap() {
        received.extend_from_slice(&chunk);
    }

    let text = String::from_utf8(received.clone()).unwrap();
    assert!(text.matches(KEEP_ALIVE).count() >= keep_alives);
    let without_keep_alives = text.replace(KEEP_ALIVE, "");
    assert_eq!(
        without_keep_alives,
        CHAT.concat(),
        "whole events, byte for byte"
    );

    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Outcome::Completed);
    assert!(report.keep_alives >= keep_alives as u64);
    assert_eq!(
        report.digest,
        Some(Digest::of(without_keep_alives.as_bytes())),
        "the digest covers what the client read, keep-alives excluded"
    );
    assert_eq!(report.request_digest, None, "no request digest layer");
}

async fn digest_of_chunks(chunks: Vec<Bytes>) -> (Option<Digest>, Vec<u8>) {
    let reports = Reports::default();
    let layer = SseLayer::new()
        .observer(DigestObserver::new())
        .on_end(reports.sink());
    let frames = chunks.into_iter().map(|c| Ok(Frame::data(c))).collect();
    let res = serve(
        layer,
        response("text/event-stream", FramesBody::new(frames, false)),
    )
    .await;
    let collected = collect(res.into_body()).await;
    (reports.one().digest, collected.data)
}

fn split_at(all: &Bytes, cuts: &[usize]) -> Vec<Bytes> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (all.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::new();
    let mut at = 0;
    for cut in cuts.into_iter().chain([all.len()]) {
        out.push(all.slice(at..cut));
        at = cut;
    }
    out
}

#[tokio::test]
async fn digest_is_the_same_for_every_chunking() {
    let all = Bytes::from(CHAT.concat());
    let expected = Digest::of(&all);
    let whole = digest_of_chunks(vec![all.clone()]).await;
    assert_eq!(whole, (Some(expected), all.to_vec()));
    let bytewise = split_at(&all, &(0..all.len()).collect::<Vec<_>>());
    assert_eq!(digest_of_chunks(bytewise).await.0, Some(expected));
    let events = CHAT
        .iter()
        .map(|e| Bytes::from_static(e.as_bytes()))
        .collect();
    assert_eq!(digest_of_chunks(events).await.0, Some(expected));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn digest_is_chunking_invariant(cuts in proptest::collection::vec(any::<usize>(), 0..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let all = Bytes::from(CHAT.concat());
        let (digest, received) = rt.block_on(digest_of_chunks(split_at(&all, &cuts)));
        prop_assert_eq!(digest, Some(Digest::of(&all)));
        prop_assert_eq!(received, all.to_vec());
    }
}

#[tokio::test]
async fn digest_covers_what_the_layer_changed_and_added() {
    // Comments stripped and an error event added: the digest is of what the client got,
    // not of what the upstream sent.
    let reports = Reports::default();
    let layer = SseLayer::new()
        .forward_comments(false)
        .observer(DigestObserver::new())
        .on_end(reports.sink());
    let upstream = FramesBody::new(
        vec![
            data(": ping\ndata: first\n\n"),
            data("data: second\n\n"),
            Err(UpstreamFailed),
        ],
        false,
    );
    let res = serve(layer, response("text/event-stream", upstream)).await;
    let collected = collect(res.into_body()).await;
    let text = collected.text();
    assert!(!text.contains("ping"));
    assert!(text.contains("event: error"));
    let report = reports.one();
    assert_eq!(report.outcome, Outcome::UpstreamError);
    assert_eq!(report.digest, Some(Digest::of(&collected.data)));
}

#[tokio::test]
async fn digest_of_a_stream_the_client_left() {
    let reports = Reports::default();
    let layer = SseLayer::new()
        .observer(DigestObserver::new())
        .on_end(reports.sink());
    let (upstream, body) = channel();
    upstream.send(data("data: one\n\n")).unwrap();
    let res = serve(layer, response("text/event-stream", body)).await;
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    drop(body);
    let report = reports.one();
    assert_eq!(report.outcome, Outcome::ClientDisconnected);
    assert_eq!(report.digest, Some(Digest::of(&first)));
}

// --- request digest ---

const REQUEST: &[&str] = &[
    "{\"model\":\"gpt-x\",\"stream\":true,",
    "\"messages\":[{\"role\":\"user\",",
    "\"content\":\"hello\"}]}",
];

#[tokio::test]
async fn request_digest_is_sha256_of_the_request_body_over_loopback() {
    let (sink, mut reports) = report_channel();
    let (handles_tx, mut handles) = mpsc::unbounded_channel::<RequestDigestHandle>();
    let app = Router::new()
        .route(
            "/v1/chat/completions",
            post(
                move |axum::Extension(handle): axum::Extension<RequestDigestHandle>,
                      body: Bytes| async move {
                    handles_tx.send(handle).unwrap();
                    assert_eq!(body, REQUEST.concat());
                    response("text/event-stream", AxumBody::from(CHAT.concat()))
                },
            ),
        )
        .route(
            "/unread",
            post(|| async { response("text/event-stream", AxumBody::from("data: x\n\n")) }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(RequestDigestLayer::new())
                .layer(SseLayer::new().observer(DigestObserver::new()).on_end(sink)),
        );
    let addr = serve_axum(app).await;
    let client = reqwest::Client::new();

    // Sent in pieces, as a stream.
    let pieces = futures_util::stream::iter(
        REQUEST
            .iter()
            .map(|p| Ok::<_, Infallible>(Bytes::from_static(p.as_bytes()))),
    );
    let body = client
        .post(format!("http://{addr}/v1/chat/completions"))
        .body(reqwest::Body::wrap_stream(pieces))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body, CHAT.concat());
    let report = next_report(&mut reports).await;
    let expected = Digest::of(REQUEST.concat().as_bytes());
    assert_eq!(report.request_digest, Some(expected));
    assert_eq!(report.digest, Some(Digest::of(CHAT.concat().as_bytes())));
    assert_eq!(handles.recv().await.unwrap().digest(), Some(expected));

    // A handler that never reads the body: no request digest.
    client
        .post(format!("http://{addr}/unread"))
        .body("some body the handler ignores")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let report = next_report(&mut reports).await;
    assert_eq!(report.request_digest, None);
    assert!(report.digest.is_some());
}

#[tokio::test]
async fn request_digest_body_passes_frames_and_hints_through() {
    let body = RequestDigestBody::new(Full::new(Bytes::from_static(b"hello")));
    let handle = body.handle();
    assert_eq!(body.size_hint().exact(), Some(5));
    assert!(!body.is_end_stream());
    assert_eq!(handle.digest(), None, "not read yet");
    let collected = body.collect().await.unwrap().to_bytes();
    assert_eq!(collected, "hello");
    assert_eq!(handle.digest(), Some(Digest::of(b"hello")));

    // An empty body is complete before anyone reads it.
    let empty = RequestDigestBody::new(Empty::<Bytes>::new());
    assert!(empty.is_end_stream());
    assert_eq!(empty.handle().digest(), Some(Digest::of(b"")));

    // Trailers end the body too.
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", http::HeaderValue::from_static("1"));
    let body = RequestDigestBody::new(FramesBody::new(
        vec![data("ab"), data("c"), Ok(Frame::trailers(trailers))],
        false,
    ));
    let handle = body.handle();
    let collected = collect(body).await;
    assert!(collected.trailers.is_some());
    assert_eq!(handle.digest(), Some(Digest::of(b"abc")));
}

#[tokio::test]
async fn request_body_that_fails_or_is_dropped_has_no_digest() {
    let body = RequestDigestBody::new(FramesBody::new(
        vec![data("partial"), Err(UpstreamFailed), data("more")],
        false,
    ));
    let handle = body.handle();
    let collected = collect(body).await;
    assert!(collected.error.is_some());
    assert_eq!(handle.digest(), None);

    let mut body = RequestDigestBody::new(FramesBody::new(vec![data("a"), data("b")], false));
    let handle = body.handle();
    body.frame().await.unwrap().unwrap();
    drop(body);
    assert_eq!(handle.digest(), None, "dropped before its end");

    // A body whose length is known ends with its last frame: no need to poll again.
    let mut body = RequestDigestBody::new(FramesBody::new(vec![data("a"), data("b")], true));
    let handle = body.handle();
    body.frame().await.unwrap().unwrap();
    assert_eq!(handle.digest(), None);
    body.frame().await.unwrap().unwrap();
    assert!(body.is_end_stream());
    assert_eq!(handle.digest(), Some(Digest::of(b"ab")));
}

#[tokio::test]
async fn request_digest_through_the_layer_in_memory() {
    let reports = Reports::default();
    let layer = SseLayer::new()
        .observer(DigestObserver::new())
        .on_end(reports.sink());
    let service =
        ServiceBuilder::new()
            .layer(RequestDigestLayer::new())
            .layer(layer)
            .service(tower::service_fn(
                |request: Request<
                    tower_sse::request::UploadBody<RequestDigestBody<Full<Bytes>>>,
                >| async move {
                    let body = request.into_body().collect().await.unwrap().to_bytes();
                    assert_eq!(body, "prompt");
                    Ok::<_, Infallible>(response(
                        "text/event-stream",
                        Full::new(Bytes::from_static(b"data: [DONE]\n\n")),
                    ))
                },
            ));
    let res = tower::ServiceExt::oneshot(
        service,
        Request::new(Full::new(Bytes::from_static(b"prompt"))),
    )
    .await
    .unwrap();
    collect(res.into_body()).await;
    let report = reports.one();
    assert_eq!(report.request_digest, Some(Digest::of(b"prompt")));
    assert_eq!(report.digest, Some(Digest::of(b"data: [DONE]\n\n")));
}

// --- registry ---

#[cfg(feature = "registry")]
mod registry {
    use super::*;
    use axum::extract::{Path, State};
    use axum::routing::get;
    use http::{Response, StatusCode};
    use support::body::serve_with;
    use tower_sse::DigestRegistry;
    use tower_sse::StreamReport;
    use tower_sse::digest::{DigestRecord, DigestRegistration};
    use tower_sse::request::{Tenant, TenantKey};

    /// Feed `pieces` to a stream that stays open, read it frame by frame, and check that the
    /// record exists as soon as the client holds the frame with `terminal` — and not before.
    async fn registered_when_terminal_is_read(
        path: &str,
        content_type: &str,
        json_lines: bool,
        pieces: &[&'static str],
        terminal: &str,
        id: &str,
    ) {
        let registry = DigestRegistry::new();
        let reports = Reports::default();
        let layer = SseLayer::new()
            .json_lines(json_lines)
            .observer(DigestObserver::with_registry(registry.clone()))
            .on_end(reports.sink());
        let (upstream, body) = channel();
        for piece in pieces {
            upstream.send(data(piece)).unwrap();
        }
        let request = Request::builder()
            .method("POST")
            .uri(path)
            .body(Empty::new())
            .unwrap();
        let res = serve_with(layer, request, response(content_type, body)).await;
        let mut body = res.into_body();
        let mut received = Vec::new();
        loop {
            let frame = body.frame().await.expect("ended before the terminal event");
            received.extend_from_slice(&frame.unwrap().into_data().unwrap());
            let record = registry.get(Tenant::anonymous(), id);
            if String::from_utf8_lossy(&received).contains(terminal) {
                let record = record.unwrap_or_else(|| {
                    panic!("{path}: no record when the client read the terminal event")
                });
                assert_eq!(record.response_id, id);
                assert_eq!(record.response_digest, Digest::of(&received));
                break;
            }
            assert!(
                record.is_none(),
                "{path}: a record before the terminal event"
            );
        }
        // The upstream is still open: the record came from the terminal event, not the end.
        assert_eq!(reports.len(), 0);
        drop(upstream);
        assert!(body.frame().await.is_none());
        let report = reports.one();
        assert_eq!(
            report.extensions.get::<DigestRegistration>(),
            Some(&DigestRegistration::Inserted)
        );
        assert_eq!(report.response_id.as_deref(), Some(id));
        let record = registry.get(Tenant::anonymous(), id).unwrap();
        assert_eq!(Some(record.response_digest), report.digest);
        assert_eq!(record.model, report.model);
    }

    #[tokio::test]
    async fn openai_done() {
        registered_when_terminal_is_read(
            "/v1/chat/completions",
            "text/event-stream",
            false,
            CHAT,
            "[DONE]",
            "chatcmpl-1",
        )
        .await;
    }

    #[tokio::test]
    async fn openai_done_split_across_chunks() {
        let mut pieces = CHAT[..4].to_vec();
        pieces.extend(["data: [DO", "NE]\n", "\n"]);
        registered_when_terminal_is_read(
            "/v1/chat/completions",
            "text/event-stream",
            false,
            &pieces,
            "[DONE]",
            "chatcmpl-1",
        )
        .await;
    }

    #[tokio::test]
    async fn openai_done_in_one_chunk_with_everything() {
        let all: &'static str = CHAT.concat().leak();
        registered_when_terminal_is_read(
            "/v1/chat/completions",
            "text/event-stream",
            false,
            &[all],
            "[DONE]",
            "chatcmpl-1",
        )
        .await;
    }

    const ANTHROPIC: &[&str] = &[
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-x\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ];

    #[tokio::test]
    async fn anthropic_message_stop() {
        registered_when_terminal_is_read(
            "/v1/messages",
            "text/event-stream",
            false,
            ANTHROPIC,
            "message_stop",
            "msg_1",
        )
        .await;
    }

    fn responses(terminal: &'static str) -> Vec<&'static str> {
        vec![
            "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"model\":\"o-x\"}}\n\n",
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n",
            terminal,
        ]
    }

    #[tokio::test]
    async fn responses_completed_incomplete_failed() {
        for (terminal, name) in [
            (
                "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\"}}\n\n",
                "response.completed",
            ),
            (
                "event: response.incomplete\ndata: {\"type\":\"response.incomplete\",\"response\":{\"id\":\"resp_1\"}}\n\n",
                "response.incomplete",
            ),
            (
                "event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"id\":\"resp_1\"}}\n\n",
                "response.failed",
            ),
        ] {
            registered_when_terminal_is_read(
                "/v1/responses",
                "text/event-stream",
                false,
                &responses(terminal),
                name,
                "resp_1",
            )
            .await;
        }
    }

    #[tokio::test]
    async fn ollama_done_true() {
        // Ollama's native API sends no id; an Ollama-compatible server that does gets a record.
        registered_when_terminal_is_read(
            "/api/chat",
            "application/x-ndjson",
            true,
            &[
                "{\"id\":\"ollama-1\",\"model\":\"llama3\",\"message\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"done\":false}\n",
                "{\"id\":\"ollama-1\",\"model\":\"llama3\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done_reason\":\"stop\",\"done\":true}\n",
            ],
            "\"done\":true",
            "ollama-1",
        )
        .await;
    }

    #[tokio::test]
    async fn gemini_without_terminal_event_is_registered_before_the_end_is_seen() {
        let registry = DigestRegistry::new();
        let layer = SseLayer::new().observer(DigestObserver::with_registry(registry.clone()));
        let (upstream, body) = channel();
        let pieces = [
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}]}}],\"modelVersion\":\"gemini-x\",\"responseId\":\"gem-1\"}\n\n",
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"!\"}]},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"totalTokenCount\":3},\"modelVersion\":\"gemini-x\",\"responseId\":\"gem-1\"}\n\n",
        ];
        for piece in pieces {
            upstream.send(data(piece)).unwrap();
        }
        let request = Request::builder()
            .uri("/v1beta/models/gemini-x:streamGenerateContent?alt=sse")
            .body(Empty::new())
            .unwrap();
        let res = serve_with(layer, request, response("text/event-stream", body)).await;
        let mut body = res.into_body();
        let mut received = Vec::new();
        for _ in 0..2 {
            let frame = body.frame().await.unwrap().unwrap();
            received.extend_from_slice(&frame.into_data().unwrap());
            assert!(
                registry.get(Tenant::anonymous(), "gem-1").is_none(),
                "not before the end"
            );
        }
        drop(upstream);
        assert!(body.frame().await.is_none());
        let record = registry
            .get(Tenant::anonymous(), "gem-1")
            .expect("a record when the end is seen");
        assert_eq!(record.response_digest, Digest::of(&received));
        assert_eq!(record.model.as_deref(), Some("gemini-x"));
    }

    #[tokio::test]
    async fn bytes_after_the_terminal_event_update_the_record() {
        let registry = DigestRegistry::new();
        let reports = Reports::default();
        let layer = SseLayer::new()
            .observer(DigestObserver::with_registry(registry.clone()))
            .on_end(reports.sink());
        let (upstream, body) = channel();
        for piece in CHAT {
            upstream.send(data(piece)).unwrap();
        }
        upstream.send(data(": trailing comment\n\n")).unwrap();
        upstream.send(Err(UpstreamFailed)).unwrap();
        let request = Request::builder()
            .uri("/v1/chat/completions")
            .body(Empty::new())
            .unwrap();
        let res = serve_with(layer, request, response("text/event-stream", body)).await;
        let collected = collect(res.into_body()).await;
        assert!(collected.text().contains("event: error"));
        let report = reports.one();
        assert_eq!(report.outcome, Outcome::UpstreamError);
        let record = registry.get(Tenant::anonymous(), "chatcmpl-1").unwrap();
        assert_eq!(record.response_digest, Digest::of(&collected.data));
        assert_eq!(report.digest, Some(record.response_digest));
    }

    #[tokio::test]
    async fn no_response_id_means_no_record_and_the_report_says_so() {
        let registry = DigestRegistry::new();
        let reports = Reports::default();
        let layer = SseLayer::new()
            .observer(DigestObserver::with_registry(registry.clone()))
            .on_end(reports.sink());
        let res = serve(
            layer,
            response(
                "text/event-stream",
                Full::new(Bytes::from_static(
                    b"data: {\"text\":\"hi\"}\n\ndata: [DONE]\n\n",
                )),
            ),
        )
        .await;
        collect(res.into_body()).await;
        let report = reports.one();
        assert!(report.digest.is_some());
        assert_eq!(
            report.extensions.get::<DigestRegistration>(),
            Some(&DigestRegistration::NoResponseId)
        );
        registry.run_pending_tasks();
        assert_eq!(registry.entry_count(), 0);
    }

    #[tokio::test]
    async fn overlong_ids_are_not_recorded_and_repeated_ids_replace() {
        let registry = DigestRegistry::builder().max_id_len(16).build();
        let run = |body: &'static str| {
            let registry = registry.clone();
            async move {
                let reports = Reports::default();
                let layer = SseLayer::new()
                    .observer(DigestObserver::with_registry(registry))
                    .on_end(reports.sink());
                let res = serve(
                    layer,
                    response(
                        "text/event-stream",
                        Full::new(Bytes::from_static(body.as_bytes())),
                    ),
                )
                .await;
                let collected = collect(res.into_body()).await;
                (reports.one(), collected.data)
            }
        };
        let (report, _) =
            run("data: {\"id\":\"chatcmpl-this-id-is-far-too-long\"}\n\ndata: [DONE]\n\n").await;
        assert_eq!(
            report.extensions.get::<DigestRegistration>(),
            Some(&DigestRegistration::ResponseIdTooLong)
        );
        assert!(
            registry
                .get(Tenant::anonymous(), "chatcmpl-this-id-is-far-too-long")
                .is_none()
        );

        let (first, _) = run("data: {\"id\":\"dup\",\"n\":1}\n\ndata: [DONE]\n\n").await;
        let (second, bytes) = run("data: {\"id\":\"dup\",\"n\":2}\n\ndata: [DONE]\n\n").await;
        assert_ne!(first.digest, second.digest);
        let record = registry.get(Tenant::anonymous(), "dup").unwrap();
        assert_eq!(
            record.response_digest,
            Digest::of(&bytes),
            "last writer wins"
        );
    }

    #[tokio::test]
    async fn registry_evicts_beyond_its_capacity_newest_kept() {
        let registry = DigestRegistry::builder().max_capacity(10).build();
        for i in 0..200 {
            assert!(registry.insert(DigestRecord::new(format!("id-{i}"), Digest::of(&[i as u8]))));
        }
        registry.run_pending_tasks();
        assert!(registry.entry_count() <= 10, "{}", registry.entry_count());
        let record = registry
            .get(Tenant::anonymous(), "id-199")
            .expect("the newest record is kept");
        assert_eq!(record.response_digest, Digest::of(&[199]));
        assert!(registry.get(Tenant::anonymous(), "id-0").is_none());
        assert!(
            !registry.insert(DigestRecord::new("", Digest::of(b""))),
            "empty id"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn registry_forgets_records_after_their_time_to_live() {
        let registry = DigestRegistry::builder()
            .time_to_live(Duration::from_secs(60))
            .build();
        assert_eq!(registry.time_to_live(), Duration::from_secs(60));
        registry.insert(DigestRecord::new("a", Digest::of(b"a")));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(registry.get(Tenant::anonymous(), "a").is_some());
        registry.insert(DigestRecord::new("b", Digest::of(b"b")));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(registry.get(Tenant::anonymous(), "a").is_none(), "60 s old");
        assert!(registry.get(Tenant::anonymous(), "b").is_some());
        // Inserting again starts a new life.
        registry.insert(DigestRecord::new("a", Digest::of(b"a2")));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(
            registry
                .get(Tenant::anonymous(), "a")
                .unwrap()
                .response_digest,
            Digest::of(b"a2")
        );
        assert!(registry.get(Tenant::anonymous(), "b").is_none());
    }

    #[test]
    fn registry_defaults_are_bounded_and_huge_settings_do_not_panic() {
        let registry = DigestRegistry::new();
        assert_eq!(registry.max_capacity(), 10_000);
        assert_eq!(registry.time_to_live(), Duration::from_secs(600));
        assert_eq!(registry.max_id_len(), 256);
        let huge = DigestRegistry::builder()
            .time_to_live(Duration::MAX)
            .max_capacity(u64::MAX)
            .build();
        assert!(huge.time_to_live() <= Duration::from_secs(366 * 24 * 3600));
        let record = DigestRecord::new("x", Digest::of(b"x"));
        assert!(huge.insert(record.clone()));
        assert_eq!(huge.get(Tenant::anonymous(), "x"), Some(record));
    }

    // --- tenants ---

    fn with_auth(name: &str, value: &str) -> Request<Empty<Bytes>> {
        Request::builder()
            .method("POST")
            .uri("/v1/chat/completions")
            .header(name, value)
            .body(Empty::new())
            .unwrap()
    }

    #[test]
    fn tenant_is_a_truncated_sha256_of_the_credential_never_the_credential() {
        let tenant =
            |name: &str, value: &str| Tenant::from_credentials(with_auth(name, value).headers());
        let alice = Tenant::from_key("sk-alice");
        // The first 16 bytes of SHA-256, shown as 32 hex digits.
        let sha = Digest::of(b"sk-alice").to_hex();
        assert_eq!(alice.to_string(), sha[..32]);
        assert_eq!(alice.as_bytes().map(|b| b.len()), Some(16));
        // The scheme in any case, spaces around the token, or as x-api-key: the same tenant.
        assert_eq!(tenant("authorization", "Bearer sk-alice"), alice);
        assert_eq!(tenant("authorization", "bearer   sk-alice "), alice);
        assert_eq!(tenant("authorization", "BEARER sk-alice"), alice);
        assert_eq!(tenant("x-api-key", "sk-alice"), alice);
        // Another token, another tenant; other schemes hash their whole value.
        assert_ne!(tenant("authorization", "Bearer sk-bob"), alice);
        assert_ne!(tenant("authorization", "Bearersk-alice"), alice);
        assert_eq!(
            tenant("authorization", "Basic YWxpY2U6cHc="),
            Tenant::from_key("Basic YWxpY2U6cHc=")
        );
        // No credential, or an empty one: anonymous.
        assert!(tenant("x-other", "sk-alice").is_anonymous());
        assert!(tenant("authorization", "Bearer ").is_anonymous());
        assert!(tenant("authorization", "   ").is_anonymous());
        assert!(Tenant::anonymous().as_bytes().is_none());
        // Authorization wins over x-api-key.
        let both = Request::builder()
            .header("authorization", "Bearer sk-alice")
            .header("x-api-key", "sk-bob")
            .body(())
            .unwrap();
        assert_eq!(Tenant::from_credentials(both.headers()), alice);
        // Nothing shows the token.
        for shown in [
            alice.to_string(),
            format!("{alice:?}"),
            serde_json::to_string(&alice).unwrap(),
        ] {
            assert!(!shown.contains("alice"), "{shown}");
        }
        assert_eq!(serde_json::to_string(&Tenant::anonymous()).unwrap(), "null");
        assert_eq!(Tenant::anonymous().to_string(), "anonymous");
        // The default key is the credentials.
        let (parts, _) = with_auth("authorization", "Bearer sk-alice").into_parts();
        assert_eq!(TenantKey::default().tenant(&parts), alice);
        assert_eq!(DigestRegistry::new().tenant_of(&parts), alice);
    }

    /// Feed one whole stream for `request` through a layer recording into `registry`.
    async fn stream_as(
        registry: &DigestRegistry,
        request: Request<Empty<Bytes>>,
        body: &'static str,
    ) -> (StreamReport, Vec<u8>) {
        let reports = Reports::default();
        let layer = SseLayer::new()
            .observer(DigestObserver::with_registry(registry.clone()))
            .on_end(reports.sink());
        let res = serve_with(
            layer,
            request,
            response(
                "text/event-stream",
                Full::new(Bytes::from_static(body.as_bytes())),
            ),
        )
        .await;
        let collected = collect(res.into_body()).await;
        (reports.one(), collected.data)
    }

    #[tokio::test]
    async fn one_tenants_stream_never_replaces_anothers_record() {
        let registry = DigestRegistry::new();
        let alice = Tenant::from_key("sk-alice");
        let bob = Tenant::from_key("sk-bob");
        // Both upstream answers carry the same id (Ollama's ids repeat across clients).
        let (_, alices) = stream_as(
            &registry,
            with_auth("authorization", "Bearer sk-alice"),
            "data: {\"id\":\"chatcmpl-7\",\"n\":\"alice\"}\n\ndata: [DONE]\n\n",
        )
        .await;
        let (_, bobs) = stream_as(
            &registry,
            with_auth("authorization", "Bearer sk-bob"),
            "data: {\"id\":\"chatcmpl-7\",\"n\":\"bob\"}\n\ndata: [DONE]\n\n",
        )
        .await;
        let (_, nobodys) = stream_as(
            &registry,
            Request::new(Empty::new()),
            "data: {\"id\":\"chatcmpl-7\",\"n\":\"nobody\"}\n\ndata: [DONE]\n\n",
        )
        .await;
        let record = registry.get(alice, "chatcmpl-7").unwrap();
        assert_eq!(record.response_digest, Digest::of(&alices));
        assert_eq!(record.tenant, alice);
        let json: serde_json::Value = serde_json::from_str(&record.to_json()).unwrap();
        assert_eq!(json["tenant"], alice.to_string().as_str());
        let record = registry.get(bob, "chatcmpl-7").unwrap();
        assert_eq!(record.response_digest, Digest::of(&bobs));
        let record = registry.get(Tenant::anonymous(), "chatcmpl-7").unwrap();
        assert_eq!(record.response_digest, Digest::of(&nobodys));
        assert!(
            registry
                .get(Tenant::from_key("sk-eve"), "chatcmpl-7")
                .is_none()
        );
        registry.run_pending_tasks();
        assert_eq!(registry.entry_count(), 3);

        // Removing is per tenant too.
        assert!(registry.remove(bob, "chatcmpl-7").is_some());
        assert!(registry.get(bob, "chatcmpl-7").is_none());
        assert!(registry.get(alice, "chatcmpl-7").is_some());
    }

    #[tokio::test]
    async fn a_custom_tenant_key_decides_where_records_go() {
        // Key by an organisation header that an authenticating proxy in front sets.
        let registry = DigestRegistry::builder()
            .tenant_key(TenantKey::from_fn(|request: &http::request::Parts| {
                request
                    .headers
                    .get("x-org")
                    .map_or(Tenant::anonymous(), |org| Tenant::from_key(org.as_bytes()))
            }))
            .build();
        let (_, bytes) = stream_as(
            &registry,
            with_auth("x-org", "acme"),
            "data: {\"id\":\"chatcmpl-1\"}\n\ndata: [DONE]\n\n",
        )
        .await;
        let acme = Tenant::from_key("acme");
        assert_eq!(
            registry.get(acme, "chatcmpl-1").unwrap().response_digest,
            Digest::of(&bytes)
        );
        assert!(registry.get(Tenant::anonymous(), "chatcmpl-1").is_none());
        let (parts, _) = with_auth("x-org", "acme").into_parts();
        assert_eq!(registry.tenant_of(&parts), acme);
        assert_eq!(
            format!("{:?}", registry.tenant_key()),
            "TenantKey::from_fn(..)"
        );
    }

    /// The real thing: a client reads to `[DONE]` over loopback, then at once asks
    /// `GET /v1/digests/{id}`, while the upstream is still open.
    #[tokio::test]
    async fn real_client_finds_the_digest_right_after_done() {
        let registry = DigestRegistry::new();
        let (route, mut upstreams) = channel_route("text/event-stream");
        let streams = Router::new().route("/v1/chat/completions", route).layer(
            ServiceBuilder::new()
                .layer(RequestDigestLayer::new())
                .layer(
                    SseLayer::new()
                        .keep_alive(KeepAliveConfig::new())
                        .observer(DigestObserver::with_registry(registry.clone())),
                ),
        );
        let digests = Router::new()
            .route(
                "/v1/digests/{id}",
                get(
                    |State(registry): State<DigestRegistry>,
                     Path(id): Path<String>,
                     request: http::request::Parts| async move {
                        match registry.get(registry.tenant_of(&request), &id) {
                            Some(record) => Response::builder()
                                .header("content-type", "application/json")
                                .body(AxumBody::from(record.to_json()))
                                .unwrap(),
                            None => Response::builder()
                                .status(404)
                                .body(AxumBody::empty())
                                .unwrap(),
                        }
                    },
                ),
            )
            .with_state(registry.clone());
        let addr = serve_axum(streams.merge(digests)).await;
        let client = reqwest::Client::new();

        let mut response = client
            .post(format!("http://{addr}/v1/chat/completions"))
            .bearer_auth("sk-alice")
            .body(REQUEST.concat())
            .send()
            .await
            .unwrap();
        let upstream = upstreams.recv().await.unwrap();
        for piece in CHAT {
            upstream.send(data(piece)).unwrap();
        }
        let mut received = Vec::new();
        while !String::from_utf8_lossy(&received).contains("data: [DONE]\n\n") {
            received.extend_from_slice(&response.chunk().await.unwrap().unwrap());
        }
        let lookup = client
            .get(format!("http://{addr}/v1/digests/chatcmpl-1"))
            .bearer_auth("sk-alice")
            .send()
            .await
            .unwrap();
        assert_eq!(lookup.status(), 200);
        // Another tenant, and no tenant, find nothing.
        for other in [Some("sk-bob"), None] {
            let mut foreign = client.get(format!("http://{addr}/v1/digests/chatcmpl-1"));
            if let Some(token) = other {
                foreign = foreign.bearer_auth(token);
            }
            assert_eq!(foreign.send().await.unwrap().status(), 404, "{other:?}");
        }
        let record: serde_json::Value =
            serde_json::from_slice(&lookup.bytes().await.unwrap()).unwrap();
        assert_eq!(record["response_id"], "chatcmpl-1");
        assert_eq!(record["model"], "gpt-x");
        assert_eq!(record["response_digest"], Digest::of(&received).to_hex());
        // The handler never read the request body: no request digest.
        assert_eq!(record["request_digest"], serde_json::Value::Null);
        assert!(record["finished_at"].as_str().unwrap().ends_with('Z'));
        drop(upstream);
    }

    /// Issue 23, item 10: Gemini users, whose key is `x-goog-api-key` or `?key=`, are
    /// tenants of their own: one cannot read the other's record,
    /// over a real server and client.
    #[tokio::test]
    async fn gemini_users_cannot_read_each_others_records() {
        let registry = DigestRegistry::new();
        let (route, mut upstreams) = channel_route("text/event-stream");
        let streams = Router::new().route("/v1beta/models/{action}", route).layer(
            ServiceBuilder::new()
                .layer(RequestDigestLayer::new())
                .layer(SseLayer::new().observer(DigestObserver::with_registry(registry.clone()))),
        );
        let digests = Router::new()
            .route(
                "/v1/digests/{id}",
                get(
                    |State(registry): State<DigestRegistry>,
                     Path(id): Path<String>,
                     request: http::request::Parts| async move {
                        match registry.get(registry.tenant_of(&request), &id) {
                            Some(record) => (StatusCode::OK, record.to_json()),
                            None => (StatusCode::NOT_FOUND, String::new()),
                        }
                    },
                ),
            )
            .with_state(registry.clone());
        let addr = serve_axum(streams.merge(digests)).await;
        let client = reqwest::Client::new();
        let stream_url =
            format!("http://{addr}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse");

        // Alice streams with her key in `x-goog-api-key`: the upstream reads the whole body.
        let response = client
            .post(&stream_url)
            .header("x-goog-api-key", "AIza-alice")
            .body(r#"{"contents":[{"parts":[{"text":"secret"}]}]}"#)
            .send();
        let feed = async {
            let upstream = upstreams.recv().await.unwrap();
            upstream
                .send(data(
                    "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"hi\"}]},\"finishReason\":\"STOP\"}],\"responseId\":\"gem-1\"}\n\n",
                ))
                .unwrap();
        };
        let (response, ()) = tokio::join!(response, feed);
        let received = response.unwrap().bytes().await.unwrap();
        assert!(!received.is_empty());

        let lookup = |key: Option<(&'static str, &'static str)>, query: &'static str| {
            let mut request = client.get(format!("http://{addr}/v1/digests/gem-1{query}"));
            if let Some((name, value)) = key {
                request = request.header(name, value);
            }
            async move {
                let response = request.send().await.unwrap();
                (response.status(), response.text().await.unwrap())
            }
        };
        // Alice finds her record, with her key as a header or as `?key=`.
        let (status, text) = lookup(Some(("x-goog-api-key", "AIza-alice")), "").await;
        assert_eq!(status, StatusCode::OK);
        let record: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(record["response_digest"], Digest::of(&received).to_hex());
        assert_eq!(lookup(None, "?key=AIza-alice").await.0, StatusCode::OK);
        // Bob, with his own Gemini key in either place, and nobody, find nothing.
        for (key, query) in [
            (Some(("x-goog-api-key", "AIza-bob")), ""),
            (None, "?key=AIza-bob"),
            (None, ""),
        ] {
            assert_eq!(
                lookup(key, query).await.0,
                StatusCode::NOT_FOUND,
                "{key:?} {query}"
            );
        }
        // Never the key itself.
        assert!(!text.contains("AIza"));
        let alice = Tenant::from_key("AIza-alice");
        assert!(registry.get(alice, "gem-1").is_some());
        assert!(registry.get(Tenant::anonymous(), "gem-1").is_none());
    }

    #[test]
    fn every_providers_credential_is_a_tenant_in_the_documented_order() {
        let parts = |uri: &str, headers: &[(&str, &str)]| {
            let mut builder = Request::post(uri);
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            builder.body(()).unwrap().into_parts().0
        };
        let key = TenantKey::default();
        let alice = Tenant::from_key("k-alice");
        for (name, value) in [
            ("authorization", "Bearer k-alice"),
            ("x-api-key", "k-alice"),
            ("x-goog-api-key", "k-alice"),
            ("api-key", "k-alice"),
        ] {
            assert_eq!(key.tenant(&parts("/", &[(name, value)])), alice, "{name}");
        }
        assert_eq!(
            key.tenant(&parts("/m:streamGenerateContent?alt=sse&key=k-alice", &[])),
            alice
        );
        // Percent-encoded in the query: the same key.
        assert_eq!(key.tenant(&parts("/?key=k%2Dalice", &[])), alice);
        assert!(key.tenant(&parts("/?key=", &[])).is_anonymous());
        assert!(key.tenant(&parts("/?monkey=k-alice", &[])).is_anonymous());
        // The order: Authorization, x-api-key, x-goog-api-key, `key`, api-key.
        let order = [
            ("authorization", "Bearer k-1"),
            ("x-api-key", "k-2"),
            ("x-goog-api-key", "k-3"),
        ];
        for first in 0..order.len() {
            let request = parts("/?key=k-4", &order[first..]);
            let expected = format!("k-{}", first + 1);
            assert_eq!(
                key.tenant(&request),
                Tenant::from_key(&expected),
                "{expected}"
            );
        }
        assert_eq!(
            key.tenant(&parts("/?key=k-4", &[("api-key", "k-5")])),
            Tenant::from_key("k-4")
        );
        assert_eq!(
            key.tenant(&parts("/", &[("api-key", "k-5")])),
            Tenant::from_key("k-5")
        );
        // Headers only: `from_credentials` reads no query.
        assert!(Tenant::from_credentials(&parts("/?key=k-4", &[]).headers).is_anonymous());
    }
}
