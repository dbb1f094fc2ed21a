//! Settlement: a [`Reservation`] travels in the request's extensions, the
//! [`BudgetObserver`] takes it in `on_request` and settles it from the final
//! [`StreamReport`], exactly once.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::estimate::RequestEstimate;
use super::layer::Shared;
use super::store::Settlement;
use super::{Amounts, Limit};
use crate::failover::FailoverReport;
use crate::framing::Framing;
use crate::observe::Observer;
use crate::{StreamReport, Usage, UsageSource};

/// An admitted request's reservation: what it may spend, until settled.
///
/// [`BudgetLayer`](super::BudgetLayer) puts it into the request's extensions; the
/// [`BudgetObserver`] of an [`SseLayer`](crate::SseLayer) inside settles it from the
/// stream's report, and the layer itself settles it from an answer that is not a stream.
/// Clones share one reservation, settled once whoever settles it (its flag, and the
/// store's settled ids): the first settlement stands, any later one is a no-op.
///
/// # Exit paths
///
/// | the request ended as | charged |
/// |---|---|
/// | a stream (the response head is one for [`framing::detect`](crate::framing::detect) with NDJSON), on any end: completed, upstream error, truncation, client disconnect, a deadline, shutdown | from the stream's report, by the [`BudgetObserver`]: the reported counts, or the flagged estimate (see its rules) |
/// | an answer that is not a stream (`"stream": false`), read to its end, that reports usage | that usage, by the same rules as a stream's: the reported counts; the request's input estimate (flagged) when a success reports no input; the tokens of a [`Failover`](crate::failover::Failover)'s failed attempts added. Read by [`Provider::answer_usage`](crate::provider::Provider::answer_usage) (OpenAI Chat and Completions, Responses, Anthropic, Gemini, Ollama) |
/// | an answer with an error status (anything but `2xx`: a `429`, a `400`, a `500`) that reports no usage, however it ends | no tokens (the provider generated nothing and took no prompt), the request itself, and a failed attempt's tokens when it reported them |
/// | a `2xx` answer that reports no usage, one larger than [`BudgetLayer::max_answer_bytes`](super::BudgetLayer::max_answer_bytes) (1 MiB by default) or compressed, or one whose body fails or is dropped before its end | what it reserved (flagged): nothing measured what it used, and it is never zero |
/// | a streaming request (an SSE `Accept`, or `"stream": true` marked by the [`IncludeUsageLayer`](crate::IncludeUsageLayer)) answered with something else | from its report, as a stream: the answer rules above for its status, except that the report has no usage from the body (a success is charged its reserved output, flagged) |
/// | no report and no answer (the inner service failed; a stack without the observer) | what it reserved, when its last clone goes away |
///
/// The layer watches an answer's body as it passes to the client: it keeps clones of its
/// frames (no copy) up to the bound, and reads them once, at the end (joined into one
/// buffer when there were several).
#[derive(Clone)]
pub struct Reservation(Arc<Inner>);

struct Inner {
    id: String,
    key: String,
    limits: Arc<[Limit]>,
    reserved: Amounts,
    estimate: RequestEstimate,
    admitted_at: u64,
    shared: Arc<Shared>,
    settled: AtomicBool,
}

/// What a stream was charged, left in [`StreamReport::extensions`] by the
/// [`BudgetObserver`]: the ledger line of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Charge {
    /// The reservation's id (unique per stream).
    pub id: String,
    /// The budget key charged.
    pub key: String,
    /// What was reserved at admission.
    pub reserved: Amounts,
    /// What was charged: the report's usage (reported, or the flagged estimate).
    pub charged: Amounts,
    /// Whether any count charged is an estimate (the input estimated from the request, or
    /// output estimated from the content delivered).
    pub estimated: bool,
}

impl Reservation {
    pub(super) fn new(
        id: String,
        key: String,
        limits: Arc<[Limit]>,
        reserved: Amounts,
        estimate: RequestEstimate,
        admitted_at: u64,
        shared: Arc<Shared>,
    ) -> Self {
        Self(Arc::new(Inner {
            id,
            key,
            limits,
            reserved,
            estimate,
            admitted_at,
            shared,
            settled: AtomicBool::new(false),
        }))
    }

    /// The reservation's id: unique per stream, the idempotency key of its settlement.
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// The budget key it spends.
    pub fn key(&self) -> &str {
        &self.0.key
    }

    /// What it reserved.
    pub fn reserved(&self) -> Amounts {
        self.0.reserved
    }

