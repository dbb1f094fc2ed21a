//! The usage observer through the real layer: every built-in format from transcripts in
//! `tests/fixtures/usage/`, whole, at every byte split and at random splits; cut after every
//! event; the provider traps (`"usage":null`, Anthropic's restated counts, vLLM's running
//! totals); hiding injected usage; draining after a disconnect; hostile input.

mod support;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::Request;
use http_body::Frame;
use http_body_util::{BodyExt, Empty};
use proptest::prelude::*;
use serde_json::Value;
use support::body::{
    Collected, FramesBody, Reports, UpstreamFailed, channel, collect, response, serve_with,
};
use tower_sse::provider::Provider;
use tower_sse::request::UsageInjected;
use tower_sse::sse::EventRef;
use tower_sse::usage::{CacheCreationInputTokens, UsageState, UsageStyle};
use tower_sse::{
    EventContext, Observer, Outcome, SseLayer, StreamReport, TimingObserver, Usage, UsageObserver,
    UsageSource,
};

// ---------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------

/// A usage; `-1` is unknown.
fn u(input: i64, output: i64, total: i64, cached: i64, reasoning: i64) -> Usage {
    let known = |n: i64| u64::try_from(n).ok();
    let mut usage = Usage::default();
    usage.input_tokens = known(input);
    usage.output_tokens = known(output);
    usage.total_tokens = known(total);
    usage.cached_input_tokens = known(cached);
    usage.reasoning_tokens = known(reasoning);
    usage
}

/// The same usage, counted in `style`, with `written` cache writes.
fn styled(mut usage: Usage, style: UsageStyle, written: Option<u64>) -> Usage {
    usage.style = style;
    usage.cache_write_tokens = written;
    usage
}

/// The same usage, its output estimated.
fn estimated(mut usage: Usage) -> Usage {
    usage.source = UsageSource::Estimated;
    usage
}

/// One transcript and everything the report must say about it.
#[derive(Debug, Clone)]
struct Case {
    name: &'static str,
    bytes: &'static [u8],
    path: &'static str,
    ndjson: bool,
    provider: Provider,
    /// The usage of the whole stream.
    usage: Option<Usage>,
    cache_creation: Option<u64>,
    id: Option<&'static str>,
    model: Option<&'static str>,
    finish: Option<&'static str>,
    events: u64,
    /// Indexes of the content events.
    content_at: &'static [usize],
    /// (index of the event, the reported usage once it was seen).
    reported: Vec<(usize, Usage)>,
    /// (index of the event, Anthropic's placeholder output count). Never reported: it says
    /// that a real count is to come, and a stream that ends without one has its output
    /// estimated, completed or not.
    provisional: Option<(usize, u64)>,
    /// (index of the event, the finish reason once it was seen).
    finishes: &'static [(usize, &'static str)],
}

/// The case table: one row per transcript, with everything the report must say about it.
/// The tests under "The table" below run every row; the other tests take a row by name.
fn table() -> Vec<Case> {
    let mut cases = vec![
        Case {
            name: "openai_chat",
            bytes: include_bytes!("fixtures/usage/openai_chat.sse"),
            path: "/v1/chat/completions",
            ndjson: false,
            provider: Provider::OpenAiChat,
            usage: Some(u(1180, 77, 1257, 1024, 64)),
            cache_creation: None,
            id: Some("chatcmpl-Bx7Q2mZkR1"),
            model: Some("o4-mini-2025-04-16"),
            finish: Some("stop"),
            events: 9,
            content_at: &[1, 2, 3, 4, 5],
            reported: vec![(7, u(1180, 77, 1257, 1024, 64))],
            provisional: None,
            finishes: &[(6, "stop")],
        },
        Case {
            name: "openai_merged",
            bytes: include_bytes!("fixtures/usage/openai_merged.sse"),
            path: "/v1/chat/completions",
            ndjson: false,
            provider: Provider::OpenAiChat,
            usage: Some(u(11, 2, 13, -1, -1)),
            cache_creation: None,
            id: Some("chatcmpl-llama42"),
            model: Some("gemma-3-1b-it"),
            finish: Some("length"),
            events: 5,
            content_at: &[1, 2],
            reported: vec![(3, u(11, 2, 13, -1, -1))],
            provisional: None,
            finishes: &[(3, "length")],
        },
        Case {
            name: "openai_completions",
            bytes: include_bytes!("fixtures/usage/openai_completions.sse"),
            path: "/v1/completions",
            ndjson: false,
            provider: Provider::OpenAiCompletions,
            usage: Some(u(5, 4, 9, -1, -1)),
            cache_creation: None,
            id: Some("cmpl-8Vq1"),
            model: Some("gpt-3.5-turbo-instruct"),
            finish: Some("length"),
            events: 6,
            content_at: &[0, 1, 2],
            reported: vec![(4, u(5, 4, 9, -1, -1))],
            provisional: None,
            finishes: &[(3, "length")],
        },
        Case {
            name: "vllm_continuous",
            bytes: include_bytes!("fixtures/usage/vllm_continuous.sse"),
            path: "/v1/chat/completions",
            ndjson: false,
            provider: Provider::OpenAiChat,
            usage: Some(u(42, 4, 46, -1, -1)),
            cache_creation: None,
            id: Some("chatcmpl-vllm7"),
            model: Some("meta-llama/Llama-3.1-8B-Instruct"),
            finish: Some("stop"),
            events: 7,
            content_at: &[1, 2, 3],
            reported: vec![
                (0, u(42, 0, 42, -1, -1)),
                (1, u(42, 1, 43, -1, -1)),
                (2, u(42, 2, 44, -1, -1)),
                (3, u(42, 3, 45, -1, -1)),
                (4, u(42, 4, 46, -1, -1)),
            ],
            provisional: None,
            finishes: &[(4, "stop")],
        },
        Case {
            name: "responses",
            bytes: include_bytes!("fixtures/usage/responses.sse"),
            path: "/v1/responses",
            ndjson: false,
            provider: Provider::OpenAiResponses,
            usage: Some(u(36, 203, 239, 0, 192)),
            cache_creation: None,
            id: Some("resp_68a1f0"),
            model: Some("gpt-5-mini-2025-08-07"),
            finish: Some("completed"),
            events: 13,
            content_at: &[6, 7, 8],
            reported: vec![(12, u(36, 203, 239, 0, 192))],
            provisional: None,
            finishes: &[(12, "completed")],
        },
        Case {
            name: "responses_incomplete",
            bytes: include_bytes!("fixtures/usage/responses_incomplete.sse"),
            path: "/v1/responses",
            ndjson: false,
            provider: Provider::OpenAiResponses,
            usage: Some(u(12, 16, 28, 0, 0)),
            cache_creation: None,
            id: Some("resp_0c44e1"),
            model: Some("gpt-4.1-nano-2025-04-14"),
            finish: Some("max_output_tokens"),
            events: 4,
            content_at: &[1, 2],
            reported: vec![(3, u(12, 16, 28, 0, 0))],
            provisional: None,
            finishes: &[(3, "max_output_tokens")],
        },
        Case {
            name: "anthropic",
            bytes: include_bytes!("fixtures/usage/anthropic.sse"),
            path: "/v1/messages",
            ndjson: false,
            provider: Provider::Anthropic,
            usage: Some(u(472, 12, -1, 0, -1)),
            cache_creation: Some(0),
            id: Some("msg_01XFDUDYJgAACzvnptvVoYEL"),
            model: Some("claude-sonnet-4-5-20250929"),
            finish: Some("end_turn"),
            events: 9,
            content_at: &[3, 4, 5],
            reported: vec![(0, u(472, -1, -1, 0, -1)), (7, u(472, 12, -1, 0, -1))],
            provisional: Some((0, 2)),
            finishes: &[(7, "end_turn")],
        },
        Case {
            name: "anthropic_restated",
            bytes: include_bytes!("fixtures/usage/anthropic_restated.sse"),
            path: "/v1/messages",
            ndjson: false,
            provider: Provider::Anthropic,
            usage: Some(u(9, 58, -1, 20480, -1)),
            cache_creation: Some(1536),
            id: Some("msg_01Restated"),
            model: Some("claude-opus-4-1-20250805"),
            finish: Some("max_tokens"),
            events: 10,
            content_at: &[2, 6],
            reported: vec![(0, u(9, -1, -1, 20480, -1)), (8, u(9, 58, -1, 20480, -1))],
            provisional: Some((0, 1)),
            finishes: &[(8, "max_tokens")],
        },
        Case {
            name: "anthropic_error",
            bytes: include_bytes!("fixtures/usage/anthropic_error.sse"),
            path: "/v1/messages",
            ndjson: false,
            provider: Provider::Anthropic,
            // No `message_delta`: the input is reported, the output estimated from the text
            // ("Partial", " answer": 14 bytes, 4 tokens), never the placeholder 1.
            usage: Some(estimated(u(30, 4, -1, 0, -1))),
            cache_creation: Some(0),
            id: Some("msg_01Overload"),
            model: Some("claude-haiku-4-5"),
            finish: Some("overloaded_error"),
            events: 5,
            content_at: &[2, 3],
            reported: vec![(0, u(30, -1, -1, 0, -1))],
            provisional: Some((0, 1)),
            finishes: &[(4, "overloaded_error")],
        },
        Case {
            name: "gemini",
            bytes: include_bytes!("fixtures/usage/gemini.sse"),
            path: "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            ndjson: false,
            provider: Provider::Gemini,
            usage: Some(u(14, 9, 99, -1, 76)),
            cache_creation: None,
            id: Some("m1x2aPq4Lh"),
            model: Some("gemini-2.5-flash"),
            finish: Some("STOP"),
            events: 3,
            content_at: &[0, 1, 2],
            reported: vec![
                (0, u(14, -1, 90, -1, 76)),
                (1, u(14, 3, 93, -1, 76)),
                (2, u(14, 9, 99, -1, 76)),
            ],
            provisional: None,
            finishes: &[(2, "STOP")],
        },
        Case {
            name: "ollama",
            bytes: include_bytes!("fixtures/usage/ollama_chat.ndjson"),
            path: "/api/chat",
            ndjson: true,
            provider: Provider::Ollama,
            usage: Some(u(26, 4, -1, -1, -1)),
            cache_creation: None,
            id: None,
            model: Some("llama3.2"),
            finish: Some("stop"),
            events: 4,
            content_at: &[0, 1, 2],
            reported: vec![(3, u(26, 4, -1, -1, -1))],
            provisional: None,
            finishes: &[(3, "stop")],
        },
    ];
    // The same transcripts relayed without their `event:` lines (pings included): the
    // format, the content, the id and model and the usage come from each event's `type`, so
    // the report must say exactly what it says for the named ones.
    for (of, name, bytes) in [
        (
            "responses",
            "responses_data_only",
            &include_bytes!("fixtures/usage/responses_data_only.sse")[..],
        ),
        (
            "anthropic",
            "anthropic_data_only",
            &include_bytes!("fixtures/usage/anthropic_data_only.sse")[..],
        ),
    ] {
        let named = cases.iter().find(|case| case.name == of).cloned();
        let named = named.expect("the named transcript is in the table");
        cases.push(Case {
            name,
            bytes,
            ..named
        });
    }
    // Every usage says how its provider counts, and carries the cache writes reported.
    for case in &mut cases {
        let (style, written) = (UsageStyle::of(case.provider), case.cache_creation);
        let usages = case.usage.iter_mut();
        for usage in usages.chain(case.reported.iter_mut().map(|(_, usage)| usage)) {
            usage.style = style;
            usage.cache_write_tokens = written;
        }
    }
    cases
}

