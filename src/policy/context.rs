//! [`PolicyContext`]: what a policy knows about the event it judges.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;

use crate::provider::Provider;
use crate::report::StreamReport;
use crate::sse::EventRef;

use super::text;

/// One event, as a [`Policy`](super::Policy) sees it: the event, the provider format, its
/// text view when it is a content event, and the report so far (read-only: the usage and
/// timing observers already counted the event).
pub struct PolicyContext<'a> {
    pub(crate) event: EventRef<'a>,
    pub(crate) provider: Provider,
    pub(crate) content: bool,
    /// The text's range in the event's data (JSON escapes not decoded).
    pub(crate) text: Option<(usize, usize)>,
    /// The client reads NDJSON lines, not SSE events.
    pub(crate) lines: bool,
    pub(crate) report: &'a StreamReport,
}

impl<'a> PolicyContext<'a> {
    /// A context for driving a policy by hand (in tests): `text` is the range of the
    /// content's text in the event's data, as the provider format would locate it (see
    /// [`Provider::text_span`]).
    pub fn new(
        event: EventRef<'a>,
        provider: Provider,
        text: Option<(usize, usize)>,
        report: &'a StreamReport,
    ) -> Self {
        Self {
            event,
            provider,
            content: text.is_some(),
            text,
            lines: false,
            report,
        }
    }

    /// The event.
    pub fn event(&self) -> &EventRef<'a> {
        &self.event
    }

    /// The stream's provider format.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Whether the event carries content (text, reasoning or a tool-call delta).
    pub fn is_content(&self) -> bool {
        self.content
    }

    /// The generated text of a content event, decoded: OpenAI Chat's `delta.content` (or
    /// its reasoning or refusal), Completions' `text`, Anthropic's `text_delta`, Responses'
    /// `output_text.delta`, Gemini's `parts[].text` (the first), Ollama's `message.content`.
    /// `None` for other events, tool calls, and text that is not a valid JSON string.
    pub fn text(&self) -> Option<Cow<'a, str>> {
        let (start, end) = self.text?;
        text::decode(self.event.data_bytes().get(start..end)?)
    }

    /// The text as sent (JSON escapes not decoded).
    pub fn text_raw(&self) -> Option<&'a [u8]> {
        let (start, end) = self.text?;
        self.event.data_bytes().get(start..end)
    }

    /// The event with its text replaced by `new`, for [`Verdict::Replace`](super::Verdict):
    /// every other byte of the provider's JSON (and of the event around it) as it came.
    /// `None` when the event has no text view.
    pub fn replace_text(&self, new: &str) -> Option<Bytes> {
        let (start, end) = self.text?;
        Some(rewrite(&self.event, start, end, new, self.lines))
    }

    /// The event with the ranges `find` returns for its text (sorted, not overlapping, on
    /// char boundaries) replaced by `replacement`: `None` when nothing matched (or the event
    /// has no text view). For text that spans events, see [`Held::redact`](super::Held::redact).
    pub fn redact(
        &self,
        replacement: &str,
        find: impl FnOnce(&str) -> Vec<std::ops::Range<usize>>,
    ) -> Option<Bytes> {
        let text = self.text()?;
        let matches = find(&text);
        if matches.is_empty() {
            return None;
        }
        let new = text::redact_pieces(&[&text], &matches, replacement).pop()??;
        self.replace_text(&new)
    }

    /// The report so far (the observers' running findings).
    pub fn report(&self) -> &StreamReport {
        self.report
    }
}

/// `event`'s wire bytes with `data[start..end]` replaced by `new` (JSON-escaped).
pub(crate) fn rewrite(
    event: &EventRef<'_>,
    start: usize,
    end: usize,
    new: &str,
    lines: bool,
) -> Bytes {
    let escaped = text::encode(new);
    let data = event.data_bytes();
    if lines {
        let mut line = text::splice(data, start, end, escaped.as_bytes()).to_vec();
        line.push(b'\n');
        return Bytes::from(line);
    }
    let raw = event.raw();
    if let Some(at) = text::offset_in(raw, data)
        && !event.unterminated
    {
        return text::splice(raw, at + start, at + end, escaped.as_bytes());
    }
    // Data joined from several lines, or an event the layer frames itself: encode it anew.
    let data = text::splice(data, start, end, escaped.as_bytes());
    let mut builder = crate::sse::Event::builder();
    if !event.event_bytes().is_empty() {
        builder = builder.event(Bytes::copy_from_slice(event.event_bytes()));
    }
    builder.data(data).encode().unwrap_or_default()
}

impl fmt::Debug for PolicyContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyContext")
            .field("provider", &self.provider)
            .field("content", &self.content)
            .field("text", &self.text)
            .finish_non_exhaustive()
    }
}
