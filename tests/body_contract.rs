//! The contracts every body keeps: hints, trailers, whole events, and one report exactly
//! once on every path.

mod support;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use support::body::{
    FramesBody, Reports, UpstreamFailed, channel, collect, next_text, response, serve, sse,
};
use tower_sse::stream::UpstreamErrorPolicy;
use tower_sse::{ErrorEvent, Outcome, SseLayer};

const EVENTS: &str = "data: one\n\ndata: two\n\n";

#[tokio::test]
async fn responses_that_are_not_streams_pass_through_with_their_hints() {
    let reports = Reports::default();
    let layer = SseLayer::new().on_end(reports.sink());
    let res = serve(
        layer,
        response(
            "application/json",
            Full::new(Bytes::from_static(b"{\"a\":1}")),
        ),
    )
    .await;
    let body = res.into_body();
    assert!(!body.is_stream());
    assert_eq!(body.size_hint().exact(), Some(7));
    assert!(!body.is_end_stream());
    assert_eq!(collect(body).await.text(), "{\"a\":1}");
    assert_eq!(reports.len(), 0, "pass-through responses make no report");
}

#[tokio::test]
async fn compressed_event_streams_are_taken_undecoded_and_reported() {
    let reports = Reports::default();
    let mut upstream = response(
        "text/event-stream",
        Full::new(Bytes::from_static(b"\x1f\x8b\x08\x00gzipped")),
    );
    upstream.headers_mut().insert(
        http::header::CONTENT_ENCODING,
        HeaderValue::from_static("gzip"),
    );
    let layer = SseLayer::new()
        .keep_alive(tower_sse::KeepAliveConfig::new())
        .sse_headers(true)
        .on_end(reports.sink());
    let res = serve(layer, upstream).await;
    assert_eq!(res.headers()[http::header::CONTENT_ENCODING], "gzip");
    assert_eq!(res.headers()[http::header::CACHE_CONTROL], "no-cache");
    let body = res.into_body();
    assert!(body.is_stream(), "an encoded stream is still a stream");
    // Its bytes pass as they came: no keep-alive or event was added.
    assert_eq!(collect(body).await.data, b"\x1f\x8b\x08\x00gzipped");
    let report = reports.one();
    assert_eq!(report.framing, tower_sse::framing::Framing::Encoded);
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(report.bytes_in, 11);
    assert_eq!(report.bytes_out, 11);
    assert_eq!(report.events, 0);
}

#[tokio::test]
async fn a_ping_event_does_not_pin_the_provider() {
    let reports = Reports::default();
    let upstream = FramesBody::data(&[
        b"event: ping\ndata: {}\n\n",
        b"data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
    ]);
    let request = http::Request::post("/v1/chat/completions")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let layer = SseLayer::new().on_end(reports.sink());
    let res =
        support::body::serve_with(layer, request, response("text/event-stream", upstream)).await;
    collect(res.into_body()).await;
    let report = reports.one();
    assert_eq!(report.provider, tower_sse::provider::Provider::OpenAiChat);
    assert_eq!(report.content_events, 1);
}

