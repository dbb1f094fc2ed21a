//! Resumable streams tell the truth (issue 23): a stream its producer ends itself is
//! reported with its true outcome (item 6), and the report's digest is of the stamped
//! stream a client reads (item 8).
#![cfg(feature = "resume")]

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body::Frame;
use http_body_util::{BodyExt, Empty};
use support::body::{ChannelBody, Reports, channel};
use tokio::sync::watch;
use tower::{Layer, Service, ServiceExt};
use tower_sse::request::Tenant;
use tower_sse::resume::{
    MemoryStore, NewStream, Read, ReadLimits, ResumeObserver, ResumeStore, StoreError, StreamEnd,
    StreamId, StreamLog,
};
use tower_sse::{BoxError, BoxFuture, Outcome, ResumeLayer, SseLayer, StreamReport};

/// `ResumeLayer` ─► `SseLayer` (`ResumeObserver` first) ─► an upstream that answers `body`
/// as a stream (once).
fn stack(
    resume: ResumeLayer,
    body: ChannelBody,
    reports: &Reports,
) -> impl Service<
    Request<Empty<Bytes>>,
    Response = Response<impl Body<Data = Bytes, Error = BoxError> + Send + 'static>,
    Error = Infallible,
> + Clone {
    let body = Arc::new(Mutex::new(Some(body)));
    let inner = tower::service_fn(
        move |_: Request<tower_sse::request::UploadBody<Empty<Bytes>>>| {
            let body = body.lock().unwrap().take().expect("one request");
            let response = Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .unwrap();
            std::future::ready(Ok::<_, Infallible>(response))
        },
    );
    let sse = SseLayer::new()
        .observer(ResumeObserver::new())
        .on_end(reports.sink());
    resume.layer(sse.layer(inner))
}

/// Read a body to its end (or its failure); the bytes and whether it failed.
async fn read_all<B: Body<Data = Bytes>>(body: B) -> (Vec<u8>, bool) {
    let mut body = std::pin::pin!(body);
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => bytes.extend_from_slice(frame.data_ref().unwrap()),
            Err(_) => return (bytes, true),
        }
    }
    (bytes, false)
}

