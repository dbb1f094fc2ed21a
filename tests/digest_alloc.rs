//! The digest path allocates nothing per event: counted with an instrumented global
//! allocator, in one test function (the allocator counts every thread of the process).

mod support;

use std::alloc::System;
use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{Empty, StreamBody};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use support::inputs;
use tower::{Layer, Service};
use tower_sse::{DigestObserver, Observer, OnEnd, SseLayer};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

type Upstream =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// Run one stream through `layer`, polled as hyper would (no runtime needed: the upstream is
/// always ready). Returns the allocations it made.
fn allocations<O, E>(layer: &SseLayer<O, E>, chunks: &[Bytes]) -> usize
where
    O: Observer + Clone + Send + 'static,
    E: OnEnd + Clone + Send + 'static,
{
    let frames: Vec<_> = chunks.iter().cloned().map(|c| Ok(Frame::data(c))).collect();
    let mut upstream = Some(StreamBody::new(futures_util::stream::iter(frames)));
    let region = Region::new(GLOBAL);
    let mut service = layer.layer(tower::service_fn(
        move |_req: Request<tower_sse::request::UploadBody<Empty<Bytes>>>| {
            let body: Upstream = upstream.take().unwrap();
            std::future::ready(Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(body)
                    .unwrap(),
            ))
        },
    ));
    let mut cx = Context::from_waker(Waker::noop());
    let request = Request::builder()
        .uri("/v1/chat/completions")
        .body(Empty::new())
        .unwrap();
    let mut future = pin!(service.call(request));
    let Poll::Ready(Ok(response)) = Pin::new(&mut future).poll(&mut cx) else {
        panic!("the inner service answers at once")
    };
    let mut body = pin!(response.into_body());
    while let Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
        frame.unwrap();
    }
    region.change().allocations
}

/// The fewest allocations of a few runs: other threads of the test harness may allocate
/// now and then while a run is counted, and that only ever adds.
fn fewest<O, E>(layer: &SseLayer<O, E>, chunks: &[Bytes]) -> isize
where
    O: Observer + Clone + Send + 'static,
    E: OnEnd + Clone + Send + 'static,
{
    (0..5)
        .map(|_| allocations(layer, chunks))
        .min()
        .unwrap_or_default() as isize
}

/// The chat stream with its 200 content events `times` times over.
fn longer(times: usize) -> Vec<Bytes> {
    let chunks = inputs::one_bytes_per_event();
    let (content, end) = chunks.split_at(200);
    let mut out = Vec::new();
    for _ in 0..times {
        out.extend_from_slice(content);
    }
    out.extend_from_slice(end);
    out
}

#[test]
fn digest_observer_allocates_nothing_per_event() {
    let short = longer(1);
    let long = longer(3);
    let bare = SseLayer::new();
    let digest = SseLayer::new().observer(DigestObserver::new());
    // Warm up lazily initialised statics.
    allocations(&bare, &short);
    allocations(&digest, &short);

    let extra = |chunks: &[Bytes]| fewest(&digest, chunks) - fewest(&bare, chunks);
    let (extra_short, extra_long) = (extra(&short), extra(&long));
    assert_eq!(
        extra_short, extra_long,
        "the digest's allocations must not grow with the number of events"
    );

    #[cfg(feature = "registry")]
    {
        use tower_sse::DigestRegistry;
        let with_registry = |chunks: &[Bytes]| {
            // A fresh registry each time: one insert per stream, nothing per event.
            let layer =
                SseLayer::new().observer(DigestObserver::with_registry(DigestRegistry::new()));
            fewest(&layer, chunks) - fewest(&bare, chunks)
        };
        with_registry(&short);
        assert_eq!(with_registry(&short), with_registry(&long));
    }
}
