//! The producers running in this process, by stream: looked up when a resume attaches and
//! when a stream's report is made, so that readers and the report share the producer's
//! counters; and [`ResumableStream`], the handle to this table in the request's extensions.
//!
//! Sharded by the id's first byte (ids are uniformly random, see `keyed_ids.rs`): streams
//! starting, ending and resuming on different runtime threads seldom wait for one another,
//! where one map behind one lock made every new stream contend with all the others.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::resume::id::StreamId;
use crate::resume::shared::Shared;

/// Shards: a power of two, a few times the cores of a typical server.
const SHARDS: usize = 64;

/// The producers running in this process.
pub(crate) struct Producers {
    shards: [Mutex<HashMap<StreamId, Arc<Shared>>>; SHARDS],
}

impl Default for Producers {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::default()),
        }
    }
}

impl Producers {
    fn shard(&self, id: StreamId) -> MutexGuard<'_, HashMap<StreamId, Arc<Shared>>> {
        let index = usize::from(id.as_bytes()[0]) % SHARDS;
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn insert(&self, id: StreamId, shared: Arc<Shared>) {
        self.shard(id).insert(id, shared);
    }

    pub(crate) fn remove(&self, id: StreamId) {
        self.shard(id).remove(&id);
    }

    pub(crate) fn get(&self, id: StreamId) -> Option<Arc<Shared>> {
        self.shard(id).get(&id).cloned()
    }

    /// The entry of `id` (made with `new` if there is none), attached to by a resumed reader
    /// under the lock (so that it cannot be removed in between); whether it was made.
    pub(crate) fn attach_or_insert(
        &self,
        id: StreamId,
    ) -> (crate::resume::shared::AttachGuard, bool) {
        let mut shard = self.shard(id);
        let mut made = false;
        let shared = shard.entry(id).or_insert_with(|| {
            made = true;
            Arc::new(Shared::new(id))
        });
        (shared.attach(true), made)
    }

    /// Remove `id` if no reader is attached to it any more; whether it was removed.
    pub(crate) fn remove_if_unread(&self, id: StreamId) -> bool {
        let mut shard = self.shard(id);
        if shard.get(&id).is_some_and(|s| s.attached() == 0) {
            shard.remove(&id);
            return true;
        }
        false
    }
}

/// Set by [`ResumeLayer`](crate::ResumeLayer) in the extensions of each request that may
/// become a resumable stream: its id (the one the `sse-stream-id` header will carry, if the
/// answer is a stream), for the layers and handlers inside.
///
/// It holds the id and the layer's table of running producers, nothing made for this
/// request alone: the stream's shared state is made only once the answer is a stream.
#[derive(Clone)]
pub struct ResumableStream {
    pub(crate) id: StreamId,
    pub(crate) producers: Arc<Producers>,
}

impl ResumableStream {
    /// The stream's id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// What the producer and readers share, while the producer runs (the report is made by
    /// the producer, before it leaves the table).
    pub(crate) fn shared(&self) -> Option<Arc<Shared>> {
        self.producers.get(self.id)
    }
}

impl fmt::Debug for ResumableStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ResumableStream").field(&self.id).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_remove() {
        let producers = Producers::default();
        let ids: Vec<StreamId> = (0..=255u8).map(|b| StreamId::from_bytes([b; 16])).collect();
        for &id in &ids {
            producers.insert(id, Arc::new(Shared::new(id)));
        }
        for &id in &ids {
            assert_eq!(producers.get(id).map(|s| s.id), Some(id));
        }
        producers.remove(ids[3]);
        assert!(producers.get(ids[3]).is_none());
        assert!(producers.get(ids[3 + SHARDS]).is_some());
    }
}
