//! Acting on streams (issue 26): the policy hook's verdicts, the order it runs in, text
//! views per provider, provider-shaped stops, holdback, and exact accounting.

mod support;

use std::ops::Range;

use bytes::Bytes;
use http_body::Frame;
use sha2::{Digest as _, Sha256};
use support::body::{FramesBody, Reports, collect, response, serve};
use tower_sse::policy::{Held, Holdback, Policy, PolicyContext, StopReason, Verdict};
use tower_sse::provider::Provider;
use tower_sse::sse::EventRef;
use tower_sse::{
    DigestObserver, EventContext, Observer, Outcome, SseLayer, StreamReport, UsageObserver,
};

/// Every occurrence of `needle` in `text`.
fn find(needle: &'static str) -> impl Fn(&str) -> Vec<Range<usize>> + Clone {
    move |text: &str| {
        text.match_indices(needle)
            .map(|(at, m)| at..at + m.len())
            .collect()
    }
}

/// Redacts `needle` in each event, and across held events.
#[derive(Clone)]
struct Redact(&'static str);

impl Policy for Redact {
    fn on_event(&mut self, cx: &PolicyContext<'_>) -> Verdict {
        cx.redact("[redacted]", find(self.0))
            .map_or(Verdict::Pass, Verdict::Replace)
    }

    fn on_held(&mut self, held: &mut Held<'_>) -> Option<StopReason> {
        held.redact("[redacted]", find(self.0));
        None
    }
}

/// Stops the stream at the first content event whose text contains `needle`.
#[derive(Clone)]
struct StopOn(&'static str);

impl Policy for StopOn {
    fn on_event(&mut self, cx: &PolicyContext<'_>) -> Verdict {
        match cx.text() {
            Some(text) if text.contains(self.0) => {
                Verdict::Stop(StopReason::new(format!("stop-on: {:?}", self.0)))
            }
            _ => Verdict::Pass,
        }
    }
}

/// Drops the events of one name.
#[derive(Clone)]
struct DropNamed(&'static str);

impl Policy for DropNamed {
    fn on_event(&mut self, cx: &PolicyContext<'_>) -> Verdict {
        if cx.event().event() == self.0 {
            Verdict::Drop
        } else {
            Verdict::Pass
        }
    }
}

fn chat(content: &str) -> String {
    let content = serde_json::Value::from(content);
    format!(
        "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{content}}}}}]}}\n\n"
    )
}

const CHAT_USAGE: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7,\"total_tokens\":12}}\n\n";
const DONE: &str = "data: [DONE]\n\n";

/// Run `chunks` through `layer` (with usage and digest observers); the client's bytes and
/// the report.
async fn run(layer: SseLayer, chunks: Vec<String>) -> (String, StreamReport) {
    let reports = Reports::default();
    let layer = layer
        .observer((UsageObserver::new(), DigestObserver::new()))
        .on_end(reports.sink());
    let frames = chunks
        .into_iter()
        .map(|c| Ok(Frame::data(Bytes::from(c))))
        .collect();
    let upstream = FramesBody::new(frames, false);
    let body = serve(layer, response("text/event-stream", upstream))
        .await
        .into_body();
    let got = collect(body).await;
    assert!(got.error.is_none(), "{:?}", got.error);
    (got.text(), reports.one())
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[tokio::test]
async fn redaction_rewrites_only_the_text_and_the_digest_is_of_what_the_client_got() {
    let chunks = vec![
        chat("pw: hunter2!"),
        chat("ok"),
        CHAT_USAGE.to_owned(),
        DONE.to_owned(),
    ];
    let (body, report) = run(SseLayer::new().policy(Redact("hunter2")), chunks).await;
    let expected = [
        chat("pw: [redacted]!"),
        chat("ok"),
        CHAT_USAGE.to_owned(),
        DONE.to_owned(),
    ]
    .concat();
    assert_eq!(body, expected);
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(
        (
            report.policy.passed,
            report.policy.replaced,
            report.policy.dropped
        ),
        (3, 1, 0)
    );
    assert_eq!(report.digest.unwrap().as_bytes(), &sha256(body.as_bytes()));
    // Usage is the upstream's.
    assert_eq!(report.usage.unwrap().output_tokens, Some(7));
}

#[tokio::test]
async fn dropped_events_are_counted_and_never_reach_the_client() {
    let chunks = vec![
        "event: ping\ndata: {}\n\n".to_owned(),
        "event: delta\ndata: {\"x\":1}\n\n: a comment\n\n".to_owned(),
        "event: ping\ndata: {}\n\nevent: delta\ndata: {\"x\":2}\n\n".to_owned(),
    ];
    let (body, report) = run(SseLayer::new().policy(DropNamed("ping")), chunks).await;
    assert_eq!(
        body,
        "event: delta\ndata: {\"x\":1}\n\n: a comment\n\nevent: delta\ndata: {\"x\":2}\n\n"
    );
    assert_eq!((report.policy.passed, report.policy.dropped), (2, 2));
    assert_eq!(report.events, 4);
    assert_eq!(report.digest.unwrap().as_bytes(), &sha256(body.as_bytes()));
}

#[tokio::test]
async fn an_openai_stop_ends_with_a_content_filter_chunk_then_done() {
    let chunks = vec![
        [chat("fine"), chat("bad word")].concat(),
        ": later\n\n".to_owned(),
        chat("more"),
        CHAT_USAGE.to_owned(),
        DONE.to_owned(),
    ];
    let (body, report) = run(SseLayer::new().policy(StopOn("bad")), chunks).await;
    let stop = "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"content_filter\",\"index\":0}],\"created\":0,\"id\":\"c1\",\"model\":\"m\",\"object\":\"chat.completion.chunk\"}\n\ndata: [DONE]\n\n";
    assert_eq!(body, [chat("fine"), stop.to_owned()].concat());
    assert_eq!(report.outcome, Outcome::PolicyStopped);
    assert_eq!(
        report.policy.stopped_by.as_deref(),
        Some("stop-on: \"bad\"")
    );
    assert_eq!(report.policy.passed, 1);
    assert_eq!(report.digest.unwrap().as_bytes(), &sha256(body.as_bytes()));
    // The upstream generated the stopped event: usage counted it (estimated: the final
    // usage never came).
    let usage = report.usage.unwrap();
    assert!(usage.output_tokens.unwrap_or(0) > 0, "{usage:?}");
}

#[tokio::test]
async fn an_anthropic_stop_ends_with_message_delta_then_message_stop() {
    let delta = |text: &str| {
        let text = serde_json::Value::from(text);
        format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":{text}}}}}\n\n"
        )
    };
    let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n";
    let chunks = vec![
        start.to_owned(),
        delta("hello"),
        delta("a bad one"),
        delta("never"),
    ];
    let (body, report) = run(SseLayer::new().policy(StopOn("bad")), chunks).await;
    let stop = concat!(
        "event: message_delta\ndata: {\"delta\":{\"stop_reason\":\"refusal\",\"stop_sequence\":null},\"type\":\"message_delta\",\"usage\":{\"output_tokens\":0}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    assert_eq!(
        body,
        [start.to_owned(), delta("hello"), stop.to_owned()].concat()
    );
    assert_eq!(report.outcome, Outcome::PolicyStopped);
    assert_eq!(report.provider, Provider::Anthropic);
}

#[tokio::test]
async fn responses_and_gemini_stops_end_as_their_providers_do() {
    let delta = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"bad\"}\n\n";
    let created = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"model\":\"gpt\"}}\n\n";
    let (body, report) = run(
        SseLayer::new().policy(StopOn("bad")),
        vec![created.to_owned(), delta.to_owned()],
    )
    .await;
    assert_eq!(report.outcome, Outcome::PolicyStopped);
    let tail = body.strip_prefix(created).unwrap();
    assert!(
        tail.starts_with("event: response.incomplete\ndata: {"),
        "{tail}"
    );
    let data: serde_json::Value =
        serde_json::from_str(tail.lines().nth(1).unwrap().strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(data["response"]["status"], "incomplete");
    assert_eq!(
        data["response"]["incomplete_details"]["reason"],
        "content_filter"
    );
    assert_eq!(data["response"]["id"], "resp_1");

    let gemini = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"so bad\"}],\"role\":\"model\"},\"index\":0}],\"modelVersion\":\"gemini-x\"}\n\n";
    let (body, report) = run(
        SseLayer::new().policy(StopOn("bad")),
        vec![gemini.to_owned()],
    )
    .await;
    assert_eq!(report.outcome, Outcome::PolicyStopped);
    assert_eq!(report.provider, Provider::Gemini);
    let data: serde_json::Value =
        serde_json::from_str(body.strip_prefix("data: ").unwrap().trim_end()).unwrap();
    assert_eq!(data["candidates"][0]["finishReason"], "SAFETY");
}

#[tokio::test]
async fn a_secret_split_over_three_deltas_is_redacted_with_a_holdback_of_three_only() {
    let chunks = vec![
        chat("key: sk-"),
        chat("12"),
        chat("34 ok"),
        chat("bye"),
        DONE.to_owned(),
    ];

    // No holdback: each event alone holds no whole secret; it passes as it came.
    let (body, report) = run(SseLayer::new().policy(Redact("sk-1234")), chunks.clone()).await;
    assert_eq!(body, chunks.concat());
    assert_eq!((report.policy.passed, report.policy.held), (5, 0));

    let layer = SseLayer::new()
        .policy(Redact("sk-1234"))
        .holdback(Holdback::events(3));
    let (body, report) = run(layer, chunks).await;
    let expected = [
        chat("key: [redacted]"),
        chat(""),
        chat(" ok"),
        chat("bye"),
        DONE.to_owned(),
    ]
    .concat();
    assert_eq!(body, expected);
    assert_eq!(report.policy.held, 5);
    assert_eq!((report.policy.passed, report.policy.replaced), (2, 3));
    assert_eq!(report.digest.unwrap().as_bytes(), &sha256(body.as_bytes()));
    assert!(report.policy.first_content_released_at.is_some());
}

/// Records, in the report, what the observers saw: the upstream's text.
#[derive(Clone, Default)]
struct SeenText(String);

#[derive(Clone, Debug)]
struct Seen(String);

impl Observer for SeenText {
    fn on_event(&mut self, _: &EventRef<'_>, cx: &mut EventContext<'_>) {
        if let Some(text) = cx.content_text() {
            self.0.push_str(&String::from_utf8_lossy(text));
        }
    }
    fn on_end(&mut self, report: &mut StreamReport) {
        report.extensions.insert(Seen(self.0.clone()));
    }
}

#[tokio::test]
async fn policy_runs_between_upstream_and_delivery_observers() {
    let reports = Reports::default();
    let layer = SseLayer::new()
        .policy(Redact("secret"))
        .observer((SeenText::default(), DigestObserver::new()))
        .on_end(reports.sink());
    let chunks = [chat("a secret"), DONE.to_owned()];
    let upstream = FramesBody::new(
        chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from(c.clone()))))
            .collect(),
        false,
    );
    let body = serve(layer, response("text/event-stream", upstream))
        .await
        .into_body();
    let got = collect(body).await;
    let report = reports.one();
    // on_event (upstream side) saw the upstream's text ...
    assert_eq!(report.extensions.get::<Seen>().unwrap().0, "a secret");
    // ... the digest (delivery side) hashed what the client got.
    assert!(got.text().contains("a [redacted]"));
    assert_eq!(report.digest.unwrap().as_bytes(), &sha256(&got.data));
}

#[test]
fn text_views_per_provider() {
    let cases: [(Provider, &[u8], &[u8], &str); 5] = [
        (
            Provider::OpenAiChat,
            b"",
            br#"{"object":"chat.completion.chunk","choices":[{"delta":{"content":"a\"b"}}]}"#,
            "a\"b",
        ),
        (
            Provider::Anthropic,
            b"content_block_delta",
            br#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"hi"}}"#,
            "hi",
        ),
        (
            Provider::OpenAiResponses,
            b"response.output_text.delta",
            br#"{"type":"response.output_text.delta","delta":"yo"}"#,
            "yo",
        ),
        (
            Provider::Gemini,
            b"",
            br#"{"candidates":[{"content":{"parts":[{"text":"gem"}]}}]}"#,
            "gem",
        ),
        (
            Provider::Ollama,
            b"",
            br#"{"message":{"role":"assistant","content":"llama"},"done":false}"#,
            "llama",
        ),
    ];
    let report = StreamReport::new(tokio::time::Instant::now());
    for (provider, name, data, text) in cases {
        let raw = [b"data: ".as_slice(), data, b"\n\n"].concat();
        let event = EventRef::new(name, &raw[6..6 + data.len()], &raw);
        let span = provider.text_span(&event);
        let cx = PolicyContext::new(event, provider, span, &report);
        assert_eq!(cx.text().as_deref(), Some(text), "{provider:?}");
        let replaced = cx.replace_text("X\n").unwrap();
        let (start, end) = span.unwrap();
        let expected = [&raw[..6 + start], b"X\\n".as_slice(), &raw[6 + end..]].concat();
        assert_eq!(replaced, expected, "{provider:?}");
    }
    // Anthropic's tool-call deltas have no text view.
    let data = br#"{"type":"content_block_delta","delta":{"type":"input_json_delta","partial_json":"{}"}}"#;
    let event = EventRef::new(b"content_block_delta", data, b"");
    assert_eq!(Provider::Anthropic.text_span(&event), None);
}

#[tokio::test]
async fn ndjson_lines_are_rewritten_as_lines() {
    let reports = Reports::default();
    let layer = SseLayer::new()
        .json_lines(true)
        .policy(Redact("secret"))
        .on_end(reports.sink());
    let lines = "{\"model\":\"l\",\"message\":{\"role\":\"assistant\",\"content\":\"my secret\"},\"done\":false}\n{\"model\":\"l\",\"done\":true}\n";
    let upstream = FramesBody::new(
        vec![Ok(Frame::data(Bytes::from_static(lines.as_bytes())))],
        false,
    );
    let body = serve(layer, response("application/x-ndjson", upstream))
        .await
        .into_body();
    let got = collect(body).await;
    assert!(
        got.text().contains("\"content\":\"my [redacted]\""),
        "{}",
        got.text()
    );
    assert_eq!(reports.one().policy.replaced, 1);
}

/// The latency a holdback adds, on tokio's paused clock: with events 10 ms apart, a window
/// of 4 releases each event 3 events (30 ms) later; time to first token at release says so,
/// and the upstream's own (the timing observer's) does not move. Keep-alives go on while
/// events are held.
#[tokio::test(start_paused = true)]
async fn a_holdback_delays_release_by_the_window_and_keep_alives_go_on() {
    use std::time::Duration;
    use support::body::channel;
    use tower_sse::{KeepAliveConfig, TimingObserver};

    let gap = Duration::from_millis(10);
    let measure = |holdback: usize| async move {
        let reports = Reports::default();
        let layer = SseLayer::new()
            .policy(Redact("never"))
            .holdback(Holdback::events(holdback))
            .keep_alive(KeepAliveConfig::new().interval(Duration::from_millis(25)))
            .observer(TimingObserver::new())
            .on_end(reports.sink());
        let (tx, upstream) = channel();
        tokio::spawn(async move {
            for i in 0..6 {
                tokio::time::sleep(gap).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from(chat(&format!("t{i}"))))));
            }
            // A pause longer than the keep-alive interval, events held.
            tokio::time::sleep(Duration::from_millis(60)).await;
            let _ = tx.send(Ok(Frame::data(Bytes::from_static(DONE.as_bytes()))));
        });
        let body = serve(layer, response("text/event-stream", upstream))
            .await
            .into_body();
        let got = collect(body).await;
        let report = reports.one();
        let upstream_ttft = report.timing.unwrap().time_to_first_token.unwrap();
        let released = report.policy.first_content_released_at.unwrap() - report.started_at;
        (released, upstream_ttft, report.keep_alives, got.text())
    };
    let (released, upstream, keep_alives_off, plain) = measure(0).await;
    assert_eq!(released, upstream);
    let (released, upstream_held, keep_alives, held) = measure(4).await;
    assert_eq!(upstream_held, upstream);
    assert_eq!(released - upstream, 3 * gap);
    // Same bytes, keep-alives aside.
    assert_eq!(
        held.replace(": keep-alive\n\n", ""),
        plain.replace(": keep-alive\n\n", "")
    );
    assert!(
        keep_alives > keep_alives_off,
        "{keep_alives} vs {keep_alives_off}"
    );
}

