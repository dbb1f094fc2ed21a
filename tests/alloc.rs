//! Heap use, counted with an instrumented global allocator.
//!
//! One test function only: the allocator counts every thread of the process, so the checks
//! run one after another, alone.

mod support;

use std::alloc::System;

use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{Empty, StreamBody};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use support::inputs;
use tower::{Layer, Service};
use tower_sse::sse::{DecodeError, Decoder, ItemRef};
use tower_sse::{KeepAliveConfig, Observer, OnEnd, SseLayer, TimingObserver};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Decode `chunks` through the borrowing API; returns the number of events.
fn decode_borrowed(decoder: &mut Decoder, chunks: &[Bytes]) -> usize {
    let mut events = 0;
    for chunk in chunks {
        decoder.push(chunk.clone());
        while let Some(item) = decoder.next_ref() {
            if let Ok(ItemRef::Event(_)) = item {
                events += 1;
            }
        }
    }
    events
}

fn heap_in_use() -> isize {
    let s = GLOBAL.stats();
    // Reallocations are already counted in both totals.
    s.bytes_allocated as isize - s.bytes_deallocated as isize
}

#[test]
fn heap_use() {
    decoder_makes_no_allocation_per_event();
    decoder_keeps_no_slice_of_its_input_for_the_last_event_id();
    endless_line_is_refused_with_bounded_memory();
    body_makes_no_allocation_per_event();
    usage_observer_makes_no_allocation_per_content_event();
    state_per_open_stream();
    stream_keeps_no_slice_of_the_upstream_read_buffer();
    #[cfg(feature = "resume")]
    resumable_reader_makes_no_allocation_per_live_event();
    #[cfg(feature = "resume")]
    resumable_log_holds_its_events_not_the_upstream_read_buffers();
    #[cfg(feature = "resume")]
    resumable_producer_holds_the_stream_body_once();
}

type Upstream =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// Run one stream of `chunks` through `layer`, polled as hyper would (no runtime needed:
/// the upstream is always ready, so no timer is ever created).
fn run_stream<O, E>(layer: &SseLayer<O, E>, chunks: &[Bytes]) -> usize
where
    O: Observer + Clone + Send + 'static,
    E: OnEnd + Clone + Send + 'static,
{
    let frames: Vec<_> = chunks.iter().cloned().map(|c| Ok(Frame::data(c))).collect();
    let mut upstream = Some(StreamBody::new(futures_util::stream::iter(frames)));
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
    let mut future = pin!(service.call(Request::new(Empty::new())));
    let Poll::Ready(Ok(response)) = Pin::new(&mut future).poll(&mut cx) else {
        panic!("the inner service answers at once")
    };
    let mut body = pin!(response.into_body());
    let mut total = 0;
    while let Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
        total += frame.unwrap().data_ref().map_or(0, Bytes::len);
    }
    total
}

/// Allocations of a stream of 202 events and of the same stream twice over (404 events):
/// the difference is what the events themselves cost.
fn per_event_allocations<O, E>(layer: &SseLayer<O, E>, chunks: &[Bytes]) -> (usize, usize)
where
    O: Observer + Clone + Send + 'static,
    E: OnEnd + Clone + Send + 'static,
{
    let twice: Vec<Bytes> = chunks.iter().chain(chunks).cloned().collect();
    run_stream(layer, chunks); // warm up lazily initialised statics
    let once = least_allocations(|| {
        run_stream(layer, chunks);
    });
    let double = least_allocations(|| {
        run_stream(layer, &twice);
    });
    (once, double)
}

