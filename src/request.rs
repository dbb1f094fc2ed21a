//! Request markers that layers leave in a request's extensions for the layers and observers
//! further in.
//!
//! | marker | set by | read by |
//! |---|---|---|
//! | [`StreamingRequest`] | [`IncludeUsageLayer`](crate::IncludeUsageLayer) (a JSON body with `"stream": true`), or you | [`SseLayer`](crate::SseLayer): deadlines before the head, early response |
//! | [`UsageInjected`] | [`IncludeUsageLayer`](crate::IncludeUsageLayer) | [`UsageObserver`](crate::UsageObserver): hides the usage-only chunk |
//! | [`RequestModel`] | [`IncludeUsageLayer`](crate::IncludeUsageLayer) | [`MetricsObserver`](crate::MetricsObserver): `gen_ai.request.model` |

use http::header::ACCEPT;

/// Marks a request as a streaming one, for layers further in.
///
/// [`IncludeUsageLayer`](crate::IncludeUsageLayer) inserts it into the request extensions
/// when the JSON body says `"stream": true`; insert it yourself from any layer that knows.
/// [`SseLayer`](crate::SseLayer) treats such requests (and those that accept
/// `text/event-stream`) as streams before their response arrives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamingRequest;

/// Whether a request surely wants a stream: it carries [`StreamingRequest`], or every media
/// range its `Accept` lists is `text/event-stream`. Only then may a layer answer with a stream
/// before the upstream did: an MCP Streamable-HTTP client accepts `application/json,
/// text/event-stream`, and a JSON answer to it must reach it as JSON.
pub(crate) fn surely_streams(request: &http::request::Parts) -> bool {
    if request.extensions.get::<StreamingRequest>().is_some() {
        return true;
    }
    let mut ranges = request
        .headers
        .get_all(ACCEPT)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(|range| {
            let media = range.split(|&b| b == b';').next().unwrap_or_default();
            media.trim_ascii()
        })
        .filter(|media| !media.is_empty())
        .peekable();
    ranges.peek().is_some() && ranges.all(|media| media.eq_ignore_ascii_case(b"text/event-stream"))
}

/// The default "is this a streaming request?" test.
pub(crate) fn is_streaming_request(request: &http::request::Parts) -> bool {
    request.extensions.get::<StreamingRequest>().is_some()
        || request.headers.get_all(ACCEPT).iter().any(|v| {
            v.as_bytes()
                .windows(17)
                .any(|w| w.eq_ignore_ascii_case(b"text/event-stream"))
        })
}

/// Set on a request by [`IncludeUsageLayer`](crate::IncludeUsageLayer) when it added `stream_options.include_usage`
/// that the client did not ask for. The usage observer then keeps the upstream's usage-only
/// chunk from the client while still reading its usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageInjected;

/// The model the request asked for (`"model"` of the JSON body), set on streaming requests
/// by [`IncludeUsageLayer`](crate::IncludeUsageLayer); the metrics observer reports it as `gen_ai.request.model`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestModel(pub String);
