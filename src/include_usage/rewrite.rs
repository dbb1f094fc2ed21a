//! The request rewrite: `stream_options.include_usage` spliced into the client's JSON bytes.
//!
//! A probe deserializes the top-level keys the layer needs (`model`, `stream`,
//! `stream_options`); serde's derive skips everything else, nested keys included. The change
//! itself is a splice: the body is never re-serialized, so key order, big numbers, escapes and
//! whitespace reach the upstream as the client sent them.

use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body::Body;
use serde::Deserialize;

use crate::json;
use crate::request::{RequestModel, StreamingRequest, UsageInjected};

use super::UsageRequestBody;
use super::body::Pieces;
use super::layer::Config;
use crate::include_usage::IncludeUsageBody;

/// The parts of the request body the layer looks at.
#[derive(Deserialize)]
pub(super) struct Probe {
    #[serde(default)]
    pub(super) model: Option<String>,
    #[serde(default)]
    pub(super) stream: Option<bool>,
    /// `None` when the key is absent, `Some(None)` when it is `null`.
    #[serde(default, deserialize_with = "present")]
    pub(super) stream_options: Option<Option<StreamOptions>>,
}

/// A member that is there, whatever its value (so that an absent key and `null` differ).
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

#[derive(Deserialize)]
pub(super) struct StreamOptions {
    #[serde(default)]
    pub(super) include_usage: Option<bool>,
    #[serde(default)]
    pub(super) continuous_usage_stats: Option<bool>,
}

/// What [`rewrite`] may do with a body it read.
#[derive(Debug, Clone, Copy)]
pub(super) struct Decide {
    /// Splice `stream_options` in (an API that takes it); otherwise only mark the request.
    pub(super) splice: bool,
    /// The path alone says the request streams (Gemini's `:streamGenerateContent`, whose
    /// body has no `stream` flag).
    pub(super) streams_by_path: bool,
}

/// Decide and apply the change to a whole JSON body.
pub(super) fn rewrite<B>(
    mut parts: http::request::Parts,
    body: Bytes,
    trailers: Option<HeaderMap>,
    config: &Config,
    decide: Decide,
) -> (http::request::Parts, UsageRequestBody<B>) {
    if decide.streams_by_path {
        parts.extensions.insert(StreamingRequest);
    }
    let Ok(probe) = serde_json::from_slice::<Probe>(&body) else {
        return (parts, UsageRequestBody::buffered(body, trailers));
    };
    if probe.stream != Some(true) && !decide.streams_by_path {
        return (parts, UsageRequestBody::buffered(body, trailers));
    }
    parts.extensions.insert(StreamingRequest);
    if let Some(model) = probe.model {
        parts.extensions.insert(RequestModel(model));
    }
    if !decide.splice {
        return (parts, UsageRequestBody::buffered(body, trailers));
    }
    let absent = probe.stream_options.is_none();
    let options = probe.stream_options.as_ref().and_then(Option::as_ref);
    let has_usage = options.is_some_and(|o| o.include_usage == Some(true));
    let has_continuous =
        !config.continuous || options.is_some_and(|o| o.continuous_usage_stats == Some(true));
    if has_usage && has_continuous {
        return (parts, UsageRequestBody::buffered(body, trailers));
    }
    let Some(new_body) = splice_stream_options(&body, config.continuous, absent) else {
        return (parts, UsageRequestBody::buffered(body, trailers));
    };
    if !has_usage {
        parts.extensions.insert(UsageInjected);
    }
    // The body is whole now: it has a length, unless trailers follow it (then it is chunked).
    parts.headers.remove(TRANSFER_ENCODING);
    if trailers.is_some() {
        parts.headers.remove(CONTENT_LENGTH);
    } else {
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(new_body.len));
    }
    (parts, UsageRequestBody::buffered(new_body, trailers))
}

const INCLUDE_USAGE: &[u8] = br#""include_usage":true"#;
const CONTINUOUS: &[u8] = br#""continuous_usage_stats":true"#;