fn body_makes_no_allocation_per_event() {
    let a = inputs::one_bytes_per_event();
    let layer =
        SseLayer::new().keep_alive(KeepAliveConfig::new().interval(Duration::from_secs(15)));
    let (once, double) = per_event_allocations(&layer, &a);
    assert_eq!(
        double, once,
        "SseBody allocated per event ({once} for 202 events, {double} for 404)"
    );

    let timed = layer.observer(TimingObserver::default());
    let (once, double) = per_event_allocations(&timed, &a);
    assert_eq!(
        double, once,
        "SseBody + timing allocated per event ({once} vs {double})"
    );
    // What one stream costs, whatever its length (boxed upstream, report strings, outbox),
    // and one more that is not the stream's: `run_stream` layers a service for each stream,
    // and `SseLayer::layer` puts the observer and sink its clones share in one `Arc`.
    assert!(once <= 13, "{once} allocations for one stream");
}

/// The fewest allocations `f` made over three runs. The allocator counts every thread of
/// the process (the test harness allocates now and then): an allocation that `f` makes every
/// time shows in all three runs; a stray one from another thread does not.
fn least_allocations(mut f: impl FnMut()) -> usize {
    (0..3)
        .map(|_| {
            let region = Region::new(GLOBAL);
            f();
            region.change().allocations
        })
        .min()
        .unwrap_or(usize::MAX)
}

fn decoder_makes_no_allocation_per_event() {
    // (a): one Bytes per event. Borrowed and owned decoding allocate nothing at all.
    let a = inputs::one_bytes_per_event();
    let mut decoder = Decoder::new();
    decode_borrowed(&mut decoder, &a); // warm up
    let allocs = least_allocations(|| assert_eq!(decode_borrowed(&mut decoder, &a), 202));
    assert_eq!(allocs, 0, "borrowed decoding of whole events allocated");

    let allocs = least_allocations(|| {
        let mut owned = 0;
        for chunk in &a {
            decoder.push(chunk.clone());
            owned += decoder
                .by_ref()
                .filter(|i| matches!(i, Ok(tower_sse::sse::Item::Event(_))))
                .count();
        }
        assert_eq!(owned, 202);
    });
    assert_eq!(allocs, 0, "owned decoding of whole events allocated");

    // (b): 7/61-byte splits. Buffers for events spanning chunks are reused.
    let b = inputs::split_7_61();
    decode_borrowed(&mut decoder, &b);
    let allocs = least_allocations(|| assert_eq!(decode_borrowed(&mut decoder, &b), 202));
    assert_eq!(allocs, 0, "borrowed decoding of split events allocated");
}

/// The last event id is the decoder's own copy, never a slice of the chunk that set it: an
/// upstream that sets an id once and then sends events without one would otherwise keep its
/// first chunk (in a real stream, a slice of the HTTP client's read buffer) for the stream's
/// life. Ids that change from event to event are copied one after the other into a shared
/// buffer: an allocation per buffer, not per event.
fn decoder_keeps_no_slice_of_its_input_for_the_last_event_id() {
    let mut decoder = Decoder::new();
    let first = Bytes::from(b"id: stream-1\ndata: a\n\n".to_vec());
    decode_borrowed(&mut decoder, std::slice::from_ref(&first));
    decode_borrowed(&mut decoder, &[Bytes::from(b"data: b\n\n".to_vec())]);
    assert_eq!(&decoder.last_event_id()[..], b"stream-1");
    assert!(
        first.is_unique(),
        "the decoder still holds the chunk that set the last event id"
    );

    let with_ids: Vec<Bytes> = (0..100)
        .map(|i| Bytes::from(format!("id: {}\ndata: x\n\n", 1000 + i).into_bytes()))
        .collect();
    decode_borrowed(&mut decoder, &with_ids); // warm up
    let allocs = least_allocations(|| assert_eq!(decode_borrowed(&mut decoder, &with_ids), 100));
    // The ids are copied into buffers of 256 bytes: 400 bytes of ids, two buffers, each
    // an allocation and the shared header its first split makes.
    assert!(
        allocs <= 4,
        "borrowed decoding of 100 events with ids allocated {allocs} times"
    );
    assert_eq!(&decoder.last_event_id()[..], b"1099");
    // Every chunk but the last, which the decoder reads until the next comes, is let go.
    assert!(with_ids[..99].iter().all(Bytes::is_unique));
}

