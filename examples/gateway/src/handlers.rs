//! The gateway's own answers: `/healthz`, `/metrics`, `/v1/digests/{id}`, and the request
//! counter in front of the stream stack.

use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use http::header::CONTENT_TYPE;
use http::{Request, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use tower_sse::DigestRegistry;

/// Counted for every request the stream stack sees, before the limit: with the limit's
/// rejections and [`UPSTREAM_STREAMS`], it lets a load run account for every stream.
pub const REQUESTS: &str = "gateway.requests_total";
/// Counted when the upstream answers with a stream head (SSE or NDJSON): each such stream
/// ends with exactly one report (`tower_sse.streams.ended_total`).
pub const UPSTREAM_STREAMS: &str = "gateway.upstream.streams_total";

pub(crate) fn count_request<B>(request: Request<B>) -> Request<B> {
    metrics::counter!(REQUESTS).increment(1);
    request
}

pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

pub(crate) async fn render_metrics(State(metrics): State<PrometheusHandle>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
}

/// The caller's record of this response id. Another tenant's record answers `404` exactly
/// like no record, so that nobody learns which ids exist.
pub(crate) async fn lookup_digest(
    State(registry): State<DigestRegistry>,
    Path(id): Path<String>,
    request: Parts,
) -> Response {
    match registry.lookup(registry.tenant_of(&request), &id).await {
        Some(record) => ([(CONTENT_TYPE, "application/json")], record.to_json()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [(CONTENT_TYPE, "application/json")],
            r#"{"error":{"type":"not_found","message":"no digest for this response id"}}"#,
        )
            .into_response(),
    }
}

/// The caller's own budgets (`GET /v1/budgets/self`): its key, each limit, what is used and
/// what is left. Keyed by the caller's credentials, so it sees nobody else's.
pub(crate) async fn budget_self(
    State(budgets): State<tower_sse::budget::BudgetLayer>,
    request: Parts,
) -> Response {
    match budgets.status_json(&request).await {
        Ok(json) => ([(CONTENT_TYPE, "application/json")], json).into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(CONTENT_TYPE, "application/json")],
            r#"{"error":{"type":"budget_unavailable","message":"the budget store is unavailable"}}"#,
        )
            .into_response(),
    }
}
