//! Fail open without losing spend: while the store is away, admissions are accounted in
//! process, and what those streams used is settled into the store once it answers again.
//!
//! - **Admission.** With [`OnStoreError::FailOpen`](super::OnStoreError::FailOpen), a
//!   request whose admission the store failed (or did not answer in time) is admitted
//!   against the same limits kept in this process (a [`MemoryBudgets`]): the limits still
//!   hold per replica while the store is away (a key can spend up to its limits once on
//!   each replica, on top of what the store had counted), and such a request is refused
//!   with `429` like any other when the local state says so. Its reservation id starts with
//!   `local:`.
//! - **Settlement.** A local reservation settles into the local state as usual and leaves a
//!   *debt*: the same id, nothing reserved, what was used. Debts wait in a bounded queue
//!   (100 000 by default, [`BudgetLayer::max_local_debts`](super::BudgetLayer::max_local_debts);
//!   a debt past it is counted as lost, never silently).
//! - **Reconciliation.** A task settles the queued debts into the store in order, one
//!   confirmed [`settle_confirmed`](super::BudgetStore::settle_confirmed) each, retrying
//!   every second while the store is away; it is started when a debt is queued, and again
//!   by each admission the store answers while debts wait. (Built without a feature that
//!   lets tokio spawn, `drain`, `registry` or `resume`, each admission the store answers
//!   settles one waiting debt itself instead.) The store applies each once per id, so a
//!   debt retried after a lost answer is never charged twice. A debt is charged in the
//!   store's current period (a day or month that ended meanwhile is not reopened).

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::store::{Admit, BudgetStore, Decision, Settlement, StoreError};
use super::{Amounts, MemoryBudgets};

/// The id prefix of a reservation admitted locally.
pub(crate) const LOCAL: &str = "local:";

/// How long the reconciliation waits before trying an unavailable store again.
#[cfg(any(feature = "drain", feature = "registry", feature = "resume"))]
const RETRY: Duration = Duration::from_secs(1);

/// What was admitted in process while the store was away.
pub(crate) struct Local {
    pub(crate) budgets: MemoryBudgets,
    debts: Mutex<VecDeque<Settlement>>,
    /// `debts.len()`, read without the lock by every admission.
    owed: AtomicU64,
    pub(crate) max_debts: AtomicU64,
    flushing: AtomicBool,
    reconciled: AtomicU64,
    lost: AtomicU64,
}

impl Local {
    pub(crate) fn new() -> Self {
        Self {
            budgets: MemoryBudgets::new(),
            debts: Mutex::new(VecDeque::new()),
            owed: AtomicU64::new(0),
            max_debts: AtomicU64::new(100_000),
            flushing: AtomicBool::new(false),
            reconciled: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        }
    }

    /// Debts waiting for the store.
    pub(crate) fn pending(&self) -> u64 {
        self.debts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len() as u64
    }

    /// Debts settled into the store so far.
    pub(crate) fn reconciled(&self) -> u64 {
        self.reconciled.load(Ordering::Relaxed)
    }

    /// Debts dropped because the queue was full.
    pub(crate) fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Admit in process, against the same limits.
    pub(crate) async fn admit(&self, admit: Admit<'_>) -> Result<Decision, StoreError> {
        self.budgets.admit(admit).await
    }

    /// The first debt was settled into the store.
    fn pop(&self) {
        let mut debts = self.debts.lock().unwrap_or_else(PoisonError::into_inner);
        debts.pop_front();
        self.owed.store(debts.len() as u64, Ordering::Release);
        drop(debts);
        self.reconciled.fetch_add(1, Ordering::Relaxed);
    }

    /// Settle a local reservation here, and queue what it used as a debt for the store.
    fn settle(&self, settlement: Settlement) -> bool {
        let debt = Settlement {
            reserved: Amounts::default(),
            ..settlement.clone()
        };
        self.budgets.settle(settlement);
        let mut debts = self.debts.lock().unwrap_or_else(PoisonError::into_inner);
        if debts.len() as u64 >= self.max_debts.load(Ordering::Relaxed) {
            self.lost.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        debts.push_back(debt);
        self.owed.store(debts.len() as u64, Ordering::Release);
        true
    }
}

/// What reconciling needs of the layer: the store, its clock and how long to wait on it.
pub(crate) struct Target<'a> {
    pub(crate) store: &'a Arc<dyn BudgetStore>,
    pub(crate) clock: &'a Arc<dyn Fn() -> u64 + Send + Sync>,
    pub(crate) timeout: Duration,
}

impl Local {
    /// Apply a settlement: a local reservation's here (and its debt queued, and the
    /// reconciliation started), any other's in the store.
    pub(crate) fn settle_into(self: &Arc<Self>, settlement: Settlement, target: Target<'_>) {
        if settlement.id.starts_with(LOCAL) {
            if self.settle(settlement) {
                self.reconcile(target);
            }
        } else {
            target.store.settle(settlement);
        }
    }

    /// Without a feature that gives tokio its runtime handle (`drain`, `registry`,
    /// `resume`), no task can be spawned: each admission the store answers settles one
    /// waiting debt itself (one more store call while debts wait, within the store timeout).
    #[cfg(not(any(feature = "drain", feature = "registry", feature = "resume")))]
    pub(crate) fn reconcile(self: &Arc<Self>, target: Target<'_>) {
        let _ = target;
    }

    /// One waiting debt into the store, in the admission's own time (see
    /// [`reconcile`](Self::reconcile)).
    #[cfg(not(any(feature = "drain", feature = "registry", feature = "resume")))]
    pub(crate) async fn reconcile_one(&self, target: Target<'_>) {
        if self.pending() == 0 || self.flushing.swap(true, Ordering::AcqRel) {
            return;
        }
        let next = self
            .debts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .front()
            .cloned();
        if let Some(mut debt) = next {
            debt.now = (target.clock)();
            debt.admitted_at = debt.now;
            let settled =
                tokio::time::timeout(target.timeout, target.store.settle_confirmed(debt)).await;
            if let Ok(Ok(_)) = settled {
                self.pop();
            }
        }
        self.flushing.store(false, Ordering::Release);
    }

    /// Start settling the debts into the store, unless that runs already (or nothing is
    /// owed, or there is no runtime to run it on: the next admission starts it).
    #[cfg(any(feature = "drain", feature = "registry", feature = "resume"))]
    pub(crate) fn reconcile(self: &Arc<Self>, target: Target<'_>) {
        if self.pending() == 0 || self.flushing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.flushing.store(false, Ordering::Release);
            return;
        };
        let store = target.store.clone();
        let local = self.clone();
        let clock = target.clock.clone();
        let timeout = target.timeout;
        runtime.spawn(async move {
            loop {
                let next = local
                    .debts
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .front()
                    .cloned();
                let Some(mut debt) = next else {
                    local.flushing.store(false, Ordering::Release);
                    // A debt queued between the look and the flag: go on.
                    if local.pending() > 0 && !local.flushing.swap(true, Ordering::AcqRel) {
                        continue;
                    }
                    return;
                };
                // Charged now, in the store's current period.
                debt.now = clock();
                debt.admitted_at = debt.now;
                match tokio::time::timeout(timeout, store.settle_confirmed(debt)).await {
                    Ok(Ok(_)) => {
                        local.pop();
                    }
                    _ => tokio::time::sleep(RETRY).await,
                }
            }
        });
    }
}

impl fmt::Debug for Local {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Local")
            .field("pending", &self.pending())
            .field("reconciled", &self.reconciled())
            .field("lost", &self.lost())
            .finish_non_exhaustive()
    }
}