fn endless_line_is_refused_with_bounded_memory() {
    const LIMIT: usize = tower_sse::sse::DEFAULT_MAX_EVENT_SIZE;
    let before = heap_in_use();
    let mut decoder = Decoder::new();
    let mut first = vec![b'a'; 1024];
    first[..6].copy_from_slice(b"data: ");
    let first = Bytes::from(first);
    let more = Bytes::from(vec![b'a'; 1024]);

    let mut peak = 0isize;
    let mut errors = 0;
    // 64 MiB of one line, in 1 KiB chunks.
    for i in 0..64 * 1024 {
        decoder.push(if i == 0 { first.clone() } else { more.clone() });
        while let Some(item) = decoder.next_ref() {
            match item {
                Err(DecodeError::EventTooLarge { limit }) => {
                    assert_eq!(limit, LIMIT);
                    errors += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        peak = peak.max(heap_in_use() - before);
        assert!(decoder.buffered() <= LIMIT);
    }
    assert_eq!(errors, 1, "the line is refused once");
    assert!(
        peak <= (2 * LIMIT + 64 * 1024) as isize,
        "peak heap {peak} bytes for a limit of {LIMIT}"
    );
    let after = heap_in_use() - before;
    assert!(
        after < 64 * 1024,
        "memory was not released after the error: {after} bytes held (peak {peak})"
    );

    // The decoder recovers at the next blank line.
    decoder.push(Bytes::from_static(b"\n\ndata: after\n\n"));
    let Some(Ok(ItemRef::Event(e))) = decoder.next_ref() else {
        panic!("no event after the oversized one")
    };
    assert_eq!(e.data(), "after");
}

/// The usage observer on the 202-event completion: no allocation per content event.
fn usage_observer_makes_no_allocation_per_content_event() {
    use std::sync::{Arc, Mutex};

    use tower_sse::{StreamReport, Usage, UsageObserver};

    // The stream through the whole layer, polled by hand. Returns the allocations made
    // while `measured` frames went out, after `warm_up` frames.
    fn run<O>(
        observer: O,
        chunks: Vec<Bytes>,
        warm_up: usize,
        measured: usize,
    ) -> (u64, Option<Usage>)
    where
        O: Observer + Clone + Send + 'static,
    {
        let upstream = StreamBody::new(futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, Infallible>(Frame::data(c))),
        ));
        let mut upstream = Some(
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(upstream)
                .unwrap(),
        );
        let usage: Arc<Mutex<Option<Usage>>> = Arc::default();
        let sink = usage.clone();
        let layer = SseLayer::new()
            .observer(observer)
            .on_end(move |report: StreamReport| *sink.lock().unwrap() = report.usage);
        let mut service = layer.layer(tower::service_fn(
            move |_: Request<tower_sse::request::UploadBody<Empty<Bytes>>>| {
                std::future::ready(Ok::<_, Infallible>(upstream.take().expect("one call")))
            },
        ));
        let mut cx = Context::from_waker(Waker::noop());
        let request = Request::post("/v1/chat/completions")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let mut future = pin!(service.call(request));
        let Poll::Ready(Ok(response)) = future.as_mut().poll(&mut cx) else {
            panic!("the service answers at once")
        };
        let mut body = pin!(response.into_body());
        let mut next = || match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().is_ok(),
            Poll::Ready(None) => false,
            other => panic!("unexpected {other:?}"),
        };
        // Warm up: the response id and model are copied into the report once, the outbox
        // and the decoder's carry buffer reach their size.
        for _ in 0..warm_up {
            assert!(next());
        }
        let region = Region::new(GLOBAL);
        for _ in 0..measured {
            assert!(next());
        }
        let allocations = region.change().allocations as u64;
        while next() {}
        let usage = *usage.lock().unwrap();
        (allocations, usage)
    }

    // The allocator counts every thread: take the least of three runs, so that another
    // thread's allocation cannot fail the check (one made per event shows in every run).
    let least = |observe: bool, chunks: fn() -> Vec<Bytes>, warm_up, measured| {
        (0..3)
            .map(|_| {
                if observe {
                    let (allocations, usage) =
                        run(UsageObserver::new(), chunks(), warm_up, measured);
                    let usage = usage.expect("the usage chunk was read");
                    assert_eq!(
                        (usage.input_tokens, usage.output_tokens),
                        (Some(1117), Some(199))
                    );
                    allocations
                } else {
                    run((), chunks(), warm_up, measured).0
                }
            })
            .min()
            .unwrap_or(u64::MAX)
    };

    // (a) One `Bytes` per event: frames 20..199 are 179 content events. No allocation.
    let allocations = least(true, inputs::one_bytes_per_event, 20, 179);
    assert_eq!(
        allocations, 0,
        "{allocations} allocations for 179 content events"
    );

    // (b) 7/61-byte splits: an event that spans chunks is copied into one `Bytes` by the
    // layer (with or without observers); the usage observer adds nothing.
    let bare = least(false, inputs::split_7_61, 40, 100);
    let observed = least(true, inputs::split_7_61, 40, 100);
    assert_eq!(
        observed, bare,
        "the usage observer allocated on split events"
    );
}

