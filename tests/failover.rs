//! `Failover` between two real upstream servers (axum on 127.0.0.1:0) behind a hyper
//! gateway with the `SseLayer`: before the first content event every failure moves to the
//! second upstream, whose stream the client gets byte for byte; after it, no retry.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body as AxumBody;
use axum::routing::post;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use support::body::{next_report, report_channel};
use tokio::net::TcpListener;
use tower::Layer;
use tower_sse::failover::{AttemptError, AttemptOutcome, Commit, Failover, ReplayBody};
use tower_sse::request::UploadBody;
use tower_sse::{Outcome, SseLayer, StreamReport, UsageObserver};

/// The second upstream's stream: a role chunk, two content chunks, usage, `[DONE]`, sent in
/// awkward pieces.
const SECOND: &[&str] = &[
    "data: {\"id\":\"chatcmpl-2\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
    "data: {\"id\":\"chatcmpl-2\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choi",
    "ces\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"id\":\"chatcmpl-2\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\r",
    "\n\r\n",
    "data: {\"id\":\"chatcmpl-2\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n",
    "data: [DONE]\n\n",
];

const REQUEST: &str = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

fn stream_of(pieces: Vec<Result<&'static str, &'static str>>) -> Response<AxumBody> {
    let stream = futures_util::stream::iter(pieces.into_iter().map(|p| {
        p.map(|p| Bytes::from_static(p.as_bytes()))
            .map_err(std::io::Error::other)
    }));
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(AxumBody::from_stream(stream))
        .unwrap()
}

async fn serve_axum(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// What the second upstream saw.
#[derive(Clone, Default)]
struct Seen {
    calls: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Bytes>>>,
}

/// The second upstream: always answers [`SECOND`], and records the request bodies.
async fn second_upstream() -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let state = seen.clone();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |body: Bytes| {
            let state = state.clone();
            async move {
                state.calls.fetch_add(1, Ordering::SeqCst);
                state.bodies.lock().unwrap().push(body);
                stream_of(SECOND.iter().map(|p| Ok(*p)).collect())
            }
        }),
    );
    (serve_axum(app).await, seen)
}

/// The first upstream, answering every request with `answer()`.
async fn first_upstream(answer: fn() -> Response<AxumBody>) -> SocketAddr {
    serve_axum(Router::new().route(
        "/v1/chat/completions",
        post(move || async move { answer() }),
    ))
    .await
}

/// An address nothing listens on: connections are refused.
async fn refusing() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

type Upstream = tower::util::BoxCloneSyncService<
    Request<ReplayBody<UploadBody<Incoming>>>,
    Response<Incoming>,
    hyper_util::client::legacy::Error,
>;

/// A hyper-util client sending to `addr`.
fn upstream(
    client: &Client<HttpConnector, ReplayBody<UploadBody<Incoming>>>,
    addr: SocketAddr,
) -> Upstream {
    let client = client.clone();
    tower::util::BoxCloneSyncService::new(tower::service_fn(
        move |mut request: Request<ReplayBody<UploadBody<Incoming>>>| {
            let path = request.uri().path().to_owned();
            *request.uri_mut() = format!("http://{addr}{path}").parse().unwrap();
            client.request(request)
        },
    ))
}

/// A gateway on 127.0.0.1:0: hyper server -> SseLayer -> Failover -> two hyper-util
/// clients. Reports go to the returned channel.
async fn gateway(
    first: SocketAddr,
    second: SocketAddr,
    layer: impl FnOnce(Failover<Upstream>) -> Failover<Upstream>,
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<StreamReport>,
) {
    let (sink, reports) = report_channel();
    let client =
        Client::builder(TokioExecutor::new()).build_http::<ReplayBody<UploadBody<Incoming>>>();
    let failover = layer(
        Failover::named([
            ("first", upstream(&client, first)),
            ("second", upstream(&client, second)),
        ])
        .backoff(Duration::ZERO),
    );
    let service = SseLayer::new()
        .observer(UsageObserver::new())
        .on_end(sink)
        .layer(failover);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
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
    (addr, reports)
}

