//! Spend limits per key — requests, tokens and money, as continuously refilling rates and
//! as UTC day and month budgets — admitted before the inner service is called and settled
//! from each stream's report: [`BudgetLayer`].
//!
//! # How it works
//!
//! - **Admission is a service.** [`BudgetLayer`] reads the request body (bounded: 8 MiB,
//!   30 s by default), estimates what the request will take ([`RequestEstimate`]: input
//!   from the body's bytes, output from its `max_tokens` / `max_completion_tokens` /
//!   `max_output_tokens` / `generationConfig.maxOutputTokens`, or a default), finds its key
//!   ([`BudgetKey`]: the tenant by default) and asks the [`BudgetStore`] to reserve the
//!   estimate against every limit of the key, all or nothing. Refused, it answers without
//!   calling the inner service (which never sees the request):
//!   - `429 Too Many Requests` with `Retry-After` (whole seconds, rounded up) when a limit is
//!     reached now: the wait is computed from that limit's state (the longest of the
//!     refusing limits);
//!   - `400 Bad Request` when the request can **never** fit (it asks for more than a
//!     limit's burst, day or month), with no `Retry-After`: retrying cannot help;
//!   - `503` with `Retry-After: 1` when the store fails or does not answer within
//!     250 ms ([`OnStoreError::FailClosed`], the default); or, with
//!     [`OnStoreError::FailOpen`], the request is admitted against the same limits kept in
//!     process, and what it used is settled into the store when it answers again (see
//!     "Fail open" below).
//!
//!   Each error body is in the error shape of the provider the path names (OpenAI,
//!   Anthropic, Gemini, Ollama), so SDKs raise their own rate-limit error.
//! - **Settlement is a sink.** Admitted, the request carries a [`Reservation`] in its
//!   extensions. The [`BudgetObserver`] of the [`SseLayer`](crate::SseLayer) inside takes it
//!   in `on_request` and settles it in `on_end` from the stream's one final report — on every
//!   exit path, exactly once (the reservation's own flag, and the store's settled ids): the
//!   difference to the reservation is given back or charged, and an overrun stays as debt
//!   that the next admissions see. The report is the ledger: the observer leaves the
//!   [`Charge`] in [`StreamReport::extensions`](crate::StreamReport::extensions).
//! - **An answer that is not a stream settles itself.** A `"stream": false` request makes
//!   no report: the layer watches its answer as it passes (clones of its frames, up to
//!   [`BudgetLayer::max_answer_bytes`], 1 MiB) and settles it at its end from the usage in
//!   its JSON ([`Provider::answer_usage`](crate::provider::Provider::answer_usage)).
//!
//! What is charged, on each exit path (the whole table is in [`Reservation`]'s docs):
//!
//! | exit path | charged |
//! |---|---|
//! | a stream, however it ends (completed, upstream error, truncation, client disconnect, a deadline, shutdown, a budget stop) | its report's usage: the provider's counts, or the usage observer's flagged estimate of the output delivered when the stream was cut before its usage; the request's input estimate when the upstream took the request but never reported its input |
//! | an answer that is not a stream, reporting usage | that usage, by the same rules |
//! | an error status (`429`, `400`, `5xx`…) reporting no usage | no tokens: the provider generated nothing |
//! | a `2xx` answer reporting no usage, larger than the bound, or whose body fails or is dropped before its end | what it reserved: nothing measured what it used |
//!
//! Tokens that flowed are never charged as zero; a failover's failed attempts add the
//! tokens they reported.
//!
//! # Mid-stream enforcement (opt-in)
//!
//! With [`BudgetLayer::enforce_mid_stream`] and the [`BudgetStop`] policy in the
//! [`SseLayer`](crate::SseLayer), a stream whose running usage (the provider's cumulative
//! counts, or the estimate from the text so far) passes what its key had left at admission
//! plus its own reservation ends before that event reaches the client, with an error in the
//! provider's shape (`budget_exceeded`), outcome
//! [`Outcome::BudgetExceeded`](crate::Outcome::BudgetExceeded); what the upstream
//! generated is charged, from the report as always. [`BudgetStop`] says how it counts and
//! its bound (streams of one key running at the same time share one snapshot of what was
//! left).
//!
//! # Fail open
//!
//! With [`OnStoreError::FailOpen`], an admission the store fails (or does not answer in
//! time) is made against the same limits kept in this process instead: the limits still
//! hold per replica while the store is away (a key can spend up to its limits once on each
//! replica, on top of what the store counted before). What such a stream used is kept as a
//! local *debt* (its reservation id starts with `local:`) and settled into the store once it
//! answers again — by a task that retries every second, started when a debt is queued and by
//! each admission the store answers — through [`BudgetStore::settle_confirmed`], once per id,
//! so that a retry after a lost answer never charges twice. A debt is charged in the store's
//! current period. The queue is bounded ([`BudgetLayer::max_local_debts`], 100 000); what
//! waits, was settled, or was dropped is in [`BudgetCounts`].
//!
//! # Limits
//!
//! A [`Limit`] is an amount of a [`Measure`] (requests, input, output or total tokens,
//! money in micro-units) per [`Window`]: a rate that refills continuously (GCRA, in
//! integers: no window edges, no early lockouts, a configurable burst), or a UTC day or
//! month. A key's limits are checked and reserved together.
//!
//! How far a key can go over a limit: by at most what its admitted streams use beyond
//! their reservations (a stream without a `max_tokens` may generate more than the default
//! reserved); that overrun is debt, seen by every later admission of the key.
//!
//! # Layer order
//!
//! Outside the [`SseLayer`](crate::SseLayer) whose observers include the
//! [`BudgetObserver`] (after the [`UsageObserver`](crate::UsageObserver)), and inside
//! layers that may refuse a request without calling further in (a
//! [`StreamLimitLayer`](crate::StreamLimitLayer)): a stream that no report settles is
//! charged what it reserved, since nothing measured what it used.
//!
//! ```
//! use std::time::Duration;
//!
//! use tower::ServiceBuilder;
//! use tower_sse::budget::{BudgetLayer, BudgetObserver, Limit, Measure};
//! use tower_sse::{SseLayer, UsageObserver};
//!
//! let stack = ServiceBuilder::new()
//!     .layer(BudgetLayer::in_memory().limits([
//!         Limit::rate(Measure::TotalTokens, 100_000, Duration::from_secs(60)),
//!         Limit::per_day(Measure::Requests, 10_000),
//!     ]))
//!     .layer(SseLayer::new().observer((UsageObserver::new(), BudgetObserver::new())));
//! # let _ = stack;
//! ```

