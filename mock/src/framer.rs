//! Cutting the event bytes into body frames: whole events, fixed sizes or random sizes.

use bytes::{Bytes, BytesMut};

use crate::config::Chunking;
use crate::words::SplitMix;

/// Upper bounds random frame lengths are drawn under: from single bytes (split code points
/// and line ends) to frames holding several events.
const RANDOM_MAXIMA: [usize; 6] = [1, 4, 16, 64, 256, 1024];

/// Turns pushed event bytes into frames. Sized modes coalesce events sent back to back and
/// keep a partial frame only until [`flush`](Self::flush), which the body calls before any
/// pause, so no byte ever waits for a later event.
#[derive(Debug)]
pub(crate) struct Framer {
    mode: Mode,
    buf: BytesMut,
    /// Send what is buffered even if short of a whole frame.
    flushing: bool,
}

#[derive(Debug)]
enum Mode {
    /// The next whole event.
    Whole(Option<Bytes>),
    Fixed(usize),
    Random {
        rng: SplitMix,
        next: usize,
    },
}

impl Framer {
    pub(crate) fn new(chunking: Chunking, seed: u64) -> Self {
        let mode = match chunking {
            Chunking::Whole => Mode::Whole(None),
            Chunking::Fixed(n) => Mode::Fixed(n.get()),
            Chunking::Random => {
                let mut rng = SplitMix::new(seed ^ 0xC0FF_EE00_D15E_A5E5);
                let next = random_len(&mut rng);
                Mode::Random { rng, next }
            }
        };
        Self {
            mode,
            buf: BytesMut::new(),
            flushing: false,
        }
    }

    /// Queue bytes. In whole mode the previous event must have been taken.
    pub(crate) fn push(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        match &mut self.mode {
            Mode::Whole(slot) => {
                debug_assert!(slot.is_none(), "whole events are taken one by one");
                *slot = Some(bytes);
            }
            _ => self.buf.extend_from_slice(&bytes),
        }
    }

    /// Let the next [`take`](Self::take)s hand out everything buffered.
    pub(crate) fn flush(&mut self) {
        self.flushing = true;
    }

    /// The next frame ready to send.
    pub(crate) fn take(&mut self) -> Option<Bytes> {
        let target = match &mut self.mode {
            Mode::Whole(slot) => return slot.take(),
            Mode::Fixed(n) => *n,
            Mode::Random { next, .. } => *next,
        };
        if self.buf.is_empty() {
            self.flushing = false;
            return None;
        }
        if self.buf.len() >= target {
            if let Mode::Random { rng, next } = &mut self.mode {
                *next = random_len(rng);
            }
            return Some(self.buf.split_to(target).freeze());
        }
        self.flushing.then(|| self.buf.split().freeze())
    }

    /// Whether no byte is waiting.
    pub(crate) fn is_empty(&self) -> bool {
        match &self.mode {
            Mode::Whole(slot) => slot.is_none(),
            _ => self.buf.is_empty(),
        }
    }
}

fn random_len(rng: &mut SplitMix) -> usize {
    let max = RANDOM_MAXIMA[rng.below(RANDOM_MAXIMA.len())];
    1 + rng.below(max)
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;

    fn drain(framer: &mut Framer) -> Vec<Bytes> {
        std::iter::from_fn(|| framer.take()).collect()
    }

    #[test]
    fn fixed_frames_cross_events_and_flush_the_rest() {
        let mut framer = Framer::new(Chunking::Fixed(NonZeroUsize::new(4).unwrap()), 0);
        framer.push(Bytes::from_static(b"abcdef"));
        framer.push(Bytes::from_static(b"ghi"));
        assert_eq!(drain(&mut framer), [&b"abcd"[..], b"efgh"]);
        framer.flush();
        assert_eq!(drain(&mut framer), [&b"i"[..]]);
        assert!(framer.is_empty());
    }

    #[test]
    fn random_frames_keep_every_byte_in_order() {
        let input: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let mut framer = Framer::new(Chunking::Random, 42);
        let mut out = Vec::new();
        let mut sizes = Vec::new();
        for piece in input.chunks(97) {
            framer.push(Bytes::copy_from_slice(piece));
            for frame in drain(&mut framer) {
                sizes.push(frame.len());
                out.extend_from_slice(&frame);
            }
        }
        framer.flush();
        out.extend(drain(&mut framer).iter().flat_map(|f| f.to_vec()));
        assert_eq!(out, input);
        assert!(sizes.contains(&1));
        assert!(sizes.iter().any(|&s| s > 97));
    }
}
