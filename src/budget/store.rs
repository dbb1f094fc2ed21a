//! [`BudgetStore`]: where the state of every key's limits lives, behind one trait.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::{Amounts, Limit};
use crate::BoxFuture;

/// One admission to decide: reserve `amounts` against every limit of `key`, all or nothing.
#[derive(Debug, Clone, Copy)]
pub struct Admit<'a> {
    /// The budget key (a tenant, a tenant and model, ...).
    pub key: &'a str,
    /// The key's limits (already validated).
    pub limits: &'a [Limit],
    /// What the request is estimated to take.
    pub amounts: Amounts,
    /// Now, in nanoseconds since the Unix epoch (UTC).
    pub now: u64,
}

/// A store's answer to an [`Admit`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Reserved against every limit.
    Admitted,
    /// Reserved against none: at least one limit refused.
    Rejected(Rejection),
}

/// Why a request was refused: the limit that refused it, and when it would fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The refusing limit (the one with the longest wait, or one the request can never fit).
    pub limit: Limit,
    /// When the request would fit; `None` when it never can (it asks for more than the
    /// limit's capacity: a burst, a whole day or month).
    pub retry_after: Option<Duration>,
}

/// One settlement: correct a reservation to what the stream actually used.
#[derive(Debug, Clone)]
pub struct Settlement {
    /// The reservation's id, unique per stream: a store applies a settlement once per id.
    pub id: String,
    /// The budget key.
    pub key: String,
    /// The key's limits, as at admission.
    pub limits: std::sync::Arc<[Limit]>,
    /// What was reserved.
    pub reserved: Amounts,
    /// What the stream used.
    pub actual: Amounts,
    /// When it was admitted (nanoseconds since the Unix epoch): a calendar reservation
    /// settled after its period ended is corrected in that period's terms.
    pub admitted_at: u64,
    /// Now (nanoseconds since the Unix epoch).
    pub now: u64,
}

/// Where one limit of a key stands, for `GET /v1/budgets/self` and the like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitStatus {
    /// The limit, described (`total_tokens 100000/60s`).
    pub limit: String,
    /// What it counts.
    pub measure: super::Measure,
    /// Its amount per window.
    pub amount: u64,
    /// Spent now (reservations included; above the capacity: debt).
    pub used: u64,
    /// What a request can take now (0 when in debt).
    pub remaining: u64,
    /// Seconds until everything spent is back (a rate) or the period ends (a calendar
    /// budget), rounded up.
    pub resets_in_secs: u64,
}

/// A store that could not answer (unreachable, too slow, a script error).
#[derive(Debug)]
pub struct StoreError(pub crate::BoxError);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "budget store: {}", self.0)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Where budgets are kept: [`MemoryBudgets`](super::MemoryBudgets) in the process, or a
/// store of yours shared by replicas.
///
/// A store must decide each [`Admit`] atomically across all of the key's limits (all
/// reserved, or none), apply each [`Settlement`] at most once per id, and never block:
/// [`settle`](Self::settle) is called from the end of a stream (a body's poll or drop), so a
/// store that does I/O hands it off (spawns it) and returns at once.
pub trait BudgetStore: Send + Sync + 'static {
    /// Reserve `admit.amounts` against every limit of the key, or refuse.
    fn admit<'a>(&'a self, admit: Admit<'a>) -> BoxFuture<'a, Result<Decision, StoreError>>;

    /// Correct a reservation to what was used, once per `settlement.id`. Never blocks.
    fn settle(&self, settlement: Settlement);

    /// Where each of the key's limits stands now.
    fn status<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        now: u64,
    ) -> BoxFuture<'a, Result<Vec<LimitStatus>, StoreError>>;

    /// Apply a settlement and say whether the store took it (`Ok(false)`: its id was
    /// settled before), for the reconciliation of debts run up while the store was away
    /// (see [`OnStoreError::FailOpen`](super::OnStoreError::FailOpen)). The default hands it
    /// to [`settle`](Self::settle) and answers `Ok(true)`: right for a store that cannot
    /// fail (in process); a store that can must override it.
    fn settle_confirmed<'a>(
        &'a self,
        settlement: Settlement,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.settle(settlement);
        Box::pin(std::future::ready(Ok(true)))
    }
}

impl<T: BudgetStore + ?Sized> BudgetStore for std::sync::Arc<T> {
    fn admit<'a>(&'a self, admit: Admit<'a>) -> BoxFuture<'a, Result<Decision, StoreError>> {
        (**self).admit(admit)
    }

    fn settle(&self, settlement: Settlement) {
        (**self).settle(settlement);
    }

    fn status<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        now: u64,
    ) -> BoxFuture<'a, Result<Vec<LimitStatus>, StoreError>> {
        (**self).status(key, limits, now)
    }

    fn settle_confirmed<'a>(
        &'a self,
        settlement: Settlement,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        (**self).settle_confirmed(settlement)
    }
}