async fn post_stream(gateway: SocketAddr, body: &'static str) -> (StatusCode, Bytes) {
    let response = reqwest::Client::new()
        .post(format!("http://{gateway}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.bytes().await.unwrap())
}

/// The first upstream fails before any content in the way `first` says: the client gets
/// the second upstream's whole stream, byte for byte, and one report shows two attempts.
async fn fails_over(first: SocketAddr) -> StreamReport {
    let (second, seen) = second_upstream().await;
    let (gateway, mut reports) = gateway(first, second, |f| f).await;
    let (status, body) = post_stream(gateway, REQUEST).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        SECOND.concat(),
        "the second upstream's stream, byte for byte"
    );
    assert_eq!(seen.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        seen.bodies.lock().unwrap().as_slice(),
        &[Bytes::from_static(REQUEST.as_bytes())],
        "the request body, sent again whole"
    );
    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(report.usage.and_then(|u| u.output_tokens), Some(2));
    let failover = report.failover.as_deref().expect("the failover report");
    assert_eq!(failover.attempts.len(), 2, "{failover:?}");
    assert_eq!(failover.served, Some(1));
    assert!(failover.replayable);
    assert!(!failover.cut_after_commit);
    assert_eq!(failover.attempts[0].upstream, 0);
    assert_eq!(failover.attempts[0].name.as_deref(), Some("first"));
    assert_eq!(failover.attempts[1].upstream, 1);
    assert_eq!(failover.attempts[1].name.as_deref(), Some("second"));
    assert_eq!(failover.attempts[1].status, Some(StatusCode::OK));
    assert_eq!(
        failover.attempts[1].outcome,
        AttemptOutcome::Served(Commit::Unchecked),
        "the last upstream is not held: its answer is the answer"
    );
    assert!(reports.try_recv().is_err(), "one report");
    report
}

#[tokio::test]
async fn a_529_head_fails_over() {
    let first = first_upstream(|| {
        Response::builder()
            .status(529)
            .header("content-type", "application/json")
            .header("retry-after", "0")
            .body(AxumBody::from(
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            ))
            .unwrap()
    })
    .await;
    let report = fails_over(first).await;
    let attempt = &report.failover.unwrap().attempts[0];
    assert_eq!(attempt.status, Some(StatusCode::from_u16(529).unwrap()));
    assert_eq!(
        attempt.outcome,
        AttemptOutcome::Failed(AttemptError::Status(StatusCode::from_u16(529).unwrap()))
    );
}

#[tokio::test]
async fn an_in_band_overloaded_error_fails_over_and_its_usage_is_kept() {
    let first = first_upstream(|| {
        stream_of(vec![
            Ok("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude\",\"content\":[],\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n"),
            Ok("event: ping\ndata: {\"type\":\"ping\"}\n\n"),
            Ok("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"),
        ])
    })
    .await;
    let report = fails_over(first).await;
    let attempt = &report.failover.unwrap().attempts[0];
    assert_eq!(attempt.status, Some(StatusCode::OK));
    assert_eq!(
        attempt.outcome,
        AttemptOutcome::Failed(AttemptError::InBand)
    );
    let error = attempt.provider_error.as_ref().unwrap();
    assert_eq!(error.kind.as_deref(), Some("overloaded_error"));
    assert_eq!(
        attempt.usage.and_then(|u| u.input_tokens),
        Some(12),
        "a failed attempt can still cost input tokens"
    );
    assert!(
        report.provider_error.is_none(),
        "the served stream had no error"
    );
}

#[tokio::test]
async fn a_200_with_no_events_then_eof_fails_over() {
    let first = first_upstream(|| stream_of(vec![])).await;
    let report = fails_over(first).await;
    let attempt = &report.failover.unwrap().attempts[0];
    assert_eq!(attempt.status, Some(StatusCode::OK));
    assert_eq!(
        attempt.outcome,
        AttemptOutcome::Failed(AttemptError::NoContent)
    );
}

#[tokio::test]
async fn a_refused_connection_fails_over() {
    let report = fails_over(refusing().await).await;
    let attempt = &report.failover.unwrap().attempts[0];
    assert_eq!(attempt.status, None);
    assert!(
        matches!(
            attempt.outcome,
            AttemptOutcome::Failed(AttemptError::Call(_))
        ),
        "{attempt:?}"
    );
}

/// The first upstream fails after its first content event: the client gets its content,
/// then an end (the upstream's own error event, or the layer's for a cut body), and not one
/// byte from the second upstream, which is never called.
async fn no_retry_after_commit(first: SocketAddr) -> (Bytes, StreamReport) {
    let (second, seen) = second_upstream().await;
    let (gateway, mut reports) = gateway(first, second, |f| f).await;
    let (status, body) = post_stream(gateway, REQUEST).await;
    assert_eq!(status, StatusCode::OK);
    let text = std::str::from_utf8(&body).unwrap();
    assert!(text.contains("\"content\":\"Hel\""), "{text}");
    assert!(
        !text.contains("chatcmpl-2"),
        "no byte of the second upstream: {text}"
    );
    assert_eq!(seen.calls.load(Ordering::SeqCst), 0);
    let report = next_report(&mut reports).await;
    let failover = report.failover.as_deref().unwrap();
    assert_eq!(failover.attempts.len(), 1);
    assert_eq!(failover.served, Some(0));
    assert_eq!(
        failover.attempts[0].outcome,
        AttemptOutcome::Served(Commit::Content)
    );
    assert!(failover.cut_after_commit, "{report:?}");
    (body, report)
}

/// A raw HTTP/1.1 upstream that reads one request, sends a chunked event-stream head and
/// `chunk`, then closes the connection in the middle of the body (no last chunk).
async fn cut_after(chunk: &'static str) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        // Read the whole request (head and its content-length body) before answering, so
        // that closing the socket sends a FIN, not a reset.
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the request ended early");
            request.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&request);
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if request.len() >= end + 4 + length {
                    break;
                }
            }
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n",
            chunk.len()
        );
        stream.write_all(answer.as_bytes()).await.unwrap();
        stream.shutdown().await.unwrap();
    });
    addr
}

