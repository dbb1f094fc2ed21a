//! `SpanLayer` + `SpanObserver`: exactly one OpenTelemetry span per stream on every exit
//! path, parented to the caller's W3C trace context, its context passed upstream, with the
//! GenAI attributes and status, read back from the SDK's in-memory exporter.

#![cfg(feature = "otel")]

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, Full};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use support::body::{FramesBody, UpstreamFailed, channel, collect, report_channel};
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_sse::request::{RequestModel, UploadBody};
use tower_sse::span::{SpanLayer, SpanObserver, SpanService, names};
use tower_sse::stream::{Shutdown, Sse};
use tower_sse::{DigestObserver, Outcome, SseLayer, TimingObserver, UsageObserver};

const PARENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

/// An SDK tracer provider whose spans land in memory.
struct Spans {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
}

impl Spans {
    fn new() -> Self {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        Self { exporter, provider }
    }

    fn layer(&self) -> SpanLayer {
        SpanLayer::with_tracer(self.provider.tracer("tests")).latest_conventions(false)
    }

    fn finished(&self) -> Vec<SpanData> {
        self.exporter.get_finished_spans().unwrap()
    }

    /// The one span of the stream (a test's only one with `tower_sse`'s scope).
    fn one(&self) -> SpanData {
        let spans = self.finished();
        assert_eq!(spans.len(), 1, "exactly one span: {spans:#?}");
        spans.into_iter().next().unwrap()
    }
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn string(span: &SpanData, key: &str) -> Option<String> {
    attr(span, key).map(Value::to_string)
}

fn int(span: &SpanData, key: &str) -> Option<i64> {
    match attr(span, key)? {
        Value::I64(v) => Some(*v),
        other => panic!("{key} is not an integer: {other:?}"),
    }
}

fn stream_request() -> Request<Empty<Bytes>> {
    let mut request = Request::post("/v1/chat/completions")
        .header("accept", "text/event-stream")
        .header("traceparent", format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01"))
        .header("tracestate", "vendor=abc")
        .body(Empty::new())
        .unwrap();
    request
        .extensions_mut()
        .insert(RequestModel("gpt-asked".into()));
    request
}

const CHUNK: &[u8] = b"data: {\"id\":\"chatcmpl-7\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-x\",\"choices\":[{\"delta\":{\"content\":\"SECRET-PAYLOAD\"}}]}\n\n";
const FINISH: &[u8] = b"data: {\"id\":\"chatcmpl-7\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-x\",\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
const USAGE: &[u8] = b"data: {\"id\":\"chatcmpl-7\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-x\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4,\"prompt_tokens_details\":{\"cached_tokens\":2}}}\n\n";
const DONE: &[u8] = b"data: [DONE]\n\n";

fn sse<B>(body: B) -> Response<B> {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap()
}

/// What the upstream saw of each request's headers.
type Seen = Arc<Mutex<Vec<HeaderMap>>>;

/// The observers of the usual stack, the span observer last.
type Observers = (UsageObserver, TimingObserver, DigestObserver, SpanObserver);
/// An upstream answering with `B`.
type Upstream<B> = BoxCloneService<Request<UploadBody<Empty<Bytes>>>, Response<B>, Infallible>;

/// The usual stack: `SpanLayer` outside, the `SseLayer` with the span observer last.
fn stack<B>(
    spans: &SpanLayer,
    sse_layer: SseLayer,
    answer: impl FnMut() -> Response<B> + Clone + Send + Sync + 'static,
) -> (SpanService<Sse<Upstream<B>, Observers>>, Seen)
where
    B: Send + 'static,
{
    let seen = Seen::default();
    let upstream = {
        let seen = seen.clone();
        tower::service_fn(move |request: Request<UploadBody<Empty<Bytes>>>| {
            seen.lock().unwrap().push(request.headers().clone());
            let mut answer = answer.clone();
            async move { Ok::<_, Infallible>(answer()) }
        })
    };
    let observers = (
        UsageObserver::new(),
        TimingObserver::new(),
        DigestObserver::new(),
        spans.observer(),
    );
    let service = ServiceBuilder::new()
        .layer(spans.clone())
        .layer(sse_layer.observer(observers))
        .service(BoxCloneService::new(upstream));
    (service, seen)
}

#[tokio::test]
async fn a_completed_stream_has_one_span_with_parent_attributes_and_context_upstream() {
    let spans = Spans::new();
    let (service, seen) = stack(&spans.layer(), SseLayer::new(), || {
        sse(FramesBody::data(&[CHUNK, FINISH, USAGE, DONE]))
    });
    let response = service.oneshot(stream_request()).await.unwrap();
    let received = collect(response.into_body()).await;
    assert!(received.text().contains("SECRET-PAYLOAD"));

    let span = spans.one();
    // Parent: the caller's span, in the caller's trace.
    assert_eq!(span.span_context.trace_id().to_string(), PARENT_TRACE);
    assert_eq!(span.parent_span_id.to_string(), PARENT_SPAN);
    assert!(span.parent_span_is_remote);
    assert_eq!(span.span_context.trace_state().get("vendor"), Some("abc"));
    assert_eq!(span.span_kind, SpanKind::Client);
    assert_eq!(span.name, "chat gpt-asked");
    assert_eq!(span.status, Status::Unset);

    // The upstream request carried this span's context.
    let headers = seen.lock().unwrap().pop().unwrap();
    assert_eq!(
        headers["traceparent"],
        format!("00-{PARENT_TRACE}-{}-01", span.span_context.span_id()).as_str()
    );
    assert_eq!(headers["tracestate"], "vendor=abc");

    assert_eq!(
        string(&span, names::GEN_AI_OPERATION_NAME).as_deref(),
        Some("chat")
    );
    assert_eq!(
        string(&span, names::GEN_AI_SYSTEM).as_deref(),
        Some("openai")
    );
    assert!(attr(&span, names::GEN_AI_PROVIDER_NAME).is_none());
    assert_eq!(
        string(&span, names::GEN_AI_REQUEST_MODEL).as_deref(),
        Some("gpt-asked")
    );
    assert_eq!(
        string(&span, names::GEN_AI_RESPONSE_MODEL).as_deref(),
        Some("gpt-x")
    );
    assert_eq!(
        string(&span, names::GEN_AI_RESPONSE_ID).as_deref(),
        Some("chatcmpl-7")
    );
    assert_eq!(
        attr(&span, names::GEN_AI_RESPONSE_FINISH_REASONS),
        Some(&Value::Array(
            vec![opentelemetry::StringValue::from("stop")].into()
        ))
    );
    assert_eq!(
        attr(&span, names::GEN_AI_REQUEST_STREAM),
        Some(&Value::Bool(true))
    );
    assert_eq!(int(&span, names::GEN_AI_USAGE_INPUT_TOKENS), Some(3));
    assert_eq!(int(&span, names::GEN_AI_USAGE_OUTPUT_TOKENS), Some(1));
    assert_eq!(
        int(&span, names::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS),
        Some(2)
    );
    assert!(
        attr(&span, names::GEN_AI_USAGE_REASONING_OUTPUT_TOKENS).is_none(),
        "unknown is left out"
    );
    assert!(matches!(
        attr(&span, names::GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK),
        Some(Value::F64(s)) if *s >= 0.0
    ));
    assert_eq!(
        string(&span, names::TOWER_SSE_OUTCOME).as_deref(),
        Some("completed")
    );
    assert_eq!(int(&span, names::TOWER_SSE_EVENTS), Some(4));
    assert_eq!(int(&span, names::TOWER_SSE_CONTENT_EVENTS), Some(1));
    assert_eq!(
        int(&span, names::TOWER_SSE_BYTES),
        Some(received.data.len() as i64)
    );
    let digest = tower_sse::Sha256Digest::of(&received.data).to_hex();
    assert_eq!(string(&span, names::TOWER_SSE_DIGEST), Some(digest));
    assert_eq!(int(&span, names::HTTP_RESPONSE_STATUS_CODE), Some(200));
    assert!(attr(&span, names::ERROR_TYPE).is_none());
    assert!(span.events.is_empty(), "no per-chunk events");
    // Never a payload.
    for kv in &span.attributes {
        assert!(!kv.value.to_string().contains("SECRET"), "{kv:?}");
    }
}

#[tokio::test]
async fn the_latest_conventions_name_the_provider_gen_ai_provider_name() {
    let spans = Spans::new();
    let layer = spans.layer().latest_conventions(true);
    let (service, _) = stack(&layer, SseLayer::new(), || {
        sse(FramesBody::data(&[CHUNK, DONE]))
    });
    let response = service.oneshot(stream_request()).await.unwrap();
    collect(response.into_body()).await;
    let span = spans.one();
    assert_eq!(
        string(&span, names::GEN_AI_PROVIDER_NAME).as_deref(),
        Some("openai")
    );
    assert!(attr(&span, names::GEN_AI_SYSTEM).is_none());
}

#[tokio::test]
async fn without_a_caller_trace_the_span_starts_one_and_passes_it_on() {
    let spans = Spans::new();
    let (service, seen) = stack(&spans.layer(), SseLayer::new(), || {
        sse(FramesBody::data(&[CHUNK, DONE]))
    });
    let request = Request::post("/v1/chat/completions")
        .header("accept", "text/event-stream")
        .header("traceparent", "00-zz-nonsense-01")
        .body(Empty::new())
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    collect(response.into_body()).await;
    let span = spans.one();
    assert_eq!(span.parent_span_id, opentelemetry::trace::SpanId::INVALID);
    assert_eq!(
        span.name, "chat gpt-x",
        "the response's model when the request's is unknown"
    );
    let headers = seen.lock().unwrap().pop().unwrap();
    assert_eq!(
        headers["traceparent"],
        format!(
            "00-{}-{}-01",
            span.span_context.trace_id(),
            span.span_context.span_id()
        )
        .as_str()
    );
    assert!(headers.get("tracestate").is_none());
}

/// Asserts the stream's one span failed with this outcome.
fn assert_failed(spans: &Spans, outcome: Outcome) -> SpanData {
    let span = spans.one();
    assert_eq!(
        string(&span, names::ERROR_TYPE).as_deref(),
        Some(outcome.as_str())
    );
    assert_eq!(
        string(&span, names::TOWER_SSE_OUTCOME).as_deref(),
        Some(outcome.as_str())
    );
    assert_eq!(span.status, Status::error(outcome.as_str()));
    assert_eq!(span.parent_span_id.to_string(), PARENT_SPAN);
    span
}

#[tokio::test]
async fn an_upstream_error_ends_the_span_once_as_an_error() {
    let spans = Spans::new();
    let (service, _) = stack(&spans.layer(), SseLayer::new(), || {
        sse(FramesBody::new(
            vec![
                Ok(Frame::data(Bytes::from_static(CHUNK))),
                Err(UpstreamFailed),
            ],
            false,
        ))
    });
    let response = service.oneshot(stream_request()).await.unwrap();
    let received = collect(response.into_body()).await;
    assert!(received.text().contains("SECRET-PAYLOAD"));
    let span = assert_failed(&spans, Outcome::UpstreamError);
    assert_eq!(int(&span, names::TOWER_SSE_CONTENT_EVENTS), Some(1));
}

#[tokio::test(start_paused = true)]
async fn an_idle_deadline_ends_the_span_once() {
    let spans = Spans::new();
    let (tx, body) = channel();
    let body = Arc::new(Mutex::new(Some(body)));
    let layer = SseLayer::new().idle_timeout(Duration::from_secs(5));
    let (service, _) = stack(&spans.layer(), layer, move || {
        sse(body.lock().unwrap().take().unwrap())
    });
    let response = service.oneshot(stream_request()).await.unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(CHUNK)))).unwrap();
    let received = collect(response.into_body()).await;
    assert!(received.text().contains("idle_timeout"));
    assert_failed(&spans, Outcome::IdleTimeout);
    drop(tx);
}

