//! Which API a route speaks, and what each answers: stream, whole JSON or error body.

use axum::body::Body;

use crate::body::MockBody;
use crate::config::Controls;
use crate::format::anthropic::{self, AnthropicScript};
use crate::format::chat::{self, ChatScript};
use crate::format::gemini::{self, Framing, GeminiScript};
use crate::format::ollama::{self, Endpoint, OllamaScript};
use crate::format::responses::{self, ResponsesScript};
use crate::format::{Reply, openai_error_body};
use crate::request::Call;
use crate::stats::OpenStream;

/// The API of one route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Chat,
    Responses,
    Anthropic,
    /// `streamGenerateContent` (with its framing) or `generateContent` (`None`).
    Gemini(Option<Framing>),
    Ollama(Endpoint),
}

impl Api {
    /// Whether to stream: the request's `stream` field, or for Gemini the method.
    pub(crate) fn streams(self, call: &Call) -> bool {
        match self {
            Self::Gemini(framing) => framing.is_some(),
            _ => call.stream,
        }
    }

    /// The content type of a stream.
    pub(crate) fn stream_content_type(self) -> &'static str {
        match self {
            Self::Gemini(Some(Framing::JsonArray)) => "application/json",
            Self::Ollama(_) => "application/x-ndjson",
            _ => "text/event-stream",
        }
    }

    /// The streaming body.
    pub(crate) fn stream(self, reply: Reply, controls: &Controls, open: OpenStream) -> Body {
        match self {
            Self::Chat => Body::new(MockBody::new(ChatScript::new(reply), controls, open)),
            Self::Responses => {
                Body::new(MockBody::new(ResponsesScript::new(reply), controls, open))
            }
            Self::Anthropic => {
                Body::new(MockBody::new(AnthropicScript::new(reply), controls, open))
            }
            Self::Gemini(framing) => {
                let script = GeminiScript::new(reply, framing.unwrap_or(Framing::JsonArray));
                Body::new(MockBody::new(script, controls, open))
            }
            Self::Ollama(endpoint) => Body::new(MockBody::new(
                OllamaScript::new(reply, endpoint),
                controls,
                open,
            )),
        }
    }

    /// The whole answer when not streaming.
    pub(crate) fn complete(self, reply: &Reply) -> String {
        match self {
            Self::Chat => chat::complete(reply),
            Self::Responses => responses::complete(reply),
            Self::Anthropic => anthropic::complete(reply),
            Self::Gemini(_) => gemini::complete(reply),
            Self::Ollama(endpoint) => ollama::complete(reply, endpoint),
        }
    }

    /// The JSON body of an HTTP error in this API's shape.
    pub(crate) fn error_body(self, status: u16, message: &str) -> String {
        match self {
            Self::Chat | Self::Responses => openai_error_body(status, message),
            Self::Anthropic => anthropic::error_body(status, message),
            Self::Gemini(_) => gemini::error_body(status, message),
            Self::Ollama(_) => ollama::error_body(message),
        }
    }
}