#[tokio::test]
async fn a_second_byte_order_mark_stays_data_for_the_client() {
    // The upstream's first BOM is stripped; its second is part of a field name, so nothing
    // is dispatched. The client, which strips one BOM itself, must see the same.
    let input = "\u{FEFF}\u{FEFF}data: x\n\ndata: y\n\n";
    let res = serve(
        SseLayer::new(),
        response("text/event-stream", sse(&[input])),
    )
    .await;
    let out = collect(res.into_body()).await;
    let mut decoder = tower_sse::sse::Decoder::new();
    decoder.push(Bytes::from(out.data));
    decoder.finish();
    let events: Vec<String> = decoder
        .filter_map(|i| match i.unwrap() {
            tower_sse::sse::Item::Event(e) => Some(e.data().into_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(events, ["y"]);
}

#[tokio::test]
async fn empty_pass_through_body_stays_end_of_stream() {
    let res = serve(
        SseLayer::new(),
        response("application/json", Full::new(Bytes::new())),
    )
    .await;
    assert!(res.into_body().is_end_stream());
}

#[tokio::test]
async fn streams_never_claim_an_exact_size_and_drop_content_length() {
    let mut upstream = response("text/event-stream", sse(&[EVENTS]));
    upstream.headers_mut().insert(
        http::header::CONTENT_LENGTH,
        HeaderValue::from(EVENTS.len()),
    );
    let res = serve(SseLayer::new(), upstream).await;
    assert!(res.headers().get(http::header::CONTENT_LENGTH).is_none());
    let body = res.into_body();
    assert!(body.is_stream());
    assert_eq!(body.size_hint().exact(), None);
    assert!(!body.is_end_stream());
}

#[tokio::test]
async fn none_after_none() {
    let res = serve(
        SseLayer::new(),
        response("text/event-stream", sse(&[EVENTS])),
    )
    .await;
    let mut body = res.into_body();
    while body.frame().await.is_some() {}
    assert!(body.frame().await.is_none());
    assert!(body.frame().await.is_none());
    assert!(body.is_end_stream());
    assert_eq!(body.size_hint().exact(), Some(0));
}

#[tokio::test]
async fn trailers_pass_through_after_the_last_event() {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let upstream = FramesBody::new(
        vec![
            Ok(Frame::data(Bytes::from_static(b"data: one\n\nda"))),
            Ok(Frame::data(Bytes::from_static(b"ta: two\n\n"))),
            Ok(Frame::trailers(trailers.clone())),
        ],
        false,
    );
    let reports = Reports::default();
    let res = serve(
        SseLayer::new().on_end(reports.sink()),
        response("text/event-stream", upstream),
    )
    .await;
    let out = collect(res.into_body()).await;
    assert_eq!(out.text(), EVENTS);
    assert_eq!(out.trailers, Some(trailers));
    assert_eq!(reports.one().outcome, Outcome::Completed);
}

#[tokio::test]
async fn report_fires_once_on_a_normal_end() {
    let reports = Reports::default();
    let res = serve(
        SseLayer::new().on_end(reports.sink()),
        response(
            "text/event-stream",
            FramesBody::data(&[b"data: one\n\n", b"data: two\n\n"]),
        ),
    )
    .await;
    let out = collect(res.into_body()).await;
    assert_eq!(out.text(), EVENTS);
    let report = reports.one();
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(report.events, 2);
    assert_eq!(report.bytes_in, EVENTS.len() as u64);
    assert_eq!(report.bytes_out, EVENTS.len() as u64);
    assert_eq!(report.status, Some(http::StatusCode::OK));
}

#[tokio::test]
async fn report_fires_with_the_last_frame_when_the_upstream_says_end_of_stream() {
    // hyper stops polling once `is_end_stream()` is true after a data frame: the report
    // must already be out when the last frame is handed over.
    let reports = Reports::default();
    let upstream = FramesBody::new(
        vec![Ok(Frame::data(Bytes::from_static(b"data: one\n\n")))],
        true,
    );
    let res = serve(
        SseLayer::new().on_end(reports.sink()),
        response("text/event-stream", upstream),
    )
    .await;
    let mut body = res.into_body();
    assert_eq!(next_text(&mut body).await.as_deref(), Some("data: one\n\n"));
    assert!(body.is_end_stream());
    assert_eq!(reports.len(), 1, "report fired with the last frame");
    drop(body);
    assert_eq!(reports.one().outcome, Outcome::Completed);
}

#[tokio::test]
async fn upstream_error_becomes_an_error_event_and_a_clean_end_without_its_details() {
    let reports = Reports::default();
    let upstream = FramesBody::new(
        vec![
            Ok(Frame::data(Bytes::from_static(b"data: one\n\ndata: par"))),
            Err(UpstreamFailed),
        ],
        false,
    );
    let res = serve(
        SseLayer::new().on_end(reports.sink()),
        response("text/event-stream", upstream),
    )
    .await;
    let out = collect(res.into_body()).await;
    assert!(out.error.is_none());
    assert_eq!(
        out.text(),
        // The upstream error's own text (it can name hosts, or a URL with a key) stays in the
        // report; the client gets a generic message.
        "data: one\n\nevent: error\ndata: {\"error\":{\"type\":\"upstream_error\",\"message\":\"the upstream stream failed\"}}\n\n"
    );
    let report = reports.one();
    assert_eq!(report.outcome, Outcome::UpstreamError);
    assert_eq!(
        report.error.as_deref(),
        Some("connection reset by upstream")
    );
}

#[tokio::test]
async fn upstream_error_can_be_propagated() {
    let reports = Reports::default();
    let upstream = FramesBody::new(
        vec![
            Ok(Frame::data(Bytes::from_static(b"data: one\n\n"))),
            Err(UpstreamFailed),
        ],
        false,
    );
    let layer = SseLayer::new()
        .on_upstream_error(UpstreamErrorPolicy::Propagate)
        .on_end(reports.sink());
    let res = serve(layer, response("text/event-stream", upstream)).await;
    let mut body = res.into_body();
    let out = collect(&mut body).await;
    assert_eq!(out.text(), "data: one\n\n");
    assert_eq!(out.error.as_deref(), Some("connection reset by upstream"));
    assert!(body.is_end_stream());
    assert!(body.frame().await.is_none());
    assert_eq!(reports.one().outcome, Outcome::UpstreamError);
}

#[tokio::test]
async fn event_too_large_ends_with_an_error_event() {
    let reports = Reports::default();
    let layer = SseLayer::new().max_event_size(16).on_end(reports.sink());
    let upstream =
        FramesBody::data(&[b"data: ok\n\ndata: this line is far too long\n\ndata: never\n\n"]);
    let res = serve(layer, response("text/event-stream", upstream)).await;
    let out = collect(res.into_body()).await;
    assert!(
        out.text().starts_with("data: ok\n\nevent: error\n"),
        "{}",
        out.text()
    );
    assert!(out.text().contains("event_too_large"));
    assert!(!out.text().contains("never"));
    assert_eq!(reports.one().outcome, Outcome::EventTooLarge);
}

#[tokio::test]
async fn truncated_upstream_is_reported_and_forwarded_as_it_came() {
    let reports = Reports::default();
    let upstream = FramesBody::data(&[b"data: one\n\ndata: half"]);
    let res = serve(
        SseLayer::new().on_end(reports.sink()),
        response("text/event-stream", upstream),
    )
    .await;
    let out = collect(res.into_body()).await;
    assert_eq!(out.text(), "data: one\n\ndata: half");
    assert_eq!(reports.one().outcome, Outcome::UpstreamTruncated);
}

#[tokio::test]
async fn truncated_upstream_can_end_with_an_error_event_instead() {
    let reports = Reports::default();
    let upstream = FramesBody::data(&[b"data: one\n\ndata: half"]);
    let res = serve(
        SseLayer::new()
            .error_on_truncation(true)
            .on_end(reports.sink()),
        response("text/event-stream", upstream),
    )
    .await;
    let out = collect(res.into_body()).await;
    assert!(out.text().starts_with("data: one\n\nevent: error\n"));
    assert!(!out.text().contains("half"));
    assert_eq!(reports.one().outcome, Outcome::UpstreamTruncated);
}

#[tokio::test]
async fn lenient_mode_delivers_the_unterminated_final_event() {
    let reports = Reports::default();
    let layer = SseLayer::new().lenient_eof(true).on_end(reports.sink());
    let upstream = FramesBody::data(&[b"data: one\n\ndata: last"]);
    let res = serve(layer, response("text/event-stream", upstream)).await;
    assert_eq!(
        collect(res.into_body()).await.text(),
        "data: one\n\ndata: last\n\n"
    );
    assert_eq!(reports.one().outcome, Outcome::Completed);
}

#[tokio::test]
async fn error_events_can_be_turned_off() {
    let upstream = FramesBody::new(
        vec![
            Ok(Frame::data(Bytes::from_static(b"data: one\n\n"))),
            Err(UpstreamFailed),
        ],
        false,
    );
    let layer = SseLayer::new().error_event(ErrorEvent::none());
    let res = serve(layer, response("text/event-stream", upstream)).await;
    assert_eq!(collect(res.into_body()).await.text(), "data: one\n\n");
}

#[tokio::test]
async fn drop_before_the_first_poll_reports_a_disconnect() {
    let reports = Reports::default();
    let (_tx, upstream) = channel();
    let res = serve(
        SseLayer::new().on_end(reports.sink()),
        response("text/event-stream", upstream),
    )
    .await;
    drop(res);
    let report = reports.one();
    assert_eq!(report.outcome, Outcome::ClientDisconnected);
    assert_eq!(report.events, 0);
}

#[tokio::test]
async fn drop_mid_event_and_between_events_reports_what_was_delivered() {
    for (chunks, delivered) in [
        (&["data: one\n\nda"][..], 1u64),             // mid-event
        (&["data: one\n\n", "data: two\n\n"][..], 2), // between events
    ] {
        let reports = Reports::default();
        let (tx, upstream) = channel();
        let res = serve(
            SseLayer::new().on_end(reports.sink()),
            response("text/event-stream", upstream),
        )
        .await;
        let mut body = res.into_body();
        for chunk in chunks {
            tx.send(Ok(Frame::data(Bytes::from_static(chunk.as_bytes()))))
                .unwrap();
        }
        for _ in 0..delivered {
            next_text(&mut body).await.unwrap();
        }
        assert_eq!(reports.len(), 0);
        drop(body);
        let report = reports.one();
        assert_eq!(report.outcome, Outcome::ClientDisconnected);
        assert_eq!(report.events, delivered);
        let sent: usize = chunks.iter().map(|c| c.len()).sum();
        assert_eq!(report.bytes_in, sent as u64);
    }
}

#[tokio::test]
async fn drop_after_the_last_event_but_before_the_end_is_a_disconnect() {
    let reports = Reports::default();
    let (tx, upstream) = channel();
    let res = serve(
        SseLayer::new().on_end(reports.sink()),
        response("text/event-stream", upstream),
    )
    .await;
    let mut body = res.into_body();
    tx.send(Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))))
        .unwrap();
    next_text(&mut body).await.unwrap();
    drop(body);
    assert_eq!(reports.one().outcome, Outcome::ClientDisconnected);
}

