//! Allocations per request, counted with an instrumented global allocator: a
//! `StreamLimitLayer` (no drain configured inside) and a disabled `ResumeLayer` add none to
//! what the service inside them makes; an enabled `ResumeLayer`, for a request answered
//! with something other than a stream, adds only its handle in the request's extensions.
//! `SseLayer`'s own upload deadline (on by default) adds one allocation to a request with a
//! body (the watch shared by the body and the `SseLayer` future), and none to one without;
//! an `UploadDeadlineLayer` outside adds two (that watch, and its box in the request's
//! extensions; the `SseLayer` then adds none of its own).
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
use tower_sse::request::{UploadBody, UploadDeadlineLayer};
use tower_sse::{SseLayer, StreamLimitLayer};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn event_stream(
    _: Request<UploadBody<Full<Bytes>>>,
) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"data: hi\n\n")));
    response
        .headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    std::future::ready(Ok(response))
}

/// [`event_stream`], behind an `UploadDeadlineLayer` (and the `SseLayer`'s wrapper).
fn event_stream_upload(
    request: Request<UploadBody<UploadBody<Full<Bytes>>>>,
) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
    event_stream(request.map(UploadBody::into_inner))
}

#[cfg(feature = "resume")]
fn json(
    _: Request<UploadBody<Full<Bytes>>>,
) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
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
    allocations_with_body(service, b"{}")
}

/// [`allocations_per_request`] for a request with this body (empty: none).
fn allocations_with_body<S, B>(service: &mut S, request_body: &'static [u8]) -> usize
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
            .body(Full::new(Bytes::from_static(request_body)))
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

    // The upload deadline: one allocation for a request with a body (the watch shared by
    // the body and the SseLayer's future), none for one without; no timer for a body whose
    // frames are ready (none is made here: the body is never waited for). Measured against
    // the same layer with no upload timeout (the body still wrapped, no watch).
    let with_body = allocations_with_body(&mut inner, b"{}");
    let empty = allocations_with_body(&mut inner, b"");
    let mut off = SseLayer::new()
        .upload_timeout(None)
        .layer(service_fn(event_stream));
    let with_body_off = allocations_with_body(&mut off, b"{}");
    let empty_off = allocations_with_body(&mut off, b"");
    println!(
        "per request, SseLayer upload timeout off / on (default): with a body {with_body_off} / \
         {with_body}, without {empty_off} / {empty} allocations"
    );
    assert_eq!(
        with_body,
        with_body_off + 1,
        "SseLayer's upload deadline, with a body"
    );
    assert_eq!(
        empty, empty_off,
        "SseLayer's upload deadline, without a body"
    );

    // An UploadDeadlineLayer outside: two allocations for a request with a body (the watch,
    // and its box in the request's extensions; the SseLayer reuses the watch and adds none).
    let mut deadline =
        UploadDeadlineLayer::new().layer(SseLayer::new().layer(service_fn(event_stream_upload)));
    let with_body_deadline = allocations_with_body(&mut deadline, b"{}");
    let empty_deadline = allocations_with_body(&mut deadline, b"");
    println!(
        "per request, SseLayer upload timeout off / + UploadDeadlineLayer: with a body \
         {with_body_off} / {with_body_deadline}, without {empty_off} / {empty_deadline} allocations"
    );
    assert_eq!(
        with_body_deadline,
        with_body_off + 2,
        "the UploadDeadlineLayer, with a body"
    );
    assert_eq!(
        empty_deadline, empty_off,
        "the UploadDeadlineLayer, without a body"
    );
}
