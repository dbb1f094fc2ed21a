//! The stream formats of LLM APIs: [`Provider`], and one file per format.
//!
//! Each format file owns everything the crate knows about its format, and nothing else
//! holds format knowledge (observers and layers ask the [`Provider`]):
//!
//! | question | answered by | used by |
//! |---|---|---|
//! | does this request path speak it? | `Format::matches_path` | the stream layer (a first guess), `IncludeUsageLayer` |
//! | does this event show the format? | `Format::recognise` | the stream layer (detection) |
//! | does the event carry content, and where is its text? | `Format::content`, `Format::content_text` | first-event timeout, TTFT/ITL, usage estimates |
//! | the response id and model | `Format::response_meta` | the report |
//! | token usage and the finish reason | `Format::usage` | [`UsageObserver`](crate::UsageObserver) |
//! | is this the stream's last event? | `Format::is_terminal` | [`DigestObserver`](crate::DigestObserver) with a registry |
//! | is this event the provider's own error? | `Format::error` | the report ([`StreamReport::provider_error`](crate::StreamReport::provider_error), [`Outcome::ProviderError`](crate::Outcome::ProviderError)) |
//! | does the API take `stream_options.include_usage`? | `Format::ACCEPTS_STREAM_OPTIONS` | [`IncludeUsageLayer`](crate::IncludeUsageLayer) |
//! | how does the provider end a stream it stopped (finish reason, or its error for a budget)? | `Format::stop_events` | a [`Policy`](crate::policy::Policy)'s stop, [`BudgetStop`](crate::budget::BudgetStop) |
//! | what does its error response look like? | `Format::error_body` | the [`BudgetLayer`](crate::budget::BudgetLayer)'s refusals |
//!
//! | format | file |
//! |---|---|
//! | OpenAI Chat Completions and legacy Completions (vLLM, SGLang, llama.cpp…) | `openai.rs` |
//! | OpenAI Responses | `responses.rs` |
//! | Anthropic Messages | `anthropic.rs` |
//! | Gemini `alt=sse` | `gemini.rs` |
//! | Ollama NDJSON | `ollama.rs` |
//!
//! Anthropic and OpenAI Responses name their events twice: in the `event:` line and in the
//! data's top-level `type`. Some relays drop the `event:` lines; then the `type` stands in
//! for the name (`event_kind`), for recognition, content, id and model, usage and the
//! terminal event alike. A named event costs nothing more: the data is not looked at for
//! its name.
//!
//! Content and usage are found by looking at bytes first (`json.rs`: a quoted key found with
//! `memchr`, then the first bytes of its value), and events are parsed only when they can
//! hold what is looked for, into small borrowed structs. That is a few nanoseconds for the
//! common event and exact for the compact JSON providers send. Override content detection
//! with [`SseLayer::content_predicate`](crate::SseLayer::content_predicate).
//!
//! # Errors in the stream
//!
//! Providers report some failures inside a stream that started well: an error event, or an
//! error object in place of a chunk. The stream then ends with
//! [`Outcome::ProviderError`](crate::Outcome::ProviderError) and the report's
//! [`provider_error`](crate::StreamReport::provider_error) has the error's type and message
//! (the client gets the provider's event unchanged). Other ends that name a reason are not
//! failures: they complete, with their finish reason.
//!
//! | format | a provider error (kind, message) | not an error: completes, with the finish reason |
//! |---|---|---|
//! | any (OpenAI-compatible servers too) | an event named `error` (its `error` object's `type`, `status` or `code`, else its own `code`; `message`) | — |
//! | OpenAI Chat, Completions | a chunk with a top-level `error` object (`type`, else `code`; `message`), OpenRouter's mid-stream error chunks included | `finish_reason` `length`, `content_filter`, `tool_calls` |
//! | OpenAI Responses | `error` (`code`, `message`); `response.failed` (`response.error.code`, `.message`) | `response.incomplete` (`max_output_tokens`, `content_filter`) |
//! | Anthropic | `error` (`error.type`: `overloaded_error`, `api_error`…; `error.message`) | `stop_reason` `max_tokens`, `refusal`, `pause_turn` |
//! | Gemini | a chunk with a top-level `error` object (`status`, else `code`; `message`) | `finishReason` `MAX_TOKENS`, `SAFETY`, `RECITATION` |
//! | Ollama | a line with a top-level `error` string (no kind; the string is the message) | `done_reason` `length` |
//!
//! Only events that are not content are looked at: a named event by its name; an unnamed
//! one by one `memmem` for `"error"` (when its data is an object) and, when that hits, a
//! walk of its top level, so that an `error` key nested in a tool call, or the word in a
//! text, never counts, and `"error": null` is no error. Content events cost nothing. So an
//! error is not seen in a stream whose format is still unknown (every event with data
//! counts as content there; the request path or a first ordinary event names the format),
//! nor in an event a custom [`content_predicate`](crate::SseLayer::content_predicate) calls
//! content. The first error of a stream is the one reported; what follows it (more
//! content, another error) is forwarded and counted, and changes neither.
//!
//! # Adding a format
//!
//! Write `myformat.rs` with a unit struct implementing the crate-private `Format` trait (copy
//! `gemini.rs`, the smallest), then add one line to the `formats!` list below: the variant
//! name, its doc and the struct. The list's order is the detection order, both for request
//! paths and for events: put more specific formats first.

mod anthropic;
mod classify;
mod error;
mod gemini;
mod ollama;
mod openai;
mod responses;

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;

use crate::sse::EventRef;

use crate::json::{self, Lenient, Text, parse};

pub(crate) use self::classify::{Classifier, ContentPredicate};

pub use self::error::ProviderError;

/// Everything the crate knows about one stream format. Implemented by a unit struct per
/// format file; all functions are cheap on events that are not theirs and never panic.
pub(crate) trait Format {
    /// The `gen_ai.provider.name` of the OpenTelemetry GenAI conventions.
    const NAME: &'static str;
    /// The `gen_ai.operation.name` of the OpenTelemetry GenAI conventions.
    const OPERATION: &'static str = "chat";
    /// The format names its events (`event:` lines), so named events of other kinds carry
    /// nothing for it. Such a format also puts the name in its data's top-level `type`, and
    /// reads events through [`event_kind`], so that streams relayed without `event:` lines
    /// work too.
    const NAMES_EVENTS: bool = false;
    /// Whether its terminal event can only be this format's, whatever was detected (so it
    /// counts in streams whose format is unknown).
    const TERMINAL_IS_DISTINCTIVE: bool = true;
    /// Whether to try its usage reader on streams whose format is unknown (`false` when an
    /// earlier format in the list reads usage the same way).
    const GUESS_USAGE: bool = true;
    /// Whether the API takes `stream_options.include_usage` in its requests.
    const ACCEPTS_STREAM_OPTIONS: bool = false;

