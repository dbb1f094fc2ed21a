//! Benchmark-only (cargo feature `tuned`, off by default): hand-tuned replacements for stock
//! pieces of the gateway, kept so that the measurements of BENCHMARKS.md ("issue 15, fourth
//! round") can be repeated. A gateway you copy does not need them.
//!
//! - [`log_fields::PlainFields`]: the text log's fields written straight (numbers through
//!   `itoa` and `ryu`), the same line as tracing-subscriber's `DefaultFields` without
//!   colours: a stream's log line 17,500 → 12,200 instructions.
//! - [`log_time::CachedSystemTime`]: tracing-subscriber's `SystemTime` text, with the date
//!   formatted once a second per thread: −2,200 instructions per stream.
//! - `WhenWoken`: a connection's clocks and the server's shutdown polled only when they woke
//!   the connection's task, not at every event it relays: −2,700 instructions per stream.
//!
//! Together about 4% of the gateway's instructions per short stream (about 230,000); their
//! tests compare them with the stock pieces byte for byte.

pub mod log_fields;
pub mod log_time;
mod woken;

pub(crate) use woken::WhenWoken;

/// Deterministic pseudo-random numbers for the unit tests' inputs (xorshift64; `seed` not 0).
#[cfg(test)]
fn test_numbers(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}