const FIRST_CONTENT: &str = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n";
const FIRST_ERROR: &str =
    "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n";

#[tokio::test]
async fn an_error_event_after_the_first_content_event_ends_the_stream_without_retry() {
    let first = first_upstream(|| stream_of(vec![Ok(FIRST_CONTENT), Ok(FIRST_ERROR)])).await;
    let (body, report) = no_retry_after_commit(first).await;
    assert_eq!(
        &body[..],
        [FIRST_CONTENT, FIRST_ERROR].concat().as_bytes(),
        "the upstream's own error event ends the stream"
    );
    assert_eq!(report.outcome, Outcome::ProviderError);
}

#[tokio::test]
async fn a_body_cut_after_the_first_content_event_ends_with_an_error_event_without_retry() {
    let (body, report) = no_retry_after_commit(cut_after(FIRST_CONTENT).await).await;
    let text = std::str::from_utf8(&body).unwrap();
    assert!(text.starts_with(FIRST_CONTENT), "{text}");
    assert!(
        text.contains("event: error"),
        "the layer's error event: {text}"
    );
    assert_eq!(report.outcome, Outcome::UpstreamError);
}

#[tokio::test]
async fn a_body_over_the_bound_is_sent_once_without_failover() {
    let first = first_upstream(|| {
        Response::builder()
            .status(529)
            .body(AxumBody::empty())
            .unwrap()
    })
    .await;
    let (second, seen) = second_upstream().await;
    let (gateway, mut reports) = gateway(first, second, |f| f.max_replay_body(16)).await;
    let (status, _) = post_stream(gateway, REQUEST).await;
    assert_eq!(status.as_u16(), 529, "the only answer, as it came");
    assert_eq!(seen.calls.load(Ordering::SeqCst), 0);
    let report = next_report(&mut reports).await;
    let failover = report.failover.as_deref().unwrap();
    assert!(
        !failover.replayable,
        "the report says the body was not kept"
    );
    assert!(!failover.cut_after_commit, "no content reached the client");
    assert_eq!(failover.attempts.len(), 1);
    assert_eq!(
        failover.attempts[0].outcome,
        AttemptOutcome::Served(Commit::Unchecked)
    );
}

