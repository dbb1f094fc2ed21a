//! Resumable streams: every disconnect point and chunking (the events a client collects
//! across its connections, joined, are the upstream's, each once, in order), resumes never
//! forwarded, tenants, malformed and forged ids, trimmed logs, failing stores, the detach
//! policy, per-reader keep-alives, one report per stream, and a real HTTP round trip.
#![cfg(feature = "resume")]

mod support;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use proptest::prelude::*;
use support::body::{Reports, channel};
use support::sse::client_view;
use tokio::sync::watch;
use tower::{Layer, Service, ServiceExt};
use tower_sse::request::Tenant;
use tower_sse::resume::{
    Detach, MemoryStore, NewStream, Read, ReadLimits, ReaderRecord, ResumeObserver, ResumeStore,
    ResumeSummary, StoreError, StreamEnd, StreamId, StreamLog,
};
use tower_sse::{BoxError, BoxFuture, KeepAliveConfig, Outcome, ResumeLayer, SseLayer};

type UpBody = BoxBody<Bytes, BoxError>;

/// An upstream that hands out prepared responses and counts its calls.
#[derive(Clone, Default)]
struct Upstream {
    responses: Arc<Mutex<VecDeque<Response<UpBody>>>>,
    calls: Arc<AtomicUsize>,
}

impl Upstream {
    fn push<B>(&self, body: B)
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let response = Response::builder()
            .header("content-type", "text/event-stream")
            .body(body.map_err(Into::into).boxed())
            .unwrap();
        self.responses.lock().unwrap().push_back(response);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// `ResumeLayer` ─► `SseLayer` (with `ResumeObserver`, reports to `reports`) ─► `upstream`.
fn stack(
    resume: ResumeLayer,
    upstream: &Upstream,
    reports: &Reports,
) -> impl Service<
    Request<Empty<Bytes>>,
    Response = Response<impl Body<Data = Bytes, Error = BoxError> + Send + 'static>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let upstream = upstream.clone();
    let inner = tower::service_fn(
        move |_: Request<tower_sse::request::UploadBody<Empty<Bytes>>>| {
            upstream.calls.fetch_add(1, Ordering::SeqCst);
            let response = upstream.responses.lock().unwrap().pop_front();
            let response = response.unwrap_or_else(|| {
                Response::builder()
                    .status(StatusCode::SERVICE_UNAVAILABLE)
                    .body(Empty::new().map_err(|e| match e {}).boxed())
                    .unwrap()
            });
            std::future::ready(Ok::<_, Infallible>(response))
        },
    );
    let sse = SseLayer::new()
        .observer(ResumeObserver::new())
        .on_end(reports.sink());
    resume.layer(sse.layer(inner))
}

fn get(last_event_id: Option<&str>, token: Option<&str>) -> Request<Empty<Bytes>> {
    let mut request = Request::get("/v1/chat/completions");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    request.body(Empty::new()).unwrap()
}

fn stream_id<B>(response: &Response<B>) -> StreamId {
    let header = response
        .headers()
        .get("sse-stream-id")
        .expect("a stream id header");
    StreamId::parse(header.to_str().unwrap()).unwrap()
}

/// Read a body's frames until `cut` bytes (then drop it: a disconnect, possibly in the
/// middle of an event) or its end. Returns the bytes received and whether the end came.
async fn read_until<B>(body: B, cut: Option<usize>) -> (Vec<u8>, bool)
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let mut body = std::pin::pin!(body);
    let mut received = Vec::new();
    loop {
        if cut.is_some_and(|cut| received.len() >= cut) {
            received.truncate(cut.unwrap());
            return (received, false);
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    received.extend_from_slice(&data);
                }
            }
            Some(Err(_)) | None => return (received, true),
        }
    }
}

/// Events as a client sees them, without their ids: (type, data).
fn events_of(bytes: &[u8]) -> Vec<(String, String)> {
    client_view(bytes)
        .events
        .into_iter()
        .map(|(kind, data, _)| (kind, data))
        .collect()
}

/// An upstream body that yields one chunk per poll and is pending in between (waking
/// itself), so that the producer and the readers interleave.
struct Drip {
    chunks: VecDeque<Bytes>,
    ready: bool,
}

impl Drip {
    fn new(chunks: Vec<Bytes>) -> Self {
        Self {
            chunks: chunks.into(),
            ready: false,
        }
    }
}

impl Body for Drip {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if !self.ready {
            self.ready = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.ready = false;
        Poll::Ready(self.chunks.pop_front().map(|c| Ok(Frame::data(c))))
    }
}

/// One upstream event, rendered with its own quirks.
#[derive(Debug, Clone)]
struct UpEvent {
    kind: Option<String>,
    data: Vec<String>,
    own_id: Option<String>,
    comment_before: bool,
    crlf: bool,
}

fn up_event() -> impl Strategy<Value = UpEvent> {
    (
        proptest::option::of("[a-z]{1,6}"),
        proptest::collection::vec("[ -~]{0,12}", 1..3),
        proptest::option::of("[a-z0-9]{0,5}"),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(kind, data, own_id, comment_before, crlf)| UpEvent {
            kind,
            data,
            own_id,
            comment_before,
            crlf,
        })
}

