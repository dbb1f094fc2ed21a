//! Mid-stream enforcement: [`BudgetStop`], the [`Policy`] that ends a stream whose running
//! usage passes what its key had left, and the [`Allowance`] it checks against.
//!
//! - **The allowance.** With [`BudgetLayer::enforce_mid_stream`](super::BudgetLayer::enforce_mid_stream),
//!   an admitted request also asks the store where its key's limits stand (one more store
//!   call, bounded by the store timeout): for each limit that output spends (output tokens,
//!   total tokens, money), what was left after the reservation plus the reservation itself
//!   is what this stream may use ([`Allowance`], in the request's extensions). The
//!   [`BudgetObserver`](super::BudgetObserver) hands it on to the stream's report.
//! - **The check.** [`BudgetStop`] runs on every event, after the usage observer counted
//!   it: the running output is the larger of the provider's cumulative count (usage events)
//!   and the estimate from the content text so far (the same heuristic as the usage
//!   observer's), the input is the reported count or the request's estimate. Once a measure
//!   passes its allowance, the stream stops before that event reaches the client, with an
//!   error in the provider's shape ([`StopKind::BudgetExceeded`]); the outcome is
//!   [`Outcome::BudgetExceeded`](crate::Outcome::BudgetExceeded).
//! - **The charge.** Settlement is the report's, as on every exit path: what the upstream
//!   generated, including the event that passed the allowance (the usage observer counted
//!   it, the client never got it). The upstream is dropped at the stop, with or without
//!   `SseLayer::drain_on_disconnect` (unlike a policy stop, which drains for the provider's
//!   final usage): draining would let it go on generating, and costing, past the budget. The
//!   usage is then the running estimate, flagged
//!   [`UsageSource::Estimated`](crate::UsageSource::Estimated), unless the provider's own
//!   count had arrived.
//!
//! **Bound.** The allowance is a snapshot taken at admission: a rate's refill during the
//! stream is not added (the check is stricter than the limit), and streams of one key that
//! run at the same time each see what was left when they were admitted, so together they
//! can pass a limit by what was left then, once per concurrent stream (the overrun is debt,
//! seen by the next admissions). A stream stops within one event of its allowance.

use std::fmt;
use std::sync::Arc;

use super::{Amounts, Limit, LimitStatus, Measure, Pricing};
use crate::Usage;
use crate::policy::{Policy, PolicyContext, StopKind, StopReason, Verdict};
use crate::usage::{HeuristicCounter, TokenCounter};

/// What one admitted stream may use, per measure that output spends: what its key had left
/// after the reservation, plus the reservation. `None`: no limit of that measure.
#[derive(Clone)]
pub struct Allowance(Arc<AllowanceInner>);

struct AllowanceInner {
    output_tokens: Option<u64>,
    total_tokens: Option<u64>,
    cost_micros: Option<u64>,
    /// The request's input estimate, until the provider reports its count.
    input_estimate: u64,
    model: Option<String>,
    pricing: Option<Arc<dyn Pricing>>,
    bytes_per_token: u32,
}

impl Allowance {
    /// The allowance of a stream that reserved `reserved`, from its key's limits and their
    /// status after the reservation (the same order). `None` when no limit counts output.
    pub(super) fn new(
        limits: &[Limit],
        status: &[LimitStatus],
        reserved: Amounts,
        model: Option<String>,
        pricing: Option<Arc<dyn Pricing>>,
        bytes_per_token: u32,
    ) -> Option<Self> {
        let mut output_tokens = None;
        let mut total_tokens = None;
        let mut cost_micros = None;
        for (limit, status) in limits.iter().zip(status) {
            let slot = match limit.measure {
                Measure::OutputTokens => &mut output_tokens,
                Measure::TotalTokens => &mut total_tokens,
                Measure::CostMicros if pricing.is_some() => &mut cost_micros,
                _ => continue,
            };
            let may = status.remaining.saturating_add(limit.measure.of(&reserved));
            *slot = Some(slot.map_or(may, |other: u64| other.min(may)));
        }
        if output_tokens.is_none() && total_tokens.is_none() && cost_micros.is_none() {
            return None;
        }
        Some(Self(Arc::new(AllowanceInner {
            output_tokens,
            total_tokens,
            cost_micros,
            input_estimate: reserved.input_tokens,
            model,
            pricing,
            bytes_per_token,
        })))
    }

    /// Output tokens the stream may use (`None`: no such limit).
    pub fn output_tokens(&self) -> Option<u64> {
        self.0.output_tokens
    }

    /// Total tokens (input and output) the stream may use.
    pub fn total_tokens(&self) -> Option<u64> {
        self.0.total_tokens
    }

    /// Money the stream may cost, in micro-units.
    pub fn cost_micros(&self) -> Option<u64> {
        self.0.cost_micros
    }

