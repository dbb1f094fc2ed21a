//! Semantic transparency: a client decoding what the layer sends ends up exactly where it
//! would decoding the upstream (events, ids, reconnection time), whatever the upstream's
//! chunking and wherever it stopped; and every frame the layer sends holds whole blocks only,
//! but for the unfinished block an upstream ended in.

mod support;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use proptest::prelude::*;
use support::body::{FramesBody, response, serve};
use support::sse::{client_view, decode_with, split_at};
use support::strategies::stream_and_cuts;
use tower_sse::sse::Decoder;
use tower_sse::{ErrorEvent, SseLayer};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
}

/// Run the stream through the layer; return the frames the client got.
fn through_layer(chunks: Vec<Bytes>, lenient: bool) -> Vec<Bytes> {
    through(
        chunks,
        SseLayer::new()
            .lenient_eof(lenient)
            .error_event(ErrorEvent::none()),
    )
}

fn through(chunks: Vec<Bytes>, layer: SseLayer) -> Vec<Bytes> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let upstream = FramesBody::new(
            chunks.into_iter().map(|c| Ok(Frame::data(c))).collect(),
            false,
        );
        let mut body = serve(layer, response("text/event-stream", upstream))
            .await
            .into_body();
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            frames.push(frame.unwrap().into_data().unwrap());
        }
        assert!(body.is_end_stream());
        frames
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn clients_see_exactly_what_the_upstream_sent((input, cuts) in stream_and_cuts()) {
        let frames = through_layer(split_at(&input, &cuts), false);

        // Every frame but the last is whole blocks (a fresh strict decoder ends outside any
        // block); the last may be the block the upstream never finished.
        for frame in frames.iter().rev().skip(1) {
            let mut decoder = Decoder::new();
            decoder.push(frame.clone());
            while decoder.next().is_some() {}
            prop_assert!(!decoder.in_block(), "a frame split a block: {:?}", String::from_utf8_lossy(frame));
        }

        // A spec-exact client ends up in the same state: events, ids, reconnection time,
        // whether the upstream ended mid-event, mid-line or after a lone `retry:` line.
        let output: Vec<u8> = frames.concat();
        prop_assert_eq!(client_view(&output), client_view(&input));
        // Byte for byte: the upstream's bytes (its leading BOM, which the client would strip,
        // removed; a BOM put first when what follows begins with one).
        const BOM: &[u8] = b"\xEF\xBB\xBF";
        let rest = input.strip_prefix(BOM).unwrap_or(&input);
        let mut expected = Vec::new();
        if rest.starts_with(BOM) {
            expected.extend_from_slice(BOM);
        }
        expected.extend_from_slice(rest);
        prop_assert_eq!(output, expected);
    }

    #[test]
    fn lenient_mode_completes_the_last_event((input, cuts) in stream_and_cuts()) {
        let frames = through_layer(split_at(&input, &cuts), true);
        for frame in &frames {
            let mut decoder = Decoder::new();
            decoder.push(frame.clone());
            while decoder.next().is_some() {}
            prop_assert!(!decoder.in_block(), "a frame split a block: {:?}", String::from_utf8_lossy(frame));
        }
        let output: Vec<u8> = frames.concat();
        let direct = decode_with(Decoder::new().lenient_eof(true), &[Bytes::copy_from_slice(&input)]);
        let seen = decode_with(Decoder::new(), &[Bytes::from(output.clone())]);
        prop_assert_eq!(seen.events, direct.events);
        prop_assert_eq!(seen.last_event_id, direct.last_event_id);
        let complete = decode_with(Decoder::new(), &[Bytes::from(direct.raw.clone())]);
        prop_assert_eq!(seen.comments, complete.comments);
        let mut expected = Vec::new();
        if direct.raw.starts_with(b"\xEF\xBB\xBF") {
            expected.extend_from_slice(b"\xEF\xBB\xBF");
        }
        expected.extend_from_slice(&direct.raw);
        prop_assert_eq!(output, expected);
    }

    #[test]
    fn stripping_comments_changes_nothing_a_client_keeps((input, cuts) in stream_and_cuts()) {
        let layer = SseLayer::new().forward_comments(false).error_event(ErrorEvent::none());
        let output: Vec<u8> = through(split_at(&input, &cuts), layer).concat();
        let direct = decode_with(Decoder::new(), &[Bytes::copy_from_slice(&input)]);
        prop_assert_eq!(client_view(&output), client_view(&input));
        let seen = decode_with(Decoder::new(), &[Bytes::from(output)]);
        prop_assert_eq!(seen.events, direct.events);
        prop_assert!(seen.comments.is_empty());
    }
}
