//! OpenAI Chat Completions: `chat.completion.chunk` events, then `data: [DONE]`.
//!
//! A role chunk, one chunk per token, a finish chunk; with `stream_options.include_usage`
//! every chunk carries `"usage":null` and a usage-only chunk with `"choices":[]` comes last.

use bytes::Bytes;

use super::{Reply, Script, Step, fault_message, sse};

#[derive(Debug, Clone, Copy)]
enum Phase {
    Role,
    Token(u32),
    Finish,
    Usage,
    Done,
    End,
}

/// The event script of one chat completion stream.
#[derive(Debug)]
pub(crate) struct ChatScript {
    reply: Reply,
    /// Every chunk up to the opening bracket of `choices`.
    head: String,
    phase: Phase,
}

impl ChatScript {
    pub(crate) fn new(reply: Reply) -> Self {
        let head = format!(
            r#"{{"id":"chatcmpl-mock-{}","object":"chat.completion.chunk","created":{},"model":{},"system_fingerprint":"fp_mock","choices":["#,
            reply.number, reply.created, reply.model
        );
        Self {
            reply,
            head,
            phase: Phase::Role,
        }
    }

    fn chunk(&self, choice: &str) -> Bytes {
        let usage = if self.reply.include_usage {
            r#","usage":null"#
        } else {
            ""
        };
        sse(None, &format!("{}{choice}]{usage}}}", self.head), "\n")
    }
}

fn usage(reply: &Reply) -> String {
    format!(
        r#"{{"prompt_tokens":{},"completion_tokens":{},"total_tokens":{},"prompt_tokens_details":{{"cached_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0}}}}"#,
        reply.prompt_tokens,
        reply.tokens,
        reply.total_tokens()
    )
}

impl Script for ChatScript {
    fn next_step(&mut self) -> Option<Step> {
        let tokens = self.reply.tokens;
        let (step, next) = match self.phase {
            Phase::Role => (
                Step::meta(self.chunk(
                    r#"{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}"#,
                )),
                if tokens > 0 { Phase::Token(0) } else { Phase::Finish },
            ),
            Phase::Token(i) => (
                Step::token(self.chunk(&format!(
                    r#"{{"index":0,"delta":{{"content":{}}},"logprobs":null,"finish_reason":null}}"#,
                    self.reply.words.json(i)
                ))),
                if i + 1 < tokens { Phase::Token(i + 1) } else { Phase::Finish },
            ),
            Phase::Finish => (
                Step::meta(self.chunk(r#"{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}"#)),
                if self.reply.include_usage { Phase::Usage } else { Phase::Done },
            ),
            Phase::Usage => (
                Step::meta(sse(None, &format!(r#"{}],"usage":{}}}"#, self.head, usage(&self.reply)), "\n")),
                Phase::Done,
            ),
            Phase::Done => (Step::meta(Bytes::from_static(b"data: [DONE]\n\n")), Phase::End),
            Phase::End => return None,
        };
        self.phase = next;
        Some(step)
    }

    fn error_event(&mut self, after: u32) -> Bytes {
        sse(
            None,
            &format!(
                r#"{{"error":{{"message":{},"type":"server_error","param":null,"code":"mock_error"}}}}"#,
                fault_message(after)
            ),
            "\n",
        )
    }
}

/// The answer to `"stream": false`: one `chat.completion` object.
pub(crate) fn complete(reply: &Reply) -> String {
    format!(
        r#"{{"id":"chatcmpl-mock-{}","object":"chat.completion","created":{},"model":{},"system_fingerprint":"fp_mock","choices":[{{"index":0,"message":{{"role":"assistant","content":{},"refusal":null}},"logprobs":null,"finish_reason":"stop"}}],"usage":{}}}"#,
        reply.number,
        reply.created,
        reply.model,
        reply.text_json(),
        usage(reply)
    )
}
