//! An OpenAI-compatible streaming gateway built from tower-sse's layers: the code behind
//! `examples/gateway.rs`, `examples/demo.rs` and the end-to-end tests.
//!
//! ```text
//! client ─► axum router ─┬─ GET /metrics              Prometheus text
//!                        ├─ GET /v1/digests/{id}      the digest registry
//!                        └─ everything else ─► (count the request)
//!                                              StreamLimitLayer      at most N open streams
//!                                              RequestDigestLayer    SHA-256 of the request
//!                                              IncludeUsageLayer     ask for usage
//!                                              SseLayer              keep-alive, deadlines,
//!                                                                    usage, timing, digest,
//!                                                                    metrics, one log line
//!                                              Forward               pooled hyper-util client
//! ```
//!
//! [`Shared`] is what every runtime serving the gateway shares (registry, limit, metrics);
//! [`Shared::router`] and [`serve`] run on each runtime; [`start`] does both on the current one.

#![allow(dead_code, unreachable_pub, missing_docs)]

#[path = "os.rs"]
mod os;

use std::net::SocketAddr;

use os::{Warning, fd_limit, fd_limit_text, io_source, is_fd_exhaustion};
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::body::Body as AxumBody;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower::ServiceBuilder;
use tower_sse::include_usage::UsageRequestBody;
use tower_sse::metrics::{MetricsObserver, buckets, names};
use tower_sse::{
    DigestObserver, DigestRegistry, IncludeUsageLayer, KeepAlive, OpenStreams, RequestDigestBody,
    RequestDigestLayer, SseLayer, StreamLimitLayer, StreamReport, TimingObserver, TraceObserver,
    UsageObserver,
};

/// What the gateway is told on its command line.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Base URL of the upstream, such as `http://127.0.0.1:9000`.
    pub upstream: Uri,
    pub keep_alive: Option<Duration>,
    pub first_event_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub total_timeout: Option<Duration>,
    pub max_streams: usize,
    pub early_response: bool,
}

impl GatewayConfig {
    pub fn new(upstream: Uri) -> Self {
        Self {
            upstream,
            keep_alive: Some(Duration::from_secs(15)),
            first_event_timeout: None,
            idle_timeout: None,
            total_timeout: None,
            max_streams: 10_000,
            early_response: false,
        }
    }
}

/// A running gateway.
pub struct Gateway {
    pub addr: SocketAddr,
    pub registry: DigestRegistry,
    pub open_streams: OpenStreams,
    pub metrics: PrometheusHandle,
}

/// The request body the upstream client sends: the client's bytes, hashed as they go, and
/// possibly rewritten to ask for usage.
type UpstreamRequestBody = UsageRequestBody<RequestDigestBody<AxumBody>>;
type UpstreamResponseBody = Either<Incoming, Full<Bytes>>;

/// Forwards a request to the upstream with a pooled client; answers `502` when it cannot.
#[derive(Clone)]
struct Forward {
    client: Client<HttpConnector, UpstreamRequestBody>,
    upstream: Uri,
}

/// Hop-by-hop headers: they describe one connection and are never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

fn error_response(
    status: StatusCode,
    kind: &str,
    message: &str,
) -> http::Response<UpstreamResponseBody> {
    let body = format!(r#"{{"error":{{"type":"{kind}","message":"{message}"}}}}"#);
    let mut response = http::Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

impl tower::Service<Request<UpstreamRequestBody>> for Forward {
    type Response = http::Response<UpstreamResponseBody>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<UpstreamRequestBody>) -> Self::Future {
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let mut parts = self.upstream.clone().into_parts();
        parts.path_and_query = path.parse().ok();
        let uri = Uri::from_parts(parts);
        let client = self.client.clone();
        Box::pin(async move {
            let Ok(uri) = uri else {
                return Ok(error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "bad request path",
                ));
            };
            strip_hop_by_hop(request.headers_mut());
            if let Some(authority) = uri.authority()
                && let Ok(host) = HeaderValue::from_str(authority.as_str())
            {
                request.headers_mut().insert(HOST, host);
            }
            *request.uri_mut() = uri;
            match client.request(request).await {
                Ok(response) => {
                    let (mut parts, body) = response.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    if is_stream_head(&parts.headers) {
                        metrics::counter!(UPSTREAM_STREAMS).increment(1);
                    }
                    Ok(http::Response::from_parts(parts, Either::Left(body)))
                }
                Err(e) => Ok(upstream_unreachable(&e)),
            }
        })
    }
}