/// Set the flags in the top-level `stream_options` by splicing bytes into the client's body:
/// every byte outside the edits stays as the client sent it (no re-serialization, so key
/// order, numbers and whitespace are kept).
///
/// - no top-level `stream_options`: the member is inserted right after the opening brace;
/// - `"stream_options": null` (or any other non-object): that value is replaced by an object;
/// - an object: a flag that is not `true` (`false`, `null`) has just its value replaced, a
///   missing flag is inserted right after the object's opening brace.
///
/// `absent` says that a parser found no top-level `stream_options` in these bytes: then the
/// object is not walked at all (the member goes after its opening brace).
///
/// The result is slices of `body` around the edits, never a copy of it. `None` (the body is
/// then forwarded unchanged) when the bytes are not one JSON object with at most one
/// top-level `stream_options` key, or there is nothing to change.
pub(super) fn splice_stream_options(
    body: &Bytes,
    continuous: bool,
    absent: bool,
) -> Option<Pieces> {
    let wanted: &[(&str, &[u8])] = if continuous {
        &[
            ("include_usage", INCLUDE_USAGE),
            ("continuous_usage_stats", CONTINUOUS),
        ]
    } else {
        &[("include_usage", INCLUDE_USAGE)]
    };
    // The flags as a new object's members: `"include_usage":true,"continuous_usage_stats":true`.
    let all_flags = |out: &mut Vec<u8>| {
        for (i, (_, member)) in wanted.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(member);
        }
    };
    // At most one insertion and two replacements: (where, bytes removed, bytes put there).
    let mut edits: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    let (open, empty, member) = if absent {
        let open = json::skip_ws(body, 0);
        if body.get(open) != Some(&b'{') {
            return None;
        }
        let next = body.get(json::skip_ws(body, open + 1));
        (open, next == Some(&b'}'), None)
    } else {
        let top = json::member(body, "stream_options")?;
        (top.open, top.empty, top.member)
    };
    match member {
        // The usual request: the whole member, right after the opening brace.
        None => {
            let field: &'static [u8] = match (continuous, empty) {
                (false, false) => br#""stream_options":{"include_usage":true},"#,
                (false, true) => br#""stream_options":{"include_usage":true}"#,
                (true, false) => {
                    br#""stream_options":{"include_usage":true,"continuous_usage_stats":true},"#
                }
                (true, true) => {
                    br#""stream_options":{"include_usage":true,"continuous_usage_stats":true}"#
                }
            };
            let at = open + 1;
            return Some(Pieces::from_vec(vec![
                body.slice(..at),
                Bytes::from_static(field),
                body.slice(at..),
            ]));
        }
        Some(options) if body.get(options.value.start) == Some(&b'{') => {
            let object = body.get(options.value.clone())?;
            let base = options.value.start;
            let mut insert = Vec::new();
            let mut open = None;
            for (name, member) in wanted {
                let found = json::member(object, name)?;
                open = Some((base + found.open + 1, found.empty));
                match found.member {
                    Some(m) if object.get(m.value.clone()) == Some(b"true") => {}
                    Some(m) => edits.push((base + m.value.start, m.value.len(), b"true".to_vec())),
                    None => {
                        if !insert.is_empty() {
                            insert.push(b',');
                        }
                        insert.extend_from_slice(member);
                    }
                }
            }
            if let Some((at, empty)) = open
                && !insert.is_empty()
            {
                if !empty {
                    insert.push(b',');
                }
                edits.push((at, 0, insert));
            }
        }
        Some(options) => {
            let mut object = b"{".to_vec();
            all_flags(&mut object);
            object.push(b'}');
            edits.push((options.value.start, options.value.len(), object));
        }
    }
    if edits.is_empty() {
        return None;
    }
    edits.sort_by_key(|&(at, ..)| at);
    let mut pieces = Vec::with_capacity(2 * edits.len() + 1);
    let mut at = 0;
    for (start, removed, bytes) in edits {
        if start < at || start > body.len() {
            return None;
        }
        pieces.push(body.slice(at..start));
        pieces.push(Bytes::from(bytes));
        at = start
            .checked_add(removed)
            .filter(|&end| end <= body.len())?;
    }
    pieces.push(body.slice(at..));
    Some(Pieces::from_vec(pieces))
}