/// With an early response, the client gets its head and keep-alive comments while the
/// attempts run (paused time: the first upstream answers `529` after 3 s).
#[tokio::test(start_paused = true)]
async fn keep_alives_flow_while_the_first_upstream_is_failing() {
    use http_body_util::{BodyExt, Full};
    use tower::ServiceExt;

    let slow_529 = tower::service_fn(|_: Request<ReplayBody<UploadBody<Full<Bytes>>>>| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        Ok::<_, Infallible>(
            Response::builder()
                .status(529)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
    });
    let second = tower::service_fn(|_: Request<ReplayBody<UploadBody<Full<Bytes>>>>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Full::new(Bytes::from(SECOND.concat())))
                .unwrap(),
        )
    });
    let (sink, mut reports) = report_channel();
    let failover = Failover::new([
        tower::util::BoxCloneSyncService::new(slow_529),
        tower::util::BoxCloneSyncService::new(second),
    ])
    .backoff(Duration::ZERO);
    let service = SseLayer::new()
        .early_response(true)
        .keep_alive(tower_sse::KeepAliveConfig::new().interval(Duration::from_secs(1)))
        .on_end(sink)
        .layer(failover);
    let request = Request::post("/v1/chat/completions")
        .header("accept", "text/event-stream")
        .body(Full::new(Bytes::from_static(REQUEST.as_bytes())))
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = std::str::from_utf8(&body).unwrap();
    let events = text
        .strip_suffix(&SECOND.concat()[..])
        .expect("ends with the second stream");
    assert!(
        !events.is_empty() && events.lines().all(|l| l.is_empty() || l.starts_with(':')),
        "{text}"
    );
    let report = next_report(&mut reports).await;
    assert!(report.keep_alives >= 2, "{report:?}");
    assert_eq!(report.failover.unwrap().attempts.len(), 2);
}

/// The circuit breaker: after two failures in a row the first upstream is skipped for the
/// cool-down, then tried again; every attempt and skip is in the metrics.
#[cfg(feature = "metrics")]
#[test]
fn the_circuit_breaker_skips_a_failing_upstream_for_its_cool_down_and_metrics_see_it() {
    use http_body_util::{BodyExt, Full};
    use metrics_util::debugging::DebugValue;
    use tower::ServiceExt;
    use tower_sse::failover::{CircuitBreaker, FailoverReport};
    use tower_sse::metrics::names;

    let snapshot = support::metrics::recorded(true, || async {
        let overloaded = tower::service_fn(|_: Request<ReplayBody<Full<Bytes>>>| async {
            Ok::<_, Infallible>(
                Response::builder()
                    .status(529)
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
        });
        let answers = tower::service_fn(|_: Request<ReplayBody<Full<Bytes>>>| async {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Full::new(Bytes::from(SECOND.concat())))
                    .unwrap(),
            )
        });
        let failover = Failover::named([
            ("a", tower::util::BoxCloneSyncService::new(overloaded)),
            ("b", tower::util::BoxCloneSyncService::new(answers)),
        ])
        .backoff(Duration::ZERO)
        .circuit_breaker(Some(CircuitBreaker::new(2, Duration::from_secs(10))));
        let call = || {
            let failover = failover.clone();
            async move {
                let request = Request::post("/v1/chat/completions")
                    .body(Full::new(Bytes::from_static(REQUEST.as_bytes())))
                    .unwrap();
                let response = failover.oneshot(request).await.unwrap();
                let report = response
                    .extensions()
                    .get::<FailoverReport>()
                    .cloned()
                    .unwrap();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(&body[..], SECOND.concat().as_bytes());
                report
            }
        };
        for _ in 0..2 {
            let report = call().await;
            assert_eq!(report.attempts.len(), 2);
            assert!(report.skipped.is_empty());
        }
        let report = call().await;
        assert_eq!(report.skipped, vec![0], "open: skipped");
        assert_eq!(report.attempts.len(), 1);
        assert_eq!(report.attempts[0].upstream, 1);
        tokio::time::advance(Duration::from_secs(10)).await;
        let report = call().await;
        assert!(report.skipped.is_empty(), "half-open after the cool-down");
        assert_eq!(report.attempts.len(), 2);
        let report = call().await;
        assert_eq!(report.skipped, vec![0], "one more failure opened it again");
    });
    let value = |name: &str, labels: &[(&str, &str)]| {
        snapshot
            .iter()
            .find(|(key, ..)| {
                key.key().name() == name
                    && labels
                        .iter()
                        .all(|(k, v)| key.key().labels().any(|l| l.key() == *k && l.value() == *v))
            })
            .map(|(.., value)| value)
    };
    let attempts = names::FAILOVER_ATTEMPTS;
    assert_eq!(
        value(attempts, &[("upstream", "a"), ("result", "status")]),
        Some(&DebugValue::Counter(3))
    );
    assert_eq!(
        value(attempts, &[("upstream", "b"), ("result", "served")]),
        Some(&DebugValue::Counter(5))
    );
    assert_eq!(
        value(names::FAILOVER_SKIPPED, &[("upstream", "a")]),
        Some(&DebugValue::Counter(2))
    );
    assert_eq!(
        value(names::FAILOVER_CIRCUIT_OPEN, &[("upstream", "a")]),
        Some(&DebugValue::Gauge(1.0.into()))
    );
}

