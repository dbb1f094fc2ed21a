//! Decoder throughput against peer SSE crates on the same inputs.
//!
//! Every parser is driven the same way: a `Stream` of `Result<Bytes, _>` chunks polled with a
//! no-op waker, every event's data length consumed. Run with `cargo bench --bench decode`.

#[path = "../tests/support/inputs.rs"]
mod common;

use std::convert::Infallible;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use eventsource_stream::Eventsource;
use futures_core::Stream;
use futures_util::stream;
use tower_sse::sse::{Decoder, Item, ItemRef};

type Input = Vec<Result<Bytes, Infallible>>;
type Chunks = stream::Iter<std::vec::IntoIter<Result<Bytes, Infallible>>>;

fn chunk_stream(chunks: Input) -> Chunks {
    stream::iter(chunks)
}

/// Clone the chunks (cheap refcount bumps) outside the timed part.
fn input_of(chunks: &[Bytes]) -> impl Fn() -> Input + '_ {
    move || chunks.iter().cloned().map(Ok).collect()
}

/// Poll a stream to its end; sum a number from each item so nothing is optimised away.
fn drain<S: Stream + Unpin>(mut s: S, mut f: impl FnMut(S::Item) -> usize) -> usize {
    let mut cx = Context::from_waker(Waker::noop());
    let mut total = 0;
    loop {
        match Pin::new(&mut s).poll_next(&mut cx) {
            Poll::Ready(Some(item)) => total += f(item),
            Poll::Ready(None) => return total,
            Poll::Pending => unreachable!("in-memory streams are always ready"),
        }
    }
}

/// Our decoder driven through its borrowing API: poll the chunk stream, push, and read each
/// event where it lies.
fn ours(chunks: Input, limit: usize) -> usize {
    let mut decoder = Decoder::new().max_event_size(limit);
    let mut chunks = chunk_stream(chunks);
    let mut cx = Context::from_waker(Waker::noop());
    let mut total = 0;
    loop {
        while let Some(item) = decoder.next_ref() {
            if let Ok(ItemRef::Event(e)) = item {
                total += e.data_bytes().len();
            }
        }
        if decoder.is_finished() {
            return total;
        }
        match Pin::new(&mut chunks).poll_next(&mut cx) {
            Poll::Ready(Some(Ok(chunk))) => decoder.push(chunk),
            Poll::Ready(Some(Err(never))) => match never {},
            Poll::Ready(None) => decoder.finish(),
            Poll::Pending => unreachable!(),
        }
    }
}

/// The smallest stream adapter around our decoder's owned API, so that it is driven exactly
/// like the peers.
struct DecoderStream {
    chunks: Chunks,
    decoder: Decoder,
    done: bool,
}

