//! Is this response a stream we handle, and how is it framed: [`Framing`] and [`detect`],
//! the one rule every layer (and a gateway) uses.

use http::HeaderMap;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};

/// How the upstream framed its stream: [`StreamReport::framing`](crate::StreamReport::framing).
///
/// ```
/// use tower_sse::StreamReport;
/// use tower_sse::framing::Framing;
///
/// fn wire_format(report: &StreamReport) -> &'static str {
///     match report.framing {
///         Framing::Sse => "sse",
///         // Reframed into SSE for the client (`SseLayer::json_lines`).
///         Framing::JsonLines => "ndjson",
///         _ => "other",
///     }
/// }
///
/// let report = StreamReport::new(tokio::time::Instant::now());
/// assert_eq!(wire_format(&report), "sse");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Framing {
    /// `text/event-stream`, decoded and forwarded as it came.
    Sse,
    /// One JSON value per line (NDJSON), reframed into SSE `data:` events (kept as lines
    /// for a client that asked for NDJSON: [`wants_json_lines`]).
    JsonLines,
    /// Not a stream: the upstream answered a streaming request with something else (an
    /// error in JSON, a `429`), which the client got untouched (or, after an early
    /// response, in place of which it got an error event).
    NotAStream,
    /// An event stream (SSE, or NDJSON when the layer reframes it) with a
    /// `Content-Encoding` other than `identity` (`gzip`, `br`, ...). Its bytes are not events
    /// until decompressed, and the layer does not decompress: it passes them through as they
    /// come, and still counts, limits, times and reports the stream. It adds nothing to the
    /// bytes (no keep-alive, no error event: either would corrupt the compressed body), so a
    /// deadline or a shutdown ends the body where it is; observers see no event, the
    /// report's byte counts are the compressed ones, and every upstream data frame counts as
    /// activity for the deadlines (the first one as the first event). A gateway that wants
    /// events metered asks its upstream for `Accept-Encoding: identity`.
    Encoded,
}

/// The media type of a response, without parameters (compare it case-insensitively).
fn media_type(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next()?.trim())
}

/// The types a stream of JSON lines comes as.
const JSON_LINES: &[&str] = &[
    "application/x-ndjson",
    "application/ndjson",
    "application/jsonl",
    "application/x-jsonlines",
    "application/jsonlines",
    "application/json-lines",
];

/// Is this response a stream, and how is it framed? The one test of the crate, made from the
/// response head: `text/event-stream` is [`Framing::Sse`]; with `json_lines`, the NDJSON media
/// types (`application/x-ndjson`, `application/jsonl`, …) are [`Framing::JsonLines`]; the
/// media type is compared without its parameters and case-insensitively. Such a stream with
/// a `Content-Encoding` other than `identity` is [`Framing::Encoded`]: still a stream (the
/// layers count, limit and report it), whose bytes pass as they come. Never returns
/// [`Framing::NotAStream`].
///
/// The [`SseLayer`](crate::SseLayer) makes this test (unless given its own with
/// [`SseLayer::framing`](crate::SseLayer::framing)), with `json_lines` as set by [`SseLayer::json_lines`](crate::SseLayer::json_lines);
/// [`StreamLimitLayer`](crate::StreamLimitLayer)'s default test is `detect(headers, true)`;
/// the `ResumeLayer` resumes `200` responses for which `detect(headers, false)` is
/// `Some(Framing::Sse)` (never an encoded one).
///
/// ```
/// use http::HeaderMap;
/// use tower_sse::framing::{self, Framing};
///
/// let mut headers = HeaderMap::new();
/// headers.insert("content-type", "text/event-stream; charset=utf-8".parse().unwrap());
/// assert_eq!(framing::detect(&headers, false), Some(Framing::Sse));
/// headers.insert("content-encoding", "gzip".parse().unwrap());
/// assert_eq!(framing::detect(&headers, false), Some(Framing::Encoded));
/// ```
pub fn detect(headers: &HeaderMap, json_lines: bool) -> Option<Framing> {
    let media_type = media_type(headers)?;
    let framing = if media_type.eq_ignore_ascii_case("text/event-stream") {
        Framing::Sse
    } else if json_lines
        && JSON_LINES
            .iter()
            .any(|t| media_type.eq_ignore_ascii_case(t))
    {
        Framing::JsonLines
    } else {
        return None;
    };
    if is_encoded(headers) {
        return Some(Framing::Encoded);
    }
    Some(framing)
}

/// Whether a request's `Accept` asks for NDJSON and not for SSE (an Ollama client reading
/// lines): the [`SseLayer`](crate::SseLayer) then keeps an NDJSON stream as NDJSON instead
/// of reframing it into SSE (see [`SseLayer::json_lines`](crate::SseLayer::json_lines)).
///
/// ```
/// use http::HeaderMap;
/// use tower_sse::framing::wants_json_lines;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("accept", "application/x-ndjson".parse().unwrap());
/// assert!(wants_json_lines(&headers));
/// headers.insert("accept", "application/x-ndjson, text/event-stream".parse().unwrap());
/// assert!(!wants_json_lines(&headers));
/// ```
pub fn wants_json_lines(request_headers: &HeaderMap) -> bool {
    let mut lines = false;
    for range in request_headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let media = range.split(';').next().unwrap_or_default().trim();
        if media.eq_ignore_ascii_case("text/event-stream") {
            return false;
        }
        lines |= JSON_LINES.iter().any(|t| media.eq_ignore_ascii_case(t));
    }
    lines
}

/// Whether the body has a `Content-Encoding` other than `identity` (each listed coding is
/// looked at: `identity, gzip` is encoded).
pub fn is_encoded(headers: &HeaderMap) -> bool {
    headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(b"identity"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_by_content_type() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            "Text/Event-Stream; charset=utf-8".parse().unwrap(),
        );
        assert_eq!(detect(&headers, false), Some(Framing::Sse));
        headers.insert(CONTENT_TYPE, "application/x-ndjson".parse().unwrap());
        assert_eq!(detect(&headers, false), None);
        assert_eq!(detect(&headers, true), Some(Framing::JsonLines));
        headers.insert(CONTENT_TYPE, "application/json".parse().unwrap());
        assert_eq!(detect(&headers, true), None);
    }

    #[test]
    fn compressed_streams_are_encoded_streams() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, "text/event-stream".parse().unwrap());
        headers.insert(CONTENT_ENCODING, "gzip".parse().unwrap());
        assert_eq!(detect(&headers, false), Some(Framing::Encoded));
        headers.insert(CONTENT_ENCODING, "identity, br".parse().unwrap());
        assert_eq!(detect(&headers, false), Some(Framing::Encoded));
        headers.insert(CONTENT_ENCODING, "identity".parse().unwrap());
        assert_eq!(detect(&headers, false), Some(Framing::Sse));
        headers.insert(CONTENT_TYPE, "application/x-ndjson".parse().unwrap());
        headers.insert(CONTENT_ENCODING, "br".parse().unwrap());
        assert_eq!(detect(&headers, false), None);
        assert_eq!(detect(&headers, true), Some(Framing::Encoded));
        // A compressed answer that is not a stream stays none.
        headers.insert(CONTENT_TYPE, "application/json".parse().unwrap());
        assert_eq!(detect(&headers, true), None);
    }
}
