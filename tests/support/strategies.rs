//! Proptest strategies for SSE streams and chunkings.

#![allow(dead_code, unreachable_pub)]

use proptest::prelude::*;

/// One line of a stream, before its line end.
pub fn line() -> impl Strategy<Value = Vec<u8>> {
    let value = prop::collection::vec(
        prop_oneof![
            8 => prop::sample::select(b"abc xyz{}\":,0123456789".to_vec()),
            1 => Just(0u8),
            1 => Just(0xFF),
            1 => prop::sample::select(vec![0xC3u8, 0xA9, 0xE2, 0x82, 0xAC]),
        ],
        0..12,
    );
    (
        prop::sample::select(vec![
            &b"data:"[..],
            b"data: ",
            b"data",
            b"event: ",
            b"event:",
            b"id: ",
            b"id",
            b"retry: ",
            b": ",
            b":",
            b"foo: ",
            b"",
            // A byte order mark where only the stream's first is stripped.
            b"\xEF\xBB\xBFdata: ",
            b"\xEF\xBB\xBFretry: ",
        ]),
        value,
        prop::sample::select(vec![&b""[..], b"42", b"007", b"1x"]),
    )
        .prop_map(|(prefix, value, digits)| {
            let mut line = prefix.to_vec();
            if prefix.ends_with(b"retry: ") {
                line.extend_from_slice(digits);
            } else {
                line.extend(value.into_iter().filter(|b| *b != b'\r' && *b != b'\n'));
            }
            line
        })
}

pub fn line_end() -> impl Strategy<Value = &'static [u8]> {
    prop::sample::select(vec![&b"\n"[..], b"\r\n", b"\r"])
}

/// A stream: lines with random line ends, blank lines often, sometimes a BOM, sometimes an
/// unterminated tail.
pub fn stream() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        prop::collection::vec((line(), line_end(), any::<bool>(), line_end()), 0..24),
        prop::option::of(line()),
    )
        .prop_map(|(bom, lines, tail)| {
            let mut out = Vec::new();
            if bom {
                out.extend_from_slice(b"\xEF\xBB\xBF");
            }
            for (line, end, blank, blank_end) in lines {
                out.extend_from_slice(&line);
                out.extend_from_slice(end);
                if blank {
                    out.extend_from_slice(blank_end);
                }
            }
            if let Some(tail) = tail {
                out.extend_from_slice(&tail);
            }
            out
        })
}

/// Random cut points, biased towards CR/LF boundaries.
pub fn cuts(len: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0..=len.max(1), 0..32).prop_map(|mut v| {
        v.sort_unstable();
        v.dedup();
        v
    })
}

pub fn stream_and_cuts() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
    stream().prop_flat_map(|s| {
        let len = s.len();
        (Just(s), cuts(len))
    })
}