/// An upstream body that sends one chat chunk, then waits forever: an open stream.
struct OneEventThenSilence(Option<Bytes>);

impl Body for OneEventThenSilence {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.0.take() {
            Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
            None => Poll::Pending,
        }
    }
}

/// Heap bytes of one open stream: keep-alive and deadlines armed, the first event decoded
/// and forwarded, the upstream silent. The upstream's own buffers are not counted (its body
/// here is one shared chunk). Returns (total, inline size of the body struct).
fn open_stream_bytes<O>(layer: &SseLayer<O, ()>) -> (usize, usize)
where
    O: Observer + Clone + Send + 'static,
{
    const STREAMS: usize = 1000;
    let chunk = inputs::one_bytes_per_event()[1].clone();
    let open = || {
        let mut upstream = Some(OneEventThenSilence(Some(chunk.clone())));
        let mut service = layer.layer(tower::service_fn(
            move |_req: Request<tower_sse::request::UploadBody<Empty<Bytes>>>| {
                std::future::ready(Ok::<_, Infallible>(
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(upstream.take().unwrap())
                        .unwrap(),
                ))
            },
        ));
        let mut cx = Context::from_waker(Waker::noop());
        let mut future = pin!(service.call(Request::new(Empty::new())));
        let Poll::Ready(Ok(response)) = Pin::new(&mut future).poll(&mut cx) else {
            panic!("the inner service answers at once")
        };
        let mut body = Box::pin(response.into_body());
        // The first event goes out; then the upstream is silent and the timer is armed.
        assert!(matches!(
            body.as_mut().poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        assert!(body.as_mut().poll_frame(&mut cx).is_pending());
        body
    };
    let inline = std::mem::size_of_val(&*open());
    let mut bodies = Vec::with_capacity(STREAMS);
    let before = heap_in_use();
    for _ in 0..STREAMS {
        bodies.push(open());
    }
    let total = (heap_in_use() - before) as usize / STREAMS;
    drop(bodies);
    (total, inline)
}

/// State per open stream, for the core layer, the metering stack and the full stack. The
/// body struct is boxed here, as a server task holds it; so the total is everything a
/// stream costs the process besides the upstream's buffers and the connection.
fn state_per_open_stream() {
    use tower_sse::UsageObserver;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let core = SseLayer::new()
        .keep_alive(KeepAliveConfig::new().interval(Duration::from_secs(15)))
        .idle_timeout(Duration::from_secs(30))
        .total_timeout(Duration::from_secs(600));
    let (bytes, inline) = open_stream_bytes(&core);
    println!("state per open stream, SseBody alone: {bytes} bytes ({inline} inline)");
    assert!(
        bytes < 2048,
        "{bytes} bytes per open stream for the core layer"
    );

    let metering = core
        .clone()
        .observer((UsageObserver::new(), TimingObserver::new()));
    let (bytes, inline) = open_stream_bytes(&metering);
    println!("state per open stream, + usage + timing: {bytes} bytes ({inline} inline)");

    full_stack_state(core);
}

/// The full stack needs the default features (registry, metrics, tracing).
#[cfg(all(feature = "registry", feature = "metrics", feature = "tracing"))]
fn full_stack_state(core: SseLayer) {
    use tower_sse::MetricsObserver;
    use tower_sse::{DigestObserver, DigestRegistry, TraceObserver, UsageObserver};

    let full = core.observer((
        UsageObserver::new(),
        TimingObserver::new(),
        DigestObserver::with_registry(DigestRegistry::new()),
        MetricsObserver::new(),
        TraceObserver,
    ));
    let (bytes, inline) = open_stream_bytes(&full);
    println!(
        "state per open stream, + digest + metrics + tracing: {bytes} bytes ({inline} inline)"
    );
    // What the body struct is made of, part by part (the public parts; the engine's own
    // fields are the rest).
    use std::mem::size_of;
    for (part, size) in [
        ("StreamReport", size_of::<tower_sse::StreamReport>()),
        ("Decoder", size_of::<Decoder>()),
        ("UsageObserver", size_of::<UsageObserver>()),
        ("TimingObserver", size_of::<TimingObserver>()),
        ("DigestObserver", size_of::<DigestObserver>()),
        ("MetricsObserver", size_of::<MetricsObserver>()),
        ("TraceObserver", size_of::<TraceObserver>()),
    ] {
        println!("state per open stream, part: {part} {size} bytes");
    }
    assert!(
        bytes < 4096,
        "{bytes} bytes per open stream for the full stack"
    );
}

#[cfg(not(all(feature = "registry", feature = "metrics", feature = "tracing")))]
fn full_stack_state(_core: SseLayer) {}

/// A resumable stream's reader following the live tail of an in-process log: in steady
/// state, no allocation per event (the wake-up future is re-used, the log is read into a
/// re-used buffer, the keep-alive timer is re-armed only when it fires). Only the reader's
/// polls are counted: the producer (stamping, appending) runs between them.
#[cfg(feature = "resume")]
fn resumable_reader_makes_no_allocation_per_live_event() {
    use tokio::sync::mpsc;
    use tower_sse::ResumeLayer;

    struct Live(mpsc::UnboundedReceiver<Bytes>);

    impl Body for Live {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0.poll_recv(cx).map(|c| c.map(|c| Ok(Frame::data(c))))
        }
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut upstream = Some(Live(rx));
    let inner = tower::service_fn(
        move |_: Request<tower_sse::request::UploadBody<Empty<Bytes>>>| {
            let body = upstream.take().unwrap();
            std::future::ready(Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(body)
                    .unwrap(),
            ))
        },
    );
    let keep_alive = KeepAliveConfig::new().interval(Duration::from_secs(15));
    let mut service = ResumeLayer::new()
        .keep_alive(keep_alive)
        .layer(SseLayer::new().layer(inner));
    let response = runtime
        .block_on(service.call(Request::new(Empty::new())))
        .unwrap();
    let mut body = Box::pin(response.into_body());
    let mut cx = Context::from_waker(Waker::noop());
    let event = Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n");
    // One live event: the producer runs (not counted), then the reader sends it (counted).
    let mut live_event = |count: &mut usize| {
        tx.send(event.clone()).unwrap();
        for _ in 0..4 {
            runtime.block_on(tokio::task::yield_now());
        }
        let region = Region::new(GLOBAL);
        let mut frames = 0;
        while let Poll::Ready(frame) = body.as_mut().poll_frame(&mut cx) {
            assert!(frame.unwrap().unwrap().is_data());
            frames += 1;
        }
        *count += region.change().allocations;
        assert_eq!(frames, 1, "one event, one frame");
    };
    let mut warm = 0;
    for _ in 0..16 {
        live_event(&mut warm);
    }
    let least = (0..3)
        .map(|_| {
            let mut count = 0;
            for _ in 0..100 {
                live_event(&mut count);
            }
            count
        })
        .min()
        .unwrap();
    assert_eq!(
        least, 0,
        "the resumable reader allocated {least} times for 100 live events"
    );
}

/// A resumable stream's log holds its events, not the buffers they were read into. A live
/// stream's events come one per read, and hyper's client hands each on as a slice of its
/// read buffer (8 KiB or more, and a new one for the next read while a slice of the last is
/// alive): a log that kept those slices would hold a read buffer per event, many times what
/// its bounds count. The producer copies each event into buffers of its own (with its id
/// line), so what the log holds is within a small factor of what it counts.
///
/// Measured over real loopback HTTP: an upstream served by axum, sending each event only
/// once the client has the last (one event per read), and a pooled hyper client inside
/// the stack. The heap a log holds is what dropping it gives back.
#[cfg(feature = "resume")]
fn resumable_log_holds_its_events_not_the_upstream_read_buffers() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    use tower_sse::ResumeLayer;
    use tower_sse::resume::{Detach, MemoryStore};

    const EVENTS: usize = 300;
    fn event(i: usize) -> Bytes {
        Bytes::from(format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"token {i} {}\"}}}}]}}\n\n",
            "x".repeat(120)
        ))
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // The upstream: each request's body is fed by the test, through the sender it hands over.
        let (mut next_sender, client, uri) = fed_upstream().await;
        let forward = {
            let (client, uri) = (client.clone(), uri.clone());
            tower::service_fn(
                move |_: Request<tower_sse::request::UploadBody<Empty<Bytes>>>| {
                    let (client, uri) = (client.clone(), uri.clone());
                    async move { client.get(uri).await }
                },
            )
        };

        // Control: the client's frames kept as they come, as a log that did not copy would.
        let mut body = client.get(uri.clone()).await.unwrap().into_body();
        let tx = next_sender.recv().await.unwrap();
        let mut frames = Vec::with_capacity(EVENTS);
        let mut sent = 0;
        for i in 0..EVENTS {
            let event = event(i);
            sent += event.len();
            tx.send(event).await.unwrap();
            let frame = body.frame().await.unwrap().unwrap();
            frames.push(frame.into_data().unwrap());
        }
        let with = heap_in_use();
        drop(frames);
        let kept_slices = with - heap_in_use();
        drop((tx, body));

        // The resumable stream: the same events through the stack, read live by its client.
        let store = MemoryStore::builder().build();
        let service = ResumeLayer::new()
            .detach(Detach::Finish)
            .store(store.clone())
            .layer(SseLayer::new().layer(forward));
        let response = service
            .clone()
            .oneshot(Request::new(Empty::new()))
            .await
            .unwrap();
        let mut body = response.into_body();
        let tx = next_sender.recv().await.unwrap();
        let mut logged = 0;
        for i in 0..EVENTS {
            tx.send(event(i)).await.unwrap();
            // The reader has the event once the producer has logged it: the next is sent then.
            let frame = body.frame().await.unwrap().unwrap();
            logged += frame.into_data().unwrap().len();
        }
        drop(tx);
        while let Some(frame) = body.frame().await {
            frame.unwrap();
        }
        drop(body);
        // The log is the store's: dropping every handle on it gives its heap back.
        let with = heap_in_use();
        drop((service, store));
        let held = with - heap_in_use();

        println!(
            "{EVENTS} events of {} bytes, one per read: the client's frames kept hold {} bytes \
             per event; the resumable log {} bytes per event ({} logged)",
            sent / EVENTS,
            kept_slices / EVENTS as isize,
            held / EVENTS as isize,
            logged / EVENTS,
        );
        // The producer's buffers: at most the entries written before the newest buffer and
        // that buffer (32 KiB at most), plus the log's own index.
        let bound = 2 * logged as isize + 64 * 1024;
        assert!(
            held <= bound,
            "the log of {logged} bytes held {held} bytes of heap (at most {bound})"
        );
    });
}

