//! [`MemoryBudgets`]: the in-process store, exact under concurrency (one lock per store).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Mutex, PoisonError};

use super::Limit;
use super::limits::{LimitState, Verdict};
use super::store::{Admit, BudgetStore, Decision, LimitStatus, Rejection, Settlement, StoreError};
use crate::BoxFuture;

/// How many settled ids the store remembers to refuse a second settlement of one stream.
const REMEMBERED_SETTLEMENTS: usize = 100_000;
/// The fewest keys at which the store drops keys at rest (see [`State::key`]).
const SWEEP_KEYS_AT: usize = 1024;

/// Budgets kept in this process: exact under any concurrency (every admission and
/// settlement of the store runs under one short lock, all limits of a key at once), lost
/// on restart, and not shared by replicas (use a shared store for those).
///
/// Memory: one small entry per key (32 bytes per limit) while the key has anything spent
/// (a key at rest, with nothing spent in any of its windows, is dropped: its next request
/// finds it as new, which is the same), and the ids of the last 100 000 settlements. Keys
/// may come from requests (a tenant's credential, a header): without dropping those at rest,
/// every distinct key ever seen was kept.
///
/// ```
/// use std::time::Duration;
/// use tower_sse::budget::{Admit, Amounts, BudgetStore, Decision, Limit, Measure, MemoryBudgets};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = MemoryBudgets::new();
/// let limits = [Limit::rate(Measure::Requests, 2, Duration::from_secs(60))];
/// let one = Amounts { requests: 1, ..Amounts::default() };
/// let admit = Admit { key: "team-a", limits: &limits, amounts: one, now: 0 };
/// assert_eq!(store.admit(admit).await.unwrap(), Decision::Admitted);
/// assert_eq!(store.admit(admit).await.unwrap(), Decision::Admitted);
/// let Decision::Rejected(rejection) = store.admit(admit).await.unwrap() else { panic!() };
/// assert_eq!(rejection.retry_after, Some(Duration::from_secs(30)));
/// # }
/// ```
#[derive(Default)]
pub struct MemoryBudgets {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, KeyState>,
    /// Keys held when keys at rest are dropped next (twice those left by the last sweep).
    sweep_at: usize,
    settled: HashSet<String>,
    settled_order: VecDeque<String>,
}

/// One key's limits' states, in the order of its limits (reset when they change).
struct KeyState {
    limits: Vec<Limit>,
    states: Vec<LimitState>,
}

impl MemoryBudgets {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic under the lock cannot leave a half-made change: every change is made
        // after every check.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decide an admission now (what [`BudgetStore::admit`] does, without a future).
    pub fn admit_now(&self, admit: Admit<'_>) -> Decision {
        let mut state = self.lock();
        let key = state.key(admit.key, admit.limits, admit.now);
        let mut refusal: Option<Rejection> = None;
        for (limit, s) in admit.limits.iter().zip(&key.states) {
            let n = limit.measure.of(&admit.amounts);
            let retry_after = match limit.check(s, n, admit.now) {
                Verdict::Fits => continue,
                Verdict::Wait(wait) => Some(wait),
                Verdict::Never => None,
            };
            let worse = match &refusal {
                None => true,
                Some(r) => match (r.retry_after, retry_after) {
                    (Some(_), None) => true,
                    (Some(a), Some(b)) => b > a,
                    (None, _) => false,
                },
            };
            if worse {
                refusal = Some(Rejection {
                    limit: *limit,
                    retry_after,
                });
            }
        }
        if let Some(rejection) = refusal {
            return Decision::Rejected(rejection);
        }
        for (limit, s) in admit.limits.iter().zip(&mut key.states) {
            limit.spend(s, limit.measure.of(&admit.amounts), admit.now);
        }
        Decision::Admitted
    }

    /// Apply a settlement now; `false` when this id was settled already.
    pub fn settle_now(&self, settlement: &Settlement) -> bool {
        let mut state = self.lock();
        if !state.remember(&settlement.id) {
            return false;
        }
        let key = state.key(&settlement.key, &settlement.limits, settlement.now);
        for (limit, s) in settlement.limits.iter().zip(&mut key.states) {
            limit.settle(
                s,
                limit.measure.of(&settlement.reserved),
                limit.measure.of(&settlement.actual),
                settlement.admitted_at,
                settlement.now,
            );
        }
        true
    }

    /// Where each limit of `key` stands now.
    pub fn status_now(&self, key: &str, limits: &[Limit], now: u64) -> Vec<LimitStatus> {
        let mut state = self.lock();
        let key = state.key(key, limits, now);
        limits
            .iter()
            .zip(&key.states)
            .map(|(limit, s)| status(limit, s, now))
            .collect()
    }
}

