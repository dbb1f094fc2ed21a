//! OpenAI Responses: typed `response.*` events with a `sequence_number`, no `[DONE]`.
//!
//! `response.created`, `response.in_progress`, the message item and its text part added,
//! one `response.output_text.delta` per token, the text, part and item done, and
//! `response.completed` with the usage.

use bytes::Bytes;

use super::{Reply, Script, Step, fault_message, sse};

#[derive(Debug, Clone, Copy)]
enum Phase {
    Created,
    InProgress,
    ItemAdded,
    PartAdded,
    Delta(u32),
    TextDone,
    PartDone,
    ItemDone,
    Completed,
    End,
}

/// The event script of one Responses stream.
#[derive(Debug)]
pub(crate) struct ResponsesScript {
    reply: Reply,
    sequence: u64,
    phase: Phase,
}

impl ResponsesScript {
    pub(crate) fn new(reply: Reply) -> Self {
        Self {
            reply,
            sequence: 0,
            phase: Phase::Created,
        }
    }

    /// An event named by its type, with the type and sequence number first in the data.
    fn event(&mut self, kind: &str, rest: &str) -> Bytes {
        let data = format!(
            r#"{{"type":"{kind}","sequence_number":{},{rest}}}"#,
            self.sequence
        );
        self.sequence += 1;
        sse(Some(kind), &data, "\n")
    }

    /// The fields every event about the text part shares.
    fn part_fields(&self) -> String {
        format!(
            r#""item_id":"msg_mock_{}","output_index":0,"content_index":0"#,
            self.reply.number
        )
    }
}

fn response(reply: &Reply, status: &str, output: &str, usage: &str) -> String {
    format!(
        r#"{{"id":"resp_mock_{}","object":"response","created_at":{},"status":"{status}","error":null,"incomplete_details":null,"model":{},"output":[{output}],"usage":{usage}}}"#,
        reply.number, reply.created, reply.model
    )
}

fn finished_item(reply: &Reply, text: &str) -> String {
    format!(
        r#"{{"id":"msg_mock_{}","type":"message","status":"completed","role":"assistant","content":[{{"type":"output_text","annotations":[],"text":{text}}}]}}"#,
        reply.number
    )
}

fn usage(reply: &Reply) -> String {
    format!(
        r#"{{"input_tokens":{},"input_tokens_details":{{"cached_tokens":0}},"output_tokens":{},"output_tokens_details":{{"reasoning_tokens":0}},"total_tokens":{}}}"#,
        reply.prompt_tokens,
        reply.tokens,
        reply.total_tokens()
    )
}

impl Script for ResponsesScript {
    fn next_step(&mut self) -> Option<Step> {
        let tokens = self.reply.tokens;
        let (step, next) = match self.phase {
            Phase::Created => {
                let response = response(&self.reply, "in_progress", "", "null");
                let bytes = self.event("response.created", &format!(r#""response":{response}"#));
                (Step::meta(bytes), Phase::InProgress)
            }
            Phase::InProgress => {
                let response = response(&self.reply, "in_progress", "", "null");
                let bytes =
                    self.event("response.in_progress", &format!(r#""response":{response}"#));
                (Step::meta(bytes), Phase::ItemAdded)
            }
            Phase::ItemAdded => {
                let item = format!(
                    r#""output_index":0,"item":{{"id":"msg_mock_{}","type":"message","status":"in_progress","role":"assistant","content":[]}}"#,
                    self.reply.number
                );
                (
                    Step::meta(self.event("response.output_item.added", &item)),
                    Phase::PartAdded,
                )
            }
            Phase::PartAdded => {
                let part = format!(
                    r#"{},"part":{{"type":"output_text","annotations":[],"text":""}}"#,
                    self.part_fields()
                );
                let next = if tokens > 0 {
                    Phase::Delta(0)
                } else {
                    Phase::TextDone
                };
                (
                    Step::meta(self.event("response.content_part.added", &part)),
                    next,
                )
            }
            Phase::Delta(i) => {
                let delta = format!(
                    r#"{},"delta":{},"logprobs":[]"#,
                    self.part_fields(),
                    self.reply.words.json(i)
                );
                let next = if i + 1 < tokens {
                    Phase::Delta(i + 1)
                } else {
                    Phase::TextDone
                };
                (
                    Step::token(self.event("response.output_text.delta", &delta)),
                    next,
                )
            }
            Phase::TextDone => {
                let done = format!(
                    r#"{},"text":{},"logprobs":[]"#,
                    self.part_fields(),
                    self.reply.text_json()
                );
                (
                    Step::meta(self.event("response.output_text.done", &done)),
                    Phase::PartDone,
                )
            }
            Phase::PartDone => {
                let done = format!(
                    r#"{},"part":{{"type":"output_text","annotations":[],"text":{}}}"#,
                    self.part_fields(),
                    self.reply.text_json()
                );
                (
                    Step::meta(self.event("response.content_part.done", &done)),
                    Phase::ItemDone,
                )
            }
            Phase::ItemDone => {
                let item = finished_item(&self.reply, &self.reply.text_json());
                let done = format!(r#""output_index":0,"item":{item}"#);
                (
                    Step::meta(self.event("response.output_item.done", &done)),
                    Phase::Completed,
                )
            }
            Phase::Completed => {
                let item = finished_item(&self.reply, &self.reply.text_json());
                let response = response(&self.reply, "completed", &item, &usage(&self.reply));
                let bytes = self.event("response.completed", &format!(r#""response":{response}"#));
                (Step::meta(bytes), Phase::End)
            }
            Phase::End => return None,
        };
        self.phase = next;
        Some(step)
    }

    fn error_event(&mut self, after: u32) -> Bytes {
        let rest = format!(
            r#""code":"server_error","message":{},"param":null"#,
            fault_message(after)
        );
        self.event("error", &rest)
    }
}

/// The answer to `"stream": false`: one `response` object.
pub(crate) fn complete(reply: &Reply) -> String {
    let item = finished_item(reply, &reply.text_json());
    response(reply, "completed", &item, &usage(reply))
}