/// The holdback's time cap holds while the upstream is silent: the stream's one timer
/// releases each held event when it has waited that long, without a later event (or the
/// end) to trigger it.
#[tokio::test(start_paused = true)]
async fn held_events_go_out_at_the_time_cap_while_the_upstream_is_silent() {
    use std::time::Duration;
    use support::body::{channel, next_text};
    use tokio::time::Instant;

    let cap = Duration::from_millis(50);
    let gap = Duration::from_millis(10);
    let reports = Reports::default();
    let layer = SseLayer::new()
        .policy(Redact("never"))
        .holdback(Holdback::events(4).max_time(cap))
        .on_end(reports.sink());
    let (tx, upstream) = channel();
    let start = Instant::now();
    tokio::spawn(async move {
        let _ = tx.send(Ok(Frame::data(Bytes::from(chat("one")))));
        tokio::time::sleep(gap).await;
        let _ = tx.send(Ok(Frame::data(Bytes::from(chat("two")))));
        // Silent for a minute, then the end.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let _ = tx.send(Ok(Frame::data(Bytes::from_static(DONE.as_bytes()))));
    });
    let mut body = serve(layer, response("text/event-stream", upstream))
        .await
        .into_body();
    assert_eq!(next_text(&mut body).await.unwrap(), chat("one"));
    assert_eq!(start.elapsed(), cap);
    assert_eq!(next_text(&mut body).await.unwrap(), chat("two"));
    assert_eq!(start.elapsed(), gap + cap);
    assert_eq!(next_text(&mut body).await.unwrap(), DONE);
    assert_eq!(start.elapsed(), gap + Duration::from_secs(60));
    assert!(next_text(&mut body).await.is_none());
    let report = reports.one();
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!((report.policy.held, report.policy.passed), (3, 3));
    // Each content event waited exactly the cap; `[DONE]` went out with the end.
    assert_eq!(report.policy.held_time, 2 * cap);
    assert_eq!(
        report.policy.first_content_released_at,
        Some(report.started_at + cap)
    );
}

