//! Per-event cost of acting on a stream (issue 26), for callgrind instruction counts: exact
//! under load, where wall-clock timings on a shared machine are not.
//!
//! `cargo bench --bench policy -- VARIANT STREAMS [REPEAT]` drives STREAMS copies of the
//! 200-event chat stream (one upstream frame per event; its content events REPEAT times)
//! through the layer, polled by hand as hyper
//! would, and exits. VARIANT is `none` (no policy: the observers' path alone), `pass` (a
//! policy that passes every event), `redact` (one literal pattern over each content
//! event's text), `holdback4` (`pass` with a 4-event holdback window), or the gateway's
//! `--redact REGEX` with one pattern, [`SECRET_PATTERN`], built as the gateway builds it
//! (its policy and the holdback window the pattern's longest match sizes, 7 events):
//! `regex` over the chat stream, where it never matches, and `regex-match` over the same
//! stream with one content event's word (of the same length) a secret it matches, once
//! per 200 content events; `regex-nohold` is `regex` without the holdback (its search
//! alone, against `redact`'s). Under
//! `valgrind --tool=callgrind`, the difference between two STREAMS counts divided by the
//! extra events is the per-event cost (tools/scripts/policy-instructions.sh).

#[path = "../tests/support/inputs.rs"]
mod common;

use std::time::Duration;

use regex::Regex;
use tower_sse::policy::{Held, Holdback, Policy, PolicyContext, StopReason, Verdict};
use tower_sse::{KeepAliveConfig, SseLayer};

use common::drive::{drain, through, upstream};

#[derive(Clone)]
struct PassAll;

impl Policy for PassAll {
    fn on_event(&mut self, _: &PolicyContext<'_>) -> Verdict {
        Verdict::Pass
    }
}

