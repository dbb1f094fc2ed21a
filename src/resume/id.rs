//! Stream ids and event ids: `<stream-id>.<seq>`, made here and parsed strictly.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// The longest `Last-Event-ID` accepted, in bytes. Anything longer is not one of ours.
pub(crate) const MAX_EVENT_ID_LEN: usize = 128;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The id of one resumable stream: 128 unguessable bits, shown as 22 characters of
/// unpadded base64url.
///
/// It is an unguessable handle, never a credential: a resume must also come from the tenant
/// that made the stream. [`random`](Self::random) makes each id as the first 128 bits of
/// `SHA-256(key ‖ counter)`, with a 256-bit key drawn once per process from the operating
/// system's CSPRNG and a per-process counter: a keyed pseudo-random function, so that ids
/// seen tell nothing about other ids, at the cost of one SHA-256 block per id instead of a
/// system call.
///
/// ```
/// use tower_sse::resume::StreamId;
///
/// let id = StreamId::random().unwrap();
/// let text = id.to_string();
/// assert_eq!(text.len(), 22);
/// assert_eq!(StreamId::parse(&text), Some(id));
/// assert_eq!(StreamId::parse("not-an-id"), None);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId([u8; 16]);

impl StreamId {
    /// The length of its text form.
    pub const TEXT_LEN: usize = 22;

    /// A fresh unguessable id (see the [type docs](Self)); `None` when the operating
    /// system's random source fails (it is read once per process).
    pub fn random() -> Option<Self> {
        crate::resume::keyed_ids::fresh().map(Self)
    }

    /// The id of these 16 bytes (for stores and tests).
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// Its 16 bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Parse the 22-character text form, strictly: base64url without padding, in its one
    /// canonical spelling.
    pub fn parse(text: &str) -> Option<Self> {
        Self::parse_bytes(text.as_bytes())
    }

    pub(crate) fn parse_bytes(text: &[u8]) -> Option<Self> {
        if text.len() != Self::TEXT_LEN {
            return None;
        }
        let mut bits: u32 = 0;
        let mut nbits = 0;
        let mut out = [0u8; 16];
        let mut i = 0;
        for &c in text {
            let v = u32::from(sextet(c)?);
            bits = (bits << 6) | v;
            nbits += 6;
            if nbits >= 8 {
                nbits -= 8;
                if i == out.len() {
                    return None;
                }
                out[i] = (bits >> nbits) as u8;
                i += 1;
            }
            bits &= (1 << nbits) - 1;
        }
        // 22 × 6 = 132 bits: the last 4 must be zero in the canonical form.
        (i == 16 && bits == 0).then_some(Self(out))
    }

    fn write_text(&self, out: &mut [u8; Self::TEXT_LEN]) {
        let mut bits: u32 = 0;
        let mut nbits = 0;
        let mut j = 0;
        for &b in &self.0 {
            bits = (bits << 8) | u32::from(b);
            nbits += 8;
            while nbits >= 6 {
                nbits -= 6;
                out[j] = ALPHABET[((bits >> nbits) & 63) as usize];
                j += 1;
            }
            bits &= (1 << nbits) - 1;
        }
        out[j] = ALPHABET[((bits << (6 - nbits)) & 63) as usize];
    }

    /// The prefix of every `id:` line of this stream: `id: <stream-id>.`.
    pub(crate) fn id_line_prefix(&self) -> Bytes {
        let mut text = [0; Self::TEXT_LEN];
        self.write_text(&mut text);
        let mut out = BytesMut::with_capacity(4 + Self::TEXT_LEN + 1);
        out.put_slice(b"id: ");
        out.put_slice(&text);
        out.put_u8(b'.');
        out.freeze()
    }
}

fn sextet(c: u8) -> Option<u8> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    })
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0; Self::TEXT_LEN];
        self.write_text(&mut text);
        // The alphabet is ASCII.
        f.write_str(std::str::from_utf8(&text).unwrap_or_default())
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({self})")
    }
}

