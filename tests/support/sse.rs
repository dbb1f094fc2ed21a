//! Helpers for decoding in tests, and a naive reference decoder written straight from the
//! HTML standard's "Interpreting an event stream" (whole input, no streaming, no speed).

#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use tower_sse::sse::{DecodeError, Decoder, Item, ItemRef};

/// A decoded event in a form that is easy to compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ev {
    pub event: String,
    pub data: String,
    pub id: String,
    pub retry: Option<u64>,
}

/// Everything a decoder reported, comparable across chunkings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    pub events: Vec<Ev>,
    pub comments: Vec<String>,
    pub errors: usize,
    /// Raw bytes of every event and block, concatenated.
    pub raw: Vec<u8>,
    pub last_event_id: Vec<u8>,
    pub truncated: bool,
}

/// Decode `chunks` with `decoder`, then finish.
pub fn decode_with(mut decoder: Decoder, chunks: &[Bytes]) -> Outcome {
    let mut out = Outcome::default();
    for chunk in chunks {
        decoder.push(chunk.clone());
        drain(&mut decoder, &mut out);
    }
    decoder.finish();
    drain(&mut decoder, &mut out);
    out.last_event_id = decoder.last_event_id().to_vec();
    out.truncated = decoder.is_truncated();
    out
}

pub fn drain(decoder: &mut Decoder, out: &mut Outcome) {
    for item in decoder.by_ref() {
        match item {
            Ok(Item::Event(e)) => {
                out.raw.extend_from_slice(e.raw());
                out.events.push(Ev {
                    event: e.event().into_owned(),
                    data: e.data().into_owned(),
                    id: e.last_event_id().into_owned(),
                    retry: e.retry().map(|d| d.as_millis() as u64),
                });
            }
            Ok(Item::Comment(c)) => out.comments.push(c.text().into_owned()),
            Ok(Item::Block(b)) => out.raw.extend_from_slice(b.raw()),
            Ok(_) => unreachable!("no other item kinds yet"),
            Err(DecodeError::EventTooLarge { .. }) => out.errors += 1,
            Err(_) => unreachable!("no other errors yet"),
        }
    }
}

/// Like [`decode_with`], through the borrowing API.
pub fn decode_borrowed(mut decoder: Decoder, chunks: &[Bytes]) -> Outcome {
    let mut out = Outcome::default();
    let drain = |decoder: &mut Decoder, out: &mut Outcome| {
        while let Some(item) = decoder.next_ref() {
            match item {
                Ok(ItemRef::Event(e)) => {
                    out.raw.extend_from_slice(e.raw());
                    if e.is_unterminated() {
                        out.raw.extend_from_slice(match e.raw().last() {
                            Some(b'\n') => b"\n",
                            Some(b'\r') => b"\r",
                            _ => b"\n\n",
                        });
                    }
                    out.events.push(Ev {
                        event: e.event().into_owned(),
                        data: e.data().into_owned(),
                        id: e.last_event_id().into_owned(),
                        retry: e.retry().map(|d| d.as_millis() as u64),
                    });
                }
                Ok(ItemRef::Comment(c)) => {
                    out.comments.push(String::from_utf8_lossy(c).into_owned())
                }
                Ok(ItemRef::Block(b)) => {
                    out.raw.extend_from_slice(b.raw());
                    if b.is_unterminated() {
                        out.raw.extend_from_slice(match b.raw().last() {
                            Some(b'\n') => b"\n",
                            Some(b'\r') => b"\r",
                            _ => b"\n\n",
                        });
                    }
                }
                Ok(_) => unreachable!("no other item kinds yet"),
                Err(DecodeError::EventTooLarge { .. }) => out.errors += 1,
                Err(_) => unreachable!("no other errors yet"),
            }
        }
    };
    for chunk in chunks {
        decoder.push(chunk.clone());
        drain(&mut decoder, &mut out);
    }
    decoder.finish();
    drain(&mut decoder, &mut out);
    out.last_event_id = decoder.last_event_id().to_vec();
    out.truncated = decoder.is_truncated();
    out
}

/// Decode one input in one chunk.
pub fn decode(input: &[u8]) -> Outcome {
    decode_with(Decoder::new(), &[Bytes::copy_from_slice(input)])
}

/// Split `input` at the given cut points (sorted, deduplicated, within bounds).
pub fn split_at(input: &[u8], cuts: &[usize]) -> Vec<Bytes> {
    let mut chunks = Vec::new();
    let mut last = 0;
    for &cut in cuts {
        if cut > last && cut < input.len() {
            chunks.push(Bytes::copy_from_slice(&input[last..cut]));
            last = cut;
        }
    }
    chunks.push(Bytes::copy_from_slice(&input[last..]));
    chunks
}

