//! Which API a stream speaks, and which of its events carry content.
//!
//! Detection is by request path first, then by the shape of the first events; it stops
//! looking once an event confirms a format. Content detection looks at bytes, not parsed
//! JSON: it finds a key and checks that its string value is not empty, which is a few
//! nanoseconds per event and exact for the compact JSON providers send. Override it with
//! [`SseLayer::content_predicate`](crate::SseLayer::content_predicate).

use std::fmt;
use std::sync::{Arc, LazyLock};

use memchr::memmem::Finder;

use crate::sse::EventRef;

/// The stream format of an LLM API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Provider {
    /// Not (yet) recognised: every event with data other than `[DONE]` counts as content.
    #[default]
    Unknown,
    /// OpenAI Chat Completions (`chat.completion.chunk`), also served by vLLM, SGLang,
    /// llama.cpp, Ollama's OpenAI endpoint and most gateways.
    OpenAiChat,
    /// OpenAI legacy Completions (`text_completion`).
    OpenAiCompletions,
    /// OpenAI Responses (`response.*` events).
    OpenAiResponses,
    /// Anthropic Messages (`message_start` … `message_stop`).
    Anthropic,
    /// Google Gemini `streamGenerateContent` with `alt=sse`.
    Gemini,
    /// Ollama's native API (`/api/chat`, `/api/generate`): NDJSON.
    Ollama,
}