/// A resumable stream's producer task holds the stream's body once. The body is the whole
/// stack's between the `ResumeLayer` and the `SseLayer` (whatever layers a user puts there);
/// a producer that took it by value kept its size in the task's state for the stream's
/// life, beside the box it is polled from. Measured with a layer between them whose body is
/// padded to 16 KiB: what an open stream holds besides its client's response body is the
/// body once and the rest of the stream, less than twice the body.
#[cfg(feature = "resume")]
fn resumable_producer_holds_the_stream_body_once() {
    use http_body::SizeHint;
    use tower::ServiceExt;
    use tower_sse::ResumeLayer;
    use tower_sse::resume::Detach;

    const PAD: usize = 16 * 1024;
    const STREAMS: usize = 50;

    /// A body that carries `PAD` bytes inline, as a layer's body with state of its own would.
    struct Padded<B> {
        inner: B,
        _pad: [u8; PAD],
    }
    impl<B: Body + Unpin> Body for Padded<B> {
        type Data = B::Data;
        type Error = B::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
            Pin::new(&mut self.inner).poll_frame(cx)
        }
        fn is_end_stream(&self) -> bool {
            self.inner.is_end_stream()
        }
        fn size_hint(&self) -> SizeHint {
            self.inner.size_hint()
        }
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let upstreams = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let inner = {
            let upstreams = upstreams.clone();
            tower::service_fn(
                move |_: Request<tower_sse::request::UploadBody<Empty<Bytes>>>| {
                    let body = upstreams.lock().unwrap().pop().expect("an upstream");
                    std::future::ready(Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "text/event-stream")
                            .body(body)
                            .unwrap(),
                    ))
                },
            )
        };
        let service = ResumeLayer::new().detach(Detach::Finish).layer(
            tower::ServiceBuilder::new()
                .map_response(|response: Response<_>| {
                    response.map(|inner| Padded {
                        inner,
                        _pad: [0; PAD],
                    })
                })
                .layer(SseLayer::new())
                .service(inner),
        );
        let mut senders = Vec::with_capacity(STREAMS);
        let mut open = Vec::with_capacity(STREAMS);
        let region = Region::new(GLOBAL);
        for _ in 0..STREAMS {
            let (tx, upstream) = support::body::channel();
            upstreams.lock().unwrap().push(upstream);
            let response = service
                .clone()
                .oneshot(Request::new(Empty::new()))
                .await
                .unwrap();
            senders.push(tx);
            assert!(response.body().is_reader(), "a resumable stream");
            open.push(response.into_body());
        }
        // The producers start and wait for their upstreams.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        let stats = region.change();
        let held = stats.bytes_allocated as isize - stats.bytes_deallocated as isize
            + stats.bytes_reallocated;
        // The clients' response bodies are in `open`, allocated before the count. Each is
        // sized for the stack's body (a body passed through is held inline): its size.
        let body = std::mem::size_of_val(&open[0]) as isize;
        let per_stream = held / STREAMS as isize;
        println!(
            "resumable stream over a body of {body} bytes: {per_stream} bytes held per open \
             stream besides its client's body"
        );
        assert!(
            per_stream < 2 * body,
            "an open resumable stream held {per_stream} bytes besides its client's body: its \
             {body}-byte body more than once"
        );
        drop((senders, open));
    });
}