#[tokio::test]
async fn drop_after_the_end_does_not_report_again() {
    let reports = Reports::default();
    let res = serve(
        SseLayer::new().on_end(reports.sink()),
        response("text/event-stream", sse(&[EVENTS])),
    )
    .await;
    let mut body = res.into_body();
    while body.frame().await.is_some() {}
    drop(body);
    assert_eq!(reports.one().outcome, Outcome::Completed);
}

#[tokio::test]
async fn events_are_forwarded_whole_whatever_the_chunking() {
    let reports = Reports::default();
    let (tx, upstream) = channel();
    let res = serve(
        SseLayer::new().on_end(reports.sink()),
        response("text/event-stream", upstream),
    )
    .await;
    let mut body = res.into_body();
    for piece in ["da", "ta: o", "ne\r", "\n\r", "\ndata: two\n", "\n"] {
        tx.send(Ok(Frame::data(Bytes::from_static(piece.as_bytes()))))
            .unwrap();
    }
    drop(tx);
    let mut frames = Vec::new();
    while let Some(frame) = body.frame().await {
        frames.push(String::from_utf8(frame.unwrap().into_data().unwrap().to_vec()).unwrap());
    }
    // Every frame holds whole blocks only; the LF that completes the split CRLF comes on
    // its own, as the blank line it is part of.
    assert_eq!(frames, vec!["data: one\r\n\r", "\n", "data: two\n\n"]);
    assert_eq!(reports.one().events, 2);
}