/// An event id of a resumable stream, `<stream-id>.<seq>`: the stream and the sequence
/// number of the last event the client received (0: none yet).
///
/// [`parse`](Self::parse) is strict, because `Last-Event-ID` is hostile input: at most 128
/// bytes, a 22-character stream id, one `.`, and a decimal `u64` without sign or leading
/// zeros. Anything else is not an id of ours.
///
/// ```
/// use tower_sse::resume::{EventId, StreamId};
///
/// let stream = StreamId::from_bytes([7; 16]);
/// let id = EventId { stream, seq: 42 };
/// assert_eq!(EventId::parse(&id.to_string()), Some(id));
/// assert_eq!(EventId::parse(&format!("{stream}.042")), None);
/// assert_eq!(EventId::parse(&format!("{stream}.+42")), None);
/// assert_eq!(EventId::parse("42"), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventId {
    /// The stream.
    pub stream: StreamId,
    /// The sequence number of the event within its stream, from 1.
    pub seq: u64,
}

impl EventId {
    /// Parse an id strictly (see the [type docs](Self)).
    pub fn parse(text: &str) -> Option<Self> {
        Self::parse_bytes(text.as_bytes())
    }

    pub(crate) fn parse_bytes(text: &[u8]) -> Option<Self> {
        if text.len() > MAX_EVENT_ID_LEN || text.len() < StreamId::TEXT_LEN + 2 {
            return None;
        }
        let (stream, rest) = text.split_at(StreamId::TEXT_LEN);
        let stream = StreamId::parse_bytes(stream)?;
        let digits = rest.strip_prefix(b".")?;
        if digits.is_empty() || digits.len() > 20 || (digits.len() > 1 && digits[0] == b'0') {
            return None;
        }
        let mut seq: u64 = 0;
        for &d in digits {
            if !d.is_ascii_digit() {
                return None;
            }
            seq = seq.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        Some(Self { stream, seq })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.stream, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digits::decimal;

    #[test]
    fn stream_ids_round_trip() {
        for bytes in [[0u8; 16], [255; 16], [0x5a; 16]] {
            let id = StreamId::from_bytes(bytes);
            assert_eq!(StreamId::parse(&id.to_string()), Some(id));
        }
        let id = StreamId::random().unwrap();
        assert_ne!(id, StreamId::random().unwrap());
        assert_eq!(&id.id_line_prefix()[..4], b"id: ");
    }

    #[test]
    fn non_canonical_stream_ids_are_refused() {
        let text = StreamId::from_bytes([0; 16]).to_string();
        assert_eq!(text, "AAAAAAAAAAAAAAAAAAAAAA");
        // The last character carries 2 bits; its 4 low bits must be zero.
        assert!(StreamId::parse("AAAAAAAAAAAAAAAAAAAAAB").is_none());
        assert!(StreamId::parse("AAAAAAAAAAAAAAAAAAAAAQ").is_some());
        assert!(StreamId::parse("AAAAAAAAAAAAAAAAAAAAA=").is_none());
        assert!(StreamId::parse("AAAAAAAAAAAAAAAAAAAAA").is_none());
    }

    #[test]
    fn event_ids_parse_strictly() {
        let s = StreamId::from_bytes([1; 16]);
        assert_eq!(EventId::parse(&format!("{s}.0")).unwrap().seq, 0);
        assert_eq!(
            EventId::parse(&format!("{s}.18446744073709551615"))
                .unwrap()
                .seq,
            u64::MAX
        );
        for bad in [
            format!("{s}.18446744073709551616"),
            format!("{s}."),
            format!("{s}"),
            format!("{s}.1 "),
            format!(" {s}.1"),
            format!("{s}.-1"),
            format!("{s}.01"),
            format!("{s}..1"),
            format!("{s}.1.2"),
            format!("{s}x.1"),
            "é".repeat(100),
            String::new(),
        ] {
            assert_eq!(EventId::parse(&bad), None, "{bad:?}");
        }
        let long = format!("{s}.{}", "1".repeat(200));
        assert_eq!(EventId::parse(&long), None);
    }

    #[test]
    fn decimals() {
        let mut buf = [0; 20];
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(1234, &mut buf), b"1234");
        assert_eq!(decimal(u64::MAX, &mut buf), b"18446744073709551615");
    }
}
