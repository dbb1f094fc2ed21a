//! What the span says: its name and attributes, from a stream's final report (or from the
//! response head alone, for requests no observer reported).

use opentelemetry::trace::{SpanRef, Status};
use opentelemetry::{Array, KeyValue, StringValue, Value};

use super::names::*;
use crate::report::StreamReport;

/// The span's name until the report names the operation and model.
pub(crate) const INITIAL_NAME: &str = "chat";

/// Which GenAI names the spans carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Conventions {
    /// `gen_ai.provider.name` (latest experimental) rather than `gen_ai.system`.
    pub(crate) latest: bool,
}

/// The opt-in value of the GenAI conventions' latest experimental names.
const OPT_IN: &str = "gen_ai_latest_experimental";

impl Conventions {
    /// As `OTEL_SEMCONV_STABILITY_OPT_IN` (a comma-separated list) asks.
    pub(crate) fn from_env() -> Self {
        let latest =
            std::env::var("OTEL_SEMCONV_STABILITY_OPT_IN").is_ok_and(|value| Self::opts_in(&value));
        Self { latest }
    }

    fn opts_in(value: &str) -> bool {
        value.split(',').any(|item| item.trim() == OPT_IN)
    }

    fn provider_key(self) -> &'static str {
        if self.latest {
            GEN_AI_PROVIDER_NAME
        } else {
            GEN_AI_SYSTEM
        }
    }
}