fn render(events: &[UpEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    for event in events {
        let nl = if event.crlf { "\r\n" } else { "\n" };
        if event.comment_before {
            out.extend_from_slice(format!(": ping{nl}{nl}").as_bytes());
        }
        if let Some(kind) = &event.kind {
            out.extend_from_slice(format!("event: {kind}{nl}").as_bytes());
        }
        if let Some(id) = &event.own_id {
            out.extend_from_slice(format!("id: {id}{nl}").as_bytes());
        }
        for line in &event.data {
            out.extend_from_slice(format!("data: {line}{nl}").as_bytes());
        }
        out.extend_from_slice(nl.as_bytes());
    }
    out
}

/// Connect, read until each cut in turn, resume with the last id the client has; return
/// everything the client collected, and the connections made.
async fn collect_across_connections<S, B>(
    service: S,
    cuts: &[usize],
) -> (Vec<(String, String)>, usize)
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>, Error = Infallible> + Clone,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let response = service.clone().oneshot(get(None, None)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let stream = stream_id(&response);
    let mut collected = Vec::new();
    let mut last_id = String::new();
    let mut response = Some(response);
    let mut connections = 1;
    for i in 0.. {
        let current = match response.take() {
            Some(response) => response,
            None => {
                let id = if last_id.is_empty() {
                    format!("{stream}.0")
                } else {
                    last_id.clone()
                };
                let response = service.clone().oneshot(get(Some(&id), None)).await.unwrap();
                connections += 1;
                if response.status() == StatusCode::NO_CONTENT {
                    return (collected, connections);
                }
                assert_eq!(response.status(), StatusCode::OK);
                response
            }
        };
        let (bytes, ended) = read_until(current.into_body(), cuts.get(i).copied()).await;
        let view = client_view(&bytes);
        if !view.last_event_id.is_empty() {
            last_id = view.last_event_id.clone();
        }
        collected.extend(view.events.into_iter().map(|(kind, data, _)| (kind, data)));
        if ended {
            return (collected, connections);
        }
    }
    unreachable!()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// The headline property: whatever the upstream's chunking and wherever the client's
    /// connections drop (mid-event included), the events it collects, joined, are the
    /// upstream's, each once, in order; and the stream is reported exactly once.
    #[test]
    fn every_disconnect_point_and_chunking(
        events in proptest::collection::vec(up_event(), 0..12),
        splits in proptest::collection::vec(0usize..400, 0..8),
        cuts in proptest::collection::vec(0usize..300, 0..6),
        finish in any::<bool>(),
    ) {
        let upstream_bytes = render(&events);
        let expected = events_of(&upstream_bytes);
        let chunks = support::sse::split_at(&upstream_bytes, &splits);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let (collected, reports) = runtime.block_on(async move {
            let upstream = Upstream::default();
            upstream.push(Drip::new(chunks));
            let reports = Reports::default();
            // (Cancelling at once would, rightly, lose the tail after a disconnect.)
            let detach = if finish {
                Detach::Finish
            } else {
                Detach::CancelAfter(Duration::from_secs(30))
            };
            let service = stack(ResumeLayer::new().detach(detach), &upstream, &reports);
            let (collected, _) = collect_across_connections(service, &cuts).await;
            // Let the producer finish.
            for _ in 0..1000 {
                if reports.len() > 0 { break; }
                tokio::task::yield_now().await;
            }
            assert_eq!(upstream.calls(), 1, "resumes are never forwarded");
            (collected, reports.take())
        });
        prop_assert_eq!(collected, expected);
        prop_assert_eq!(reports.len(), 1);
        prop_assert_eq!(reports[0].outcome, Outcome::Completed);
    }
}

#[tokio::test(start_paused = true)]
async fn resumes_are_answered_from_the_log_never_forwarded() {
    let upstream = Upstream::default();
    let (tx, body) = channel();
    upstream.push(body);
    let reports = Reports::default();
    let service = stack(ResumeLayer::new(), &upstream, &reports);

    let response = service
        .clone()
        .oneshot(get(None, Some("alice")))
        .await
        .unwrap();
    let stream = stream_id(&response);
    for i in 1..=3 {
        tx.send(Ok(Frame::data(Bytes::from(format!("data: {i}\n\n")))))
            .unwrap();
    }
    let (bytes, _) = read_until(response.into_body(), Some(1)).await;
    assert_eq!(bytes, b"i");
    // The client got nothing whole: it resumes from the start with the header's id.
    let resumed = service
        .clone()
        .oneshot(get(Some(&format!("{stream}.0")), Some("alice")))
        .await
        .unwrap();
    assert_eq!(resumed.status(), StatusCode::OK);
    assert_eq!(resumed.headers()["content-type"], "text/event-stream");
    assert_eq!(stream_id(&resumed), stream);
    tx.send(Ok(Frame::data(Bytes::from_static(b"data: 4\n\n"))))
        .unwrap();
    drop(tx);
    let (bytes, ended) = read_until(resumed.into_body(), None).await;
    assert!(ended);
    let view = client_view(&bytes);
    let data: Vec<_> = view.events.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(data, ["1", "2", "3", "4"]);
    assert_eq!(view.last_event_id, format!("{stream}.4"));
    assert_eq!(upstream.calls(), 1);

    // The end of a finished stream: nothing left, 204.
    let done = service
        .clone()
        .oneshot(get(Some(&format!("{stream}.4")), Some("alice")))
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::NO_CONTENT);
    // One before the end: the last event, then the end.
    let last = service
        .clone()
        .oneshot(get(Some(&format!("{stream}.3")), Some("alice")))
        .await
        .unwrap();
    let (bytes, _) = read_until(last.into_body(), None).await;
    assert_eq!(events_of(&bytes), [("message".to_owned(), "4".to_owned())]);
    assert_eq!(upstream.calls(), 1);

    let report = reports.one();
    assert_eq!(report.outcome, Outcome::Completed);
    let summary = report.extensions.get::<ResumeSummary>().unwrap();
    assert_eq!(summary.stream, stream);
    // As of the stream's end: the first connection and one resume.
    assert_eq!((summary.connections, summary.resumes), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn tenants_malformed_and_forged_ids_get_204() {
    let upstream = Upstream::default();
    let (tx, body) = channel();
    upstream.push(body);
    let reports = Reports::default();
    let service = stack(ResumeLayer::new(), &upstream, &reports);
    let response = service
        .clone()
        .oneshot(get(None, Some("alice")))
        .await
        .unwrap();
    let stream = stream_id(&response);
    tx.send(Ok(Frame::data(Bytes::from_static(b"data: secret\n\n"))))
        .unwrap();
    let other = StreamId::from_bytes([9; 16]);
    let cases = [
        // Another tenant, or none, with a valid id.
        (format!("{stream}.0"), Some("bob")),
        (format!("{stream}.0"), None),
        // Forged: beyond the last event, another stream.
        (format!("{stream}.2"), Some("alice")),
        (format!("{stream}.18446744073709551615"), Some("alice")),
        (format!("{other}.0"), Some("alice")),
        // Malformed.
        (String::new(), Some("alice")),
        (format!("{stream}"), Some("alice")),
        (format!("{stream}.01"), Some("alice")),
        (format!("{stream}.+1"), Some("alice")),
        (format!("{stream}.0.0"), Some("alice")),
        (format!("{stream}.0{}", "0".repeat(200)), Some("alice")),
        ("x".repeat(10_000), Some("alice")),
        ("\u{0}".to_owned(), Some("alice")),
    ];
    for (id, token) in cases {
        let mut request = get(None, token);
        request.headers_mut().insert(
            "last-event-id",
            http::HeaderValue::from_bytes(id.as_bytes())
                .unwrap_or(http::HeaderValue::from_static("bad")),
        );
        let answer = service.clone().oneshot(request).await.unwrap();
        assert_eq!(answer.status(), StatusCode::NO_CONTENT, "{id:?} {token:?}");
        let (bytes, _) = read_until(answer.into_body(), None).await;
        assert!(bytes.is_empty());
    }
    // Non-UTF-8 header bytes.
    let mut request = get(None, Some("alice"));
    request.headers_mut().insert(
        "last-event-id",
        http::HeaderValue::from_bytes(b"\xff\xfe.1").unwrap(),
    );
    let answer = service.clone().oneshot(request).await.unwrap();
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);
    // The query form, for a page reload.
    let request = Request::get(format!("/v1/chat/completions?x=1&last_event_id={stream}.0"))
        .header("authorization", "Bearer alice")
        .body(Empty::new())
        .unwrap();
    let answer = service.clone().oneshot(request).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let request = Request::get(format!("/v1/chat/completions?last_event_id={stream}%2E0"))
        .header("authorization", "Bearer alice")
        .body(Empty::new())
        .unwrap();
    assert_eq!(
        service.clone().oneshot(request).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(upstream.calls(), 1, "no resume was forwarded");
}

#[tokio::test(start_paused = true)]
async fn trimmed_positions_are_gone_never_replayed_from_the_oldest() {
    let upstream = Upstream::default();
    let (tx, body) = channel();
    upstream.push(body);
    let reports = Reports::default();
    let store = MemoryStore::builder().max_stream_events(2).build();
    let service = stack(ResumeLayer::new().store(store), &upstream, &reports);
    let response = service.clone().oneshot(get(None, None)).await.unwrap();
    let stream = stream_id(&response);
    // A live reader that keeps up goes on through the trimming.
    let mut body = std::pin::pin!(response.into_body());
    let mut live = Vec::new();
    for i in 1..=5 {
        tx.send(Ok(Frame::data(Bytes::from(format!("data: {i}\n\n")))))
            .unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        live.extend_from_slice(frame.data_ref().unwrap());
    }
    assert_eq!(events_of(&live).len(), 5);
    // One that falls behind the trimmed start ends (its client reconnects: 204).
    let behind = service
        .clone()
        .oneshot(get(Some(&format!("{stream}.3")), None))
        .await
        .unwrap();
    assert_eq!(behind.status(), StatusCode::OK);
    for i in 6..=8 {
        tx.send(Ok(Frame::data(Bytes::from(format!("data: {i}\n\n")))))
            .unwrap();
        body.frame().await.unwrap().unwrap();
    }
    let (bytes, ended) = read_until(behind.into_body(), None).await;
    assert!(ended);
    // It had taken 4 and 5 in its first read; 6 was trimmed before it came back (the
    // producer held back for it, then let it go): the gap is said, never a clean end.
    let events = events_of(&bytes);
    let data: Vec<_> = events.iter().take(2).map(|e| e.1.as_str()).collect();
    assert_eq!(data, ["4", "5"]);
    assert_eq!(events.len(), 3);
    assert_eq!(events[2].0, "error");
    assert!(events[2].1.contains("\"resume_gap\""), "{:?}", events[2]);
    for gone in [0, 1, 5] {
        let answer = service
            .clone()
            .oneshot(get(Some(&format!("{stream}.{gone}")), None))
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::NO_CONTENT);
        assert_eq!(answer.headers()["sse-resume"], "gone");
    }
    let answer = service
        .clone()
        .oneshot(get(Some(&format!("{stream}.6")), None))
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    drop(tx);
    let (bytes, _) = read_until(answer.into_body(), None).await;
    let data: Vec<_> = events_of(&bytes).into_iter().map(|e| e.1).collect();
    assert_eq!(data, ["7", "8"]);
}

#[tokio::test(start_paused = true)]
async fn replay_goes_out_in_bounded_frames() {
    let upstream = Upstream::default();
    let many: String = (0..100).map(|i| format!("data: {i}\n\n")).collect();
    upstream.push(http_body_util::Full::new(Bytes::from(many)));
    let reports = Reports::default();
    let limits = ReadLimits {
        max_events: 7,
        max_bytes: 1024,
    };
    let service = stack(ResumeLayer::new().read_limits(limits), &upstream, &reports);
    let response = service.clone().oneshot(get(None, None)).await.unwrap();
    let stream = stream_id(&response);
    drop(response);
    while reports.len() == 0 {
        tokio::task::yield_now().await;
    }
    let answer = service
        .clone()
        .oneshot(get(Some(&format!("{stream}.0")), None))
        .await
        .unwrap();
    let mut body = std::pin::pin!(answer.into_body());
    let mut frames = 0;
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        frames += 1;
        bytes.extend_from_slice(frame.data_ref().unwrap());
    }
    assert_eq!(frames, 100, "one frame per event");
    assert_eq!(events_of(&bytes).len(), 100);
    let report = reports.one();
    // The stream ended before the resume: the report does not count it.
    assert_eq!(report.extensions.get::<ResumeSummary>().unwrap().resumes, 0);
}

