//! Cost per stream: real provider transcripts (`tests/fixtures/usage/`) through the layer
//! with the usage and cost observers; the normalised usage of each provider, its price to
//! the micro-unit, the tenant in the report, and the price table's validation.

use std::convert::Infallible;
use std::sync::mpsc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use tower::{Layer, ServiceExt, service_fn};
use tower_sse::cost::{CostObserver, PriceErrorKind, PriceTable};
use tower_sse::request::{RequestModel, Tenant, UploadBody};
use tower_sse::usage::{InputEstimateBody, InputEstimateLayer, NormalizedUsage, UsageStyle};
use tower_sse::{SseLayer, StreamReport, UsageObserver, UsageSource};

/// Test prices (not anyone's list prices), in dollars per million tokens.
const PRICES: &str = r#"{
    "currency": "USD",
    "models": {
        "o4-mini*": { "input": 1.10, "cache_read": 0.275, "output": 4.40 },
        "gpt-5-mini*": { "input": "0.25", "cache_read": "0.025", "output": "2.00" },
        "claude-opus-4*": { "input": 15, "cache_read": 1.5, "cache_write": 18.75, "output": 75 },
        "anthropic/claude-sonnet-4*": { "input": 3, "cache_read": 0.3, "cache_write": 3.75, "output": 15 },
        "gemini-2.5-pro*": { "input": 1.25, "cache_read": 0.3125, "output": 10 },
        "gemini-2.5-flash": { "input": 0.30, "output": 2.50 }
    }
}"#;

struct Run {
    path: &'static str,
    bytes: &'static [u8],
    ndjson: bool,
}

fn transcript(path: &'static str, bytes: &'static [u8]) -> Run {
    Run {
        path,
        bytes,
        ndjson: false,
    }
}

/// Serve `run` as the upstream's answer to a request with `request`'s headers and
/// extensions; the report of the stream.
async fn report(run: Run, costs: &CostObserver, request: Request<()>) -> StreamReport {
    let (reports, received) = mpsc::channel();
    let layer = SseLayer::new()
        .json_lines(run.ndjson)
        .observer((UsageObserver::new(), costs.clone()))
        .on_end(move |report: StreamReport| reports.send(report).unwrap());
    let content_type = if run.ndjson {
        "application/x-ndjson"
    } else {
        "text/event-stream"
    };
    let bytes = run.bytes;
    let upstream = service_fn(move |_: Request<UploadBody<Empty<Bytes>>>| async move {
        let response = Response::builder()
            .header("content-type", content_type)
            .body(Full::new(Bytes::from_static(bytes)))
            .unwrap();
        Ok::<_, Infallible>(response)
    });
    let (mut parts, ()) = request.into_parts();
    parts.uri = run.path.parse().unwrap();
    parts.method = http::Method::POST;
    let response = layer
        .layer(upstream)
        .oneshot(Request::from_parts(parts, Empty::<Bytes>::new()))
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();
    received.recv().unwrap()
}

fn costs() -> CostObserver {
    CostObserver::new(PriceTable::from_json(PRICES).unwrap())
}

fn parts(
    uncached_input: u64,
    cache_read: Option<u64>,
    cache_write: Option<u64>,
    output: u64,
    reasoning: Option<u64>,
) -> NormalizedUsage {
    let mut n = NormalizedUsage::default();
    n.uncached_input = Some(uncached_input);
    n.cache_read = cache_read;
    n.cache_write = cache_write;
    n.output = Some(output);
    n.reasoning = reasoning;
    n
}

/// One transcript: its style, normalised usage, and cost in micro-units per part
/// (uncached input, cache read, cache write, output, reasoning).
async fn check(run: Run, style: UsageStyle, expected: NormalizedUsage, micros: [u64; 5]) {
    let costs = costs();
    let report = report(run, &costs, Request::new(())).await;
    let usage = report.usage.expect("the transcript reports usage");
    assert_eq!(usage.style, style);
    assert_eq!(usage.normalized(), expected);
    let cost = report.cost.expect("a priced model");
    let b = cost.breakdown;
    assert_eq!(
        [
            b.uncached_input,
            b.cache_read,
            b.cache_write,
            b.output,
            b.reasoning
        ],
        micros
    );
    assert_eq!(cost.total_micros, micros.iter().sum::<u64>());
    assert!(cost.complete && !cost.estimated);
    assert_eq!(costs.unpriced(), 0);
}