    /// Whether a request path is this format's API.
    fn matches_path(path: &str) -> bool;

    /// Whether one event is distinctive enough to say the stream speaks this format.
    fn recognise(event: &EventRef<'_>) -> bool;

    /// Whether an event carries content (text, reasoning or a tool-call delta) and, when the
    /// format puts it in one string value, where that text is in the event's data (JSON
    /// escapes not decoded). Role-only deltas, lifecycle events and pings are not content.
    fn content(event: &EventRef<'_>) -> ContentSpan;

    /// Call `f` with the generated text of a content event (for output estimates).
    fn content_text(event: &EventRef<'_>, f: &mut impl FnMut(&[u8]));

    /// The response id and model an event names, if any. Parse only events that can carry
    /// them.
    fn response_meta(event: &EventRef<'_>) -> ResponseMeta {
        top_level_meta(event)
    }

    /// Whether a named event belongs to this format's usage reader, whatever format was
    /// detected (Anthropic's `message_delta`, Responses' `response.completed`).
    fn claims_event(kind: &[u8]) -> bool {
        let _ = kind;
        false
    }

    /// Read usage and the finish reason from one event. Returns whether the event carried
    /// any (extractors chained after this one then skip it).
    fn usage(event: &EventRef<'_>, state: &mut impl UsageSink) -> bool;

    /// Read usage and the finish reason from a whole answer of this format that is not a
    /// stream (`"stream": false`: one JSON value). `named`: the request's path names this
    /// format; otherwise the format is a guess, and the reader claims only an answer of its
    /// own shape. Returns whether the answer was this format's.
    fn answer_usage(body: &[u8], named: bool, state: &mut impl UsageSink) -> bool;

    /// Whether the event is the last one of a stream of this format. `kind` is the event's
    /// [`event_kind`], worked out once for every format that asks.
    fn is_terminal(event: &EventRef<'_>, kind: &mut LazyKind<'_, '_>) -> bool;

    /// The provider's own error, when the event is one of this format's in-band error events
    /// (see the table in the module docs). Asked of events that are not content only, so it
    /// must be cheap on ordinary lifecycle events: compare the event's `kind`, or look for
    /// `"error"` with one `memmem` before reading anything (`error::top_level_error`).
    fn error(event: &EventRef<'_>, kind: &mut LazyKind<'_, '_>) -> Option<ProviderError> {
        let _ = (event, kind);
        None
    }

    /// Where the generated text of a content event is in its data, for a policy to read and
    /// rewrite (one string value, JSON escapes not decoded). Asked only when a policy is set,
    /// of content events [`content`](Self::content) did not locate.
    fn text_span(event: &EventRef<'_>) -> Option<(usize, usize)> {
        Self::content(event).text_span()
    }

    /// The events (name, data) that end a stream of this format the way the provider ends
    /// one it stopped for `kind`, so that SDKs end cleanly. Empty when the format has none.
    fn stop_events(stop: &StopEnd<'_>) -> Vec<(Option<&'static str>, String)> {
        let _ = stop;
        Vec::new()
    }

    /// The JSON body of an error answered in place of the provider's response (a request
    /// refused before the upstream), in the provider's error shape, so that its SDKs raise
    /// their own error. OpenAI's shape unless the format has its own.
    fn error_body(error: &ErrorAnswer<'_>) -> serde_json::Value {
        openai::error_object(error.message, error.openai_type, error.openai_code)
    }
}

/// The message of the error a stream ends with when its budget ran out
/// ([`StopKind::BudgetExceeded`](crate::policy::StopKind::BudgetExceeded)): the layer's own
/// words, the same in every format (which limit is in the report, not sent).
pub(crate) const BUDGET_EXCEEDED: &str =
    "budget exceeded: this stream used what was left of its budget";

/// What a format's [`stop_events`](Format::stop_events) may name: why, and the response's
/// id and model as the stream's first events gave them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StopEnd<'a> {
    pub(crate) kind: crate::policy::StopKind,
    pub(crate) id: &'a str,
    pub(crate) model: &'a str,
}

/// An error answered in place of the provider's response, for a format's
/// [`error_body`](Format::error_body): its status and message, and each provider's name for
/// its kind.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorAnswer<'a> {
    pub(crate) status: http::StatusCode,
    pub(crate) message: &'a str,
    /// OpenAI's `error.type`.
    pub(crate) openai_type: &'static str,
    /// OpenAI's `error.code`.
    pub(crate) openai_code: &'static str,
    /// Anthropic's `error.type`.
    pub(crate) anthropic_type: &'static str,
    /// Google's `error.status`.
    pub(crate) google_status: &'static str,
}

/// Declares [`Provider`] from the list of formats, in detection order, with the dispatch to
/// each format's [`Format`] implementation.
macro_rules! formats {
    ($($(#[$doc:meta])* $variant:ident => $format:ty,)+) => {
        /// The stream format of an LLM API.
        ///
        /// The layer finds it from the request path, then from the stream's own events:
        ///
        /// ```
        /// use tower_sse::provider::Provider;
        /// use tower_sse::sse::EventRef;
        ///
        /// assert_eq!(Provider::from_path("/v1/chat/completions"), Provider::OpenAiChat);
        /// assert!(Provider::OpenAiChat.accepts_stream_options());
        ///
        /// let raw = b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        /// let stop = EventRef::new(b"message_stop", br#"{"type":"message_stop"}"#, raw);
        /// assert_eq!(Provider::from_event(&stop), Some(Provider::Anthropic));
        /// assert!(Provider::Anthropic.is_terminal(&stop));
        /// assert_eq!(Provider::Anthropic.as_str(), "anthropic");
        /// ```
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        #[non_exhaustive]
        pub enum Provider {
            /// Not (yet) recognised: every event with data other than `[DONE]` counts as
            /// content.
            #[default]
            Unknown,
            $($(#[$doc])* $variant,)+
        }

        impl Provider {
            /// Every known format, in detection order.
            const FORMATS: &[Provider] = &[$(Provider::$variant),+];
        }

        /// Evaluate `$body` with `$F` naming the format of `$provider`, or `$unknown`.
        macro_rules! with_format {
            ($provider:expr, |$F:ident| $body:expr, $unknown:expr) => {
                match $provider {
                    $(Provider::$variant => {
                        type $F = $format;
                        $body
                    })+
                    Provider::Unknown => $unknown,
                }
            };
        }
    };
}

formats! {
    /// OpenAI Responses (`response.*` events).
    OpenAiResponses => responses::Responses,
    /// Anthropic Messages (`message_start` … `message_stop`).
    Anthropic => anthropic::Anthropic,
    /// OpenAI Chat Completions (`chat.completion.chunk`), also served by vLLM, SGLang,
    /// llama.cpp, Ollama's OpenAI endpoint and most gateways.
    OpenAiChat => openai::Chat,
    /// OpenAI legacy Completions (`text_completion`).
    OpenAiCompletions => openai::Completions,
    /// Google Gemini `streamGenerateContent` with `alt=sse`.
    Gemini => gemini::Gemini,
    /// Ollama's native API (`/api/chat`, `/api/generate`): NDJSON.
    Ollama => ollama::Ollama,
}

impl Provider {
    /// The `gen_ai.provider.name` of the OpenTelemetry GenAI conventions.
    pub fn as_str(self) -> &'static str {
        with_format!(self, |F| F::NAME, "unknown")
    }

    /// The `gen_ai.operation.name` of the OpenTelemetry GenAI conventions.
    pub fn operation(self) -> &'static str {
        with_format!(self, |F| F::OPERATION, "chat")
    }

    /// A guess from the request path, before any event arrived.
    pub fn from_path(path: &str) -> Self {
        Self::FORMATS
            .iter()
            .copied()
            .find(|p| with_format!(p, |F| F::matches_path(path), false))
            .unwrap_or_default()
    }

    /// Recognise the format from one event, if the event is distinctive enough.
    pub fn from_event(event: &EventRef<'_>) -> Option<Self> {
        Self::FORMATS
            .iter()
            .copied()
            .find(|p| with_format!(p, |F| F::recognise(event), false))
    }

    /// Whether an event of this format carries content: text, reasoning or a tool-call
    /// delta. Role-only deltas, empty content, lifecycle events, pings and `[DONE]` do not.
    pub fn is_content(self, event: &EventRef<'_>) -> bool {
        self.content(event).is_content()
    }

    /// Whether the event ends the stream: `data: [DONE]` (OpenAI and compatibles),
    /// Anthropic's `message_stop`, Responses' `response.completed` / `.incomplete` /
    /// `.failed`, and Ollama's `"done": true` line (in a stream known to be Ollama's).
    pub fn is_terminal(self, event: &EventRef<'_>) -> bool {
        let mut kind = LazyKind::new(event);
        Self::FORMATS.iter().any(|&p| {
            (p == self || with_format!(p, |F| F::TERMINAL_IS_DISTINCTIVE, false))
                && with_format!(p, |F| F::is_terminal(event, &mut kind), false)
        })
    }

    /// [`is_terminal`](Self::is_terminal) for a stream whose format was `recognised` from its
    /// own events: then only this format's terminal event counts (another format's cannot
    /// end a stream that showed this one), which spares an OpenAI Chat stream a look at every
    /// event's top-level `type`. Otherwise, the same as `is_terminal`.
    #[inline]
    #[cfg_attr(not(feature = "registry"), allow(dead_code))]
    pub(crate) fn is_terminal_of_stream(self, event: &EventRef<'_>, recognised: bool) -> bool {
        if recognised {
            let mut kind = LazyKind::new(event);
            return with_format!(self, |F| F::is_terminal(event, &mut kind), false);
        }
        self.is_terminal(event)
    }

    /// Where the generated text of a content event is in its data (one string value, JSON
    /// escapes not decoded): OpenAI Chat's `delta.content` (or reasoning, or refusal),
    /// Completions' `text`, Anthropic's `text_delta`, Responses' `output_text.delta`,
    /// Gemini's first `parts[].text`, Ollama's `message.content` (or `response`). `None`
    /// for other events, and for tool calls.
    ///
    /// ```
    /// use tower_sse::provider::Provider;
    /// use tower_sse::sse::EventRef;
    ///
    /// let data = br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#;
    /// let event = EventRef::new(b"content_block_delta", data, b"");
    /// let (start, end) = Provider::Anthropic.text_span(&event).unwrap();
    /// assert_eq!(&data[start..end], b"Hi");
    /// ```
    pub fn text_span(self, event: &EventRef<'_>) -> Option<(usize, usize)> {
        with_format!(self, |F| F::text_span(event), None)
    }

    /// The events (name, data) that end a stream of this format as its provider ends one it
    /// stopped (empty for an unknown format).
    pub(crate) fn stop_events(
        self,
        kind: crate::policy::StopKind,
        id: Option<&str>,
        model: Option<&str>,
    ) -> Vec<(Option<&'static str>, String)> {
        let stop = StopEnd {
            kind,
            id: id.unwrap_or_default(),
            model: model.unwrap_or_default(),
        };
        with_format!(self, |F| F::stop_events(&stop), Vec::new())
    }

    /// The JSON body of an error answered in place of this format's response, in its
    /// provider's error shape (OpenAI's for an unknown format).
    pub(crate) fn error_body(self, error: &ErrorAnswer<'_>) -> serde_json::Value {
        with_format!(
            self,
            |F| F::error_body(error),
            <openai::Chat as Format>::error_body(error)
        )
    }

    /// Whether the API takes `stream_options.include_usage` (OpenAI Chat and Completions;
    /// the Responses API rejects it).
    pub fn accepts_stream_options(self) -> bool {
        with_format!(self, |F| F::ACCEPTS_STREAM_OPTIONS, false)
    }

    /// Whether an event carries content and, when the format puts it in one string value,
    /// where that text is in the event's data (JSON escapes not decoded).
    #[inline]
    pub(crate) fn content(self, event: &EventRef<'_>) -> ContentSpan {
        let data = event.data_bytes();
        with_format!(
            self,
            |F| F::content(event),
            ContentSpan::when(!data.is_empty() && data != b"[DONE]")
        )
    }

    /// Call `f` with the generated text of one content event (the whole data when the
    /// format is unknown).
    pub(crate) fn content_text(self, event: &EventRef<'_>, mut f: impl FnMut(&[u8])) {
        with_format!(
            self,
            |F| F::content_text(event, &mut f),
            f(event.data_bytes())
        )
    }

    /// The response id and model an event names, if any.
    pub(crate) fn response_meta(self, event: &EventRef<'_>) -> ResponseMeta {
        if event.data_bytes().first() != Some(&b'{') {
            return ResponseMeta::default();
        }
        with_format!(self, |F| F::response_meta(event), top_level_meta(event))
    }

    /// Read usage and the finish reason from one event of a stream of this format.
    ///
    /// Named events that belong to one format (`message_delta`, `response.completed`) go to
    /// it whatever was detected, and `error` events of any format set the finish reason.
    /// Other named events carry nothing in formats that name their events. In a stream whose
    /// format is unknown, every format's reader is tried in detection order.
    ///
    /// In a stream relayed without `event:` lines, an event whose data says
    /// `"type":"error"` is an `error` event too, when the format names its events or is
    /// unknown (other formats' events are not looked at for a `type`).
    pub(crate) fn usage(self, event: &EventRef<'_>, state: &mut impl UsageSink) -> bool {
        if let Some(kind) = event_name(event) {
            if kind == b"error" {
                return error_event(event, state);
            }
            if let Some(&owner) = Self::FORMATS
                .iter()
                .find(|p| with_format!(p, |F| F::claims_event(kind), false))
            {
                return read_usage(owner, event, state);
            }
            if with_format!(self, |F| F::NAMES_EVENTS, false) {
                return false;
            }
        } else if with_format!(self, |F| F::NAMES_EVENTS, true) && event_kind(event) == b"error" {
            return error_event(event, state);
        }
        match self {
            Self::Unknown => Self::FORMATS.iter().any(|&p| {
                with_format!(p, |F| F::GUESS_USAGE, false) && read_usage(p, event, state)
            }),
            known => read_usage(known, event, state),
        }
    }
}

impl Provider {
    /// The usage of a whole answer that is not a stream (a request with `"stream": false`,
    /// or an error status with a JSON body), read from its bytes by this format's reader:
    ///
    /// | format | the answer | usage read |
    /// |---|---|---|
    /// | OpenAI Chat, Completions | `chat.completion`, `text_completion` | the top-level `usage` (as in a stream's usage chunk) |
    /// | OpenAI Responses | the `response` object | its `usage`: `input_tokens`, `output_tokens`, `input_tokens_details.cached_tokens`, `output_tokens_details.reasoning_tokens` |
    /// | Anthropic | the `message` | its `usage`: `input_tokens`, `output_tokens`, `cache_read_input_tokens`, `cache_creation_input_tokens` (Anthropic's meaning: input excludes both) |
    /// | Gemini | `generateContent`'s object, or `streamGenerateContent`'s JSON array (the last `usageMetadata` wins) | `usageMetadata` |
    /// | Ollama | the `"done": true` object | `prompt_eval_count`, `eval_count` |
    ///
    /// The counts keep the provider's meaning, as a stream's do ([`Usage::style`](crate::Usage::style)).
    /// For [`Provider::Unknown`] (a path no format names, such as Gemini's
    /// `:generateContent`) the formats are tried in turn, and one reads the answer only
    /// when it has that format's shape (its `object`, `type`, `usageMetadata` or `done`).
    /// `None` when the answer reports no count: not JSON, an error without usage, another
    /// format's answer. Only the top level is parsed (the content is skipped, not
    /// collected); it never panics, whatever the bytes.
    ///
    /// ```
    /// use tower_sse::provider::Provider;
    ///
    /// let answer = br#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}"#;
    /// let usage = Provider::OpenAiChat.answer_usage(answer).unwrap();
    /// assert_eq!((usage.input_tokens, usage.output_tokens), (Some(9), Some(3)));
    ///
    /// let message = br#"{"type":"message","content":[],"usage":{"input_tokens":5,"cache_read_input_tokens":100,"output_tokens":7}}"#;
    /// let usage = Provider::Unknown.answer_usage(message).unwrap();
    /// assert_eq!((usage.input_tokens, usage.cached_input_tokens), (Some(5), Some(100)));
    ///
    /// let error = br#"{"error":{"message":"Rate limit reached","type":"requests"}}"#;
    /// assert_eq!(Provider::OpenAiChat.answer_usage(error), None);
    /// ```
    pub fn answer_usage(self, body: &[u8]) -> Option<crate::Usage> {
        let mut state = crate::usage::UsageState::default();
        match self {
            Self::Unknown => {
                let _ = Self::FORMATS.iter().any(|&p| {
                    with_format!(p, |F| F::GUESS_USAGE, false)
                        && read_answer(p, body, false, &mut state)
                });
            }
            known => {
                read_answer(known, body, true, &mut state);
            }
        }
        state.usage()
    }
}

/// Read a whole answer with `provider`'s reader; when it was the reader's, say how that
/// format counts.
fn read_answer(
    provider: Provider,
    body: &[u8],
    named: bool,
    state: &mut crate::usage::UsageState,
) -> bool {
    let read = with_format!(provider, |F| F::answer_usage(body, named, state), false);
    if read {
        state.set_style(crate::usage::UsageStyle::of(provider));
    }
    read
}

/// Parse a `T` from `body` when it is a JSON object (a derived struct would also take an
/// array, field by field).
pub(crate) fn parse_object<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Option<T> {
    let start = json::skip_ws(body, 0);
    if body.get(start) != Some(&b'{') {
        return None;
    }
    parse(&body[start..])
}

/// Read one event with `provider`'s usage reader; when it was the reader's, say how that
/// format counts ([`UsageStyle`](crate::usage::UsageStyle)).
fn read_usage(provider: Provider, event: &EventRef<'_>, state: &mut impl UsageSink) -> bool {
    let read = with_format!(provider, |F| F::usage(event, state), false);
    if read {
        state.set_style(crate::usage::UsageStyle::of(provider));
    }
    read
}

impl Provider {
    /// The provider's own error, when the event named `name` (empty when it has no name)
    /// with this `data` is an in-band error event: an event named `error` in any format, or
    /// one of this format's error events (see the table in the module docs). The stream
    /// engine asks this of events that are not content only.
    ///
    /// It takes the name and data, not the event: the engine's per-event loop then never
    /// needs the whole [`EventRef`] in memory for this cold call (a reference to it did,
    /// for every event, content or not: about 9 instructions an event, measured). The
    /// formats' error rules read nothing else.
    pub(crate) fn provider_error(self, name: &[u8], data: &[u8]) -> Option<ProviderError> {
        if name == b"error" {
            return Some(error::error_event(data));
        }
        let event = EventRef::new(name, data, data);
        let mut kind = LazyKind::new(&event);
        with_format!(self, |F| F::error(&event, &mut kind), None)
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The event's name, from its `event:` line; `None` for an event without one, or named
/// `message` (the name the SSE specification gives events without one).
#[inline]
fn event_name<'a>(event: &EventRef<'a>) -> Option<&'a [u8]> {
    let name = event.event_bytes();
    (!name.is_empty() && name != b"message").then_some(name)
}

/// An event's [`event_kind`], worked out on first use: several formats ask for it of the
/// same event, and for an unnamed event it costs a scan of the data.
pub(crate) struct LazyKind<'e, 'a> {
    event: &'e EventRef<'a>,
    kind: Option<&'a [u8]>,
}

impl<'e, 'a> LazyKind<'e, 'a> {
    pub(crate) fn new(event: &'e EventRef<'a>) -> Self {
        Self { event, kind: None }
    }

    pub(crate) fn get(&mut self) -> &'a [u8] {
        self.kind.get_or_insert_with(|| event_kind(self.event))
    }
}

/// What an event is, for the formats that name their events: its `event:` name or, for an
/// event relayed without one, the `type` its data names at the top level (Anthropic and
/// OpenAI Responses put the same name in both). Empty when neither.
///
/// A named event costs one compare: its data is not looked at. An unnamed one costs a few
/// byte compares when `type` is its first key (as providers send it), a walk of its top
/// level otherwise (see `json::top_level_type`); a nested `type` (a content block's, a tool
/// call's) never counts, so OpenAI Chat chunks, which have none at the top, have no kind.
#[inline]
pub(crate) fn event_kind<'a>(event: &EventRef<'a>) -> &'a [u8] {
    match event_name(event) {
        Some(name) => name,
        None => json::top_level_type(event.data_bytes()).unwrap_or_default(),
    }
}

/// The response id and model an event names, if any.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ResponseMeta {
    pub(crate) id: Option<String>,
    pub(crate) model: Option<String>,
}

/// `id` and `model` at the top level of an object (or of a nested one: `message`,
/// `response`).
#[derive(Deserialize)]
pub(crate) struct Top<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
}