#[tokio::test(start_paused = true)]
async fn detach_policies() {
    for (detach, wait, outcome) in [
        (
            Detach::CancelNow,
            Duration::ZERO,
            Outcome::ClientDisconnected,
        ),
        (
            Detach::CancelAfter(Duration::from_secs(30)),
            Duration::from_secs(31),
            Outcome::ClientDisconnected,
        ),
        (
            Detach::Finish,
            Duration::from_secs(3600),
            Outcome::Completed,
        ),
    ] {
        let upstream = Upstream::default();
        let (tx, body) = channel();
        upstream.push(body);
        let reports = Reports::default();
        let service = stack(ResumeLayer::new().detach(detach), &upstream, &reports);
        let response = service.clone().oneshot(get(None, None)).await.unwrap();
        tx.send(Ok(Frame::data(Bytes::from_static(b"data: 1\n\n"))))
            .unwrap();
        drop(response);
        tokio::time::sleep(Duration::from_secs(29).min(wait)).await;
        if detach != Detach::CancelNow {
            assert_eq!(reports.len(), 0, "{detach:?}: the upstream is still read");
        }
        tokio::time::sleep(wait.saturating_sub(Duration::from_secs(29))).await;
        if detach == Detach::Finish {
            let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"data: 2\n\n"))));
            drop(tx);
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        let report = reports.one();
        assert_eq!(report.outcome, outcome, "{detach:?}");
        let summary = *report.extensions.get::<ResumeSummary>().unwrap();
        assert!(
            summary.detached >= wait.min(Duration::from_secs(30)),
            "{summary:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_resume_within_the_grace_keeps_the_upstream() {
    let upstream = Upstream::default();
    let (tx, body) = channel();
    upstream.push(body);
    let reports = Reports::default();
    let records = Arc::new(Mutex::new(Vec::<ReaderRecord>::new()));
    let sink = records.clone();
    let layer = ResumeLayer::new()
        .detach(Detach::CancelAfter(Duration::from_secs(30)))
        .on_reader_end(move |record| sink.lock().unwrap().push(record));
    let service = stack(layer, &upstream, &reports);
    let response = service.clone().oneshot(get(None, None)).await.unwrap();
    let stream = stream_id(&response);
    tx.send(Ok(Frame::data(Bytes::from_static(
        b"data: 1\n\ndata: 2\n\n",
    ))))
    .unwrap();
    let (bytes, _) = read_until(response.into_body(), Some(b"id: ".len() + 22 + 3 + 9)).await;
    assert_eq!(events_of(&bytes).len(), 1);
    let last = client_view(&bytes).last_event_id;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let resumed = service
        .clone()
        .oneshot(get(Some(&last), None))
        .await
        .unwrap();
    assert_eq!(resumed.status(), StatusCode::OK);
    // Detached for 20 s, then attached again: a further 20 s does not cancel.
    tokio::time::sleep(Duration::from_secs(20)).await;
    tx.send(Ok(Frame::data(Bytes::from_static(b"data: 3\n\n"))))
        .unwrap();
    drop(tx);
    let (bytes, ended) = read_until(resumed.into_body(), None).await;
    assert!(ended);
    let data: Vec<_> = events_of(&bytes).into_iter().map(|e| e.1).collect();
    assert_eq!(data, ["2", "3"]);
    let report = reports.one();
    assert_eq!(report.outcome, Outcome::Completed);
    let summary = *report.extensions.get::<ResumeSummary>().unwrap();
    assert_eq!((summary.resumes, summary.replayed_events), (1, 1));
    assert_eq!(summary.detached, Duration::from_secs(20));
    let records = records.lock().unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(stream, records[0].stream);
    assert!(!records[0].resumed && !records[0].reached_end);
    assert!(records[1].resumed && records[1].reached_end);
    assert_eq!((records[1].events, records[1].replayed_events), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn keep_alives_are_per_reader_and_never_logged() {
    let upstream = Upstream::default();
    let (tx, body) = channel();
    upstream.push(body);
    let reports = Reports::default();
    let layer =
        ResumeLayer::new().keep_alive(KeepAliveConfig::new().interval(Duration::from_secs(15)));
    let service = stack(layer, &upstream, &reports);
    let response = service.clone().oneshot(get(None, None)).await.unwrap();
    let stream = stream_id(&response);
    tx.send(Ok(Frame::data(Bytes::from_static(
        b": upstream ping\n\ndata: 1\n\n",
    ))))
    .unwrap();
    let mut body = std::pin::pin!(response.into_body());
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.ends_with(b"data: 1\n\n"), "{first:?}");
    let keep_alive = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&keep_alive[..], b": keep-alive\n\n");
    drop(tx);
    assert!(body.frame().await.is_none());
    let replay = service
        .clone()
        .oneshot(get(Some(&format!("{stream}.0")), None))
        .await
        .unwrap();
    let (bytes, _) = read_until(replay.into_body(), None).await;
    assert_eq!(bytes, first, "the replay holds the event only");
}

