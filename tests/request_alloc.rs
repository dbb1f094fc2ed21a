//! Allocations per request, counted with an instrumented global allocator: a
//! `StreamLimitLayer` (no drain configured inside) and a disabled `ResumeLayer` add none to
//! what the service inside them makes; an enabled `ResumeLayer`, for a request answered
//! with something other than a stream, adds only its handle in the request's extensions.
//!
//! One test function only: the allocator counts every thread of the process.

use std::alloc::System;
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{Layer, Service, service_fn};
use tower_sse::{SseLayer, StreamLimitLayer};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn event_stream(
    _: Request<Full<Bytes>>,
) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"data: hi\n\n")));
    response
        .headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    std::future::ready(Ok(response))
}

#[cfg(feature = "resume")]
fn json(_: Request<Full<Bytes>>) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    std::future::ready(Ok(response))
}

/// The fewest allocations of one request through `service` (called, answered, its body read
/// to the end), over a few runs.
fn allocations_per_request<S, B>(service: &mut S) -> usize
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body,
{
    let mut cx = Context::from_waker(Waker::noop());
    let mut least = usize::MAX;
    for _ in 0..5 {
        let request = Request::builder()
            .method("POST")
            .uri("/v1/chat/completions")
            .header("accept", "text/event-stream")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let region = Region::new(GLOBAL);
        assert!(service.poll_ready(&mut cx).is_ready());
        let mut future = pin!(service.call(request));
        let Poll::Ready(response) = future.as_mut().poll(&mut cx) else {
            panic!("the response is ready at once")
        };
        let mut body = pin!(response.unwrap().into_body());
        while let Poll::Ready(Some(_)) = body.as_mut().poll_frame(&mut cx) {}
        least = least.min(region.change().allocations);
    }
    least
}

#[test]
fn layers_add_no_allocation_per_request() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = runtime.enter();

    let mut inner = SseLayer::new().layer(service_fn(event_stream));
    let base = allocations_per_request(&mut inner);
    println!("per request, SseLayer alone: {base} allocations");

    let mut limited =
        StreamLimitLayer::new(8).layer(SseLayer::new().layer(service_fn(event_stream)));
    let limit = allocations_per_request(&mut limited);
    println!("per request, + StreamLimitLayer: {limit} allocations");

    #[cfg(feature = "resume")]
    {
        let mut resume = tower_sse::ResumeLayer::new()
            .enabled(false)
            .layer(SseLayer::new().layer(service_fn(event_stream)));
        let disabled = allocations_per_request(&mut resume);
        println!("per request, + disabled ResumeLayer: {disabled} allocations");
        assert_eq!(
            disabled, base,
            "a disabled ResumeLayer allocates per request"
        );

        // Enabled, for an answer that is not a stream: the inner service plus one request
        // extension (the `ResumableStream` handle that the layers and handlers inside may
        // read), measured against a layer that inserts one extension and nothing else. No
        // boxed future, no shared state, no lock.
        let json_alone = allocations_per_request(&mut SseLayer::new().layer(service_fn(json)));
        println!("per request, SseLayer alone, not a stream: {json_alone} allocations");
        #[derive(Clone)]
        struct Handle(#[allow(dead_code)] [u64; 3]);
        let mut one_extension = tower::ServiceBuilder::new()
            .map_request(|mut request: Request<Full<Bytes>>| {
                request.extensions_mut().insert(Handle([0; 3]));
                request
            })
            .service(SseLayer::new().layer(service_fn(json)));
        let json_base = allocations_per_request(&mut one_extension);
        println!(
            "per request, SseLayer + one request extension, not a stream: {json_base} allocations"
        );
        let mut enabled =
            tower_sse::ResumeLayer::new().layer(SseLayer::new().layer(service_fn(json)));
        let not_stream = allocations_per_request(&mut enabled);
        println!("per request, + enabled ResumeLayer, not a stream: {not_stream} allocations");
        assert_eq!(
            not_stream, json_base,
            "an enabled ResumeLayer allocates per request that is not a stream"
        );
    }
    assert_eq!(limit, base, "StreamLimitLayer allocates per request");
}
