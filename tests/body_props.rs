//! Semantic transparency: a client decoding what the layer sends sees exactly what it would
//! see decoding the upstream, whatever the upstream's chunking; and every frame the layer
//! sends holds whole blocks only.

mod support;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use proptest::prelude::*;
use support::body::{FramesBody, response, serve};
use support::sse::{decode_with, split_at};
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
    fn clients_see_exactly_what_the_upstream_sent((input, cuts) in stream_and_cuts(), lenient in any::<bool>()) {
        let frames = through_layer(split_at(&input, &cuts), lenient);

        // Every frame is whole blocks: a fresh strict decoder ends outside any block.
        for frame in &frames {
            let mut decoder = Decoder::new();
            decoder.push(frame.clone());
            while decoder.next().is_some() {}
            prop_assert!(!decoder.in_block(), "a frame split a block: {:?}", String::from_utf8_lossy(frame));
        }

        let output: Vec<u8> = frames.concat();
        let direct = decode_with(Decoder::new().lenient_eof(lenient), &[Bytes::copy_from_slice(&input)]);
        let seen = decode_with(Decoder::new(), &[Bytes::from(output.clone())]);
        prop_assert_eq!(seen.events, direct.events);
        prop_assert_eq!(seen.last_event_id, direct.last_event_id);
        // Comments reach the client with their block; a comment in a block the upstream never
        // finished is not forwarded (it changes nothing for a client).
        let complete = decode_with(Decoder::new(), &[Bytes::from(direct.raw.clone())]);
        prop_assert_eq!(seen.comments, complete.comments);
        // Byte for byte: the output is the upstream's complete blocks (its leading BOM, which
        // the client would strip, removed; a BOM put first when the blocks begin with one).
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
        let seen = decode_with(Decoder::new(), &[Bytes::from(output)]);
        prop_assert_eq!(seen.events, direct.events);
        prop_assert_eq!(seen.last_event_id, direct.last_event_id);
        prop_assert!(seen.comments.is_empty());
    }
}