    /// The measure a running usage passed, if any.
    fn passed(&self, input: u64, output: u64, model: Option<&str>) -> Option<Measure> {
        let a = &self.0;
        if a.output_tokens.is_some_and(|may| output > may) {
            return Some(Measure::OutputTokens);
        }
        if a.total_tokens
            .is_some_and(|may| input.saturating_add(output) > may)
        {
            return Some(Measure::TotalTokens);
        }
        if let (Some(may), Some(pricing)) = (a.cost_micros, &a.pricing) {
            let usage = Usage {
                input_tokens: Some(input),
                output_tokens: Some(output),
                ..Usage::default()
            };
            let model = model.or(a.model.as_deref());
            if pricing.cost_micros(model, &usage).is_some_and(|c| c > may) {
                return Some(Measure::CostMicros);
            }
        }
        None
    }
}

impl fmt::Debug for Allowance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Allowance")
            .field("output_tokens", &self.0.output_tokens)
            .field("total_tokens", &self.0.total_tokens)
            .field("cost_micros", &self.0.cost_micros)
            .field("input_estimate", &self.0.input_estimate)
            .finish_non_exhaustive()
    }
}

/// Ends a stream whose running usage passes its [`Allowance`], in the provider's error
/// shape (see [`budget`](crate::budget), "Mid-stream enforcement"). Streams without an
/// allowance (mid-stream enforcement off, no limit that output spends, or not admitted by
/// a budget) pass untouched.
///
/// - **The check**, on every event, after the usage observer counted it: the running output
///   is the larger of the provider's cumulative count (usage events) and the estimate from
///   the content text so far (the usage observer's heuristic, at the layer's bytes per
///   token); the input is the reported count, else the request's estimate. Once output,
///   total tokens or cost passes its allowance, the stream stops before that event reaches
///   the client ([`StopKind::BudgetExceeded`]).
/// - **The charge** is the report's, as on every exit path: what the upstream generated,
///   the event that passed the allowance included (counted, never sent). The upstream is
///   dropped at the stop, drain or not, so that it stops generating.
/// - **Bound.** The allowance is a snapshot taken at admission: a rate's refill during the
///   stream is not added (stricter than the limit), and streams of one key running at the
///   same time each see what was left when they were admitted, so together they can pass a
///   limit by that much once per concurrent stream (the overrun is debt the next admissions
///   see). A stream stops within one event of its allowance.
///
/// Give it to the [`SseLayer`](crate::SseLayer) inside a
/// [`BudgetLayer::enforce_mid_stream`](super::BudgetLayer::enforce_mid_stream), whose
/// observers include the [`UsageObserver`](crate::UsageObserver) and the
/// [`BudgetObserver`](super::BudgetObserver):
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_sse::budget::{BudgetLayer, BudgetObserver, BudgetStop, Limit, Measure};
/// use tower_sse::{SseLayer, UsageObserver};
///
/// let stack = ServiceBuilder::new()
///     .layer(
///         BudgetLayer::in_memory()
///             .limits([Limit::per_day(Measure::OutputTokens, 100_000)])
///             .enforce_mid_stream(true),
///     )
///     .layer(
///         SseLayer::new()
///             .observer((UsageObserver::new(), BudgetObserver::new()))
///             .policy(BudgetStop::new()),
///     );
/// # let _ = stack;
/// ```
///
/// With a policy of your own, compose them: `.policy((BudgetStop::new(), mine))`.
#[derive(Debug, Clone, Default)]
pub struct BudgetStop {
    /// The stream's allowance, once looked up (`Some(None)`: it has none).
    allowance: Option<Option<Allowance>>,
    counter: Option<HeuristicCounter>,
}

impl BudgetStop {
    /// The policy (each stream's state starts fresh).
    pub fn new() -> Self {
        Self::default()
    }
}

impl Policy for BudgetStop {
    fn on_event(&mut self, cx: &PolicyContext<'_>) -> Verdict {
        let allowance = self
            .allowance
            .get_or_insert_with(|| cx.report().extensions.get::<Allowance>().cloned());
        let Some(allowance) = allowance else {
            return Verdict::Pass;
        };
        let counter = self.counter.get_or_insert_with(|| {
            HeuristicCounter::new().bytes_per_token(allowance.0.bytes_per_token)
        });
        if cx.is_content() {
            match cx.text_raw() {
                Some(text) => counter.add_text(text),
                None => cx
                    .provider()
                    .content_text(cx.event(), |text| counter.add_text(text)),
            }
        }
        let report = cx.report();
        let usage = report.usage.unwrap_or_default();
        let output = usage
            .output_tokens
            .unwrap_or(0)
            .max(counter.estimate().unwrap_or(0));
        let input = usage.input_tokens.unwrap_or(allowance.0.input_estimate);
        match allowance.passed(input, output, report.model.as_deref()) {
            Some(measure) => Verdict::Stop(
                StopReason::new(match measure {
                    Measure::OutputTokens => "budget: output_tokens allowance passed",
                    Measure::TotalTokens => "budget: total_tokens allowance passed",
                    _ => "budget: cost_micros allowance passed",
                })
                .with_kind(StopKind::BudgetExceeded),
            ),
            None => Verdict::Pass,
        }
    }
}