/// OpenAI Chat (o4-mini): 1180 prompt tokens of which 1024 cached, 77 completion tokens of
/// which 64 reasoning. 156 × 1.10 = 171.6 → 172; 1024 × 0.275 = 281.6 → 282;
/// 13 × 4.40 = 57.2 → 58; 64 × 4.40 (reasoning at the output price) = 281.6 → 282.
#[tokio::test]
async fn openai_chat_cached_and_reasoning() {
    let run = transcript(
        "/v1/chat/completions",
        include_bytes!("fixtures/usage/openai_chat.sse"),
    );
    let expected = parts(156, Some(1024), None, 13, Some(64));
    check(run, UsageStyle::OpenAi, expected, [172, 282, 0, 58, 282]).await;
}

/// OpenAI Responses (gpt-5-mini): 36 input, 0 cached, 203 output of which 192 reasoning.
#[tokio::test]
async fn openai_responses_reasoning() {
    let run = transcript(
        "/v1/responses",
        include_bytes!("fixtures/usage/responses.sse"),
    );
    let expected = parts(36, Some(0), None, 11, Some(192));
    check(run, UsageStyle::OpenAi, expected, [9, 0, 0, 22, 384]).await;
}

/// Anthropic (claude-opus-4-1): `input_tokens` 9 is the uncached input; 20480 cache reads
/// and 1536 cache writes are apart from it.
#[tokio::test]
async fn anthropic_cache_reads_and_writes() {
    let run = transcript(
        "/v1/messages",
        include_bytes!("fixtures/usage/anthropic_restated.sse"),
    );
    let expected = parts(9, Some(20480), Some(1536), 58, None);
    check(
        run,
        UsageStyle::Anthropic,
        expected,
        [135, 30_720, 28_800, 4_350, 0],
    )
    .await;
}

/// OpenRouter (OpenAI format): its 100 cache writes are inside `prompt_tokens` (194).
#[tokio::test]
async fn openrouter_cache_writes_inside_prompt_tokens() {
    let run = transcript(
        "/api/v1/chat/completions",
        include_bytes!("fixtures/usage/openrouter_cache_write.sse"),
    );
    let expected = parts(94, Some(0), Some(100), 2, Some(0));
    check(run, UsageStyle::OpenAi, expected, [282, 0, 375, 30, 0]).await;
}

/// Gemini (gemini-2.5-flash, an exact entry): the 76 thinking tokens are apart from the 9
/// candidates tokens, and priced as output. 14 × 0.30 = 4.2 → 5; 9 × 2.5 = 22.5 → 23.
#[tokio::test]
async fn gemini_thoughts_apart_from_output() {
    let run = transcript(
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        include_bytes!("fixtures/usage/gemini.sse"),
    );
    let mut expected = parts(14, None, None, 9, Some(76));
    expected.source = UsageSource::Reported;
    check(run, UsageStyle::Gemini, expected, [5, 0, 0, 23, 190]).await;
}

/// Gemini with context caching: `cachedContentTokenCount` (32768) is inside
/// `promptTokenCount` (33412).
#[tokio::test]
async fn gemini_cached_content_inside_prompt() {
    let run = transcript(
        "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
        include_bytes!("fixtures/usage/gemini_cached.sse"),
    );
    let expected = parts(644, Some(32_768), None, 10, Some(40));
    check(
        run,
        UsageStyle::Gemini,
        expected,
        [805, 10_240, 0, 100, 400],
    )
    .await;
}

/// A model not in the table has no cost, and is counted; never a guess.
#[tokio::test]
async fn unknown_model_has_no_cost_and_is_counted() {
    let costs = costs();
    let run = Run {
        path: "/api/chat",
        bytes: include_bytes!("fixtures/usage/ollama_chat.ndjson"),
        ndjson: true,
    };
    let report = report(run, &costs, Request::new(())).await;
    let usage = report.usage.expect("Ollama reports usage");
    let n = usage.normalized();
    assert_eq!((n.uncached_input, n.output), (Some(26), Some(4)));
    assert_eq!(report.model.as_deref(), Some("llama3.2"));
    assert_eq!(report.cost, None);
    assert_eq!(costs.unpriced(), 1);
}