pub(super) enum Read<B> {
    Whole(Bytes, Option<HeaderMap>),
    /// Too large: the bytes read so far, and the rest of the body.
    Oversized(Bytes, Pin<Box<B>>),
    Failed,
}

/// The most reserved up front from a body's size hint: a client that announces a large
/// body and sends little holds no more than this (past it, the buffer grows as bytes come).
const MAX_RESERVE: usize = 1024 * 1024;

/// The bytes read so far. A body that comes in one frame (most requests) is kept as that
/// frame, uncopied; a second frame starts one buffer, sized once from the body's size hint
/// (`Content-Length`, up to [`MAX_RESERVE`]), so that a large upload is copied once and
/// not regrown.
struct Accumulated {
    first: Bytes,
    rest: Option<BytesMut>,
}

impl Accumulated {
    /// Add one frame; `remaining` is what the body says is still to come after it.
    fn push(&mut self, data: Bytes, remaining: u64, limit: usize) {
        if self.first.is_empty() && self.rest.is_none() {
            self.first = data;
            return;
        }
        let buf = self.rest.get_or_insert_with(|| {
            // Enough for the whole body when its length is known, one byte over the limit
            // at most (a body that says it is larger is oversized as soon as it shows it).
            let remaining = usize::try_from(remaining).unwrap_or(usize::MAX);
            let read = self.first.len().saturating_add(data.len());
            let wanted = read
                .saturating_add(remaining)
                .min(limit.saturating_add(1))
                .min(MAX_RESERVE);
            let mut buf = BytesMut::with_capacity(wanted.max(read));
            buf.extend_from_slice(&self.first);
            buf
        });
        buf.extend_from_slice(&data);
    }

    fn len(&self) -> usize {
        self.rest.as_ref().map_or(self.first.len(), BytesMut::len)
    }

    fn into_bytes(self) -> Bytes {
        self.rest.map_or(self.first, BytesMut::freeze)
    }
}

/// Read `body` up to `limit` bytes. Boxed and pinned, so that a body that is not `Unpin`
/// (tower-http's `TimeoutBody`) can still be handed on, partly read, when it is too large.
pub(super) async fn read_bounded<B>(mut body: Pin<Box<B>>, limit: usize) -> Read<B>
where
    B: Body<Data = Bytes>,
{
    let mut read = Accumulated {
        first: Bytes::new(),
        rest: None,
    };
    loop {
        let frame = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await;
        match frame {
            None => return Read::Whole(read.into_bytes(), None),
            Some(Err(_)) => return Read::Failed,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    read.push(data, body.size_hint().lower(), limit);
                    if read.len() > limit {
                        return Read::Oversized(read.into_bytes(), body);
                    }
                }
                Err(frame) => {
                    let trailers = frame.into_trailers().ok();
                    return Read::Whole(read.into_bytes(), trailers);
                }
            },
        }
    }
}