/// An SSE body whose events arrive at these offsets (paused time) from its first poll.
fn timed_sse(
    events: &'static [(u64, &'static str)],
) -> http_body_util::StreamBody<
    std::pin::Pin<
        Box<dyn futures_core::Stream<Item = Result<http_body::Frame<Bytes>, Infallible>> + Send>,
    >,
> {
    use futures_util::StreamExt;
    let start = tokio::time::Instant::now();
    let stream = futures_util::stream::iter(events.iter()).then(move |&(at, event)| async move {
        tokio::time::sleep_until(start + Duration::from_millis(at)).await;
        Ok(http_body::Frame::data(Bytes::from_static(event.as_bytes())))
    });
    http_body_util::StreamBody::new(Box::pin(stream))
}

const ROLE: &str = "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n";
const CONTENT: &str = "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n";

type Boxed = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// An upstream answering at once with a stream whose events arrive at these offsets.
fn timed_upstream(
    events: &'static [(u64, &'static str)],
    head_after: u64,
) -> tower::util::BoxCloneSyncService<
    Request<ReplayBody<UploadBody<http_body_util::Full<Bytes>>>>,
    Response<Boxed>,
    Infallible,
> {
    use http_body_util::BodyExt;
    tower::util::BoxCloneSyncService::new(tower::service_fn(
        move |_: Request<ReplayBody<UploadBody<http_body_util::Full<Bytes>>>>| async move {
            tokio::time::sleep(Duration::from_millis(head_after)).await;
            let body: Boxed = timed_sse(events).boxed_unsync();
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(body)
                    .unwrap(),
            )
        },
    ))
}

/// A stream with a role chunk at 100 ms and its first content event at 700 ms.
static ANSWER: &[(u64, &str)] = &[(100, ROLE), (700, CONTENT), (750, "data: [DONE]\n\n")];
/// An in-band error at once.
static FAILS: &[(u64, &str)] = &[(
    0,
    "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n",
)];

/// Time to first token through the `SseLayer` with the timing observer, in paused time:
/// straight to [`ANSWER`] (`None`), or through a failover over these upstreams.
async fn ttft(
    upstreams: Option<
        Vec<
            tower::util::BoxCloneSyncService<
                Request<ReplayBody<UploadBody<http_body_util::Full<Bytes>>>>,
                Response<Boxed>,
                Infallible,
            >,
        >,
    >,
) -> Duration {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    use tower_sse::TimingObserver;

    let (sink, mut reports) = report_channel();
    let layer = SseLayer::new().observer(TimingObserver::new()).on_end(sink);
    let request = Request::post("/v1/chat/completions")
        .header("accept", "text/event-stream")
        .body(http_body_util::Full::new(Bytes::from_static(
            REQUEST.as_bytes(),
        )))
        .unwrap();
    match upstreams {
        None => {
            let service = layer.layer(tower::service_fn(
                |_: Request<UploadBody<http_body_util::Full<Bytes>>>| async {
                    let body: Boxed = timed_sse(ANSWER).boxed_unsync();
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "text/event-stream")
                            .body(body)
                            .unwrap(),
                    )
                },
            ));
            let response = service.oneshot(request).await.unwrap();
            response.into_body().collect().await.unwrap();
        }
        Some(upstreams) => {
            let service = layer.layer(Failover::new(upstreams).backoff(Duration::ZERO));
            let response = service.oneshot(request).await.unwrap();
            response.into_body().collect().await.unwrap();
        }
    }
    let report = next_report(&mut reports).await;
    report.timing.unwrap().time_to_first_token.unwrap()
}