/// A stream that names no model is priced by the model its request named.
#[tokio::test]
async fn request_model_when_the_stream_names_none() {
    let costs = costs();
    let stream = concat!(
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[],",
        "\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":1,\"total_tokens\":11}}\n\n",
        "data: [DONE]\n\n",
    );
    let mut request = Request::new(());
    request
        .extensions_mut()
        .insert(RequestModel("o4-mini".into()));
    let run = transcript("/v1/chat/completions", stream.as_bytes());
    let report = report(run, &costs, request).await;
    assert_eq!(report.model, None);
    // 10 × 1.10 = 11; 1 × 4.40 = 4.4 → 5.
    assert_eq!(report.cost.map(|c| c.total_micros), Some(16));
}

/// A cut stream's estimated output gives a cost flagged estimated.
#[tokio::test]
async fn cut_stream_cost_is_estimated() {
    let costs = costs();
    // Anthropic's input arrives in `message_start`; the stream ends before `message_delta`.
    let stream = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-opus-4-1\",\"usage\":{\"input_tokens\":100,\"cache_read_input_tokens\":0,\"cache_creation_input_tokens\":0,\"output_tokens\":1}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"sixteen bytes...\"}}\n\n",
    );
    let run = transcript("/v1/messages", stream.as_bytes());
    let report = report(run, &costs, Request::new(())).await;
    let usage = report.usage.unwrap();
    assert_eq!(usage.source, UsageSource::Estimated);
    assert_eq!(usage.output_tokens, Some(4));
    let cost = report.cost.unwrap();
    assert!(cost.estimated && cost.complete);
    // 100 × 15 + 4 × 75.
    assert_eq!(cost.total_micros, 1_500 + 300);
}

/// The report names the tenant: a `Tenant` a layer put in the request, else the request's
/// credentials, else anonymous.
#[tokio::test]
async fn report_names_the_tenant() {
    let costs = costs();
    let bytes = include_bytes!("fixtures/usage/openai_chat.sse");
    let with_key = Request::builder()
        .header("x-api-key", "sk-bob")
        .body(())
        .unwrap();
    let report1 = report(transcript("/v1/chat/completions", bytes), &costs, with_key).await;
    assert_eq!(report1.tenant, Some(Tenant::from_key("sk-bob")));

    let mut chosen = Request::builder()
        .header("x-api-key", "sk-bob")
        .body(())
        .unwrap();
    chosen.extensions_mut().insert(Tenant::from_key("org-acme"));
    let report2 = report(transcript("/v1/chat/completions", bytes), &costs, chosen).await;
    assert_eq!(report2.tenant, Some(Tenant::from_key("org-acme")));

    let report3 = report(
        transcript("/v1/chat/completions", bytes),
        &costs,
        Request::new(()),
    )
    .await;
    assert_eq!(report3.tenant, Some(Tenant::anonymous()));
}

#[test]
fn lookup_exact_then_longest_prefix() {
    let table = PriceTable::from_json(
        r#"{"models": {
            "gpt-4o*": {"input": 2.5, "output": 10},
            "gpt-4o-mini*": {"input": 0.15, "output": 0.6},
            "gpt-4o-mini-2024-07-18": {"input": 1, "output": 1}
        }}"#,
    )
    .unwrap();
    let input = |model: &str| table.prices(model).map(|p| p.input);
    assert_eq!(input("gpt-4o-2024-08-06"), Some(2_500_000));
    assert_eq!(input("gpt-4o-mini-2024-09-01"), Some(150_000));
    assert_eq!(input("gpt-4o-mini-2024-07-18"), Some(1_000_000));
    assert_eq!(input("gpt-4o"), Some(2_500_000)); // a prefix matches the name itself
    assert_eq!(input("GPT-4o"), None); // byte for byte
    assert_eq!(input("gpt-4"), None);
    assert_eq!(table.currency(), None);
}