/// A store that fails everything it can.
#[derive(Clone)]
struct FailingStore {
    create: bool,
    inner: MemoryStore,
}

impl ResumeStore for FailingStore {
    fn create(&self, stream: NewStream) -> BoxFuture<'_, Result<Arc<dyn StreamLog>, StoreError>> {
        if self.create {
            return Box::pin(async { Err(StoreError::unavailable("down")) });
        }
        Box::pin(async move {
            let log = self.inner.create(stream).await?;
            Ok(Arc::new(FailingLog { inner: log }) as Arc<dyn StreamLog>)
        })
    }

    fn open(
        &self,
        _: StreamId,
        _: Tenant,
    ) -> BoxFuture<'_, Result<Option<Arc<dyn StreamLog>>, StoreError>> {
        Box::pin(async { Err(StoreError::unavailable("down")) })
    }
}

/// A log whose appends fail after the first.
struct FailingLog {
    inner: Arc<dyn StreamLog>,
}

impl StreamLog for FailingLog {
    fn id(&self) -> StreamId {
        self.inner.id()
    }

    fn append(&self, seq: u64, event: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
        if seq > 1 {
            return Box::pin(async { Err(StoreError::unavailable("full")) });
        }
        self.inner.append(seq, event)
    }

    fn end(&self, last_seq: u64, end: StreamEnd) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.end(last_seq, end)
    }

    fn read_after(
        &self,
        cursor: u64,
        limits: ReadLimits,
    ) -> BoxFuture<'_, Result<Read, StoreError>> {
        self.inner.read_after(cursor, limits)
    }

    fn wake_ups(&self) -> watch::Receiver<u64> {
        self.inner.wake_ups()
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_never_breaks_a_stream_with_a_5xx() {
    // Create fails: the stream is served as the plain layer would, without ids.
    let upstream = Upstream::default();
    upstream.push(http_body_util::Full::new(Bytes::from_static(
        b"id: 7\ndata: 1\n\n",
    )));
    let reports = Reports::default();
    let store = FailingStore {
        create: true,
        inner: MemoryStore::new(),
    };
    let service = stack(ResumeLayer::new().store(store), &upstream, &reports);
    let response = service.clone().oneshot(get(None, None)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["sse-resume"], "off");
    assert!(response.headers().get("sse-stream-id").is_none());
    let (bytes, _) = read_until(response.into_body(), None).await;
    assert_eq!(bytes, b"id: 7\ndata: 1\n\n");
    // Open fails: 204.
    let answer = service
        .clone()
        .oneshot(get(
            Some(&format!("{}.0", StreamId::from_bytes([1; 16]))),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);
    assert_eq!(reports.one().outcome, Outcome::Completed);

    // Appends fail mid-stream: the reader ends cleanly after what was logged (its client
    // reconnects, and is answered 204), never with a 5xx; the stream is reported once.
    let upstream = Upstream::default();
    upstream.push(http_body_util::Full::new(Bytes::from_static(
        b"data: 1\n\ndata: 2\n\n",
    )));
    let store = FailingStore {
        create: false,
        inner: MemoryStore::new(),
    };
    let service = stack(ResumeLayer::new().store(store), &upstream, &reports);
    let response = service.clone().oneshot(get(None, None)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = std::pin::pin!(response.into_body());
    let mut bytes = Vec::new();
    let mut failed = false;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => bytes.extend_from_slice(frame.data_ref().unwrap()),
            Err(_) => failed = true,
        }
    }
    assert_eq!(events_of(&bytes).len(), 1);
    assert!(
        failed,
        "the log failed: the connection fails, the client reconnects"
    );
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(reports.take().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn non_streams_pass_through_and_disabled_is_transparent() {
    let upstream = Upstream::default();
    let reports = Reports::default();
    let service = stack(ResumeLayer::new(), &upstream, &reports);
    // The upstream answers 503 (nothing queued): passed through, no stream id.
    let answer = service.clone().oneshot(get(None, None)).await.unwrap();
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(answer.headers().get("sse-stream-id").is_none());

    upstream.push(http_body_util::Full::new(Bytes::from_static(
        b"id: 7\ndata: 1\n\n",
    )));
    let service = stack(ResumeLayer::new().enabled(false), &upstream, &reports);
    let request = get(Some("whatever"), None);
    let answer = service.clone().oneshot(request).await.unwrap();
    assert!(answer.headers().get("sse-stream-id").is_none());
    let (bytes, _) = read_until(answer.into_body(), None).await;
    assert_eq!(bytes, b"id: 7\ndata: 1\n\n");
}

#[tokio::test(start_paused = true)]
async fn tenant_limit_serves_plain_streams() {
    let upstream = Upstream::default();
    let reports = Reports::default();
    let store = MemoryStore::builder().max_streams_per_tenant(1).build();
    let service = stack(ResumeLayer::new().store(store), &upstream, &reports);
    let one = || http_body_util::Full::new(Bytes::from_static(b"data: 1\n\n"));
    // The first stream runs (its upstream stays open); the second is over the limit.
    let (tx, open) = channel();
    upstream.push(open);
    upstream.push(one());
    let first = service.clone().oneshot(get(None, Some("t"))).await.unwrap();
    assert!(first.headers().get("sse-stream-id").is_some());
    tokio::task::yield_now().await;
    let second = service.clone().oneshot(get(None, Some("t"))).await.unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(second.headers()["sse-resume"], "off");
    let (bytes, _) = read_until(second.into_body(), None).await;
    assert_eq!(bytes, b"data: 1\n\n");
    // Another tenant is not limited by this one.
    upstream.push(one());
    let other = service.clone().oneshot(get(None, Some("u"))).await.unwrap();
    assert!(other.headers().get("sse-stream-id").is_some());
    // When the running stream ends, its tenant may start another.
    drop(tx);
    let (_, ended) = read_until(first.into_body(), None).await;
    assert!(ended);
    upstream.push(one());
    let third = service.clone().oneshot(get(None, Some("t"))).await.unwrap();
    assert!(third.headers().get("sse-stream-id").is_some());
}

/// Over real HTTP: a POST stream cut by the client, resumed with a GET and `Last-Event-ID`.
#[tokio::test]
async fn over_http_a_post_stream_resumes_with_a_get() {
    use axum::Router;
    use axum::body::Body as AxumBody;
    use axum::routing::any;

    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    // The upstream: a handler streaming what the test sends.
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let calls = Arc::new(AtomicUsize::new(0));
    let handler_calls = calls.clone();
    let handler = any(move || {
        let rx = rx.clone();
        handler_calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let stream = futures_util::stream::unfold(rx, |rx| async move {
                let next = rx.lock().await.recv().await?;
                Some((Ok::<_, Infallible>(next), rx))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(AxumBody::from_stream(stream))
                .unwrap()
        }
    });
    let reports = Reports::default();
    let app = Router::new().route("/v1/chat/completions", handler).layer(
        tower::ServiceBuilder::new()
            .layer(ResumeLayer::new().detach(Detach::Finish))
            .layer(SseLayer::new().on_end(reports.sink()))
            .map_response(|r: Response<_>| r.map(AxumBody::new)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let url = format!("http://{addr}/v1/chat/completions");
    let client = reqwest::Client::new();

    let mut first = client
        .post(&url)
        .header("authorization", "Bearer sk-1")
        .body(r#"{"stream":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let stream = first.headers()["sse-stream-id"]
        .to_str()
        .unwrap()
        .to_owned();
    tx.send(Bytes::from_static(b"data: a\n\ndata: b\n\n"))
        .unwrap();
    let mut got = Vec::new();
    while events_of(&got).len() < 2 {
        got.extend_from_slice(&first.chunk().await.unwrap().unwrap());
    }
    let last = client_view(&got).last_event_id;
    assert_eq!(last, format!("{stream}.2"));
    drop(first);
    tx.send(Bytes::from_static(b"data: c\n\n")).unwrap();
    drop(tx);
    let resumed = client
        .get(&url)
        .header("authorization", "Bearer sk-1")
        .header("last-event-id", &last)
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200);
    let rest = resumed.bytes().await.unwrap();
    let data: Vec<_> = events_of(&rest).into_iter().map(|e| e.1).collect();
    assert_eq!(data, ["c"]);
    // Another tenant: 204, and nothing forwarded.
    let foreign = client
        .get(&url)
        .header("authorization", "Bearer sk-2")
        .header("last-event-id", &last)
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 204);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(reports.one().outcome, Outcome::Completed);
}

/// Every byte offset of the first connection as its disconnect point, then a second cut at
/// every offset of the resumed one: joined, the events are the upstream's, once, in order.
#[tokio::test(start_paused = true)]
async fn literally_every_disconnect_point() {
    let upstream_bytes: &[u8] =
        b"event: a\ndata: 1\n\n: ping\n\nid: x\ndata: 2\r\n\r\ndata: 3\ndata: 3b\n\nretry: 10\n\ndata: 4\n\n";
    let expected = events_of(upstream_bytes);
    // The whole client view once, to know its length.
    let total = {
        let upstream = Upstream::default();
        upstream.push(http_body_util::Full::new(Bytes::from_static(
            upstream_bytes,
        )));
        let service = stack(ResumeLayer::new(), &upstream, &Reports::default());
        let response = service.oneshot(get(None, None)).await.unwrap();
        read_until(response.into_body(), None).await.0.len()
    };
    for first_cut in 0..=total {
        for second_cut in [0, 1, 30, 45, 80, usize::MAX] {
            let upstream = Upstream::default();
            let chunks = support::sse::bytewise(upstream_bytes);
            upstream.push(Drip::new(chunks));
            let reports = Reports::default();
            let service = stack(ResumeLayer::new(), &upstream, &reports);
            let (collected, _) =
                collect_across_connections(service, &[first_cut, second_cut]).await;
            assert_eq!(collected, expected, "cut at {first_cut}, then {second_cut}");
            assert_eq!(upstream.calls(), 1);
        }
    }
}

/// A producer that dies (here: an observer panics) still ends its log: the reader ends with
/// an error instead of waiting forever, and a resume is answered.
#[tokio::test(start_paused = true)]
async fn a_producer_that_dies_ends_its_readers() {
    #[derive(Clone)]
    struct Panics;
    impl tower_sse::Observer for Panics {
        fn on_event(
            &mut self,
            event: &tower_sse::sse::EventRef<'_>,
            _: &mut tower_sse::EventContext<'_>,
        ) {
            assert!(event.data_bytes() != b"boom", "an observer bug");
        }
    }
    let (tx, body) = channel();
    let mut body = Some(body);
    let inner = tower::service_fn(
        move |_: Request<tower_sse::request::UploadBody<Empty<Bytes>>>| {
            let response = Response::builder()
                .header("content-type", "text/event-stream")
                .body(body.take().unwrap())
                .unwrap();
            std::future::ready(Ok::<_, Infallible>(response))
        },
    );
    let service = ResumeLayer::new().layer(SseLayer::new().observer(Panics).layer(inner));
    let response = service.oneshot(get(None, None)).await.unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(b"data: 1\n\n"))))
        .unwrap();
    let mut body = std::pin::pin!(response.into_body());
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.ends_with(b"data: 1\n\n"));
    tx.send(Ok(Frame::data(Bytes::from_static(b"data: boom\n\n"))))
        .unwrap();
    assert!(body.frame().await.unwrap().is_err(), "the stream failed");
    assert!(body.frame().await.is_none());
}

/// A producer dropped mid-stream (its runtime shuts down) still reports the stream with its
/// `ResumeSummary`: the body, whose drop makes the report, goes before the producer leaves
/// the table of running producers where the summary is looked up.
#[test]
fn a_producer_dropped_mid_stream_still_reports_its_summary() {
    let reports = Reports::default();
    let (tx, body) = channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stream = runtime.block_on(async {
        let mut body = Some(body);
        let inner = tower::service_fn(
            move |_: Request<tower_sse::request::UploadBody<Empty<Bytes>>>| {
                let response = Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(body.take().unwrap())
                    .unwrap();
                std::future::ready(Ok::<_, Infallible>(response))
            },
        );
        let sse = SseLayer::new()
            .observer(ResumeObserver::new())
            .on_end(reports.sink());
        let service = ResumeLayer::new().layer(sse.layer(inner));
        let response = service.oneshot(get(None, None)).await.unwrap();
        let stream = stream_id(&response);
        tx.send(Ok(Frame::data(Bytes::from_static(b"data: 1\n\n"))))
            .unwrap();
        let mut body = std::pin::pin!(response.into_body());
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(first.ends_with(b"data: 1\n\n"));
        stream
    });
    assert_eq!(reports.len(), 0, "the stream is still open");
    // The producer task is dropped with the runtime, in the middle of the stream.
    drop(runtime);
    let report = reports.one();
    let summary = report.extensions.get::<ResumeSummary>().expect("a summary");
    assert_eq!(summary.stream, stream);
    assert_eq!(summary.connections, 1);
    drop(tx);
}

/// Each resume answer is counted (`tower_sse.resume.requests_total`, by answer).
#[cfg(feature = "metrics")]
#[test]
fn resume_answers_are_counted() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let upstream = Upstream::default();
            upstream.push(http_body_util::Full::new(Bytes::from_static(
                b"data: 1\n\n",
            )));
            let service = stack(ResumeLayer::new(), &upstream, &Reports::default());
            let response = service.clone().oneshot(get(None, None)).await.unwrap();
            let stream = stream_id(&response);
            read_until(response.into_body(), None).await;
            for id in [format!("{stream}.0"), format!("{stream}.1"), "x".to_owned()] {
                let answer = service.clone().oneshot(get(Some(&id), None)).await.unwrap();
                read_until(answer.into_body(), None).await;
            }
        });
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let count = |answer: &str| {
        snapshot
            .iter()
            .find(|(key, ..)| {
                key.key().name() == tower_sse::metrics::names::RESUME_REQUESTS
                    && key
                        .key()
                        .labels()
                        .any(|l| l.key() == "answer" && l.value() == answer)
            })
            .map(|(.., value)| match value {
                DebugValue::Counter(n) => *n,
                other => panic!("{other:?}"),
            })
    };
    assert_eq!(count("replayed"), Some(1));
    assert_eq!(count("finished"), Some(1));
    assert_eq!(count("not_found"), Some(1));
}