pub(crate) fn status(limit: &Limit, s: &LimitState, now: u64) -> LimitStatus {
    let (used, resets) = limit.usage(s, now);
    LimitStatus {
        limit: limit.describe(),
        measure: limit.measure,
        amount: limit.amount,
        used,
        remaining: limit.capacity().saturating_sub(used),
        resets_in_secs: resets.as_nanos().div_ceil(1_000_000_000) as u64,
    }
}

impl State {
    /// `key`'s state, made if new. Before a new key is added to a table that doubled since
    /// its last sweep, the keys at rest are dropped: amortised constant work per key, and
    /// at most about twice the keys with something spent held.
    fn key(&mut self, key: &str, limits: &[Limit], now: u64) -> &mut KeyState {
        if !self.keys.contains_key(key) {
            if self.keys.len() >= self.sweep_at.max(SWEEP_KEYS_AT) {
                self.keys.retain(|_, state| !state.at_rest(now));
                self.sweep_at = self.keys.len() * 2;
            }
            self.keys.insert(
                key.to_owned(),
                KeyState {
                    limits: Vec::new(),
                    states: Vec::new(),
                },
            );
        }
        let entry = self.keys.get_mut(key).expect("inserted above");
        if entry.limits != limits {
            // New limits (a reloaded configuration): keep the state of those unchanged.
            let states = limits
                .iter()
                .map(|limit| {
                    entry
                        .limits
                        .iter()
                        .position(|old| old == limit)
                        .map(|i| entry.states[i])
                        .unwrap_or_default()
                })
                .collect();
            entry.limits = limits.to_vec();
            entry.states = states;
        }
        entry
    }

    /// Remember a settled id; `false` when it was already.
    fn remember(&mut self, id: &str) -> bool {
        if self.settled.contains(id) {
            return false;
        }
        if self.settled_order.len() >= REMEMBERED_SETTLEMENTS
            && let Some(old) = self.settled_order.pop_front()
        {
            self.settled.remove(&old);
        }
        self.settled.insert(id.to_owned());
        self.settled_order.push_back(id.to_owned());
        true
    }
}

impl KeyState {
    /// Nothing spent in any window: the key answers as a new one would, now and later (a
    /// rate's state at or behind `now`, a period with nothing counted, no debt carried).
    fn at_rest(&self, now: u64) -> bool {
        self.limits
            .iter()
            .zip(&self.states)
            .all(|(limit, state)| limit.usage(state, now).0 == 0)
    }
}

impl BudgetStore for MemoryBudgets {
    fn admit<'a>(&'a self, admit: Admit<'a>) -> BoxFuture<'a, Result<Decision, StoreError>> {
        let decision = self.admit_now(admit);
        Box::pin(std::future::ready(Ok(decision)))
    }

    fn settle(&self, settlement: Settlement) {
        self.settle_now(&settlement);
    }

    fn status<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        now: u64,
    ) -> BoxFuture<'a, Result<Vec<LimitStatus>, StoreError>> {
        Box::pin(std::future::ready(Ok(self.status_now(key, limits, now))))
    }
}