    /// What the request was estimated to take.
    pub fn estimate(&self) -> &RequestEstimate {
        &self.0.estimate
    }

    /// Whether it was settled.
    pub fn is_settled(&self) -> bool {
        self.0.settled.load(Ordering::Acquire)
    }

    /// Settle from a stream's final report (see [`BudgetObserver`] for the rules); `None`
    /// when it was settled already.
    pub fn settle_report(&self, report: &StreamReport) -> Option<Charge> {
        if self.is_settled() {
            return None;
        }
        let (charged, estimated) = self.0.charge_of(report);
        self.settle(charged).then(|| Charge {
            id: self.0.id.clone(),
            key: self.0.key.clone(),
            reserved: self.0.reserved,
            charged,
            estimated,
        })
    }

    /// Settle from a whole answer that was not a stream (see [exit paths](#exit-paths)):
    /// its `status`, the `usage` read from its body (`None`: none reported, or the body was
    /// not read to its end), and the input and output tokens the failed attempts of a
    /// [`Failover`](crate::failover::Failover) before it reported. `None` when it was
    /// settled already; else the layer's [`on_answer`](super::BudgetLayer::on_answer) is
    /// told of the charge.
    pub(super) fn settle_answer(
        &self,
        status: http::StatusCode,
        usage: Option<Usage>,
        failed: (u64, u64),
    ) -> Option<Charge> {
        if self.is_settled() {
            return None;
        }
        let success = status.is_success();
        let (charged, estimated) = match usage {
            // Nothing measured what a success used: what it reserved stands.
            None if success => (self.0.reserved, true),
            // Measured, or an error status that reported nothing: the provider generated
            // nothing, and took no prompt.
            usage => self.0.charge_from(
                usage,
                success,
                success,
                self.0.estimate.model.as_deref(),
                failed,
            ),
        };
        let charge = self.settle(charged).then(|| Charge {
            id: self.0.id.clone(),
            key: self.0.key.clone(),
            reserved: self.0.reserved,
            charged,
            estimated,
        })?;
        if let Some(hook) = &self.0.shared.on_answer {
            hook(&charge);
        }
        Some(charge)
    }

    /// Settle at `actual`; `false` when it was settled already.
    pub fn settle(&self, actual: Amounts) -> bool {
        self.0.settle(actual)
    }
}

impl Inner {
    fn settle(&self, actual: Amounts) -> bool {
        if self.settled.swap(true, Ordering::AcqRel) {
            return false;
        }
        let now = (self.shared.clock)();
        self.shared.metrics.settled(&actual, &self.reserved);
        self.shared.settle(Settlement {
            id: self.id.clone(),
            key: self.key.clone(),
            limits: self.limits.clone(),
            reserved: self.reserved,
            actual,
            admitted_at: self.admitted_at,
            now,
        });
        true
    }

    /// What a report says was used, and whether part of it is an estimate.
    ///
    /// - Requests: 1.
    /// - Input: the reported count; else, when the upstream answered with a success (it
    ///   took the prompt), the request's estimate; else 0.
    /// - Output: the report's count (reported, or the usage observer's estimate from the
    ///   content delivered); else, when content flowed without any usage observer, the
    ///   reserved output (never 0 for tokens that flowed); else 0.
    /// - Attempts of a [`Failover`](crate::failover::Failover) inside that failed before the
    ///   commit: the tokens each reported, added to the counts above (a failed attempt can
    ///   cost tokens: Anthropic's input tokens of a stream that ends in `overloaded_error`).
    /// - Cost: the [`Pricing`](super::Pricing) of the model that answered (else the one asked
    ///   for) over those counts; 0 for a model it does not know.
    ///
    /// A streaming request answered with something other than a stream (its report says
    /// [`Framing::NotAStream`]) is charged as the [answer rules](Reservation#exit-paths)
    /// say: a success whose usage nothing read is charged its reserved output (flagged),
    /// an error status no tokens.
    fn charge_of(&self, report: &StreamReport) -> (Amounts, bool) {
        let accepted = report.status.is_some_and(|s| s.is_success());
        // A success answered without a stream: its body is the output, unread.
        let answered = report.framing == Framing::NotAStream && accepted && report.bytes_in > 0;
        let flowed = report.content_events > 0 || answered;
        let model = report.model.as_deref().or(self.estimate.model.as_deref());
        let failed = failed_attempts_tokens(report.failover.as_deref());
        self.charge_from(report.usage, accepted, flowed, model, failed)
    }