/// One byte per chunk.
pub fn bytewise(input: &[u8]) -> Vec<Bytes> {
    input
        .iter()
        .map(|b| Bytes::copy_from_slice(&[*b]))
        .collect()
}

/// The reference: decode the whole input as the standard's algorithm reads, character by
/// character after UTF-8 decoding with replacement. Returns the dispatched events and comments.
pub fn reference(input: &[u8], lenient: bool) -> (Vec<Ev>, Vec<String>) {
    let text = String::from_utf8_lossy(input);
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(&text);
    let mut lines = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    let mut terminated_last = true;
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                lines.push(std::mem::take(&mut current));
                terminated_last = true;
            }
            '\n' => {
                lines.push(std::mem::take(&mut current));
                terminated_last = true;
            }
            c => {
                current.push(c);
                terminated_last = false;
            }
        }
    }
    let partial = (!terminated_last).then_some(current);

    let mut events = Vec::new();
    let mut comments = Vec::new();
    let (mut data, mut event_type, mut id_buffer) = (String::new(), String::new(), String::new());
    let mut retry = None;
    let mut dispatch =
        |data: &mut String, event_type: &mut String, id: &String, retry: &mut Option<u64>| {
            if data.is_empty() {
                event_type.clear();
                *retry = None;
                return;
            }
            if data.ends_with('\n') {
                data.pop();
            }
            events.push(Ev {
                event: if event_type.is_empty() {
                    "message".into()
                } else {
                    event_type.clone()
                },
                data: std::mem::take(data),
                id: id.clone(),
                retry: retry.take(),
            });
            event_type.clear();
        };
    let process = |line: &str,
                   data: &mut String,
                   event_type: &mut String,
                   id_buffer: &mut String,
                   retry: &mut Option<u64>,
                   comments: &mut Vec<String>| {
        if let Some(comment) = line.strip_prefix(':') {
            comments.push(comment.strip_prefix(' ').unwrap_or(comment).to_string());
            return;
        }
        let (name, value) = match line.find(':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (line, ""),
        };
        match name {
            "event" => *event_type = value.to_string(),
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "id" if !value.contains('\0') => *id_buffer = value.to_string(),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse() {
                    *retry = Some(ms);
                }
            }
            _ => {}
        }
    };
    for line in &lines {
        if line.is_empty() {
            dispatch(&mut data, &mut event_type, &id_buffer, &mut retry);
        } else {
            process(
                line,
                &mut data,
                &mut event_type,
                &mut id_buffer,
                &mut retry,
                &mut comments,
            );
        }
    }
    if lenient {
        if let Some(line) = partial {
            process(
                &line,
                &mut data,
                &mut event_type,
                &mut id_buffer,
                &mut retry,
                &mut comments,
            );
        }
        dispatch(&mut data, &mut event_type, &id_buffer, &mut retry);
    }
    (events, comments)
}

/// What a browser's `EventSource` ends up with after reading a whole stream, written from
/// the HTML standard: the events it dispatched (type, data, `lastEventId`), its last event
/// ID string and its reconnection time. The incomplete event at the end of input is discarded,
/// but every complete line was processed (a `retry:` line takes effect at once).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientView {
    pub events: Vec<(String, String, String)>,
    pub last_event_id: String,
    pub reconnection_time: Option<u64>,
}

pub fn client_view(input: &[u8]) -> ClientView {
    let text = String::from_utf8_lossy(input);
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(&text);
    // Complete lines only: a last line without its line end is never processed.
    let mut lines = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' | '\n' => {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                lines.push(std::mem::take(&mut current));
            }
            c => current.push(c),
        }
    }
    let mut view = ClientView::default();
    let (mut data, mut event_type, mut id_buffer) = (String::new(), String::new(), String::new());
    for line in lines {
        if line.is_empty() {
            view.last_event_id = id_buffer.clone();
            if data.is_empty() {
                event_type.clear();
                continue;
            }
            if data.ends_with('\n') {
                data.pop();
            }
            let kind = if event_type.is_empty() {
                "message".to_owned()
            } else {
                std::mem::take(&mut event_type)
            };
            view.events
                .push((kind, std::mem::take(&mut data), view.last_event_id.clone()));
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (name, value) = match line.find(':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (&line[..], ""),
        };
        match name {
            "event" => event_type = value.to_owned(),
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "id" if !value.contains('\0') => id_buffer = value.to_owned(),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse() {
                    view.reconnection_time = Some(ms);
                }
            }
            _ => {}
        }
    }
    view
}