/// `502`, and a clear message when the cause is a full file table.
fn upstream_unreachable(
    e: &hyper_util::client::legacy::Error,
) -> http::Response<UpstreamResponseBody> {
    static OUT_OF_FDS: Warning = Warning::new();
    if let Some(io) = io_source(e)
        && is_fd_exhaustion(io)
    {
        OUT_OF_FDS.emit(|| {
            format!(
                "gateway: connecting to the upstream failed: {io}: out of file descriptors \
                 (limit {}); raise it with `ulimit -n` before starting the gateway",
                fd_limit_text()
            )
        });
    }
    error_response(
        StatusCode::BAD_GATEWAY,
        "upstream_unreachable",
        "the upstream could not be reached",
    )
}

/// The process-wide Prometheus recorder (one per process; tests may start several gateways).
fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(names::CLIENT_OPERATION_DURATION.into()),
                    buckets::OPERATION_DURATION,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(names::CLIENT_TIME_TO_FIRST_CHUNK.into()),
                        buckets::OPERATION_DURATION,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(names::CLIENT_TIME_PER_OUTPUT_CHUNK.into()),
                        buckets::OPERATION_DURATION,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(names::CLIENT_TOKEN_USAGE.into()),
                        buckets::TOKEN_USAGE,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(names::SERVER_TIME_TO_FIRST_TOKEN.into()),
                        buckets::SERVER_TIME_TO_FIRST_TOKEN,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(names::SERVER_TIME_PER_OUTPUT_TOKEN.into()),
                        buckets::SERVER_TIME_PER_OUTPUT_TOKEN,
                    )
                })
                .expect("bucket lists are not empty");
            let handle = builder
                .install_recorder()
                .expect("no other recorder in this process");
            tower_sse::metrics::describe();
            metrics::describe_counter!(REQUESTS, "Requests that reached the stream stack");
            metrics::describe_counter!(UPSTREAM_STREAMS, "Upstream answers that started a stream");
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// The parts of a gateway that every runtime serving it shares, built once: the digest
/// registry, the stream limit (clones of one layer share its semaphore), the Prometheus
/// handle and the report channel. [`Shared::router`] builds what each runtime serves.
#[derive(Clone)]
pub struct Shared {
    config: GatewayConfig,
    pub registry: DigestRegistry,
    pub limit: StreamLimitLayer,
    pub metrics: PrometheusHandle,
    reports: Option<mpsc::UnboundedSender<StreamReport>>,
}

impl Shared {
    /// Build the shared state. Each finished stream's report also goes to `reports` when
    /// given (the demo prints them).
    pub fn new(
        config: GatewayConfig,
        reports: Option<mpsc::UnboundedSender<StreamReport>>,
    ) -> Self {
        // Read the fd limit now, while a descriptor is free to read it with.
        let _ = fd_limit();
        Self {
            registry: DigestRegistry::new(),
            limit: StreamLimitLayer::new(config.max_streams),
            metrics: prometheus(),
            config,
            reports,
        }
    }

    /// The handles a caller keeps, for a gateway listening on `addr`.
    pub fn gateway(&self, addr: SocketAddr) -> Gateway {
        Gateway {
            addr,
            registry: self.registry.clone(),
            open_streams: self.limit.counter(),
            metrics: self.metrics.clone(),
        }
    }

