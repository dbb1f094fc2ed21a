//! An OpenAI-compatible streaming gateway built from tower-sse's layers: the code behind
//! `examples/gateway.rs`, `examples/demo.rs` and the end-to-end tests.
//!
//! ```text
//! client ─► axum router ─┬─ GET /metrics              Prometheus text
//!                        ├─ GET /v1/digests/{id}      the digest registry
//!                        └─ everything else ─► StreamLimitLayer      at most N open streams
//!                                              RequestDigestLayer    SHA-256 of the request
//!                                              IncludeUsageLayer     ask for usage
//!                                              SseLayer              keep-alive, deadlines,
//!                                                                    usage, timing, digest,
//!                                                                    metrics, one log line
//!                                              Forward               pooled hyper-util client
//! ```

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
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
use hyper_util::rt::TokioExecutor;
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
                    Ok(http::Response::from_parts(parts, Either::Left(body)))
                }
                Err(_) => Ok(error_response(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unreachable",
                    "the upstream could not be reached",
                )),
            }
        })
    }
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
            handle
        })
        .clone()
}

/// Start the gateway on `listener`. Each finished stream's report also goes to `reports`
/// when given (the demo prints them).
pub async fn start(
    listener: TcpListener,
    config: GatewayConfig,
    reports: Option<mpsc::UnboundedSender<StreamReport>>,
) -> std::io::Result<Gateway> {
    let addr = listener.local_addr()?;
    let metrics = prometheus();
    let registry = DigestRegistry::new();

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
    let sse = sse
        .json_lines(true)
        .observer((
            UsageObserver::new(),
            TimingObserver::new(),
            DigestObserver::with_registry(registry.clone()),
            MetricsObserver::default(),
            TraceObserver,
        ))
        .on_end(move |report: StreamReport| {
            if let Some(reports) = &reports {
                let _ = reports.send(report);
            }
        });

    let limit = StreamLimitLayer::new(config.max_streams);
    let open_streams = limit.counter();
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http::<UpstreamRequestBody>();
    let stack = ServiceBuilder::new()
        .layer(limit)
        .layer(RequestDigestLayer::new())
        .layer(IncludeUsageLayer::new())
        .layer(sse)
        .service(Forward {
            client,
            upstream: config.upstream,
        });

    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/v1/digests/{id}", get(lookup_digest))
        .with_state((metrics.clone(), registry.clone()))
        .fallback_service(stack);

    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("gateway stopped: {e}");
        }
    });
    Ok(Gateway {
        addr,
        registry,
        open_streams,
        metrics,
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