impl Provider {
    /// The `gen_ai.provider.name` of the OpenTelemetry GenAI conventions.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::OpenAiChat | Self::OpenAiCompletions | Self::OpenAiResponses => "openai",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gcp.gemini",
            Self::Ollama => "ollama",
        }
    }

    /// The `gen_ai.operation.name` of the OpenTelemetry GenAI conventions.
    pub fn operation(self) -> &'static str {
        match self {
            Self::Gemini => "generate_content",
            Self::OpenAiCompletions => "text_completion",
            _ => "chat",
        }
    }

    /// A guess from the request path, before any event arrived.
    pub fn from_path(path: &str) -> Self {
        if path.ends_with("/chat/completions") {
            Self::OpenAiChat
        } else if path.ends_with("/responses") {
            Self::OpenAiResponses
        } else if path.ends_with("/messages") {
            Self::Anthropic
        } else if path.contains(":streamGenerateContent") {
            Self::Gemini
        } else if path.ends_with("/api/chat") || path.ends_with("/api/generate") {
            Self::Ollama
        } else if path.ends_with("/completions") {
            Self::OpenAiCompletions
        } else {
            Self::Unknown
        }
    }

    /// Recognise the format from one event, if the event is distinctive enough.
    pub fn from_event(event: &EventRef<'_>) -> Option<Self> {
        let kind = event.event_bytes();
        if kind.starts_with(b"response.") {
            return Some(Self::OpenAiResponses);
        }
        // Names only Anthropic uses. `ping` is not one of them: generic SSE and agent
        // servers send it too, and it must not pin the format of an OpenAI stream.
        if matches!(
            kind,
            b"message_start"
                | b"message_delta"
                | b"message_stop"
                | b"content_block_start"
                | b"content_block_delta"
                | b"content_block_stop"
        ) {
            return Some(Self::Anthropic);
        }
        let data = event.data_bytes();
        let has = |finder: &Finder<'_>| finder.find(data).is_some();
        if has(&keys::CHAT_CHUNK) {
            Some(Self::OpenAiChat)
        } else if has(&keys::TEXT_COMPLETION) {
            Some(Self::OpenAiCompletions)
        } else if has(&keys::CANDIDATES) || has(&keys::USAGE_METADATA) {
            Some(Self::Gemini)
        } else if has(&keys::DONE) && (has(&keys::MESSAGE) || has(&keys::RESPONSE)) {
            Some(Self::Ollama)
        } else {
            None
        }
    }

    /// Whether an event of this format carries content: text, reasoning or a tool-call
    /// delta. Role-only deltas, empty content, lifecycle events, pings and `[DONE]` do not.
    pub fn is_content(self, event: &EventRef<'_>) -> bool {
        self.content(event).is_some()
    }

    /// Whether an event carries content and, when the format puts it in one string value,
    /// where that text is in the event's data (JSON escapes not decoded).
    pub(crate) fn content(self, event: &EventRef<'_>) -> Option<Option<(usize, usize)>> {
        let data = event.data_bytes();
        let present = |finder: &Finder<'_>| finder.find(data).is_some().then_some(None);
        match self {
            Self::Anthropic => (event.event_bytes() == b"content_block_delta"
                && keys::SIGNATURE_DELTA.find(data).is_none())
            .then_some(None),
            Self::OpenAiResponses => event.event_bytes().ends_with(b".delta").then_some(None),
            Self::OpenAiChat => text_of(data, &keys::CONTENT)
                .or_else(|| text_of(data, &keys::REASONING_CONTENT))
                .or_else(|| text_of(data, &keys::REASONING))
                .or_else(|| text_of(data, &keys::REFUSAL))
                .map(Some)
                .or_else(|| present(&keys::TOOL_CALLS))
                .or_else(|| present(&keys::FUNCTION_CALL)),
            Self::OpenAiCompletions => text_of(data, &keys::TEXT).map(Some),
            Self::Gemini => text_of(data, &keys::TEXT)
                .map(Some)
                .or_else(|| present(&keys::FUNCTION_CALL_GEMINI)),
            Self::Ollama => text_of(data, &keys::CONTENT)
                .or_else(|| text_of(data, &keys::THINKING))
                .or_else(|| text_of(data, &keys::RESPONSE_TEXT))
                .map(Some)
                .or_else(|| present(&keys::TOOL_CALLS)),
            Self::Unknown => (!data.is_empty() && data != b"[DONE]").then_some(None),
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The response id and model an event names, if any.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ResponseMeta {
    pub(crate) id: Option<String>,
    pub(crate) model: Option<String>,
}

/// Find the response id and model in an event of this format. Parses only events that can
/// carry them, into small borrowed structs.
pub(crate) fn response_meta(provider: Provider, event: &EventRef<'_>) -> ResponseMeta {
    use serde::Deserialize;
    use std::borrow::Cow;

    #[derive(Deserialize)]
    struct Top<'a> {
        #[serde(borrow, default)]
        id: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        model: Option<Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    struct Anthropic<'a> {
        #[serde(borrow)]
        message: Top<'a>,
    }
    #[derive(Deserialize)]
    struct Responses<'a> {
        #[serde(borrow)]
        response: Top<'a>,
    }
    #[derive(Deserialize)]
    struct Gemini<'a> {
        #[serde(borrow, default, rename = "responseId")]
        id: Option<Cow<'a, str>>,
        #[serde(borrow, default, rename = "modelVersion")]
        model: Option<Cow<'a, str>>,
    }

    let data = event.data_bytes();
    if data.first() != Some(&b'{') {
        return ResponseMeta::default();
    }
    let owned = |top: Top<'_>| ResponseMeta {
        id: top.id.map(Cow::into_owned),
        model: top.model.map(Cow::into_owned),
    };
    match provider {
        Provider::Anthropic if event.event_bytes() == b"message_start" => {
            serde_json::from_slice::<Anthropic<'_>>(data)
                .map(|a| owned(a.message))
                .unwrap_or_default()
        }
        Provider::Anthropic => ResponseMeta::default(),
        Provider::OpenAiResponses if keys::RESPONSE.find(data).is_some() => {
            serde_json::from_slice::<Responses<'_>>(data)
                .map(|r| owned(r.response))
                .unwrap_or_default()
        }
        Provider::OpenAiResponses => ResponseMeta::default(),
        Provider::Gemini => serde_json::from_slice::<Gemini<'_>>(data)
            .map(|g| ResponseMeta {
                id: g.id.map(Cow::into_owned),
                model: g.model.map(Cow::into_owned),
            })
            .unwrap_or_default(),
        _ => serde_json::from_slice::<Top<'_>>(data)
            .map(owned)
            .unwrap_or_default(),
    }
}