#[test]
fn invalid_tables_say_what_and_where() {
    let error = |json: &str| PriceTable::from_json(json).unwrap_err();
    let e = error(r#"{"models": {"m": {"input": -1, "output": 1}}}"#);
    assert_eq!(
        (e.kind(), e.model(), e.price()),
        (PriceErrorKind::Negative, Some("m"), Some("input"))
    );
    assert_eq!(
        e.to_string(),
        "price table, model `m`, price `input`: a price cannot be negative"
    );
    let e = error(r#"{"models": {"m": {"input": 1, "output": 1, "cache_read": 0.1234567}}}"#);
    assert_eq!(
        (e.kind(), e.price()),
        (PriceErrorKind::TooPrecise, Some("cache_read"))
    );
    let e = error(r#"{"models": {"m": {"input": 1, "output": "ten"}}}"#);
    assert_eq!(
        (e.kind(), e.price()),
        (PriceErrorKind::NotANumber, Some("output"))
    );
    let e = error(r#"{"models": {"m": {"input": 1, "output": 2e6}}}"#);
    assert_eq!(e.kind(), PriceErrorKind::TooLarge);
    let e = error(r#"{"models": {"*": {"input": 1, "output": 1}}}"#);
    assert_eq!(e.kind(), PriceErrorKind::EmptyName);
    let e = error(r#"{"models": {"gpt-*-mini": {"input": 1, "output": 1}}}"#);
    assert_eq!(
        (e.kind(), e.model()),
        (PriceErrorKind::MisplacedWildcard, Some("gpt-*-mini"))
    );
    // A typo in a price name is refused, not ignored.
    let e = error(r#"{"models": {"m": {"input": 1, "output": 1, "cached_input": 1}}}"#);
    assert_eq!(e.kind(), PriceErrorKind::Syntax);
    assert!(e.to_string().contains("cached_input"), "{e}");
    let e = error(r#"{"models": {"m": {"input": 1}}}"#);
    assert!(e.to_string().contains("output"), "{e}");
}

/// The table is a serde type: it loads as a field of a larger file, from any format.
#[test]
fn table_loads_as_a_section_of_a_larger_file() {
    #[derive(serde::Deserialize)]
    struct Config {
        prices: PriceTable,
    }
    let config: Config = serde_json::from_str(
        r#"{"prices": {"currency": "EUR", "models": {"m": {"input": "1", "output": "2"}}}}"#,
    )
    .unwrap();
    assert_eq!(config.prices.currency(), Some("EUR"));
    assert_eq!(config.prices.prices("m").map(|p| p.output), Some(2_000_000));
    let bad = serde_json::from_str::<Config>(
        r#"{"prices": {"models": {"m": {"input": -1, "output": 2}}}}"#,
    );
    let message = bad.err().unwrap().to_string();
    assert!(message.contains("a price cannot be negative"), "{message}");
}

// ---------------------------------------------------------------------------------------
// The input estimate from the request body
// ---------------------------------------------------------------------------------------

/// `body` sent through `InputEstimateLayer` to an upstream that reads it and answers
/// `stream`; the report.
async fn with_request_body(
    layer: InputEstimateLayer,
    path: &'static str,
    body: &'static str,
    stream: &'static str,
) -> StreamReport {
    let (reports, received) = mpsc::channel();
    let upstream = service_fn(
        move |request: Request<UploadBody<InputEstimateBody<Full<Bytes>>>>| async move {
            request.into_body().collect().await?;
            let response = Response::builder()
                .header("content-type", "text/event-stream")
                .body(Full::new(Bytes::from_static(stream.as_bytes())))
                .unwrap();
            Ok::<_, tower_sse::BoxError>(response)
        },
    );
    let service = tower::ServiceBuilder::new()
        .layer(layer)
        .layer(
            SseLayer::new()
                .observer((UsageObserver::new(), costs()))
                .on_end(move |report: StreamReport| reports.send(report).unwrap()),
        )
        .service(upstream);
    let request = Request::post(path)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    response.into_body().collect().await.unwrap();
    received.recv().unwrap()
}

/// An Anthropic stream cut before `message_start` (a relay that failed early): no count at
/// all was reported.
const ANTHROPIC_CUT: &str = concat!(
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"12345678\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_blo",
);

#[tokio::test]
async fn cut_stream_input_is_estimated_from_the_request_text() {
    // System parts and message parts: 8 + 16 + 4 = 28 bytes of text, 7 tokens. The image
    // and the framing are not counted.
    let body = r#"{"model":"claude-opus-4-1","max_tokens":64,"stream":true,
        "system":[{"type":"text","text":"be brief"}],
        "messages":[
            {"role":"user","content":[{"type":"text","text":"sixteen bytes..."},{"type":"image","source":{"data":"AAAA"}}]},
            {"role":"assistant","content":"four"}
        ]}"#;
    let report = with_request_body(
        InputEstimateLayer::new(),
        "/v1/messages",
        body,
        ANTHROPIC_CUT,
    )
    .await;
    let usage = report.usage.expect("estimated");
    assert_eq!(usage.source, UsageSource::Estimated);
    assert_eq!(
        (usage.input_tokens, usage.output_tokens),
        (Some(7), Some(2))
    );
    // Priced at claude-opus-4 prices? The stream named no model and the request marker is
    // absent: no cost, counted as unpriced by that observer.
    assert_eq!(report.cost, None);
}

#[tokio::test]
async fn gemini_and_responses_request_text() {
    let gemini = r#"{"systemInstruction":{"parts":[{"text":"1234"}]},
        "contents":[{"role":"user","parts":[{"text":"12345678"}]}]}"#;
    let report = with_request_body(
        InputEstimateLayer::new(),
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        gemini,
        ANTHROPIC_CUT,
    )
    .await;
    assert_eq!(report.usage.unwrap().input_tokens, Some(3));

    let responses = r#"{"model":"gpt-5-mini","instructions":"1234","input":[{"role":"user","content":[{"type":"input_text","text":"12345678"}]}]}"#;
    let report = with_request_body(
        InputEstimateLayer::new().bytes_per_token(2),
        "/v1/responses",
        responses,
        ANTHROPIC_CUT,
    )
    .await;
    assert_eq!(report.usage.unwrap().input_tokens, Some(6));
}

#[tokio::test]
async fn no_estimate_from_a_body_over_the_limit_or_not_json() {
    let body = r#"{"messages":[{"role":"user","content":"sixteen bytes..."}]}"#;
    let report = with_request_body(
        InputEstimateLayer::new().max_bytes(body.len() - 1),
        "/v1/chat/completions",
        body,
        ANTHROPIC_CUT,
    )
    .await;
    assert_eq!(report.usage.unwrap().input_tokens, None);
    let report = with_request_body(
        InputEstimateLayer::new().max_bytes(body.len()),
        "/v1/chat/completions",
        body,
        ANTHROPIC_CUT,
    )
    .await;
    assert_eq!(report.usage.unwrap().input_tokens, Some(4));
    let report = with_request_body(
        InputEstimateLayer::new(),
        "/v1/chat/completions",
        "messages: not json",
        ANTHROPIC_CUT,
    )
    .await;
    assert_eq!(report.usage.unwrap().input_tokens, None);
}

/// A reported input count is never replaced by the estimate, and a completed stream's usage
/// is what the provider said.
#[tokio::test]
async fn reported_input_wins() {
    let body =
        r#"{"messages":[{"role":"user","content":"a much longer text than nine tokens, surely"}]}"#;
    let report = with_request_body(
        InputEstimateLayer::new(),
        "/v1/messages",
        body,
        include_str!("fixtures/usage/anthropic_error.sse"),
    )
    .await;
    let usage = report.usage.unwrap();
    assert_eq!(usage.input_tokens, Some(30));
    assert_eq!(usage.source, UsageSource::Estimated); // the output is
    let report = with_request_body(
        InputEstimateLayer::new(),
        "/v1/chat/completions",
        body,
        include_str!("fixtures/usage/openai_chat.sse"),
    )
    .await;
    let usage = report.usage.unwrap();
    assert_eq!(usage.input_tokens, Some(1180));
    assert_eq!(usage.source, UsageSource::Reported);
    assert!(report.cost.is_some_and(|c| !c.estimated));
}