impl Stream for DecoderStream {
    type Item = Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let this = self.get_mut();
        loop {
            match this.decoder.next() {
                Some(Ok(item)) => return Poll::Ready(Some(item)),
                Some(Err(e)) => panic!("{e}"),
                None if this.done => return Poll::Ready(None),
                None => {}
            }
            match Pin::new(&mut this.chunks).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => this.decoder.push(chunk),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => {
                    this.decoder.finish();
                    this.done = true;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

fn ours_owned(chunks: Input, limit: usize) -> usize {
    let decoder = Decoder::new().max_event_size(limit);
    drain(
        DecoderStream {
            chunks: chunk_stream(chunks),
            decoder,
            done: false,
        },
        |item| match item {
            Item::Event(e) => e.data_bytes().len(),
            _ => 0,
        },
    )
}

fn eventsource_stream(chunks: Input) -> usize {
    drain(chunk_stream(chunks).eventsource(), |e| {
        e.unwrap().data.len()
    })
}

fn sse_stream(chunks: Input) -> usize {
    drain(sse_stream::SseByteStream::new(chunk_stream(chunks)), |e| {
        e.unwrap().data.map_or(0, |d| d.len())
    })
}

fn sseer(chunks: Input) -> usize {
    drain(sseer::EventStream::new(chunk_stream(chunks)), |e| {
        e.unwrap().data.len()
    })
}

fn group(c: &mut Criterion, name: &str, chunks: &[Bytes], events: u64, peers: bool, limit: usize) {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(events));
    let input = input_of(chunks);
    let expected = ours(input(), limit);
    assert_eq!(ours_owned(input(), limit), expected);
    g.bench_function("tower-sse", |b| {
        b.iter_batched(&input, |c| black_box(ours(c, limit)), BatchSize::SmallInput)
    });
    g.bench_function("tower-sse-owned", |b| {
        b.iter_batched(
            &input,
            |c| black_box(ours_owned(c, limit)),
            BatchSize::SmallInput,
        )
    });
    if peers {
        assert_eq!(sse_stream(input()), expected);
        assert_eq!(sseer(input()), expected);
        assert_eq!(eventsource_stream(input()), expected);
        g.bench_function("sse-stream", |b| {
            b.iter_batched(&input, |c| black_box(sse_stream(c)), BatchSize::SmallInput)
        });
        g.bench_function("sseer", |b| {
            b.iter_batched(&input, |c| black_box(sseer(c)), BatchSize::SmallInput)
        });
        g.bench_function("eventsource-stream", |b| {
            b.iter_batched(
                &input,
                |c| black_box(eventsource_stream(c)),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    let limit = tower_sse::sse::DEFAULT_MAX_EVENT_SIZE;
    let a = common::one_bytes_per_event();
    group(
        c,
        "decode/a_one_bytes_per_event",
        &a,
        a.len() as u64,
        true,
        limit,
    );

    let b = common::split_7_61();
    group(c, "decode/b_7_61_splits", &b, 202, true, limit);

    let (big, events) = common::repeated_events(10_000_000);
    let c16 = common::chunks_of(&big, 16 * 1024);
    {
        let mut g = c.benchmark_group("decode/c_10mb_16k_chunks");
        g.throughput(Throughput::Bytes(big.len() as u64));
        g.sample_size(10);
        g.bench_function("memchr_lf_count_floor", |b| {
            b.iter(|| black_box(memchr::memchr_iter(b'\n', &big).count()))
        });
        g.bench_function("memmem_blank_line_count_floor", |b| {
            b.iter(|| black_box(memchr::memmem::find_iter(&big, b"\n\n").count()))
        });
        g.finish();
    }
    let mut g = c.benchmark_group("decode/c_10mb_16k_chunks");
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.sample_size(10);
    let input = input_of(&c16);
    let expected = ours(input(), limit);
    assert_eq!(sse_stream(input()), expected);
    assert_eq!(sseer(input()), expected);
    g.bench_function("tower-sse", |b| {
        b.iter_batched(&input, |c| black_box(ours(c, limit)), BatchSize::LargeInput)
    });
    g.bench_function("tower-sse-owned", |b| {
        b.iter_batched(
            &input,
            |c| black_box(ours_owned(c, limit)),
            BatchSize::LargeInput,
        )
    });
    g.bench_function("sse-stream", |b| {
        b.iter_batched(&input, |c| black_box(sse_stream(c)), BatchSize::LargeInput)
    });
    g.bench_function("sseer", |b| {
        b.iter_batched(&input, |c| black_box(sseer(c)), BatchSize::LargeInput)
    });
    g.bench_function("eventsource-stream", |b| {
        b.iter_batched(
            &input,
            |c| black_box(eventsource_stream(c)),
            BatchSize::LargeInput,
        )
    });
    g.finish();
    let _ = events;

    // (d) one 8 MiB line in 1 KiB chunks. eventsource-stream is quadratic here (seconds per
    // run), so it is left out; the others are measured.
    let line = common::one_huge_line(8 * 1024 * 1024);
    let d = common::chunks_of(&line, 1024);
    let mut g = c.benchmark_group("decode/d_8mib_line_1k_chunks");
    g.throughput(Throughput::Bytes(line.len() as u64));
    g.sample_size(10);
    let big_limit = 16 * 1024 * 1024;
    let input = input_of(&d);
    g.bench_function("tower-sse", |b| {
        b.iter_batched(
            &input,
            |c| black_box(ours(c, big_limit)),
            BatchSize::LargeInput,
        )
    });
    g.bench_function("sse-stream", |b| {
        b.iter_batched(&input, |c| black_box(sse_stream(c)), BatchSize::LargeInput)
    });
    g.bench_function("sseer", |b| {
        b.iter_batched(&input, |c| black_box(sseer(c)), BatchSize::LargeInput)
    });
    g.finish();
}

criterion_group! {
    name = decode;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = benches
}
criterion_main!(decode);