    /// The charge of a usage (see [`charge_of`](Self::charge_of)): `accepted`, the upstream
    /// took the prompt (a success status); `flowed`, output reached the client; `failed`,
    /// the tokens of failed attempts before the one that answered.
    fn charge_from(
        &self,
        usage: Option<Usage>,
        accepted: bool,
        flowed: bool,
        model: Option<&str>,
        (failed_input, failed_output): (u64, u64),
    ) -> (Amounts, bool) {
        let usage = usage.unwrap_or_default();
        let mut estimated = usage.source == UsageSource::Estimated;
        let input = match usage.input_tokens {
            Some(n) => n,
            None if accepted => {
                estimated = true;
                self.estimate.input_tokens
            }
            None => 0,
        };
        let output = match usage.output_tokens {
            Some(n) => n,
            None if flowed => {
                estimated = true;
                self.reserved.output_tokens
            }
            None => 0,
        };
        let input = input.saturating_add(failed_input);
        let output = output.saturating_add(failed_output);
        let mut charged = Amounts {
            requests: self.reserved.requests,
            input_tokens: input,
            output_tokens: output,
            cost_micros: 0,
        };
        if let Some(pricing) = &self.shared.pricing {
            let mut priced = usage;
            priced.input_tokens = Some(input);
            priced.output_tokens = Some(output);
            match pricing.cost_micros(model, &priced) {
                Some(cost) => charged.cost_micros = cost,
                None => self.shared.metrics.unpriced(),
            }
        }
        (charged, estimated)
    }
}

/// The input and output tokens the failed attempts of a
/// [`Failover`](crate::failover::Failover) reported before they failed.
pub(super) fn failed_attempts_tokens(failover: Option<&FailoverReport>) -> (u64, u64) {
    let Some(failover) = failover else {
        return (0, 0);
    };
    failover
        .failed()
        .filter_map(|attempt| attempt.usage)
        .fold((0, 0), |(input, output), usage| {
            (
                input.saturating_add(usage.input_tokens.unwrap_or(0)),
                output.saturating_add(usage.output_tokens.unwrap_or(0)),
            )
        })
}

impl Drop for Inner {
    fn drop(&mut self) {
        // No report settled it (a request answered without a stream, or a stack without the
        // observer): what it reserved stands.
        if !self.settled.load(Ordering::Acquire) {
            let reserved = self.reserved;
            self.settle(reserved);
        }
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("id", &self.0.id)
            .field("key", &self.0.key)
            .field("reserved", &self.0.reserved)
            .field("settled", &self.is_settled())
            .finish()
    }
}

/// Settles each stream's [`Reservation`] from its final report, exactly once, on every
/// exit path (the report is made once on each: completion, upstream error, truncation,
/// client disconnect, each deadline, shutdown, a non-stream answer to a streaming request).
///
/// Put it in the [`SseLayer`](crate::SseLayer) inside the
/// [`BudgetLayer`](super::BudgetLayer), **after** the
/// [`UsageObserver`](crate::UsageObserver) in the observer tuple, so that the usage it
/// settles from is final (the usage observer fills in its estimate in its own `on_end`).
/// It leaves a [`Charge`] in [`StreamReport::extensions`] for the sinks after it.
///
/// ```
/// use tower_sse::budget::BudgetObserver;
/// use tower_sse::{SseLayer, UsageObserver};
///
/// let layer = SseLayer::new().observer((UsageObserver::new(), BudgetObserver::new()));
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Default)]
pub struct BudgetObserver {
    reservation: Option<Reservation>,
    /// The stream's [`Allowance`](super::Allowance) (mid-stream enforcement), handed on to
    /// the report for [`BudgetStop`](super::BudgetStop).
    allowance: Option<super::Allowance>,
}

impl BudgetObserver {
    /// An observer (it takes each request's reservation itself).
    pub fn new() -> Self {
        Self::default()
    }
}

impl Observer for BudgetObserver {
    fn on_request(&mut self, request: &http::request::Parts) {
        self.reservation = request.extensions.get::<Reservation>().cloned();
        self.allowance = request.extensions.get::<super::Allowance>().cloned();
    }

    fn on_response(&mut self, _: &http::response::Parts, report: &mut StreamReport) {
        if let Some(allowance) = self.allowance.take() {
            report.extensions.insert(allowance);
        }
    }

    fn on_end(&mut self, report: &mut StreamReport) {
        if let Some(reservation) = self.reservation.take()
            && let Some(charge) = reservation.settle_report(report)
        {
            report.extensions.insert(charge);
        }
    }
}
