//! A policy under `ResumeLayer` (issue 26): the log holds what clients receive. A stream
//! redacted by the `SseLayer`'s policy (through its holdback window) is logged redacted, a
//! resume replays the redacted bytes and never the original, and the report's digest is
//! of what the client received.
#![cfg(feature = "resume")]

mod support;

use std::convert::Infallible;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use sha2::{Digest as _, Sha256};
use support::body::{ChannelBody, Reports, channel};
use support::sse::client_view;
use tower::{Layer, ServiceExt};
use tower_sse::policy::{Held, Holdback, Policy, PolicyContext, StopReason, Verdict};
use tower_sse::resume::{ResumeObserver, StreamId};
use tower_sse::{BoxError, DigestObserver, Outcome, ResumeLayer, SseLayer};

fn find(needle: &'static str) -> impl Fn(&str) -> Vec<Range<usize>> + Clone {
    move |text: &str| {
        text.match_indices(needle)
            .map(|(at, m)| at..at + m.len())
            .collect()
    }
}

/// Redacts `needle` in each event, and across held events.
#[derive(Clone)]
struct Redact(&'static str);

impl Policy for Redact {
    fn on_event(&mut self, cx: &PolicyContext<'_>) -> Verdict {
        cx.redact("[redacted]", find(self.0))
            .map_or(Verdict::Pass, Verdict::Replace)
    }

    fn on_held(&mut self, held: &mut Held<'_>) -> Option<StopReason> {
        held.redact("[redacted]", find(self.0));
        None
    }
}

fn chat(content: &str) -> String {
    let content = serde_json::Value::from(content);
    format!(
        "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{content}}}}}]}}\n\n"
    )
}

fn get(last_event_id: Option<&str>) -> Request<Empty<Bytes>> {
    let mut request = Request::get("/v1/chat/completions").header("authorization", "Bearer alice");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    request.body(Empty::new()).unwrap()
}

async fn read_all<B>(body: B) -> Vec<u8>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    body.collect().await.unwrap().to_bytes().to_vec()
}

/// Read until `cut` bytes arrived, then drop the body (a disconnect).
async fn read_cut<B>(body: B, cut: usize) -> Vec<u8>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let mut body = std::pin::pin!(body);
    let mut received = Vec::new();
    while received.len() < cut {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    received.extend_from_slice(&data);
                }
            }
            _ => break,
        }
    }
    received
}

/// Whole events (blank-line terminated blocks) in `bytes`, comments left out: what a client
/// keeps across connections to check the digest (see the `resume` module docs).
fn whole_events(bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    let mut rest = &*text;
    while let Some(end) = rest.find("\n\n") {
        let block = &rest[..end + 2];
        if !block.starts_with(':') {
            out.push_str(block);
        }
        rest = &rest[end + 2..];
    }
    out.into_bytes()
}

#[tokio::test(start_paused = true)]
async fn a_redacted_stream_is_logged_replayed_and_digested_as_the_client_received_it() {
    let (tx, upstream_body) = channel();
    let upstream_body: Arc<Mutex<Option<ChannelBody>>> = Arc::new(Mutex::new(Some(upstream_body)));
    let inner = tower::service_fn(
        move |_: Request<tower_sse::request::UploadBody<Empty<Bytes>>>| {
            let body = upstream_body.lock().unwrap().take();
            let response: Response<BoxBody<Bytes, BoxError>> = match body {
                Some(body) => Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(body.map_err(BoxError::from).boxed())
                    .unwrap(),
                None => Response::builder()
                    .status(StatusCode::SERVICE_UNAVAILABLE)
                    .body(Empty::new().map_err(|e| match e {}).boxed())
                    .unwrap(),
            };
            std::future::ready(Ok::<_, Infallible>(response))
        },
    );
    let reports = Reports::default();
    let sse = SseLayer::new()
        .policy(Redact("hunter2"))
        .holdback(Holdback::events(3))
        .observer((ResumeObserver::new(), DigestObserver::new()))
        .on_end(reports.sink());
    let service = ResumeLayer::new().layer(sse.layer(inner));

    // The secret comes split over three deltas: only the holdback window sees it whole.
    let live = service.clone().oneshot(get(None)).await.unwrap();
    let stream = StreamId::parse(live.headers()["sse-stream-id"].to_str().unwrap()).unwrap();
    for piece in [chat("pw: hun"), chat("te"), chat("r2!"), chat(" ok")] {
        tx.send(Ok(Frame::data(Bytes::from(piece)))).unwrap();
    }
    // The first connection is cut after its first frame; the client resumes after the
    // last whole event it got.
    let cut = read_cut(live.into_body(), 1).await;
    let last = client_view(&cut).last_event_id;
    let last = if last.is_empty() {
        format!("{stream}.0")
    } else {
        last
    };
    let resumed = service.clone().oneshot(get(Some(&last))).await.unwrap();
    assert_eq!(resumed.status(), StatusCode::OK);
    for piece in [
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7,\"total_tokens\":12}}\n\n".to_owned(),
        "data: [DONE]\n\n".to_owned(),
    ] {
        tx.send(Ok(Frame::data(Bytes::from(piece)))).unwrap();
    }
    drop(tx);
    let second = read_all(resumed.into_body()).await;
    let second_text = String::from_utf8(second.clone()).unwrap();
    assert!(!second_text.contains("hunter2"), "{second_text}");

    // After the end, a resume from the start is answered from the log alone: the
    // redacted bytes, never the original.
    let replay = service
        .clone()
        .oneshot(get(Some(&format!("{stream}.0"))))
        .await
        .unwrap();
    let replayed = read_all(replay.into_body()).await;
    let replayed_text = String::from_utf8(replayed.clone()).unwrap();
    for original in ["hunter2", "\"hun\"", "\"te\"", "\"r2!\""] {
        assert!(!replayed_text.contains(original), "{replayed_text}");
    }
    let contents: Vec<String> = client_view(&replayed)
        .events
        .iter()
        .filter_map(|(_, data, _)| {
            let v: serde_json::Value = serde_json::from_str(data).ok()?;
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(contents.concat(), "pw: [redacted]! ok");
    // Across its two connections the client got every event once: the replay's events.
    assert!(!whole_events(&cut).is_empty() && !whole_events(&second).is_empty());
    let received = [whole_events(&cut), whole_events(&second)].concat();
    assert_eq!(received, whole_events(&replayed));

    let report = reports.one();
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(report.policy.replaced, 3);
    // The digest is of what the client received: the stamped, redacted events of both
    // connections, joined (the resume module's recipe).
    let received: [u8; 32] = Sha256::digest(&received).into();
    assert_eq!(report.digest.unwrap().as_bytes(), &received);
}
