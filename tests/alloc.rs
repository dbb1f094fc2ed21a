//! Heap use, counted with an instrumented global allocator.
//!
//! One test function only: the allocator counts every thread of the process, so the checks
//! run one after another, alone.

#[path = "../benches/common/mod.rs"]
mod inputs;

use std::alloc::System;

use bytes::Bytes;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower_sse::sse::{DecodeError, Decoder, ItemRef};

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
    endless_line_is_refused_with_bounded_memory();
}

fn decoder_makes_no_allocation_per_event() {
    // (a): one Bytes per event. Borrowed and owned decoding allocate nothing at all.
    let a = inputs::one_bytes_per_event();
    let mut decoder = Decoder::new();
    decode_borrowed(&mut decoder, &a); // warm up
    let region = Region::new(GLOBAL);
    let events = decode_borrowed(&mut decoder, &a);
    let allocs = region.change().allocations;
    assert_eq!(events, 202);
    assert_eq!(allocs, 0, "borrowed decoding of whole events allocated");

    let region = Region::new(GLOBAL);
    let mut owned = 0;
    for chunk in &a {
        decoder.push(chunk.clone());
        owned += decoder
            .by_ref()
            .filter(|i| matches!(i, Ok(tower_sse::sse::Item::Event(_))))
            .count();
    }
    assert_eq!(owned, 202);
    assert_eq!(
        region.change().allocations,
        0,
        "owned decoding of whole events allocated"
    );

    // (b): 7/61-byte splits. Buffers for events spanning chunks are reused.
    let b = inputs::split_7_61();
    decode_borrowed(&mut decoder, &b);
    let region = Region::new(GLOBAL);
    let events = decode_borrowed(&mut decoder, &b);
    assert_eq!(events, 202);
    assert_eq!(
        region.change().allocations,
        0,
        "borrowed decoding of split events allocated"
    );
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
