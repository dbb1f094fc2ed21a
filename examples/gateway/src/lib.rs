//! An OpenAI-compatible streaming gateway built from tower-sse's layers. Every request is
//! forwarded to an upstream with a pooled hyper-util client; streaming responses (SSE and
//! NDJSON) go through the whole tower-sse stack:
//!
//! ```text
//! client ─► connection limits (header and idle timeouts, header size and count, HTTP/2
//!                               streams and pings)
//!        ─► CORS (with --cors-origin: preflights answered here)
//!        ─► X-Request-Id (kept or made, echoed), X-Forwarded-For (appended)
//!        ─► request body limit (413)
//!        ─► axum router ─┬─ GET /healthz              200, cheap
//!                        ├─ GET /metrics              Prometheus text (or on --metrics-listen)
//!                        ├─ GET /v1/digests/{id}      the digest registry, the caller's tenant only
//!                        ├─ GET /v1/budgets/self      the caller's budgets (--budgets)
//!                        └─ everything else ─► (count the request)
//!                                              ResumeLayer           with --resumable: ids,
//!                                                                    Last-Event-ID resumes
//!                                              StreamLimitLayer      at most N open streams
//!                                              BudgetLayer           with --budgets: 429 before
//!                                                                    the upstream, settled
//!                                                                    from each report
//!                                              RequestDigestLayer    SHA-256 of the request
//!                                              IncludeUsageLayer     ask for usage
//!                                              SseLayer              keep-alive, deadlines,
//!                                                                    usage, timing, digest,
//!                                                                    metrics, one log line
//!                                              Forward               pooled hyper-util client,
//!                                                                    http:// or https:// (rustls),
//!                                                                    HTTP/1.1 or HTTP/2
//! ```
//!
//! This file is the stack: [`Shared::router`] and the `SseLayer` it builds. The rest is
//! plumbing: `config.rs` (what the command line sets), `running.rs` (building, serving and
//! shutting down), `handlers.rs` (`/healthz`, `/metrics`, `/v1/digests/{id}`), `forward.rs`
//! and `connector.rs` (the upstream client; `https://` with the default-on `tls` feature),
//! `serve.rs` and `conn.rs` (accepting connections, their limits and clocks),
//! `prometheus.rs` (the `/metrics` exporter), `os.rs` (file-descriptor limits), `log_writer.rs`
//! (log lines written to stdout by a thread of their own, never on a runtime thread),
//! `proxy_headers.rs` (`X-Request-Id`, `X-Forwarded-For`), `upgrade.rs` (WebSocket and other
//! upgrades, joined byte for byte); the binary's
//! `cli.rs` (command line) and `runtime.rs` (one runtime, or one per core). `tuned/` holds
//! benchmark-only replacements of stock pieces (feature `tuned`, off by default).
//!
//! [`Shared`] is what every runtime serving the gateway shares (registry, limit, metrics);
//! [`Shared::router`] and [`serve`] run on each runtime; [`start`] does both on the current one.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body as AxumBody;
use axum::response::IntoResponse;
use axum::routing::get;
use http::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{mpsc, watch};
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_sse::MetricsObserver;
use tower_sse::budget::{BudgetLayer, BudgetObserver, BudgetStop};
use tower_sse::cost::CostObserver;
use tower_sse::failover::Failover;
use tower_sse::metrics::ModelLabels;
use tower_sse::resume::{MemoryStore, ResumeObserver};
use tower_sse::span::{SpanLayer, SpanObserver};
use tower_sse::stream::Shutdown;
use tower_sse::{
    DigestObserver, DigestRegistry, IncludeUsageLayer, KeepAliveConfig, OnEnd, RequestDigestLayer,
    ResumeLayer, SseLayer, StreamLimitLayer, StreamReport, TimingObserver, UsageObserver,
};

mod body_limit;
mod config;
mod conn;
mod connector;
mod forward;
mod handlers;
pub mod log_writer;
pub mod os;
mod otlp;
mod prometheus;
mod proxy_headers;
mod running;
mod serve;
pub mod text_rules;
#[cfg(feature = "tuned")]
pub mod tuned;
mod upgrade;
mod versions;

pub use config::{GatewayConfig, Stack};
pub use connector::{TlsRoots, UpstreamVersion};
pub use handlers::{REQUESTS, UPSTREAM_STREAMS};
pub use running::{Gateway, start, start_metrics};
pub use serve::{ConnectionConfig, serve, serve_until};
pub use text_rules::TextRules;
pub use versions::{IncludeUsageNotApplied, Versions};

use connector::Connector;
use forward::Forward;
use handlers::{budget_self, count_request, healthz, lookup_digest, render_metrics};
use versions::VersionedTrace;

