//! Hex and decimal digits, written without allocating: the one encoder of each.

/// Write `bytes` as lowercase hex digits into `out`, as many bytes as `out` has room for
/// (two digits each), and return the digits written.
pub(crate) fn hex<'a>(bytes: &[u8], out: &'a mut [u8]) -> &'a str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut len = 0;
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xF)];
        len += 2;
    }
    // Hex digits are ASCII.
    std::str::from_utf8(&out[..len]).unwrap_or_default()
}

/// `N` bytes from exactly `2 * N` hex digits (either case).
#[cfg(feature = "resume")]
pub(crate) fn hex_bytes<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.as_bytes();
    if text.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = [0; N];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Write `n` in decimal into `buf`, returning the digits.
pub(crate) fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}
