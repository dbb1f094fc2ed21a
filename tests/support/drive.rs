//! Drive a layer over an in-memory upstream, polled by hand as hyper would: no runtime, no
//! sockets, so a benchmark measures the layer's own work.

use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{Empty, StreamBody};
use tower::{Layer, Service};
use tower_sse::{Observer, OnEnd, SseLayer};

/// An upstream body that hands out these chunks, always ready.
pub type Upstream = StreamBody<stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

pub fn upstream(chunks: &[Bytes]) -> Upstream {
    let frames: Vec<_> = chunks.iter().cloned().map(|c| Ok(Frame::data(c))).collect();
    StreamBody::new(stream::iter(frames))
}

/// Poll a body to its end, as hyper does; sum the bytes.
pub fn drain<B: Body<Data = Bytes>>(body: B) -> usize {
    let mut body = pin!(body);
    let mut cx = Context::from_waker(Waker::noop());
    let mut total = 0;
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => total += frame.data_ref().map_or(0, Bytes::len),
            Poll::Ready(Some(Err(_))) => panic!("body error"),
            Poll::Ready(None) => return total,
            Poll::Pending => unreachable!("in-memory bodies are always ready"),
        }
    }
}

/// The layer around a service answering `POST /v1/chat/completions` with `body` as an SSE
/// response; returns the response body (per-stream setup included).
pub fn through<O, E>(layer: &SseLayer<O, E>, body: Upstream) -> impl Body<Data = Bytes> + use<O, E>
where
    O: Observer + Clone + Send + 'static,
    E: OnEnd + Clone + Send + 'static,
{
    let mut body = Some(body);
    let mut service = layer.layer(tower::service_fn(
        move |_req: Request<tower_sse::request::UploadBody<Empty<Bytes>>>| {
            let response = Response::builder()
                .header("content-type", "text/event-stream")
                .body(body.take().expect("one call"))
                .expect("a valid response");
            std::future::ready(Ok::<_, Infallible>(response))
        },
    ));
    let request = Request::post("/v1/chat/completions")
        .body(Empty::new())
        .expect("a valid request");
    let mut future = pin!(service.call(request));
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(&mut future).poll(&mut cx) {
        Poll::Ready(Ok(response)) => response.into_body(),
        _ => unreachable!("the inner service is ready at once"),
    }
}
