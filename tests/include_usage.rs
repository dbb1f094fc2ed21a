//! `IncludeUsageLayer` around real services: what the inner service receives, and the
//! whole path in which the upstream's extra usage chunk is read for the report but hidden
//! from a client that did not ask for it.

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use support::body::{Reports, collect};
use tower::{ServiceBuilder, ServiceExt};
use tower_sse::include_usage::Oversized;
use tower_sse::request::RequestModel;
use tower_sse::request::{StreamingRequest, UsageInjected};
use tower_sse::{IncludeUsageLayer, SseLayer, UsageObserver};

/// What the inner service saw.
#[derive(Debug, Default, Clone)]
struct Seen {
    body: String,
    content_length: Option<String>,
    streaming: bool,
    injected: bool,
    model: Option<String>,
}

/// An inner service that records its request and answers 200.
fn recorder(
    seen: Arc<Mutex<Seen>>,
) -> impl tower::Service<
    Request<tower_sse::include_usage::UsageRequestBody<Full<Bytes>>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(
        move |request: Request<tower_sse::include_usage::UsageRequestBody<Full<Bytes>>>| {
            let seen = seen.clone();
            async move {
                let (parts, body) = request.into_parts();
                let bytes = body.collect().await.unwrap().to_bytes();
                *seen.lock().unwrap() = Seen {
                    body: String::from_utf8_lossy(&bytes).into_owned(),
                    content_length: parts
                        .headers
                        .get("content-length")
                        .map(|v| v.to_str().unwrap().to_string()),
                    streaming: parts.extensions.get::<StreamingRequest>().is_some(),
                    injected: parts.extensions.get::<UsageInjected>().is_some(),
                    model: parts.extensions.get::<RequestModel>().map(|m| m.0.clone()),
                };
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }
        },
    )
}

async fn send(layer: IncludeUsageLayer, path: &str, body: &str) -> (StatusCode, Seen) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(recorder(seen.clone()));
    let request = Request::post(path)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    let status = response.status();
    let seen = seen.lock().unwrap().clone();
    (status, seen)
}

#[tokio::test]
async fn streaming_chat_request_gets_include_usage_and_a_new_content_length() {
    let body = r#"{"model":"gpt-4o","stream":true,"messages":[]}"#;
    let (status, seen) = send(IncludeUsageLayer::new(), "/v1/chat/completions", body).await;
    assert_eq!(status, 200);
    assert_eq!(
        seen.body,
        r#"{"stream_options":{"include_usage":true},"model":"gpt-4o","stream":true,"messages":[]}"#
    );
    assert_eq!(
        seen.content_length.as_deref(),
        Some(seen.body.len().to_string().as_str())
    );
    assert!(seen.streaming && seen.injected);
    assert_eq!(seen.model.as_deref(), Some("gpt-4o"));
}

#[tokio::test]
async fn requests_that_asked_or_do_not_stream_are_untouched() {
    for (path, body, streaming) in [
        (
            "/v1/chat/completions",
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            true,
        ),
        ("/v1/chat/completions", r#"{"stream":false}"#, false),
        ("/v1/responses", r#"{"model":"o3","stream":true}"#, false),
        ("/v1/embeddings", r#"{"stream":true}"#, false),
    ] {
        let (_, seen) = send(IncludeUsageLayer::new(), path, body).await;
        assert_eq!(seen.body, body, "{path}");
        assert!(!seen.injected, "{path}");
        assert_eq!(seen.streaming, streaming, "{path}");
    }
}

#[tokio::test]
async fn oversized_bodies_pass_through_whole_or_get_a_413() {
    let body = format!(r#"{{"stream":true,"messages":["{}"]}}"#, "x".repeat(200));
    let (status, seen) = send(
        IncludeUsageLayer::new().max_request_size(64),
        "/v1/chat/completions",
        &body,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(seen.body, body, "forwarded unchanged, every byte");
    assert!(!seen.injected);

    let layer = IncludeUsageLayer::new()
        .max_request_size(64)
        .oversized(Oversized::Reject);
    let (status, _) = send(layer, "/v1/chat/completions", &body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_request_body_that_fails_gets_a_400() {
    let inner = tower::service_fn(|_: Request<_>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    });
    let service = ServiceBuilder::new()
        .layer(IncludeUsageLayer::new())
        .service(inner);
    let failing = StreamBody::new(futures_util::stream::iter(vec![
        Ok(Frame::data(Bytes::from_static(b"{\"stream\":"))),
        Err(std::io::Error::other("client went away")),
    ]));
    let request = Request::post("/v1/chat/completions").body(failing).unwrap();
    let response: Response<_> = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

/// An upstream that honours `stream_options.include_usage`, as OpenAI does.
async fn upstream(
    request: Request<tower_sse::include_usage::UsageRequestBody<Full<Bytes>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let asked = String::from_utf8_lossy(&body).contains(r#""include_usage":true"#);
    let chunk = |delta: &str, usage: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{{\"index\":0,\"delta\":{delta}}}]{usage}}}\n\n"
        )
    };
    let usage_field = if asked { ",\"usage\":null" } else { "" };
    let mut stream = chunk(r#"{"content":"Hi"}"#, usage_field);
    if asked {
        stream.push_str("data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":1,\"total_tokens\":8}}\n\n");
    }
    stream.push_str("data: [DONE]\n\n");
    Ok(Response::builder()
        .header("content-type", "text/event-stream")
        .body(Full::new(Bytes::from(stream)))
        .unwrap())
}

#[tokio::test]
async fn injected_usage_reaches_the_report_but_not_the_client() {
    for client_asks in [false, true] {
        let reports = Reports::default();
        let service = ServiceBuilder::new()
            .layer(IncludeUsageLayer::new())
            .layer(
                SseLayer::new()
                    .observer(UsageObserver::new())
                    .on_end(reports.sink()),
            )
            .service(tower::service_fn(upstream));
        let body = if client_asks {
            r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true}}"#
        } else {
            r#"{"model":"gpt-4o","stream":true}"#
        };
        let request = Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        let text = collect(response.into_body()).await.text();
        assert_eq!(text.contains("\"choices\":[]"), client_asks, "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"));
        let usage = reports.one().usage.expect("usage in the report");
        assert_eq!(
            (usage.input_tokens, usage.output_tokens),
            (Some(7), Some(1))
        );
    }
}