impl Case {
    /// The row of the table named `name`.
    fn named(name: &str) -> Case {
        table()
            .into_iter()
            .find(|case| case.name == name)
            .unwrap_or_else(|| panic!("no case named {name} in the table"))
    }
}

impl Case {
    /// The transcript cut into its events (blank line or line end included).
    fn split_events(&self) -> Vec<&'static [u8]> {
        let bytes = self.bytes;
        let sep: &[u8] = if self.ndjson {
            b"\n"
        } else if bytes.windows(4).any(|w| w == b"\r\n\r\n") {
            b"\r\n\r\n"
        } else {
            b"\n\n"
        };
        let mut out = Vec::new();
        let mut start = 0;
        let mut at = 0;
        while at + sep.len() <= bytes.len() {
            if &bytes[at..at + sep.len()] == sep {
                out.push(&bytes[start..at + sep.len()]);
                at += sep.len();
                start = at;
            } else {
                at += 1;
            }
        }
        assert_eq!(start, bytes.len(), "{}: trailing bytes", self.name);
        out
    }

    /// The event type and data of each event.
    fn parsed_events(&self) -> Vec<(String, String)> {
        self.split_events()
            .into_iter()
            .map(|raw| {
                let text = std::str::from_utf8(raw).unwrap();
                if self.ndjson {
                    return (String::new(), text.trim_end().to_string());
                }
                let mut kind = String::new();
                let mut data = String::new();
                for line in text.lines() {
                    if let Some(k) = line.strip_prefix("event: ") {
                        kind = k.to_string();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = d.to_string();
                    }
                }
                (kind, data)
            })
            .collect()
    }

    /// The reported usage once the first `k` events were seen.
    fn reported_after(&self, k: usize) -> Usage {
        self.reported
            .iter()
            .filter(|(at, _)| *at < k)
            .map(|(_, u)| *u)
            .next_back()
            .unwrap_or_default()
    }

    fn finish_after(&self, k: usize) -> Option<&'static str> {
        self.finishes
            .iter()
            .filter(|(at, _)| *at < k)
            .map(|(_, r)| *r)
            .next_back()
    }

    /// What the report must say once `k` events were seen, for a stream that completed or
    /// not.
    fn usage_after(&self, k: usize, completed: bool) -> Option<Usage> {
        let mut usage = self.reported_after(k);
        // A placeholder announced a count that never came: the stream was cut, whatever
        // its outcome.
        let announced = self.provisional.is_some_and(|(at, _)| at < k);
        if usage.output_tokens.is_none()
            && (!completed || announced)
            && let Some(tokens) = self.estimate_after(k)
        {
            usage.output_tokens = Some(tokens);
            usage.source = UsageSource::Estimated;
        }
        (usage != Usage::default()).then_some(usage)
    }

    /// Bytes of content text / 4, rounded up, over the content events among the first `k`.
    fn estimate_after(&self, k: usize) -> Option<u64> {
        let events = self.parsed_events();
        let bytes: usize = self
            .content_at
            .iter()
            .filter(|&&i| i < k)
            .map(|&i| content_text_len(self.provider, &events[i].1))
            .sum();
        (bytes > 0).then(|| (bytes as u64).div_ceil(4))
    }

    fn layer(
        &self,
        reports: &Reports,
    ) -> SseLayer<(UsageObserver, FirstContent), impl tower_sse::OnEnd + Clone + Send + 'static>
    {
        SseLayer::new()
            .json_lines(self.ndjson)
            .observer((UsageObserver::default(), FirstContent::default()))
            .on_end(reports.sink())
    }

    fn request(&self, injected: bool) -> Request<Empty<Bytes>> {
        let mut request = Request::post(self.path).body(Empty::new()).unwrap();
        if injected {
            request.extensions_mut().insert(UsageInjected);
        }
        request
    }

    fn content_type(&self) -> &'static str {
        if self.ndjson {
            "application/x-ndjson"
        } else {
            "text/event-stream"
        }
    }

    /// How the whole stream ends: a transcript with the provider's error event ends with it
    /// (`tests/provider_errors.rs` has one per format).
    fn outcome(&self) -> Outcome {
        match self.name {
            "anthropic_error" => Outcome::ProviderError,
            _ => Outcome::Completed,
        }
    }

    /// Check a report of the whole stream.
    fn check_complete(&self, report: &StreamReport, how: &str) {
        let name = self.name;
        assert_eq!(report.outcome, self.outcome(), "{name} {how}");
        assert_eq!(
            report.provider_error.is_some(),
            self.outcome() == Outcome::ProviderError,
            "{name} {how}: provider error"
        );
        assert_eq!(report.provider, self.provider, "{name} {how}: provider");
        assert_eq!(report.usage, self.usage, "{name} {how}: usage");
        assert_eq!(
            report.usage,
            self.usage_after(self.events as usize, true),
            "{name}: the case table disagrees with itself"
        );
        assert_eq!(
            report.finish_reason.as_deref(),
            self.finish,
            "{name} {how}: finish reason"
        );
        assert_eq!(
            report.response_id.as_deref(),
            self.id,
            "{name} {how}: response id"
        );
        assert_eq!(report.model.as_deref(), self.model, "{name} {how}: model");
        assert_eq!(report.events, self.events, "{name} {how}: events");
        assert_eq!(
            report.content_events,
            self.content_at.len() as u64,
            "{name} {how}: content events"
        );
        assert_eq!(
            first_content(report),
            self.content_at.first().map(|&i| i as u64),
            "{name} {how}: first content event"
        );
        assert_eq!(
            report
                .extensions
                .get::<CacheCreationInputTokens>()
                .map(|c| c.0),
            self.cache_creation,
            "{name} {how}: cache creation"
        );
    }
}