pub(super) fn error_response<B>(
    status: StatusCode,
    kind: &str,
    message: &str,
) -> Response<IncludeUsageBody<B>> {
    let body = format!(r#"{{"error":{{"type":"{kind}","message":"{message}"}}}}"#);
    let mut response = Response::new(IncludeUsageBody::full(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    use crate::include_usage::Oversized;
    use crate::include_usage::body::RequestKind;
    use crate::include_usage::layer::Config;
    use crate::include_usage::service::{default_applies, default_reads};

    fn config() -> Config {
        Config {
            max_size: 1024,
            oversized: Oversized::PassThrough,
            continuous: false,
            applies: None,
            upload_timeout: crate::include_usage::DEFAULT_UPLOAD_TIMEOUT,
        }
    }

    fn apply(body: &str, config: &Config) -> (String, bool, bool) {
        let parts = Request::post("/v1/chat/completions")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let (parts, body) = rewrite::<http_body_util_stub::Never>(
            parts,
            Bytes::from(body.to_string()),
            None,
            config,
            Decide {
                splice: true,
                streams_by_path: false,
            },
        );
        let RequestKind::Buffered { pieces, .. } = body.kind else {
            panic!("a rewrite is always buffered");
        };
        (
            String::from_utf8(pieces.to_vec()).unwrap(),
            parts.extensions.get::<UsageInjected>().is_some(),
            parts.extensions.get::<StreamingRequest>().is_some(),
        )
    }

    mod http_body_util_stub {
        /// A body type for tests that never needs polling.
        pub(super) enum Never {}
    }

    #[test]
    fn stream_without_options_gets_them_inserted_byte_for_byte() {
        let (body, injected, streaming) =
            apply(r#" {"model":"m","stream":true,"messages":[]}"#, &config());
        assert_eq!(
            body,
            r#" {"stream_options":{"include_usage":true},"model":"m","stream":true,"messages":[]}"#
        );
        assert!(injected && streaming);
    }

    #[test]
    fn client_that_asked_is_left_alone() {
        let input = r#"{"stream":true,"stream_options":{"include_usage":true}}"#;
        let (body, injected, streaming) = apply(input, &config());
        assert_eq!(body, input);
        assert!(!injected && streaming);
    }

    #[test]
    fn existing_options_are_merged() {
        let (body, injected, _) = apply(
            r#"{"stream":true,"stream_options":{"include_usage":false}}"#,
            &config(),
        );
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["stream_options"]["include_usage"], true);
        assert!(injected);
    }

    #[test]
    fn non_streaming_and_invalid_bodies_are_untouched() {
        for input in [
            r#"{"stream":false}"#,
            r#"{"model":"m"}"#,
            "not json",
            r#"{"stream":"yes"}"#,
            "[1,2]",
        ] {
            let (body, injected, _) = apply(input, &config());
            assert_eq!(body, input);
            assert!(!injected);
        }
    }

    #[test]
    fn null_stream_options_are_replaced_not_shadowed() {
        let (body, injected, _) = apply(r#"{"stream":true,"stream_options":null}"#, &config());
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["stream_options"]["include_usage"], true, "{body}");
        assert_eq!(body.matches("stream_options").count(), 1, "{body}");
        assert!(injected);
    }

    #[test]
    fn malformed_bodies_pass_through_unchanged() {
        let whole =
            r#"{"stream":true,"stream_options":{"include_usage":false},"m":[1,{"a":"\"}"}]}"#;
        for end in 0..whole.len() {
            let input = &whole[..end];
            let (body, injected, _) = apply(input, &config());
            assert_eq!(body, input);
            assert!(!injected);
        }
        for input in [
            r#"{"stream":true,"stream":true}"#,
            r#"{"stream":true,"stream_options":{"include_usage":1}}"#,
            r#"{"stream":true,"stream_options":{"include_usage":false,"include_usage":false}}"#,
            r#"{"stream":true,"stream_options":5}"#,
            r#"{"stream":true} x"#,
            "\u{feff}{\"stream\":true}",
        ] {
            let (body, injected, _) = apply(input, &config());
            assert_eq!(body, input);
            assert!(!injected);
        }
    }

    #[test]
    fn the_splice_never_panics() {
        let data = Bytes::from_static(
            br#" {"a":"\"}\\","stream_options" :{ "include_usage":null ,"b":[{"c":1}]},"stream":true}"#,
        );
        for start in 0..data.len() {
            for end in start..=data.len() {
                for continuous in [false, true] {
                    for absent in [false, true] {
                        let _ = splice_stream_options(&data.slice(start..end), continuous, absent);
                    }
                }
            }
        }
        assert_eq!(
            splice_stream_options(&data, true, false).map(|p| p.to_vec()),
            Some(br#" {"a":"\"}\\","stream_options" :{"continuous_usage_stats":true, "include_usage":true ,"b":[{"c":1}]},"stream":true}"#.to_vec())
        );
    }

    /// An upload in the given frames, claiming `claimed` bytes in all.
    struct Frames(std::collections::VecDeque<Bytes>, u64);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            let frame = self.0.pop_front();
            if let Some(frame) = &frame {
                self.1 = self.1.saturating_sub(frame.len() as u64);
            }
            std::task::Poll::Ready(frame.map(|f| Ok(http_body::Frame::data(f))))
        }

        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(self.1)
        }
    }

    fn read(frames: &[&'static str], claimed: u64, limit: usize) -> Read<Frames> {
        let frames = frames
            .iter()
            .map(|f| Bytes::from_static(f.as_bytes()))
            .collect();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(read_bounded(Box::pin(Frames(frames, claimed)), limit))
    }

    #[test]
    fn a_body_in_one_frame_is_kept_as_it_came() {
        let frame: &'static str = r#"{"stream":true}"#;
        let Read::Whole(bytes, None) = read(&[frame], 15, 1024) else {
            panic!("read whole");
        };
        assert_eq!(bytes.as_ptr(), frame.as_ptr(), "not copied");
    }

    #[test]
    fn frames_are_joined_whatever_the_size_hint_says() {
        for claimed in [0, 3, 6, 1 << 40, u64::MAX] {
            let Read::Whole(bytes, None) = read(&["", "ab", "", "cd", "ef"], claimed, 1024) else {
                panic!("read whole");
            };
            assert_eq!(&bytes[..], b"abcdef", "claimed {claimed}");
            let Read::Oversized(prefix, mut rest) = read(&["ab", "cd", "ef", "gh"], claimed, 5)
            else {
                panic!("oversized");
            };
            assert_eq!(&prefix[..], b"abcdef", "claimed {claimed}");
            assert_eq!(rest.0.pop_front().as_deref(), Some(&b"gh"[..]));
        }
    }

    #[test]
    fn an_absent_member_is_inserted_where_the_walk_would_put_it() {
        for body in [
            r#"{"stream":true}"#,
            " \n\t{ \"model\":\"m\",\"stream\":true,\"messages\":[{\"stream_options\":1}]} ",
            r#"{"a":{"stream_options":null},"stream":true}"#,
            "{ }",
        ] {
            let body = Bytes::from(body);
            for continuous in [false, true] {
                let walked = splice_stream_options(&body, continuous, false).map(|p| p.to_vec());
                let known = splice_stream_options(&body, continuous, true).map(|p| p.to_vec());
                assert!(walked.is_some(), "{body:?}");
                assert_eq!(walked, known, "{body:?}");
            }
        }
    }

    #[test]
    fn continuous_usage_stats_when_asked() {
        let mut config = config();
        config.continuous = true;
        let (body, _, _) = apply(r#"{"stream":true}"#, &config);
        assert_eq!(
            body,
            r#"{"stream_options":{"include_usage":true,"continuous_usage_stats":true},"stream":true}"#
        );
    }

    #[test]
    fn only_chat_and_completions_paths_by_default() {
        let parts = |method: &str, path: &str, ct: Option<&str>| {
            let mut builder = Request::builder().method(method).uri(path);
            if let Some(ct) = ct {
                builder = builder.header(CONTENT_TYPE, ct);
            }
            builder.body(()).unwrap().into_parts().0
        };
        assert!(default_applies(&parts(
            "POST",
            "/v1/chat/completions",
            Some("application/json")
        )));
        assert!(default_applies(&parts("POST", "/v1/completions", None)));
        assert!(default_applies(&parts(
            "POST",
            "/v1/chat/completions",
            Some("application/json; charset=utf-8")
        )));
        assert!(!default_applies(&parts(
            "POST",
            "/v1/responses",
            Some("application/json")
        )));
        assert!(!default_applies(&parts(
            "GET",
            "/v1/chat/completions",
            None
        )));
        assert!(!default_applies(&parts(
            "POST",
            "/v1/chat/completions",
            Some("multipart/form-data")
        )));
        assert!(!default_applies(&parts("POST", "/v1/embeddings", None)));
    }

    #[test]
    fn every_llm_api_path_is_read_by_default() {
        let post = |path: &str| Request::post(path).body(()).unwrap().into_parts().0;
        for path in [
            "/v1/chat/completions",
            "/v1/messages",
            "/v1/responses",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            "/api/chat",
        ] {
            assert!(default_reads(&post(path)), "{path}");
        }
        assert!(!default_reads(&post("/v1/embeddings")));
        let get = Request::get("/v1/messages")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert!(!default_reads(&get));
    }
}