/// BENCHMARKS.md, "Failover": holding the head until the commit adds nothing to the time to
/// first token (paused time, so the figures are exact whatever the machine's load); a failed
/// first attempt adds exactly its own duration.
#[tokio::test(start_paused = true)]
async fn holding_the_head_until_the_commit_adds_nothing_to_the_time_to_first_token() {
    let direct = ttft(None).await;
    assert_eq!(direct, Duration::from_millis(700));
    assert_eq!(
        ttft(Some(vec![
            timed_upstream(ANSWER, 0),
            timed_upstream(FAILS, 0)
        ]))
        .await,
        direct,
        "held until the first content event: the upstream's own first-event time"
    );
    assert_eq!(
        ttft(Some(vec![
            timed_upstream(FAILS, 300),
            timed_upstream(ANSWER, 0)
        ]))
        .await,
        direct + Duration::from_millis(300),
        "a first attempt failing after 300 ms adds its 300 ms, nothing more"
    );
}

/// An in-memory upstream for the tests below: what it answered, and when it was called
/// (paused time).
type Calls = Arc<Mutex<Vec<tokio::time::Instant>>>;

fn answering(
    calls: Calls,
    answer: fn() -> Response<http_body_util::Full<Bytes>>,
) -> tower::util::BoxCloneSyncService<
    Request<ReplayBody<http_body_util::Full<Bytes>>>,
    Response<http_body_util::Full<Bytes>>,
    Infallible,
> {
    tower::util::BoxCloneSyncService::new(tower::service_fn(
        move |_: Request<ReplayBody<http_body_util::Full<Bytes>>>| {
            calls.lock().unwrap().push(tokio::time::Instant::now());
            std::future::ready(Ok::<_, Infallible>(answer()))
        },
    ))
}

fn second_answer() -> Response<http_body_util::Full<Bytes>> {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(http_body_util::Full::new(Bytes::from(SECOND.concat())))
        .unwrap()
}

/// A `429` whose `Retry-After` is an HTTP date, `after` its own `Date` (RFC 9110 §10.2.3):
/// the second upstream is called that long after the first (bounded by
/// `max_retry_after`), not after the backoff.
async fn retried_after(answer: fn() -> Response<http_body_util::Full<Bytes>>) -> Duration {
    use http_body_util::{BodyExt, Full};
    use tower::ServiceExt;

    let first: Calls = Arc::default();
    let second: Calls = Arc::default();
    let failover = Failover::new([
        answering(first.clone(), answer),
        answering(second.clone(), second_answer),
    ])
    .backoff(Duration::from_millis(50))
    .max_retry_after(Duration::from_secs(3));
    let request = Request::post("/v1/chat/completions")
        .body(Full::new(Bytes::from_static(REQUEST.as_bytes())))
        .unwrap();
    let response = failover.oneshot(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], SECOND.concat().as_bytes());
    let (first, second) = (first.lock().unwrap(), second.lock().unwrap());
    assert_eq!((first.len(), second.len()), (1, 1));
    second[0] - first[0]
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_http_date_is_honoured_and_bounded() {
    fn too_many(retry_after: &'static str) -> Response<http_body_util::Full<Bytes>> {
        Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .header("date", "Wed, 21 Oct 2015 07:28:00 GMT")
            .header("retry-after", retry_after)
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap()
    }
    assert_eq!(
        retried_after(|| too_many("Wed, 21 Oct 2015 07:28:01 GMT")).await,
        Duration::from_secs(1),
        "one second after the answer's own Date"
    );
    assert_eq!(
        retried_after(|| too_many("Wed, 21 Oct 2015 08:28:00 GMT")).await,
        Duration::from_secs(3),
        "an hour ahead: bounded by max_retry_after"
    );
    assert_eq!(
        retried_after(|| too_many("Wed, 21 Oct 2015 07:27:00 GMT")).await,
        Duration::ZERO,
        "a date already past: no wait"
    );
    assert_eq!(
        retried_after(|| too_many("in a while")).await,
        Duration::from_millis(50),
        "not a date: the backoff"
    );
}