/// The first non-empty string value of `key` (a quoted JSON key): the range of its text,
/// between the quotes, escapes not decoded.
fn text_of(data: &[u8], key: &Finder<'_>) -> Option<(usize, usize)> {
    key.find_iter(data).find_map(|at| {
        // `"key"` then optional whitespace, a colon, optional whitespace and a quote.
        let mut i = at + key.needle().len();
        let mut next = || {
            while data.get(i).is_some_and(u8::is_ascii_whitespace) {
                i += 1;
            }
            i += 1;
            data.get(i - 1).copied()
        };
        if next() != Some(b':') || next() != Some(b'"') {
            return None;
        }
        let start = i;
        // The closing quote: the first one not escaped by a backslash.
        let mut end = start;
        loop {
            match data.get(end)? {
                b'"' => break,
                b'\\' => end += 2,
                _ => end += 1,
            }
        }
        (end > start).then_some((start, end))
    })
}

mod keys {
    use super::{Finder, LazyLock};

    macro_rules! finders {
        ($($name:ident = $needle:expr;)*) => {
            $(pub(super) static $name: LazyLock<Finder<'static>> =
                LazyLock::new(|| Finder::new($needle));)*
        };
    }

    finders! {
        CHAT_CHUNK = b"\"chat.completion.chunk\"";
        TEXT_COMPLETION = b"\"text_completion\"";
        CANDIDATES = b"\"candidates\"";
        USAGE_METADATA = b"\"usageMetadata\"";
        DONE = b"\"done\"";
        MESSAGE = b"\"message\"";
        RESPONSE = b"\"response\"";
        SIGNATURE_DELTA = b"\"signature_delta\"";
        CONTENT = b"\"content\"";
        REASONING_CONTENT = b"\"reasoning_content\"";
        REASONING = b"\"reasoning\"";
        REFUSAL = b"\"refusal\"";
        TOOL_CALLS = b"\"tool_calls\"";
        FUNCTION_CALL = b"\"function_call\"";
        FUNCTION_CALL_GEMINI = b"\"functionCall\"";
        TEXT = b"\"text\"";
        THINKING = b"\"thinking\"";
        RESPONSE_TEXT = b"\"response\"";
    }
}

