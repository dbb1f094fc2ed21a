//! The text of a content event: decoded from its JSON string, and written back in place.
//!
//! Only the string's contents change: every other byte of the provider's JSON (and of the
//! SSE event around it) stays as it came, as `include_usage` splices its bytes.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};

/// The text of a JSON string's contents (between its quotes, escapes not decoded). `None`
/// when they are not a valid JSON string.
pub(crate) fn decode(escaped: &[u8]) -> Option<Cow<'_, str>> {
    if !escaped.contains(&b'\\') {
        return std::str::from_utf8(escaped).ok().map(Cow::Borrowed);
    }
    let mut quoted = Vec::with_capacity(escaped.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(escaped);
    quoted.push(b'"');
    serde_json::from_slice::<String>(&quoted)
        .ok()
        .map(Cow::Owned)
}

/// `text` as the contents of a JSON string (quotes not included).
pub(crate) fn encode(text: &str) -> String {
    let quoted = serde_json::Value::from(text).to_string();
    // A JSON string always serialises with its two quotes.
    quoted[1..quoted.len() - 1].to_owned()
}

/// `bytes` with `bytes[start..end]` replaced by `with`.
pub(crate) fn splice(bytes: &[u8], start: usize, end: usize, with: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(bytes.len() - (end - start) + with.len());
    out.extend_from_slice(&bytes[..start]);
    out.extend_from_slice(with);
    out.extend_from_slice(&bytes[end..]);
    out.freeze()
}

/// Where `part` starts inside `whole`, when it is a sub-slice of it (the data of an event
/// whose one `data:` line is in its raw bytes).
pub(crate) fn offset_in(whole: &[u8], part: &[u8]) -> Option<usize> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    (start + part.len() <= whole.len()).then_some(start)
}

/// Rewrite text that is cut into `pieces` (the texts of consecutive events, in order) where
/// `matches` (ranges of their concatenation, sorted, not overlapping, on char boundaries)
/// say: each match becomes `replacement`, written where it starts, and the rest of it is
/// taken out of the pieces it spans. `Some` for each piece that changed.
pub(crate) fn redact_pieces(
    pieces: &[&str],
    matches: &[std::ops::Range<usize>],
    replacement: &str,
) -> Vec<Option<String>> {
    let mut out = Vec::with_capacity(pieces.len());
    let mut base = 0;
    for piece in pieces {
        let (start, end) = (base, base + piece.len());
        base = end;
        let mut new = String::new();
        let mut kept = start;
        let mut changed = false;
        for m in matches
            .iter()
            .filter(|m| m.start < end && m.end > start && m.start < m.end)
        {
            let from = m.start.max(start);
            let to = m.end.min(end);
            new.push_str(piece.get(kept - start..from - start).unwrap_or_default());
            if m.start >= start {
                new.push_str(replacement);
            }
            kept = to;
            changed = true;
        }
        if changed {
            new.push_str(piece.get(kept - start..).unwrap_or_default());
            out.push(Some(new));
        } else {
            out.push(None);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_encodes_escapes() {
        assert_eq!(decode(b"plain").as_deref(), Some("plain"));
        assert_eq!(decode(br#"a\"b\n\u00e9"#).as_deref(), Some("a\"b\né"));
        assert_eq!(decode(br"bad\"), None);
        assert_eq!(encode("a\"b\n"), r#"a\"b\n"#);
    }

    #[test]
    fn a_match_across_pieces_is_written_where_it_starts() {
        let pieces = ["key: sk-", "12", "34 ok"];
        // "key: sk-1234 ok": "sk-1234" is 5..12.
        let secret = std::ops::Range { start: 5, end: 12 };
        let out = redact_pieces(&pieces, std::slice::from_ref(&secret), "[x]");
        assert_eq!(
            out,
            vec![
                Some("key: [x]".to_owned()),
                Some(String::new()),
                Some(" ok".to_owned())
            ]
        );
        assert_eq!(redact_pieces(&pieces, &[], "[x]"), vec![None, None, None]);
        let out = redact_pieces(&["ab", "cd"], &[0..1, 3..4], "_");
        assert_eq!(out, vec![Some("_b".to_owned()), Some("c_".to_owned())]);
    }

    #[test]
    fn splices_and_finds_sub_slices() {
        assert_eq!(&splice(b"0123456", 2, 4, b"xyz")[..], b"01xyz456");
        let whole = b"data: {}\n\n";
        assert_eq!(offset_in(whole, &whole[6..8]), Some(6));
        let elsewhere = b"{}".to_vec();
        assert_eq!(offset_in(whole, &elsewhere), None);
    }
}