/// Every upstream call fails with an error: the client gets an error, and the stream's one
/// report still lists every attempt, with and without `SseLayer::early_response`.
#[tokio::test]
async fn when_every_call_fails_the_report_lists_every_attempt() {
    use http_body_util::{BodyExt, Full};
    use tower::ServiceExt;

    fn refusing_service(
        calls: Arc<AtomicUsize>,
    ) -> tower::util::BoxCloneSyncService<
        Request<ReplayBody<UploadBody<Full<Bytes>>>>,
        Response<Full<Bytes>>,
        std::io::Error,
    > {
        tower::util::BoxCloneSyncService::new(tower::service_fn(
            move |_: Request<ReplayBody<UploadBody<Full<Bytes>>>>| {
                calls.fetch_add(1, Ordering::SeqCst);
                std::future::ready(Err::<Response<Full<Bytes>>, _>(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "connection refused",
                )))
            },
        ))
    }
    for early in [false, true] {
        let calls = Arc::new(AtomicUsize::new(0));
        let (sink, mut reports) = report_channel();
        let failover = Failover::named([
            ("first", refusing_service(calls.clone())),
            ("second", refusing_service(calls.clone())),
        ])
        .backoff(Duration::ZERO);
        let service = SseLayer::new()
            .early_response(early)
            .observer(UsageObserver::new())
            .on_end(sink)
            .layer(failover);
        let request = Request::post("/v1/chat/completions")
            .header("accept", "text/event-stream")
            .body(Full::new(Bytes::from_static(REQUEST.as_bytes())))
            .unwrap();
        match service.oneshot(request).await {
            Err(error) => {
                assert!(!early, "early response answers before the attempts");
                assert!(
                    error
                        .to_string()
                        .contains("every upstream failed (2 attempts)"),
                    "{error}"
                );
            }
            Ok(response) => {
                assert!(early, "without early response the error is the answer");
                let body = response.into_body().collect().await.unwrap().to_bytes();
                let text = std::str::from_utf8(&body).unwrap();
                assert!(text.contains("event: error"), "{text}");
            }
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let report = next_report(&mut reports).await;
        assert_eq!(report.outcome, Outcome::UpstreamError, "early: {early}");
        let failover = report
            .failover
            .as_deref()
            .expect("the attempts are reported");
        assert_eq!(failover.attempts.len(), 2, "early: {early}: {failover:?}");
        assert_eq!(failover.served, None);
        assert!(!failover.cut_after_commit);
        for (attempt, name) in failover.attempts.iter().zip(["first", "second"]) {
            assert_eq!(attempt.name.as_deref(), Some(name));
            assert_eq!(attempt.status, None);
            assert!(
                matches!(&attempt.outcome, AttemptOutcome::Failed(AttemptError::Call(e)) if e.contains("connection refused")),
                "{attempt:?}"
            );
        }
        assert!(reports.try_recv().is_err(), "one report");
    }
}

