//! The `text/event-stream` wire format: an incremental [`Decoder`] and an [`Event`] encoder.
//!
//! No I/O and no runtime here: push bytes in, pull [`Item`]s out. The decoder follows the
//! HTML standard's "Interpreting an event stream" to the letter, never rescans buffered
//! bytes, returns events as slices of the input when they arrive in one chunk, and bounds
//! the memory one event may hold.
//!
//! # Differences from other SSE parsers
//!
//! - Every event keeps its [raw bytes](Event::raw), so a proxy can forward it byte for byte.
//! - Comments are reported ([`Item::Comment`]), and blocks that dispatch nothing but still
//!   change a client's state (`id:` or `retry:` alone) are reported as [`Item::Block`].
//! - A CR that ends a chunk ends its line immediately: the event is not held back waiting
//!   for a possible LF.
//! - Memory is bounded by [`Decoder::max_event_size`]; invalid UTF-8 never fails the stream
//!   (text accessors decode with replacement, as the standard does).

mod decoder;
mod event;
pub(crate) mod ndjson;
pub(crate) mod relay;

#[cfg(feature = "resume")]
pub(crate) use self::decoder::FoundKind;
pub use self::decoder::{DEFAULT_MAX_EVENT_SIZE, DecodeError, Decoder};
pub(crate) use self::event::terminate_block;
pub use self::event::{
    Block, BlockRef, Comment, EncodeError, Event, EventBuilder, EventRef, Item, ItemRef,
    comment_block,
};
