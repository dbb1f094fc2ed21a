//! [`BudgetLayer`]: its settings, shared by its services and their reservations.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tower_layer::Layer;

use super::key::BudgetKey;
use super::limits::InvalidLimit;
use super::metrics::BudgetMetrics;
use super::store::{BudgetStore, LimitStatus, StoreError};
use super::{Budget, Limit, MemoryBudgets, Pricing};

/// The default of [`BudgetLayer::max_answer_bytes`]: 1 MiB.
const DEFAULT_MAX_ANSWER: usize = 1 << 20;

/// Now, in nanoseconds since the Unix epoch.
pub(crate) type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// What to do when the store does not answer in time (or fails).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnStoreError {
    /// Refuse the request: `503 Service Unavailable`, `Retry-After: 1`, in the provider's
    /// error shape. No spend escapes the budgets; an outage of the store is an outage.
    #[default]
    FailClosed,
    /// Admit the request against the same limits kept in this process, and settle what it
    /// used into the store once the store answers again (idempotent by the stream's id):
    /// the service stays up, the limits hold per replica meanwhile, and no spend is lost.
    /// See [`BudgetLayer::max_local_debts`] for the bound, and the module docs of
    /// [`budget`](crate::budget) ("Fail open").
    FailOpen,
}

/// Per-key spend limits, admitted before the inner service is called and settled from each
/// stream's report; see the [module docs](crate::budget).
///
/// ```
/// use std::time::Duration;
/// use tower_sse::budget::{BudgetLayer, BudgetKey, Limit, Measure, MemoryBudgets};
///
/// let layer = BudgetLayer::new(MemoryBudgets::new())
///     .key(BudgetKey::tenant())
///     .limits([
///         Limit::rate(Measure::Requests, 60, Duration::from_secs(60)),
///         Limit::rate(Measure::TotalTokens, 100_000, Duration::from_secs(60)),
///     ])
///     .limits_for("0123456789abcdef0123456789abcdef", [Limit::per_day(Measure::TotalTokens, 1_000_000)])
///     .default_output_tokens(512);
/// # let _ = layer;
/// ```
#[must_use]
#[derive(Clone)]
pub struct BudgetLayer {
    shared: Arc<Shared>,
}

/// The settings, and what the reservations need to settle.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn BudgetStore>,
    pub(crate) pricing: Option<Arc<dyn Pricing>>,
    pub(crate) clock: Clock,
    pub(crate) key: BudgetKey,
    pub(crate) default_limits: Arc<[Limit]>,
    pub(crate) per_key: HashMap<String, Arc<[Limit]>>,
    pub(crate) bytes_per_token: u32,
    pub(crate) default_output_tokens: u64,
    pub(crate) max_body: usize,
    pub(crate) max_answer: usize,
    pub(crate) upload_timeout: Duration,
    pub(crate) store_timeout: Duration,
    pub(crate) on_store_error: OnStoreError,
    pub(crate) metrics: BudgetMetrics,
    pub(crate) enforce_mid_stream: bool,
    /// Told of each answer's charge ([`BudgetLayer::on_answer`]).
    pub(crate) on_answer: Option<AnswerHook>,
    /// Admissions made in process while the store was away (fail-open), and their debts.
    pub(crate) local: Arc<super::reconcile::Local>,
}

/// The callback of [`BudgetLayer::on_answer`].
pub(crate) type AnswerHook = Arc<dyn Fn(&super::Charge) + Send + Sync>;