/// Without drain, a stop cancels the upstream once the client has the provider-shaped
/// end, and the output the upstream generated is billed as the flagged estimate (its
/// final usage never came).
#[tokio::test]
async fn a_stop_without_drain_cancels_the_upstream_and_bills_the_flagged_estimate() {
    use support::body::channel;
    use tower_sse::UsageSource;

    let reports = Reports::default();
    let layer = SseLayer::new()
        .policy(StopOn("forbidden"))
        .observer((UsageObserver::new(), DigestObserver::new()))
        .on_end(reports.sink());
    let (tx, upstream) = channel();
    for chunk in [chat("fine words "), chat("forbidden words")] {
        tx.send(Ok(Frame::data(Bytes::from(chunk)))).unwrap();
    }
    let body = serve(layer, response("text/event-stream", upstream))
        .await
        .into_body();
    let got = collect(body).await;
    assert!(got.text().ends_with(DONE), "{}", got.text());
    assert!(tx.is_closed(), "the upstream was not cancelled");
    let report = reports.one();
    assert_eq!(report.outcome, Outcome::PolicyStopped);
    let usage = report.usage.unwrap();
    assert_eq!(usage.source, UsageSource::Estimated);
    assert!(usage.output_tokens.unwrap() > 0, "{usage:?}");
    assert_eq!(
        report.digest.unwrap().as_bytes(),
        &sha256(got.text().as_bytes())
    );
}