#[tokio::test]
async fn a_client_that_leaves_ends_the_span_once() {
    let spans = Spans::new();
    let (tx, body) = channel();
    let body = Arc::new(Mutex::new(Some(body)));
    let (service, _) = stack(&spans.layer(), SseLayer::new(), move || {
        sse(body.lock().unwrap().take().unwrap())
    });
    let mut response = service.oneshot(stream_request()).await.unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(CHUNK)))).unwrap();
    let frame = response.body_mut().frame().await.unwrap().unwrap();
    assert!(frame.is_data());
    assert!(spans.finished().is_empty(), "open while the stream is");
    drop(response);
    let span = assert_failed(&spans, Outcome::ClientDisconnected);
    assert_eq!(int(&span, names::TOWER_SSE_CONTENT_EVENTS), Some(1));
}

#[tokio::test]
async fn a_drained_stream_ends_its_span_after_the_drain_with_the_final_usage() {
    let spans = Spans::new();
    let (tx, body) = channel();
    let body = Arc::new(Mutex::new(Some(body)));
    let (on_end, mut reports) = report_channel();
    let layer = SseLayer::new().drain_on_disconnect(Duration::from_secs(60));
    let spans_layer = spans.layer();
    let service = ServiceBuilder::new()
        .layer(spans_layer.clone())
        .layer(
            layer
                .observer((UsageObserver::new(), spans_layer.observer()))
                .on_end(on_end),
        )
        .service(tower::service_fn(
            move |_: Request<UploadBody<Empty<Bytes>>>| {
                let body = body.lock().unwrap().take().unwrap();
                async move { Ok::<_, Infallible>(sse(body)) }
            },
        ));
    let mut response = service.oneshot(stream_request()).await.unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(CHUNK)))).unwrap();
    response.body_mut().frame().await.unwrap().unwrap();
    drop(response);
    // The drain goes on reading: the span waits for the report.
    tx.send(Ok(Frame::data(Bytes::from_static(USAGE)))).unwrap();
    tokio::task::yield_now().await;
    assert!(
        spans.finished().is_empty(),
        "the span ends with the report, after the drain"
    );
    tx.send(Ok(Frame::data(Bytes::from_static(DONE)))).unwrap();
    drop(tx);
    let report = support::body::next_report(&mut reports).await;
    assert_eq!(report.outcome, Outcome::ClientDisconnected);
    let span = assert_failed(&spans, Outcome::ClientDisconnected);
    assert_eq!(
        int(&span, names::GEN_AI_USAGE_OUTPUT_TOKENS),
        Some(1),
        "the drained usage"
    );
}

