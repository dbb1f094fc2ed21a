//! Whole-input decoding must equal chunk-by-chunk decoding, for any bytes, any chunking and
//! any size limit, in strict and lenient mode; and agree with the naive reference decoder.
//!
//! Input layout: byte 0 picks the limit and mode, bytes 1..9 seed the cut points, the rest
//! is the stream.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tower_sse::sse::Decoder;

#[path = "../../tests/support/sse.rs"]
mod support;

fuzz_target!(|input: &[u8]| {
    if input.len() < 9 {
        return;
    }
    let (header, stream) = input.split_at(9);
    let lenient = header[0] & 1 == 1;
    let limit = if header[0] & 2 == 2 {
        usize::from(header[0] >> 2) + 1
    } else {
        tower_sse::sse::DEFAULT_MAX_EVENT_SIZE
    };
    let decoder = || Decoder::new().max_event_size(limit).lenient_eof(lenient);

    // Cut points from a small linear congruential sequence seeded by the header.
    let mut seed = u64::from_le_bytes(header[1..9].try_into().unwrap()) | 1;
    let mut cuts = Vec::new();
    let mut at = 0usize;
    while at < stream.len() {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        at += 1 + (seed >> 59) as usize; // steps of 1..=32 bytes
        cuts.push(at);
    }

    let whole = support::decode_with(decoder(), &[Bytes::copy_from_slice(stream)]);
    let chunked = support::decode_with(decoder(), &support::split_at(stream, &cuts));
    assert_eq!(whole, chunked);
    let bytewise = support::decode_with(decoder(), &support::bytewise(stream));
    assert_eq!(whole, bytewise);

    if limit == tower_sse::sse::DEFAULT_MAX_EVENT_SIZE {
        let (events, comments) = support::reference(stream, lenient);
        assert_eq!(whole.events, events);
        assert_eq!(whole.comments, comments);
    }
});
