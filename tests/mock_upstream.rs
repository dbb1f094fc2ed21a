//! The mock LLM upstream (`tower-sse-mock`): every route streams spec-valid events with
//! consistent usage, and every control does what its docs say.
//!
//! Timing and stalls are checked in-process under paused tokio time; connection-level
//! behaviour (aborts, disconnects) over loopback with reqwest.

use std::error::Error as _;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_sse::sse::{Decoder, Item};
use tower_sse_mock::{
    Aborted, MockConfig, content, prompt_tokens, router, router_with_stats, spawn,
};

const CHAT: &str = "/v1/chat/completions";
const RESPONSES: &str = "/v1/responses";
const MESSAGES: &str = "/v1/messages";
const GEMINI_SSE: &str = "/v1beta/models/gemini-mock:streamGenerateContent?alt=sse";
const GEMINI_ARRAY: &str = "/v1beta/models/gemini-mock:streamGenerateContent";
const GEMINI_ONE: &str = "/v1beta/models/gemini-mock:generateContent";
const OLLAMA: &str = "/api/chat";

/// The SSE routes.
const SSE_ROUTES: [&str; 4] = [CHAT, RESPONSES, MESSAGES, GEMINI_SSE];

/// A decoded SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ev {
    event: String,
    data: String,
}

impl Ev {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {}", self.data))
    }
}

/// What one in-process request gave.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    frames: Vec<Bytes>,
    /// The body ended in an error (after `frames`).
    error: Option<axum::Error>,
}

impl Answer {
    fn bytes(&self) -> Vec<u8> {
        self.frames.concat()
    }

    fn text(&self) -> String {
        String::from_utf8(self.bytes()).unwrap()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes()).unwrap()
    }

    /// Decode as SSE; the stream must be spec-valid and end on an event boundary.
    fn events(&self) -> Vec<Ev> {
        let (events, truncated) = decode(&self.frames);
        assert!(!truncated, "the stream ended inside an event");
        events
    }
}

/// Decode SSE frames: the events and whether the input ended inside one.
fn decode(frames: &[Bytes]) -> (Vec<Ev>, bool) {
    let mut decoder = Decoder::new();
    let mut events = Vec::new();
    let mut take = |decoder: &mut Decoder| {
        for item in decoder.by_ref() {
            match item.expect("no oversized events") {
                Item::Event(e) => events.push(Ev {
                    event: e.event().into_owned(),
                    data: e.data().into_owned(),
                }),
                // A CRLF split between frames leaves its LF as an empty block.
                Item::Block(block) if !block.has_fields() => {}
                other => panic!("the mock sends only events, got {other:?}"),
            }
        }
    };
    for frame in frames {
        decoder.push(frame.clone());
        take(&mut decoder);
    }
    decoder.finish();
    take(&mut decoder);
    (events, decoder.is_truncated())
}

fn post(path: &str, body: &Value, headers: &[(&str, &str)]) -> Request<Body> {
    let mut request = Request::post(path).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Body::from(body.to_string())).unwrap()
}

/// Send one request to a fresh mock (so ids start at 1) and read the whole body.
async fn ask(config: MockConfig, path: &str, body: &Value, headers: &[(&str, &str)]) -> Answer {
    let response = router(config)
        .oneshot(post(path, body, headers))
        .await
        .unwrap();
    read(response).await
}

async fn read(response: http::Response<Body>) -> Answer {
    let (parts, mut body) = response.into_parts();
    let mut frames = Vec::new();
    let mut error = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => frames.push(frame.into_data().expect("data frames only")),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    Answer {
        status: parts.status,
        headers: parts.headers,
        frames,
        error,
    }
}

fn chat_body() -> Value {
    json!({
        "model": "gpt-mock",
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Say something."}]
    })
}

/// The prompt tokens the mock reports for this JSON body.
fn prompt_of(body: &Value) -> u64 {
    prompt_tokens(body.to_string().len())
}

