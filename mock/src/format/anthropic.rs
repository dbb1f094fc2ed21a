//! Anthropic Messages: named events from `message_start` to `message_stop`.
//!
//! `message_start` carries the input tokens and a placeholder output count of 1;
//! `message_delta` carries the cumulative usage (input tokens restated) and the stop reason.
//! A `ping` follows `content_block_start` and every [`PING_EVERY`] deltas.

use bytes::Bytes;

use super::{Reply, Script, Step, fault_message, json_string, sse};

/// A `ping` event after this many text deltas (when more follow).
pub(crate) const PING_EVERY: u32 = 8;

#[derive(Debug, Clone, Copy)]
enum Phase {
    Start,
    BlockStart,
    /// A ping, then the delta of this token (or the block stop).
    Ping(u32),
    Delta(u32),
    BlockStop,
    MessageDelta,
    Stop,
    End,
}

/// The event script of one Messages stream.
#[derive(Debug)]
pub(crate) struct AnthropicScript {
    reply: Reply,
    phase: Phase,
}

impl AnthropicScript {
    pub(crate) fn new(reply: Reply) -> Self {
        Self {
            reply,
            phase: Phase::Start,
        }
    }

    /// What follows the delta of token `i`.
    fn after_delta(&self, i: u32) -> Phase {
        let next = i + 1;
        if next >= self.reply.tokens {
            Phase::BlockStop
        } else if next.is_multiple_of(PING_EVERY) {
            Phase::Ping(next)
        } else {
            Phase::Delta(next)
        }
    }
}

fn usage(reply: &Reply, output_tokens: u64) -> String {
    format!(
        r#"{{"input_tokens":{},"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":{output_tokens}}}"#,
        reply.prompt_tokens
    )
}

fn event(kind: &str, data: &str) -> Bytes {
    sse(Some(kind), data, "\n")
}

impl Script for AnthropicScript {
    fn next_step(&mut self) -> Option<Step> {
        let reply = &self.reply;
        let (step, next) = match self.phase {
            Phase::Start => {
                let data = format!(
                    r#"{{"type":"message_start","message":{{"id":"msg_mock_{}","type":"message","role":"assistant","model":{},"content":[],"stop_reason":null,"stop_sequence":null,"usage":{}}}}}"#,
                    reply.number,
                    reply.model,
                    usage(reply, 1)
                );
                (Step::meta(event("message_start", &data)), Phase::BlockStart)
            }
            Phase::BlockStart => (
                Step::meta(event(
                    "content_block_start",
                    r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
                )),
                Phase::Ping(0),
            ),
            Phase::Ping(i) => (
                Step::meta(event("ping", r#"{"type": "ping"}"#)),
                if i < reply.tokens {
                    Phase::Delta(i)
                } else {
                    Phase::BlockStop
                },
            ),
            Phase::Delta(i) => {
                let data = format!(
                    r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":{}}}}}"#,
                    reply.words.json(i)
                );
                (
                    Step::token(event("content_block_delta", &data)),
                    self.after_delta(i),
                )
            }
            Phase::BlockStop => (
                Step::meta(event(
                    "content_block_stop",
                    r#"{"type":"content_block_stop","index":0}"#,
                )),
                Phase::MessageDelta,
            ),
            Phase::MessageDelta => {
                let data = format!(
                    r#"{{"type":"message_delta","delta":{{"stop_reason":"end_turn","stop_sequence":null}},"usage":{}}}"#,
                    usage(reply, u64::from(reply.tokens))
                );
                (Step::meta(event("message_delta", &data)), Phase::Stop)
            }
            Phase::Stop => (
                Step::meta(event("message_stop", r#"{"type":"message_stop"}"#)),
                Phase::End,
            ),
            Phase::End => return None,
        };
        self.phase = next;
        Some(step)
    }

    fn error_event(&mut self, after: u32) -> Bytes {
        event(
            "error",
            &format!(
                r#"{{"type":"error","error":{{"type":"overloaded_error","message":{}}}}}"#,
                fault_message(after)
            ),
        )
    }
}

/// The answer to `"stream": false`: one `message` object.
pub(crate) fn complete(reply: &Reply) -> String {
    format!(
        r#"{{"id":"msg_mock_{}","type":"message","role":"assistant","model":{},"content":[{{"type":"text","text":{}}}],"stop_reason":"end_turn","stop_sequence":null,"usage":{}}}"#,
        reply.number,
        reply.model,
        reply.text_json(),
        usage(reply, u64::from(reply.tokens))
    )
}

/// An HTTP error body.
pub(crate) fn error_body(status: u16, message: &str) -> String {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    format!(
        r#"{{"type":"error","error":{{"type":"{kind}","message":{}}}}}"#,
        json_string(message)
    )
}
