//! Errors the provider reports inside its stream (issue #32), through the real layer: one
//! recorded-style transcript per format that streams some content, then the provider's own
//! error. The report says `ProviderError` with the error's type and message, the client got
//! the upstream's bytes unchanged (no error event of the layer's), and usage is still read.
//! Also: the first error wins, a truncation after an error, a timeout after one, the mock
//! upstream's `error_after` fault, and the metrics and trace of such a stream.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::Frame;
use http_body_util::Empty;
use support::body::{FramesBody, Reports, channel, collect, response, serve_with};
use tower::{Layer, ServiceExt};
use tower_sse::provider::{Provider, ProviderError};
use tower_sse::{Outcome, SseLayer, StreamReport, Usage, UsageObserver, UsageSource};

/// One transcript that ends with the provider's error.
struct Case {
    name: &'static str,
    path: &'static str,
    ndjson: bool,
    bytes: &'static str,
    provider: Provider,
    kind: Option<&'static str>,
    message: &'static str,
    /// `(input, output, source)` of the usage read.
    usage: (Option<u64>, Option<u64>, UsageSource),
    finish: Option<&'static str>,
    content_events: u64,
}

const CASES: &[Case] = &[
    Case {
        name: "openai_chat",
        path: "/v1/chat/completions",
        ndjson: false,
        bytes: concat!(
            "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"The error\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" was\"},\"finish_reason\":null}]}\n\n",
            "data: {\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n",
        ),
        provider: Provider::OpenAiChat,
        kind: Some("server_error"),
        message: "The server had an error while processing your request.",
        // "The error was": 13 bytes, 4 tokens.
        usage: (None, Some(4), UsageSource::Estimated),
        finish: None,
        content_events: 2,
    },
    Case {
        name: "openrouter_chat",
        path: "/v1/chat/completions",
        ndjson: false,
        bytes: concat!(
            "data: {\"id\":\"gen-1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":1,\"total_tokens\":12}}\n\n",
            "data: {\"id\":\"gen-1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"error\":{\"code\":502,\"message\":\"Provider disconnected\"},\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":\"error\"}]}\n\n",
            "data: [DONE]\n\n",
        ),
        provider: Provider::OpenAiChat,
        kind: Some("502"),
        message: "Provider disconnected",
        usage: (Some(11), Some(1), UsageSource::Reported),
        finish: Some("error"),
        content_events: 1,
    },
    Case {
        name: "responses_error",
        path: "/v1/responses",
        ndjson: false,
        bytes: concat!(
            "event: response.created\n",
            "data: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"in_progress\",\"model\":\"o4-mini\",\"usage\":null}}\n\n",
            "event: response.output_text.delta\n",
            "data: {\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"Error-free\"}\n\n",
            "event: error\n",
            "data: {\"type\":\"error\",\"sequence_number\":2,\"code\":\"server_error\",\"message\":\"The model failed to generate a response.\",\"param\":null}\n\n",
        ),
        provider: Provider::OpenAiResponses,
        kind: Some("server_error"),
        message: "The model failed to generate a response.",
        // "Error-free": 10 bytes, 3 tokens.
        usage: (None, Some(3), UsageSource::Estimated),
        finish: Some("server_error"),
        content_events: 1,
    },
    Case {
        name: "responses_failed",
        path: "/v1/responses",
        ndjson: false,
        bytes: concat!(
            "event: response.created\n",
            "data: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_2\",\"object\":\"response\",\"status\":\"in_progress\",\"model\":\"o4-mini\",\"usage\":null}}\n\n",
            "event: response.output_text.delta\n",
            "data: {\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"Partial\"}\n\n",
            "event: response.failed\n",
            "data: {\"type\":\"response.failed\",\"sequence_number\":2,\"response\":{\"id\":\"resp_2\",\"object\":\"response\",\"status\":\"failed\",\"model\":\"o4-mini\",\"error\":{\"code\":\"server_error\",\"message\":\"An error occurred while processing your request.\"},\"incomplete_details\":null,\"usage\":{\"input_tokens\":21,\"output_tokens\":2,\"total_tokens\":23}}}\n\n",
        ),
        provider: Provider::OpenAiResponses,
        kind: Some("server_error"),
        message: "An error occurred while processing your request.",
        usage: (Some(21), Some(2), UsageSource::Reported),
        // The failed response's `status`, as the usage reader has always said.
        finish: Some("failed"),
        content_events: 1,
    },
    Case {
        name: "anthropic",
        path: "/v1/messages",
        ndjson: false,
        bytes: concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01X\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\n",
            "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: ping\n",
            "data: {\"type\": \"ping\"}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"An error\"}}\n\n",
            "event: error\n",
            "data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        ),
        provider: Provider::Anthropic,
        kind: Some("overloaded_error"),
        message: "Overloaded",
        // The input as `message_start` reported it; "An error": 8 bytes, 2 tokens.
        usage: (Some(25), Some(2), UsageSource::Estimated),
        finish: Some("overloaded_error"),
        content_events: 1,
    },
    Case {
        name: "gemini",
        path: "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        ndjson: false,
        bytes: concat!(
            "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Errors\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 8,\"candidatesTokenCount\": 1,\"totalTokenCount\": 9},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"r1\"}\r\n\r\n",
            "data: {\"error\": {\"code\": 503,\"message\": \"The model is overloaded. Please try again later.\",\"status\": \"UNAVAILABLE\"}}\r\n\r\n",
        ),
        provider: Provider::Gemini,
        kind: Some("UNAVAILABLE"),
        message: "The model is overloaded. Please try again later.",
        usage: (Some(8), Some(1), UsageSource::Reported),
        finish: None,
        content_events: 1,
    },
    Case {
        name: "ollama",
        path: "/api/chat",
        ndjson: true,
        bytes: concat!(
            "{\"model\":\"llama3.2\",\"created_at\":\"2025-06-15T15:06:40Z\",\"message\":{\"role\":\"assistant\",\"content\":\"No\"},\"done\":false}\n",
            "{\"model\":\"llama3.2\",\"created_at\":\"2025-06-15T15:06:40Z\",\"message\":{\"role\":\"assistant\",\"content\":\" errors\"},\"done\":false}\n",
            "{\"error\":\"an error was encountered while running the model: unexpected EOF\"}\n",
        ),
        provider: Provider::Ollama,
        kind: None,
        message: "an error was encountered while running the model: unexpected EOF",
        // "No errors": 9 bytes, 3 tokens.
        usage: (None, Some(3), UsageSource::Estimated),
        finish: None,
        content_events: 2,
    },
];