/// A stream whose upstream gives every event an id, read over real loopback HTTP by a hyper
/// client, one event per read: the layer lets go of each chunk once it has forwarded it, so
/// the client reads the next event into the same buffer. A chunk kept (the last event id
/// was once a slice of it) made the client take a new read buffer, 8 KiB or more, for every
/// event. Checked for the core layer and with the metering observers.
fn stream_keeps_no_slice_of_the_upstream_read_buffer() {
    use tower_sse::{DigestObserver, UsageObserver};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (mut next_sender, client, uri) = fed_upstream().await;
        let forward = tower::service_fn(
            move |_: Request<tower_sse::request::UploadBody<Empty<Bytes>>>| {
                let (client, uri) = (client.clone(), uri.clone());
                async move { client.get(uri).await }
            },
        );

        let core = SseLayer::new().layer(forward.clone());
        let per_event = allocated_per_event_with_ids(core, &mut next_sender).await;
        println!("events with ids over HTTP, SseBody alone: {per_event} bytes allocated per event");
        let metered = SseLayer::new()
            .observer((
                UsageObserver::new(),
                TimingObserver::new(),
                DigestObserver::new(),
            ))
            .layer(forward);
        let metered = allocated_per_event_with_ids(metered, &mut next_sender).await;
        println!(
            "events with ids over HTTP, + usage + timing + digest: {metered} bytes allocated per event"
        );
        // Far below a read buffer (8 KiB) per event: the events themselves, and the server's
        // and the channel's small allocations (both ends of the connection are counted).
        for (stack, bytes) in [("core", per_event), ("metered", metered)] {
            assert!(
                bytes < 2048,
                "{stack}: {bytes} bytes allocated per event: the client took a new read buffer for each"
            );
        }
    });
}