/// Content text of a route's stream, joined from its content events.
fn streamed_text(path: &str, events: &[Ev]) -> String {
    events
        .iter()
        .filter(|e| e.data != "[DONE]")
        .filter_map(|e| {
            let v = e.json();
            if path == CHAT {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            } else if path == RESPONSES {
                (e.event == "response.output_text.delta")
                    .then(|| v["delta"].as_str().unwrap().to_owned())
            } else if path == MESSAGES {
                (e.event == "content_block_delta")
                    .then(|| v["delta"]["text"].as_str().unwrap().to_owned())
            } else {
                v["candidates"][0]["content"]["parts"][0]["text"]
                    .as_str()
                    .map(str::to_owned)
            }
        })
        .collect()
}

/// Content events of a route's stream.
fn content_events(path: &str, events: &[Ev]) -> usize {
    events
        .iter()
        .filter(|e| match path {
            CHAT => e.data.contains(r#""delta":{"content""#),
            RESPONSES => e.event == "response.output_text.delta",
            MESSAGES => e.event == "content_block_delta",
            _ => e.data.contains("candidates"),
        })
        .count()
}

// --- formats -----------------------------------------------------------------------------

#[tokio::test]
async fn chat_streams_role_content_finish_usage_and_done() {
    let body = chat_body();
    let answer = ask(MockConfig::new().tokens(5), CHAT, &body, &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["content-type"], "text/event-stream");
    let events = answer.events();
    assert_eq!(events.len(), 1 + 5 + 1 + 1 + 1);
    assert_eq!(events.last().unwrap().data, "[DONE]");

    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(Ev::json).collect();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], "chatcmpl-mock-1");
        assert_eq!(chunk["model"], "gpt-mock");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[6]["choices"][0]["finish_reason"], "stop");
    for chunk in &chunks[..7] {
        assert!(chunk["usage"].is_null() && chunk.as_object().unwrap().contains_key("usage"));
    }
    let usage_chunk = &chunks[7];
    assert_eq!(usage_chunk["choices"], json!([]));
    let prompt = prompt_of(&body);
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], prompt);
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 5);
    assert_eq!(usage_chunk["usage"]["total_tokens"], prompt + 5);
    assert_eq!(streamed_text(CHAT, &events), content(0, 5));
}

#[tokio::test]
async fn chat_without_include_usage_has_no_usage_at_all() {
    let body = json!({"model": "m", "stream": true});
    let events = ask(MockConfig::new().tokens(3), CHAT, &body, &[])
        .await
        .events();
    assert_eq!(events.len(), 1 + 3 + 1 + 1);
    assert!(events.iter().all(|e| !e.data.contains("usage")));
}

#[tokio::test]
async fn stream_false_answers_one_json_object_per_route() {
    let body = json!({"model": "m", "stream": false, "messages": []});
    let prompt = prompt_of(&body);
    let text = content(0, 4);
    let config = || MockConfig::new().tokens(4);

    let chat = ask(config(), CHAT, &body, &[]).await;
    assert_eq!(chat.headers["content-type"], "application/json");
    let chat = chat.json();
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["choices"][0]["message"]["content"], text.as_str());
    assert_eq!(chat["usage"]["total_tokens"], prompt + 4);

    let responses = ask(config(), RESPONSES, &body, &[]).await.json();
    assert_eq!(responses["object"], "response");
    assert_eq!(responses["status"], "completed");
    assert_eq!(responses["output"][0]["content"][0]["text"], text.as_str());
    assert_eq!(responses["usage"]["output_tokens"], 4);

    let message = ask(config(), MESSAGES, &body, &[]).await.json();
    assert_eq!(message["type"], "message");
    assert_eq!(message["content"][0]["text"], text.as_str());
    assert_eq!(message["usage"]["input_tokens"], prompt);

    let gemini = ask(config(), GEMINI_ONE, &body, &[]).await.json();
    assert_eq!(
        gemini["candidates"][0]["content"]["parts"][0]["text"],
        text.as_str()
    );
    assert_eq!(gemini["usageMetadata"]["candidatesTokenCount"], 4);

    let ollama = ask(config(), OLLAMA, &body, &[]).await.json();
    assert_eq!(ollama["done"], true);
    assert_eq!(ollama["message"]["content"], text.as_str());
    assert_eq!(ollama["eval_count"], 4);
}

