//! Fresh stream ids without a system call per id: a keyed pseudo-random function over a
//! per-process counter.
//!
//! A stream id gates resumption (with the tenant check), so it must stay unguessable even
//! to a client that has seen many others. Each id is the first 128 bits of
//! `SHA-256(key ‖ counter)`: the 256-bit `key` is drawn once per process from the operating
//! system's CSPRNG, the 64-bit `counter` never repeats within the process. With a secret
//! key and fixed-length inputs this is a pseudo-random function (the length-extension
//! property of SHA-256 needs variable-length inputs and the whole digest, and an attacker
//! here sees neither the key nor more than half of any digest): ids seen tell nothing about
//! the next ones. One SHA-256 block per id, no allocation, no lock, no system call after
//! the first id (the operating system's random source was one `getrandom` call per id).
//!
//! Separate processes (replicas sharing a Redis store) each draw their own key, so their
//! ids do not collide. A process `fork`ed without `exec` after its first id would share key
//! and counter with its parent and repeat its ids; a Tokio server does not survive a fork,
//! so this is only said here, not guarded against (checking the process id per id would
//! bring back a system call per id).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// The process's key; `None` if the operating system's random source failed (then no id is
/// made: the streams are not resumable, as before).
static KEY: OnceLock<Option<[u8; 32]>> = OnceLock::new();

/// Ids made so far in this process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// 16 fresh unguessable bytes; `None` when the operating system's random source fails.
pub(crate) fn fresh() -> Option<[u8; 16]> {
    let key = KEY
        .get_or_init(|| {
            let mut key = [0; 32];
            getrandom::fill(&mut key).ok().map(|()| key)
        })
        .as_ref()?;
    // 2^64 ids: never reached (wrapping would take centuries at a billion ids a second).
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
    let digest = Sha256::new()
        .chain_update(key)
        .chain_update(counter.to_le_bytes())
        .finalize();
    let mut id = [0; 16];
    id.copy_from_slice(&digest[..16]);
    Some(id)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ids_do_not_repeat_across_threads() {
        let ids: Vec<[u8; 16]> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..2500).map(|_| fresh().unwrap()).collect::<Vec<_>>()))
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect()
        });
        let unique: HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), 10_000);
    }

    #[test]
    fn an_id_is_the_keyed_hash_of_the_counter() {
        let id = fresh().unwrap();
        let key = KEY.get().unwrap().unwrap();
        // Some counter value below the current one gave it (other tests may run at once).
        let made = COUNTER.load(Ordering::Relaxed);
        let found = (0..made).any(|n| {
            let digest = Sha256::new()
                .chain_update(key)
                .chain_update(n.to_le_bytes())
                .finalize();
            digest[..16] == id
        });
        assert!(found);
    }

    #[test]
    fn bits_are_balanced() {
        // A crude check that the output is not structured: over 4096 ids, every bit
        // position is set close to half of the time (binomial, σ = 32: 6σ bounds).
        let mut ones = [0u32; 128];
        for _ in 0..4096 {
            let id = fresh().unwrap();
            for (bit, count) in ones.iter_mut().enumerate() {
                *count += u32::from(id[bit / 8] >> (bit % 8) & 1);
            }
        }
        for (bit, &count) in ones.iter().enumerate() {
            assert!((1856..=2240).contains(&count), "bit {bit}: {count}");
        }
    }
}
