//! Test bodies, services and a report collector for the stream layer.

#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use tokio::sync::mpsc;
use tower::ServiceExt;
use tower_sse::stream::SseBody;
use tower_sse::{BoxError, Observer, OnEnd, SseLayer, StreamReport};

/// The error an upstream test body fails with.
#[derive(Debug)]
pub struct UpstreamFailed;

impl std::fmt::Display for UpstreamFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset by upstream")
    }
}

impl std::error::Error for UpstreamFailed {}

pub type Item = Result<Frame<Bytes>, UpstreamFailed>;

/// An upstream body the test feeds by hand.
#[derive(Debug)]
pub struct ChannelBody {
    rx: mpsc::UnboundedReceiver<Item>,
}

pub fn channel() -> (mpsc::UnboundedSender<Item>, ChannelBody) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, ChannelBody { rx })
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = UpstreamFailed;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        self.rx.poll_recv(cx)
    }
}

/// An upstream body made of fixed frames, ending as soon as the last one is out
/// (`is_end_stream()` after the last frame, like a body with an exact length).
#[derive(Debug)]
pub struct FramesBody {
    frames: std::collections::VecDeque<Item>,
    exact_end: bool,
    /// The data still to come, when the body announces its length (`Content-Length`).
    announced: Option<u64>,
}

impl FramesBody {
    pub fn new(frames: Vec<Item>, exact_end: bool) -> Self {
        Self {
            frames: frames.into(),
            exact_end,
            announced: None,
        }
    }

    /// The body's size hint says exactly how much data is still to come, as hyper's does for
    /// a request with a `Content-Length`.
    pub fn announced(mut self) -> Self {
        let data = self
            .frames
            .iter()
            .filter_map(|f| f.as_ref().ok()?.data_ref());
        self.announced = Some(data.map(|d| d.len() as u64).sum());
        self
    }

    pub fn data(chunks: &[&'static [u8]]) -> Self {
        Self::new(
            chunks
                .iter()
                .map(|c| Ok(Frame::data(Bytes::from_static(c))))
                .collect(),
            false,
        )
    }
}

impl Body for FramesBody {
    type Data = Bytes;
    type Error = UpstreamFailed;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Item>> {
        let frame = self.frames.pop_front();
        if let (Some(left), Some(Ok(frame))) = (self.announced.as_mut(), &frame)
            && let Some(data) = frame.data_ref()
        {
            *left -= data.len() as u64;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.exact_end && self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        self.announced
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// Collects reports.
#[derive(Clone, Default)]
pub struct Reports(Arc<Mutex<Vec<StreamReport>>>);

impl Reports {
    pub fn sink(&self) -> impl FnOnce(StreamReport) + Clone + Send + Sync + 'static {
        let reports = self.0.clone();
        move |report| reports.lock().unwrap().push(report)
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// The one report; panics unless exactly one arrived.
    pub fn one(&self) -> StreamReport {
        let mut reports = self.0.lock().unwrap();
        assert_eq!(reports.len(), 1, "expected exactly one report");
        reports.pop().unwrap()
    }

    pub fn take(&self) -> Vec<StreamReport> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// A report sink that sends over a channel, so that a test can wait for a report made on
/// another task (a server's).
pub fn report_channel() -> (
    impl FnOnce(StreamReport) + Clone + Send + Sync + 'static,
    mpsc::UnboundedReceiver<StreamReport>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    (move |report| drop(tx.send(report)), rx)
}

/// The next report of a [`report_channel`].
pub async fn next_report(rx: &mut mpsc::UnboundedReceiver<StreamReport>) -> StreamReport {
    // A guard against hanging forever, not a timing assertion.
    tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv())
        .await
        .expect("no report within 30 s")
        .expect("report channel closed")
}

/// A response with this content type and body.
pub fn response<B>(content_type: &str, body: B) -> Response<B> {
    Response::builder()
        .header(http::header::CONTENT_TYPE, content_type)
        .body(body)
        .unwrap()
}

/// Put `layer` around a service that answers with `response`; call it with `request`.
pub async fn serve_with<O, E, B>(
    layer: SseLayer<O, E>,
    request: Request<Empty<Bytes>>,
    response: Response<B>,
) -> Response<SseBody<B, O, E>>
where
    O: Observer + Clone + Send + 'static,
    E: OnEnd + Clone + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut response = Some(response);
    let service = tower::Layer::layer(
        &layer,
        tower::service_fn(
            move |_req: Request<tower_sse::request::UploadBody<Empty<Bytes>>>| {
                std::future::ready(Ok::<_, Infallible>(
                    response.take().expect("one call per service"),
                ))
            },
        ),
    );
    service.oneshot(request).await.unwrap()
}

/// [`serve_with`] with a plain `GET /`.
pub async fn serve<O, E, B>(
    layer: SseLayer<O, E>,
    response: Response<B>,
) -> Response<SseBody<B, O, E>>
where
    O: Observer + Clone + Send + 'static,
    E: OnEnd + Clone + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    serve_with(layer, Request::new(Empty::new()), response).await
}

/// Everything a body yields until its end: data concatenated, trailers, and an error.
#[derive(Debug, Default)]
pub struct Collected {
    pub data: Vec<u8>,
    pub frames: usize,
    pub trailers: Option<HeaderMap>,
    pub error: Option<String>,
}

impl Collected {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

pub async fn collect<B>(body: B) -> Collected
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut body = body;
    let mut out = Collected::default();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => {
                    out.frames += 1;
                    out.data.extend_from_slice(&data);
                }
                Err(frame) => {
                    assert!(out.trailers.is_none(), "trailers twice");
                    out.trailers = frame.into_trailers().ok();
                }
            },
            Err(e) => {
                out.error = Some(e.to_string());
                break;
            }
        }
    }
    out
}

/// The next data frame of a body, as text.
pub async fn next_text<B>(body: &mut B) -> Option<String>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let frame = body.frame().await?.expect("body error");
    Some(String::from_utf8_lossy(&frame.into_data().expect("a data frame")).into_owned())
}

/// An SSE upstream body of whole chunks.
pub fn sse(chunks: &[&'static str]) -> Full<Bytes> {
    Full::new(Bytes::from(chunks.concat()))
}

pub fn size_hint_is_exact(hint: &SizeHint) -> bool {
    hint.exact().is_some()
}