#[tokio::test]
async fn responses_stream_lifecycle_deltas_and_completed_usage() {
    let body = json!({"model": "o-mock", "input": "hi"});
    let events = ask(MockConfig::new().tokens(3), RESPONSES, &body, &[])
        .await
        .events();
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    for (i, event) in events.iter().enumerate() {
        let v = event.json();
        assert_eq!(v["type"], event.event.as_str());
        assert_eq!(v["sequence_number"], i);
    }
    let created = events[0].json();
    assert_eq!(created["response"]["id"], "resp_mock_1");
    assert_eq!(created["response"]["model"], "o-mock");
    assert_eq!(events[7].json()["text"], content(0, 3).as_str());
    let completed = events[10].json();
    let prompt = prompt_of(&body);
    assert_eq!(completed["response"]["status"], "completed");
    assert_eq!(completed["response"]["usage"]["input_tokens"], prompt);
    assert_eq!(completed["response"]["usage"]["output_tokens"], 3);
    assert_eq!(completed["response"]["usage"]["total_tokens"], prompt + 3);
    assert_eq!(streamed_text(RESPONSES, &events), content(0, 3));
}

#[tokio::test]
async fn anthropic_stream_has_pings_and_cumulative_usage() {
    let body = json!({"model": "claude-mock", "max_tokens": 100, "messages": []});
    let events = ask(MockConfig::new().tokens(20), MESSAGES, &body, &[])
        .await
        .events();
    for event in &events {
        assert_eq!(event.json()["type"], event.event.as_str());
    }
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names[..3], ["message_start", "content_block_start", "ping"]);
    assert_eq!(
        names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    assert_eq!(
        names
            .iter()
            .filter(|n| **n == "content_block_delta")
            .count(),
        20
    );
    // One ping after the block start and one after every 8 deltas that more deltas follow.
    assert_eq!(names.iter().filter(|n| **n == "ping").count(), 3);

    let prompt = prompt_of(&body);
    let start = events[0].json();
    assert_eq!(start["message"]["id"], "msg_mock_1");
    assert_eq!(start["message"]["model"], "claude-mock");
    assert_eq!(start["message"]["usage"]["input_tokens"], prompt);
    assert_eq!(start["message"]["usage"]["output_tokens"], 1);
    let delta = events[events.len() - 2].json();
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 20);
    assert_eq!(delta["usage"]["input_tokens"], prompt);
    assert_eq!(streamed_text(MESSAGES, &events), content(0, 20));
}

#[tokio::test]
async fn gemini_sse_has_crlf_running_usage_and_a_finish_reason() {
    let body = json!({"contents": [{"parts": [{"text": "hi"}]}]});
    let answer = ask(MockConfig::new().tokens(4), GEMINI_SSE, &body, &[]).await;
    assert!(
        answer.text().contains("}\r\n\r\ndata: "),
        "Gemini ends lines with CRLF"
    );
    let events = answer.events();
    assert_eq!(events.len(), 4);
    let prompt = prompt_of(&body);
    for (i, event) in events.iter().enumerate() {
        let v = event.json();
        let so_far = i as u64 + 1;
        assert_eq!(v["usageMetadata"]["promptTokenCount"], prompt);
        assert_eq!(v["usageMetadata"]["candidatesTokenCount"], so_far);
        assert_eq!(v["usageMetadata"]["totalTokenCount"], prompt + so_far);
        assert_eq!(v["modelVersion"], "gemini-mock");
        assert_eq!(v["responseId"], "gemini-mock-1");
        let finished = v["candidates"][0].get("finishReason").is_some();
        assert_eq!(finished, i == 3);
    }
    assert_eq!(streamed_text(GEMINI_SSE, &events), content(0, 4));
}

