//! The digest of a resumable stream: what its producer logs, `id:` lines stamped, which is
//! what its clients read (without their own keep-alives).

use bytes::Bytes;
use sha2::Digest as _;
use sha2::Sha256;

use crate::resume::StreamId;
use crate::resume::producer::{Stamper, next_entry};
use crate::sse::Decoder;

/// Re-cuts what the `SseLayer` hands on into events, as the stream's producer does, and
/// hashes each event as stamped: the same entries, numbered the same way, as the log holds
/// and every reader sends.
///
/// The `SseLayer` hands on whole events, so each frame yields its events at once: a record
/// made right after the frame with the terminal event holds that event, stamped.
pub(super) struct Stamped {
    decoder: Decoder,
    stamper: Stamper,
    seq: u64,
    /// The producer's decoder failed here (an event past its limit): nothing more is logged.
    failed: bool,
}

impl Stamped {
    pub(super) fn new(id: StreamId) -> Self {
        Self {
            // The `SseLayer` bounds its events already; the producer's own, lower, limit
            // ends the stream (then the digest may hold one event the log does not).
            decoder: Decoder::new().max_event_size(usize::MAX),
            stamper: Stamper::new(id),
            seq: 0,
            failed: false,
        }
    }

    /// Bytes handed on to the producer: hash the entries they complete.
    pub(super) fn feed(&mut self, data: &[u8], hasher: &mut Sha256) {
        if self.failed {
            return;
        }
        self.decoder.push(Bytes::copy_from_slice(data));
        self.drain(hasher);
    }

    /// The stream ended: hash an event it ended in the middle of, as the producer logs it.
    pub(super) fn finish(&mut self, hasher: &mut Sha256) {
        if self.failed {
            return;
        }
        self.decoder.finish();
        self.drain(hasher);
    }

    /// The same choices as the producer: events and `retry` blocks are logged, comments
    /// and keep-alives are not.
    fn drain(&mut self, hasher: &mut Sha256) {
        while let Some(entry) = next_entry(&mut self.decoder, &mut self.stamper, self.seq + 1) {
            let entry = match entry {
                Ok(entry) => entry,
                Err(_) => {
                    self.failed = true;
                    return;
                }
            };
            self.seq += 1;
            hasher.update(&entry);
        }
    }
}

/// The observer's slot for [`Stamped`]: empty until the request shows it is resumable. A
/// clone is empty (the layer clones its observer for each request, before the request).
#[derive(Default)]
pub(super) struct Slot(pub(super) Option<Box<Stamped>>);

impl Clone for Slot {
    fn clone(&self) -> Self {
        Self(None)
    }
}
