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
use support::body::{FramesBody, Reports, collect};
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
fn recorder<B>(
    seen: Arc<Mutex<Seen>>,
) -> impl tower::Service<
    Request<tower_sse::include_usage::UsageRequestBody<B>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tower_sse::BoxError>,
{
    tower::service_fn(
        move |request: Request<tower_sse::include_usage::UsageRequestBody<B>>| {
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

/// [`send`], with the body cut at `cuts` (byte offsets) into frames.
async fn send_frames(
    layer: IncludeUsageLayer,
    body: &str,
    cuts: &[usize],
    announced: bool,
) -> (StatusCode, Seen) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(recorder(seen.clone()));
    let bytes = Bytes::from(body.to_string());
    let mut at = 0;
    let mut frames = Vec::new();
    for &cut in cuts.iter().chain([&bytes.len()]) {
        let cut = cut.clamp(at, bytes.len());
        frames.push(Ok(Frame::data(bytes.slice(at..cut))));
        at = cut;
    }
    let mut request =
        Request::post("/v1/chat/completions").header("content-type", "application/json");
    if announced {
        request = request.header("content-length", body.len());
    }
    let mut upload = FramesBody::new(frames, false);
    if announced {
        upload = upload.announced();
    }
    let response = service
        .oneshot(request.body(upload).unwrap())
        .await
        .unwrap();
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
        // Read (a stream, bounded upload) but never changed: Responses rejects the option.
        ("/v1/responses", r#"{"model":"o3","stream":true}"#, true),
        ("/v1/messages", r#"{"model":"claude","stream":true}"#, true),
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
    request: Request<
        tower_sse::request::UploadBody<tower_sse::include_usage::UsageRequestBody<Full<Bytes>>>,
    >,
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

/// A chat request in which `"stream_options"` occurs only below the top level: in a message
/// text, as a tool's name and as a property of two JSON schemas (whose properties are not
/// sorted), with an integer too large for any number type.
const NESTED_ONLY: &str = concat!(
    r#"{"model":"gpt-4o", "stream":true,"#,
    "\n  ",
    r#""messages":[{"role":"user","content":"set \"stream_options\": {\"include_usage\": false}"}],"#,
    "\n  ",
    r#""tools":[{"type":"function","function":{"name":"stream_options","parameters":{"type":"object","#,
    r#""properties":{"zeta":{"type":"integer","maximum":123456789012345678901234567890},"#,
    r#""stream_options":{"type":"object"},"alpha":{"type":"string"}}}}}],"#,
    "\n  ",
    r#""response_format":{"type":"json_schema","json_schema":{"name":"out","strict":true,"schema":{"#,
    r#""type":"object","properties":{"zeta":{"type":"number"},"stream_options":{"type":"boolean"},"#,
    r#""alpha":{"type":"string"}},"required":["zeta","stream_options","alpha"]}}}"#,
    "\n}"
);

#[tokio::test]
async fn stream_options_below_the_top_level_do_not_count_and_every_byte_is_kept() {
    let (status, seen) = send(
        IncludeUsageLayer::new(),
        "/v1/chat/completions",
        NESTED_ONLY,
    )
    .await;
    assert_eq!(status, 200);
    let expected = format!(
        r#"{{"stream_options":{{"include_usage":true}},{}"#,
        &NESTED_ONLY[1..]
    );
    assert_eq!(seen.body, expected);
    assert!(seen.body.contains("123456789012345678901234567890"));
    assert_eq!(
        seen.content_length.as_deref(),
        Some(expected.len().to_string().as_str())
    );
    assert!(seen.streaming && seen.injected);
    assert_eq!(seen.model.as_deref(), Some("gpt-4o"));
}

/// A structured-output schema whose property order matters to the model, and a big integer.
const SCHEMA: &str = r#""response_format":{"type":"json_schema","json_schema":{"name":"s","schema":{"type":"object","properties":{"zeta":{"type":"integer","maximum":123456789012345678901234567890},"alpha":{"type":"string"}}}}}"#;

#[tokio::test]
async fn a_top_level_stream_options_object_gets_only_the_missing_member_spliced_in() {
    let body = format!(
        r#"{{"stream_options":{{"continuous_usage_stats":false}},"model":"m","stream":true,{SCHEMA}}}"#
    );
    let (_, seen) = send(IncludeUsageLayer::new(), "/v1/chat/completions", &body).await;
    let expected = format!(
        r#"{{"stream_options":{{"include_usage":true,"continuous_usage_stats":false}},"model":"m","stream":true,{SCHEMA}}}"#
    );
    assert_eq!(seen.body, expected);
    assert_eq!(
        seen.content_length.as_deref(),
        Some(expected.len().to_string().as_str())
    );
    assert!(seen.streaming && seen.injected);
}

#[tokio::test]
async fn include_usage_false_is_the_only_value_changed() {
    let body = format!(
        "{{\"model\":\"m\",\"stream\":true,\"stream_options\": {{\n  \"include_usage\" : false ,\n  \"zz\":1\n}},{SCHEMA}}}"
    );
    let (_, seen) = send(IncludeUsageLayer::new(), "/v1/chat/completions", &body).await;
    let expected = body.replacen("false", "true", 1);
    assert_eq!(seen.body, expected);
    assert_eq!(
        seen.content_length.as_deref(),
        Some(expected.len().to_string().as_str())
    );
    assert!(seen.streaming && seen.injected);
}

#[tokio::test]
async fn every_shape_of_stream_options_is_completed_in_place() {
    let plain = IncludeUsageLayer::new;
    let continuous = || IncludeUsageLayer::new().continuous_usage_stats(true);
    // (layer, client's body, body upstream, whether the usage chunk is the layer's)
    let cases: [(IncludeUsageLayer, &str, &str, bool); 9] = [
        (
            plain(),
            r#"{ "stream" : true , "stream_options" : { } }"#,
            r#"{ "stream" : true , "stream_options" : {"include_usage":true } }"#,
            true,
        ),
        (
            plain(),
            r#"{"stream":true,"stream_options":null,"n":123456789012345678901234567890}"#,
            r#"{"stream":true,"stream_options":{"include_usage":true},"n":123456789012345678901234567890}"#,
            true,
        ),
        (
            plain(),
            r#"{"stream":true,"stream_options":{"include_usage":null,"b":0,"a":1}}"#,
            r#"{"stream":true,"stream_options":{"include_usage":true,"b":0,"a":1}}"#,
            true,
        ),
        (
            plain(),
            r#"{"stream":true,"stream\u005foptions":{"b":1}}"#,
            r#"{"stream":true,"stream\u005foptions":{"include_usage":true,"b":1}}"#,
            true,
        ),
        (
            continuous(),
            r#"{"stream":true,"b":1}"#,
            r#"{"stream_options":{"include_usage":true,"continuous_usage_stats":true},"stream":true,"b":1}"#,
            true,
        ),
        (
            continuous(),
            r#"{"stream":true,"stream_options":{"include_usage":true,"b":1}}"#,
            r#"{"stream":true,"stream_options":{"continuous_usage_stats":true,"include_usage":true,"b":1}}"#,
            false,
        ),
        (
            continuous(),
            r#"{"stream":true,"stream_options":{"b":1,"continuous_usage_stats":false}}"#,
            r#"{"stream":true,"stream_options":{"include_usage":true,"b":1,"continuous_usage_stats":true}}"#,
            true,
        ),
        (
            continuous(),
            r#"{"stream":true,"stream_options":{}}"#,
            r#"{"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}"#,
            true,
        ),
        (
            continuous(),
            r#"{"stream":true,"stream_options":null}"#,
            r#"{"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}"#,
            true,
        ),
    ];
    for (layer, body, expected, injected) in cases {
        let (_, seen) = send(layer, "/v1/chat/completions", body).await;
        assert_eq!(seen.body, expected, "{body}");
        assert_eq!(
            seen.content_length.as_deref(),
            Some(expected.len().to_string().as_str()),
            "{body}"
        );
        assert_eq!(seen.injected, injected, "{body}");
        assert!(seen.streaming, "{body}");
    }
}

/// `{"model":"gpt-4o","stream":true,"messages":[]}`, gzipped.
const GZIPPED: [u8; 66] = [
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0xab, 0x56, 0xca, 0xcd, 0x4f, 0x49,
    0xcd, 0x51, 0xb2, 0x52, 0x4a, 0x2f, 0x28, 0xd1, 0x35, 0xc9, 0x57, 0xd2, 0x51, 0x2a, 0x2e, 0x29,
    0x4a, 0x4d, 0xcc, 0x55, 0xb2, 0x2a, 0x29, 0x2a, 0x4d, 0xd5, 0x51, 0xca, 0x4d, 0x2d, 0x2e, 0x4e,
    0x4c, 0x4f, 0x2d, 0x56, 0xb2, 0x8a, 0x8e, 0xad, 0x05, 0x00, 0xe5, 0x3c, 0x26, 0x97, 0x2e, 0x00,
    0x00, 0x00,
];

type ChannelBody = StreamBody<
    std::pin::Pin<
        Box<dyn futures_core::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + 'static>,
    >,
>;

/// A request body fed by the test, chunk by chunk.
fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, ChannelBody) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok(Frame::data(chunk)), rx))
    });
    (tx, StreamBody::new(Box::pin(stream)))
}

