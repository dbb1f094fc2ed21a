//! [`IncludeUsageLayer`]: ask OpenAI-style upstreams for usage in streams, and hide it from
//! clients that did not ask.
//!
//! OpenAI Chat Completions (and vLLM, SGLang, llama.cpp, most gateways) report the token
//! usage of a stream only when the request says `"stream_options":{"include_usage":true}`.
//! This layer reads the JSON body of chat and completions requests (bounded), and when it
//! says `"stream": true` without asking for usage, adds the option. It then marks the
//! request with [`UsageInjected`](crate::request::UsageInjected), so that the usage observer reads the extra usage-only
//! chunk for the report and keeps it from the client, who never asked for it.
//!
//! Only the body's top-level `stream_options` counts (one inside a message, a tool or a JSON
//! schema is the client's data), and the client's bytes are never re-serialized: the option
//! is spliced in. A missing `stream_options` is inserted after the opening brace; in an
//! existing object, a missing flag is inserted after its opening brace and a `false` or
//! `null` flag has just its value replaced; `"stream_options": null` becomes an object. Key
//! order, big numbers, escapes and whitespace reach the upstream as sent, and
//! `Content-Length` is updated.
//!
//! It never changes the Responses API's requests (which reject `stream_options` and always
//! report usage), nor Anthropic's, Gemini's or Ollama's, non-JSON or malformed bodies, or
//! requests that are not streams. A body with a `Content-Encoding` other than `identity`
//! (gzip, br…) is not even read: it streams through as it came. Any streaming request it
//! sees is marked [`StreamingRequest`](crate::request::StreamingRequest), which lets
//! [`SseLayer`](crate::SseLayer) answer it early or time out its response head.
//!
//! # Upload deadline, on every path
//!
//! Every request's body is held to the [upload
//! timeout](crate::IncludeUsageLayer::upload_timeout), counted from its
//! [`Arrival`](crate::request::Arrival), with or without `Accept: text/event-stream`:
//!
//! - a JSON `POST` to any LLM API the crate knows (chat, completions, Anthropic's
//!   `/v1/messages`, `/v1/responses`, Gemini's `:streamGenerateContent`, Ollama) is read
//!   whole before it is forwarded; its `"stream": true` (or Gemini's streaming path) marks
//!   it a stream. A body not complete by the deadline is never forwarded: the request is
//!   marked [`UploadTimedOut`](crate::request::UploadTimedOut), an
//!   [`SseLayer`](crate::SseLayer) inside answers `408`, and a
//!   [`StreamLimitLayer`](crate::StreamLimitLayer) outside releases its permit;
//! - any other body is handed on as it comes (an
//!   [`UploadBody`](crate::request::UploadBody)), and fails at the deadline with
//!   [`UploadTimedOut`](crate::request::UploadTimedOut) if it has not ended by then (an
//!   encoded body too, and the rest of a body larger than the layer reads): the inner
//!   service sees an incomplete body, and if it had not answered by then, an `SseLayer`
//!   inside answers `408` whatever it answers, and reports it; the permit is released.
//!
//! A stack without this layer gets the same bound from
//! [`UploadDeadlineLayer`](crate::request::UploadDeadlineLayer).
//!
//! Put it **outside** `SseLayer`, so that `SseLayer` sees the marks:
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_sse::{IncludeUsageLayer, SseLayer};
//!
//! let stack = ServiceBuilder::new()
//!     .layer(IncludeUsageLayer::new())
//!     .layer(SseLayer::new());
//! # let _ = stack;
//! ```
//!
//! When the client did ask for usage, nothing changes, and it gets its usage chunk.
//!
//! # Cost
//!
//! The body is read whole, once: a body that arrives in one frame is kept as it came, a
//! larger one is copied into one buffer sized from its `Content-Length`. A changed body is
//! handed on as slices of those bytes around the inserted member (so the inner service may
//! read it in a few frames), never copied again. serde reads the body once to decide (every
//! byte is checked, the messages are skipped, not kept); only when the client sent a
//! `stream_options` is the top level walked a second time to find it. About 75–110 µs for a 100 KB chat request (`cargo bench --bench
//! per_stream -- request`).

use std::sync::Arc;

mod body;
pub(crate) mod layer;
mod rewrite;
mod service;

pub use self::body::{IncludeUsageBody, UsageRequestBody};
pub use self::layer::IncludeUsageLayer;
pub use self::service::IncludeUsage;

/// The default limit on request bodies the layer reads: 16 MiB.
pub const DEFAULT_MAX_REQUEST_SIZE: usize = 16 * 1024 * 1024;

/// The default [`IncludeUsageLayer::upload_timeout`](crate::IncludeUsageLayer::upload_timeout):
/// 60 seconds for the whole request body (the same as
/// [`request::DEFAULT_UPLOAD_TIMEOUT`](crate::request::DEFAULT_UPLOAD_TIMEOUT)).
pub const DEFAULT_UPLOAD_TIMEOUT: std::time::Duration = crate::request::DEFAULT_UPLOAD_TIMEOUT;

/// What to do with a request body larger than the limit.
///
/// ```
/// use tower_sse::IncludeUsageLayer;
/// use tower_sse::include_usage::Oversized;
///
/// assert_eq!(Oversized::default(), Oversized::PassThrough);
/// // Refuse chat requests over 1 MiB with `413` rather than forward them unread.
/// let layer = IncludeUsageLayer::new()
///     .max_request_size(1024 * 1024)
///     .oversized(Oversized::Reject);
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Oversized {
    /// Forward it unchanged (the default): the request still works, without injected usage.
    #[default]
    PassThrough,
    /// Answer `413 Payload Too Large`.
    Reject,
}

pub(crate) type RequestPredicate = Arc<dyn Fn(&http::request::Parts) -> bool + Send + Sync>;

/// Turns the request body the layer produces into the one the inner service takes.
///
/// Implemented for closures and for [`Unchanged`].
pub trait MapRequestBody<B> {
    /// The body the inner service takes.
    type Output;
    /// Convert.
    fn map(&self, body: UsageRequestBody<B>) -> Self::Output;
}

/// Hands the inner service the [`UsageRequestBody`] itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unchanged;

impl<B> MapRequestBody<B> for Unchanged {
    type Output = UsageRequestBody<B>;
    fn map(&self, body: UsageRequestBody<B>) -> UsageRequestBody<B> {
        body
    }
}

impl<B, F, O> MapRequestBody<B> for F
where
    F: Fn(UsageRequestBody<B>) -> O,
{
    type Output = O;
    fn map(&self, body: UsageRequestBody<B>) -> O {
        self(body)
    }
}