/// Anthropic's `message_start` (12 input tokens) then `overloaded_error`.
#[cfg(feature = "metrics")]
fn overloaded_after_input() -> Response<http_body_util::Full<Bytes>> {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(http_body_util::Full::new(Bytes::from_static(
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude\",\"content\":[],\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n\
              event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        )))
        .unwrap()
}

/// Billing and metrics see every attempt: a failed attempt that reported usage is charged
/// to the budget and recorded in the token-usage histogram, beside the served stream's.
#[cfg(feature = "metrics")]
#[test]
fn a_failed_attempts_reported_usage_is_charged_and_in_the_metrics() {
    use http_body_util::{BodyExt, Full};
    use metrics_util::debugging::DebugValue;
    use tower::ServiceExt;
    use tower_sse::MetricsObserver;
    use tower_sse::budget::{
        BudgetLayer, BudgetObserver, BudgetRequestBody, Charge, Limit, Measure,
    };
    use tower_sse::metrics::names;

    type Inner = ReplayBody<UploadBody<BudgetRequestBody<Full<Bytes>>>>;
    let snapshot = support::metrics::recorded(false, || async {
        let first = tower::service_fn(|_: Request<Inner>| {
            std::future::ready(Ok::<_, Infallible>(overloaded_after_input()))
        });
        let second = tower::service_fn(|_: Request<Inner>| {
            std::future::ready(Ok::<_, Infallible>(second_answer()))
        });
        let failover = Failover::new([
            tower::util::BoxCloneSyncService::new(first),
            tower::util::BoxCloneSyncService::new(second),
        ])
        .backoff(Duration::ZERO);
        let (sink, mut reports) = report_channel();
        let sse = SseLayer::new()
            .observer((
                UsageObserver::new(),
                BudgetObserver::new(),
                MetricsObserver::new(),
            ))
            .on_end(sink);
        let service = BudgetLayer::in_memory()
            .limits([Limit::per_day(Measure::TotalTokens, 1_000_000)])
            .layer(sse.layer(failover));
        let request = Request::post("/v1/chat/completions")
            .header("accept", "text/event-stream")
            .header("authorization", "Bearer sk-test")
            .body(Full::new(Bytes::from_static(REQUEST.as_bytes())))
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], SECOND.concat().as_bytes());
        let report = next_report(&mut reports).await;
        let failover = report.failover.as_deref().unwrap();
        assert_eq!(failover.attempts.len(), 2);
        let failed = failover.attempts[0]
            .usage
            .expect("the failed attempt's usage");
        assert_eq!(
            (failed.input_tokens, failed.output_tokens),
            (Some(12), None),
            "message_start's output count is a placeholder, not a count"
        );
        let served = report.usage.unwrap();
        assert_eq!(
            (served.input_tokens, served.output_tokens),
            (Some(5), Some(2))
        );
        let charge = report.extensions.get::<Charge>().expect("charged");
        assert_eq!(
            (charge.charged.input_tokens, charge.charged.output_tokens),
            (12 + 5, 2),
            "the failed attempt's tokens and the served stream's"
        );
        assert!(!charge.estimated, "every count was reported");
    });
    let mut samples: Vec<f64> = snapshot
        .iter()
        .filter(|(key, ..)| key.key().name() == names::CLIENT_TOKEN_USAGE)
        .flat_map(|(.., value)| match value {
            DebugValue::Histogram(values) => values.iter().map(|v| v.into_inner()).collect(),
            _ => Vec::new(),
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    assert_eq!(
        samples,
        vec![2.0, 5.0, 12.0],
        "one sample per count of each attempt"
    );
}

/// Weighted upstreams: the first attempts follow the weights (smooth weighted round-robin),
/// and a first attempt that fails still moves on to the others in list order.
#[tokio::test]
async fn weighted_upstreams_spread_the_first_attempts_and_still_fail_over() {
    use http_body_util::{BodyExt, Full};
    use tower::ServiceExt;
    use tower_sse::failover::FailoverReport;

    fn overloaded() -> Response<Full<Bytes>> {
        Response::builder()
            .status(529)
            .body(Full::new(Bytes::new()))
            .unwrap()
    }
    async fn call(
        failover: &Failover<
            tower::util::BoxCloneSyncService<
                Request<ReplayBody<Full<Bytes>>>,
                Response<Full<Bytes>>,
                Infallible,
            >,
        >,
    ) -> FailoverReport {
        let request = Request::post("/v1/chat/completions")
            .body(Full::new(Bytes::from_static(REQUEST.as_bytes())))
            .unwrap();
        let response = failover.clone().oneshot(request).await.unwrap();
        let report = response
            .extensions()
            .get::<FailoverReport>()
            .cloned()
            .unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], SECOND.concat().as_bytes());
        report
    }
    let tried = |report: &FailoverReport| -> Vec<usize> {
        report.attempts.iter().map(|a| a.upstream).collect()
    };

    // Both serve: three first attempts in four go to `a`, evenly spread.
    let calls: Calls = Arc::default();
    let failover = Failover::named([
        ("a", answering(calls.clone(), second_answer)),
        ("b", answering(calls.clone(), second_answer)),
    ])
    .weights([3, 1]);
    let mut firsts = Vec::new();
    for _ in 0..8 {
        let report = call(&failover).await;
        assert_eq!(report.attempts.len(), 1);
        firsts.extend(tried(&report));
    }
    assert_eq!(firsts, [0, 0, 1, 0, 0, 0, 1, 0]);

    // `b` is picked first every other request and fails: `a` serves, and the report says so.
    let failover = Failover::named([
        ("a", answering(calls.clone(), second_answer)),
        ("b", answering(calls.clone(), overloaded)),
    ])
    .backoff(Duration::ZERO)
    .circuit_breaker(None)
    .weights([1, 1]);
    let first = call(&failover).await;
    assert_eq!(tried(&first), [0]);
    let second = call(&failover).await;
    assert_eq!(tried(&second), [1, 0], "b first, then a");
    assert_eq!(second.served, Some(1));
    assert_eq!(
        second.attempts[0].outcome,
        AttemptOutcome::Failed(AttemptError::Status(StatusCode::from_u16(529).unwrap()))
    );
}