/// The length of the generated text of one content event, as sent (JSON-escaped), found
/// with `serde_json::Value`: an oracle independent of the observer's byte search.
fn content_text_len(provider: Provider, data: &str) -> usize {
    let value: Value = serde_json::from_str(data).unwrap();
    let len = |v: &Value| match v {
        Value::String(s) => serde_json::to_string(s).unwrap().len() - 2,
        _ => 0,
    };
    let first = |vs: &[&Value]| vs.iter().map(|v| len(v)).find(|&n| n > 0).unwrap_or(0);
    match provider {
        Provider::OpenAiChat => {
            let delta = &value["choices"][0]["delta"];
            first(&[
                &delta["content"],
                &delta["reasoning_content"],
                &delta["reasoning"],
                &delta["refusal"],
            ])
        }
        Provider::OpenAiCompletions => value["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| len(&c["text"]))
            .sum(),
        Provider::OpenAiResponses => len(&value["delta"]),
        Provider::Anthropic => {
            let delta = &value["delta"];
            first(&[&delta["text"], &delta["thinking"], &delta["partial_json"]])
        }
        Provider::Gemini => value["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| c["content"]["parts"].as_array().unwrap().iter())
            .map(|p| len(&p["text"]))
            .sum(),
        Provider::Ollama => {
            let message = &value["message"];
            first(&[
                &message["content"],
                &message["thinking"],
                &value["response"],
            ])
        }
        _ => data.len(),
    }
}

/// Records the index of the first content event.
#[derive(Debug, Clone, Default)]
struct FirstContent {
    seen: u64,
    first: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct FirstContentAt(Option<u64>);

impl Observer for FirstContent {
    fn on_event(&mut self, _: &EventRef<'_>, cx: &mut EventContext<'_>) {
        if cx.is_content() && self.first.is_none() {
            self.first = Some(self.seen);
        }
        self.seen += 1;
    }

    fn on_end(&mut self, report: &mut StreamReport) {
        report.extensions.insert(FirstContentAt(self.first));
    }
}

fn first_content(report: &StreamReport) -> Option<u64> {
    report.extensions.get::<FirstContentAt>().and_then(|f| f.0)
}

// ---------------------------------------------------------------------------------------
// Running streams
// ---------------------------------------------------------------------------------------

/// Run `chunks` through the layer as one stream; the report and what the client got.
async fn run(case: &Case, chunks: &[&'static [u8]], injected: bool) -> (StreamReport, Collected) {
    let reports = Reports::default();
    let res = serve_with(
        case.layer(&reports),
        case.request(injected),
        response(case.content_type(), FramesBody::data(chunks)),
    )
    .await;
    let out = collect(res.into_body()).await;
    assert!(out.error.is_none(), "{}: {:?}", case.name, out.error);
    (reports.one(), out)
}

/// The transcript cut at `cuts` (sorted, deduplicated, inside the transcript).
fn cut(bytes: &'static [u8], cuts: &[usize]) -> Vec<&'static [u8]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    for &at in cuts {
        if at > start && at < bytes.len() {
            chunks.push(&bytes[start..at]);
            start = at;
        }
    }
    chunks.push(&bytes[start..]);
    chunks
}

/// Feed the first `k` events one by one through a channel, read what the client gets after
/// each, then drop the body (the client goes away).
async fn disconnect_after(case: &Case, k: usize) -> StreamReport {
    let reports = Reports::default();
    let (tx, body) = channel();
    let res = serve_with(
        case.layer(&reports),
        case.request(false),
        response(case.content_type(), body),
    )
    .await;
    let mut body = res.into_body();
    for event in &case.split_events()[..k] {
        tx.send(Ok(Frame::data(Bytes::from_static(event)))).unwrap();
        while let Some(Some(frame)) = body.frame().now_or_never() {
            frame.unwrap();
        }
    }
    assert_eq!(reports.len(), 0, "{}: reported before the end", case.name);
    drop(body);
    reports.one()
}

fn check_disconnect(case: &Case, k: usize, report: &StreamReport) {
    let name = case.name;
    assert_eq!(
        report.outcome,
        Outcome::ClientDisconnected,
        "{name} after {k}"
    );
    assert_eq!(report.events, k as u64, "{name} after {k}: events");
    assert_eq!(
        report.usage,
        case.usage_after(k, false),
        "{name} after {k} events: usage"
    );
    assert_eq!(
        report.finish_reason.as_deref(),
        case.finish_after(k),
        "{name} after {k} events: finish reason"
    );
    let content = case.content_at.iter().filter(|&&i| i < k).count() as u64;
    assert_eq!(
        report.content_events, content,
        "{name} after {k}: content events"
    );
}

// ---------------------------------------------------------------------------------------
// The table: every case whole, one chunk per event, split at every byte, cut after every
// event
// ---------------------------------------------------------------------------------------

/// Run `check` on every case of the table, each on a runtime of its own (as a
/// `#[tokio::test]` has: one task per case, so tokio's cooperative budget is not shared
/// between cases). A failing case does not stop the others: the test fails at the end,
/// naming each case that failed and its message.
fn for_each_case<F, Fut>(check: F)
where
    F: Fn(Case) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut failed = Vec::new();
    for case in table() {
        let name = case.name;
        let result = catch_unwind(AssertUnwindSafe(|| runtime().block_on(check(case))));
        if let Err(panic) = result {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            failed.push(format!("case {name}: {message}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} cases failed:\n{}",
        failed.len(),
        table().len(),
        failed.join("\n")
    );
}

#[test]
fn table_whole() {
    for_each_case(|case| async move {
        let (report, out) = run(&case, &[case.bytes], false).await;
        case.check_complete(&report, "whole");
        if !case.ndjson {
            assert_eq!(out.data, case.bytes, "{}: forwarded as is", case.name);
        }
    });
}

#[test]
fn table_one_chunk_per_event() {
    for_each_case(|case| async move {
        let (report, _) = run(&case, &case.split_events(), false).await;
        case.check_complete(&report, "one chunk per event");
    });
}

#[test]
fn table_every_byte_split() {
    for_each_case(|case| async move {
        for at in 1..case.bytes.len() {
            let (report, _) = run(&case, &cut(case.bytes, &[at]), false).await;
            case.check_complete(&report, &format!("split at {at}"));
        }
    });
}

#[test]
fn table_disconnect_after_every_event() {
    for_each_case(|case| async move {
        for k in 0..=case.events as usize {
            let report = disconnect_after(&case, k).await;
            check_disconnect(&case, k, &report);
        }
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_splits(case in 0..table().len(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..16)) {
        let case = &table()[case];
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(case.bytes.len())).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let chunks = cut(case.bytes, &cuts);
        let (report, _) = runtime().block_on(run(case, &chunks, false));
        case.check_complete(&report, &format!("cut at {cuts:?}"));
    }
}

// ---------------------------------------------------------------------------------------
// The traps
// ---------------------------------------------------------------------------------------

/// With `include_usage`, OpenAI sends `"usage":null` on every chunk before the real one. A
/// pre-filter on `"usage"` alone would parse every chunk (and take `null` for a usage).
#[tokio::test]
async fn openai_usage_null_trap() {
    let stream: &'static [u8] = concat!(
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"usage\"},\"finish_reason\":null}],\"usage\": null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\\\"usage\\\":{\\\"prompt_tokens\\\":5}\"},\"finish_reason\":null}],\"usage\" :\tnull}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: [DONE]\n\n",
    )
    .as_bytes();
    let mut case = Case::named("openai_chat");
    case.bytes = stream;
    let (report, _) = run(&case, &[stream], false).await;
    assert_eq!(
        report.usage, None,
        "null is not a usage, and text is not JSON"
    );
    assert_eq!(report.finish_reason.as_deref(), Some("stop"));

    // The same stream with the usage chunk at the end (`"usage": {` with a space).
    let with_usage: &'static [u8] = Box::leak(
        [
            &stream[..stream.len() - "data: [DONE]\n\n".len()],
            b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[],\"usage\": {\"prompt_tokens\":8,\"completion_tokens\":3,\"total_tokens\":11}}\n\ndata: [DONE]\n\n",
        ]
        .concat()
        .into_boxed_slice(),
    );
    let (report, _) = run(&case, &[with_usage], false).await;
    assert_eq!(report.usage, Some(u(8, 3, 11, -1, -1)));
}

/// Anthropic's `message_delta` may restate the input and cache counts of `message_start`:
/// they replace (a gateway added them up, doubling cache reads), and the cache writes are
/// reported apart.
#[tokio::test]
async fn anthropic_restated_counts_are_replaced_not_added() {
    let case = Case::named("anthropic_restated");
    let (report, _) = run(&case, &[case.bytes], false).await;
    let usage = report.usage.unwrap();
    assert_eq!(usage.input_tokens, Some(9), "not 18");
    assert_eq!(usage.cached_input_tokens, Some(20480), "not 40960");
    assert_eq!(
        usage.output_tokens,
        Some(58),
        "the delta's output, not the placeholder"
    );
    assert_eq!(usage.total_tokens, None, "Anthropic sends no total");
    assert_eq!(
        report.extensions.get::<CacheCreationInputTokens>(),
        Some(&CacheCreationInputTokens(1536)),
        "not 3072"
    );
}

/// Counts that appear only in `message_delta` are kept (a gateway dropped them), and counts
/// it leaves out or sends as `null` keep their `message_start` value.
#[tokio::test]
async fn anthropic_counts_only_in_message_delta_are_kept() {
    let stream: &'static [u8] = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_x\",\"model\":\"claude\",\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"input_tokens\":null,\"cache_read_input_tokens\":4096,\"cache_creation_input_tokens\":512,\"output_tokens\":6}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    )
    .as_bytes();
    let mut case = Case::named("anthropic");
    case.bytes = stream;
    let (report, _) = run(&case, &[stream], false).await;
    let usage = styled(u(7, 6, -1, 4096, -1), UsageStyle::Anthropic, Some(512));
    assert_eq!(report.usage, Some(usage));
    assert_eq!(
        report.extensions.get::<CacheCreationInputTokens>(),
        Some(&CacheCreationInputTokens(512))
    );
    assert_eq!(report.finish_reason.as_deref(), Some("end_turn"));
}

/// vLLM's `continuous_usage_stats` puts the running total on every chunk: the last one
/// wins (adding them up would say 14 output tokens for 4).
#[tokio::test]
async fn vllm_continuous_usage_last_value_wins() {
    let case = Case::named("vllm_continuous");
    let (report, _) = run(&case, &case.split_events(), false).await;
    let usage = report.usage.unwrap();
    assert_eq!(usage.output_tokens, Some(4));
    assert_eq!(usage.input_tokens, Some(42));
    assert_eq!(usage.total_tokens, Some(46));
    assert_eq!(usage.source, UsageSource::Reported);
}

/// The last `usageMetadata` of a Gemini stream wins too.
#[tokio::test]
async fn gemini_running_totals_last_value_wins() {
    let case = Case::named("gemini");
    let (report, _) = run(&case, &[case.bytes], false).await;
    let usage = styled(u(14, 9, 99, -1, 76), UsageStyle::Gemini, None);
    assert_eq!(report.usage, Some(usage), "not 42, 12, 282");
}

// ---------------------------------------------------------------------------------------
// Hiding injected usage
// ---------------------------------------------------------------------------------------

/// A gateway added `include_usage` the client did not ask for: the client does not see the
/// usage-only chunk, the report has its usage.
#[tokio::test]
async fn injected_usage_chunk_is_hidden_but_counted() {
    let case = Case::named("openai_chat");
    let events = case.split_events();
    let usage_chunk = events[7];
    assert!(
        usage_chunk.starts_with(b"data: {")
            && usage_chunk.windows(12).any(|w| w == b"\"choices\":[]")
    );
    let expected: Vec<u8> = events
        .iter()
        .filter(|e| **e != usage_chunk)
        .flat_map(|e| e.iter().copied())
        .collect();

    for chunks in [vec![case.bytes], events.clone()] {
        let (report, out) = run(&case, &chunks, true).await;
        assert_eq!(out.text(), String::from_utf8(expected.clone()).unwrap());
        assert!(out.text().ends_with("data: [DONE]\n\n"));
        case.check_complete(&report, "injected");
    }
    // Every split, too.
    for at in 1..case.bytes.len() {
        let (report, out) = run(&case, &cut(case.bytes, &[at]), true).await;
        assert_eq!(out.data, expected, "split at {at}");
        case.check_complete(&report, &format!("injected, split at {at}"));
    }
}

/// Without the marker, the usage chunk reaches the client: the client asked for it.
#[tokio::test]
async fn requested_usage_chunk_reaches_the_client() {
    let case = Case::named("openai_chat");
    let (report, out) = run(&case, &[case.bytes], false).await;
    assert_eq!(out.data, case.bytes);
    case.check_complete(&report, "not injected");
}

/// Usage on chunks that also carry choices cannot be removed without rewriting them: only
/// the usage-only chunk is hidden.
#[tokio::test]
async fn injected_usage_on_choice_chunks_is_forwarded() {
    let case = Case::named("vllm_continuous");
    let events = case.split_events();
    let (report, out) = run(&case, &[case.bytes], true).await;
    let expected: Vec<u8> = events
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 5)
        .flat_map(|(_, e)| e.iter().copied())
        .collect();
    assert_eq!(out.text(), String::from_utf8(expected).unwrap());
    case.check_complete(&report, "injected");

    let case = Case::named("openai_merged");
    let (report, out) = run(&case, &[case.bytes], true).await;
    assert_eq!(out.data, case.bytes);
    case.check_complete(&report, "injected");
}

/// Other formats have no usage-only chunk: the marker changes nothing.
#[tokio::test]
async fn injected_marker_leaves_other_formats_alone() {
    for case in [
        Case::named("anthropic"),
        Case::named("responses"),
        Case::named("gemini"),
    ] {
        let (report, out) = run(&case, &[case.bytes], true).await;
        assert_eq!(out.data, case.bytes, "{}", case.name);
        case.check_complete(&report, "injected");
    }
}

// ---------------------------------------------------------------------------------------
// Cut streams
// ---------------------------------------------------------------------------------------

/// An upstream failure after some content: the report has an estimate of the output.
#[tokio::test]
async fn upstream_error_after_content_is_estimated() {
    let case = Case::named("openai_chat");
    let events = case.split_events();
    let mut frames: Vec<support::body::Item> = events[..4]
        .iter()
        .map(|e| Ok(Frame::data(Bytes::from_static(e))))
        .collect();
    frames.push(Err(UpstreamFailed));
    let reports = Reports::default();
    let res = serve_with(
        case.layer(&reports),
        case.request(false),
        response("text/event-stream", FramesBody::new(frames, false)),
    )
    .await;
    collect(res.into_body()).await;
    let report = reports.one();
    assert_eq!(report.outcome, Outcome::UpstreamError);
    // "Café" (5 bytes), " au", " lait": 13 bytes, 4 tokens.
    let mut expected = Usage::default();
    expected.output_tokens = Some(4);
    expected.source = UsageSource::Estimated;
    assert_eq!(report.usage, Some(expected));
    assert_eq!(report.usage, case.usage_after(4, false));
}

/// An idle timeout after Anthropic's `message_start` and some text: the input is reported,
/// the output estimated.
#[tokio::test(start_paused = true)]
async fn deadline_keeps_reported_input_and_estimates_output() {
    let case = Case::named("anthropic");
    let events = case.split_events();
    let reports = Reports::default();
    let layer = SseLayer::new()
        .idle_timeout(Duration::from_secs(5))
        .observer(UsageObserver::default())
        .on_end(reports.sink());
    let (tx, body) = channel();
    let res = serve_with(
        layer,
        case.request(false),
        response("text/event-stream", body),
    )
    .await;
    for event in &events[..5] {
        tx.send(Ok(Frame::data(Bytes::from_static(event)))).unwrap();
    }
    let out = collect(res.into_body()).await;
    assert!(out.text().contains("idle_timeout"));
    let report = reports.one();
    assert_eq!(report.outcome, Outcome::IdleTimeout);
    let usage = report.usage.unwrap();
    assert_eq!(usage.input_tokens, Some(472));
    assert_eq!(usage.cached_input_tokens, Some(0));
    // "Hello", ", naïve" (8 bytes): 13 bytes, 4 tokens; not the placeholder 2.
    assert_eq!(usage.output_tokens, Some(4));
    assert_eq!(usage.source, UsageSource::Estimated);
    drop(tx);
}

/// An Anthropic stream that ends after two text deltas, without `message_delta` (a relay
/// closed it between events, or cut it in the middle of one): `message_start`'s
/// `output_tokens: 1` is a placeholder, not the output. The input is reported, the output
/// estimated from the text delivered, and the usage says so.
#[tokio::test]
async fn anthropic_cut_before_message_delta_estimates_the_output() {
    let case = Case::named("anthropic_error");
    let events = case.split_events();
    let clean: &'static [u8] = Box::leak(events[..4].concat().into_boxed_slice());
    let truncated: &'static [u8] = &case.bytes[..clean.len() + 20];
    for (stream, outcome) in [
        (clean, Outcome::Completed),
        (truncated, Outcome::UpstreamTruncated),
    ] {
        let reports = Reports::default();
        let res = serve_with(
            case.layer(&reports),
            case.request(false),
            response("text/event-stream", FramesBody::data(&[stream])),
        )
        .await;
        collect(res.into_body()).await;
        let report = reports.one();
        assert_eq!(report.outcome, outcome);
        assert_eq!(report.content_events, 2, "{outcome:?}");
        let usage = report.usage.expect("usage");
        assert_eq!(usage.input_tokens, Some(30), "{outcome:?}: reported");
        assert_eq!(usage.cached_input_tokens, Some(0), "{outcome:?}: reported");
        // "Partial", " answer": 14 bytes, 4 tokens.
        assert_eq!(
            usage.output_tokens,
            Some(4),
            "{outcome:?}: not the placeholder 1"
        );
        assert_eq!(usage.source, UsageSource::Estimated, "{outcome:?}");
        assert_eq!(report.finish_reason, None, "{outcome:?}");
    }
}

/// The same after an `event: error` mid-stream (Anthropic's `overloaded_error`): the
/// upstream ends cleanly, but no output count ever came.
#[tokio::test]
async fn anthropic_error_event_mid_stream_estimates_the_output() {
    let case = Case::named("anthropic_error");
    let (report, out) = run(&case, &[case.bytes], false).await;
    assert_eq!(out.data, case.bytes);
    assert_eq!(report.outcome, Outcome::ProviderError);
    assert_eq!(report.finish_reason.as_deref(), Some("overloaded_error"));
    let usage = report.usage.expect("usage");
    assert_eq!(usage.input_tokens, Some(30));
    assert_eq!(usage.output_tokens, Some(4), "not the placeholder 1");
    assert_eq!(usage.source, UsageSource::Estimated);

    // An error before any text: nothing to estimate from, so the output is unknown (and
    // the placeholder still not reported). The input stays, reported.
    let events = case.split_events();
    let stream: &'static [u8] = Box::leak([events[0], events[4]].concat().into_boxed_slice());
    let (report, _) = run(&case, &[stream], false).await;
    assert_eq!(report.finish_reason.as_deref(), Some("overloaded_error"));
    let usage = styled(u(30, -1, -1, 0, -1), UsageStyle::Anthropic, Some(0));
    assert_eq!(report.usage, Some(usage));
}

/// A completed stream that reported nothing has no usage: completed streams are never
/// estimated.
#[tokio::test]
async fn completed_stream_without_usage_has_none() {
    let mut case = Case::named("openai_chat");
    let events = case.split_events();
    let stream: Vec<u8> = events
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 7)
        .flat_map(|(_, e)| e.iter().copied())
        .collect();
    case.bytes = Box::leak(stream.into_boxed_slice());
    let (report, _) = run(&case, &[case.bytes], false).await;
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(report.usage, None);
    assert_eq!(report.finish_reason.as_deref(), Some("stop"));
}

/// `()` as the token counter turns estimates off.
#[tokio::test]
async fn unit_token_counter_never_estimates() {
    let case = Case::named("openai_chat");
    let reports = Reports::default();
    let layer = SseLayer::new()
        .observer(UsageObserver::new().token_counter(()))
        .on_end(reports.sink());
    let (tx, body) = channel();
    let res = serve_with(
        layer,
        case.request(false),
        response("text/event-stream", body),
    )
    .await;
    let mut body = res.into_body();
    for event in &case.split_events()[..4] {
        tx.send(Ok(Frame::data(Bytes::from_static(event)))).unwrap();
        while let Some(Some(frame)) = body.frame().now_or_never() {
            frame.unwrap();
        }
    }
    drop(body);
    assert_eq!(reports.one().usage, None);
}

// ---------------------------------------------------------------------------------------
// Draining after a disconnect
// ---------------------------------------------------------------------------------------

#[cfg(feature = "drain")]
mod drain {
    use super::*;

    /// Yield until the drain task made its report.
    async fn wait_for(reports: &Reports) -> StreamReport {
        for _ in 0..1000 {
            if reports.len() > 0 {
                return reports.one();
            }
            tokio::task::yield_now().await;
        }
        panic!("the drain task never reported");
    }

    /// The client goes away before the usage chunk; the layer keeps reading the upstream,
    /// and the report carries the provider's final usage.
    #[tokio::test(start_paused = true)]
    async fn drain_reports_the_final_usage_after_an_early_disconnect() {
        for case in [
            Case::named("openai_chat"),
            Case::named("anthropic"),
            Case::named("responses"),
            Case::named("vllm_continuous"),
        ] {
            let events = case.split_events();
            let reports = Reports::default();
            let layer = SseLayer::new()
                .drain_on_disconnect(Duration::from_secs(30))
                .observer(UsageObserver::default())
                .on_end(reports.sink());
            let (tx, body) = channel();
            let res = serve_with(
                layer,
                case.request(false),
                response("text/event-stream", body),
            )
            .await;
            let mut body = res.into_body();
            for event in &events[..3] {
                tx.send(Ok(Frame::data(Bytes::from_static(event)))).unwrap();
                while let Some(Some(frame)) = body.frame().now_or_never() {
                    frame.unwrap();
                }
            }
            drop(body);
            tokio::task::yield_now().await;
            assert_eq!(reports.len(), 0, "{}: reported while draining", case.name);

            tokio::time::sleep(Duration::from_secs(1)).await;
            for event in &events[3..] {
                tx.send(Ok(Frame::data(Bytes::from_static(event)))).unwrap();
            }
            drop(tx);
            let report = wait_for(&reports).await;
            assert_eq!(report.outcome, Outcome::ClientDisconnected, "{}", case.name);
            assert_eq!(report.usage, case.usage, "{}: the final usage", case.name);
            assert_eq!(
                report.finish_reason.as_deref(),
                case.finish,
                "{}",
                case.name
            );
            assert_eq!(report.events, case.events, "{}", case.name);
        }
    }

    /// The upstream stalls after the disconnect: at the drain limit, the report carries what
    /// was known (here an estimate).
    #[tokio::test(start_paused = true)]
    async fn drain_limit_reports_what_was_seen() {
        let case = Case::named("openai_chat");
        let events = case.split_events();
        let reports = Reports::default();
        let layer = SseLayer::new()
            .drain_on_disconnect(Duration::from_secs(30))
            .observer(UsageObserver::default())
            .on_end(reports.sink());
        let (tx, body) = channel();
        let res = serve_with(
            layer,
            case.request(false),
            response("text/event-stream", body),
        )
        .await;
        let mut body = res.into_body();
        tx.send(Ok(Frame::data(Bytes::from_static(events[0]))))
            .unwrap();
        while let Some(Some(frame)) = body.frame().now_or_never() {
            frame.unwrap();
        }
        drop(body);
        // Content arrives while draining, then nothing.
        tx.send(Ok(Frame::data(Bytes::from_static(events[1]))))
            .unwrap();
        tx.send(Ok(Frame::data(Bytes::from_static(events[2]))))
            .unwrap();
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert_eq!(reports.len(), 0, "reported before the drain limit");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let report = wait_for(&reports).await;
        assert_eq!(report.outcome, Outcome::ClientDisconnected);
        assert_eq!(report.usage, case.usage_after(3, false));
        assert_eq!(report.usage.unwrap().source, UsageSource::Estimated);
        drop(tx);
    }
}

// ---------------------------------------------------------------------------------------
// Extending
// ---------------------------------------------------------------------------------------

/// A closure put in front of the built-in extractors reads its own events; the others
/// still reach the built-in ones.
#[tokio::test]
async fn prepended_extractor_runs_first() {
    let stream: &'static [u8] = concat!(
        "event: stats\ndata: {\"tokens\":21}\n\n",
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\n\n",
    )
    .as_bytes();
    let reports = Reports::default();
    let observer = UsageObserver::new().prepend_extractor(
        |event: &EventRef<'_>, _: Provider, state: &mut UsageState| {
            if event.event_bytes() != b"stats" {
                return false;
            }
            let value: Value = serde_json::from_slice(event.data_bytes()).unwrap();
            let mut usage = Usage::default();
            usage.output_tokens = value["tokens"].as_u64();
            state.update(usage);
            state.set_finish_reason("custom");
            true
        },
    );
    let layer = SseLayer::new().observer(observer).on_end(reports.sink());
    let res = serve_with(
        layer,
        Request::new(Empty::new()),
        response("text/event-stream", FramesBody::data(&[stream])),
    )
    .await;
    collect(res.into_body()).await;
    let report = reports.one();
    assert_eq!(report.usage, Some(u(3, 21, -1, -1, -1)));
    assert_eq!(report.finish_reason.as_deref(), Some("custom"));
}

/// Replacing the extractors with `()` reads nothing.
#[tokio::test]
async fn unit_extractor_reads_nothing() {
    let case = Case::named("openai_chat");
    let reports = Reports::default();
    let layer = SseLayer::new()
        .observer(UsageObserver::new().extractor(()))
        .on_end(reports.sink());
    let res = serve_with(
        layer,
        case.request(true),
        response("text/event-stream", FramesBody::data(&[case.bytes])),
    )
    .await;
    let out = collect(res.into_body()).await;
    assert_eq!(
        out.data, case.bytes,
        "nothing marked usage-only, nothing hidden"
    );
    let report = reports.one();
    assert_eq!(report.usage, None);
    assert_eq!(report.finish_reason, None);
}

/// Later observers see the usage as soon as it is known.
#[tokio::test]
async fn later_observers_see_usage_during_the_stream() {
    #[derive(Debug, Clone, Default)]
    struct Peek(Vec<Option<u64>>);
    #[derive(Debug, Clone)]
    struct Seen(Vec<Option<u64>>);
    impl Observer for Peek {
        fn on_event(&mut self, _: &EventRef<'_>, cx: &mut EventContext<'_>) {
            let output = cx.report().usage.and_then(|u| u.output_tokens);
            self.0.push(output);
        }
        fn on_end(&mut self, report: &mut StreamReport) {
            report.extensions.insert(Seen(self.0.clone()));
        }
    }
    let case = Case::named("vllm_continuous");
    let reports = Reports::default();
    let layer = SseLayer::new()
        .observer((UsageObserver::default(), Peek::default()))
        .on_end(reports.sink());
    let res = serve_with(
        layer,
        case.request(false),
        response("text/event-stream", FramesBody::data(&[case.bytes])),
    )
    .await;
    collect(res.into_body()).await;
    let report = reports.one();
    let seen = &report.extensions.get::<Seen>().unwrap().0;
    assert_eq!(
        seen,
        &[
            Some(0),
            Some(1),
            Some(2),
            Some(3),
            Some(4),
            Some(4),
            Some(4)
        ]
    );
}

/// Without a path hint and without `event:` lines (a relay that drops them), the formats
/// that name their type in the data are recognised from it: the report is the one of the
/// named stream.
#[tokio::test]
async fn data_only_events_without_a_path_hint() {
    for name in ["responses_data_only", "anthropic_data_only"] {
        let mut case = Case::named(name);
        case.path = "/relay";
        let (report, out) = run(&case, &[case.bytes], false).await;
        assert_eq!(out.data, case.bytes, "{name}: forwarded as is");
        case.check_complete(&report, "without a path hint");
    }
}

/// The data-only transcripts are the named ones, `event:` lines dropped.
#[test]
fn data_only_fixtures_are_the_named_ones_without_event_lines() {
    for (named, data_only) in [
        ("anthropic", "anthropic_data_only"),
        ("responses", "responses_data_only"),
    ] {
        let stripped: String = std::str::from_utf8(Case::named(named).bytes)
            .unwrap()
            .lines()
            .filter(|line| !line.starts_with("event: "))
            .map(|line| format!("{line}\n"))
            .collect();
        assert_eq!(
            stripped.as_bytes(),
            Case::named(data_only).bytes,
            "{data_only}"
        );
    }
}

/// A data-only Anthropic stream behind a first-event timeout: its text deltas are content,
/// so they meet the deadline (the stream is not cut with `first_event_timeout` long after
/// the client got text), and the time to first token is recorded.
#[tokio::test(start_paused = true)]
async fn data_only_content_meets_the_first_event_timeout() {
    let case = Case::named("anthropic_data_only");
    let events = case.split_events();
    let reports = Reports::default();
    let layer = SseLayer::new()
        .first_event_timeout(Duration::from_secs(10))
        .observer((UsageObserver::default(), TimingObserver::default()))
        .on_end(reports.sink());
    let (tx, body) = channel();
    let res = serve_with(
        layer,
        case.request(false),
        response("text/event-stream", body),
    )
    .await;
    let send = move |events: &[&'static [u8]]| {
        for event in events {
            // The layer may have cut the stream and dropped the upstream already.
            let _ = tx.send(Ok(Frame::data(Bytes::from_static(event))));
        }
    };
    let driver = tokio::spawn(async move {
        // `message_start`, `content_block_start`, a ping: not content.
        tokio::time::sleep(Duration::from_secs(1)).await;
        send(&events[..3]);
        // Two text deltas, 2 s after the request.
        tokio::time::sleep(Duration::from_secs(1)).await;
        send(&events[3..5]);
        // The rest well after the first-event deadline.
        tokio::time::sleep(Duration::from_secs(20)).await;
        send(&events[5..]);
    });
    let out = collect(res.into_body()).await;
    driver.await.unwrap();
    assert!(
        !out.text().contains("first_event_timeout"),
        "cut after the client got text: {}",
        out.text()
    );
    assert_eq!(out.data, case.bytes, "forwarded whole, nothing added");
    let report = reports.one();
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(report.provider, Provider::Anthropic);
    assert_eq!(report.content_events, 3);
    let timing = report.timing.expect("timing");
    assert_eq!(timing.time_to_first_token, Some(Duration::from_secs(2)));
    assert_eq!(timing.decode_time, Some(Duration::from_secs(20)));
    assert_eq!(report.usage, case.usage);
}

/// The layer clones the observer per request and moves it across threads.
#[test]
fn observer_is_clone_default_send_static() {
    fn check<T: Clone + Default + Send + Sync + 'static>() {}
    check::<UsageObserver>();
    fn check_custom<T: Clone + Send + 'static>(_: &T) {}
    let custom = UsageObserver::new()
        .prepend_extractor(|_: &EventRef<'_>, _: Provider, _: &mut UsageState| false)
        .token_counter(());
    check_custom(&custom);
    assert!(format!("{custom:?}").starts_with("UsageObserver"));
}

// ---------------------------------------------------------------------------------------
// Hostile input
// ---------------------------------------------------------------------------------------

/// Malformed JSON, wrong types, huge, negative and fractional numbers: the stream passes
/// untouched, and each count keeps its last good value.
#[tokio::test]
async fn hostile_usage_keeps_the_last_good_values() {
    let stream: &'static [u8] = concat!(
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":20,\"total_tokens\":30}}\n\n",
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":-1,\"completion_tokens\":1e300,\"total_tokens\":18446744073709551616}}\n\n",
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":\"11\",\"completion_tokens\":[21],\"total_tokens\":{\"n\":31}}}\n\n",
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":12.5,\"completion_tokens\":true,\"total_tokens\":null}}\n\n",
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":13,\n\n",
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":14,\"prompt_tokens\":15}}\n\n",
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":[1,2,3]}\n\n",
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens_details\":7,\"completion_tokens_details\":{\"reasoning_tokens\":-3}}}\n\n",
        "data: {\"choices\":[{\"finish_reason\":{\"a\":1}}]}\n\n",
        "data: \u{0}\u{1}\u{ff}{{{{[[[[\"usage\":{\n\n",
        "data: {\"usage\":{\"prompt_tokens\":99}\n\n",
        "data: [DONE]\n\n",
    )
    .as_bytes();
    let reports = Reports::default();
    let layer = SseLayer::new()
        .observer(UsageObserver::default())
        .on_end(reports.sink());
    let res = serve_with(
        layer,
        Request::post("/v1/chat/completions")
            .body(Empty::new())
            .unwrap(),
        response("text/event-stream", FramesBody::data(&[stream])),
    )
    .await;
    let out = collect(res.into_body()).await;
    assert_eq!(out.data, stream, "the stream is not disturbed");
    let report = reports.one();
    // The last event is a valid object prefix: `{"prompt_tokens":99}` parses although the
    // event is cut after it (only the usage object is read).
    assert_eq!(report.usage, Some(u(99, 20, 30, -1, -1)));
    assert_eq!(report.finish_reason, None);
}

/// A stream that changes format midway: the layer keeps the format it detected first;
/// events of the other format are read when they name themselves (Anthropic's and
/// Responses' event types), and ignored otherwise. Nothing panics, nothing is summed.
#[tokio::test]
async fn format_switch_midway_keeps_last_good_values() {
    let stream: &'static [u8] = concat!(
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6,\"total_tokens\":11}}\n\n",
        "data: {\"candidates\":[{\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":500}}\n\n",
        "data: {\"model\":\"x\",\"done\":true,\"prompt_eval_count\":700,\"eval_count\":800}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":7}}\n\n",
        "data: [DONE]\n\n",
    )
    .as_bytes();
    let reports = Reports::default();
    let layer = SseLayer::new()
        .observer(UsageObserver::default())
        .on_end(reports.sink());
    let res = serve_with(
        layer,
        Request::new(Empty::new()),
        response("text/event-stream", FramesBody::data(&[stream])),
    )
    .await;
    let out = collect(res.into_body()).await;
    assert_eq!(out.data, stream);
    let report = reports.one();
    assert_eq!(report.provider, Provider::OpenAiChat);
    // The style is the last reader's: here Anthropic's `message_delta`.
    let usage = styled(u(5, 7, 11, -1, -1), UsageStyle::Anthropic, None);
    assert_eq!(report.usage, Some(usage));
    assert_eq!(report.finish_reason.as_deref(), Some("end_turn"));
}