impl From<Top<'_>> for ResponseMeta {
    fn from(top: Top<'_>) -> Self {
        Self {
            id: top.id.map(Cow::into_owned),
            model: top.model.map(Cow::into_owned),
        }
    }
}

/// The top-level `id` and `model` of an event's data (OpenAI Chat and compatibles): the
/// top level walked until both are found, their strings parsed alone (a chunk's `choices`
/// are never parsed).
pub(crate) fn top_level_meta(event: &EventRef<'_>) -> ResponseMeta {
    let [id, model] = json::top_level_strings(event.data_bytes(), ["id", "model"]);
    ResponseMeta { id, model }
}

/// What a format says of one event: content or not, and where its text is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContentSpan {
    /// Not a content event.
    NotContent,
    /// A content event whose text is not one string value (a tool call, an event the
    /// format does not locate): `content_text` finds it.
    Unlocated,
    /// A content event whose text is `data[start..end]`: one string value, between its
    /// quotes, JSON escapes not decoded.
    Text { start: usize, end: usize },
}

impl ContentSpan {
    /// [`Unlocated`](Self::Unlocated) content when `is_content`, else not content.
    #[inline]
    pub(crate) fn when(is_content: bool) -> Self {
        if is_content {
            Self::Unlocated
        } else {
            Self::NotContent
        }
    }

