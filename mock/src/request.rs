//! What a request asks for: model, streaming, usage, and the mock controls.

use http::HeaderMap;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{Controls, MockConfig};

/// Every control header starts with this.
const HEADER_PREFIX: &str = "x-mock-";

/// The prompt tokens the mock reports for a request body of `body_len` bytes: one token per
/// four bytes, rounded up.
pub fn prompt_tokens(body_len: usize) -> u64 {
    body_len.div_ceil(4) as u64
}

/// One request, resolved.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) model: String,
    /// A missing `stream` field means streaming, so that `curl -d '{}'` streams.
    pub(crate) stream: bool,
    /// OpenAI Chat `stream_options.include_usage`.
    pub(crate) include_usage: bool,
    pub(crate) prompt_tokens: u64,
    pub(crate) controls: Controls,
}

#[derive(Deserialize, Default)]
struct Fields {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    mock: Option<serde_json::Map<String, Value>>,
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

impl Call {
    /// Read the body's fields, then the `mock` object, then the `x-mock-*` headers (which win).
    pub(crate) fn parse(
        config: &MockConfig,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Self, String> {
        let fields: Fields = if body.iter().all(u8::is_ascii_whitespace) {
            Fields::default()
        } else {
            serde_json::from_slice(body)
                .map_err(|e| format!("the request body is not a JSON object: {e}"))?
        };
        let mut controls = config.controls.clone();
        for (name, value) in fields.mock.iter().flatten() {
            let text = match value {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.clone(),
                Value::Null => "none".to_owned(),
                other => {
                    return Err(format!(
                        "mock control `{name}`: expected a number or a string, got {other}"
                    ));
                }
            };
            controls.set(name, &text).map_err(|e| e.to_string())?;
        }
        for (name, value) in headers {
            let Some(control) = name.as_str().strip_prefix(HEADER_PREFIX) else {
                continue;
            };
            let value = value
                .to_str()
                .map_err(|_| format!("header `{name}` is not visible ASCII"))?;
            controls.set(control, value).map_err(|e| e.to_string())?;
        }
        Ok(Self {
            model: fields.model.unwrap_or_else(|| config.model.clone()),
            stream: fields.stream.unwrap_or(true),
            include_usage: fields
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            prompt_tokens: prompt_tokens(body.len()),
            controls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn header_wins_over_body() {
        let mut headers = HeaderMap::new();
        headers.insert("x-mock-tokens", HeaderValue::from_static("5"));
        let body =
            br#"{"model":"m","stream":false,"mock":{"tokens":3,"seed":"8","stall_after":null}}"#;
        let call = Call::parse(&MockConfig::new().stall_after(2), &headers, body).unwrap();
        assert_eq!(call.controls.tokens, 5);
        assert_eq!(call.controls.seed, 8);
        assert_eq!(call.controls.stall_after, None);
        assert_eq!(call.model, "m");
        assert!(!call.stream);
        assert_eq!(call.prompt_tokens, prompt_tokens(body.len()));
    }

    #[test]
    fn empty_body_streams_with_defaults() {
        let call = Call::parse(&MockConfig::new(), &HeaderMap::new(), b"").unwrap();
        assert!(call.stream);
        assert_eq!(call.model, "mock-model");
        assert_eq!(call.prompt_tokens, 0);
    }

    #[test]
    fn bad_controls_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert("x-mock-tokenz", HeaderValue::from_static("5"));
        assert!(Call::parse(&MockConfig::new(), &headers, b"{}").is_err());
        assert!(
            Call::parse(
                &MockConfig::new(),
                &HeaderMap::new(),
                br#"{"mock":{"tokens":true}}"#
            )
            .is_err()
        );
        assert!(Call::parse(&MockConfig::new(), &HeaderMap::new(), b"[1]").is_err());
    }
}