#[tokio::test]
async fn gemini_without_alt_sse_streams_one_json_array() {
    let answer = ask(MockConfig::new().tokens(3), GEMINI_ARRAY, &json!({}), &[]).await;
    assert_eq!(answer.headers["content-type"], "application/json");
    assert_eq!(
        answer.frames.len(),
        3 + 1,
        "one frame per element, and the closing bracket"
    );
    let array = answer.json();
    let texts: String = array
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            v["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(texts, content(0, 3));
}

#[tokio::test]
async fn ollama_streams_ndjson_with_final_counts() {
    let body = json!({"model": "llama-mock", "messages": [{"role": "user", "content": "hi"}]});
    let answer = ask(MockConfig::new().tokens(6), OLLAMA, &body, &[]).await;
    assert_eq!(answer.headers["content-type"], "application/x-ndjson");
    let text = answer.text();
    assert!(text.ends_with('\n'));
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 7);
    assert!(
        lines[..6]
            .iter()
            .all(|l| l["done"] == false && l["model"] == "llama-mock")
    );
    let joined: String = lines
        .iter()
        .map(|l| l["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(joined, content(0, 6));
    let last = &lines[6];
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    assert_eq!(last["eval_count"], 6);
    assert_eq!(last["prompt_eval_count"], prompt_of(&body));
}

#[tokio::test]
async fn ollama_generate_puts_the_text_in_response() {
    let answer = ask(
        MockConfig::new().tokens(2),
        "/api/generate",
        &json!({"prompt": "hi"}),
        &[],
    )
    .await;
    let lines: Vec<Value> = answer
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let joined: String = lines
        .iter()
        .map(|l| l["response"].as_str().unwrap())
        .collect();
    assert_eq!(joined, content(0, 2));
}

#[tokio::test]
async fn ids_count_per_server_and_the_model_is_echoed_or_defaulted() {
    let app = router(MockConfig::new().model("default-model"));
    let mut ids = Vec::new();
    for body in [json!({"model": "first"}), json!({})] {
        let answer = read(app.clone().oneshot(post(CHAT, &body, &[])).await.unwrap()).await;
        let first = answer.events()[0].json();
        ids.push((first["id"].clone(), first["model"].clone()));
        assert_eq!(
            answer.headers["x-request-id"],
            format!("req_mock_{}", ids.len())
        );
    }
    assert_eq!(
        ids,
        [
            (json!("chatcmpl-mock-1"), json!("first")),
            (json!("chatcmpl-mock-2"), json!("default-model"))
        ]
    );
}

#[tokio::test]
async fn every_sse_route_streams_spec_valid_events_over_loopback() {
    let (_, server) = spawn(MockConfig::new().tokens(12)).await;
    let client = reqwest::Client::new();
    for path in SSE_ROUTES {
        let response = client
            .post(server.url(path))
            .body(chat_body().to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut frames = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(frame) = stream.next().await {
            frames.push(frame.expect("a clean end"));
        }
        let (events, truncated) = decode(&frames);
        assert!(!truncated, "{path}");
        assert_eq!(content_events(path, &events), 12, "{path}");
        assert_eq!(streamed_text(path, &events), content(0, 12), "{path}");
    }
    assert_eq!(server.stats().requests(), 4);
    server.stats().wait_open_streams(0).await;
    server.shutdown().await;
}

#[tokio::test]
async fn http2_clients_stream_and_see_aborts() {
    let (_, server) = spawn(MockConfig::new()).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = client
        .post(server.url(MESSAGES))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let frames: Vec<Bytes> = response
        .bytes_stream()
        .map(|frame| frame.expect("a clean end"))
        .collect()
        .await;
    assert_eq!(streamed_text(MESSAGES, &decode(&frames).0), content(0, 16));

    let response = client
        .post(server.url(CHAT))
        .header("x-mock-close-after", "3")
        .body("{}")
        .send()
        .await
        .unwrap();
    // (reqwest repeats the error of a reset HTTP/2 stream: stop at the first.)
    let mut stream = response.bytes_stream();
    let mut frames = Vec::new();
    while let Some(Ok(frame)) = stream.next().await {
        frames.push(frame);
    }
    let (events, truncated) = decode(&frames);
    assert_eq!(events.len(), 3);
    assert!(truncated, "HTTP/2: half an event, then the stream is reset");
    server.shutdown().await;
}

// --- controls ----------------------------------------------------------------------------

#[tokio::test]
async fn tokens_control_sets_the_content_events_and_the_header_wins() {
    for path in SSE_ROUTES {
        for tokens in [0u32, 1, 33] {
            let body = json!({"mock": {"tokens": tokens}});
            let answer = ask(MockConfig::new(), path, &body, &[]).await;
            let events = answer.events();
            let expected = if path == GEMINI_SSE {
                tokens.max(1)
            } else {
                tokens
            } as usize;
            assert_eq!(content_events(path, &events), expected, "{path} {tokens}");
            assert_eq!(
                streamed_text(path, &events),
                content(0, tokens),
                "{path} {tokens}"
            );
        }
        let body = json!({"mock": {"tokens": 2}});
        let events = ask(MockConfig::new(), path, &body, &[("x-mock-tokens", "7")])
            .await
            .events();
        assert_eq!(content_events(path, &events), 7, "{path}: the header wins");
    }
}

#[tokio::test]
async fn seed_control_changes_the_words() {
    let body = json!({"mock": {"seed": 99}});
    let events = ask(MockConfig::new().tokens(10), CHAT, &body, &[])
        .await
        .events();
    assert_eq!(streamed_text(CHAT, &events), content(99, 10));
    assert_ne!(content(99, 10), content(0, 10));
}

#[tokio::test(start_paused = true)]
async fn delay_paces_every_content_token_in_tokio_time() {
    let start = Instant::now();
    let response = router(MockConfig::new())
        .oneshot(post(
            CHAT,
            &json!({"mock": {"tokens": 4, "delay_ms": 100}}),
            &[],
        ))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    let mut body = response.into_body();
    let mut arrivals = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap().into_data().unwrap();
        arrivals.push((
            start.elapsed(),
            frame.windows(10).any(|w| w == br#""content":"#),
        ));
    }
    let content_times: Vec<Duration> = arrivals.iter().filter(|a| a.1).map(|a| a.0).collect();
    let ms = Duration::from_millis;
    // The role chunk's `"content":""` is at 0; then one token every 100 ms.
    assert_eq!(content_times, [ms(0), ms(100), ms(200), ms(300), ms(400)]);
    assert_eq!(
        arrivals.last().unwrap().0,
        ms(400),
        "finish and [DONE] follow the last token"
    );
}

#[tokio::test(start_paused = true)]
async fn headers_delay_holds_back_the_response_head() {
    let start = Instant::now();
    let response = router(MockConfig::new())
        .oneshot(post(
            MESSAGES,
            &json!({}),
            &[("x-mock-headers-delay-ms", "250")],
        ))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn stream_false_waits_out_the_whole_generation() {
    let start = Instant::now();
    let body =
        json!({"stream": false, "mock": {"tokens": 5, "delay_ms": 10, "headers_delay_ms": 50}});
    let answer = ask(MockConfig::new(), CHAT, &body, &[]).await;
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!(answer.json()["usage"]["completion_tokens"], 5);
}

#[tokio::test]
async fn random_chunking_yields_the_same_events_as_whole() {
    for path in SSE_ROUTES {
        let whole = ask(MockConfig::new().tokens(40), path, &chat_body(), &[]).await;
        for seed in 0..8 {
            let seed = seed.to_string();
            let headers = [
                ("x-mock-chunking", "random"),
                ("x-mock-seed", seed.as_str()),
            ];
            // Same words as the whole run: the seed is the server default there too.
            let config = MockConfig::new().tokens(40).seed(seed.parse().unwrap());
            let whole_seeded = ask(config.clone(), path, &chat_body(), &[]).await;
            let random = ask(config, path, &chat_body(), &headers).await;
            assert_eq!(random.bytes(), whole_seeded.bytes(), "{path} seed {seed}");
            assert_eq!(random.events(), whole_seeded.events(), "{path} seed {seed}");
            assert_ne!(
                random.frames.len(),
                whole_seeded.frames.len(),
                "{path} seed {seed}"
            );
            assert!(
                random.frames.iter().any(|f| f.len() == 1),
                "{path} seed {seed}: single bytes"
            );
            let longest_event = whole_seeded.frames.iter().map(Bytes::len).max().unwrap();
            assert!(
                random.frames.iter().any(|f| f.len() > longest_event),
                "{path} seed {seed}: frames spanning events"
            );
        }
        assert_eq!(
            whole.events().len(),
            whole.frames.len(),
            "{path}: whole is one frame per event"
        );
    }
}

#[tokio::test]
async fn fixed_chunking_cuts_frames_of_n_bytes() {
    let plain = ask(MockConfig::new(), OLLAMA, &json!({}), &[]).await;
    let sized = ask(
        MockConfig::new(),
        OLLAMA,
        &json!({}),
        &[("x-mock-chunking", "7")],
    )
    .await;
    assert_eq!(sized.bytes(), plain.bytes());
    let (last, full) = sized.frames.split_last().unwrap();
    assert!(full.iter().all(|f| f.len() == 7));
    assert!((1..=7).contains(&last.len()));
}

#[tokio::test(start_paused = true)]
async fn chunked_frames_never_hold_bytes_across_a_delay() {
    let body = json!({"mock": {"tokens": 3, "delay_ms": 10, "chunking": 4096}});
    let answer = ask(MockConfig::new(), CHAT, &body, &[]).await;
    // A frame before each token wait, the last token with finish and [DONE].
    assert_eq!(answer.frames.len(), 4);
    assert!(answer.frames[0].ends_with(b"\n\n"));
    answer.events();
}

#[tokio::test(start_paused = true)]
async fn stall_after_stops_sending_and_keeps_the_stream_open() {
    let (app, stats) = router_with_stats(MockConfig::new());
    let response = app
        .oneshot(post(RESPONSES, &json!({}), &[("x-mock-stall-after", "5")]))
        .await
        .unwrap();
    let mut body = response.into_body();
    let mut frames = Vec::new();
    for _ in 0..5 {
        frames.push(body.frame().await.unwrap().unwrap().into_data().unwrap());
    }
    assert_eq!(decode(&frames).0.len(), 5);
    // Nothing more for an hour of (paused) time, and the stream is still open.
    let next = tokio::time::timeout(Duration::from_secs(3600), body.frame()).await;
    assert!(next.is_err(), "a stalled stream sends nothing");
    assert!(!http_body::Body::is_end_stream(&body));
    assert_eq!(stats.open_streams(), 1);
    drop(body);
    assert_eq!(stats.open_streams(), 0);
}

#[tokio::test]
async fn stall_after_ends_when_the_client_goes_away() {
    let (_, server) = spawn(MockConfig::new()).await;
    let response = reqwest::Client::new()
        .post(server.url(MESSAGES))
        .header("x-mock-stall-after", "2")
        .body("{}")
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    let mut frames = Vec::new();
    while decode(&frames).0.len() < 2 {
        frames.push(stream.next().await.unwrap().unwrap());
    }
    assert_eq!(server.stats().open_streams(), 1);
    drop(stream);
    // The server notices the closed connection and drops the stalled body. (The timeout
    // only turns a hang into a failure; nothing is timed.)
    tokio::time::timeout(Duration::from_secs(30), server.stats().wait_open_streams(0))
        .await
        .expect("the stalled stream is dropped once the client disconnects");
}

#[tokio::test]
async fn error_after_sends_the_in_band_error_then_ends_cleanly() {
    for path in SSE_ROUTES {
        let answer = ask(
            MockConfig::new(),
            path,
            &json!({"mock": {"error_after": 3}}),
            &[],
        )
        .await;
        assert!(answer.error.is_none(), "{path}: a clean end");
        let events = answer.events();
        assert_eq!(events.len(), 4, "{path}");
        let error = events.last().unwrap();
        let v = error.json();
        match path {
            CHAT => assert_eq!(v["error"]["type"], "server_error"),
            RESPONSES => {
                assert_eq!(error.event, "error");
                assert_eq!(v["type"], "error");
                assert_eq!(v["sequence_number"], 3);
            }
            MESSAGES => {
                assert_eq!(error.event, "error");
                assert_eq!(v["error"]["type"], "overloaded_error");
            }
            _ => assert_eq!(v["error"]["code"], 500),
        }
    }
    let ollama = ask(
        MockConfig::new(),
        OLLAMA,
        &json!({}),
        &[("x-mock-error-after", "2")],
    )
    .await;
    let text = ollama.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(serde_json::from_str::<Value>(lines[2]).unwrap()["error"].is_string());
}

#[tokio::test]
async fn a_fault_beyond_the_end_fires_after_the_last_event() {
    let answer = ask(
        MockConfig::new().tokens(1),
        CHAT,
        &json!({"mock": {"error_after": 1000}}),
        &[],
    )
    .await;
    let events = answer.events();
    assert_eq!(events[events.len() - 2].data, "[DONE]");
    assert!(events.last().unwrap().json()["error"].is_object());
}

#[tokio::test]
async fn close_after_sends_half_an_event_then_fails_the_body() {
    let answer = ask(
        MockConfig::new(),
        CHAT,
        &json!({}),
        &[("x-mock-close-after", "3")],
    )
    .await;
    let error = answer.error.as_ref().expect("the body ends in an error");
    assert!(
        error.source().is_some_and(|e| e.is::<Aborted>()),
        "{error:?}"
    );
    let (events, truncated) = decode(&answer.frames);
    assert_eq!(events.len(), 3);
    assert!(truncated, "half of the fourth event was sent");
}

#[tokio::test]
async fn close_after_aborts_the_connection_mid_event() {
    for path in [CHAT, MESSAGES, OLLAMA] {
        // A fresh server per path, so the ids match the in-process reference below.
        let (_, server) = spawn(MockConfig::new()).await;
        let response = reqwest::Client::new()
            .post(server.url(path))
            .header("x-mock-close-after", "2")
            .header("x-mock-chunking", "random")
            .body("{}")
            .send()
            .await
            .unwrap();
        let mut stream = response.bytes_stream();
        let mut bytes = Vec::new();
        let mut failed = false;
        while let Some(frame) = stream.next().await {
            match frame {
                Ok(frame) => bytes.extend_from_slice(&frame),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed, "{path}: the body must not end cleanly");
        let complete = ask(MockConfig::new(), path, &json!({}), &[]).await.bytes();
        // The first two events whole, then a strict prefix of the third.
        assert!(complete.starts_with(&bytes), "{path}");
        let separator: &[u8] = if path == OLLAMA { b"\n" } else { b"\n\n" };
        let ends = bytes
            .windows(separator.len())
            .filter(|w| *w == separator)
            .count();
        assert_eq!(ends, 2, "{path}");
        assert!(!bytes.ends_with(separator), "{path}: cut inside an event");
        server.shutdown().await;
    }
}

#[tokio::test]
async fn status_control_answers_the_api_error_body() {
    let cases = [
        (CHAT, "429"),
        (RESPONSES, "500"),
        (MESSAGES, "529"),
        (GEMINI_SSE, "503"),
        (OLLAMA, "404"),
    ];
    for (path, status) in cases {
        let answer = ask(
            MockConfig::new(),
            path,
            &json!({}),
            &[("x-mock-status", status)],
        )
        .await;
        assert_eq!(answer.status.as_str(), status, "{path}");
        assert_eq!(answer.headers["content-type"], "application/json");
        let v = answer.json();
        match path {
            CHAT | RESPONSES => {
                assert!(v["error"]["message"].is_string() && v["error"]["type"].is_string())
            }
            MESSAGES => {
                assert_eq!(v["type"], "error");
                assert_eq!(v["error"]["type"], "overloaded_error");
            }
            GEMINI_SSE => assert_eq!(v["error"]["status"], "UNAVAILABLE"),
            _ => assert!(v["error"].is_string()),
        }
    }
    let limited = ask(
        MockConfig::new(),
        CHAT,
        &json!({"mock": {"status": 429}}),
        &[],
    )
    .await;
    assert_eq!(limited.headers["retry-after"], "1");
    let ok = ask(
        MockConfig::new().status(500),
        CHAT,
        &json!({}),
        &[("x-mock-status", "none")],
    )
    .await;
    assert_eq!(
        ok.status,
        StatusCode::OK,
        "a request can lift a server default"
    );
    ok.events();
}

#[tokio::test]
async fn bad_controls_and_bodies_are_refused_with_400() {
    for (body, headers) in [
        (json!({"mock": {"tokens": "many"}}), vec![]),
        (json!({"mock": {"tokenz": 1}}), vec![]),
        (json!({}), vec![("x-mock-chunking", "0")]),
        (json!({}), vec![("x-mock-unknown", "1")]),
        (json!([1, 2]), vec![]),
    ] {
        let answer = ask(MockConfig::new(), MESSAGES, &body, &headers).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body} {headers:?}");
        assert_eq!(answer.json()["error"]["type"], "invalid_request_error");
    }
}

#[tokio::test]
async fn unknown_paths_are_404() {
    for path in ["/v1/nothing", "/v1beta/models/x:countTokens"] {
        let answer = ask(MockConfig::new(), path, &json!({}), &[]).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
    }
}