#[tokio::test]
async fn encoded_bodies_pass_through_unread_and_unchanged() {
    // The inner service says when it is called, then echoes the body it read.
    let (called_tx, called_rx) = tokio::sync::oneshot::channel::<Seen>();
    let called_tx = Arc::new(Mutex::new(Some(called_tx)));
    let inner = tower::service_fn(
        move |request: Request<tower_sse::include_usage::UsageRequestBody<ChannelBody>>| {
            let called_tx = called_tx.clone();
            async move {
                let (parts, body) = request.into_parts();
                let seen = Seen {
                    body: String::new(),
                    content_length: parts
                        .headers
                        .get("content-length")
                        .map(|v| v.to_str().unwrap().to_string()),
                    streaming: parts.extensions.get::<StreamingRequest>().is_some(),
                    injected: parts.extensions.get::<UsageInjected>().is_some(),
                    model: parts.extensions.get::<RequestModel>().map(|m| m.0.clone()),
                };
                if let Some(tx) = called_tx.lock().unwrap().take() {
                    let _ = tx.send(seen);
                }
                let bytes = body.collect().await.unwrap().to_bytes();
                Ok::<_, Infallible>(Response::new(Full::new(bytes)))
            }
        },
    );
    let service = ServiceBuilder::new()
        .layer(IncludeUsageLayer::new())
        .service(inner);
    let (tx, body) = channel_body();
    let request = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .header("content-length", GZIPPED.len())
        .body(body)
        .unwrap();
    tx.send(Bytes::copy_from_slice(&GZIPPED[..20]))
        .await
        .unwrap();
    let call = tokio::spawn(service.oneshot(request));
    let seen = tokio::time::timeout(std::time::Duration::from_secs(10), called_rx)
        .await
        .expect("the inner service is called before the body ends: the layer must not buffer it")
        .unwrap();
    assert_eq!(seen.content_length.as_deref(), Some("66"));
    assert!(!seen.streaming && !seen.injected && seen.model.is_none());
    tx.send(Bytes::copy_from_slice(&GZIPPED[20..]))
        .await
        .unwrap();
    drop(tx);
    let response = call.await.unwrap().unwrap();
    let upstream_got = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&upstream_got[..], &GZIPPED[..]);

    // Not parsed either: plain JSON that claims an encoding is left alone.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let service = ServiceBuilder::new()
        .layer(IncludeUsageLayer::new())
        .service(recorder(seen.clone()));
    let body = r#"{"model":"m","stream":true}"#;
    let request = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("content-encoding", "br")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    service.oneshot(request).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.body, body);
    assert!(!seen.streaming && !seen.injected && seen.content_length.is_none());
}