/// The parts of a gateway that every runtime serving it shares, built once: the digest
/// registry, the stream limit (clones of one layer share its semaphore), the Prometheus
/// handle and the report channel. [`Shared::router`] builds what each runtime serves.
#[derive(Clone)]
pub struct Shared {
    config: GatewayConfig,
    connector: Connector,
    /// Digests by tenant and response id, served at `/v1/digests/{id}`.
    pub registry: DigestRegistry,
    /// The stream limit: every runtime's router holds a clone of this one layer.
    pub limit: StreamLimitLayer,
    /// The logs of resumable streams (with `--resumable`), shared by every runtime.
    pub resume_store: MemoryStore,
    /// The resume layer (disabled without `--resumable`): clones share its producers.
    resume: ResumeLayer,
    /// The process's Prometheus recorder, rendered at `/metrics`.
    pub metrics: PrometheusHandle,
    reports: Option<mpsc::UnboundedSender<StreamReport>>,
    /// Turns `true` when the gateway shuts down: listeners close, connections go graceful.
    stop: Arc<watch::Sender<bool>>,
    /// Ends the streams still open when the shutdown grace is over.
    streams_end: Shutdown,
    /// Model names seen, shared by every runtime's metrics observer.
    models: ModelLabels,
    /// Prices each stream (`--prices`) and names its tenant, for the log line.
    costs: CostObserver,
    /// The budgets of `--budgets` (a layer without limits otherwise), shared by every runtime.
    pub budgets: BudgetLayer,
    /// With `--otlp-endpoint`: the span layer and its exporter.
    otlp: Option<otlp::Otlp>,
}

impl Shared {
    /// The router one runtime serves: its own pooled upstream client (connections stay on
    /// the runtime that opened them) around the shared limit, registry and metrics.
    pub fn router(&self) -> Router {
        if self.config.stack == Stack::Bare {
            let bare = ServiceBuilder::new()
                .map_request(count_request)
                .service(Forward::new(
                    self.client(),
                    self.config.upstream.clone(),
                    self.config.upstream_version,
                    false,
                ));
            return self.with_routes(bare);
        }
        let client = self.client();
        let sse = self.sse_layer();
        // The stream's own deadline bounds the upload too.
        let mut include_usage = IncludeUsageLayer::new();
        if let Some(deadline) = sse.request_deadline() {
            include_usage = include_usage.upload_timeout(deadline);
        }
        let stack = ServiceBuilder::new()
            .map_request(count_request)
            // Outside the limit: the producer holds the stream's permit, resumes take none.
            .layer(self.resume.clone())
            .layer(self.limit.clone())
            // Admission before anything reaches the upstream; settled by the BudgetObserver.
            // Inside the limit: a request the limit refuses never reserved anything (an
            // unsettled reservation is charged what it reserved).
            .layer(self.budgets.clone())
            .layer(RequestDigestLayer::new())
            .layer(include_usage)
            // One span per stream (--otlp-endpoint), ended by the SseLayer's last observer.
            .layer(self.span_layer())
            .layer(sse);
        if !self.config.fallback_upstreams.is_empty() {
            let failover = forward::AnsweredFailover(self.failover());
            return self.with_routes(stack.service(failover));
        }
        let stack = stack.service(Forward::new(
            client,
            self.config.upstream.clone(),
            self.config.upstream_version,
            true,
        ));
        self.with_routes(stack)
    }

    /// With fallback upstreams (`--upstream` given more than once): a `Failover` over one
    /// `Forward` per upstream, in order, inside the `SseLayer` (so that the report lists the
    /// attempts and the time to first token counts the failed ones). `Forward` answers `502`
    /// for an upstream it cannot reach, which the failover retries like any `5xx`.
    fn failover(&self) -> Failover<Forward> {
        let client = self.client();
        let upstreams = std::iter::once(&self.config.upstream)
            .chain(&self.config.fallback_upstreams)
            .map(|upstream| {
                Forward::new(
                    client.clone(),
                    upstream.clone(),
                    self.config.upstream_version,
                    true,
                )
            });
        // Below the request body limit: every body it keeps is within `--max-body-bytes`.
        Failover::new(upstreams).max_replay_body(self.config.max_body_bytes)
    }

    /// This runtime's pooled upstream client (connections stay on the runtime that opened
    /// them): several HTTP/1.1 connections, or with `--upstream-version 2` one HTTP/2
    /// connection that every stream shares ([`UpstreamVersion`]).
    fn client(&self) -> Client<Connector, AxumBody> {
        // Without a pool timer, idle upstream connections are never closed (the idle timeout
        // is only checked when a connection is taken), and each keeps a file descriptor.
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            // `forward` sets `host` itself (from the upstream's URL, for HTTP/1.1). The
            // client's own (`entry(HOST)`) makes room for one more header before it finds
            // the one there: a full map (six headers) doubled for nothing, and hyper keeps
            // the map with the connection. (A request with a body grows a full map anyway:
            // hyper looks for `transfer-encoding` the same way.)
            .set_host(false);
        if self.config.upstream_version == UpstreamVersion::Http2 {
            // Prior knowledge for `http://`; ALPN offers only `h2` for `https://`.
            builder.http2_only(true);
        }
        builder.build(self.connector.clone())
    }

