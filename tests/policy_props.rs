//! Property test of acting on streams (issue 26): random OpenAI Chat streams, random
//! chunkings, random per-event transforms, with and without a holdback window. Whatever
//! they are, the client's bytes are exactly the transformed events in order, the digest is
//! the hash of those bytes, and the usage is the upstream's.

mod support;

use std::sync::Arc;

use http_body::Frame;
use proptest::prelude::*;
use sha2::{Digest as _, Sha256};
use support::body::{FramesBody, Reports, collect, response, serve};
use support::sse::split_at;
use tower_sse::policy::{Holdback, Policy, PolicyContext, Verdict};
use tower_sse::{DigestObserver, SseLayer, UsageObserver};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// What the policy does to the n-th upstream event.
#[derive(Debug, Clone, Copy)]
enum Act {
    Pass,
    Drop,
    /// Replace the text with its upper case (events without a text view pass).
    Upper,
}

/// One item of the upstream stream.
#[derive(Debug, Clone)]
enum Item {
    Content(String),
    Comment,
}

#[derive(Clone)]
struct Scripted {
    acts: Arc<Vec<Act>>,
    next: usize,
}

impl Policy for Scripted {
    fn on_event(&mut self, cx: &PolicyContext<'_>) -> Verdict {
        let act = self.acts.get(self.next).copied().unwrap_or(Act::Pass);
        self.next += 1;
        match act {
            Act::Pass => Verdict::Pass,
            Act::Drop => Verdict::Drop,
            Act::Upper => match cx.text() {
                Some(text) => cx
                    .replace_text(&text.to_uppercase())
                    .map_or(Verdict::Pass, Verdict::Replace),
                None => Verdict::Pass,
            },
        }
    }
}

fn chat(content: &str) -> String {
    let content = serde_json::Value::from(content);
    format!(
        "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{content}}}}}]}}\n\n"
    )
}

const USAGE: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":11,\"total_tokens\":14}}\n\n";
const DONE: &str = "data: [DONE]\n\n";

/// The upstream's events (comments aside) in order, and the whole stream.
fn upstream(items: &[Item]) -> (Vec<String>, String) {
    let mut events = Vec::new();
    let mut stream = String::new();
    for item in items {
        match item {
            Item::Content(text) => {
                let event = chat(text);
                stream.push_str(&event);
                events.push(event);
            }
            Item::Comment => stream.push_str(": c\n\n"),
        }
    }
    for tail in [USAGE, DONE] {
        stream.push_str(tail);
        events.push(tail.to_owned());
    }
    (events, stream)
}

/// What the client must receive: the model of the transforms.
fn expected(items: &[Item], acts: &[Act]) -> String {
    let mut out = String::new();
    let mut n = 0;
    let mut act = || {
        let a = acts.get(n).copied().unwrap_or(Act::Pass);
        n += 1;
        a
    };
    for item in items {
        match item {
            Item::Comment => out.push_str(": c\n\n"),
            Item::Content(text) => match act() {
                Act::Pass => out.push_str(&chat(text)),
                Act::Drop => {}
                Act::Upper if text.is_empty() => out.push_str(&chat(text)),
                Act::Upper => out.push_str(&chat(&text.to_uppercase())),
            },
        }
    }
    for tail in [USAGE, DONE] {
        if !matches!(act(), Act::Drop) {
            out.push_str(tail);
        }
    }
    out
}

fn items() -> impl Strategy<Value = Vec<Item>> {
    prop::collection::vec(
        prop_oneof![
            6 => "[a-z é\"\\\\\n]{0,8}".prop_map(Item::Content),
            1 => Just(Item::Comment),
        ],
        0..12,
    )
}

fn acts() -> impl Strategy<Value = Vec<Act>> {
    prop::collection::vec(
        prop_oneof![Just(Act::Pass), Just(Act::Drop), Just(Act::Upper)],
        0..16,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn the_client_gets_exactly_the_transformed_events(
        items in items(),
        acts in acts(),
        cuts in prop::collection::vec(0usize..2000, 0..12),
        holdback in 0usize..5,
    ) {
        let (_, stream) = upstream(&items);
        let mut cuts = cuts;
        cuts.sort_unstable();
        let chunks = split_at(stream.as_bytes(), &cuts);
        let want = expected(&items, &acts);
        let reports = Reports::default();
        let layer = SseLayer::new()
            .policy(Scripted { acts: Arc::new(acts), next: 0 })
            .holdback(Holdback::events(holdback))
            .observer((UsageObserver::new(), DigestObserver::new()))
            .on_end(reports.sink());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let got = runtime.block_on(async move {
            let frames = chunks.into_iter().map(|c| Ok(Frame::data(c))).collect();
            let body = serve(layer, response("text/event-stream", FramesBody::new(frames, false)))
                .await
                .into_body();
            collect(body).await
        });
        prop_assert_eq!(got.text(), want);
        let report = reports.one();
        let digest: [u8; 32] = Sha256::digest(&got.data).into();
        prop_assert_eq!(*report.digest.unwrap().as_bytes(), digest);
        let usage = report.usage.unwrap();
        prop_assert_eq!((usage.input_tokens, usage.output_tokens), (Some(3), Some(11)));
        let p = &report.policy;
        prop_assert_eq!(p.passed + p.replaced + p.dropped, report.events);
    }
}
