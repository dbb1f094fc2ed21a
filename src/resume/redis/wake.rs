//! The wake-ups of the logs read on this replica: one subscription to the wake channel,
//! fanned out to the local readers, and a safety poll.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, Weak};

use tokio::sync::watch;

use super::{Inner, RedisStore};
use crate::resume::id::StreamId;

impl RedisStore {
    pub(super) fn wake_channel(&self) -> String {
        format!("{}wake", self.inner.settings.prefix)
    }

    /// The local wake-ups of stream `id`, fed by the subscription (started on first use).
    pub(super) fn waker(&self, id: StreamId) -> Arc<watch::Sender<u64>> {
        self.subscribe();
        let mut wakers = self
            .inner
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(waker) = wakers.get(id) {
            return waker;
        }
        let waker = Arc::new(watch::channel(0).0);
        wakers.insert(id, &waker);
        waker
    }

    /// Told when a reader of stream `id` (produced on this replica) attaches on another:
    /// fed by the same subscription, from the `<id> readers` messages that
    /// [`keep_present`](crate::resume::StreamLog::keep_present) publishes.
    pub(super) fn attach_waker(&self, id: StreamId) -> Arc<watch::Sender<u64>> {
        self.subscribe();
        let mut wakers = self
            .inner
            .attach_wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let waker = Arc::new(watch::channel(0).0);
        wakers.insert(id, &waker);
        waker
    }

    /// The message that tells stream `id`'s producer a reader attached on another replica.
    pub(super) fn attach_message(id: StreamId) -> String {
        format!("{id} readers")
    }

    /// Start the replica's one subscription to the wake channel (and the safety poll), once.
    fn subscribe(&self) {
        if self.inner.subscribed.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.inner.subscribed.store(false, Ordering::Release);
            return;
        };
        let store = Arc::downgrade(&self.inner);
        runtime.spawn(wake_loop(store, self.wake_channel()));
    }
}

/// Fan the wake channel out to the local readers, and nudge them all every `poll` (a
/// message lost while the subscription was down only delays them). Ends with the store.
async fn wake_loop(store: Weak<Inner>, channel: String) {
    use futures_util::StreamExt;
    loop {
        let Some(inner) = store.upgrade() else {
            return;
        };
        let (client, poll) = (inner.client.clone(), inner.settings.poll);
        drop(inner);
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub.into_on_message())
        };
        let mut messages = tokio::time::timeout(poll, subscribed)
            .await
            .ok()
            .and_then(Result::ok);
        loop {
            // `None`: the safety poll is due (or there is no subscription).
            let message = match &mut messages {
                Some(messages) => match tokio::time::timeout(poll, messages.next()).await {
                    Ok(Some(message)) => Some(Some(message)),
                    // The subscription broke.
                    Ok(None) => Some(None),
                    Err(_) => None,
                },
                None => {
                    tokio::time::sleep(poll).await;
                    None
                }
            };
            let Some(inner) = store.upgrade() else {
                return;
            };
            match message {
                // A wake-up: `<id> <seq>`, or `<id> readers` for the stream's producer.
                Some(Some(message)) => match parse_wake(message.get_payload_bytes()) {
                    Some((id, Wake::Seq(seq))) => {
                        let waker = inner
                            .wakers
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get(id);
                        if let Some(waker) = waker {
                            waker.send_replace(seq);
                        }
                    }
                    Some((id, Wake::Readers)) => {
                        let waker = inner
                            .attach_wakers
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get(id);
                        if let Some(waker) = waker {
                            waker.send_modify(|n| *n = n.wrapping_add(1));
                        }
                    }
                    None => {}
                },
                broken => {
                    nudge_all(&inner);
                    // Subscribe again when it broke or never worked.
                    if broken.is_some() || messages.is_none() {
                        break;
                    }
                }
            }
        }
    }
}

fn nudge_all(inner: &Inner) {
    let wakers = inner.wakers.lock().unwrap_or_else(PoisonError::into_inner);
    for waker in wakers.live() {
        waker.send_modify(|_| {});
    }
}

/// The fewest entries a [`Wakers`] table sweeps at.
const MIN_SWEEP: usize = 64;

/// Wake-up senders by stream, held weakly (a stream's readers or producer hold them).
///
/// Dead entries are swept when the table has doubled since its last sweep: amortised
/// constant work per stream, and at most about twice the live entries held. A sweep on
/// every new stream cost each one a pass over every stream of the replica, under the lock
/// the subscription's fan-out takes too.
#[derive(Default)]
pub(super) struct Wakers {
    map: HashMap<StreamId, Weak<watch::Sender<u64>>>,
    sweep_at: usize,
}

impl Wakers {
    fn get(&self, id: StreamId) -> Option<Arc<watch::Sender<u64>>> {
        self.map.get(&id).and_then(Weak::upgrade)
    }

    fn insert(&mut self, id: StreamId, waker: &Arc<watch::Sender<u64>>) {
        if self.map.len() >= self.sweep_at.max(MIN_SWEEP) {
            self.map.retain(|_, waker| waker.strong_count() > 0);
            self.sweep_at = self.map.len() * 2;
        }
        self.map.insert(id, Arc::downgrade(waker));
    }

    fn live(&self) -> impl Iterator<Item = Arc<watch::Sender<u64>>> + '_ {
        self.map.values().filter_map(Weak::upgrade)
    }
}

/// What a message on the wake channel says about its stream.
#[derive(Debug, PartialEq, Eq)]
enum Wake {
    /// Its log has entries up to this seq (for its readers).
    Seq(u64),
    /// A reader attached on some replica (for its producer).
    Readers,
}

fn parse_wake(payload: &[u8]) -> Option<(StreamId, Wake)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (id, what) = text.split_once(' ')?;
    let what = match what {
        "readers" => Wake::Readers,
        seq => Wake::Seq(seq.parse().ok()?),
    };
    Some((StreamId::parse(id)?, what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_messages_parse_strictly() {
        let id = StreamId::random().unwrap();
        assert_eq!(
            parse_wake(format!("{id} 7").as_bytes()),
            Some((id, Wake::Seq(7)))
        );
        assert_eq!(
            parse_wake(RedisStore::attach_message(id).as_bytes()),
            Some((id, Wake::Readers))
        );
        assert_eq!(parse_wake(b"nonsense"), None);
        assert_eq!(parse_wake(format!("{id} x").as_bytes()), None);
        assert_eq!(parse_wake(format!("{id} readers2").as_bytes()), None);
    }

    /// Dead entries go in sweeps, at most about twice the live entries held; live ones
    /// are always found.
    #[test]
    fn the_wakers_table_stays_within_twice_its_live_entries() {
        let mut wakers = Wakers::default();
        let mut live = Vec::new();
        for n in 0..10_000u32 {
            let id = StreamId::random().unwrap();
            let waker = Arc::new(watch::channel(0).0);
            wakers.insert(id, &waker);
            // One in ten stays alive; the rest end at once.
            if n % 10 == 0 {
                live.push((id, waker));
            }
            assert!(wakers.map.len() <= 2 * live.len() + MIN_SWEEP + 1);
        }
        for (id, waker) in &live {
            assert!(Arc::ptr_eq(&wakers.get(*id).unwrap(), waker));
        }
        assert_eq!(wakers.live().count(), live.len());
    }
}