#[tokio::test]
async fn shutdown_ends_the_span_once() {
    let spans = Spans::new();
    let (_tx, body) = channel();
    let body = Arc::new(Mutex::new(Some(body)));
    let shutdown = Shutdown::new();
    let layer = SseLayer::new().shutdown(shutdown.clone());
    let (service, _) = stack(&spans.layer(), layer, move || {
        sse(body.lock().unwrap().take().unwrap())
    });
    let response = service.oneshot(stream_request()).await.unwrap();
    shutdown.end_streams();
    collect(response.into_body()).await;
    assert_failed(&spans, Outcome::ServerShutdown);
}

#[tokio::test]
async fn a_json_error_to_a_streaming_request_is_reported_once() {
    let spans = Spans::new();
    let (service, _) = stack(&spans.layer(), SseLayer::new(), || {
        Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                b"{\"error\":{\"type\":\"rate_limit\"}}",
            )))
            .unwrap()
    });
    let response = service.oneshot(stream_request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    collect(response.into_body()).await;
    let span = spans.one();
    assert_eq!(int(&span, names::HTTP_RESPONSE_STATUS_CODE), Some(429));
    assert!(attr(&span, names::ERROR_TYPE).is_some());
    assert!(matches!(span.status, Status::Error { .. }));
}

#[tokio::test]
async fn a_request_that_is_no_stream_ends_its_span_with_the_body() {
    let spans = Spans::new();
    let (service, _) = stack(&spans.layer(), SseLayer::new(), || {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    });
    let request = Request::get("/v1/models").body(Empty::new()).unwrap();
    let mut response = service.oneshot(request).await.unwrap();
    assert!(spans.finished().is_empty(), "open until the body ends");
    while response.body_mut().frame().await.is_some() {}
    let span = spans.one();
    assert_eq!(int(&span, names::HTTP_RESPONSE_STATUS_CODE), Some(404));
    assert_eq!(string(&span, names::ERROR_TYPE).as_deref(), Some("404"));
    assert!(attr(&span, names::TOWER_SSE_OUTCOME).is_none());
}

#[tokio::test]
async fn spans_the_upstream_call_opens_are_children_of_the_stream_span() {
    let spans = Spans::new();
    let tracer = spans.provider.tracer("upstream-client");
    let layer = spans.layer();
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(SseLayer::new().observer(layer.observer()))
        .service(tower::service_fn(
            move |_: Request<UploadBody<Empty<Bytes>>>| {
                // An instrumented client opens its span under the current context.
                let call = tracer.start_with_context("upstream call", &Context::current());
                let cx = Context::current_with_span(call);
                async move {
                    cx.span().end();
                    Ok::<_, Infallible>(sse(FramesBody::data(&[CHUNK, DONE])))
                }
            },
        ));
    let response = service.oneshot(stream_request()).await.unwrap();
    collect(response.into_body()).await;
    let finished = spans.finished();
    assert_eq!(finished.len(), 2);
    let call = finished.iter().find(|s| s.name == "upstream call").unwrap();
    let stream = finished.iter().find(|s| s.name != "upstream call").unwrap();
    assert_eq!(call.parent_span_id, stream.span_context.span_id());
    assert_eq!(call.span_context.trace_id(), stream.span_context.trace_id());
}