/// Two connections on one stream at once (two tabs): each gets every event once, in order,
/// and the upstream is read once.
#[tokio::test(start_paused = true)]
async fn concurrent_readers_each_get_everything() {
    let upstream = Upstream::default();
    let (tx, body) = channel();
    upstream.push(body);
    let reports = Reports::default();
    let service = stack(ResumeLayer::new(), &upstream, &reports);
    let first = service.clone().oneshot(get(None, None)).await.unwrap();
    let stream = stream_id(&first);
    tx.send(Ok(Frame::data(Bytes::from_static(b"data: 1\n\n"))))
        .unwrap();
    let second = service
        .clone()
        .oneshot(get(Some(&format!("{stream}.0")), None))
        .await
        .unwrap();
    let readers = [
        tokio::spawn(read_until(first.into_body(), None)),
        tokio::spawn(read_until(second.into_body(), None)),
    ];
    for i in 2..=50 {
        tx.send(Ok(Frame::data(Bytes::from(format!("data: {i}\n\n")))))
            .unwrap();
        if i % 7 == 0 {
            tokio::task::yield_now().await;
        }
    }
    drop(tx);
    let expected: Vec<String> = (1..=50).map(|i| i.to_string()).collect();
    for reader in readers {
        let (bytes, ended) = reader.await.unwrap();
        assert!(ended);
        let data: Vec<String> = events_of(&bytes).into_iter().map(|e| e.1).collect();
        assert_eq!(data, expected);
    }
    assert_eq!(upstream.calls(), 1);
    let summary = *reports.one().extensions.get::<ResumeSummary>().unwrap();
    assert_eq!((summary.connections, summary.resumes), (2, 1));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// With the default detach policy and random pauses between connections: the events
    /// collected are always a prefix of the upstream's, each once, in order; all of them when
    /// no pause outlasted the grace, and a resume after a cancellation is answered from the
    /// log (then `204`), never forwarded.
    #[test]
    fn pauses_between_connections_never_duplicate_or_reorder(
        count in 1usize..30,
        cuts in proptest::collection::vec(0usize..400, 1..5),
        pauses in proptest::collection::vec(0u64..60, 1..5),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let (collected, cancelled) = runtime.block_on(async move {
            let upstream = Upstream::default();
            let (tx, body) = channel();
            upstream.push(body);
            // The upstream produces one event every second.
            tokio::spawn(async move {
                for i in 1..=count {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if tx.send(Ok(Frame::data(Bytes::from(format!("data: {i}\n\n"))))).is_err() {
                        return;
                    }
                }
            });
            let reports = Reports::default();
            let service = stack(
                ResumeLayer::new().detach(Detach::CancelAfter(Duration::from_secs(30))),
                &upstream,
                &reports,
            );
            let response = service.clone().oneshot(get(None, None)).await.unwrap();
            let stream = stream_id(&response);
            let mut collected = Vec::new();
            let mut last = format!("{stream}.0");
            let mut current = Some(response);
            for i in 0..16 {
                let Some(response) = current.take() else { break };
                let (bytes, ended) = read_until(response.into_body(), cuts.get(i).copied()).await;
                let view = client_view(&bytes);
                if !view.last_event_id.is_empty() {
                    last = view.last_event_id.clone();
                }
                collected.extend(view.events.into_iter().map(|e| e.1));
                if ended {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(pauses.get(i).copied().unwrap_or(0))).await;
                let answer = service.clone().oneshot(get(Some(&last), None)).await.unwrap();
                if answer.status() == StatusCode::OK {
                    current = Some(answer);
                }
            }
            // Let the producer end (the upstream finishes, or the grace passes).
            tokio::time::sleep(Duration::from_secs(count as u64 + 60)).await;
            assert_eq!(upstream.calls(), 1);
            let report = reports.one();
            (collected, report.outcome == Outcome::ClientDisconnected)
        });
        let expected: Vec<String> = (1..=count).map(|i| i.to_string()).collect();
        prop_assert!(collected.len() <= expected.len());
        prop_assert_eq!(&collected[..], &expected[..collected.len()]);
        if !cancelled {
            prop_assert_eq!(collected, expected);
        }
    }
}

