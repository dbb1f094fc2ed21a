//! What a request is estimated to take, from its body, before the upstream sees it.
//!
//! - **Input tokens:** the request body's bytes through a
//!   [`TokenCounter`](crate::usage::TokenCounter) (the default
//!   [`HeuristicCounter`](crate::usage::HeuristicCounter): 4 bytes a token, rounded up). The
//!   whole body is counted, JSON keys and punctuation included, so the estimate leans high;
//!   settlement corrects it to the provider's count.
//! - **Output tokens:** the request's own cap, the first present of `max_tokens` (OpenAI
//!   Chat, Anthropic), `max_completion_tokens` (OpenAI Chat), `max_output_tokens` (OpenAI
//!   Responses) and `generationConfig.maxOutputTokens` (Gemini), else the layer's default
//!   ([`BudgetLayer::default_output_tokens`](super::BudgetLayer::default_output_tokens)).
//! - **Model:** `"model"` of the body, else the `models/{model}:` segment of a Gemini path.

use serde::Deserialize;

use crate::usage::{HeuristicCounter, TokenCounter};

/// What one request is estimated to take.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RequestEstimate {
    /// The model asked for, when the request names one.
    pub model: Option<String>,
    /// Estimated input tokens.
    pub input_tokens: u64,
    /// The output cap the request sets, or the default.
    pub output_tokens: u64,
    /// Whether `output_tokens` is the request's own cap (not the default).
    pub output_capped: bool,
}

#[derive(Deserialize, Default)]
struct Fields {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
    #[serde(default, rename = "generationConfig")]
    generation_config: Option<GenerationConfig>,
}

#[derive(Deserialize, Default)]
struct GenerationConfig {
    #[serde(default, rename = "maxOutputTokens")]
    max_output_tokens: Option<u64>,
}

impl RequestEstimate {
    /// The estimate of a request to `path` with this body (any bytes: a body that is not
    /// JSON, or whose fields have other types, still counts its bytes as input).
    ///
    /// ```
    /// use tower_sse::budget::RequestEstimate;
    ///
    /// let body = br#"{"model":"gpt-4o","max_tokens":64,"messages":[{"role":"user","content":"Hi"}]}"#;
    /// let estimate = RequestEstimate::of("/v1/chat/completions", body, 4, 1024);
    /// assert_eq!(estimate.model.as_deref(), Some("gpt-4o"));
    /// assert_eq!(estimate.output_tokens, 64);
    /// assert_eq!(estimate.input_tokens, (body.len() as u64).div_ceil(4));
    /// ```
    pub fn of(path: &str, body: &[u8], bytes_per_token: u32, default_output: u64) -> Self {
        let fields: Fields = serde_json::from_slice(body).unwrap_or_default();
        let cap = fields
            .max_tokens
            .or(fields.max_completion_tokens)
            .or(fields.max_output_tokens)
            .or(fields.generation_config.and_then(|g| g.max_output_tokens));
        let mut counter = HeuristicCounter::new().bytes_per_token(bytes_per_token);
        counter.add_text(body);
        Self {
            model: fields.model.or_else(|| model_from_path(path)),
            input_tokens: counter.estimate().unwrap_or(0),
            output_tokens: cap.unwrap_or(default_output),
            output_capped: cap.is_some(),
        }
    }
}

/// Gemini names the model in the path: `/v1beta/models/gemini-2.0-flash:streamGenerateContent`.
fn model_from_path(path: &str) -> Option<String> {
    let rest = &path[path.find("/models/")? + "/models/".len()..];
    let model = rest.split([':', '/']).next()?;
    (!model.is_empty()).then(|| model.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_of_every_provider() {
        let of = |body: &str| RequestEstimate::of("/v1/x", body.as_bytes(), 4, 7).output_tokens;
        assert_eq!(of(r#"{"max_tokens":5}"#), 5);
        assert_eq!(of(r#"{"max_completion_tokens":6}"#), 6);
        assert_eq!(of(r#"{"max_output_tokens":8}"#), 8);
        assert_eq!(of(r#"{"generationConfig":{"maxOutputTokens":9}}"#), 9);
        assert_eq!(of(r#"{"max_tokens":"lots"}"#), 7);
        assert_eq!(of("not json"), 7);
        let gemini = RequestEstimate::of(
            "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
            b"{}",
            4,
            1,
        );
        assert_eq!(gemini.model.as_deref(), Some("gemini-2.0-flash"));
    }
}
