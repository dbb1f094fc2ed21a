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
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body as AxumBody;
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
use tokio::sync::{mpsc, watch};
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_sse::MetricsObserver;
use tower_sse::limit::OpenStreams;
use tower_sse::metrics::ModelLabels;
use tower_sse::resume::{MemoryStore, RedisStore, ResumeObserver};
use tower_sse::stream::Shutdown;
use tower_sse::{
    DigestObserver, DigestRegistry, IncludeUsageLayer, KeepAliveConfig, OnEnd, RequestDigestLayer,
    ResumeLayer, SseLayer, StreamLimitLayer, StreamReport, TimingObserver, TraceObserver,
    UsageObserver,
};

mod body_limit;
mod conn;
mod forward;
pub mod log_fields;
pub mod log_time;
mod os;
mod prometheus;
mod serve;
mod woken;

/// Deterministic pseudo-random numbers for the unit tests' inputs (xorshift64; `seed` not 0).
#[cfg(test)]
pub(crate) fn test_numbers(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

pub use forward::TlsRoots;
use forward::{Connector, Forward, UpstreamRequestBody};
pub use serve::{ConnectionConfig, serve, serve_until};

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
    /// On `SIGTERM` or `SIGINT`, how long open streams may run to their end before they are
    /// ended with an error event.
    pub shutdown_grace: Duration,
    /// How many distinct model names become metric label values (the rest are `_OTHER`).
    pub max_model_labels: usize,
    /// After a client disconnects, keep reading its upstream for up to this long, so that the
    /// provider's final usage reaches the report. The stream keeps its limit permit meanwhile.
    pub drain: Option<Duration>,
    /// Make every stream resumable with `Last-Event-ID` (GET and POST routes alike).
    pub resumable: bool,
    /// Keep the logs of resumable streams on this Redis (`redis://host:port/`), so that a
    /// client resumes on any replica.
    pub redis: Option<String>,
    /// What streaming requests go through: the tower-sse stack, or nothing (a benchmark floor).
    pub stack: Stack,
}

/// What the gateway puts between the client and the upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Stack {
    /// The whole tower-sse stack (the gateway).
    #[default]
    Full,
    /// No tower-sse layer at all: the same listener, connection limits, router, body limit and
    /// pooled upstream client, forwarding bytes as they come. Not a gateway (no limit, no
    /// metering): the floor a Rust gateway built on hyper cannot go below, so that full minus
    /// bare is tower-sse's own cost (`tools/scripts/compare.sh`).
    Bare,
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
            shutdown_grace: Duration::from_secs(30),
            max_model_labels: tower_sse::metrics::DEFAULT_DISTINCT_MODELS,
            drain: None,
            resumable: false,
            redis: None,
            stack: Stack::Full,
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
    /// Turns `true` when the gateway shuts down: listeners close, connections go graceful.
    stop: Arc<watch::Sender<bool>>,
    /// Ends the streams still open when the shutdown grace is over.
    streams_end: Shutdown,
    /// Model names seen, shared by every runtime's metrics observer.
    models: ModelLabels,
}

impl Shared {
    /// The router one runtime serves: its own pooled upstream client (connections stay on
    /// the runtime that opened them) around the shared limit, registry and metrics.
    pub fn router(&self) -> Router {
        if self.config.stack == Stack::Bare {
            let bare = ServiceBuilder::new()
                .map_request(count_request)
                .service(Forward {
                    client: self.client::<AxumBody>(),
                    upstream: self.config.upstream.clone(),
                });
            return self.with_routes(bare);
        }
        let client = self.client::<UpstreamRequestBody>();
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
            .layer(RequestDigestLayer::new())
            .layer(include_usage)
            .layer(sse)
            .service(Forward {
                client,
                upstream: self.config.upstream.clone(),
            });
        self.with_routes(stack)
    }

    /// This runtime's pooled upstream client (connections stay on the runtime that opened
    /// them).
    fn client<B>(&self) -> Client<Connector, B>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
    {
        // Without a pool timer, idle upstream connections are never closed (the idle timeout
        // is only checked when a connection is taken), and each keeps a file descriptor.
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            .build(self.connector.clone())
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
        serve_until(
            listener,
            self.router(),
            self.config.connections.clone(),
            self.stop.subscribe(),
        )
        .await
    }

    /// Shut down gracefully: stop accepting (new connections are refused), let the open
    /// streams run to their end for up to `grace`, then end the rest with an error event
    /// (`server_shutdown`; each is reported). Returns how many streams the grace did not
    /// see to their end.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.stop.send_replace(true);
        let open = self.limit.counter();
        let cut = if wait_for_streams(&open, grace).await {
            0
        } else {
            let cut = open.get();
            self.streams_end.end_streams();
            // They end at once; the bound only guards against a stream nobody polls.
            wait_for_streams(&open, Duration::from_secs(5)).await;
            cut
        };
        // The metrics and reports of the last streams are recorded by now: the log lines
        // are written, and the metrics listener answered until here.
        cut
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
        let mut sse = SseLayer::new()
            .early_response(config.early_response)
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
        let reports = self.reports.clone();
        sse.json_lines(true)
            .observer((
                UsageObserver::new(),
                TimingObserver::new(),
                DigestObserver::with_registry(self.registry.clone()),
                MetricsObserver::new().model_labels(self.models.clone()),
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
        let mut resume = ResumeLayer::new().enabled(config.resumable);
        let mut registry = DigestRegistry::builder();
        match &config.redis {
            // This replica's own streams and records are still served from memory; Redis
            // serves the other replicas.
            Some(url) => {
                let redis = RedisStore::builder(url)
                    .map_err(|e| std::io::Error::other(format!("--redis: {e}")))?
                    .local(resume_store.clone())
                    .build();
                registry = registry.shared(redis.clone());
                resume = resume.store(redis);
            }
            None => resume = resume.store(resume_store.clone()),
        }
        if let Some(interval) = config.keep_alive {
            // Each client connection gets its own keep-alives (the SseLayer's stay inside).
            resume = resume.keep_alive(KeepAliveConfig::new().interval(interval));
        }
        Ok(Self {
            resume_store,
            resume,
            connector: forward::connector(config.tls_roots)?,
            registry: registry.build(),
            limit: StreamLimitLayer::new(config.max_streams),
            metrics: prometheus::prometheus(),
            stop: Arc::new(watch::channel(false).0),
            streams_end: Shutdown::new(),
            models: ModelLabels::first_seen(config.max_model_labels),
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
            shared: self.clone(),
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
    shared: Shared,
}

impl Gateway {
    /// Shut down gracefully (see [`Shared::shutdown`]).
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.shared.shutdown(grace).await
    }
}

/// Wait until no stream holds a permit, for up to `limit`; whether they all ended.
async fn wait_for_streams(open: &OpenStreams, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while open.get() > 0 {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
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
