//! Reframing newline-delimited JSON (NDJSON) into SSE events.
//!
//! Ollama's native API and other servers stream one JSON object per line. Each non-blank
//! line becomes one event, `data: <line>\n\n`, so SSE clients and the same observers work
//! on both. Lines may end with LF or CRLF; the last line may omit its line end when it is a
//! whole JSON value. A last line that is not (the upstream stopped in the middle of it) is
//! truncation: it is never forwarded as an event.

use bytes::{Bytes, BytesMut};

use crate::sse::DecodeError;

/// Splits a byte stream into lines, bounded, without rescanning.
#[derive(Debug)]
pub(crate) struct JsonLines {
    max_line: usize,
    input: Bytes,
    pos: usize,
    /// A line that began in an earlier chunk.
    carry: BytesMut,
    discarding: bool,
    eof: bool,
    done: bool,
    /// The input ended inside a line that is not a whole JSON value.
    truncated: bool,
}

impl JsonLines {
    pub(crate) fn new(max_line: usize) -> Self {
        Self {
            max_line: max_line.max(1),
            input: Bytes::new(),
            pos: 0,
            carry: BytesMut::new(),
            discarding: false,
            eof: false,
            done: false,
            truncated: false,
        }
    }

    /// Add a chunk. The previous chunk must have been drained (the body always does).
    pub(crate) fn push(&mut self, chunk: Bytes) {
        if self.pos < self.input.len() {
            // Not drained: keep the rest in front of the new chunk.
            let rest = self.input.split_off(self.pos);
            let mut joined = BytesMut::with_capacity(rest.len() + chunk.len());
            joined.extend_from_slice(&rest);
            joined.extend_from_slice(&chunk);
            self.input = joined.freeze();
        } else {
            self.input = chunk;
        }
        self.pos = 0;
    }

    pub(crate) fn finish(&mut self) {
        self.eof = true;
    }

    /// After [`finish`](Self::finish) and draining: whether the last line was cut off.
    pub(crate) fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// The next complete, non-blank line (without its line end).
    pub(crate) fn next_line(&mut self) -> Option<Result<Bytes, DecodeError>> {
        loop {
            if self.pos >= self.input.len() {
                if self.eof && !self.done {
                    self.done = true;
                    self.discarding = false;
                    let line = self.carry.split().freeze();
                    if !is_blank(&line) {
                        // Without its line end, only a whole JSON value is a whole record.
                        let line = trim_cr(line);
                        if serde_json::from_slice::<serde::de::IgnoredAny>(&line).is_ok() {
                            return Some(Ok(line));
                        }
                        self.truncated = true;
                    }
                }
                return None;
            }
            let start = self.pos;
            let Some(i) = memchr::memchr(b'\n', &self.input[start..]) else {
                let end = self.input.len();
                self.pos = end;
                if !self.discarding {
                    if self.carry.len() + (end - start) > self.max_line {
                        return Some(Err(self.too_large()));
                    }
                    self.carry.extend_from_slice(&self.input[start..end]);
                }
                continue;
            };
            self.pos = start + i + 1;
            if self.discarding {
                self.discarding = false;
                continue;
            }
            if self.carry.len() + i > self.max_line {
                self.carry = BytesMut::new();
                return Some(Err(DecodeError::EventTooLarge {
                    limit: self.max_line,
                }));
            }
            let line = if self.carry.is_empty() {
                self.input.slice(start..start + i)
            } else {
                self.carry.extend_from_slice(&self.input[start..start + i]);
                self.carry.split().freeze()
            };
            if !is_blank(&line) {
                return Some(Ok(trim_cr(line)));
            }
        }
    }

    fn too_large(&mut self) -> DecodeError {
        self.carry = BytesMut::new();
        self.discarding = true;
        DecodeError::EventTooLarge {
            limit: self.max_line,
        }
    }
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

fn trim_cr(mut line: Bytes) -> Bytes {
    if line.last() == Some(&b'\r') {
        line.truncate(line.len() - 1);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]], limit: usize) -> Vec<Result<String, DecodeError>> {
        let mut decoder = JsonLines::new(limit);
        let mut out = Vec::new();
        let mut drain = |d: &mut JsonLines| {
            while let Some(line) = d.next_line() {
                out.push(line.map(|l| String::from_utf8_lossy(&l).into_owned()));
            }
        };
        for chunk in chunks {
            decoder.push(Bytes::copy_from_slice(chunk));
            drain(&mut decoder);
        }
        decoder.finish();
        drain(&mut decoder);
        out
    }

    #[test]
    fn splits_lines_across_chunks_and_skips_blank_ones() {
        let got = lines(&[b"{\"a\":1}\n{\"b\"", b":2}\r\n\n  \n{\"c\":3}"], 100);
        assert_eq!(
            got,
            vec![
                Ok("{\"a\":1}".into()),
                Ok("{\"b\":2}".into()),
                Ok("{\"c\":3}".into())
            ]
        );
    }

    #[test]
    fn a_last_line_without_line_end_is_a_record_only_when_it_is_whole_json() {
        let mut whole = JsonLines::new(100);
        whole.push(Bytes::from_static(b"{\"a\":1}\n{\"b\":[1,2]}"));
        whole.finish();
        assert_eq!(whole.next_line().unwrap().unwrap(), "{\"a\":1}");
        assert_eq!(whole.next_line().unwrap().unwrap(), "{\"b\":[1,2]}");
        assert!(whole.next_line().is_none());
        assert!(!whole.is_truncated());

        let mut cut = JsonLines::new(100);
        cut.push(Bytes::from_static(b"{\"a\":1}\n{\"b\":[1,"));
        cut.finish();
        assert_eq!(cut.next_line().unwrap().unwrap(), "{\"a\":1}");
        assert!(cut.next_line().is_none());
        assert!(cut.is_truncated());
    }

    #[test]
    fn long_line_is_refused_and_skipped() {
        let got = lines(
            &[b"{\"a\":\"xxxxxxxxxxxx", b"xxxxxxxxx\"}\n{\"b\":1}\n"],
            10,
        );
        assert_eq!(
            got,
            vec![
                Err(DecodeError::EventTooLarge { limit: 10 }),
                Ok("{\"b\":1}".into())
            ]
        );
    }
}