/// A log whose wake-ups never come (a remote store that lost its pub/sub messages).
struct DeafLog {
    inner: Arc<dyn StreamLog>,
    deaf: watch::Sender<u64>,
}

impl StreamLog for DeafLog {
    fn id(&self) -> StreamId {
        self.inner.id()
    }

    fn append(&self, seq: u64, event: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.append(seq, event)
    }

    fn end(&self, last_seq: u64, end: StreamEnd) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.end(last_seq, end)
    }

    fn read_after(
        &self,
        cursor: u64,
        limits: ReadLimits,
    ) -> BoxFuture<'_, Result<Read, StoreError>> {
        self.inner.read_after(cursor, limits)
    }

    fn wake_ups(&self) -> watch::Receiver<u64> {
        self.deaf.subscribe()
    }
}

#[derive(Clone)]
struct DeafStore(MemoryStore);

impl ResumeStore for DeafStore {
    fn create(&self, stream: NewStream) -> BoxFuture<'_, Result<Arc<dyn StreamLog>, StoreError>> {
        Box::pin(async move {
            let inner = self.0.create(stream).await?;
            let deaf = watch::Sender::new(0);
            Ok(Arc::new(DeafLog { inner, deaf }) as Arc<dyn StreamLog>)
        })
    }

    fn open(
        &self,
        id: StreamId,
        tenant: Tenant,
    ) -> BoxFuture<'_, Result<Option<Arc<dyn StreamLog>>, StoreError>> {
        self.0.open(id, tenant)
    }
}