/// With `drain_on_disconnect`, a stop ends the client's stream at once and the upstream is
/// read on, undelivered and bounded as a drain is, for its final usage: the report bills the
/// provider's own count, not an estimate, and is made when the drain ends. The digest stays
/// that of what the client received.
#[cfg(feature = "drain")]
#[tokio::test]
async fn a_stop_drains_the_upstream_for_its_final_usage_when_the_layer_drains() {
    use std::time::Duration;
    use support::body::{channel, next_report, report_channel};
    use tower_sse::UsageSource;

    let (sink, mut reports) = report_channel();
    let layer = SseLayer::new()
        .policy(StopOn("forbidden"))
        .drain_on_disconnect(Duration::from_secs(30))
        .observer((UsageObserver::new(), DigestObserver::new()))
        .on_end(sink);
    let (tx, upstream) = channel();
    for chunk in [chat("fine words "), chat("forbidden words")] {
        tx.send(Ok(Frame::data(Bytes::from(chunk)))).unwrap();
    }
    let body = serve(layer, response("text/event-stream", upstream))
        .await
        .into_body();
    let got = collect(body).await;
    let stop = "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"content_filter\",\"index\":0}],\"created\":0,\"id\":\"c1\",\"model\":\"m\",\"object\":\"chat.completion.chunk\"}\n\ndata: [DONE]\n\n";
    assert_eq!(got.text(), [chat("fine words "), stop.to_owned()].concat());
    // The client is done; the upstream is still read, and the report waits for its end.
    tokio::task::yield_now().await;
    assert!(!tx.is_closed());
    assert!(reports.try_recv().is_err());
    for chunk in [chat(" and more"), CHAT_USAGE.to_owned(), DONE.to_owned()] {
        tx.send(Ok(Frame::data(Bytes::from(chunk)))).unwrap();
    }
    drop(tx);
    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Outcome::PolicyStopped);
    assert_eq!(
        report.policy.stopped_by.as_deref(),
        Some("stop-on: \"forbidden\"")
    );
    let usage = report.usage.unwrap();
    assert_ne!(usage.source, UsageSource::Estimated);
    assert_eq!(
        (usage.input_tokens, usage.output_tokens),
        (Some(5), Some(7))
    );
    assert_eq!(report.error, None);
    assert_eq!(
        report.digest.unwrap().as_bytes(),
        &sha256(got.text().as_bytes())
    );
    assert_eq!(report.bytes_out, got.text().len() as u64);
}