    /// The router one runtime serves: its own pooled upstream client (connections stay on
    /// the runtime that opened them) around the shared limit, registry and metrics.
    pub fn router(&self) -> Router {
        // Without a pool timer, idle upstream connections are never closed (the idle timeout
        // is only checked when a connection is taken), and each keeps a file descriptor.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            .build_http::<UpstreamRequestBody>();
        let stack = ServiceBuilder::new()
            .map_request(count_request)
            .layer(self.limit.clone())
            .layer(RequestDigestLayer::new())
            .layer(IncludeUsageLayer::new())
            .layer(self.sse_layer())
            .service(Forward {
                client,
                upstream: self.config.upstream.clone(),
            });
        Router::new()
            .route("/metrics", get(render_metrics))
            .route("/v1/digests/{id}", get(lookup_digest))
            .with_state((self.metrics.clone(), self.registry.clone()))
            .fallback_service(stack)
    }

    fn sse_layer(
        &self,
    ) -> SseLayer<
        (
            UsageObserver,
            TimingObserver,
            DigestObserver,
            MetricsObserver,
            TraceObserver,
        ),
        impl tower_sse::OnEnd + Clone + Send + 'static,
    > {
        let config = &self.config;
        let mut sse = SseLayer::new().early_response(config.early_response);
        if let Some(interval) = config.keep_alive {
            sse = sse.keep_alive(KeepAlive::new().interval(interval));
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
            ))
            .on_end(move |report: StreamReport| {
                if let Some(reports) = &reports {
                    let _ = reports.send(report);
                }
            })
    }
}

/// Drain histogram samples into their buckets every few seconds, so memory stays flat
/// when nobody scrapes `/metrics` (rendering drains them too).
fn spawn_upkeep(handle: PrometheusHandle) {
    let upkeep = move || {
        loop {
            std::thread::sleep(Duration::from_secs(5));
            handle.run_upkeep();
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("prometheus-upkeep".into())
        .spawn(upkeep)
    {
        eprintln!("gateway: no metrics upkeep thread: {e}");
    }
}

/// Start the gateway on `listener`, on the current runtime. Each finished stream's report
/// also goes to `reports` when given (the demo prints them).
pub async fn start(
    listener: TcpListener,
    config: GatewayConfig,
    reports: Option<mpsc::UnboundedSender<StreamReport>>,
) -> std::io::Result<Gateway> {
    let addr = listener.local_addr()?;
    let shared = Shared::new(config, reports);
    tokio::spawn(serve(listener, shared.router()));
    Ok(shared.gateway(addr))
}

/// Accept connections on `listener` and serve `app` on each (HTTP/1.1 and HTTP/2), on the
/// current runtime, forever. Accept errors never make it spin: running out of file
/// descriptors is reported (at most every few seconds) and waited out.
pub async fn serve(listener: TcpListener, app: Router) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                report_accept_error(&e);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small SSE frames must leave at once, not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Errors of one connection that the listener can ignore.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

fn report_accept_error(e: &std::io::Error) {
    static OUT_OF_FDS: Warning = Warning::new();
    static OTHER: Warning = Warning::new();
    if is_fd_exhaustion(e) {
        OUT_OF_FDS.emit(|| {
            format!(
                "gateway: accept failed: {e}: out of file descriptors (limit {}; every stream \
                 holds two, the client's and the upstream's); raise it with `ulimit -n` before \
                 starting the gateway. Retrying as streams end.",
                fd_limit_text()
            )
        });
    } else {
        OTHER.emit(|| format!("gateway: accept failed: {e}; retrying"));
    }
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

/// Whether a response head announces a stream the `SseLayer` handles (SSE or NDJSON).
fn is_stream_head(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.trim_start().to_ascii_lowercase();
            v.starts_with("text/event-stream") || v.starts_with("application/x-ndjson")
        })
}

async fn render_metrics(
    State((metrics, _)): State<(PrometheusHandle, DigestRegistry)>,
) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
}

async fn lookup_digest(
    State((_, registry)): State<(PrometheusHandle, DigestRegistry)>,
    Path(id): Path<String>,
) -> Response {
    match registry.get(&id) {
        Some(record) => ([(CONTENT_TYPE, "application/json")], record.to_json()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [(CONTENT_TYPE, "application/json")],
            r#"{"error":{"type":"not_found","message":"no digest for this response id"}}"#,
        )
            .into_response(),
    }
}