#[tokio::test]
async fn comments_are_forwarded_by_default_and_can_be_stripped() {
    let input = ": ping\n\nid: 7\n: hi\ndata: a\n\n: only a comment\nretry: 10\n\n";
    let res = serve(
        SseLayer::new(),
        response("text/event-stream", sse(&[input])),
    )
    .await;
    assert_eq!(collect(res.into_body()).await.text(), input);

    let reports = Reports::default();
    let layer = SseLayer::new()
        .forward_comments(false)
        .on_end(reports.sink());
    let res = serve(layer, response("text/event-stream", sse(&[input]))).await;
    assert_eq!(
        collect(res.into_body()).await.text(),
        "id: 7\ndata: a\n\nretry: 10\n\n"
    );
    assert_eq!(reports.one().comments, 3);
}

#[tokio::test]
async fn json_lines_are_reframed_into_sse() {
    let reports = Reports::default();
    let layer = SseLayer::new().json_lines(true).on_end(reports.sink());
    let upstream = FramesBody::data(&[
        b"{\"message\":{\"content\":\"Hi\"},\"done\":false}\n{\"mess",
        b"age\":{\"content\":\"\"},\"done\":true}\n",
    ]);
    let res = serve(layer, response("application/x-ndjson", upstream)).await;
    assert_eq!(
        res.headers().get(http::header::CONTENT_TYPE).unwrap(),
        "text/event-stream"
    );
    assert_eq!(
        collect(res.into_body()).await.text(),
        "data: {\"message\":{\"content\":\"Hi\"},\"done\":false}\n\ndata: {\"message\":{\"content\":\"\"},\"done\":true}\n\n"
    );
    let report = reports.one();
    assert_eq!(report.events, 2);
    assert_eq!(report.content_events, 1);
    assert_eq!(report.provider, tower_sse::provider::Provider::Ollama);
    assert_eq!(report.framing, tower_sse::framing::Framing::JsonLines);
}

#[tokio::test]
async fn json_lines_pass_through_unless_enabled() {
    let res = serve(
        SseLayer::new(),
        response("application/x-ndjson", FramesBody::data(&[b"{}\n"])),
    )
    .await;
    assert!(!res.into_body().is_stream());
}