impl fmt::Debug for MemoryBudgets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("MemoryBudgets")
            .field("keys", &state.keys.len())
            .field("settled", &state.settled.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::budget::{Amounts, Measure};

    fn amounts(requests: u64, input: u64, output: u64) -> Amounts {
        Amounts {
            requests,
            input_tokens: input,
            output_tokens: output,
            cost_micros: 0,
        }
    }

    #[test]
    fn all_or_nothing_across_limits() {
        let store = MemoryBudgets::new();
        let limits = [
            Limit::rate(Measure::Requests, 10, Duration::from_secs(60)),
            Limit::per_day(Measure::TotalTokens, 100),
        ];
        let admit = |a| Admit {
            key: "k",
            limits: &limits,
            amounts: a,
            now: 0,
        };
        assert_eq!(
            store.admit_now(admit(amounts(1, 50, 40))),
            Decision::Admitted
        );
        // The day budget refuses: the request limit must not have been charged either.
        assert!(matches!(
            store.admit_now(admit(amounts(1, 50, 40))),
            Decision::Rejected(_)
        ));
        assert_eq!(store.status_now("k", &limits, 0)[0].used, 1);
        let Decision::Rejected(r) = store.admit_now(admit(amounts(1, 100, 1))) else {
            panic!()
        };
        assert_eq!(r.retry_after, None, "101 tokens never fit a day of 100");
    }

    #[test]
    fn settlement_applies_once_per_id() {
        let store = MemoryBudgets::new();
        let limits: Arc<[Limit]> = Arc::from([Limit::per_day(Measure::OutputTokens, 1000)]);
        let admit = Admit {
            key: "k",
            limits: &limits,
            amounts: amounts(1, 0, 500),
            now: 0,
        };
        assert_eq!(store.admit_now(admit), Decision::Admitted);
        let settlement = Settlement {
            id: "s1".into(),
            key: "k".into(),
            limits: limits.clone(),
            reserved: amounts(1, 0, 500),
            actual: amounts(1, 0, 120),
            admitted_at: 0,
            now: 0,
        };
        assert!(store.settle_now(&settlement));
        assert!(!store.settle_now(&settlement));
        assert_eq!(store.status_now("k", &limits, 0)[0].used, 120);
    }

    /// Many threads admitting at once never reserve past the limit.
    #[test]
    fn exact_under_concurrency() {
        let store = Arc::new(MemoryBudgets::new());
        let limits: Arc<[Limit]> = Arc::from([Limit::per_day(Measure::TotalTokens, 1000)]);
        let admitted: u64 = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let (store, limits) = (store.clone(), limits.clone());
                    scope.spawn(move || {
                        (0..100)
                            .filter(|_| {
                                store.admit_now(Admit {
                                    key: "k",
                                    limits: &limits,
                                    amounts: amounts(1, 3, 4),
                                    now: 0,
                                }) == Decision::Admitted
                            })
                            .count() as u64
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(admitted, 1000 / 7);
        assert_eq!(store.status_now("k", &limits, 0)[0].used, 1000 / 7 * 7);
    }

    /// Keys come from requests: those at rest (nothing spent in any window) are dropped as
    /// new ones arrive, so that a flood of distinct keys does not grow the store without
    /// bound; a key with something spent is never dropped (its budget holds).
    #[test]
    fn keys_at_rest_are_dropped_and_spent_ones_kept() {
        const MINUTE: u64 = 60_000_000_000;
        let store = MemoryBudgets::new();
        let limits = [
            Limit::rate(Measure::Requests, 2, Duration::from_secs(60)),
            Limit::per_day(Measure::OutputTokens, 1_000),
        ];
        let admit = |key: &str, now: u64| {
            store.admit_now(Admit {
                key,
                limits: &limits,
                amounts: amounts(1, 0, 0),
                now,
            })
        };
        // Alice spends her two requests a minute.
        assert_eq!(admit("alice", 0), Decision::Admitted);
        assert_eq!(admit("alice", 0), Decision::Admitted);
        // Ten thousand keys, each one request: all spent within the minute, all kept.
        for n in 0..10_000 {
            assert_eq!(admit(&format!("k{n}"), 0), Decision::Admitted);
        }
        assert!(matches!(admit("alice", 0), Decision::Rejected(_)));
        assert_eq!(store.lock().keys.len(), 10_001);
        // The sweeps so far found every key spent (1024, 2048, ... 8192 kept): the next is
        // at 16,384 keys, never more.
        assert_eq!(store.lock().sweep_at, 16_384);
        // A minute later they are all at rest: the sweep that ten thousand new keys bring
        // drops them, and only keys with something spent are left.
        for n in 0..10_000 {
            assert_eq!(admit(&format!("later{n}"), 2 * MINUTE), Decision::Admitted);
            assert!(store.lock().keys.len() <= 16_384);
        }
        assert!(!store.lock().keys.contains_key("k0"));
        assert_eq!(store.lock().keys.len(), 10_000);
        // Alice, dropped at rest, answers as a new key would: two requests a minute.
        assert_eq!(admit("alice", 2 * MINUTE), Decision::Admitted);
        assert_eq!(admit("alice", 2 * MINUTE), Decision::Admitted);
        assert!(matches!(admit("alice", 2 * MINUTE), Decision::Rejected(_)));
        // Tokens spent today keep a key past its rate window: it is not at rest.
        let tokens = Admit {
            key: "bob",
            limits: &limits,
            amounts: amounts(0, 0, 900),
            now: 3 * MINUTE,
        };
        assert_eq!(store.admit_now(tokens), Decision::Admitted);
        for n in 0..10_000 {
            admit(&format!("flood{n}"), 10 * MINUTE);
        }
        let bob = store.lock().keys.contains_key("bob");
        assert!(bob, "bob's spent tokens were dropped");
        let more = Admit {
            now: 10 * MINUTE,
            amounts: amounts(0, 0, 200),
            ..tokens
        };
        assert!(matches!(store.admit_now(more), Decision::Rejected(_)));
    }
}
