//! An OpenAI-compatible streaming gateway built from tower-sse's layers. Every request is
//! forwarded to an upstream with a pooled hyper-util client; streaming responses (SSE and
//! NDJSON) go through the whole tower-sse stack:
//!
//! ```text
//! client ─► connection limits (header and idle timeouts, header size, HTTP/2 streams and pings)
//!        ─► request body limit (413)
//!        ─► axum router ─┬─ GET /healthz              200, cheap
//!                        ├─ GET /metrics              Prometheus text (or on --metrics-listen)
//!                        ├─ GET /v1/digests/{id}      the digest registry, the caller's tenant only
//!                        └─ everything else ─► (count the request)
//!                                              ResumeLayer           with --resumable: ids,
//!                                                                    Last-Event-ID resumes
//!                                              StreamLimitLayer      at most N open streams
//!                                              RequestDigestLayer    SHA-256 of the request
//!                                              IncludeUsageLayer     ask for usage
//!                                              SseLayer              keep-alive, deadlines,
//!                                                                    usage, timing, digest,
//!                                                                    metrics, one log line
//!                                              Forward               pooled hyper-util client,
//!                                                                    http:// or https:// (rustls)
//! ```
//!
//! This file is the stack: [`Shared::router`] and the `SseLayer` it builds. The rest is
//! plumbing: `forward.rs` (the upstream client), `serve.rs` (accepting connections and their
//! limits), `conn.rs` (one connection's header and idle clocks), `prometheus.rs` (the
//! `/metrics` exporter), `os.rs` (file-descriptor limits); the binary's `main.rs` (command
//! line) and `runtime.rs` (one runtime, or one per core).
//!
//! [`Shared`] is what every runtime serving the gateway shares (registry, limit, metrics);
//! [`Shared::router`] and [`serve`] run on each runtime; [`start`] does both on the current one.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header::CONTENT_TYPE;
use http::{Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_sse::MetricsObserver;
use tower_sse::limit::OpenStreams;
use tower_sse::resume::{MemoryStore, ResumeObserver};
use tower_sse::{
    DigestObserver, DigestRegistry, IncludeUsageLayer, KeepAliveConfig, OnEnd, RequestDigestLayer,
    ResumeLayer, SseLayer, StreamLimitLayer, StreamReport, TimingObserver, TraceObserver,
    UsageObserver,
};

mod body_limit;
mod conn;
mod forward;
mod os;
mod prometheus;
mod serve;

pub use forward::TlsRoots;
use forward::{Connector, Forward, UpstreamRequestBody};
pub use serve::{ConnectionConfig, serve};

/// What the gateway is told on its command line.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Base URL of the upstream, such as `http://127.0.0.1:9000`.
    pub upstream: Uri,
    /// Send a keep-alive comment after this much silence.
    pub keep_alive: Option<Duration>,
    /// End streams with no content event within this time.
    pub first_event_timeout: Option<Duration>,
    /// End streams whose upstream is silent this long.
    pub idle_timeout: Option<Duration>,
    /// End streams running longer than this.
    pub total_timeout: Option<Duration>,
    /// At most this many open streams, then `503`.
    pub max_streams: usize,
    /// Answer streaming requests at once, with keep-alives before the upstream's head.
    pub early_response: bool,
    /// The largest request body accepted, in bytes; `413` beyond it.
    pub max_body_bytes: usize,
    /// The certificate authorities of an `https://` upstream.
    pub tls_roots: TlsRoots,
    /// Serve `/metrics` on this address instead of the main one.
    pub metrics_listen: Option<SocketAddr>,
    /// Limits on client connections.
    pub connections: ConnectionConfig,
    /// Make every stream resumable with `Last-Event-ID` (GET and POST routes alike).
    pub resumable: bool,
}

impl GatewayConfig {
    /// The defaults of the command line, for `upstream`.
    pub fn new(upstream: Uri) -> Self {
        Self {
            upstream,
            keep_alive: Some(Duration::from_secs(15)),
            first_event_timeout: None,
            idle_timeout: None,
            total_timeout: None,
            max_streams: 10_000,
            early_response: false,
            max_body_bytes: 16 * 1024 * 1024,
            tls_roots: TlsRoots::default(),
            metrics_listen: None,
            connections: ConnectionConfig::default(),
            resumable: false,
        }
    }
}

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
}