    /// The gateway's own routes around `stack`, which serves everything else, under the
    /// request body limit.
    fn with_routes<S>(&self, stack: S) -> Router
    where
        S: tower::Service<Request<AxumBody>, Error = std::convert::Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: IntoResponse,
        S::Future: Send + 'static,
    {
        let mut router = Router::new()
            .route("/healthz", get(healthz))
            .route("/v1/digests/{id}", get(lookup_digest))
            .with_state(self.registry.clone())
            .merge(
                Router::new()
                    .route("/v1/budgets/self", get(budget_self))
                    .with_state(self.budgets.clone()),
            );
        if self.config.metrics_listen.is_none() {
            router = router.merge(self.metrics_route());
        }
        let router = router
            .fallback_service(stack)
            // A body announced too large is refused before anything reads it; one that grows
            // too large fails where it is read, and is answered `413` too.
            .layer(body_limit::OverflowLayer)
            .layer(RequestBodyLimitLayer::new(self.config.max_body_bytes))
            // Every answer, the gateway's own included, has the request's id.
            .layer(proxy_headers::ProxyHeadersLayer);
        // Outermost: preflights are answered here, before anything else runs.
        match self.config.cors() {
            Some(cors) => router.layer(cors),
            None => router,
        }
    }

    /// `/metrics` and `/healthz`: what a metrics listener of its own serves.
    pub fn metrics_router(&self) -> Router {
        self.metrics_route().route("/healthz", get(healthz))
    }

    fn metrics_route(&self) -> Router {
        Router::new()
            .route("/metrics", get(render_metrics))
            .with_state(self.metrics.clone())
    }

    /// With `--otlp-endpoint`, the span layer; a disabled one (passing everything through)
    /// otherwise.
    fn span_layer(&self) -> SpanLayer {
        match &self.otlp {
            Some(otlp) => otlp.layer.clone(),
            None => {
                SpanLayer::with_tracer(opentelemetry::trace::noop::NoopTracer::new()).enabled(false)
            }
        }
    }

    /// The `SseLayer`: keep-alive, deadlines, NDJSON reframed as SSE, and the observers
    /// (usage, timing, digest into the registry, GenAI metrics, one log line per stream with
    /// the client's and the upstream's HTTP versions).
    #[allow(clippy::type_complexity)] // the observer tuple, spelled out once, here
    fn sse_layer(
        &self,
    ) -> SseLayer<
        (
            ResumeObserver,
            Metering,
            TimingObserver,
            DigestObserver,
            MetricsObserver,
            BudgetObserver,
            VersionedTrace,
            Option<SpanObserver>,
        ),
        impl OnEnd + Clone + Send + 'static,
    > {
        let config = &self.config;
        let mut sse = SseLayer::new()
            .early_response(config.early_response)
            .sse_headers(config.sse_headers)
            .shutdown(self.streams_end.clone());
        if let Some(interval) = config.keep_alive {
            sse = sse.keep_alive(KeepAliveConfig::new().interval(interval));
        }
        if let Some(t) = config.first_event_timeout {
            sse = sse.first_event_timeout(t);
        }
        if let Some(t) = config.idle_timeout {
            sse = sse.idle_timeout(t);
        }
        if let Some(t) = config.total_timeout {
            sse = sse.total_timeout(t);
        }
        if let Some(limit) = config.drain {
            sse = sse.drain_on_disconnect(limit);
        }
        let budget_stop = self.budgets.enforces_mid_stream();
        if !config.text_rules.is_empty() {
            let holdback = config.text_rules.holdback();
            sse = if budget_stop {
                // The budget first: it counts every event the text rules may then rewrite.
                sse.policy((BudgetStop::new(), config.text_rules.clone()))
            } else {
                sse.policy(config.text_rules.clone())
            };
            sse = sse.holdback(holdback);
        } else if budget_stop {
            // `"enforce_mid_stream": true` in the `--budgets` file.
            sse = sse.policy(BudgetStop::new());
        }
        let reports = self.reports.clone();
        sse.json_lines(true)
            // The resume observer first: it gives a stream its producer ended itself
            // its true outcome, which the metrics and the log line then see.
            .observer((
                ResumeObserver::new(),
                // The cost after the usage it prices, before the log line.
                (UsageObserver::new(), self.costs.clone()),
                TimingObserver::new(),
                DigestObserver::with_registry(self.registry.clone()),
                MetricsObserver::new().model_labels(self.models.clone()),
                // Settled before the log line, which then carries the charge.
                BudgetObserver::new(),
                VersionedTrace::default(),
                self.otlp.as_ref().map(|otlp| otlp.layer.observer()),
            ))
            .on_end(move |report: StreamReport| {
                if let Some(reports) = &reports {
                    let _ = reports.send(report);
                }
            })
    }
}

/// The usage of each stream, then its cost (which prices that usage).
type Metering = (UsageObserver, CostObserver);

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