impl Case {
    fn layer(
        &self,
        reports: &Reports,
    ) -> SseLayer<UsageObserver, impl tower_sse::OnEnd + Clone + Send + 'static> {
        SseLayer::new()
            .json_lines(self.ndjson)
            .observer(UsageObserver::new())
            .on_end(reports.sink())
    }

    fn content_type(&self) -> &'static str {
        if self.ndjson {
            "application/x-ndjson"
        } else {
            "text/event-stream"
        }
    }

    fn request(&self) -> Request<Empty<Bytes>> {
        Request::post(self.path).body(Empty::new()).unwrap()
    }

    /// Run the transcript through the layer, cut into `chunks` of this many bytes.
    async fn run(&self, chunk: usize) -> (StreamReport, Vec<u8>) {
        let chunks: Vec<&'static [u8]> = self.bytes.as_bytes().chunks(chunk).collect();
        let reports = Reports::default();
        let res = serve_with(
            self.layer(&reports),
            self.request(),
            response(self.content_type(), FramesBody::data(&chunks)),
        )
        .await;
        let out = collect(res.into_body()).await;
        assert!(out.error.is_none(), "{}: {:?}", self.name, out.error);
        (reports.one(), out.data)
    }

    fn expected_error(&self) -> ProviderError {
        ProviderError::new(self.kind, Some(self.message))
    }
}

/// What a client of the layer gets for an NDJSON line: an SSE `data:` event.
fn reframed(ndjson: &str) -> String {
    ndjson
        .lines()
        .map(|line| format!("data: {line}\n\n"))
        .collect()
}

#[tokio::test]
async fn each_format_reports_the_providers_error() {
    for case in CASES {
        let name = case.name;
        for chunk in [usize::MAX, 1, 7] {
            let (report, out) = case.run(chunk).await;
            assert_eq!(report.outcome, Outcome::ProviderError, "{name} / {chunk}");
            assert!(!report.outcome.is_success());
            assert_eq!(report.outcome.as_str(), "provider_error");
            assert_eq!(
                report.provider_error,
                Some(case.expected_error()),
                "{name} / {chunk}"
            );
            assert_eq!(report.provider, case.provider, "{name}");
            assert_eq!(report.content_events, case.content_events, "{name}");
            assert_eq!(report.finish_reason.as_deref(), case.finish, "{name}");
            // Transparent: the provider's bytes, its error event among them, and nothing
            // of the layer's.
            let expected = if case.ndjson {
                reframed(case.bytes)
            } else {
                case.bytes.to_owned()
            };
            assert_eq!(String::from_utf8(out).unwrap(), expected, "{name}");
            assert!(report.error.is_none(), "{name}: {:?}", report.error);
            let usage: Usage = report.usage.expect("usage still read");
            let (input, output, source) = case.usage;
            assert_eq!(usage.input_tokens, input, "{name}: input");
            assert_eq!(usage.output_tokens, output, "{name}: output");
            assert_eq!(usage.source, source, "{name}: source");
        }
    }
}