    /// Content located at `span` (a range of the data), or not content when `None`.
    #[inline]
    pub(crate) fn located(span: Option<(usize, usize)>) -> Self {
        match span {
            Some((start, end)) => Self::Text { start, end },
            None => Self::NotContent,
        }
    }

    /// This, or when it is not content, what `other` says.
    #[inline]
    pub(crate) fn or_else(self, other: impl FnOnce() -> Self) -> Self {
        match self {
            Self::NotContent => other(),
            content => content,
        }
    }

    #[inline]
    pub(crate) fn is_content(self) -> bool {
        self != Self::NotContent
    }

    /// The range of the text in the data, when located.
    #[inline]
    pub(crate) fn text_span(self) -> Option<(usize, usize)> {
        match self {
            Self::Text { start, end } => Some((start, end)),
            _ => None,
        }
    }
}

/// The counts of one usage report, as a format reads them (`None`: not in this report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) input: Option<u64>,
    pub(crate) output: Option<u64>,
    pub(crate) total: Option<u64>,
    pub(crate) cached: Option<u64>,
    pub(crate) reasoning: Option<u64>,
    /// Input tokens written to the prompt cache (OpenRouter's `cache_write_tokens`).
    pub(crate) cache_write: Option<u64>,
}

impl Counts {
    /// Whether any count at all is known (cache or reasoning counts included).
    pub(crate) fn has_counts(&self) -> bool {
        [
            self.input,
            self.output,
            self.total,
            self.cached,
            self.reasoning,
            self.cache_write,
        ]
        .iter()
        .any(Option::is_some)
    }
}

