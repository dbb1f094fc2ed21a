//! What the gateway is told: [`GatewayConfig`], with the command line's defaults.

use std::net::SocketAddr;
use std::time::Duration;

use http::Uri;

use crate::{ConnectionConfig, TlsRoots, UpstreamVersion};

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
    /// Browser origins allowed to call the gateway (CORS): preflights are answered and the
    /// `Access-Control-*` headers added for them; `*` allows any. Empty: no CORS.
    pub cors_origins: Vec<String>,
    /// Add `Cache-Control: no-cache` and `X-Accel-Buffering: no` to streams that lack them, so
    /// that a buffering proxy in front (nginx) passes events at once. On by default.
    pub sse_headers: bool,
    /// The largest request body accepted, in bytes; `413` beyond it.
    pub max_body_bytes: usize,
    /// The certificate authorities of an `https://` upstream.
    pub tls_roots: TlsRoots,
    /// The HTTP version spoken to the upstream (HTTP/1.1 by default), whatever the client's.
    pub upstream_version: UpstreamVersion,
    /// Serve `/metrics` on this address instead of the main one.
    pub metrics_listen: Option<SocketAddr>,
    /// Limits on client connections.
    pub connections: ConnectionConfig,
    /// On `SIGTERM`, `SIGINT` or `SIGHUP`, how long open streams may run to their end before they are
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
    /// Price each stream's usage with this table (`--prices FILE`): its cost goes to the
    /// report and the log line. Without it, streams have no cost.
    pub prices: Option<tower_sse::cost::PriceTable>,
    /// Budgets per tenant or key (a JSON document, `tower_sse::budget::BudgetConfig`; TOML
    /// when the name ends in `.toml`), read and validated at start; on Redis with
    /// `--redis`, in process otherwise.
    pub budgets: Option<std::path::PathBuf>,
    /// `--redact` and `--stop-on`: rules over the text of content events (none by default).
    pub text_rules: crate::TextRules,
    /// Export one span per stream over OTLP/HTTP (protobuf) to this collector
    /// (`http://host:4318`; spans go to its `/v1/traces`).
    pub otlp_endpoint: Option<Uri>,
    /// More upstreams after [`upstream`](Self::upstream), in order of preference (the
    /// command line's repeated `--upstream`): a request fails over to the next one before its
    /// first content event, never after (`tower_sse::failover`). Empty: one upstream, no
    /// failover layer at all.
    pub fallback_upstreams: Vec<Uri>,
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
            sse_headers: true,
            cors_origins: Vec::new(),
            max_body_bytes: 16 * 1024 * 1024,
            tls_roots: TlsRoots::default(),
            upstream_version: UpstreamVersion::default(),
            metrics_listen: None,
            connections: ConnectionConfig::default(),
            shutdown_grace: Duration::from_secs(30),
            max_model_labels: tower_sse::metrics::DEFAULT_DISTINCT_MODELS,
            drain: None,
            resumable: false,
            redis: None,
            stack: Stack::Full,
            prices: None,
            budgets: None,
            text_rules: crate::TextRules::default(),
            otlp_endpoint: None,
            fallback_upstreams: Vec::new(),
        }
    }
}

impl GatewayConfig {
    /// The CORS layer of [`cors_origins`](Self::cors_origins), if any: what a browser's
    /// `EventSource` and `fetch` on another origin need. Preflights (`OPTIONS` with
    /// `Access-Control-Request-Method`) are answered by the gateway (`200`, cached for 10
    /// minutes) with the methods `GET`, `POST` and `OPTIONS` and whatever request headers
    /// were asked for; answers to allowed origins say so and expose `x-request-id` and
    /// `sse-stream-id`. Without credentials (`*` would not be allowed with them). Origins that
    /// are not valid header values are left out (the command line refuses them).
    pub(crate) fn cors(&self) -> Option<tower_http::cors::CorsLayer> {
        use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

        if self.cors_origins.is_empty() {
            return None;
        }
        let origins = if self.cors_origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(
                self.cors_origins
                    .iter()
                    .filter_map(|o| http::HeaderValue::from_str(o).ok()),
            )
        };
        Some(
            CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([http::Method::GET, http::Method::POST, http::Method::OPTIONS])
                .allow_headers(AllowHeaders::mirror_request())
                .expose_headers([
                    http::HeaderName::from_static("x-request-id"),
                    http::HeaderName::from_static("sse-stream-id"),
                ])
                .max_age(std::time::Duration::from_secs(600)),
        )
    }
}
