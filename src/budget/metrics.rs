//! The budget layer's counts: kept in the layer (for [`BudgetCounts`]) and, with feature
//! `metrics`, emitted through the `metrics` facade.
//!
//! | name | type | unit | labels | what |
//! |---|---|---|---|---|
//! | `tower_sse.budget.admitted_total` | counter | `{request}` | none | requests admitted (a reservation made) |
//! | `tower_sse.budget.rejections_total` | counter | `{request}` | `reason` = `over_limit`, `never_fits`, `store_unavailable`, `bad_request` | requests refused before the inner service |
//! | `tower_sse.budget.tokens_charged_total` | counter | `{token}` | `gen_ai.token.type` = `input`, `output` | tokens charged at settlement |
//! | `tower_sse.budget.cost_charged_total` | counter | micro-units | none | money charged at settlement |
//! | `tower_sse.budget.overrun_tokens_total` | counter | `{token}` | none | tokens charged beyond their reservation: debt the next admissions see |
//! | `tower_sse.budget.unpriced_total` | counter | `{stream}` | none | settlements of a model the pricing does not know (no cost charged) |

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Amounts;

/// Metric names of the budget layer.
pub mod names {
    /// Requests admitted.
    pub const ADMITTED: &str = "tower_sse.budget.admitted_total";
    /// Requests refused, by `reason`.
    pub const REJECTIONS: &str = "tower_sse.budget.rejections_total";
    /// Tokens charged, by `gen_ai.token.type`.
    pub const TOKENS_CHARGED: &str = "tower_sse.budget.tokens_charged_total";
    /// Money charged, in micro-units.
    pub const COST_CHARGED: &str = "tower_sse.budget.cost_charged_total";
    /// Tokens charged beyond their reservation.
    pub const OVERRUN_TOKENS: &str = "tower_sse.budget.overrun_tokens_total";
    /// Settlements without a price.
    pub const UNPRICED: &str = "tower_sse.budget.unpriced_total";
}

/// Why a request was refused (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    OverLimit,
    NeverFits,
    StoreUnavailable,
    BadRequest,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Self::OverLimit => "over_limit",
            Self::NeverFits => "never_fits",
            Self::StoreUnavailable => "store_unavailable",
            Self::BadRequest => "bad_request",
        }
    }
}

/// Counts of one [`BudgetLayer`](super::BudgetLayer) (and its services) since it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct BudgetCounts {
    /// Requests admitted.
    pub admitted: u64,
    /// Requests refused because a limit was reached (`429`).
    pub rejected_over_limit: u64,
    /// Requests refused because they can never fit (`400`).
    pub rejected_never_fits: u64,
    /// Requests refused because the store failed or was late (`503`, fail-closed).
    pub rejected_store_unavailable: u64,
    /// Requests admitted in process because the store failed or was late (fail-open); see
    /// [`OnStoreError::FailOpen`](super::OnStoreError::FailOpen).
    pub passed_store_unavailable: u64,
    /// Settlements made.
    pub settled: u64,
    /// Tokens charged beyond their reservations.
    pub overrun_tokens: u64,
    /// Debts of requests admitted in process (fail-open) waiting for the store now.
    pub local_debts_pending: u64,
    /// Debts settled into the store once it answered again.
    pub local_debts_reconciled: u64,
    /// Debts dropped because too many waited
    /// ([`BudgetLayer::max_local_debts`](super::BudgetLayer::max_local_debts)).
    pub local_debts_lost: u64,
}

#[derive(Debug, Default)]
struct Counters {
    admitted: AtomicU64,
    over_limit: AtomicU64,
    never_fits: AtomicU64,
    store_unavailable: AtomicU64,
    passed: AtomicU64,
    settled: AtomicU64,
    overrun: AtomicU64,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct BudgetMetrics(Arc<Counters>);

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl BudgetMetrics {
    pub(crate) fn counts(&self) -> BudgetCounts {
        let c = &self.0;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BudgetCounts {
            admitted: get(&c.admitted),
            rejected_over_limit: get(&c.over_limit),
            rejected_never_fits: get(&c.never_fits),
            rejected_store_unavailable: get(&c.store_unavailable),
            passed_store_unavailable: get(&c.passed),
            settled: get(&c.settled),
            overrun_tokens: get(&c.overrun),
            local_debts_pending: 0,
            local_debts_reconciled: 0,
            local_debts_lost: 0,
        }
    }

    pub(crate) fn admitted(&self) {
        add(&self.0.admitted, 1);
        #[cfg(feature = "metrics")]
        ::metrics::counter!(names::ADMITTED).increment(1);
    }

    pub(crate) fn rejected(&self, reason: Reason) {
        match reason {
            Reason::OverLimit => add(&self.0.over_limit, 1),
            Reason::NeverFits => add(&self.0.never_fits, 1),
            Reason::StoreUnavailable => add(&self.0.store_unavailable, 1),
            Reason::BadRequest => {}
        }
        #[cfg(feature = "metrics")]
        ::metrics::counter!(names::REJECTIONS, "reason" => reason.as_str()).increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = reason.as_str();
    }

    pub(crate) fn passed_unreserved(&self) {
        add(&self.0.passed, 1);
    }

    pub(crate) fn settled(&self, actual: &Amounts, reserved: &Amounts) {
        add(&self.0.settled, 1);
        let tokens = |a: &Amounts| a.input_tokens.saturating_add(a.output_tokens);
        let overrun = tokens(actual).saturating_sub(tokens(reserved));
        add(&self.0.overrun, overrun);
        #[cfg(feature = "metrics")]
        {
            ::metrics::counter!(names::TOKENS_CHARGED, "gen_ai.token.type" => "input")
                .increment(actual.input_tokens);
            ::metrics::counter!(names::TOKENS_CHARGED, "gen_ai.token.type" => "output")
                .increment(actual.output_tokens);
            ::metrics::counter!(names::COST_CHARGED).increment(actual.cost_micros);
            ::metrics::counter!(names::OVERRUN_TOKENS).increment(overrun);
        }
    }

    pub(crate) fn unpriced(&self) {
        #[cfg(feature = "metrics")]
        ::metrics::counter!(names::UNPRICED).increment(1);
    }
}