mod body;
mod config;
mod estimate;
mod key;
mod layer;
mod limits;
mod memory;
pub mod metrics;
mod reconcile;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod service;
mod settle;
mod stop;
mod store;

use serde::Serialize;

pub use self::body::{BudgetBody, BudgetRequestBody};
pub use self::config::{BudgetConfig, ConfigError};
pub use self::estimate::RequestEstimate;
pub use self::key::BudgetKey;
pub use self::layer::{BudgetLayer, OnStoreError};
pub use self::limits::{InvalidLimit, Limit, MAX_AMOUNT, Measure, Window};
pub use self::memory::MemoryBudgets;
pub use self::metrics::BudgetCounts;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::RedisBudgets;
pub use self::service::Budget;
pub use self::settle::{BudgetObserver, Charge, Reservation};
pub use self::stop::{Allowance, BudgetStop};
pub use self::store::{
    Admit, BudgetStore, Decision, LimitStatus, Rejection, Settlement, StoreError,
};

use crate::Usage;

/// What a request reserves or a stream is charged, in every [`Measure`] (total tokens are
/// input plus output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct Amounts {
    /// Requests (1 per request).
    pub requests: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Money, in integer micro-units of the currency.
    pub cost_micros: u64,
}

/// Prices a usage, for money limits ([`Measure::CostMicros`]).
///
/// ```
/// use tower_sse::Usage;
/// use tower_sse::budget::Pricing;
///
/// /// 2.50 per million input tokens, 10.00 per million output tokens, one model.
/// struct Prices;
///
/// impl Pricing for Prices {
///     fn cost_micros(&self, model: Option<&str>, usage: &Usage) -> Option<u64> {
///         if model? != "gpt-4o" {
///             return None;
///         }
///         let input = usage.input_tokens.unwrap_or(0);
///         let output = usage.output_tokens.unwrap_or(0);
///         Some((input * 2_500_000 + output * 10_000_000).div_ceil(1_000_000))
///     }
/// }
///
/// let mut usage = Usage::default();
/// usage.input_tokens = Some(1000);
/// usage.output_tokens = Some(100);
/// assert_eq!(Prices.cost_micros(Some("gpt-4o"), &usage), Some(3500));
/// assert_eq!(Prices.cost_micros(Some("unknown"), &usage), None);
/// ```
pub trait Pricing: Send + Sync + 'static {
    /// The cost of `usage` on `model`, in integer micro-units of the currency; `None` for a
    /// model without a price (it is then charged nothing, and counted).
    fn cost_micros(&self, model: Option<&str>, usage: &Usage) -> Option<u64>;
}

impl<F> Pricing for F
where
    F: Fn(Option<&str>, &Usage) -> Option<u64> + Send + Sync + 'static,
{
    fn cost_micros(&self, model: Option<&str>, usage: &Usage) -> Option<u64> {
        self(model, usage)
    }
}

/// The crate's price table prices budgets as it prices reports: a model it does not list has
/// no price (charged nothing, and counted).
impl Pricing for crate::cost::PriceTable {
    fn cost_micros(&self, model: Option<&str>, usage: &Usage) -> Option<u64> {
        self.cost(model?, usage).map(|cost| cost.total_micros)
    }
}