/// Hundreds of clients leave a real server mid-stream: as many spans as streams, each ended
/// once as a disconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_storm_gives_as_many_spans_as_streams() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;

    const CLIENTS: usize = 300;
    let spans = Spans::new();
    let layer = spans.layer();
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(SseLayer::new().observer((UsageObserver::new(), layer.observer())))
        .service(tower::service_fn(
            |_: Request<UploadBody<hyper::body::Incoming>>| async {
                let first = futures_util::stream::once(async {
                    Ok::<_, Infallible>(Frame::data(Bytes::from_static(CHUNK)))
                });
                let endless =
                    futures_util::StreamExt::chain(first, futures_util::stream::pending());
                Ok::<_, Infallible>(sse(http_body_util::StreamBody::new(endless)))
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(
                auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned(),
            );
        }
    });

    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/chat/completions");
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (client, url) = (client.clone(), url.clone());
        clients.spawn(async move {
            let mut response = client
                .post(url)
                .header("accept", "text/event-stream")
                .header("traceparent", format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01"))
                .send()
                .await
                .unwrap();
            let first = response.chunk().await.unwrap().unwrap();
            assert!(first.starts_with(b"data: "));
            // Leaves mid-stream.
        });
    }
    while let Some(joined) = clients.join_next().await {
        joined.unwrap();
    }
    drop(client);
    // The server notices each disconnect on its own time; a guard, not a timing assertion.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while spans.finished().len() < CLIENTS && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let finished = spans.finished();
    assert_eq!(finished.len(), CLIENTS);
    let mut ids: Vec<_> = finished.iter().map(|s| s.span_context.span_id()).collect();
    ids.sort_unstable_by_key(|id| id.to_bytes());
    ids.dedup();
    assert_eq!(ids.len(), CLIENTS, "each span once");
    for span in &finished {
        assert_eq!(
            string(span, names::TOWER_SSE_OUTCOME).as_deref(),
            Some("client_disconnected")
        );
        assert_eq!(span.parent_span_id.to_string(), PARENT_SPAN);
    }
}

#[tokio::test]
async fn an_inner_service_error_ends_the_span_once() {
    let spans = Spans::new();
    let layer = spans.layer();
    let mut service = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(SseLayer::new().observer(layer.observer()))
        .service(tower::service_fn(
            |_: Request<UploadBody<Empty<Bytes>>>| async {
                Err::<Response<Full<Bytes>>, _>(std::io::Error::other("connect refused"))
            },
        ));
    let result = service.ready().await.unwrap().call(stream_request()).await;
    assert!(result.is_err());
    let span = spans.one();
    assert!(attr(&span, names::ERROR_TYPE).is_some());
    assert!(matches!(span.status, Status::Error { .. }));
}

#[tokio::test]
async fn without_a_span_layer_the_observer_does_nothing() {
    let spans = Spans::new();
    let service = SseLayer::new()
        .observer(spans.layer().observer())
        .layer(tower::service_fn(
            |_: Request<UploadBody<Empty<Bytes>>>| async {
                Ok::<_, Infallible>(sse(FramesBody::data(&[CHUNK, DONE])))
            },
        ));
    let response = service.oneshot(stream_request()).await.unwrap();
    collect(response.into_body()).await;
    assert!(spans.finished().is_empty());
}

#[tokio::test]
async fn a_disabled_layer_passes_everything_through() {
    let spans = Spans::new();
    let layer = spans.layer().enabled(false);
    let (service, seen) = stack(&layer, SseLayer::new(), || {
        sse(FramesBody::data(&[CHUNK, DONE]))
    });
    let response = service.oneshot(stream_request()).await.unwrap();
    let received = collect(response.into_body()).await;
    assert!(received.text().contains("SECRET-PAYLOAD"));
    assert!(spans.finished().is_empty());
    let headers = seen.lock().unwrap().pop().unwrap();
    assert_eq!(
        headers["traceparent"],
        format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01").as_str(),
        "the caller's context, untouched"
    );
}

/// The cost a `CostObserver` priced and the cache writes the provider reported are on the
/// span: micro-units with the layer's currency label, `gen_ai.usage.cache_creation.*`.
#[tokio::test]
async fn the_span_carries_the_cost_and_the_cache_writes() {
    use tower_sse::cost::{CostObserver, ModelPrices, PriceTable};

    const USAGE_WITH_WRITES: &[u8] = b"data: {\"id\":\"chatcmpl-7\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-x\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4,\"prompt_tokens_details\":{\"cached_tokens\":1,\"cache_write_tokens\":2}}}\n\n";
    let spans = Spans::new();
    let layer = spans.layer().currency("USD");
    let mut table = PriceTable::new().with_currency("USD");
    table
        .insert("gpt-x", ModelPrices::new(2_000_000, 10_000_000))
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(SseLayer::new().observer((
            UsageObserver::new(),
            CostObserver::new(table),
            layer.observer(),
        )));
    let service = service.service(tower::service_fn(
        |_: Request<UploadBody<Empty<Bytes>>>| async {
            Ok::<_, Infallible>(sse(FramesBody::data(&[
                CHUNK,
                FINISH,
                USAGE_WITH_WRITES,
                DONE,
            ])))
        },
    ));
    let response = service.oneshot(stream_request()).await.unwrap();
    collect(response.into_body()).await;

    let span = spans.one();
    assert_eq!(
        int(&span, names::GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS),
        Some(2)
    );
    assert_eq!(
        int(&span, names::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS),
        Some(1)
    );
    // 3 input tokens at 2 and 1 output token at 10 micro-units each: 16 micro-units (the
    // cached and written tokens are priced as input without their own prices).
    assert_eq!(int(&span, names::TOWER_SSE_COST_MICROS), Some(16));
    assert_eq!(
        string(&span, names::TOWER_SSE_COST_CURRENCY).as_deref(),
        Some("USD")
    );
    assert_eq!(
        attr(&span, names::TOWER_SSE_COST_ESTIMATED),
        Some(&Value::Bool(false))
    );
    assert_eq!(
        attr(&span, names::TOWER_SSE_COST_COMPLETE),
        Some(&Value::Bool(true))
    );
}