fn system_clock() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl BudgetLayer {
    /// Budgets kept in `store`, with no limits yet (every request passes until limits are
    /// set). Defaults: key [`BudgetKey::tenant`], 4 bytes per input token, 1024 output
    /// tokens for requests without a cap, request bodies read up to 8 MiB within 30 s,
    /// answers that are not streams read up to 1 MiB, the store asked within 250 ms and
    /// [`OnStoreError::FailClosed`].
    pub fn new(store: impl BudgetStore) -> Self {
        Self {
            shared: Arc::new(Shared {
                store: Arc::new(store),
                pricing: None,
                clock: Arc::new(system_clock),
                key: BudgetKey::tenant(),
                default_limits: Arc::from([]),
                per_key: HashMap::new(),
                bytes_per_token: 4,
                default_output_tokens: 1024,
                max_body: 8 << 20,
                max_answer: DEFAULT_MAX_ANSWER,
                upload_timeout: Duration::from_secs(30),
                store_timeout: Duration::from_millis(250),
                on_store_error: OnStoreError::FailClosed,
                metrics: BudgetMetrics::default(),
                enforce_mid_stream: false,
                on_answer: None,
                local: Arc::new(super::reconcile::Local::new()),
            }),
        }
    }

    /// Budgets in process ([`MemoryBudgets`]).
    pub fn in_memory() -> Self {
        Self::new(MemoryBudgets::new())
    }

    fn with(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        match Arc::get_mut(&mut self.shared) {
            Some(shared) => f(shared),
            None => {
                let mut shared = Shared::clone_settings(&self.shared);
                f(&mut shared);
                self.shared = Arc::new(shared);
            }
        }
        self
    }

    /// Which budget a request spends (default: its tenant).
    pub fn key(self, key: BudgetKey) -> Self {
        self.with(|s| s.key = key)
    }

    /// The limits of every key without limits of its own.
    ///
    /// # Panics
    ///
    /// On a limit that [`Limit::validate`] refuses (use [`try_limits`](Self::try_limits) for
    /// limits read from a file).
    pub fn limits(self, limits: impl IntoIterator<Item = Limit>) -> Self {
        self.try_limits(limits).expect("valid limits")
    }

    /// [`limits`](Self::limits), with the error of the first invalid limit.
    pub fn try_limits(self, limits: impl IntoIterator<Item = Limit>) -> Result<Self, InvalidLimit> {
        let limits = validated(limits)?;
        Ok(self.with(|s| s.default_limits = limits))
    }

    /// The limits of one key, instead of the default ones.
    ///
    /// # Panics
    ///
    /// On an invalid limit (see [`try_limits_for`](Self::try_limits_for)).
    pub fn limits_for(
        self,
        key: impl Into<String>,
        limits: impl IntoIterator<Item = Limit>,
    ) -> Self {
        self.try_limits_for(key, limits).expect("valid limits")
    }

    /// [`limits_for`](Self::limits_for), with the error of the first invalid limit.
    pub fn try_limits_for(
        self,
        key: impl Into<String>,
        limits: impl IntoIterator<Item = Limit>,
    ) -> Result<Self, InvalidLimit> {
        let limits = validated(limits)?;
        let key = key.into();
        Ok(self.with(|s| {
            s.per_key.insert(key, limits);
        }))
    }

    /// Prices usage for money limits ([`Measure::CostMicros`](super::Measure::CostMicros)).
    /// Without one, money limits count nothing.
    pub fn pricing(self, pricing: impl Pricing) -> Self {
        let pricing: Arc<dyn Pricing> = Arc::new(pricing);
        self.with(|s| s.pricing = Some(pricing))
    }

    /// Bytes per input token of the request-body estimate (default 4).
    pub fn bytes_per_token(self, bytes: u32) -> Self {
        self.with(|s| s.bytes_per_token = bytes.max(1))
    }

    /// Output tokens reserved for a request that sets no cap of its own (default 1024).
    pub fn default_output_tokens(self, tokens: u64) -> Self {
        self.with(|s| s.default_output_tokens = tokens)
    }

    /// The largest request body read for the estimate (default 8 MiB): a larger one is
    /// refused with `413`.
    pub fn max_body(self, bytes: usize) -> Self {
        self.with(|s| s.max_body = bytes)
    }

    /// The largest answer that is not a stream whose usage is read to settle it (default
    /// 1 MiB): its frames are kept (clones, no copy) as they pass to the client, and read
    /// at its end. A larger one is settled at what it reserved if it succeeded (nothing
    /// measured what it used), at no tokens if it failed; see
    /// [`Reservation`](super::Reservation#exit-paths). `0` reads none.
    ///
    /// ```
    /// use tower_sse::budget::BudgetLayer;
    ///
    /// let layer = BudgetLayer::in_memory().max_answer_bytes(256 << 10);
    /// # let _ = layer;
    /// ```
    pub fn max_answer_bytes(self, bytes: usize) -> Self {
        self.with(|s| s.max_answer = bytes)
    }

    /// How long the request body may take to arrive (default 30 s): then `408`.
    pub fn upload_timeout(self, timeout: Duration) -> Self {
        self.with(|s| s.upload_timeout = timeout)
    }

    /// How long an admission may wait for the store (default 250 ms); then the
    /// [`OnStoreError`] policy applies, as on a failure.
    pub fn store_timeout(self, timeout: Duration) -> Self {
        self.with(|s| s.store_timeout = timeout)
    }

    /// What to do when the store fails or is late (default [`OnStoreError::FailClosed`]).
    pub fn on_store_error(self, policy: OnStoreError) -> Self {
        self.with(|s| s.on_store_error = policy)
    }

    /// How many debts of requests admitted in process (fail-open, while the store was
    /// away) wait at most for the store (default 100 000): a settlement past them is
    /// counted ([`BudgetCounts::local_debts_lost`](super::BudgetCounts::local_debts_lost)),
    /// not kept.
    pub fn max_local_debts(self, debts: u64) -> Self {
        self.shared
            .local
            .max_debts
            .store(debts, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// Where "now" comes from, in nanoseconds since the Unix epoch (default: the system
    /// clock). For tests and simulations.
    pub fn clock(self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        let clock: Clock = Arc::new(clock);
        self.with(|s| s.clock = clock)
    }

    /// Stop streams that run past their budget (default off): each admitted request also
    /// gets its [`Allowance`](super::Allowance) (what its key had left, plus what it
    /// reserved; one more store call, within the store timeout), which a
    /// [`BudgetStop`](super::BudgetStop) policy in the [`SseLayer`](crate::SseLayer) inside
    /// enforces. See [`BudgetStop`](super::BudgetStop) for how it counts, and the bound.
    pub fn enforce_mid_stream(self, on: bool) -> Self {
        self.with(|s| s.enforce_mid_stream = on)
    }

    /// Tell `f` of the [`Charge`](super::Charge) of each answer that is not a stream (a
    /// `"stream": false` completion, an error answer to such a request), once, when it is
    /// settled: at its end, or when it failed or its client left. A stream's charge is in its
    /// report instead ([`StreamReport::extensions`](crate::StreamReport::extensions), by the
    /// [`BudgetObserver`](super::BudgetObserver)), and an answer makes no report, so without
    /// this an answer's charge is seen only in the store and the metrics: a gateway logs it
    /// here. `f` runs on the runtime thread that settles the answer: keep it short.
    ///
    /// ```
    /// use tower_sse::budget::BudgetLayer;
    ///
    /// let layer = BudgetLayer::in_memory().on_answer(|charge| {
    ///     println!("{} charged {} output tokens", charge.key, charge.charged.output_tokens);
    /// });
    /// # let _ = layer;
    /// ```
    pub fn on_answer(self, f: impl Fn(&super::Charge) + Send + Sync + 'static) -> Self {
        let hook: AnswerHook = Arc::new(f);
        self.with(|s| s.on_answer = Some(hook))
    }

    /// Whether streams are stopped mid-stream ([`enforce_mid_stream`](Self::enforce_mid_stream)):
    /// a stack built from settings asks this to add the [`BudgetStop`](super::BudgetStop)
    /// policy.
    pub fn enforces_mid_stream(&self) -> bool {
        self.shared.enforce_mid_stream
    }

    /// The counts of this layer's services so far.
    pub fn counts(&self) -> super::BudgetCounts {
        self.shared.counts()
    }

    /// The limits a key has.
    pub fn limits_of(&self, key: &str) -> Arc<[Limit]> {
        self.shared.limits_of(key)
    }

    /// Where each limit of a request's key stands now (what `GET /v1/budgets/self`
    /// answers): the request's key, and its limits' status.
    pub async fn status_of(
        &self,
        parts: &http::request::Parts,
    ) -> Result<(String, Vec<LimitStatus>), StoreError> {
        let key = self.shared.key.key(parts, None);
        let limits = self.shared.limits_of(&key);
        let now = (self.shared.clock)();
        let status = self.shared.store.status(&key, &limits, now).await?;
        Ok((key, status))
    }
}

impl BudgetLayer {
    /// [`status_of`](Self::status_of) as the JSON a `GET /v1/budgets/self` answers:
    /// `{"key": …, "limits": [{"limit", "measure", "amount", "used", "remaining",
    /// "resets_in_secs"}, …]}`. Only the asking request's own key: a caller never sees
    /// another's budget.
    pub async fn status_json(&self, parts: &http::request::Parts) -> Result<String, StoreError> {
        let (key, limits) = self.status_of(parts).await?;
        let json = serde_json::json!({"key": key, "limits": limits});
        Ok(json.to_string())
    }
}

fn validated(limits: impl IntoIterator<Item = Limit>) -> Result<Arc<[Limit]>, InvalidLimit> {
    let limits: Vec<Limit> = limits.into_iter().collect();
    for limit in &limits {
        limit.validate()?;
    }
    Ok(limits.into())
}

impl Shared {
    pub(crate) fn counts(&self) -> super::BudgetCounts {
        let mut counts = self.metrics.counts();
        counts.local_debts_pending = self.local.pending();
        counts.local_debts_reconciled = self.local.reconciled();
        counts.local_debts_lost = self.local.lost();
        counts
    }

    /// Apply a settlement: in process if it was admitted there while the store was away
    /// (its debt then queued for the store), else in the store.
    pub(crate) fn settle(&self, settlement: super::Settlement) {
        self.local.settle_into(settlement, self.reconcile_target());
    }

    /// Settle the queued debts into the store (see `reconcile.rs`).
    pub(crate) fn reconcile(&self) {
        self.local.reconcile(self.reconcile_target());
    }

    /// One queued debt into the store, in the admission's own time (builds without a
    /// feature that lets tokio spawn).
    #[cfg(not(any(feature = "drain", feature = "registry", feature = "resume")))]
    pub(crate) async fn reconcile_one(&self) {
        self.local.reconcile_one(self.reconcile_target()).await;
    }

    fn reconcile_target(&self) -> super::reconcile::Target<'_> {
        super::reconcile::Target {
            store: &self.store,
            clock: &self.clock,
            timeout: self.store_timeout,
        }
    }

    pub(crate) fn limits_of(&self, key: &str) -> Arc<[Limit]> {
        self.per_key
            .get(key)
            .unwrap_or(&self.default_limits)
            .clone()
    }

    fn clone_settings(other: &Self) -> Self {
        Self {
            store: other.store.clone(),
            pricing: other.pricing.clone(),
            clock: other.clock.clone(),
            key: other.key.clone(),
            default_limits: other.default_limits.clone(),
            per_key: other.per_key.clone(),
            bytes_per_token: other.bytes_per_token,
            default_output_tokens: other.default_output_tokens,
            max_body: other.max_body,
            max_answer: other.max_answer,
            upload_timeout: other.upload_timeout,
            store_timeout: other.store_timeout,
            on_store_error: other.on_store_error,
            metrics: other.metrics.clone(),
            enforce_mid_stream: other.enforce_mid_stream,
            on_answer: other.on_answer.clone(),
            local: other.local.clone(),
        }
    }
}

impl<S> Layer<S> for BudgetLayer {
    type Service = Budget<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Budget {
            inner,
            shared: self.shared.clone(),
        }
    }
}

impl fmt::Debug for BudgetLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shared;
        f.debug_struct("BudgetLayer")
            .field("key", &s.key)
            .field("default_limits", &s.default_limits)
            .field("keys_with_limits", &s.per_key.len())
            .field("priced", &s.pricing.is_some())
            .field("default_output_tokens", &s.default_output_tokens)
            .field("max_answer_bytes", &s.max_answer)
            .field("on_store_error", &s.on_store_error)
            .field("store_timeout", &s.store_timeout)
            .field("enforce_mid_stream", &s.enforce_mid_stream)
            .field("on_answer", &s.on_answer.is_some())
            .finish_non_exhaustive()
    }
}