/// The one log line per stream (`TraceObserver`, the gateway's JSON line) carries what the
/// policy did: its counts, the time held and who stopped the stream; a stream without a
/// policy has none of these fields.
#[cfg(feature = "tracing")]
#[test]
fn the_log_line_has_the_policy_counts() {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use tower_sse::TraceObserver;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let log_of = |layer: SseLayer| {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let layer = layer.observer(TraceObserver);
                let frames = [
                    chat("ping"),
                    chat("fine"),
                    chat("bad word"),
                    DONE.to_owned(),
                ]
                .into_iter()
                .map(|c| Ok(Frame::data(Bytes::from(c))))
                .collect();
                let upstream = FramesBody::new(frames, false);
                let body = serve(layer, response("text/event-stream", upstream))
                    .await
                    .into_body();
                collect(body).await
            })
        });
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    };
    let text = log_of(SseLayer::new().policy((Redact("ping"), StopOn("bad"))));
    assert_eq!(text.matches("stream ended").count(), 1, "{text}");
    for field in [
        "outcome=policy_stopped",
        "policy_passed=1",
        "policy_replaced=1",
        "policy_dropped=0",
        "policy_held=0",
        "policy_held_ms=0.0",
        "policy_stopped_by=\"stop-on: \\\"bad\\\"\"",
    ] {
        assert!(text.contains(field), "{field} missing from: {text}");
    }
    let plain = log_of(SseLayer::new());
    assert_eq!(plain.matches("stream ended").count(), 1, "{plain}");
    assert!(!plain.contains("policy_"), "{plain}");
}