#[derive(Clone)]
struct Redact(&'static str);

impl Policy for Redact {
    fn on_event(&mut self, cx: &PolicyContext<'_>) -> Verdict {
        let needle = self.0;
        cx.redact("[redacted]", |text| {
            text.match_indices(needle)
                .map(|(at, m)| at..at + m.len())
                .collect()
        })
        .map_or(Verdict::Pass, Verdict::Replace)
    }
}

/// The `--redact` pattern of the `regex` variants: an API-key-like token, as an operator
/// would write it (its longest match, 7 bytes, sizes a 7-event holdback).
const SECRET_PATTERN: &str = "sk-[0-9]{4}";

/// What `regex-match` writes in one content event: a word of the same length as the one it
/// replaces (`" matters"`), so that the stream's bytes only change where it is redacted.
const SECRET_WORD: &str = " sk-1234";

/// The content event that carries [`SECRET_WORD`] in `regex-match` (its word is
/// `" matters"` in every stream).
const SECRET_EVENT: usize = 94;

/// What the gateway's `--redact` turns a match into.
const REDACTED: &str = "[REDACTED]";

/// The gateway's `--redact` / `--stop-on` policy (`examples/gateway/src/text_rules.rs`,
/// `TextRules`), copied: the gateway is a package that depends on this crate, so a bench of
/// this crate cannot link it. Keep the two in step.
#[derive(Clone)]
struct TextRules {
    redact: Vec<Regex>,
    stop_on: Vec<Regex>,
}

impl TextRules {
    /// As the gateway sizes it: as many events as the longest match has bytes, at most 64.
    fn holdback(&self) -> Holdback {
        const MAX_HOLDBACK_EVENTS: usize = 64;
        let events = self
            .redact
            .iter()
            .map(|re| {
                regex_syntax::parse(re.as_str())
                    .ok()
                    .and_then(|hir| hir.properties().maximum_len())
                    .unwrap_or(MAX_HOLDBACK_EVENTS)
            })
            .max()
            .unwrap_or(0);
        Holdback::events(events.min(MAX_HOLDBACK_EVENTS))
    }

    fn matches(&self, text: &str) -> Vec<std::ops::Range<usize>> {
        let mut ranges: Vec<_> = self
            .redact
            .iter()
            .flat_map(|re| re.find_iter(text).map(|m| m.range()))
            .filter(|r| !r.is_empty())
            .collect();
        ranges.sort_by_key(|r| (r.start, std::cmp::Reverse(r.end)));
        let mut merged: Vec<std::ops::Range<usize>> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if r.start < last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        merged
    }
}

impl Policy for TextRules {
    fn on_event(&mut self, cx: &PolicyContext<'_>) -> Verdict {
        let Some(text) = cx.text() else {
            return Verdict::Pass;
        };
        if let Some(i) = self.stop_on.iter().position(|re| re.is_match(&text)) {
            return Verdict::Stop(StopReason::new(format!("--stop-on rule {}", i + 1)));
        }
        match cx.redact(REDACTED, |text| self.matches(text)) {
            Some(bytes) => Verdict::Replace(bytes),
            None => Verdict::Pass,
        }
    }

    fn on_held(&mut self, held: &mut Held<'_>) -> Option<StopReason> {
        if !self.redact.is_empty() {
            held.redact(REDACTED, |text| self.matches(text));
        }
        None
    }
}

/// The rules `--redact SECRET_PATTERN` (and no `--stop-on`) give the gateway.
fn text_rules() -> TextRules {
    TextRules {
        redact: vec![Regex::new(SECRET_PATTERN).expect("the pattern compiles")],
        stop_on: Vec::new(),
    }
}

/// The gateway's layer with `--redact SECRET_PATTERN`: its policy and its holdback.
fn gateway_redact(layer: SseLayer) -> SseLayer {
    let rules = text_rules();
    let holdback = rules.holdback();
    layer.policy(rules).holdback(holdback)
}

/// The chat stream, one `Bytes` per event, with [`SECRET_WORD`] in content event
/// [`SECRET_EVENT`] when `secret`.
/// Slices of one buffer either way.
fn events(secret: bool) -> Vec<bytes::Bytes> {
    if !secret {
        return common::one_bytes_per_event();
    }
    let mut events = common::chat_events();
    let plain = common::chat_chunk(SECRET_EVENT, r#"{"content":" matters"}"#, None);
    assert_eq!(events[SECRET_EVENT], plain, "the word the secret replaces");
    events[SECRET_EVENT] = common::chat_chunk(
        SECRET_EVENT,
        &format!(r#"{{"content":"{SECRET_WORD}"}}"#),
        None,
    );
    // Slices of one buffer, as `one_bytes_per_event` (and hyper) hands them out.
    let all = bytes::Bytes::from(events.concat());
    let mut at = 0;
    events
        .iter()
        .map(|event| {
            at += event.len();
            all.slice(at - event.len()..at)
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let variant = args.first().map_or("none", String::as_str);
    let streams: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(100);
    let layer =
        SseLayer::new().keep_alive(KeepAliveConfig::new().interval(Duration::from_secs(15)));
    let layer = match variant {
        "none" => layer,
        "pass" => layer.policy(PassAll),
        "redact" => layer.policy(Redact("hunter2")),
        "holdback4" => layer.policy(PassAll).holdback(Holdback::events(4)),
        "regex" | "regex-match" => gateway_redact(layer),
        // The gateway's policy without its holdback (the gateway never runs it so): the
        // regex search alone, against `redact`'s literal one.
        "regex-nohold" => layer.policy(text_rules()),
        other => panic!("unknown variant {other}"),
    };
    // REPEAT (third argument, default 1): the 200 content events that many times, then the
    // usage chunk and `[DONE]`; the difference between two REPEAT values at the same STREAMS
    // is per content event alone (the per-stream cost cancels out).
    let repeat: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(1);
    let secret = variant == "regex-match";
    let one = events(secret);
    let (content, end) = one.split_at(200);
    let mut chunks = Vec::with_capacity(200 * repeat + end.len());
    for _ in 0..repeat {
        chunks.extend_from_slice(content);
    }
    chunks.extend_from_slice(end);
    // `regex-match`: each secret (one per REPEAT) becomes `[REDACTED]`.
    let redacted = if secret {
        repeat * (REDACTED.len() + 1 - SECRET_WORD.len())
    } else {
        0
    };
    let total = common::total_len(&chunks) + redacted;
    for _ in 0..streams {
        assert_eq!(drain(through(&layer, upstream(&chunks))), total);
    }
}
