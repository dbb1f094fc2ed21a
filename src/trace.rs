//! One `tracing` event per finished stream (feature `tracing`).

use crate::observe::Observer;
use crate::report::{Outcome, StreamReport};

/// Emits one `tracing` event when a stream ends, with the report's fields (never payloads):
/// outcome, provider, model, response id, status, counts, durations in milliseconds, token
/// usage, a digest prefix, the type of the provider's in-band error (`provider_error`), and
/// the tenant and cost when an observer filled them in
/// ([`CostObserver`](crate::cost::CostObserver): `tenant`, `cost_micros`,
/// `cost_estimated`), what a [`Policy`](crate::policy::Policy) did when one acted
/// ([`PolicyReport`](crate::policy::PolicyReport): `policy_passed`, `policy_replaced`,
/// `policy_dropped`, `policy_held`, `policy_held_ms`, `policy_stopped_by`), and what a budget
/// charged the stream when a [`BudgetObserver`](crate::budget::BudgetObserver) before it
/// settled one (`budget_key`, `charged_input_tokens`, `charged_output_tokens`,
/// `charged_cost_micros`, `charge_estimated`: the ledger line of the stream), and, with
/// mid-stream enforcement, what the stream was allowed before
/// [`BudgetStop`](crate::budget::BudgetStop) would end it ([`Allowance`](crate::budget::Allowance):
/// `allowed_output_tokens`, `allowed_total_tokens`, `allowed_cost_micros`). `INFO` for
/// completed streams, `WARN` otherwise; target `tower_sse`.
///
/// Put it last in the observer tuple, so that the other observers' findings are in the
/// report when it logs.
///
/// ```
/// use tower_sse::{SseLayer, TimingObserver, TraceObserver, UsageObserver};
///
/// // With a `tracing` subscriber installed, each stream logs one event (target
/// // `tower_sse`) with its outcome, provider, counts, durations and usage.
/// let layer = SseLayer::new().observer((UsageObserver::new(), TimingObserver::new(), TraceObserver));
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceObserver;

fn millis(duration: Option<std::time::Duration>) -> Option<f64> {
    duration.map(|d| d.as_secs_f64() * 1000.0)
}

/// The digest's first 8 bytes as 16 hex digits, written into `out` (no allocation).
fn hex_prefix<'a>(digest: &crate::Sha256Digest, out: &'a mut [u8; 16]) -> &'a str {
    crate::digits::hex(digest.as_bytes(), out)
}

impl Observer for TraceObserver {
    fn on_end(&mut self, report: &mut StreamReport) {
        let timing = report.timing.unwrap_or_default();
        let usage = report.usage.unwrap_or_default();
        let mut hex = [0u8; 16];
        let digest = report.digest.map(|d| hex_prefix(&d, &mut hex));
        // The provider's error type (`overloaded_error`), or `"error"` when it named none.
        let provider_error = report
            .provider_error
            .as_ref()
            .map(|e| e.kind.as_deref().unwrap_or("error"));
        // The policy's counts, when a policy acted on the stream (absent otherwise).
        let policy = Some(&report.policy)
            .filter(|p| p.passed + p.replaced + p.dropped + p.held > 0 || p.stopped_by.is_some());
        let charge = report.extensions.get::<crate::budget::Charge>();
        let allowance = report.extensions.get::<crate::budget::Allowance>();
        macro_rules! emit {
            ($level:expr) => {
                tracing::event!(
                    target: "tower_sse",
                    $level,
                    outcome = %report.outcome,
                    provider = %report.provider,
                    model = report.model.as_deref(),
                    response_id = report.response_id.as_deref(),
                    status = report.status.map(|s| s.as_u16()),
                    events = report.events,
                    content_events = report.content_events,
                    keep_alives = report.keep_alives,
                    bytes_out = report.bytes_out,
                    duration_ms = report.duration().as_secs_f64() * 1000.0,
                    ttfb_ms = millis(timing.time_to_first_byte),
                    ttft_ms = millis(timing.time_to_first_token),
                    itl_p50_ms = millis(timing.inter_token.p50),
                    itl_p99_ms = millis(timing.inter_token.p99),
                    input_tokens = usage.input_tokens,
                    output_tokens = usage.output_tokens,
                    usage_estimated = report.usage.map(|u| u.source != crate::UsageSource::Reported),
                    digest = digest,
                    error = report.error.as_deref(),
                    provider_error = provider_error,
                    tenant = report.tenant.as_ref().map(tracing::field::display),
                    cost_micros = report.cost.map(|c| c.total_micros),
                    cost_estimated = report.cost.map(|c| c.estimated),
                    policy_passed = policy.map(|p| p.passed),
                    policy_replaced = policy.map(|p| p.replaced),
                    policy_dropped = policy.map(|p| p.dropped),
                    policy_held = policy.map(|p| p.held),
                    policy_held_ms = policy.map(|p| p.held_time.as_secs_f64() * 1000.0),
                    policy_stopped_by = report.policy.stopped_by.as_deref(),
                    budget_key = charge.map(|c| c.key.as_str()),
                    charged_input_tokens = charge.map(|c| c.charged.input_tokens),
                    charged_output_tokens = charge.map(|c| c.charged.output_tokens),
                    charged_cost_micros = charge.map(|c| c.charged.cost_micros),
                    charge_estimated = charge.map(|c| c.estimated),
                    allowed_output_tokens = allowance.and_then(|a| a.output_tokens()),
                    allowed_total_tokens = allowance.and_then(|a| a.total_tokens()),
                    allowed_cost_micros = allowance.and_then(|a| a.cost_micros()),
                    "stream ended"
                )
            };
        }
        if report.outcome == Outcome::Completed {
            emit!(tracing::Level::INFO);
        } else {
            emit!(tracing::Level::WARN);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_prefix_is_the_hex_of_its_first_bytes() {
        let digest = crate::Sha256Digest::of(b"tower-sse");
        let mut out = [0u8; 16];
        assert_eq!(hex_prefix(&digest, &mut out), &digest.to_hex()[..16]);
    }
}
