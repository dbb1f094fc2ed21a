//! Request markers that layers leave in a request's extensions for the layers and observers
//! further in.
//!
//! | marker | set by | read by |
//! |---|---|---|
//! | [`StreamingRequest`] | [`IncludeUsageLayer`](crate::IncludeUsageLayer) (a JSON body with `"stream": true`), or you | [`SseLayer`](crate::SseLayer): deadlines before the head, early response |
//! | [`UsageInjected`] | [`IncludeUsageLayer`](crate::IncludeUsageLayer) | [`UsageObserver`](crate::UsageObserver): hides the usage-only chunk |
//! | [`Arrival`] | the outermost tower-sse layer | every tower-sse layer: deadlines and latencies count from it |
//! | [`UploadTimedOut`] | [`IncludeUsageLayer`](crate::IncludeUsageLayer) (the body did not arrive in time) | [`SseLayer`](crate::SseLayer): answers `408` and reports |
//! | [`RequestModel`] | [`IncludeUsageLayer`](crate::IncludeUsageLayer) | [`MetricsObserver`](crate::MetricsObserver): `gen_ai.request.model` |

use http::header::ACCEPT;
use tokio::time::Instant;

/// When the request reached the outermost tower-sse layer: the stream's deadlines (first
/// event, total) and its latencies count from here, so that they also cover the time spent
/// reading the request body in an outer layer (a stalled upload cannot hold a stream's permit
/// past them).
///
/// Each tower-sse layer inserts it when it is not there yet; insert it yourself in an outer
/// layer to count from earlier still.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival(pub Instant);

impl Arrival {
    /// The arrival of this request: the one an outer layer stamped, or now (stamped).
    pub(crate) fn stamp(extensions: &mut http::Extensions) -> Instant {
        if let Some(arrival) = extensions.get::<Arrival>() {
            return arrival.0;
        }
        let now = Instant::now();
        extensions.insert(Arrival(now));
        now
    }
}

/// Set on a request by [`IncludeUsageLayer`](crate::IncludeUsageLayer) when its body did not
/// arrive before the upload timeout: the body the inner service gets fails at once (it is
/// incomplete). [`SseLayer`](crate::SseLayer) answers such a request `408 Request Timeout`
/// without calling its inner service, and reports it with
/// [`Outcome::RequestTimeout`](crate::Outcome::RequestTimeout).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadTimedOut;

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