/// A user-supplied "is this event content?" predicate.
pub(crate) type ContentPredicate = Arc<dyn Fn(&EventRef<'_>, Provider) -> bool + Send + Sync>;

/// Per-stream format detection and content classification.
#[derive(Clone)]
pub(crate) struct Classifier {
    provider: Provider,
    confirmed: bool,
    predicate: Option<ContentPredicate>,
    /// JSON events still to look at for the response id and model.
    meta_budget: u8,
}

/// How many events may be parsed looking for the response id and model (some formats, like
/// Ollama's, never send an id).
const META_BUDGET: u8 = 4;

impl Classifier {
    pub(crate) fn new(hint: Provider, predicate: Option<ContentPredicate>) -> Self {
        Self {
            provider: hint,
            confirmed: false,
            predicate,
            meta_budget: META_BUDGET,
        }
    }

    /// Fill the report's response id and model from the first events that name them.
    #[inline]
    pub(crate) fn fill_meta(
        &mut self,
        event: &EventRef<'_>,
        id: &mut Option<String>,
        model: &mut Option<String>,
    ) {
        if self.meta_budget == 0 || (id.is_some() && model.is_some()) {
            return;
        }
        let meta = response_meta(self.provider, event);
        if meta != ResponseMeta::default() || event.data_bytes().first() == Some(&b'{') {
            self.meta_budget -= 1;
        }
        if id.is_none() {
            *id = meta.id;
        }
        if model.is_none() {
            *model = meta.model;
        }
    }

    pub(crate) fn provider(&self) -> Provider {
        self.provider
    }

    /// Look at one event: confirm the format if not done yet, and say whether it is content
    /// (and where its text is, when the format puts it in one string).
    #[inline]
    pub(crate) fn classify(&mut self, event: &EventRef<'_>) -> Option<Option<(usize, usize)>> {
        if !self.confirmed
            && let Some(provider) = Provider::from_event(event)
        {
            self.provider = provider;
            self.confirmed = true;
        }
        match &self.predicate {
            Some(predicate) => predicate(event, self.provider).then_some(None),
            None => self.provider.content(event),
        }
    }
}

impl fmt::Debug for Classifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Classifier")
            .field("provider", &self.provider)
            .field("confirmed", &self.confirmed)
            .field("custom_predicate", &self.predicate.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev<'a>(event: &'a str, data: &'a str) -> EventRef<'a> {
        EventRef::new(event.as_bytes(), data.as_bytes(), data.as_bytes())
    }

    #[test]
    fn openai_role_only_and_empty_deltas_are_not_content() {
        let p = Provider::OpenAiChat;
        assert!(!p.is_content(&ev(
            "",
            r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#
        )));
        assert!(!p.is_content(&ev(
            "",
            r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#
        )));
        assert!(!p.is_content(&ev("", r#"{"choices":[],"usage":{"prompt_tokens":1}}"#)));
        assert!(!p.is_content(&ev("", "[DONE]")));
        assert!(p.is_content(&ev("", r#"{"choices":[{"delta":{"content":"Hi"}}]}"#)));
        assert!(p.is_content(&ev("", r#"{"choices":[{"delta": {"content": "Hi"}}]}"#)));
        assert!(p.is_content(&ev(
            "",
            r#"{"choices":[{"delta":{"reasoning_content":"hmm"}}]}"#
        )));
        assert!(p.is_content(&ev(
            "",
            r#"{"choices":[{"delta":{"content":null,"tool_calls":[{"index":0}]}}]}"#
        )));
    }

    #[test]
    fn content_text_is_located_escapes_and_all() {
        let data = r#"{"choices":[{"delta":{"content":"say \"hi\" now"}}]}"#;
        let span = Provider::OpenAiChat
            .content(&ev("", data))
            .unwrap()
            .unwrap();
        assert_eq!(&data[span.0..span.1], r#"say \"hi\" now"#);
        let tool = r#"{"choices":[{"delta":{"content":null,"tool_calls":[{"index":0}]}}]}"#;
        assert_eq!(Provider::OpenAiChat.content(&ev("", tool)), Some(None));
        assert_eq!(
            Provider::OpenAiChat
                .content(&ev("", r#"{"choices":[{"delta":{"content":"unterminated"#)),
            None
        );
    }

    #[test]
    fn escaped_keys_inside_strings_do_not_count() {
        let p = Provider::OpenAiChat;
        let data = r#"{"choices":[{"delta":{"content":""}}],"x":"{\"content\":\"hi\"}"}"#;
        assert!(!p.is_content(&ev("", data)));
    }

    #[test]
    fn anthropic_counts_deltas_but_not_lifecycle_or_pings() {
        let p = Provider::Anthropic;
        assert!(!p.is_content(&ev("message_start", r#"{"type":"message_start"}"#)));
        assert!(!p.is_content(&ev("ping", r#"{"type":"ping"}"#)));
        assert!(p.is_content(&ev(
            "content_block_delta",
            r#"{"delta":{"type":"text_delta","text":"a"}}"#
        )));
        assert!(p.is_content(&ev(
            "content_block_delta",
            r#"{"delta":{"type":"thinking_delta","thinking":"a"}}"#
        )));
        assert!(!p.is_content(&ev(
            "content_block_delta",
            r#"{"delta":{"type":"signature_delta","signature":"x"}}"#
        )));
    }

    #[test]
    fn responses_counts_delta_events() {
        let p = Provider::OpenAiResponses;
        assert!(!p.is_content(&ev("response.created", "{}")));
        assert!(p.is_content(&ev("response.output_text.delta", "{}")));
        assert!(p.is_content(&ev("response.reasoning_summary_text.delta", "{}")));
        assert!(p.is_content(&ev("response.function_call_arguments.delta", "{}")));
        assert!(!p.is_content(&ev("response.completed", "{}")));
    }

    #[test]
    fn detection_from_events() {
        assert_eq!(
            Provider::from_event(&ev("message_start", "{}")),
            Some(Provider::Anthropic)
        );
        assert_eq!(
            Provider::from_event(&ev("response.created", "{}")),
            Some(Provider::OpenAiResponses)
        );
        assert_eq!(
            Provider::from_event(&ev("", r#"{"object":"chat.completion.chunk"}"#)),
            Some(Provider::OpenAiChat)
        );
        assert_eq!(
            Provider::from_event(&ev(
                "",
                r#"{"candidates":[{"content":{"parts":[{"text":"a"}]}}]}"#
            )),
            Some(Provider::Gemini)
        );
        assert_eq!(
            Provider::from_event(&ev(
                "",
                r#"{"model":"llama3","message":{"content":"a"},"done":false}"#
            )),
            Some(Provider::Ollama)
        );
        assert_eq!(Provider::from_event(&ev("", "hello")), None);
    }

    #[test]
    fn detection_from_paths() {
        assert_eq!(
            Provider::from_path("/v1/chat/completions"),
            Provider::OpenAiChat
        );
        assert_eq!(
            Provider::from_path("/v1/responses"),
            Provider::OpenAiResponses
        );
        assert_eq!(Provider::from_path("/v1/messages"), Provider::Anthropic);
        assert_eq!(
            Provider::from_path("/v1beta/models/gemini-2.5-flash:streamGenerateContent"),
            Provider::Gemini
        );
        assert_eq!(Provider::from_path("/api/chat"), Provider::Ollama);
        assert_eq!(
            Provider::from_path("/v1/completions"),
            Provider::OpenAiCompletions
        );
        assert_eq!(Provider::from_path("/other"), Provider::Unknown);
    }

    #[test]
    fn response_meta_per_format() {
        let meta = |p, e, d| response_meta(p, &ev(e, d));
        assert_eq!(
            meta(
                Provider::OpenAiChat,
                "",
                r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","model":"gpt-4o"}"#
            ),
            ResponseMeta {
                id: Some("chatcmpl-1".into()),
                model: Some("gpt-4o".into())
            }
        );
        assert_eq!(
            meta(
                Provider::Anthropic,
                "message_start",
                r#"{"type":"message_start","message":{"id":"msg_1","model":"claude"}}"#
            ),
            ResponseMeta {
                id: Some("msg_1".into()),
                model: Some("claude".into())
            }
        );
        assert_eq!(
            meta(
                Provider::OpenAiResponses,
                "response.created",
                r#"{"type":"response.created","response":{"id":"resp_1","model":"o3"}}"#
            ),
            ResponseMeta {
                id: Some("resp_1".into()),
                model: Some("o3".into())
            }
        );
        assert_eq!(
            meta(
                Provider::Gemini,
                "",
                r#"{"candidates":[],"modelVersion":"gemini-2.5-flash","responseId":"abc"}"#
            ),
            ResponseMeta {
                id: Some("abc".into()),
                model: Some("gemini-2.5-flash".into())
            }
        );
        assert_eq!(
            meta(
                Provider::Ollama,
                "",
                r#"{"model":"llama3.2","message":{"role":"assistant","content":"x"},"done":false}"#
            ),
            ResponseMeta {
                id: None,
                model: Some("llama3.2".into())
            }
        );
        assert_eq!(
            meta(Provider::OpenAiChat, "", "[DONE]"),
            ResponseMeta::default()
        );
        assert_eq!(
            meta(Provider::OpenAiChat, "", r#"{"id":1}"#),
            ResponseMeta::default()
        );
    }

    #[test]
    fn gemini_and_ollama_content() {
        assert!(Provider::Gemini.is_content(&ev(
            "",
            r#"{"candidates":[{"content":{"parts":[{"text":"Hi"}]}}]}"#
        )));
        assert!(!Provider::Gemini.is_content(&ev(
            "",
            r#"{"candidates":[{"content":{"parts":[{"text":""}]}}],"usageMetadata":{}}"#
        )));
        assert!(Provider::Ollama.is_content(&ev(
            "",
            r#"{"message":{"role":"assistant","content":"Hi"},"done":false}"#
        )));
        assert!(!Provider::Ollama.is_content(&ev(
            "",
            r#"{"message":{"role":"assistant","content":""},"done":true}"#
        )));
        assert!(Provider::Ollama.is_content(&ev(
            "",
            r#"{"message":{"role":"assistant","content":"","thinking":"x"},"done":false}"#
        )));
    }
}