#[cfg(feature = "resume")]
mod resumed {
    //! Resumable streams: one span for the producer (the one upstream call), one short span
    //! per resumed connection, linked to it.

    use super::*;
    use opentelemetry::trace::SpanContext;
    use tower_sse::ResumeLayer;
    use tower_sse::resume::{MemoryStore, ResumeObserver};

    const EVENT: fn(&str) -> Frame<Bytes> =
        |data| Frame::data(Bytes::from(format!("data: {data}\n\n")));

    fn resume_request(last_event_id: &str) -> Request<Empty<Bytes>> {
        Request::get("/v1/chat/completions")
            .header("last-event-id", last_event_id)
            .header("traceparent", format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01"))
            .body(Empty::new())
            .unwrap()
    }

    /// Reads a body until its text holds `until` (or its end, with `None`); returns the text
    /// and whether the body ended.
    async fn read<B>(body: &mut B, until: Option<&str>) -> (String, bool)
    where
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Debug,
    {
        let mut text = String::new();
        loop {
            if until.is_some_and(|until| text.contains(until)) {
                return (text, false);
            }
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        text.push_str(&String::from_utf8_lossy(&data));
                    }
                }
                Some(Err(error)) => panic!("body error: {error:?}"),
                None => return (text, true),
            }
        }
    }

    fn links(span: &SpanData) -> Vec<SpanContext> {
        span.links
            .iter()
            .map(|link| link.span_context.clone())
            .collect()
    }

    /// A stream cut and resumed twice: one producer span, two reader spans, each linked to
    /// the producer's span and parented to its caller's trace, with the cursor, the events
    /// replayed and how the connection ended; the producer's span counts the connections.
    #[tokio::test]
    async fn a_stream_resumed_twice_has_one_producer_span_and_two_linked_reader_spans() {
        let spans = Spans::new();
        let layer = spans.layer();
        let (tx, body) = channel();
        let body = Arc::new(Mutex::new(Some(body)));
        let upstream = tower::service_fn(move |_: Request<UploadBody<Empty<Bytes>>>| {
            let body = body.lock().unwrap().take().expect("one upstream call");
            async move { Ok::<_, Infallible>(sse(body)) }
        });
        let (on_end, mut reports) = report_channel();
        let service = ServiceBuilder::new()
            .layer(ResumeLayer::new().store(MemoryStore::new()).spans(&layer))
            .layer(layer.clone())
            .layer(
                SseLayer::new()
                    .observer((
                        ResumeObserver::new(),
                        UsageObserver::new(),
                        layer.observer(),
                    ))
                    .on_end(on_end),
            )
            .service(upstream);

        // The first connection: two events, cut after the first.
        let response = service.clone().oneshot(stream_request()).await.unwrap();
        let stream = stream_id(&response);
        tx.send(Ok(EVENT("one"))).unwrap();
        tx.send(Ok(EVENT("two"))).unwrap();
        let mut first = response.into_body();
        let (text, _) = read(&mut first, Some("data: one")).await;
        assert!(text.contains(&format!("id: {stream}.1")));
        drop(first);

        // The first resume: event 2 replayed, event 3 live; cut.
        let response = service
            .clone()
            .oneshot(resume_request(&format!("{stream}.1")))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut second = response.into_body();
        let (text, _) = read(&mut second, Some("data: two")).await;
        assert!(!text.contains("data: one"));
        tx.send(Ok(EVENT("three"))).unwrap();
        read(&mut second, Some("data: three")).await;
        drop(second);

        // The second resume, after event 3: event 4 live, then the end.
        let response = service
            .clone()
            .oneshot(resume_request(&format!("{stream}.3")))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut third = response.into_body();
        tx.send(Ok(EVENT("four"))).unwrap();
        drop(tx);
        let (text, ended) = read(&mut third, None).await;
        assert!(ended && text.contains("data: four") && !text.contains("data: three"));
        drop(third);
        let report = support::body::next_report(&mut reports).await;
        assert_eq!(report.outcome, Outcome::Completed);

        let finished = spans.finished();
        assert_eq!(finished.len(), 3, "{finished:#?}");
        let (producers, readers): (Vec<_>, Vec<_>) = finished
            .into_iter()
            .partition(|span| span.span_kind == SpanKind::Client);
        assert_eq!(producers.len(), 1);
        let producer = &producers[0];
        assert_eq!(producer.name, "chat gpt-asked");
        assert_eq!(
            string(producer, names::TOWER_SSE_RESUME_STREAM).as_deref(),
            Some(stream.as_str())
        );
        assert_eq!(int(producer, names::TOWER_SSE_RESUME_CONNECTIONS), Some(3));
        assert_eq!(int(producer, names::TOWER_SSE_RESUME_RESUMES), Some(2));
        assert_eq!(
            int(producer, names::TOWER_SSE_RESUME_REPLAYED_EVENTS),
            Some(1)
        );
        assert!(producer.links.is_empty());

        // In the order they ended: the first resume, then the second.
        assert_eq!(readers.len(), 2);
        for reader in &readers {
            assert_eq!(reader.span_kind, SpanKind::Internal);
            assert_eq!(reader.name, "resume");
            assert_eq!(links(reader), std::slice::from_ref(&producer.span_context));
            // Parented to the caller of the resume (here, the same trace as the stream).
            assert_eq!(reader.span_context.trace_id().to_string(), PARENT_TRACE);
            assert_eq!(reader.parent_span_id.to_string(), PARENT_SPAN);
            assert_eq!(
                string(reader, names::TOWER_SSE_RESUME_STREAM).as_deref(),
                Some(stream.as_str())
            );
            assert_eq!(int(reader, names::HTTP_RESPONSE_STATUS_CODE), Some(200));
            assert!(attr(reader, names::GEN_AI_OPERATION_NAME).is_none());
        }
        let (cut, ended) = (&readers[0], &readers[1]);
        assert_eq!(int(cut, names::TOWER_SSE_RESUME_CURSOR), Some(1));
        assert_eq!(int(cut, names::TOWER_SSE_EVENTS), Some(2));
        assert_eq!(int(cut, names::TOWER_SSE_RESUME_REPLAYED_EVENTS), Some(1));
        assert_eq!(
            string(cut, names::TOWER_SSE_RESUME_READER_END).as_deref(),
            Some("client_left")
        );
        assert_eq!(cut.status, Status::Unset);
        assert_eq!(int(ended, names::TOWER_SSE_RESUME_CURSOR), Some(3));
        assert_eq!(int(ended, names::TOWER_SSE_EVENTS), Some(1));
        assert_eq!(int(ended, names::TOWER_SSE_RESUME_REPLAYED_EVENTS), Some(0));
        assert_eq!(
            string(ended, names::TOWER_SSE_RESUME_READER_END).as_deref(),
            Some("stream_end")
        );
        assert!(int(ended, names::TOWER_SSE_BYTES).unwrap() > 0);
        assert_eq!(ended.status, Status::Unset);
    }

    /// The stack of one replica: the `ResumeLayer` on `store` with reader spans, the
    /// `SpanLayer`, the `SseLayer` with the span observer last, and an upstream whose one
    /// answer is a stream fed by the sender it gave (`None`: this replica never calls it).
    fn replica(
        store: impl tower_sse::resume::ResumeStore + Clone,
        layer: &SpanLayer,
        upstream: Option<support::body::ChannelBody>,
    ) -> (
        impl Service<
            Request<Empty<Bytes>>,
            Response = Response<impl http_body::Body<Data = Bytes, Error = tower_sse::BoxError>>,
            Error = Infallible,
        > + Clone,
        tokio::sync::mpsc::UnboundedReceiver<tower_sse::StreamReport>,
    ) {
        let upstream = Arc::new(Mutex::new(upstream));
        let inner = tower::service_fn(move |_: Request<UploadBody<Empty<Bytes>>>| {
            let body = upstream.lock().unwrap().take().expect("one upstream call");
            async move { Ok::<_, Infallible>(sse(body)) }
        });
        let (on_end, reports) = report_channel();
        let service = ServiceBuilder::new()
            .layer(ResumeLayer::new().store(store).spans(layer))
            .layer(layer.clone())
            .layer(
                SseLayer::new()
                    .observer((ResumeObserver::new(), layer.observer()))
                    .on_end(on_end),
            )
            .service(inner);
        (service, reports)
    }

    /// The id of the resumable stream a response started (its `sse-stream-id`).
    fn stream_id<B>(response: &Response<B>) -> String {
        response.headers()["sse-stream-id"]
            .to_str()
            .unwrap()
            .to_owned()
    }

    /// A `RedisStore` on `url` that polls every 100 ms, with this lease.
    #[cfg(feature = "redis")]
    fn redis_store(url: &str, lease: std::time::Duration) -> tower_sse::resume::RedisStore {
        tower_sse::resume::RedisStore::builder(url)
            .unwrap()
            .poll(std::time::Duration::from_millis(100))
            .lease(lease)
            .build()
    }

    /// A reader span's one link, and the producer's span it must be to: the same trace, the
    /// same span, sampled alike.
    fn assert_linked_to(reader: &SpanData, producer: &SpanData) {
        let links = links(reader);
        assert_eq!(links.len(), 1, "{reader:#?}");
        let (link, producer) = (&links[0], &producer.span_context);
        assert!(producer.is_valid());
        assert_eq!(link.trace_id(), producer.trace_id());
        assert_eq!(link.span_id(), producer.span_id());
        assert_eq!(link.trace_flags(), producer.trace_flags());
    }

    /// A resume served after the stream's producer ended (in this process, from the
    /// `MemoryStore`): no producer holds the stream's span context any more, and the reader
    /// span is still linked to the producer's span, from what the log kept.
    #[tokio::test]
    async fn a_resume_after_the_producer_ended_is_linked_to_its_span() {
        let spans = Spans::new();
        let layer = spans.layer();
        let (tx, body) = channel();
        let (service, mut reports) = replica(MemoryStore::new(), &layer, Some(body));

        let response = service.clone().oneshot(stream_request()).await.unwrap();
        let stream = stream_id(&response);
        for data in ["one", "two", "three"] {
            tx.send(Ok(EVENT(data))).unwrap();
        }
        drop(tx);
        // The first client reads the whole stream, to the log's end: the producer wrote the
        // end and left (it removes itself in the same poll, before any reader wakes).
        let mut first = response.into_body();
        let (text, ended) = read(&mut first, None).await;
        assert!(ended && text.contains("data: three"));
        drop(first);
        assert_eq!(
            support::body::next_report(&mut reports).await.outcome,
            Outcome::Completed
        );
        let producer = spans.one();
        assert_eq!(producer.span_kind, SpanKind::Client);

        // Resumed after event 1: events 2 and 3 replayed, then the end.
        let response = service
            .oneshot(resume_request(&format!("{stream}.1")))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let (text, ended) = read(&mut response.into_body(), None).await;
        assert!(ended && text.contains("data: two") && !text.contains("data: one"));

        let finished = spans.finished();
        assert_eq!(finished.len(), 2, "{finished:#?}");
        let reader = &finished[1];
        assert_eq!(reader.name, "resume");
        assert_linked_to(reader, &producer);
        // From the log, not from a running producer: the log keeps no `tracestate`, and the
        // context it gives is a remote one (the producer's carried `vendor=abc`).
        assert!(links(reader)[0].is_remote());
        assert_eq!(producer.span_context.trace_state().header(), "vendor=abc");
        assert_eq!(reader.span_context.trace_id().to_string(), PARENT_TRACE);
        assert_eq!(reader.parent_span_id.to_string(), PARENT_SPAN);
        assert_eq!(int(reader, names::TOWER_SSE_RESUME_CURSOR), Some(1));
        assert_eq!(
            int(reader, names::TOWER_SSE_RESUME_REPLAYED_EVENTS),
            Some(2)
        );
        assert_eq!(
            string(reader, names::TOWER_SSE_RESUME_READER_END).as_deref(),
            Some("stream_end")
        );
    }

    /// Two replicas (two `ResumeLayer` stacks, each with its own tracer and exporter, as two
    /// processes) on one real `redis-server`: a stream produced by A, cut, and resumed on B
    /// by a caller of another trace. B's reader span has that caller as its parent and a
    /// link to A's producer span, which B knows only from Redis.
    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn a_resume_on_another_replica_is_linked_to_the_producers_span() {
        use std::time::Duration;

        let Some(redis) = support::redis::Redis::start() else {
            return;
        };
        let store = || redis_store(&redis.url(), Duration::from_secs(1));
        let (spans_a, spans_b) = (Spans::new(), Spans::new());
        let (layer_a, layer_b) = (spans_a.layer(), spans_b.layer());
        let (tx, body) = channel();
        let (a, mut reports) = replica(store(), &layer_a, Some(body));
        let (b, _) = replica(store(), &layer_b, None);

        // Produced by A: the client reads one event and leaves; the upstream goes on.
        let response = a.oneshot(stream_request()).await.unwrap();
        let stream = stream_id(&response);
        tx.send(Ok(EVENT("one"))).unwrap();
        let mut first = response.into_body();
        read(&mut first, Some("data: one")).await;
        drop(first);
        tx.send(Ok(EVENT("two"))).unwrap();

        // Resumed on B, by a caller in another trace.
        const OTHER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
        const OTHER_SPAN: &str = "b7ad6b7169203331";
        let mut request = resume_request(&format!("{stream}.1"));
        request.headers_mut().insert(
            "traceparent",
            format!("00-{OTHER_TRACE}-{OTHER_SPAN}-01").parse().unwrap(),
        );
        let response = tokio::time::timeout(Duration::from_secs(10), b.oneshot(request))
            .await
            .expect("B answers");
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut resumed = response.into_body();
        let read_b = |body| async move {
            tokio::time::timeout(Duration::from_secs(10), read(body, Some("data: two")))
                .await
                .expect("the event within 10 s")
        };
        read_b(&mut resumed).await;
        drop(tx);
        let (_, ended) = tokio::time::timeout(Duration::from_secs(10), read(&mut resumed, None))
            .await
            .expect("the end within 10 s");
        assert!(ended);
        drop(resumed);
        assert_eq!(
            support::body::next_report(&mut reports).await.outcome,
            Outcome::Completed
        );

        let producer = spans_a.one();
        assert_eq!(producer.span_kind, SpanKind::Client);
        assert_eq!(producer.span_context.trace_id().to_string(), PARENT_TRACE);
        let reader = spans_b.one();
        assert_eq!(reader.name, "resume");
        assert_eq!(reader.span_kind, SpanKind::Internal);
        assert_linked_to(&reader, &producer);
        // The caller's trace, not the producer's.
        assert_eq!(reader.span_context.trace_id().to_string(), OTHER_TRACE);
        assert_eq!(reader.parent_span_id.to_string(), OTHER_SPAN);
        assert_eq!(
            string(&reader, names::TOWER_SSE_RESUME_STREAM).as_deref(),
            Some(stream.as_str())
        );
        assert_eq!(int(&reader, names::TOWER_SSE_RESUME_CURSOR), Some(1));
        assert_eq!(
            string(&reader, names::TOWER_SSE_RESUME_READER_END).as_deref(),
            Some("stream_end")
        );
    }

    /// Redis restarts empty in the middle of a stream: the producer's mirror writes the
    /// stream's `meta` again, its span context with it, so a resume on another replica once
    /// Redis is back is still linked to the producer's span.
    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn after_a_redis_restart_a_resume_elsewhere_is_still_linked() {
        use std::time::Duration;

        let Some(redis) = support::redis::Redis::start() else {
            return;
        };
        let url = redis.url();
        let store = || redis_store(&url, Duration::from_millis(300));
        let (spans_a, spans_b) = (Spans::new(), Spans::new());
        let (layer_a, layer_b) = (spans_a.layer(), spans_b.layer());
        let (tx, body) = channel();
        let (a, mut reports) = replica(store(), &layer_a, Some(body));
        let (b, _) = replica(store(), &layer_b, None);
        let response = a.oneshot(stream_request()).await.unwrap();
        let stream = stream_id(&response);
        tx.send(Ok(EVENT("before"))).unwrap();
        let mut first = response.into_body();
        read(&mut first, Some("data: before")).await;

        // Redis restarts without its data; the stream goes on meanwhile.
        let port = redis.stop();
        tx.send(Ok(EVENT("during"))).unwrap();
        read(&mut first, Some("data: during")).await;
        let _redis = support::redis::Redis::start_on(port);
        let mut served = None;
        for _ in 0..50 {
            let response = b
                .clone()
                .oneshot(resume_request(&format!("{stream}.1")))
                .await
                .unwrap();
            if response.status() == StatusCode::OK {
                served = Some(response);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut resumed = served.expect("served once Redis is back").into_body();
        tokio::time::timeout(
            Duration::from_secs(10),
            read(&mut resumed, Some("data: during")),
        )
        .await
        .expect("the replay within 10 s");
        drop(resumed);
        drop(first);
        drop(tx);
        assert_eq!(
            support::body::next_report(&mut reports).await.outcome,
            Outcome::Completed
        );

        let producer = spans_a.one();
        // The resumes answered `204` while the stream was not re-synced yet have spans too,
        // unlinked (nothing was found); the one served is linked.
        let served: Vec<_> = spans_b
            .finished()
            .into_iter()
            .filter(|span| int(span, names::HTTP_RESPONSE_STATUS_CODE) == Some(200))
            .collect();
        assert_eq!(served.len(), 1, "{served:#?}");
        assert_linked_to(&served[0], &producer);
    }

    /// The Redis commands (by name) and bytes of creating a stream with a span and of
    /// opening it on another replica, counted with `INFO commandstats` and `INFO stats`
    /// (BENCHMARKS.md, "Resumable streams on Redis"): the producer's span context rides in
    /// the `HSET` that already writes the tenant and comes back with it in one `HMGET`.
    ///
    /// `cargo nextest run -p tower-sse --all-features --test span --run-ignored only redis_commands --no-capture`
    #[cfg(feature = "redis")]
    #[tokio::test]
    #[ignore = "a measurement: prints counts"]
    async fn redis_commands_of_creating_and_opening_a_traced_stream() {
        use std::collections::BTreeMap;
        use std::time::Duration;
        use tower_sse::resume::RedisStore;

        let Some(redis) = support::redis::Redis::start() else {
            return;
        };
        // What Redis processed so far: calls by command (`INFO` itself left out), and bytes in.
        let snapshot = || {
            let stats = redis.cli(&["INFO", "commandstats"]).unwrap();
            let mut calls: BTreeMap<String, i64> = stats
                .lines()
                .filter_map(|line| {
                    let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(":calls=")?;
                    let n = rest.split(',').next()?.parse().ok()?;
                    (name != "info").then(|| (name.to_owned(), n))
                })
                .collect();
            let stats = redis.cli(&["INFO", "stats"]).unwrap();
            let bytes = stats
                .lines()
                .find_map(|line| line.strip_prefix("total_net_input_bytes:"))
                .and_then(|n| n.trim().parse().ok())
                .unwrap();
            calls.insert("(bytes in)".to_owned(), bytes);
            calls
        };
        let delta = |before: &BTreeMap<String, i64>, after: &BTreeMap<String, i64>| {
            after
                .iter()
                .map(|(name, n)| (name.clone(), n - before.get(name).copied().unwrap_or(0)))
                .filter(|(_, n)| *n != 0)
                .collect::<BTreeMap<_, _>>()
        };
        // The default lease: no heartbeat in the windows counted.
        let store = || RedisStore::builder(&redis.url()).unwrap().build();
        let (spans_a, spans_b) = (Spans::new(), Spans::new());
        let (layer_a, layer_b) = (spans_a.layer(), spans_b.layer());
        let (tx, body) = channel();
        let (a, _reports) = replica(store(), &layer_a, Some(body));
        let (b, _) = replica(store(), &layer_b, None);

        let before = snapshot();
        let response = a.oneshot(stream_request()).await.unwrap();
        let created = snapshot();
        let stream = stream_id(&response);
        tx.send(Ok(EVENT("one"))).unwrap();
        let mut first = response.into_body();
        read(&mut first, Some("data: one")).await;
        let log = format!("tower-sse:{{{stream}}}:log");
        while redis.cli(&["XLEN", &log]).unwrap().trim() != "1" {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mirrored = snapshot();
        let response = b
            .oneshot(resume_request(&format!("{stream}.1")))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let opened = snapshot();
        println!("create: {:?}", delta(&before, &created));
        println!("first event mirrored: {:?}", delta(&created, &mirrored));
        println!("open on the other replica: {:?}", delta(&mirrored, &opened));
        drop((response, first, tx));
    }

    /// A resume answered `204` (an unknown stream) has its short span too, ended at once
    /// with the status; a resume layer without spans opens none.
    #[tokio::test]
    async fn a_resume_answered_204_ends_its_span_at_once() {
        let spans = Spans::new();
        let layer = spans.layer();
        let upstream = tower::service_fn(|_: Request<UploadBody<Empty<Bytes>>>| async {
            Ok::<_, Infallible>(sse(FramesBody::data(&[DONE])))
        });
        let stack = |resume: ResumeLayer| {
            ServiceBuilder::new()
                .layer(resume)
                .layer(layer.clone())
                .layer(SseLayer::new().observer((ResumeObserver::new(), layer.observer())))
                .service(upstream)
        };
        let unknown = "AAAAAAAAAAAAAAAAAAAAAA.4";
        let response = stack(ResumeLayer::new().spans(&layer))
            .oneshot(resume_request(unknown))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let span = spans.one();
        assert_eq!(span.name, "resume");
        assert_eq!(int(&span, names::HTTP_RESPONSE_STATUS_CODE), Some(204));
        assert!(span.links.is_empty());

        let response = stack(ResumeLayer::new())
            .oneshot(resume_request(unknown))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert_eq!(spans.finished().len(), 1);
    }
}
