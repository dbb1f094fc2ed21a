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

use crate::provider;
use crate::request::{RequestModel, StreamingRequest, UsageInjected};

use super::UsageRequestBody;
use super::layer::Config;
use crate::include_usage::IncludeUsageBody;

/// The parts of the request body the layer looks at.
#[derive(Deserialize)]
pub(super) struct Probe {
    #[serde(default)]
    pub(super) model: Option<String>,
    #[serde(default)]
    pub(super) stream: Option<bool>,
    #[serde(default)]
    pub(super) stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
pub(super) struct StreamOptions {
    #[serde(default)]
    pub(super) include_usage: Option<bool>,
    #[serde(default)]
    pub(super) continuous_usage_stats: Option<bool>,
}

/// Decide and apply the change to a whole JSON body.
pub(super) fn rewrite<B>(
    mut parts: http::request::Parts,
    body: Bytes,
    trailers: Option<HeaderMap>,
    config: &Config,
) -> (http::request::Parts, UsageRequestBody<B>) {
    let Ok(probe) = serde_json::from_slice::<Probe>(&body) else {
        return (parts, UsageRequestBody::buffered(body, trailers));
    };
    if probe.stream != Some(true) {
        return (parts, UsageRequestBody::buffered(body, trailers));
    }
    parts.extensions.insert(StreamingRequest);
    if let Some(model) = probe.model {
        parts.extensions.insert(RequestModel(model));
    }
    let options = probe.stream_options.as_ref();
    let has_usage = options.is_some_and(|o| o.include_usage == Some(true));
    let has_continuous =
        !config.continuous || options.is_some_and(|o| o.continuous_usage_stats == Some(true));
    if has_usage && has_continuous {
        return (parts, UsageRequestBody::buffered(body, trailers));
    }
    let Some(new_body) = splice_stream_options(&body, config.continuous) else {
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
            .insert(CONTENT_LENGTH, HeaderValue::from(new_body.len()));
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
/// `None` (the body is then forwarded unchanged) when the bytes are not one JSON object with
/// at most one top-level `stream_options` key, or there is nothing to change.
pub(super) fn splice_stream_options(body: &[u8], continuous: bool) -> Option<Bytes> {
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
    let mut edits: Vec<(usize, usize, Vec<u8>)> = Vec::with_capacity(wanted.len() + 1);
    let top = provider::json::member(body, "stream_options")?;
    match top.member {
        None => {
            let mut field = br#""stream_options":{"#.to_vec();
            all_flags(&mut field);
            field.push(b'}');
            if !top.empty {
                field.push(b',');
            }
            edits.push((top.open + 1, 0, field));
        }
        Some(options) if body.get(options.value.start) == Some(&b'{') => {
            let object = body.get(options.value.clone())?;
            let base = options.value.start;
            let mut insert = Vec::new();
            let mut open = None;
            for (name, member) in wanted {
                let found = provider::json::member(object, name)?;
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
    let added: usize = edits.iter().map(|(_, _, bytes)| bytes.len()).sum();
    let mut out = BytesMut::with_capacity(body.len() + added);
    let mut at = 0;
    for (start, removed, bytes) in edits {
        out.extend_from_slice(body.get(at..start)?);
        out.extend_from_slice(&bytes);
        at = start + removed;
    }
    out.extend_from_slice(body.get(at..)?);
    Some(out.freeze())
}

pub(super) enum Read<B> {
    Whole(Bytes, Option<HeaderMap>),
    /// Too large: the bytes read so far, and the rest of the body.
    Oversized(Bytes, B),
    Failed,
}

pub(super) async fn read_bounded<B>(mut body: B, limit: usize) -> Read<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut buf = BytesMut::new();
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            None => return Read::Whole(buf.freeze(), None),
            Some(Err(_)) => return Read::Failed,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    buf.extend_from_slice(&data);
                    if buf.len() > limit {
                        return Read::Oversized(buf.freeze(), body);
                    }
                }
                Err(frame) => {
                    let trailers = frame.into_trailers().ok();
                    return Read::Whole(buf.freeze(), trailers);
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
    use crate::include_usage::service::default_applies;

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
        );
        let RequestKind::Buffered { data, .. } = body.kind else {
            panic!("a rewrite is always buffered");
        };
        (
            String::from_utf8(data.unwrap_or_default().to_vec()).unwrap(),
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
        let data: &[u8] =
            br#" {"a":"\"}\\","stream_options" :{ "include_usage":null ,"b":[{"c":1}]},"stream":true}"#;
        for start in 0..data.len() {
            for end in start..=data.len() {
                for continuous in [false, true] {
                    let _ = splice_stream_options(&data[start..end], continuous);
                }
            }
        }
        assert_eq!(
            splice_stream_options(data, true).as_deref(),
            Some(&br#" {"a":"\"}\\","stream_options" :{"continuous_usage_stats":true, "include_usage":true ,"b":[{"c":1}]},"stream":true}"#[..])
        );
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
}
