//! Inputs shared by the benchmarks and the allocation tests: a realistic OpenAI chat
//! completion stream and the ways an upstream may chunk it. Deterministic, so runs are
//! comparable. The benchmarks include this file as their `common` module
//! (`#[path = "../tests/support/inputs.rs"]`), with [`drive`] inside it.

#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;

#[path = "drive.rs"]
pub mod drive;

/// Words the fake model "generates".
const WORDS: &[&str] = &[
    " The",
    " quick",
    " brown",
    " fox",
    " jumps",
    " over",
    " the",
    " lazy",
    " dog",
    ",",
    " and",
    " then",
    " it",
    " writes",
    " a",
    " streaming",
    " response",
    " token",
    " by",
    " token",
    ".",
    " Latency",
    " matters",
    " here",
];

/// One `chat.completion.chunk` SSE event (about 200 to 230 bytes).
pub fn chat_chunk(i: usize, delta: &str, finish: Option<&str>) -> String {
    let finish = finish.map_or("null".to_string(), |f| format!("\"{f}\""));
    format!(
        "data: {{\"id\":\"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT\",\"object\":\"chat.completion.chunk\",\
         \"created\":{created},\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_06737a9306\",\
         \"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}]}}\n\n",
        created = 1_741_569_952 + i / 50,
    )
}

/// The events of a 200-chunk completion: a role chunk, 198 content chunks, a finish chunk,
/// the usage-only chunk and `data: [DONE]` (202 events, about 43 KB).
pub fn chat_events() -> Vec<String> {
    let mut events = Vec::with_capacity(202);
    events.push(chat_chunk(0, r#"{"role":"assistant","content":""}"#, None));
    for i in 1..199 {
        let word = WORDS[i % WORDS.len()];
        events.push(chat_chunk(i, &format!(r#"{{"content":"{word}"}}"#), None));
    }
    events.push(chat_chunk(199, "{}", Some("stop")));
    events.push(
        "data: {\"id\":\"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT\",\"object\":\"chat.completion.chunk\",\
         \"created\":1741569955,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_06737a9306\",\
         \"choices\":[],\"usage\":{\"prompt_tokens\":1117,\"completion_tokens\":199,\"total_tokens\":1316,\
         \"prompt_tokens_details\":{\"cached_tokens\":1024,\"audio_tokens\":0},\
         \"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0}}}\n\n"
            .to_string(),
    );
    events.push("data: [DONE]\n\n".to_string());
    events
}

/// Input (a): one `Bytes` per event, all slices of one buffer, as hyper hands them out.
pub fn one_bytes_per_event() -> Vec<Bytes> {
    let events = chat_events();
    let all = Bytes::from(events.concat());
    let mut chunks = Vec::with_capacity(events.len());
    let mut at = 0;
    for event in &events {
        chunks.push(all.slice(at..at + event.len()));
        at += event.len();
    }
    chunks
}

/// Input (b): the same bytes in alternating 7- and 61-byte chunks.
pub fn split_7_61() -> Vec<Bytes> {
    let all = Bytes::from(chat_events().concat());
    let mut chunks = Vec::new();
    let mut at = 0;
    let mut small = true;
    while at < all.len() {
        let end = (at + if small { 7 } else { 61 }).min(all.len());
        chunks.push(all.slice(at..end));
        at = end;
        small = !small;
    }
    chunks
}

/// The 200 content events repeated to at least `size` bytes.
pub fn repeated_events(size: usize) -> (Bytes, usize) {
    let events = chat_events();
    let body: String = events[..200].concat();
    let mut out = String::with_capacity(size + body.len());
    let mut count = 0;
    while out.len() < size {
        out.push_str(&body);
        count += 200;
    }
    (Bytes::from(out), count)
}

/// `input` cut into chunks of `size` bytes (slices, no copies).
pub fn chunks_of(input: &Bytes, size: usize) -> Vec<Bytes> {
    (0..input.len())
        .step_by(size)
        .map(|at| input.slice(at..(at + size).min(input.len())))
        .collect()
}

/// Input (d): one event whose single data line is `size` bytes.
pub fn one_huge_line(size: usize) -> Bytes {
    let mut out = Vec::with_capacity(size + 16);
    out.extend_from_slice(b"data: ");
    out.extend((0..size - 6).map(|i| b"QUJDREVGR0hJSktMTU5PUA=="[i % 24]));
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// Total bytes of a chunk list.
pub fn total_len(chunks: &[Bytes]) -> usize {
    chunks.iter().map(Bytes::len).sum()
}