pub(crate) fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Names the span and writes every attribute the report holds; the status is `Error` (with
/// `error.type`) unless the stream completed. Never a payload: counts, names, ids, a digest.
pub(crate) fn report(
    span: &SpanRef<'_>,
    report: &StreamReport,
    request_model: Option<&str>,
    currency: Option<&str>,
    conventions: Conventions,
) {
    // A span nobody records (the API's no-op tracer, a sampled-out trace): nothing to write.
    if !span.is_recording() {
        return;
    }
    let operation = report.provider.operation();
    match request_model.or(report.model.as_deref()) {
        Some(model) => span.update_name(format!("{operation} {model}")),
        None => span.update_name(operation),
    }
    let mut attributes = Vec::with_capacity(32);
    attributes.push(KeyValue::new(GEN_AI_OPERATION_NAME, operation));
    attributes.push(KeyValue::new(
        conventions.provider_key(),
        report.provider.as_str(),
    ));
    attributes.push(KeyValue::new(GEN_AI_REQUEST_STREAM, true));
    if let Some(model) = request_model {
        attributes.push(KeyValue::new(GEN_AI_REQUEST_MODEL, model.to_owned()));
    }
    if let Some(model) = &report.model {
        attributes.push(KeyValue::new(GEN_AI_RESPONSE_MODEL, model.clone()));
    }
    if let Some(id) = &report.response_id {
        attributes.push(KeyValue::new(GEN_AI_RESPONSE_ID, id.clone()));
    }
    if let Some(reason) = &report.finish_reason {
        let reasons = Array::String(vec![StringValue::from(reason.clone())]);
        attributes.push(KeyValue::new(
            GEN_AI_RESPONSE_FINISH_REASONS,
            Value::Array(reasons),
        ));
    }
    if let Some(ttfc) = report.timing.and_then(|t| t.time_to_first_token) {
        attributes.push(KeyValue::new(
            GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK,
            ttfc.as_secs_f64(),
        ));
    }
    if let Some(usage) = report.usage {
        let counts = [
            (GEN_AI_USAGE_INPUT_TOKENS, usage.input_tokens),
            (GEN_AI_USAGE_OUTPUT_TOKENS, usage.output_tokens),
            (
                GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
                usage.cached_input_tokens,
            ),
            (
                GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS,
                usage.cache_write_tokens,
            ),
            (GEN_AI_USAGE_REASONING_OUTPUT_TOKENS, usage.reasoning_tokens),
        ];
        for (key, count) in counts {
            if let Some(count) = count {
                attributes.push(KeyValue::new(key, int(count)));
            }
        }
        if usage.is_known() {
            attributes.push(KeyValue::new(
                TOWER_SSE_USAGE_ESTIMATED,
                usage.source != crate::UsageSource::Reported,
            ));
        }
    }
    if let Some(status) = report.status {
        attributes.push(KeyValue::new(
            HTTP_RESPONSE_STATUS_CODE,
            i64::from(status.as_u16()),
        ));
    }
    attributes.push(KeyValue::new(TOWER_SSE_OUTCOME, report.outcome.as_str()));
    attributes.push(KeyValue::new(TOWER_SSE_EVENTS, int(report.events)));
    attributes.push(KeyValue::new(
        TOWER_SSE_CONTENT_EVENTS,
        int(report.content_events),
    ));
    attributes.push(KeyValue::new(TOWER_SSE_BYTES, int(report.bytes_out)));
    if let Some(digest) = report.digest {
        attributes.push(KeyValue::new(TOWER_SSE_DIGEST, digest.to_hex()));
    }
    if let Some(cost) = report.cost {
        attributes.push(KeyValue::new(TOWER_SSE_COST_MICROS, int(cost.total_micros)));
        if let Some(currency) = currency {
            attributes.push(KeyValue::new(TOWER_SSE_COST_CURRENCY, currency.to_owned()));
        }
        attributes.push(KeyValue::new(TOWER_SSE_COST_ESTIMATED, cost.estimated));
        attributes.push(KeyValue::new(TOWER_SSE_COST_COMPLETE, cost.complete));
    }
    #[cfg(feature = "resume")]
    if let Some(resume) = report.extensions.get::<crate::resume::ResumeSummary>() {
        attributes.push(KeyValue::new(
            TOWER_SSE_RESUME_STREAM,
            resume.stream.to_string(),
        ));
        attributes.push(KeyValue::new(
            TOWER_SSE_RESUME_CONNECTIONS,
            int(resume.connections),
        ));
        attributes.push(KeyValue::new(TOWER_SSE_RESUME_RESUMES, int(resume.resumes)));
        attributes.push(KeyValue::new(
            TOWER_SSE_RESUME_REPLAYED_EVENTS,
            int(resume.replayed_events),
        ));
    }
    if let Some(error) = &report.provider_error {
        let kind = error.kind.clone().unwrap_or_else(|| "error".to_owned());
        attributes.push(KeyValue::new(TOWER_SSE_PROVIDER_ERROR, kind));
    }
    if !report.outcome.is_success() {
        attributes.push(KeyValue::new(ERROR_TYPE, report.outcome.as_str()));
        span.set_status(Status::error(report.outcome.as_str()));
    }
    span.set_attributes(attributes);
}

/// The HTTP status of an answer no observer reports (`error.type` is the status code for
/// 4xx and 5xx, as the HTTP conventions say).
pub(crate) fn status(span: &SpanRef<'_>, status: http::StatusCode) {
    span.set_attribute(KeyValue::new(
        HTTP_RESPONSE_STATUS_CODE,
        i64::from(status.as_u16()),
    ));
    if status.is_client_error() || status.is_server_error() {
        span.set_attribute(KeyValue::new(ERROR_TYPE, status.as_str().to_owned()));
        span.set_status(Status::error(status.as_str().to_owned()));
    }
}

/// The end of a request no observer reported: only whether it failed, and how.
pub(crate) fn unreported(span: &SpanRef<'_>, error: Option<&'static str>) {
    if let Some(error) = error {
        span.set_attribute(KeyValue::new(ERROR_TYPE, error));
        span.set_status(Status::error(error));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_opt_in_is_one_item_of_a_list() {
        assert!(Conventions::opts_in("gen_ai_latest_experimental"));
        assert!(Conventions::opts_in("http, gen_ai_latest_experimental"));
        assert!(!Conventions::opts_in("gen_ai_latest"));
        assert!(!Conventions::opts_in(""));
    }
}
