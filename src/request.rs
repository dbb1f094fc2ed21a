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