/// Without a path hint the format comes from the events, and the error is still found.
#[tokio::test]
async fn the_error_is_found_without_a_path_hint() {
    for case in CASES.iter().filter(|c| !c.ndjson) {
        let reports = Reports::default();
        let res = serve_with(
            case.layer(&reports),
            Request::post("/proxy").body(Empty::new()).unwrap(),
            response(
                "text/event-stream",
                FramesBody::data(&[case.bytes.as_bytes()]),
            ),
        )
        .await;
        collect(res.into_body()).await;
        let report = reports.one();
        assert_eq!(report.outcome, Outcome::ProviderError, "{}", case.name);
        assert_eq!(report.provider_error, Some(case.expected_error()));
    }
}

/// Content after the error, then a second error: the first error is the one reported, the
/// outcome stays `ProviderError`, and everything is forwarded and counted.
#[tokio::test]
async fn the_first_error_wins_and_later_content_changes_nothing() {
    let stream = concat!(
        "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
        "data: {\"error\":{\"type\":\"first_error\",\"message\":\"one\"}}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n",
        "data: {\"error\":{\"type\":\"second_error\",\"message\":\"two\"}}\n\n",
        "data: [DONE]\n\n",
    );
    let reports = Reports::default();
    let res = serve_with(
        SseLayer::new().on_end(reports.sink()),
        Request::post("/v1/chat/completions")
            .body(Empty::new())
            .unwrap(),
        response("text/event-stream", FramesBody::data(&[stream.as_bytes()])),
    )
    .await;
    let out = collect(res.into_body()).await;
    assert_eq!(out.text(), stream);
    let report = reports.one();
    assert_eq!(report.outcome, Outcome::ProviderError);
    assert_eq!(
        report.provider_error,
        Some(ProviderError::new(Some("first_error"), Some("one")))
    );
    assert_eq!((report.events, report.content_events), (5, 2));
}

/// An upstream that errs and then stops in the middle of an event: `ProviderError` (it says
/// more than the truncation), and `error` still says that the stream was cut.
#[tokio::test]
async fn an_error_then_a_truncation_is_a_provider_error() {
    let case = &CASES[4]; // anthropic
    let cut = format!("{}event: message_delta\ndata: {{\"type\"", case.bytes);
    for error_on_truncation in [false, true] {
        let reports = Reports::default();
        let res = serve_with(
            case.layer(&reports)
                .error_on_truncation(error_on_truncation),
            case.request(),
            response(
                "text/event-stream",
                FramesBody::new(vec![Ok(Frame::data(Bytes::from(cut.clone())))], false),
            ),
        )
        .await;
        collect(res.into_body()).await;
        let report = reports.one();
        assert_eq!(report.outcome, Outcome::ProviderError);
        assert_eq!(report.provider_error, Some(case.expected_error()));
        assert!(report.error.is_some(), "the truncation is still said");
    }
}

/// A stream that errs and then stalls ends on the idle timeout: the timeout is the outcome
/// (the client got the layer's error event for it), and the provider's error is reported
/// all the same.
#[tokio::test(start_paused = true)]
async fn a_timeout_after_an_error_keeps_its_outcome() {
    let case = &CASES[0]; // openai_chat
    let reports = Reports::default();
    let (tx, body) = channel();
    let res = serve_with(
        case.layer(&reports).idle_timeout(Duration::from_secs(5)),
        case.request(),
        response("text/event-stream", body),
    )
    .await;
    tx.send(Ok(Frame::data(Bytes::from_static(case.bytes.as_bytes()))))
        .unwrap();
    let out = collect(res.into_body()).await;
    assert!(out.text().contains("idle_timeout"));
    let report = reports.one();
    assert_eq!(report.outcome, Outcome::IdleTimeout);
    assert_eq!(report.provider_error, Some(case.expected_error()));
    drop(tx);
}

