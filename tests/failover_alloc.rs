//! The failover layer's heap cost per stream, counted with an instrumented global allocator
//! (exact whatever the machine's load): BENCHMARKS.md, "Failover".
//!
//! One test function only: the allocator counts every thread of the process.

use std::alloc::System;
use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::ServiceExt;
use tower_sse::failover::{Failover, ReplayBody};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const REQUEST: &str = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

/// A chat stream of `n` content events, in one chunk.
fn stream(n: usize) -> Bytes {
    let mut out = String::from(
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
    );
    for i in 0..n {
        out.push_str(&format!(
            "data: {{\"object\":\"chat.completion.chunk\",\"choices\":[{{\"delta\":{{\"content\":\"token {i} \"}}}}]}}\n\n"
        ));
    }
    out.push_str("data: [DONE]\n\n");
    Bytes::from(out)
}

fn answer(body: Bytes) -> Response<Full<Bytes>> {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Full::new(body))
        .unwrap()
}

/// Allocations and bytes allocated for one request, its answer read to the end: through a
/// failover over two upstreams (the first serves, its head held until the first content
/// event), or straight to the upstream.
fn one_request(runtime: &tokio::runtime::Runtime, body: &Bytes, failover: bool) -> (usize, usize) {
    let request = || {
        Request::post("/v1/chat/completions")
            .body(Full::new(Bytes::from_static(REQUEST.as_bytes())))
            .unwrap()
    };
    let region = Region::new(GLOBAL);
    runtime.block_on(async {
        let body = body.clone();
        if failover {
            let upstream = tower::service_fn(move |_: Request<ReplayBody<Full<Bytes>>>| {
                let body = body.clone();
                async move { Ok::<_, Infallible>(answer(body)) }
            });
            let service = Failover::new([upstream.clone(), upstream]);
            let response = service.oneshot(request()).await.unwrap();
            response.into_body().collect().await.unwrap();
        } else {
            let upstream = tower::service_fn(move |_: Request<Full<Bytes>>| {
                let body = body.clone();
                async move { Ok::<_, Infallible>(answer(body)) }
            });
            let response = upstream.oneshot(request()).await.unwrap();
            response.into_body().collect().await.unwrap();
        }
    });
    let stats = region.change();
    (
        stats.allocations + stats.reallocations,
        stats.bytes_allocated,
    )
}

#[test]
fn the_failover_layer_allocates_per_request_not_per_event() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut extra = Vec::new();
    for events in [20, 200] {
        let body = stream(events);
        // Warm up (lazy statics of the runtime and the metrics facade).
        one_request(&runtime, &body, true);
        one_request(&runtime, &body, false);
        let (with, with_bytes) = one_request(&runtime, &body, true);
        let (without, without_bytes) = one_request(&runtime, &body, false);
        eprintln!(
            "{events} events: with the failover layer {with} allocations ({with_bytes} bytes), \
             without {without} ({without_bytes} bytes)"
        );
        extra.push(with - without);
    }
    assert_eq!(
        extra[0], extra[1],
        "the layer's allocations do not grow with the events"
    );
}