impl Shared {
    /// The router one runtime serves: its own pooled upstream client (connections stay on
    /// the runtime that opened them) around the shared limit, registry and metrics.
    pub fn router(&self) -> Router {
        // Without a pool timer, idle upstream connections are never closed (the idle timeout
        // is only checked when a connection is taken), and each keeps a file descriptor.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            .build::<_, UpstreamRequestBody>(self.connector.clone());
        let stack = ServiceBuilder::new()
            .map_request(count_request)
            // Outside the limit: the producer holds the stream's permit, resumes take none.
            .layer(self.resume.clone())
            .layer(self.limit.clone())
            .layer(RequestDigestLayer::new())
            .layer(IncludeUsageLayer::new())
            .layer(self.sse_layer())
            .service(Forward {
                client,
                upstream: self.config.upstream.clone(),
            });
        let mut router = Router::new()
            .route("/healthz", get(healthz))
            .route("/v1/digests/{id}", get(lookup_digest))
            .with_state(self.registry.clone());
        if self.config.metrics_listen.is_none() {
            router = router.merge(self.metrics_route());
        }
        router
            .fallback_service(stack)
            // Outermost: a body announced too large is refused before anything reads it; one
            // that grows too large fails where it is read, and is answered `413` too.
            .layer(body_limit::OverflowLayer)
            .layer(RequestBodyLimitLayer::new(self.config.max_body_bytes))
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

    /// Serve [`router`](Self::router) on `listener` under the configured connection limits,
    /// on the current runtime, forever.
    pub async fn serve(&self, listener: TcpListener) {
        serve(listener, self.router(), self.config.connections.clone()).await
    }

    /// The `SseLayer`: keep-alive, deadlines, NDJSON reframed as SSE, and the observers
    /// (usage, timing, digest into the registry, GenAI metrics, one log line per stream).
    fn sse_layer(
        &self,
    ) -> SseLayer<
        (
            UsageObserver,
            TimingObserver,
            DigestObserver,
            MetricsObserver,
            TraceObserver,
            ResumeObserver,
        ),
        impl OnEnd + Clone + Send + 'static,
    > {
        let config = &self.config;
        let mut sse = SseLayer::new().early_response(config.early_response);
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
        let reports = self.reports.clone();
        sse.json_lines(true)
            .observer((
                UsageObserver::new(),
                TimingObserver::new(),
                DigestObserver::with_registry(self.registry.clone()),
                MetricsObserver::default(),
                TraceObserver,
                ResumeObserver::new(),
            ))
            .on_end(move |report: StreamReport| {
                if let Some(reports) = &reports {
                    let _ = reports.send(report);
                }
            })
    }

    /// Build the shared state. Each finished stream's report also goes to `reports` when
    /// given (the demo prints them). Fails when the TLS roots cannot be loaded.
    pub fn new(
        config: GatewayConfig,
        reports: Option<mpsc::UnboundedSender<StreamReport>>,
    ) -> std::io::Result<Self> {
        // Read the fd limit now, while a descriptor is free to read it with.
        let _ = os::fd_limit();
        let resume_store = MemoryStore::new();
        let mut resume = ResumeLayer::new()
            .enabled(config.resumable)
            .store(resume_store.clone());
        if let Some(interval) = config.keep_alive {
            // Each client connection gets its own keep-alives (the SseLayer's stay inside).
            resume = resume.keep_alive(KeepAliveConfig::new().interval(interval));
        }
        Ok(Self {
            resume_store,
            resume,
            connector: forward::connector(config.tls_roots)?,
            registry: DigestRegistry::new(),
            limit: StreamLimitLayer::new(config.max_streams),
            metrics: prometheus::prometheus(),
            config,
            reports,
        })
    }

    /// The handles a caller keeps, for a gateway listening on `addr`.
    pub fn gateway(&self, addr: SocketAddr, metrics_addr: Option<SocketAddr>) -> Gateway {
        Gateway {
            addr,
            metrics_addr,
            registry: self.registry.clone(),
            open_streams: self.limit.counter(),
            metrics: self.metrics.clone(),
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A running gateway.
pub struct Gateway {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The address of its metrics listener, when `/metrics` has one of its own.
    pub metrics_addr: Option<SocketAddr>,
    /// Digests by tenant and response id.
    pub registry: DigestRegistry,
    /// How many streams hold a permit of the stream limit.
    pub open_streams: OpenStreams,
    /// The Prometheus recorder.
    pub metrics: PrometheusHandle,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("addr", &self.addr)
            .field("metrics_addr", &self.metrics_addr)
            .finish_non_exhaustive()
    }
}

/// Start the gateway on `listener`, on the current runtime, and its metrics listener when
/// the config has one. Each finished stream's report also goes to `reports` when given (the
/// demo prints them).
pub async fn start(
    listener: TcpListener,
    config: GatewayConfig,
    reports: Option<mpsc::UnboundedSender<StreamReport>>,
) -> std::io::Result<Gateway> {
    let addr = listener.local_addr()?;
    let shared = Shared::new(config, reports)?;
    let metrics_addr = start_metrics(&shared).await?;
    let serving = shared.clone();
    tokio::spawn(async move { serving.serve(listener).await });
    Ok(shared.gateway(addr, metrics_addr))
}

/// Bind the metrics listener, if the config has one, and serve it on the current runtime;
/// returns its address.
pub async fn start_metrics(shared: &Shared) -> std::io::Result<Option<SocketAddr>> {
    let Some(listen) = shared.config.metrics_listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(listen).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {listen} for metrics: {e}"),
        )
    })?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(
        listener,
        shared.metrics_router(),
        shared.config.connections.clone(),
    ));
    Ok(Some(addr))
}

/// Counted for every request the stream stack sees, before the limit: with the limit's
/// rejections and [`UPSTREAM_STREAMS`], it lets a load run account for every stream.
pub const REQUESTS: &str = "gateway.requests";
/// Counted when the upstream answers with a stream head (SSE or NDJSON): each such stream
/// ends with exactly one report (`tower_sse.streams.ended`).
pub const UPSTREAM_STREAMS: &str = "gateway.upstream.streams";

fn count_request<B>(request: Request<B>) -> Request<B> {
    metrics::counter!(REQUESTS).increment(1);
    request
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn render_metrics(State(metrics): State<PrometheusHandle>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
}

/// The caller's record of this response id. Another tenant's record answers `404` exactly
/// like no record, so that nobody learns which ids exist.
async fn lookup_digest(
    State(registry): State<DigestRegistry>,
    Path(id): Path<String>,
    request: Parts,
) -> Response {
    match registry.get(registry.tenant_of(&request), &id) {
        Some(record) => ([(CONTENT_TYPE, "application/json")], record.to_json()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [(CONTENT_TYPE, "application/json")],
            r#"{"error":{"type":"not_found","message":"no digest for this response id"}}"#,
        )
            .into_response(),
    }
}