/// The five counts of a usage report.
pub(crate) fn counts(
    input: Option<u64>,
    output: Option<u64>,
    total: Option<u64>,
    cached: Option<u64>,
    reasoning: Option<u64>,
) -> Counts {
    Counts {
        input,
        output,
        total,
        cached,
        reasoning,
        cache_write: None,
    }
}

/// Where a format's reader writes what it found: implemented by
/// [`UsageState`](crate::usage::UsageState), whose methods of the same names say what each
/// one does. (The formats know nothing of the usage observer.)
pub(crate) trait UsageSink {
    fn update(&mut self, counts: Counts);
    fn set_finish_reason(&mut self, reason: &str);
    fn set_provisional_output_tokens(&mut self, tokens: u64);
    fn set_cache_creation_input_tokens(&mut self, tokens: u64);
    fn mark_usage_only(&mut self);
    fn set_style(&mut self, style: crate::usage::UsageStyle);
}

#[derive(Deserialize)]
struct ErrorEvent<'a> {
    #[serde(borrow, default)]
    error: Lenient<ErrorBody<'a>>,
    #[serde(borrow, default)]
    code: Text<'a>,
}

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Text<'a>,
    #[serde(borrow, default)]
    code: Text<'a>,
}

/// An `error` event, of Anthropic's shape (`{"type":"error","error":{"type":…}}`) or the
/// Responses API's (`{"type":"error","code":…}`): its error type (or code, or `"error"`)
/// becomes the finish reason; the usage seen so far stays.
pub(crate) fn error_event(event: &EventRef<'_>, state: &mut impl UsageSink) -> bool {
    let parsed = parse::<ErrorEvent<'_>>(event.data_bytes());
    let reason = parsed
        .as_ref()
        .and_then(|e| {
            let body = e.error.0.as_ref();
            body.and_then(|b| b.kind.as_str().or(b.code.as_str()))
                .or(e.code.as_str())
        })
        .unwrap_or("error");
    state.set_finish_reason(reason);
    true
}