/// Wait until the producer's report arrived (it runs on its own task).
async fn one_report(reports: &Reports) -> StreamReport {
    for _ in 0..1000 {
        if reports.len() > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    reports.one()
}

/// A store whose logs refuse every append after the first.
#[derive(Clone)]
struct FailingStore(MemoryStore);

impl ResumeStore for FailingStore {
    fn create(&self, stream: NewStream) -> BoxFuture<'_, Result<Arc<dyn StreamLog>, StoreError>> {
        Box::pin(async move {
            let log = self.0.create(stream).await?;
            Ok(Arc::new(FailingLog(log)) as Arc<dyn StreamLog>)
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

struct FailingLog(Arc<dyn StreamLog>);

impl StreamLog for FailingLog {
    fn id(&self) -> StreamId {
        self.0.id()
    }

    fn append(&self, seq: u64, event: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
        if seq > 1 {
            return Box::pin(async { Err(StoreError::unavailable("full")) });
        }
        self.0.append(seq, event)
    }

    fn end(&self, last_seq: u64, end: StreamEnd) -> BoxFuture<'_, Result<(), StoreError>> {
        self.0.end(last_seq, end)
    }

    fn read_after(
        &self,
        cursor: u64,
        limits: ReadLimits,
    ) -> BoxFuture<'_, Result<Read, StoreError>> {
        self.0.read_after(cursor, limits)
    }

    fn wake_ups(&self) -> watch::Receiver<u64> {
        self.0.wake_ups()
    }
}

/// Item 6: the store fails while the client is still reading: the report says so, not
/// `client_disconnected`.
#[tokio::test(start_paused = true)]
async fn a_store_failure_is_reported_as_such_not_as_a_disconnect() {
    let reports = Reports::default();
    let resume = ResumeLayer::new().store(FailingStore(MemoryStore::new()));
    // A live upstream: two events, and more to come.
    let (upstream, body) = channel();
    let service = stack(resume, body, &reports);
    upstream
        .send(Ok(Frame::data(Bytes::from_static(
            b"data: 1\n\ndata: 2\n\n",
        ))))
        .unwrap();
    let request = Request::get("/v1/chat/completions")
        .body(Empty::new())
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    // The client stays to the end of what it is given.
    let (_, failed) = read_all(response.into_body()).await;
    assert!(
        failed,
        "the reader's connection fails, so that it reconnects"
    );
    let report = one_report(&reports).await;
    assert_eq!(report.outcome.as_str(), "store_failed");
    assert!(report.error.is_some_and(|e| e.contains("store")));
    drop(upstream);
}

/// Item 6: an event past the resume layer's own limit ends the stream: reported as
/// `event_too_large`, not `client_disconnected`.
#[tokio::test(start_paused = true)]
async fn an_event_past_the_producers_limit_is_reported_as_such() {
    let reports = Reports::default();
    let resume = ResumeLayer::new().max_event_size(64);
    let (upstream, body) = channel();
    let service = stack(resume, body, &reports);
    let big = format!("data: 1\n\ndata: {}\n\n", "x".repeat(100));
    upstream.send(Ok(Frame::data(Bytes::from(big)))).unwrap();
    let request = Request::get("/v1/chat/completions")
        .body(Empty::new())
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    let _ = read_all(response.into_body()).await;
    let report = one_report(&reports).await;
    assert_eq!(report.outcome, Outcome::EventTooLarge);
    drop(upstream);
}

/// Item 8: a client that read a resumable stream in one connection hashes what it read,
/// its own keep-alives left out, and finds the report's digest: the digest is of the
/// stamped stream (`id:` lines included), not of what the `SseLayer` handed the producer.
/// A real server and client; paused time, so that keep-alives come between events.
#[tokio::test(start_paused = true)]
async fn the_digest_is_of_the_stamped_stream_a_client_read() {
    use axum::Router;
    use axum::body::Body as AxumBody;
    use std::time::Duration;
    use support::body::{next_report, report_channel};
    use tower_sse::{DigestObserver, KeepAliveConfig, Sha256Digest};

    let (sink, mut reports) = report_channel();
    let (feed, mut bodies) = tokio::sync::mpsc::unbounded_channel();
    let upstream = tower::service_fn(
        move |_: Request<tower_sse::request::UploadBody<AxumBody>>| {
            let (upstream, body) = channel();
            feed.send(upstream).unwrap();
            let response = Response::builder()
                .header("content-type", "text/event-stream")
                .body(AxumBody::new(body))
                .unwrap();
            std::future::ready(Ok::<_, Infallible>(response))
        },
    );
    let sse = SseLayer::new()
        .observer((ResumeObserver::new(), DigestObserver::new()))
        .on_end(sink);
    let resume =
        ResumeLayer::new().keep_alive(KeepAliveConfig::new().interval(Duration::from_secs(1)));
    let app = Router::new().fallback_service(resume.layer(sse.layer(upstream)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("accept", "text/event-stream")
        .send();
    let upstream = async {
        let upstream = bodies.recv().await.unwrap();
        let pieces: [&'static [u8]; 5] = [
            b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            // An upstream comment (never logged), an event with its own id (re-encoded with
            // ours), a `retry` block (logged, stamped).
            b": upstream ping\n\nid: theirs\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n",
            b"retry: 3000\n\n",
            b"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\r\n\r\n",
            b"data: [DONE]\n\n",
        ];
        for piece in pieces {
            upstream
                .send(Ok(Frame::data(Bytes::from_static(piece))))
                .unwrap();
            // Silence, on the paused clock: the reader sends its own keep-alives.
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    };
    let (response, ()) = tokio::join!(response, upstream);
    let received = response.unwrap().bytes().await.unwrap();
    let text = String::from_utf8(received.to_vec()).unwrap();
    assert!(text.contains(": keep-alive\n\n"), "{text}");
    assert!(text.contains("id: "), "{text}");
    // What the client hashes: every byte it read, but its own connection's keep-alives.
    let read = text.replace(": keep-alive\n\n", "");
    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(
        report.digest,
        Some(Sha256Digest::of(read.as_bytes())),
        "{read}"
    );
}

/// The docs point: under a `ResumeLayer`, a stream its detach policy cancels is dropped by
/// the producer as a client's connection would be, so `drain_on_disconnect` applies: with
/// `Detach::CancelNow` and a drain, the upstream is read on for the final usage.
#[cfg(feature = "drain")]
#[tokio::test(start_paused = true)]
async fn a_cancelled_resumable_stream_is_drained_when_drain_is_set() {
    use std::time::Duration;
    use tower_sse::UsageObserver;
    use tower_sse::resume::Detach;

    let reports = Reports::default();
    let (upstream, body) = channel();
    let body = Arc::new(Mutex::new(Some(body)));
    let inner = tower::service_fn(
        move |_: Request<tower_sse::request::UploadBody<Empty<Bytes>>>| {
            let body = body.lock().unwrap().take().expect("one request");
            let response = Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .unwrap();
            std::future::ready(Ok::<_, Infallible>(response))
        },
    );
    let sse = SseLayer::new()
        .drain_on_disconnect(Duration::from_secs(60))
        .observer((ResumeObserver::new(), UsageObserver::new()))
        .on_end(reports.sink());
    let service = ResumeLayer::new()
        .detach(Detach::CancelNow)
        .layer(sse.layer(inner));
    let request = Request::post("/v1/chat/completions")
        .body(Empty::new())
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    upstream
        .send(Ok(Frame::data(Bytes::from_static(
            b"data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
        ))))
        .unwrap();
    let mut body = Box::pin(response.into_body());
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some());
    // The client leaves: the producer cancels at once, and the drain reads on.
    drop(body);
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(reports.len(), 0, "drained, not yet reported");
    upstream
        .send(Ok(Frame::data(Bytes::from_static(
            b"data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\ndata: [DONE]\n\n",
        ))))
        .unwrap();
    drop(upstream);
    let report = one_report(&reports).await;
    assert_eq!(report.outcome, Outcome::ClientDisconnected);
    assert_eq!(report.usage.and_then(|u| u.output_tokens), Some(1));
}