/// Lost wake-ups only delay a reader: each keep-alive reads the log again.
#[tokio::test(start_paused = true)]
async fn lost_wake_ups_only_delay_until_the_next_keep_alive() {
    let upstream = Upstream::default();
    let (tx, body) = channel();
    upstream.push(body);
    let reports = Reports::default();
    let layer = ResumeLayer::new()
        .store(DeafStore(MemoryStore::new()))
        .keep_alive(KeepAliveConfig::new().interval(Duration::from_secs(15)));
    let service = stack(layer, &upstream, &reports);
    let response = service.oneshot(get(None, None)).await.unwrap();
    let mut body = std::pin::pin!(response.into_body());
    let start = tokio::time::Instant::now();
    tx.send(Ok(Frame::data(Bytes::from_static(b"data: 1\n\n"))))
        .unwrap();
    let keep_alive = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&keep_alive[..], b": keep-alive\n\n");
    let event = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(event.ends_with(b"data: 1\n\n"));
    assert_eq!(start.elapsed(), Duration::from_secs(15));
    drop(tx);
    // The end, too, is found by the next safety poll.
    let keep_alive = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&keep_alive[..], b": keep-alive\n\n");
    assert!(body.frame().await.is_none());
}

/// A log past its time to live after the end is gone: `204`, and nothing forwarded.
#[tokio::test(start_paused = true)]
async fn expired_logs_get_204() {
    let upstream = Upstream::default();
    upstream.push(http_body_util::Full::new(Bytes::from_static(
        b"data: 1\n\ndata: 2\n\n",
    )));
    let reports = Reports::default();
    let store = MemoryStore::builder()
        .ended_ttl(Duration::from_secs(10))
        .build();
    let service = stack(ResumeLayer::new().store(store), &upstream, &reports);
    let response = service.clone().oneshot(get(None, None)).await.unwrap();
    let stream = stream_id(&response);
    read_until(response.into_body(), None).await;
    tokio::time::sleep(Duration::from_secs(9)).await;
    let answer = service
        .clone()
        .oneshot(get(Some(&format!("{stream}.1")), None))
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let answer = service
        .clone()
        .oneshot(get(Some(&format!("{stream}.1")), None))
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);
    assert_eq!(upstream.calls(), 1);
}