/// One OpenAI chunk kind for the property test below.
#[derive(Debug, Clone)]
enum Chunk {
    Content(String),
    Usage(u32, u32),
    UsageNull,
    BadUsage(u8),
    Finish(&'static str),
    Garbage(Vec<u8>),
}

impl Chunk {
    fn encode(&self) -> String {
        let head = "{\"object\":\"chat.completion.chunk\",\"model\":\"m\",";
        match self {
            Chunk::Content(text) => format!(
                "data: {head}\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}}}}],\"usage\":null}}\n\n",
                serde_json::to_string(text).unwrap()
            ),
            Chunk::Usage(p, c) => format!(
                "data: {head}\"choices\":[],\"usage\":{{\"prompt_tokens\":{p},\"completion_tokens\":{c}}}}}\n\n"
            ),
            Chunk::UsageNull => format!("data: {head}\"choices\":[],\"usage\":null}}\n\n"),
            Chunk::BadUsage(kind) => {
                let bad = match kind % 6 {
                    0 => "-7",
                    1 => "1e40",
                    2 => "3.5",
                    3 => "\"9\"",
                    4 => "{\"x\":[1,{\"y\":2}]}",
                    _ => "99999999999999999999999",
                };
                format!(
                    "data: {head}\"choices\":[],\"usage\":{{\"prompt_tokens\":{bad},\"completion_tokens\":{bad}}}}}\n\n"
                )
            }
            Chunk::Finish(reason) => format!(
                "data: {head}\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"{reason}\"}}]}}\n\n"
            ),
            Chunk::Garbage(bytes) => {
                let text: String = bytes
                    .iter()
                    .map(|b| match b % 8 {
                        0 => '{',
                        1 => '"',
                        2 => ':',
                        3 => '[',
                        4 => '\\',
                        5 => '}',
                        6 => ',',
                        _ => 'u',
                    })
                    .collect();
                format!("data: {{\"usage\":{text}\n\n")
            }
        }
    }
}

fn chunk() -> impl Strategy<Value = Chunk> {
    prop_oneof![
        "[a-zé ]{0,12}".prop_map(Chunk::Content),
        (any::<u32>(), any::<u32>()).prop_map(|(p, c)| Chunk::Usage(p, c)),
        Just(Chunk::UsageNull),
        any::<u8>().prop_map(Chunk::BadUsage),
        prop::sample::select(vec!["stop", "length", "tool_calls"]).prop_map(Chunk::Finish),
        prop::collection::vec(any::<u8>(), 0..24).prop_map(Chunk::Garbage),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever the chunks and their splits: one report, the stream untouched, usage and
    /// finish reason equal to the last valid values (never a sum), and an estimate only
    /// for a cut stream that reported no output.
    #[test]
    fn openai_streams_keep_the_last_valid_usage(
        chunks in prop::collection::vec(chunk(), 0..12),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        disconnect in any::<bool>(),
    ) {
        // A role chunk first, so that the format is known from the start.
        let role = "data: {\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}],\"usage\":null}\n\n";
        let stream: String = std::iter::once(role.to_string())
            .chain(chunks.iter().map(Chunk::encode))
            .collect();
        let bytes: &'static [u8] = Box::leak(stream.into_bytes().into_boxed_slice());
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len().max(1))).collect();
        cuts.sort_unstable();
        cuts.dedup();

        let mut input = None;
        let mut output = None;
        let mut finish = None;
        let mut text = 0;
        for chunk in &chunks {
            match chunk {
                Chunk::Usage(p, c) => {
                    input = Some(u64::from(*p));
                    output = Some(u64::from(*c));
                }
                Chunk::Finish(reason) => finish = Some(*reason),
                Chunk::Content(t) if output.is_none() => text += t.len(),
                _ => {}
            }
        }

        let report = runtime().block_on(async {
            let reports = Reports::default();
            let layer = SseLayer::new().observer(UsageObserver::default()).on_end(reports.sink());
            if disconnect {
                let (tx, body) = channel();
                let res = serve_with(layer, Request::new(Empty::new()), response("text/event-stream", body)).await;
                let mut body = res.into_body();
                let mut got = Vec::new();
                for chunk in cut(bytes, &cuts) {
                    tx.send(Ok(Frame::data(Bytes::from_static(chunk)))).unwrap();
                    while let Some(Some(frame)) = body.frame().now_or_never() {
                        got.extend_from_slice(&frame.unwrap().into_data().unwrap());
                    }
                }
                // Only whole events were sent.
                assert_eq!(got, bytes);
                drop(body);
            } else {
                let res = serve_with(
                    layer,
                    Request::new(Empty::new()),
                    response("text/event-stream", FramesBody::data(&cut(bytes, &cuts))),
                )
                .await;
                assert_eq!(collect(res.into_body()).await.data, bytes);
            }
            reports.one()
        });

        let mut expected = Usage::default();
        expected.input_tokens = input;
        expected.output_tokens = output;
        if output.is_none() && disconnect && text > 0 {
            expected.output_tokens = Some((text as u64).div_ceil(4));
            expected.source = UsageSource::Estimated;
        }
        let expected = (expected != Usage::default()).then_some(expected);
        prop_assert_eq!(report.usage, expected);
        prop_assert_eq!(report.finish_reason.as_deref(), finish);
    }
}