/// Ordinary streams that end with a reason that is not a failure (`length`,
/// `response.incomplete`, Anthropic's `max_tokens`) complete, with that reason.
#[tokio::test]
async fn limits_are_completions_not_errors() {
    let streams: [(&str, &str, &str); 3] = [
        (
            "/v1/chat/completions",
            concat!(
                "data: {\"choices\":[{\"delta\":{\"content\":\"error error\"}}]}\n\n",
                "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}]}\n\n",
                "data: [DONE]\n\n",
            ),
            "length",
        ),
        (
            "/v1/responses",
            concat!(
                "event: response.output_text.delta\n",
                "data: {\"type\":\"response.output_text.delta\",\"delta\":\"an error\"}\n\n",
                "event: response.incomplete\n",
                "data: {\"type\":\"response.incomplete\",\"response\":{\"status\":\"incomplete\",\"incomplete_details\":{\"reason\":\"max_output_tokens\"},\"error\":null,\"usage\":{\"input_tokens\":3,\"output_tokens\":2,\"total_tokens\":5}}}\n\n",
            ),
            "max_output_tokens",
        ),
        (
            "/v1/messages",
            concat!(
                "event: content_block_delta\n",
                "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"\\\"error\\\"\"}}\n\n",
                "event: message_delta\n",
                "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"output_tokens\":2}}\n\n",
                "event: message_stop\n",
                "data: {\"type\":\"message_stop\"}\n\n",
            ),
            "max_tokens",
        ),
    ];
    for (path, stream, reason) in streams {
        let reports = Reports::default();
        let res = serve_with(
            SseLayer::new()
                .observer(UsageObserver::new())
                .on_end(reports.sink()),
            Request::post(path).body(Empty::new()).unwrap(),
            response("text/event-stream", FramesBody::data(&[stream.as_bytes()])),
        )
        .await;
        collect(res.into_body()).await;
        let report = reports.one();
        assert_eq!(report.outcome, Outcome::Completed, "{path}");
        assert_eq!(report.provider_error, None, "{path}");
        assert_eq!(report.finish_reason.as_deref(), Some(reason), "{path}");
    }
}

/// The mock upstream's `error_after` fault sends each format's in-band error: through the
/// layer, every one ends as `ProviderError` with the mock's message.
#[tokio::test]
async fn the_mock_upstreams_in_band_fault_is_a_provider_error() {
    let routes: [(&str, bool, Option<&str>); 5] = [
        ("/v1/chat/completions", false, Some("server_error")),
        ("/v1/responses", false, Some("server_error")),
        ("/v1/messages", false, Some("overloaded_error")),
        (
            "/v1beta/models/gemini-mock:streamGenerateContent?alt=sse",
            false,
            Some("INTERNAL"),
        ),
        ("/api/chat", true, None),
    ];
    for (path, ndjson, kind) in routes {
        let reports = Reports::default();
        let service = SseLayer::new()
            .json_lines(ndjson)
            .observer(UsageObserver::new())
            .on_end(reports.sink())
            .layer(tower_sse_mock::router(tower_sse_mock::MockConfig::new()));
        let request = Request::post(path)
            .header("content-type", "application/json")
            .header("x-mock-error-after", "3")
            .body(axum::body::Body::from(r#"{"model":"m","stream":true}"#))
            .unwrap();
        let res = service.oneshot(request).await.unwrap();
        let out = collect(res.into_body()).await;
        assert!(out.error.is_none(), "{path}");
        let report = reports.one();
        assert_eq!(report.outcome, Outcome::ProviderError, "{path}");
        assert_eq!(
            report.provider_error,
            Some(ProviderError::new(kind, Some("mock error after 3 events"))),
            "{path}"
        );
        assert!(out.text().contains("mock error after 3 events"), "{path}");
    }
}

/// The metrics observer counts the stream under `outcome="provider_error"`, and its
/// duration carries `error.type="provider_error"`.
#[cfg(feature = "metrics")]
#[test]
fn metrics_count_provider_errors() {
    use tower_sse::MetricsObserver;
    use tower_sse::metrics::names;

    let snapshot = support::metrics::recorded(true, || async {
        let case = &CASES[4]; // anthropic
        let res = serve_with(
            SseLayer::new().observer((UsageObserver::new(), MetricsObserver::new())),
            case.request(),
            response(
                "text/event-stream",
                FramesBody::data(&[case.bytes.as_bytes()]),
            ),
        )
        .await;
        collect(res.into_body()).await;
    });
    let labelled = |name: &str, key: &str| {
        snapshot.iter().any(|(k, ..)| {
            k.key().name() == name
                && k.key()
                    .labels()
                    .any(|l| l.key() == key && l.value() == "provider_error")
        })
    };
    assert!(labelled(names::STREAMS_ENDED, "outcome"), "{snapshot:?}");
    assert!(labelled(names::CLIENT_OPERATION_DURATION, "error.type"));
}

/// The trace event of such a stream says `outcome=provider_error` and the error's type, at
/// `WARN`.
#[cfg(feature = "tracing")]
#[test]
fn the_trace_shows_the_error_type() {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

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

    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let case = &CASES[4]; // anthropic
            let res = serve_with(
                SseLayer::new().observer((UsageObserver::new(), tower_sse::TraceObserver)),
                case.request(),
                response(
                    "text/event-stream",
                    FramesBody::data(&[case.bytes.as_bytes()]),
                ),
            )
            .await;
            collect(res.into_body()).await;
        });
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for field in [
        "outcome=provider_error",
        "provider_error=\"overloaded_error\"",
        " WARN ",
    ] {
        assert!(text.contains(field), "{field} missing from: {text}");
    }
    assert!(!text.contains("An error"), "a payload was logged: {text}");
}
