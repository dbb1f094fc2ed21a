//! The request rewrite: `stream_options.include_usage` spliced into the client's JSON bytes.

use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body::Body;
use serde::Deserialize;

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
    // Inserting the field keeps the client's bytes, but only when the key is absent: a
    // `"stream_options": null` must be replaced, not shadowed by a duplicate key.
    let key_present = memchr::memmem::find(&body, b"\"stream_options\"").is_some();
    let new_body = if options.is_none() && !key_present {
        insert_stream_options(&body, config.continuous)
    } else {
        merge_stream_options(&body, config.continuous)
    };
    let Some(new_body) = new_body else {
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

/// Add the option right after the opening brace: every other byte stays as the client sent it.
pub(super) fn insert_stream_options(body: &[u8], continuous: bool) -> Option<Bytes> {
    let open = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[open] != b'{' {
        return None;
    }
    let field: &[u8] = if continuous {
        br#""stream_options":{"include_usage":true,"continuous_usage_stats":true},"#
    } else {
        br#""stream_options":{"include_usage":true},"#
    };
    let mut out = BytesMut::with_capacity(body.len() + field.len());
    out.extend_from_slice(&body[..=open]);
    out.extend_from_slice(field);
    out.extend_from_slice(&body[open + 1..]);
    Some(out.freeze())
}

/// `stream_options` exists (maybe as `null`): set the flags in it (the body is re-serialized).
pub(super) fn merge_stream_options(body: &[u8], continuous: bool) -> Option<Bytes> {
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let options = value
        .as_object_mut()?
        .entry("stream_options")
        .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    if !options.is_object() {
        *options = serde_json::Value::Object(serde_json::Map::new());
    }
    let options = options.as_object_mut()?;
    options.insert("include_usage".into(), true.into());
    if continuous {
        options.insert("continuous_usage_stats".into(), true.into());
    }
    serde_json::to_vec(&value).ok().map(Bytes::from)
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
        let RequestKind::Buffered { data, .. } = body.kind;
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