mod splice_props {
    //! For random JSON bodies: what reaches the upstream means the client's body plus the
    //! usage option, and every byte outside the top-level `stream_options` value (or the
    //! inserted member) is the client's.

    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256)
    }

    fn ws() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["", "", " ", "\n  ", "\t", "\r\n "])
    }

    /// Keys that matter at the top level, used below it, where they must not count.
    fn nested_key() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            r#""stream_options""#,
            r#""stream\u005foptions""#,
            r#""include_usage""#,
            r#""continuous_usage_stats""#,
            r#""stream""#,
            r#""model""#,
            r#""zeta""#,
            r#""alpha""#,
            r#""name""#,
        ])
    }

    /// Any JSON value, as text.
    fn value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            prop::sample::select(vec![
                "null",
                "true",
                "false",
                "123456789012345678901234567890",
                "-1.5e300",
                "0.1",
                r#""stream_options""#,
                r#""\"stream_options\":{}""#,
                r#""é😀\\\"}]""#,
                r#""""#,
            ])
            .prop_map(String::from),
            any::<i64>().prop_map(|n| n.to_string()),
            "[a-z_\"\\\\{}:, ]{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec((ws(), inner.clone(), ws()), 0..5).prop_map(|items| {
                    let items: Vec<String> = items
                        .into_iter()
                        .map(|(a, v, b)| format!("{a}{v}{b}"))
                        .collect();
                    format!("[{}]", items.join(","))
                }),
                prop::collection::vec((nested_key(), ws(), inner, ws()), 0..5).prop_map(
                    |members| {
                        let members: Vec<String> = members
                            .into_iter()
                            .map(|(k, a, v, b)| format!("{k}{a}:{a}{v}{b}"))
                            .collect();
                        format!("{{{}}}", members.join(","))
                    }
                ),
            ]
        })
    }

    /// A top-level `stream_options` value.
    fn options() -> impl Strategy<Value = String> {
        let flag = || prop::option::of(prop::sample::select(vec!["true", "false", "null"]));
        prop_oneof![
            1 => Just("null".to_string()),
            4 => (flag(), flag(), any::<bool>(), ws(), ws()).prop_map(
                |(usage, continuous, extra, a, b)| {
                    let mut members = Vec::new();
                    if extra {
                        members.push(format!(r#"{a}"stream_options"{b}:{b}{{"include_usage":false}}"#));
                    }
                    if let Some(v) = usage {
                        members.push(format!(r#"{a}"include_usage"{b}:{a}{v}{b}"#));
                    }
                    if let Some(v) = continuous {
                        members.push(format!(r#"{b}"continuous_usage_stats":{a}{v}"#));
                    }
                    format!("{{{a}{}{b}}}", members.join(","))
                }
            ),
        ]
    }

    /// A chat request: its text, and where the value of its top-level `stream_options` is.
    #[derive(Debug, Clone)]
    struct Case {
        body: String,
        options: Option<std::ops::Range<usize>>,
        streams: bool,
        continuous: bool,
    }

    fn case() -> impl Strategy<Value = Case> {
        let others = prop::collection::btree_map(
            prop::sample::select(vec![
                r#""messages""#,
                r#""tools""#,
                r#""response_format""#,
                r#""metadata""#,
                r#""temperature""#,
                r#""user""#,
            ]),
            value(),
            0..4,
        );
        (
            others,
            prop::option::of((options(), any::<bool>())),
            prop::option::of(Just(r#""m""#)),
            prop::sample::select(vec!["true", "true", "true", "false"]),
            any::<bool>(),
        )
            .prop_flat_map(|(others, options, model, stream, continuous)| {
                let mut members: Vec<(String, String, bool)> = others
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v, false))
                    .collect();
                members.push((r#""stream""#.into(), stream.into(), false));
                if let Some(m) = model {
                    members.push((r#""model""#.into(), m.into(), false));
                }
                if let Some((value, escaped)) = options {
                    let key = if escaped {
                        r#""stream\u005foptions""#
                    } else {
                        r#""stream_options""#
                    };
                    members.push((key.into(), value, true));
                }
                (
                    Just(members).prop_shuffle(),
                    prop::collection::vec(ws(), 8),
                    Just(stream == "true"),
                    Just(continuous),
                )
            })
            .prop_map(|(members, spaces, streams, continuous)| {
                let mut body = String::from(spaces[0]);
                body.push('{');
                let mut options = None;
                for (i, (key, value, is_options)) in members.into_iter().enumerate() {
                    if i > 0 {
                        body.push(',');
                    }
                    body.push_str(spaces[1 + i % 7]);
                    body.push_str(&key);
                    body.push_str(spaces[2 + i % 6]);
                    body.push(':');
                    body.push_str(spaces[3 + i % 5]);
                    let start = body.len();
                    body.push_str(&value);
                    if is_options {
                        options = Some(start..body.len());
                    }
                    body.push_str(spaces[i % 8]);
                }
                body.push('}');
                body.push_str(spaces[7]);
                Case {
                    body,
                    options,
                    streams,
                    continuous,
                }
            })
    }

    /// The body in frames cut at `cuts` (sorted offsets, empty frames included), with its
    /// length announced or not.
    fn through_layer(case: &Case, cuts: &[usize], announced: bool) -> Seen {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let layer = IncludeUsageLayer::new().continuous_usage_stats(case.continuous);
        runtime
            .block_on(send_frames(layer, &case.body, cuts, announced))
            .1
    }

    fn cuts() -> impl Strategy<Value = Vec<prop::sample::Index>> {
        prop::collection::vec(any::<prop::sample::Index>(), 0..4)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        #[test]
        fn the_body_means_the_same_plus_usage_and_keeps_its_bytes(
            case in case(),
            cuts in cuts(),
            announced in any::<bool>(),
        ) {
            let input: Value = serde_json::from_str(&case.body).expect("the strategy writes JSON");
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(case.body.len() + 1)).collect();
            cuts.sort_unstable();
            let seen = through_layer(&case, &cuts, announced);
            // A changed body gets its new length; an unchanged one keeps the client's framing.
            if announced || seen.body != case.body {
                prop_assert_eq!(seen.content_length, Some(seen.body.len().to_string()));
            } else {
                prop_assert_eq!(seen.content_length, None);
            }
            prop_assert_eq!(seen.streaming, case.streams);
            if !case.streams {
                prop_assert_eq!(&seen.body, &case.body);
                prop_assert!(!seen.injected);
                return Ok(());
            }

            let output: Value = serde_json::from_str(&seen.body).expect("the output is JSON");
            let mut expected = input.clone();
            let options = expected
                .as_object_mut()
                .unwrap()
                .entry("stream_options")
                .or_insert(Value::Null);
            if !options.is_object() {
                *options = Value::Object(Default::default());
            }
            let options = options.as_object_mut().unwrap();
            options.insert("include_usage".into(), Value::Bool(true));
            if case.continuous {
                options.insert("continuous_usage_stats".into(), Value::Bool(true));
            }
            prop_assert_eq!(&output, &expected);
            let asked = input["stream_options"]["include_usage"] == Value::Bool(true);
            prop_assert_eq!(seen.injected, !asked);

            match &case.options {
                // Only the value of the top-level `stream_options` changed, and by no more
                // than the members the layer adds.
                Some(range) => {
                    prop_assert!(seen.body.starts_with(&case.body[..range.start]));
                    prop_assert!(seen.body.ends_with(&case.body[range.end..]));
                    let grown = seen.body.len().saturating_sub(case.body.len());
                    let most = r#"{"include_usage":true,"continuous_usage_stats":true}"#.len();
                    prop_assert!(grown <= most, "grew by {}", grown);
                    if input == expected {
                        prop_assert_eq!(&seen.body, &case.body);
                    }
                }
                // One member inserted after the opening brace, and nothing else changed.
                None => {
                    let open = case.body.find('{').unwrap() + 1;
                    let member = if case.continuous {
                        r#""stream_options":{"include_usage":true,"continuous_usage_stats":true},"#
                    } else {
                        r#""stream_options":{"include_usage":true},"#
                    };
                    let spliced = format!("{}{member}{}", &case.body[..open], &case.body[open..]);
                    prop_assert_eq!(&seen.body, &spliced);
                }
            }
        }
    }
}
