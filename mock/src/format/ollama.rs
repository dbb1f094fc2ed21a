//! Ollama's native API: NDJSON, one JSON object per line, the last with `"done":true` and
//! the counts (`prompt_eval_count`, `eval_count`) and durations in nanoseconds.
//!
//! `/api/chat` puts the text in `message.content`, `/api/generate` in `response`.

use bytes::Bytes;

use super::{Reply, Script, Step, fault_message, json_string, rfc3339};

/// Which endpoint: where the text goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Chat,
    Generate,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Token(u32),
    Final,
    End,
}

/// The line script of one Ollama stream.
#[derive(Debug)]
pub(crate) struct OllamaScript {
    reply: Reply,
    endpoint: Endpoint,
    /// `{"model":...,"created_at":"...",`: the start of every line.
    head: String,
    phase: Phase,
}

impl OllamaScript {
    pub(crate) fn new(reply: Reply, endpoint: Endpoint) -> Self {
        let head = head(&reply);
        let phase = if reply.tokens > 0 {
            Phase::Token(0)
        } else {
            Phase::Final
        };
        Self {
            reply,
            endpoint,
            head,
            phase,
        }
    }
}

fn head(reply: &Reply) -> String {
    format!(
        r#"{{"model":{},"created_at":"{}","#,
        reply.model,
        rfc3339(reply.created)
    )
}

/// `"message":{...}` or `"response":...` holding `text` (a JSON literal).
fn text_field(endpoint: Endpoint, text: &str) -> String {
    match endpoint {
        Endpoint::Chat => format!(r#""message":{{"role":"assistant","content":{text}}}"#),
        Endpoint::Generate => format!(r#""response":{text}"#),
    }
}

/// The counts and durations of the final object, after `done`.
fn stats(reply: &Reply) -> String {
    let eval = reply.delay.as_nanos() * u128::from(reply.tokens);
    let total = eval + reply.headers_delay.as_nanos();
    format!(
        r#""done_reason":"stop","done":true,"total_duration":{total},"load_duration":0,"prompt_eval_count":{},"prompt_eval_duration":0,"eval_count":{},"eval_duration":{eval}"#,
        reply.prompt_tokens, reply.tokens
    )
}

impl Script for OllamaScript {
    fn next_step(&mut self) -> Option<Step> {
        let (step, next) = match self.phase {
            Phase::Token(i) => {
                let field = text_field(self.endpoint, self.reply.words.json(i));
                let line = format!("{}{field},\"done\":false}}\n", self.head);
                let next = if i + 1 < self.reply.tokens {
                    Phase::Token(i + 1)
                } else {
                    Phase::Final
                };
                (Step::token(line), next)
            }
            Phase::Final => {
                let field = text_field(self.endpoint, r#""""#);
                let line = format!("{}{field},{}}}\n", self.head, stats(&self.reply));
                (Step::meta(line), Phase::End)
            }
            Phase::End => return None,
        };
        self.phase = next;
        Some(step)
    }

    fn error_event(&mut self, after: u32) -> Bytes {
        Bytes::from(format!("{{\"error\":{}}}\n", fault_message(after)))
    }
}

/// The answer to `"stream": false`: one object with the whole text.
pub(crate) fn complete(reply: &Reply, endpoint: Endpoint) -> String {
    format!(
        "{}{},{}}}",
        head(reply),
        text_field(endpoint, &reply.text_json()),
        stats(reply)
    )
}

/// An HTTP error body.
pub(crate) fn error_body(message: &str) -> String {
    format!(r#"{{"error":{}}}"#, json_string(message))
}