/// Reads a body to its end: the bytes, and whether it ended with an error (a broken end)
/// rather than cleanly.
async fn read_to_end<B>(body: B) -> (Vec<u8>, bool)
where
    B: Body<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    let mut received = Vec::new();
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    received.extend_from_slice(&data);
                }
            }
            Some(Err(_)) => return (received, true),
            None => return (received, false),
        }
    }
}

/// A connected reader slower than the log's bounds holds the producer (and the upstream)
/// back, and then gets every event, as it would without resumption (TCP backpressure); one
/// that reads nothing on for longer than the bound gets the `resume_gap` error event and a
/// broken end, counted in its record: never a clean end with events missing.
#[tokio::test(start_paused = true)]
async fn a_slow_reader_holds_the_producer_back_and_is_never_truncated_silently() {
    let upstream = Upstream::default();
    let (tx, body) = channel();
    upstream.push(body);
    let (tx2, body2) = channel();
    upstream.push(body2);
    let reports = Reports::default();
    let records = Arc::new(Mutex::new(Vec::<ReaderRecord>::new()));
    let store = MemoryStore::builder().max_stream_events(2).build();
    let layer = ResumeLayer::new()
        .store(store.clone())
        .slow_reader_hold(Duration::from_secs(10))
        .on_reader_end({
            let records = records.clone();
            move |record| {
                records
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(record)
            }
        });
    let service = stack(layer, &upstream, &reports);

    // The client reads nothing while the upstream sends 5 events.
    let response = service.clone().oneshot(get(None, None)).await.unwrap();
    let stream = stream_id(&response);
    for i in 1..=5 {
        tx.send(Ok(Frame::data(Bytes::from(format!("data: {i}\n\n")))))
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The producer held back: the log trimmed nothing the reader has not read.
    let log = store
        .open(stream, Tenant::anonymous())
        .await
        .unwrap()
        .unwrap();
    match log.read_after(0, ReadLimits::default()).await.unwrap() {
        Read::Events(batch) => assert_eq!((batch.events.len(), batch.head), (2, 2)),
        other => panic!("the reader's positions were trimmed: {other:?}"),
    }
    drop(tx);
    let (bytes, broken) = read_to_end(response.into_body()).await;
    let data: Vec<_> = events_of(&bytes).into_iter().map(|e| e.1).collect();
    assert_eq!(data, ["1", "2", "3", "4", "5"]);
    assert!(!broken);

    // A reader that reads nothing on for longer than the bound is let go, explicitly.
    let response = service.clone().oneshot(get(None, None)).await.unwrap();
    let mut body = Box::pin(response.into_body());
    tx2.send(Ok(Frame::data(Bytes::from_static(b"data: a\n\n"))))
        .unwrap();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.ends_with(b"data: a\n\n"));
    for i in 1..=5 {
        tx2.send(Ok(Frame::data(Bytes::from(format!("data: {i}\n\n")))))
            .unwrap();
    }
    drop(tx2);
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (bytes, broken) = read_to_end(body).await;
    let events = events_of(&bytes);
    assert!(broken, "a reader with a gap must not end cleanly");
    let last = events.last().unwrap();
    assert_eq!(last.0, "error");
    assert!(last.1.contains("\"resume_gap\""), "{last:?}");
    // What came before the error event is in order, with no gap inside it.
    let got: Vec<_> = events[..events.len() - 1]
        .iter()
        .map(|e| e.1.clone())
        .collect();
    assert!(
        ["1", "2", "3", "4", "5"].starts_with(&got.iter().map(String::as_str).collect::<Vec<_>>())
    );
    assert!(got.len() < 5);
    let records = records.lock().unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].gap, None);
    assert_eq!(
        records[1].gap,
        Some(tower_sse::resume::ResumeGapKind::Overrun)
    );
}

/// Shutdown ends every reader the process serves, those of streams produced elsewhere
/// included (they hold no stream permit): each gets the `server_shutdown` error event and an
/// end, and the layer's count of open readers, which a graceful shutdown waits for, says so.
/// (Two layers on one store stand for two replicas on a shared one.)
#[tokio::test(start_paused = true)]
async fn shutdown_ends_the_readers_of_streams_produced_elsewhere() {
    let store = MemoryStore::new();
    let upstream = Upstream::default();
    let (tx, body) = channel();
    upstream.push(body);
    let reports = Reports::default();
    let a = stack(ResumeLayer::new().store(store.clone()), &upstream, &reports);
    let shutdown = tower_sse::stream::Shutdown::new();
    let layer_b = ResumeLayer::new()
        .store(store.clone())
        .shutdown(shutdown.clone());
    let readers_b = layer_b.open_readers();
    let b = stack(layer_b, &Upstream::default(), &Reports::default());

    let response = a.oneshot(get(None, None)).await.unwrap();
    let stream = stream_id(&response);
    tx.send(Ok(Frame::data(Bytes::from_static(b"data: 1\n\n"))))
        .unwrap();
    let mut first = Box::pin(response.into_body());
    first.frame().await.unwrap().unwrap();
    let resumed = b
        .oneshot(get(Some(&format!("{stream}.0")), None))
        .await
        .unwrap();
    assert_eq!(resumed.status(), StatusCode::OK);
    let mut resumed = Box::pin(resumed.into_body());
    let replayed = resumed.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(replayed.ends_with(b"data: 1\n\n"));
    assert_eq!(readers_b.get(), 1);

    shutdown.end_streams();
    let (bytes, _) = read_until(resumed, None).await;
    let events = events_of(&bytes);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "error");
    assert!(events[0].1.contains("server_shutdown"), "{events:?}");
    assert_eq!(readers_b.get(), 0);
    // The stream itself goes on on its own replica.
    tx.send(Ok(Frame::data(Bytes::from_static(b"data: 2\n\n"))))
        .unwrap();
    let two = first.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(two.ends_with(b"data: 2\n\n"));
}
