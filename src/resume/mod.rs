//! Resumable streams: a client that loses its connection comes back with `Last-Event-ID`
//! and misses nothing, sees nothing twice. See [`ResumeLayer`] for the
//! whole picture, the answers to resume requests and the layer order.
//!
//! ```text
//!                 ┌──────────── producer task (one per stream) ─────────────┐
//! upstream ─► SseLayer body ─► re-cut into events ─► stamp `id: <stream>.<seq>` ─► log (store)
//!                 └─ observers and the report run here, exactly once ───────┘      │
//!                                                                                   ▼
//!   client connection 1 ◄─ reader (cursor, own keep-alives) ◄──────── read seq > cursor
//!   client connection 2 (Last-Event-ID) ◄─ reader: replay, then the live tail ◄────┘
//! ```
//!
//! The log is the only truth. A reader marks its wake-up (a `watch` of the last seq) as
//! seen *before* it reads the entries after its cursor, so a lost or coalesced wake-up can
//! only add delay, never lose or repeat an event.
//!
//! | file | role |
//! |---|---|
//! | `layer.rs` | [`ResumeLayer`], [`Detach`], [`ReaderRecord`] |
//! | `service.rs` | [`Resume`]: resume or new stream, the `200` / `204` answers |
//! | `producer.rs` | the producer task: re-cut, stamp, append, the detach policy |
//! | `body.rs` | [`ResumeBody`]: the reader that follows the log |
//! | `store.rs` | the store traits, [`ResumeStore`] and [`StreamLog`], for in-process and shared stores |
//! | `memory.rs` | [`MemoryStore`]: the in-process store, on moka |
//! | `redis/` | `RedisStore`: the logs on Redis, for many replicas (feature `redis`): the connection, wake-ups, writer and reader apart |
//! | `id.rs` | [`StreamId`], [`EventId`]: made here, parsed strictly |
//! | `shared.rs` | what a stream's producer and readers share; [`ResumableStream`] |
//! | `observer.rs` | [`ResumeObserver`], [`ResumeSummary`]: resumes in the stream's report |

pub(crate) mod body;
pub(crate) mod id;
pub(crate) mod layer;
pub(crate) mod memory;
pub(crate) mod observer;
pub(crate) mod producer;
#[cfg(feature = "redis")]
pub(crate) mod redis;
pub(crate) mod service;
pub(crate) mod shared;
pub(crate) mod store;

pub use self::body::ResumeBody;
pub use self::id::{EventId, StreamId};
pub use self::layer::ResumeLayer;
pub use self::layer::{Detach, ReaderRecord};
pub use self::memory::{MemoryStore, MemoryStoreBuilder};
pub use self::observer::{ResumeObserver, ResumeSummary};
#[cfg(feature = "redis")]
pub use self::redis::{RedisStore, RedisStoreBuilder};
pub use self::service::{RESUME_HEADER, Resume, ResumeFuture, STREAM_ID_HEADER};
pub use self::shared::ResumableStream;

/// Renamed to [`Resume`] (a service `Foo` with its layer `FooLayer`, as in tower-http).
#[deprecated(note = "renamed to `Resume`")]
pub type ResumeService<S> = Resume<S>;
pub use self::store::{
    Batch, NewStream, Read, ReadLimits, ResumeStore, StoreError, StoreErrorKind, StreamEnd,
    StreamLog,
};

/// Moved to [`tower_sse::BoxFuture`](crate::BoxFuture): the crate has one boxed-future alias.
#[deprecated(note = "use `tower_sse::BoxFuture`")]
pub type BoxFuture<'a, T> = crate::BoxFuture<'a, T>;
