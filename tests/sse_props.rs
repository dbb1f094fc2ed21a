//! Property tests: chunking invariance, agreement with a naive reference decoder, raw-byte
//! fidelity and the encode/decode round trip.

mod support;

use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use support::sse::{Ev, bytewise, decode_borrowed, decode_with, reference, split_at};
use support::strategies::{cuts, stream_and_cuts};
use tower_sse::sse::{Decoder, Event, Item};

fn strip_bom(input: &[u8]) -> &[u8] {
    input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input)
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn chunked_decoding_equals_whole_decoding((input, cuts) in stream_and_cuts()) {
        let whole = decode_with(Decoder::new(), &[Bytes::copy_from_slice(&input)]);
        prop_assert_eq!(&decode_with(Decoder::new(), &split_at(&input, &cuts)), &whole);
        prop_assert_eq!(&decode_with(Decoder::new(), &bytewise(&input)), &whole);
    }

    #[test]
    fn chunked_decoding_equals_whole_decoding_when_lenient((input, cuts) in stream_and_cuts()) {
        let whole = decode_with(Decoder::new().lenient_eof(true), &[Bytes::copy_from_slice(&input)]);
        prop_assert_eq!(&decode_with(Decoder::new().lenient_eof(true), &split_at(&input, &cuts)), &whole);
        prop_assert_eq!(&decode_with(Decoder::new().lenient_eof(true), &bytewise(&input)), &whole);
    }

    #[test]
    fn borrowed_and_owned_decoding_agree((input, cuts) in stream_and_cuts(), limit in 1usize..64, lenient in any::<bool>()) {
        let decoder = || Decoder::new().max_event_size(limit).lenient_eof(lenient);
        let chunks = split_at(&input, &cuts);
        prop_assert_eq!(decode_borrowed(decoder(), &chunks), decode_with(decoder(), &chunks));
    }

    #[test]
    fn the_size_limit_does_not_depend_on_chunking((input, cuts) in stream_and_cuts(), limit in 1usize..40) {
        let decoder = || Decoder::new().max_event_size(limit);
        let whole = decode_with(decoder(), &[Bytes::copy_from_slice(&input)]);
        prop_assert_eq!(&decode_with(decoder(), &split_at(&input, &cuts)), &whole);
        prop_assert_eq!(&decode_with(decoder(), &bytewise(&input)), &whole);
    }

    #[test]
    fn decoder_agrees_with_the_reference((input, cuts) in stream_and_cuts()) {
        let (events, comments) = reference(&input, false);
        let out = decode_with(Decoder::new(), &split_at(&input, &cuts));
        prop_assert_eq!(out.events, events);
        prop_assert_eq!(out.comments, comments);

        let (events, comments) = reference(&input, true);
        let out = decode_with(Decoder::new().lenient_eof(true), &split_at(&input, &cuts));
        prop_assert_eq!(out.events, events);
        prop_assert_eq!(out.comments, comments);
    }

    #[test]
    fn raw_bytes_concatenated_reproduce_the_input_blocks((input, cuts) in stream_and_cuts()) {
        let out = decode_with(Decoder::new(), &split_at(&input, &cuts));
        let body = strip_bom(&input);
        // Everything up to the end of the last complete block, byte for byte.
        prop_assert!(body.starts_with(&out.raw), "raw is not a prefix of the input");
        // What is left is the unterminated tail: no blank line in it.
        let rest = &body[out.raw.len()..];
        let (events, _) = reference(rest, false);
        prop_assert!(events.is_empty(), "a complete event was not reported");
    }

    #[test]
    fn decoding_raw_bytes_again_gives_the_same_events((input, cuts) in stream_and_cuts()) {
        let out = decode_with(Decoder::new(), &split_at(&input, &cuts));
        // Raw bytes exclude the stream's leading BOM. Raw bytes that begin with a BOM of
        // their own get one put first, as the layer does, so that it is not stripped.
        let mut again_input = Vec::new();
        if out.raw.starts_with(b"\xEF\xBB\xBF") {
            again_input.extend_from_slice(b"\xEF\xBB\xBF");
        }
        again_input.extend_from_slice(&out.raw);
        let again = decode_with(Decoder::new(), &[Bytes::from(again_input)]);
        prop_assert_eq!(again.events, out.events);
    }

    #[test]
    fn encode_then_decode_round_trips(
        event in prop::option::of("[a-z.]{0,12}"),
        data in "[a-z {}\":\r\n]{0,40}",
        id in prop::option::of("[a-z0-9-]{0,8}"),
        retry in prop::option::of(0u64..100_000),
        comments in prop::collection::vec("[a-z \r\n]{0,10}", 0..3),
    ) {
        let mut builder = Event::builder().data(data.clone());
        if let Some(event) = &event { builder = builder.event(event.clone()); }
        if let Some(id) = &id { builder = builder.id(id.clone()); }
        if let Some(retry) = retry { builder = builder.retry(Duration::from_millis(retry)); }
        for c in &comments { builder = builder.comment(c.clone()); }
        let bytes = builder.encode().unwrap();

        let out = decode_with(Decoder::new(), &[bytes]);
        let normalized = data.replace("\r\n", "\n").replace('\r', "\n");
        let expected = Ev {
            event: match event.as_deref() { None | Some("") => "message".into(), Some(e) => e.into() },
            data: normalized,
            id: id.unwrap_or_default(),
            retry,
        };
        prop_assert_eq!(out.events, vec![expected]);
        let comment_lines: usize = comments.iter().map(|c| c.replace("\r\n", "\n").replace('\r', "\n").split('\n').count()).sum();
        prop_assert_eq!(out.comments.len(), comment_lines);
    }

    #[test]
    fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..512), cuts in cuts(512), limit in 1usize..64) {
        let whole = decode_with(Decoder::new().max_event_size(limit), &[Bytes::copy_from_slice(&input)]);
        let chunked = decode_with(Decoder::new().max_event_size(limit), &split_at(&input, &cuts));
        prop_assert_eq!(chunked, whole);
    }
}

#[test]
fn from_data_reframes_any_payload_into_one_event() {
    for payload in [&b"{\"a\":1}"[..], b"", b"a\r\nb", b"x\n"] {
        let event = Event::from_data(Bytes::copy_from_slice(payload));
        let mut decoder = Decoder::new();
        decoder.push(event.raw().clone());
        let Some(Ok(Item::Event(decoded))) = decoder.next() else {
            panic!("no event for {payload:?}")
        };
        assert_eq!(decoded.data(), event.data());
    }
}
