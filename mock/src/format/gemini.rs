//! Gemini `streamGenerateContent`: with `?alt=sse`, SSE `data:` events with CRLF line ends
//! (as Google sends them); without, one JSON array streamed element by element.
//!
//! Every chunk carries one token in `candidates[0].content.parts[0].text` and
//! `usageMetadata` with running totals; the last one has `"finishReason":"STOP"`.

use bytes::Bytes;

use super::{Reply, Script, Step, fault_message, json_string, sse};

/// How chunks are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `?alt=sse`: one SSE event per chunk.
    Sse,
    /// The default: a JSON array, `[` before the first element, `,\r\n` between, `]` last.
    JsonArray,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Chunk(u32),
    CloseArray,
    End,
}

/// The event script of one Gemini stream.
#[derive(Debug)]
pub(crate) struct GeminiScript {
    reply: Reply,
    framing: Framing,
    phase: Phase,
    /// Whether an array element was written (so the next needs a comma).
    opened: bool,
}

impl GeminiScript {
    pub(crate) fn new(reply: Reply, framing: Framing) -> Self {
        Self {
            reply,
            framing,
            phase: Phase::Chunk(0),
            opened: false,
        }
    }

    fn frame(&mut self, json: &str) -> Bytes {
        match self.framing {
            Framing::Sse => sse(None, json, "\r\n"),
            Framing::JsonArray => {
                let lead = if self.opened { ",\r\n" } else { "[" };
                self.opened = true;
                Bytes::from(format!("{lead}{json}"))
            }
        }
    }
}

fn chunk(reply: &Reply, text: &str, candidates_tokens: u64, last: bool) -> String {
    let finish = if last {
        r#","finishReason":"STOP""#
    } else {
        ""
    };
    format!(
        r#"{{"candidates":[{{"content":{{"parts":[{{"text":{text}}}],"role":"model"}}{finish},"index":0}}],"usageMetadata":{{"promptTokenCount":{},"candidatesTokenCount":{candidates_tokens},"totalTokenCount":{}}},"modelVersion":{},"responseId":"gemini-mock-{}"}}"#,
        reply.prompt_tokens,
        reply.prompt_tokens + candidates_tokens,
        reply.model,
        reply.number
    )
}

impl Script for GeminiScript {
    fn next_step(&mut self) -> Option<Step> {
        let tokens = self.reply.tokens;
        let (step, next) = match self.phase {
            Phase::Chunk(i) => {
                let last = i + 1 >= tokens;
                let after = if last {
                    match self.framing {
                        Framing::Sse => Phase::End,
                        Framing::JsonArray => Phase::CloseArray,
                    }
                } else {
                    Phase::Chunk(i + 1)
                };
                if tokens == 0 {
                    // No tokens: one empty, finished chunk.
                    let json = chunk(&self.reply, r#""""#, 0, true);
                    (Step::meta(self.frame(&json)), after)
                } else {
                    let json = chunk(
                        &self.reply,
                        self.reply.words.json(i),
                        u64::from(i) + 1,
                        last,
                    );
                    (Step::token(self.frame(&json)), after)
                }
            }
            Phase::CloseArray => (Step::meta(Bytes::from_static(b"]")), Phase::End),
            Phase::End => return None,
        };
        self.phase = next;
        Some(step)
    }

    fn error_event(&mut self, after: u32) -> Bytes {
        let json = format!(
            r#"{{"error":{{"code":500,"message":{},"status":"INTERNAL"}}}}"#,
            fault_message(after)
        );
        match self.framing {
            Framing::Sse => self.frame(&json),
            Framing::JsonArray => {
                let mut bytes = self.frame(&json).to_vec();
                bytes.push(b']');
                Bytes::from(bytes)
            }
        }
    }
}

/// The answer to `:generateContent`: one response object.
pub(crate) fn complete(reply: &Reply) -> String {
    chunk(reply, &reply.text_json(), u64::from(reply.tokens), true)
}

/// An HTTP error body.
pub(crate) fn error_body(status: u16, message: &str) -> String {
    let name = match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    };
    format!(
        r#"{{"error":{{"code":{status},"message":{},"status":"{name}"}}}}"#,
        json_string(message)
    )
}