/// Bytes allocated per event of a stream through `service`, whose upstream (the next sender
/// from `senders`) sends each event, with an id, once the last one reached the client.
async fn allocated_per_event_with_ids<S, B>(
    service: S,
    senders: &mut tokio::sync::mpsc::UnboundedReceiver<tokio::sync::mpsc::Sender<Bytes>>,
) -> usize
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    const WARM: usize = 20;
    const EVENTS: usize = 200;
    fn event(i: usize) -> Bytes {
        Bytes::from(format!(
            "id: {i}\ndata: {{\"choices\":[{{\"delta\":{{\"content\":\"token {i}\"}}}}]}}\n\n"
        ))
    }

    let response = service.oneshot(Request::new(Empty::new())).await.unwrap();
    let mut body = pin!(response.into_body());
    let tx = senders.recv().await.unwrap();
    let mut region = None;
    for i in 0..WARM + EVENTS {
        if i == WARM {
            region = Some(Region::new(GLOBAL));
        }
        tx.send(event(i)).await.unwrap();
        // The next event is sent once this one is through: one event per read.
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), event(i));
    }
    let stats = region.unwrap().change();
    stats.bytes_allocated / EVENTS
}

/// An axum upstream on loopback whose every answer is an event stream the test feeds, one
/// event at a time: each request hands over the sender of its events. Returned with a pooled
/// hyper client and the upstream's URI.
async fn fed_upstream() -> (
    tokio::sync::mpsc::UnboundedReceiver<tokio::sync::mpsc::Sender<Bytes>>,
    hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Empty<Bytes>,
    >,
    http::Uri,
) {
    use axum::body::Body as AxumBody;
    use tokio::sync::mpsc;

    let (senders, next_sender) = mpsc::unbounded_channel::<mpsc::Sender<Bytes>>();
    let app = axum::Router::new().fallback(move || {
        let senders = senders.clone();
        async move {
            let (tx, rx) = mpsc::channel::<Bytes>(1);
            senders.send(tx).unwrap();
            let events = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|event| (Ok::<_, Infallible>(event), rx))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(AxumBody::from_stream(events))
                .unwrap()
        }
    });
    let upstream = support::forward::serve(app).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let uri = format!("http://{upstream}/").parse().unwrap();
    (next_sender, client, uri)
}