#[cfg(test)]
mod tests {
    /// The error event each format ends a stream with when its budget ran out, byte for
    /// byte (the events SDKs raise).
    #[test]
    fn each_format_ends_a_stream_past_its_budget_with_its_providers_error() {
        let all: Vec<String> = super::Provider::FORMATS
            .iter()
            .chain([&super::Provider::Unknown])
            .flat_map(|p| {
                p.stop_events(
                    crate::policy::StopKind::BudgetExceeded,
                    Some("id"),
                    Some("m"),
                )
                .into_iter()
                .map(move |(name, data)| format!("{p:?} {name:?} {data}\n"))
            })
            .collect();
        assert_eq!(
            all.concat(),
            r#"OpenAiResponses Some("error") {"code":"budget_exceeded","message":"budget exceeded: this stream used what was left of its budget","param":null,"type":"error"}
Anthropic Some("error") {"error":{"message":"budget exceeded: this stream used what was left of its budget","type":"budget_exceeded"},"type":"error"}
OpenAiChat None {"error":{"code":"budget_exceeded","message":"budget exceeded: this stream used what was left of its budget","param":null,"type":"budget_exceeded"}}
OpenAiCompletions None {"error":{"code":"budget_exceeded","message":"budget exceeded: this stream used what was left of its budget","param":null,"type":"budget_exceeded"}}
Gemini None {"error":{"code":429,"details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"BUDGET_EXCEEDED"}],"message":"budget exceeded: this stream used what was left of its budget","status":"RESOURCE_EXHAUSTED"}}
Ollama None {"error":"budget exceeded: this stream used what was left of its budget"}
"#
        );
    }

    use super::*;
    use crate::usage::UsageState;

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
            .text_span()
            .unwrap();
        assert_eq!(&data[span.0..span.1], r#"say \"hi\" now"#);
        let tool = r#"{"choices":[{"delta":{"content":null,"tool_calls":[{"index":0}]}}]}"#;
        assert_eq!(
            Provider::OpenAiChat.content(&ev("", tool)),
            ContentSpan::Unlocated
        );
        assert_eq!(
            Provider::OpenAiChat
                .content(&ev("", r#"{"choices":[{"delta":{"content":"unterminated"#)),
            ContentSpan::NotContent
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

    /// Relays that drop the `event:` lines (or name every event `message`, the default):
    /// the data's top-level `type` names the event instead.
    #[test]
    fn unnamed_events_are_read_from_their_type() {
        for name in ["", "message"] {
            let ev = |data: &'static str| ev(name, data);
            assert_eq!(
                Provider::from_event(&ev(r#"{"type":"message_start","message":{}}"#)),
                Some(Provider::Anthropic)
            );
            assert_eq!(
                Provider::from_event(&ev(r#"{"type":"response.created","response":{}}"#)),
                Some(Provider::OpenAiResponses)
            );
            // Keys sorted by a relay: the nested `type` comes first, and does not count.
            let sorted = r#"{"delta":{"text":"a","type":"text_delta"},"index":0,"type":"content_block_delta"}"#;
            assert_eq!(Provider::from_event(&ev(sorted)), Some(Provider::Anthropic));
            let a = Provider::Anthropic;
            assert!(a.is_content(&ev(sorted)));
            assert!(a.is_content(&ev(
                r#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"a"}}"#
            )));
            assert!(!a.is_content(&ev(
                r#"{"type":"content_block_delta","delta":{"type":"signature_delta","signature":"x"}}"#
            )));
            assert!(!a.is_content(&ev(r#"{"type": "ping"}"#)));
            assert!(!a.is_content(&ev(
                r#"{"type":"content_block_start","content_block":{"type":"content_block_delta"}}"#
            )));
            assert!(a.is_terminal(&ev(r#"{"type":"message_stop"}"#)));
            assert!(Provider::Unknown.is_terminal(&ev(r#"{"type":"message_stop"}"#)));
            assert!(!a.is_terminal(&ev(r#"{"type":"message_delta","x":"message_stop"}"#)));
            assert_eq!(
                a.response_meta(&ev(
                    r#"{"type":"message_start","message":{"id":"msg_1","model":"claude"}}"#
                )),
                ResponseMeta {
                    id: Some("msg_1".into()),
                    model: Some("claude".into())
                }
            );
            assert_eq!(
                a.response_meta(&ev(
                    r#"{"type":"content_block_delta","message":{"id":"msg_1"}}"#
                )),
                ResponseMeta::default()
            );

            let r = Provider::OpenAiResponses;
            assert!(r.is_content(&ev(r#"{"type":"response.output_text.delta","delta":"a"}"#)));
            assert!(!r.is_content(&ev(r#"{"type":"response.output_text.done","text":"a"}"#)));
            assert!(r.is_terminal(&ev(r#"{"type":"response.completed","response":{}}"#)));
            assert!(Provider::OpenAiChat.is_terminal(&ev(r#"{"type":"response.failed"}"#)));
            // Once a stream showed it is OpenAI Chat, only Chat's terminal event ends it.
            let failed = ev(r#"{"type":"response.failed"}"#);
            assert!(Provider::OpenAiChat.is_terminal_of_stream(&failed, false));
            assert!(!Provider::OpenAiChat.is_terminal_of_stream(&failed, true));
            assert!(r.is_terminal_of_stream(&failed, true));
            assert!(a.is_terminal_of_stream(&ev(r#"{"type":"message_stop"}"#), true));
            assert!(!a.is_terminal_of_stream(&failed, true));
            assert!(!r.is_terminal(&ev(
                r#"{"type":"response.output_text.delta","delta":"response.completed"}"#
            )));

            // An `error` event, in a format that names its events or an unknown one.
            for p in [
                Provider::Anthropic,
                Provider::OpenAiResponses,
                Provider::Unknown,
            ] {
                let mut state = UsageState::default();
                assert!(p.usage(
                    &ev(r#"{"type":"error","error":{"type":"overloaded_error"}}"#),
                    &mut state
                ));
                assert_eq!(state.finish_reason(), Some("overloaded_error"), "{p}");
            }
        }
    }

    /// OpenAI Chat chunks have no top-level `type` (a tool call's is nested): nothing takes
    /// them for another format's events.
    #[test]
    fn chat_chunks_have_no_kind() {
        let chunks = [
            r#"{"id":"c","object":"chat.completion.chunk","choices":[{"delta":{"content":"Hi"}}]}"#,
            r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]}}]}"#,
            r#"{"error":{"message":"x","type":"invalid_request_error"}}"#,
        ];
        for data in chunks {
            let event = ev("", data);
            assert_eq!(event_kind(&event), b"", "{data}");
            assert_ne!(
                Provider::from_event(&event),
                Some(Provider::Anthropic),
                "{data}"
            );
            assert_ne!(
                Provider::from_event(&event),
                Some(Provider::OpenAiResponses),
                "{data}"
            );
            assert!(!Provider::OpenAiChat.is_terminal(&event), "{data}");
        }
        assert_eq!(
            Provider::from_event(&ev("", chunks[1])),
            Some(Provider::OpenAiChat)
        );
        let mut state = UsageState::default();
        assert!(!Provider::Unknown.usage(&ev("", chunks[2]), &mut state));
        assert_eq!(state.finish_reason(), None);
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
        let meta = |p: Provider, e, d| p.response_meta(&ev(e, d));
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

    fn text(provider: Provider, event: &str, data: &str) -> Vec<String> {
        let mut out = Vec::new();
        provider.content_text(
            &EventRef::new(event.as_bytes(), data.as_bytes(), data.as_bytes()),
            |t| out.push(String::from_utf8_lossy(t).into_owned()),
        );
        out
    }

    #[test]
    fn text_per_format() {
        assert_eq!(
            text(
                Provider::OpenAiChat,
                "",
                r#"{"choices":[{"delta":{"content":"Hi"},"logprobs":{"content":[]}}]}"#
            ),
            ["Hi"]
        );
        assert_eq!(
            text(
                Provider::OpenAiChat,
                "",
                r#"{"choices":[{"delta":{"content":null,"reasoning_content":"hm"}}]}"#
            ),
            ["hm"]
        );
        assert_eq!(
            text(
                Provider::OpenAiChat,
                "",
                r#"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{\"a\":1}"}}]}}]}"#
            ),
            [r#"{\"a\":1}"#]
        );
        assert_eq!(
            text(
                Provider::Gemini,
                "",
                r#"{"candidates":[{"content":{"parts":[{"text":"a"},{"text":"bc"}]}}]}"#
            ),
            ["a", "bc"]
        );
        assert_eq!(
            text(
                Provider::Anthropic,
                "content_block_delta",
                r#"{"delta":{"type":"thinking_delta","thinking":"t"}}"#
            ),
            ["t"]
        );
        assert_eq!(
            text(
                Provider::OpenAiResponses,
                "response.output_text.delta",
                r#"{"type":"x","delta":"d"}"#
            ),
            ["d"]
        );
        assert_eq!(text(Provider::Unknown, "", "raw"), ["raw"]);
    }

    #[test]
    fn terminal_events_per_format() {
        let any = Provider::Unknown;
        assert!(any.is_terminal(&ev("", "[DONE]")));
        assert!(Provider::Anthropic.is_terminal(&ev("message_stop", "{}")));
        for recognised in [false, true] {
            assert!(Provider::OpenAiChat.is_terminal_of_stream(&ev("", "[DONE]"), recognised));
            assert!(
                Provider::Anthropic.is_terminal_of_stream(&ev("message_stop", "{}"), recognised)
            );
        }
        assert!(any.is_terminal(&ev("response.completed", "{}")));
        assert!(any.is_terminal(&ev("response.incomplete", "{}")));
        assert!(any.is_terminal(&ev("response.failed", "{}")));
        assert!(!any.is_terminal(&ev("response.output_text.delta", "{}")));
        assert!(!Provider::Anthropic.is_terminal(&ev("message_delta", "{}")));
        assert!(!Provider::OpenAiChat.is_terminal(&ev("", "{\"choices\":[]}")));
        let done = r#"{"model":"m","message":{"content":""},"done_reason":"stop","done": true}"#;
        assert!(Provider::Ollama.is_terminal(&ev("", done)));
        assert!(!Provider::OpenAiChat.is_terminal(&ev("", done)));
        assert!(!Provider::Ollama.is_terminal(&ev(
            "",
            r#"{"message":{"content":"\"done\":true"},"done":false}"#
        )));
    }

    #[test]
    fn ollama_done_is_strict_about_the_shape() {
        let done = |data: &str| Provider::Ollama.is_terminal(&ev("", data));
        assert!(done(r#"{"done":true}"#));
        assert!(done("{\"done\" :\ttrue}"));
        assert!(!done(r#"{"done":false}"#));
        assert!(!done(r#"{"done_reason":"true"}"#));
        assert!(!done(r#"{"done""#));
        assert!(!done(""));
    }

    /// Whole answers (`"stream": false`), each format's, named by the path or guessed.
    #[test]
    fn answer_usage_per_format() {
        use crate::usage::UsageStyle;
        let chat = br#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"{\"usage\":{\"prompt_tokens\":1}}","tool_calls":[{"type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":4,"total_tokens":16,"prompt_tokens_details":{"cached_tokens":8},"completion_tokens_details":{"reasoning_tokens":2}}}"#;
        for p in [Provider::OpenAiChat, Provider::Unknown] {
            let u = p.answer_usage(chat).unwrap();
            assert_eq!(
                (u.input_tokens, u.output_tokens, u.total_tokens),
                (Some(12), Some(4), Some(16))
            );
            assert_eq!(
                (u.cached_input_tokens, u.reasoning_tokens),
                (Some(8), Some(2))
            );
            assert_eq!(u.style, UsageStyle::OpenAi);
        }
        let completion = br#"{"object":"text_completion","choices":[{"text":"x","finish_reason":"length"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
        for p in [Provider::OpenAiCompletions, Provider::Unknown] {
            let u = p.answer_usage(completion).unwrap();
            assert_eq!((u.input_tokens, u.output_tokens), (Some(3), Some(1)));
        }

        let response = br#"{"id":"resp_1","object":"response","status":"completed","output":[{"type":"message","content":[{"type":"output_text","text":"hi"}]}],"usage":{"input_tokens":20,"input_tokens_details":{"cached_tokens":5},"output_tokens":7,"output_tokens_details":{"reasoning_tokens":3},"total_tokens":27}}"#;
        for p in [Provider::OpenAiResponses, Provider::Unknown] {
            let u = p.answer_usage(response).unwrap();
            assert_eq!(
                (u.input_tokens, u.output_tokens, u.total_tokens),
                (Some(20), Some(7), Some(27))
            );
            assert_eq!(
                (u.cached_input_tokens, u.reasoning_tokens),
                (Some(5), Some(3))
            );
        }

        let message = br#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":10,"cache_creation_input_tokens":30,"cache_read_input_tokens":100,"output_tokens":6}}"#;
        for p in [Provider::Anthropic, Provider::Unknown] {
            let u = p.answer_usage(message).unwrap();
            // Anthropic's meaning: the input excludes the cache reads and writes.
            assert_eq!((u.input_tokens, u.output_tokens), (Some(10), Some(6)));
            assert_eq!(
                (u.cached_input_tokens, u.cache_write_tokens),
                (Some(100), Some(30))
            );
            assert_eq!(u.total_tokens, None);
            assert_eq!(u.style, UsageStyle::Anthropic);
        }

        // `:generateContent` is no stream path: guessed from `usageMetadata`.
        let gemini = br#"{"candidates":[{"content":{"parts":[{"text":"hi"}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":5,"totalTokenCount":20,"thoughtsTokenCount":6},"modelVersion":"gemini-2.5-flash"}"#;
        for p in [Provider::Gemini, Provider::Unknown] {
            let u = p.answer_usage(gemini).unwrap();
            assert_eq!(
                (u.input_tokens, u.output_tokens, u.reasoning_tokens),
                (Some(9), Some(5), Some(6))
            );
            assert_eq!(u.style, UsageStyle::Gemini);
        }
        // `:streamGenerateContent` without `alt=sse`: a JSON array of running totals.
        let array = br#"[{"candidates":[{"content":{"parts":[{"text":"a"}]}}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":1}},
            {"candidates":[{"content":{"parts":[{"text":"b"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":2,"totalTokenCount":11}}]"#;
        let u = Provider::Gemini.answer_usage(array).unwrap();
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.total_tokens),
            (Some(9), Some(2), Some(11))
        );

        let ollama = br#"{"model":"llama3.2","created_at":"x","message":{"role":"assistant","content":"hi"},"done_reason":"stop","done":true,"total_duration":1,"prompt_eval_count":26,"eval_count":8}"#;
        for p in [Provider::Ollama, Provider::Unknown] {
            let u = p.answer_usage(ollama).unwrap();
            assert_eq!((u.input_tokens, u.output_tokens), (Some(26), Some(8)));
        }
    }

    /// Answers that report no usage: errors, other shapes, bytes that are not JSON.
    #[test]
    fn answers_without_usage() {
        let cases: [(&[u8], Provider); 12] = [
            (
                br#"{"error":{"message":"Rate limit","type":"requests","code":"rate_limit_exceeded"}}"#,
                Provider::OpenAiChat,
            ),
            (
                br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                Provider::Anthropic,
            ),
            (
                br#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED"}}"#,
                Provider::Unknown,
            ),
            (br#"{"error":"model not found"}"#, Provider::Ollama),
            (br#"{"object":"chat.completion","usage":null}"#, Provider::OpenAiChat),
            // Usage-like keys of an answer of no known shape: not guessed.
            (br#"{"usage":{"prompt_tokens":5}}"#, Provider::Unknown),
            (br#"{"model":"m","done":false,"eval_count":4}"#, Provider::Ollama),
            // An array is no object, field by field.
            (br#"[{"a":1},{"prompt_tokens":5,"completion_tokens":3}]"#, Provider::OpenAiChat),
            (b"", Provider::Unknown),
            (b"not json", Provider::OpenAiChat),
            (b"{\"usage\":{\"prompt_tokens\":", Provider::OpenAiChat),
            (&[0xff, 0xfe, b'{'], Provider::Unknown),
        ];
        for (body, provider) in cases {
            assert_eq!(
                provider.answer_usage(body),
                None,
                "{provider}: {}",
                String::from_utf8_lossy(body)
            );
        }
        // Named by its path, an OpenAI-compatible server that leaves `object` out.
        let bare = br#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#;
        let u = Provider::OpenAiChat.answer_usage(bare).unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (Some(5), Some(2)));
        assert_eq!(Provider::Unknown.answer_usage(bare), None);
    }

    /// Any bytes: every prefix of real answers, and each with one byte changed, read by
    /// every format and guessed, never panic (and a cut answer reports nothing).
    #[test]
    fn answer_usage_never_panics() {
        let answers: [&[u8]; 4] = [
            br#"{"object":"chat.completion","choices":[{"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
            br#"{"type":"message","stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":2}}"#,
            br#"[{"usageMetadata":{"promptTokenCount":1}},{"usageMetadata":{"candidatesTokenCount":2}}]"#,
            br#"{"object":"response","status":"completed","usage":{"input_tokens":1,"output_tokens":2}}"#,
        ];
        let providers = std::iter::once(Provider::Unknown).chain(Provider::FORMATS.iter().copied());
        for provider in providers {
            for answer in answers {
                for end in 0..answer.len() {
                    // Cut before its end: never a whole answer, so never a count.
                    assert_eq!(provider.answer_usage(&answer[..end]), None, "{provider}");
                }
                for at in 0..answer.len() {
                    for byte in [b'"', b'{', b'[', b'-', b'9', b'\\', 0xff] {
                        let mut changed = answer.to_vec();
                        changed[at] = byte;
                        let _ = provider.answer_usage(&changed);
                    }
                }
            }
        }
    }

    #[test]
    fn error_events() {
        let mut s = UsageState::default();
        let ev = |d: &'static str| EventRef::new(b"error", d.as_bytes(), d.as_bytes());
        error_event(
            &ev(r#"{"type":"error","error":{"type":"overloaded_error","message":"x"}}"#),
            &mut s,
        );
        assert_eq!(s.finish_reason(), Some("overloaded_error"));
        error_event(
            &ev(r#"{"type":"error","code":"server_error","message":"x"}"#),
            &mut s,
        );
        assert_eq!(s.finish_reason(), Some("server_error"));
        error_event(&ev("not json"), &mut s);
        assert_eq!(s.finish_reason(), Some("error"));
    }
}
