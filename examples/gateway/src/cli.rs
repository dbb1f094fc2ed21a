//! The command line (clap). Every flag's name, values and default are a public contract:
//! scripts and tests pass them, and `--help` documents them.

use std::net::SocketAddr;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, ValueEnum};
use example_gateway::{GatewayConfig, Stack, TlsRoots, UpstreamVersion};
use tower_sse::cost::PriceTable;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// How the gateway runs on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RuntimeKind {
    /// One multi-thread runtime, one listener.
    Multi,
    /// One current-thread runtime per core, one `SO_REUSEPORT` listener each.
    PerCore,
}

const ENDPOINTS: &str = "\
ENDPOINTS:
  GET /healthz                  200 while the process serves (liveness; cheap)
  GET /metrics                  Prometheus text (on --metrics-listen when given)
  GET /v1/digests/{id}          the digest record of a stream, for the tenant that made it
                                (the same bearer token or x-api-key); 404 otherwise
  GET /v1/budgets/self          the caller's own budgets (--budgets): limits, used, left
  anything else                 forwarded to the upstream through the tower-sse stack";

/// gateway: an OpenAI-compatible streaming gateway built from tower-sse's layers
///
/// Seconds may have a fraction; 0 turns a clock off where the default says so (negative,
/// NaN and infinite values are refused).
#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    override_usage = "gateway [OPTIONS]    (cargo run -p example-gateway -- [OPTIONS])",
    after_help = ENDPOINTS,
    after_long_help = ENDPOINTS,
    args_override_self = true
)]
pub(crate) struct Cli {
    /// address to listen on (default 127.0.0.1:8080)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080", hide_default_value = true,
          value_parser = address)]
    listen: SocketAddr,
    /// upstream base URL (default: start the mock upstream in-process);
    /// give it again for fallbacks, in order of preference: a request
    /// fails over to the next one before its first token, never after
    #[arg(long, value_name = "URL", value_parser = url, action = clap::ArgAction::Append,
          verbatim_doc_comment)]
    pub(crate) upstream: Vec<http::Uri>,
    /// keep-alive comment after this much silence (default 15; 0 = off)
    #[arg(long, value_name = "SECS", value_parser = secs, allow_negative_numbers = true)]
    keep_alive: Option<Secs>,
    /// end streams with no content event within SECS
    #[arg(long, value_name = "SECS", value_parser = secs, allow_negative_numbers = true)]
    first_event_timeout: Option<Secs>,
    /// end streams whose upstream is silent for SECS
    #[arg(long, value_name = "SECS", value_parser = secs, allow_negative_numbers = true)]
    idle_timeout: Option<Secs>,
    /// end streams running longer than SECS
    #[arg(long, value_name = "SECS", value_parser = secs, allow_negative_numbers = true)]
    total_timeout: Option<Secs>,
    /// at most N open streams, then 503 (default 10000; at least 1)
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    max_streams: Option<usize>,
    /// answer streaming requests at once, keep-alives before the upstream
    #[arg(long)]
    early_response: bool,
    /// do not add Cache-Control: no-cache and X-Accel-Buffering: no
    /// to streams that lack them (added by default, so that a
    /// buffering proxy in front, such as nginx, passes events at once)
    #[arg(long, verbatim_doc_comment)]
    no_sse_headers: bool,
    /// make streams resumable: events get ids, the stream id is in the
    /// sse-stream-id header, and a request with Last-Event-ID (or
    /// ?last_event_id=) replays what followed it, then the live tail;
    /// 204 when it cannot (unknown, another tenant's, expired)
    #[arg(long, verbatim_doc_comment)]
    resumable: bool,
    /// keep the digest records, and with --resumable the stream
    /// logs, on this Redis (redis://host:port/) too, so that any
    /// replica serves any lookup or resume; a stream starting while
    /// Redis is down is served, not resumable (sse-resume: off)
    #[arg(long, value_name = "URL", verbatim_doc_comment)]
    redis: Option<String>,
    /// one multi-thread tokio runtime (default), or one current-thread
    /// runtime per CPU core, each accepting on its own SO_REUSEPORT
    /// listener; both share one registry, stream limit and metrics
    #[arg(long, value_name = "multi|per-core", value_enum, default_value_t = RuntimeKind::Multi,
          hide_default_value = true, hide_possible_values = true, verbatim_doc_comment)]
    pub(crate) runtime: RuntimeKind,
    /// share --listen's port with other processes (SO_REUSEPORT):
    /// several gateways behind one port, the kernel spreading the
    /// connections over them (past one process's descriptor limit,
    /// or a new gateway started while the old one drains); without
    /// it a port another process listens on is refused
    #[arg(long, verbatim_doc_comment)]
    pub(crate) share_port: bool,
    /// refuse request bodies larger than N bytes with 413
    /// (default 16777216, 16 MiB)
    #[arg(long, value_name = "N", verbatim_doc_comment)]
    max_body_bytes: Option<usize>,
    /// close a connection whose request head has not arrived whole
    /// within SECS: from accept for a new connection, from its first
    /// byte for the next HTTP/1.1 request (default 10; 0 = off)
    #[arg(long, value_name = "SECS", value_parser = secs, allow_negative_numbers = true,
          verbatim_doc_comment)]
    header_timeout: Option<Secs>,
    /// close connections with no request in flight for SECS; keep it
    /// above a load balancer's idle timeout (default 75; 0 = off)
    #[arg(long, value_name = "SECS", value_parser = secs, allow_negative_numbers = true,
          verbatim_doc_comment)]
    idle_connection_timeout: Option<Secs>,
    /// largest request head: 431 (HTTP/1.1) or a refused stream
    /// (HTTP/2) beyond it; at least 8192 (default 65536)
    #[arg(long, value_name = "N", value_parser = max_header_bytes, verbatim_doc_comment)]
    max_header_bytes: Option<usize>,
    /// most header fields in an HTTP/1.1 request: 431 beyond them
    /// (default 100)
    #[arg(long, value_name = "N", value_parser = at_least_one, verbatim_doc_comment)]
    max_headers: Option<usize>,
    /// allow browser pages of ORIGIN (an origin such as
    /// `https://app.example`, no path) to call
    /// the gateway: preflights answered, Access-Control-* headers
    /// added (EventSource, fetch); repeat for more; * allows any
    #[arg(long, value_name = "ORIGIN", value_parser = origin, verbatim_doc_comment)]
    cors_origin: Vec<String>,
    /// concurrent streams per HTTP/2 connection (default 100)
    #[arg(long, value_name = "N")]
    h2_max_streams: Option<u32>,
    /// HTTP/2 PING after SECS of silence; no answer within SECS
    /// closes the connection (default 30; 0 = off)
    #[arg(long, value_name = "SECS", value_parser = secs, allow_negative_numbers = true,
          verbatim_doc_comment)]
    h2_keepalive: Option<Secs>,
    /// CAs for an https:// upstream: Mozilla's, built in (default),
    /// or the system's store
    #[arg(long, value_name = "webpki|native", value_parser = tls_roots(),
          hide_possible_values = true, verbatim_doc_comment)]
    tls_roots: Option<TlsRoots>,
    /// HTTP version spoken to the upstream, whatever the client
    /// speaks: 1.1 (default; a pool of connections, one per stream in
    /// flight) or 2 (HTTP/2 only: prior knowledge for http://, ALPN
    /// h2 for https://; one connection per runtime multiplexes every
    /// stream, up to the upstream's concurrent-stream limit)
    #[arg(long, value_name = "1.1|2", value_parser = upstream_version(),
          hide_possible_values = true, verbatim_doc_comment)]
    upstream_version: Option<UpstreamVersion>,
    /// serve /metrics (and /healthz) on ADDR instead of --listen
    #[arg(long, value_name = "ADDR", value_parser = address)]
    metrics_listen: Option<SocketAddr>,
    /// log lines on stdout as text (default; no colours unless
    /// stdout is a terminal) or one JSON object per line
    #[arg(long, value_name = "text|json", value_enum, default_value_t = LogFormat::Text,
          hide_default_value = true, hide_possible_values = true, verbatim_doc_comment)]
    pub(crate) log_format: LogFormat,
    /// log lines waiting for stdout, at most N (default 131072);
    /// beyond, lines are dropped and counted in /metrics
    /// (gateway_log_lines_dropped_total), never waited for
    #[arg(long, value_name = "N", value_parser = log_queue, verbatim_doc_comment)]
    pub(crate) log_queue: Option<usize>,
    /// at exit, wait up to SECS for stdout to take the queued log
    /// lines, then exit anyway and say so on stderr (default 5;
    /// 0 = write what stdout takes at once)
    #[arg(long, value_name = "SECS", value_parser = secs, allow_negative_numbers = true,
          verbatim_doc_comment)]
    log_flush_timeout: Option<Secs>,
    /// on SIGTERM, SIGINT or SIGHUP: stop accepting, let open streams run
    /// to their end for up to SECS, then end the rest with an SSE
    /// error event (server_shutdown), report them all, exit 0
    /// (default 30; 0 = end them at once)
    #[arg(long, value_name = "SECS", value_parser = secs, allow_negative_numbers = true,
          verbatim_doc_comment)]
    shutdown_grace: Option<Secs>,
    /// after a client disconnects, read its upstream on for up to
    /// SECS so that the final usage is reported; the stream keeps its
    /// --max-streams permit meanwhile (default 0 = off: cancel)
    #[arg(long, value_name = "SECS", value_parser = secs, allow_negative_numbers = true,
          verbatim_doc_comment)]
    drain: Option<Secs>,
    /// distinct model names kept as metric label values; later
    /// new ones (and names over 128 bytes) are _OTHER (default 100)
    #[arg(long, value_name = "N", verbatim_doc_comment)]
    max_model_labels: Option<usize>,
    /// full: the tower-sse stack (default); bare: no tower-sse layer,
    /// the same server, router and pooled upstream client forwarding
    /// bytes as they come: a benchmark floor, not a gateway (no
    /// stream limit, metering, keep-alive or deadlines)
    #[arg(long, value_name = "full|bare", value_parser = stack(), hide_possible_values = true,
          verbatim_doc_comment)]
    stack: Option<Stack>,
    /// price table (JSON): prices per million tokens per model name
    /// or prefix (`name*`); each stream's cost (integer micro-units)
    /// and tenant go to its log line. Checked at start
    #[arg(long, value_name = "FILE", value_parser = prices, verbatim_doc_comment)]
    prices: Option<PriceTable>,
    /// budgets per tenant or key, a JSON file (tower_sse::budget::
    /// BudgetConfig: limits of requests, tokens and money per rate,
    /// day or month), or TOML when FILE ends in .toml; validated at
    /// start; shared on --redis; money is priced with --prices;
    /// `enforce_mid_stream` in it stops streams past their budget;
    /// `store_timeout_ms` bounds the wait for Redis (250)
    #[arg(long, value_name = "FILE", verbatim_doc_comment)]
    budgets: Option<std::path::PathBuf>,
    /// replace what REGEX matches in the text of content events
    /// with `[REDACTED]` (repeatable); events are held back so that
    /// a match spanning events is seen (as many as its longest
    /// match has bytes, at most 64)
    #[arg(long, value_name = "REGEX", value_parser = pattern, verbatim_doc_comment)]
    redact: Vec<regex::Regex>,
    /// end a stream, as its provider would end a filtered one, at
    /// the first content event whose text matches REGEX (repeatable)
    #[arg(long, value_name = "REGEX", value_parser = pattern, verbatim_doc_comment)]
    stop_on: Vec<regex::Regex>,
    /// export one OpenTelemetry span per stream over OTLP/HTTP
    /// (protobuf) to this collector, e.g. `http://127.0.0.1:4318`
    /// (spans go to its /v1/traces; https:// is checked against
    /// --tls-roots); OTEL_EXPORTER_OTLP_* and OTEL_BSP_* are honoured
    #[arg(long, value_name = "URL", value_parser = url, verbatim_doc_comment)]
    otlp_endpoint: Option<http::Uri>,
}

/// A `REGEX` value (the `regex` crate's syntax).
fn pattern(value: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(value).map_err(|e| e.to_string())
}

impl Cli {
    /// The address to listen on.
    pub(crate) fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// How long the exit waits for stdout to take the queued log lines.
    pub(crate) fn log_flush_timeout(&self) -> Duration {
        self.log_flush_timeout
            .map_or(example_gateway::log_writer::DEFAULT_FLUSH_TIMEOUT, |s| {
                s.0.unwrap_or_default()
            })
    }

    /// The gateway's configuration for `upstream`: the defaults of [`GatewayConfig::new`],
    /// with what the command line gives instead.
    pub(crate) fn config(&self, upstream: http::Uri) -> GatewayConfig {
        let mut config = GatewayConfig::new(upstream);
        let connections = &mut config.connections;
        set(&mut config.keep_alive, self.keep_alive.map(|s| s.0));
        set(
            &mut config.first_event_timeout,
            self.first_event_timeout.map(|s| s.0),
        );
        set(&mut config.idle_timeout, self.idle_timeout.map(|s| s.0));
        set(&mut config.total_timeout, self.total_timeout.map(|s| s.0));
        set(&mut config.max_streams, self.max_streams);
        set(&mut config.max_body_bytes, self.max_body_bytes);
        set(
            &mut connections.header_timeout,
            self.header_timeout.map(|s| s.0),
        );
        set(
            &mut connections.idle_timeout,
            self.idle_connection_timeout.map(|s| s.0),
        );
        set(&mut connections.max_header_bytes, self.max_header_bytes);
        set(&mut connections.max_headers, self.max_headers);
        set(&mut connections.h2_max_streams, self.h2_max_streams);
        set(
            &mut connections.h2_keepalive,
            self.h2_keepalive.map(|s| s.0),
        );
        set(&mut config.tls_roots, self.tls_roots);
        set(&mut config.upstream_version, self.upstream_version);
        set(
            &mut config.shutdown_grace,
            self.shutdown_grace.map(|s| s.0.unwrap_or_default()),
        );
        set(&mut config.drain, self.drain.map(|s| s.0));
        set(&mut config.max_model_labels, self.max_model_labels);
        set(&mut config.stack, self.stack);
        config.early_response = self.early_response;
        config.fallback_upstreams = self.upstream.iter().skip(1).cloned().collect();
        config.sse_headers = !self.no_sse_headers;
        config.cors_origins.clone_from(&self.cors_origin);
        config.resumable = self.resumable;
        config.redis.clone_from(&self.redis);
        config.budgets.clone_from(&self.budgets);
        config.metrics_listen = self.metrics_listen;
        config.prices.clone_from(&self.prices);
        config.text_rules.redact.clone_from(&self.redact);
        config.text_rules.stop_on.clone_from(&self.stop_on);
        config.otlp_endpoint.clone_from(&self.otlp_endpoint);
        config
    }
}

/// Replace a default with the flag's value, when the flag was given.
fn set<T>(field: &mut T, flag: Option<T>) {
    if let Some(value) = flag {
        *field = value;
    }
}

/// A `SECS` value: `None` is "off".
#[derive(Debug, Clone, Copy)]
struct Secs(Option<Duration>);

/// Seconds, with a fraction; 0 is "off". Negative, NaN and infinite values are refused: a
/// typo must not silently turn a clock off.
fn secs(value: &str) -> Result<Secs, String> {
    let secs: f64 = value
        .parse()
        .map_err(|_| format!("takes seconds, got {value:?}"))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!(
            "takes a finite number of seconds, 0 or more (0 = off), got {value:?}"
        ));
    }
    if secs == 0.0 {
        return Ok(Secs(None));
    }
    Duration::try_from_secs_f64(secs)
        .map(|d| Secs(Some(d)))
        .map_err(|_| format!("{value} seconds is too long"))
}

/// A count that must be at least 1 (0 would refuse everything).
fn at_least_one(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("is at least 1 (0 would refuse every stream)".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("takes a number, got {value:?}")),
    }
}

/// A socket address, or a host name and port that resolves to one.
fn address(value: &str) -> Result<SocketAddr, String> {
    std::net::ToSocketAddrs::to_socket_addrs(value)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| format!("not an address: {value:?}"))
}

/// An `http://` or `https://` URL with a host; its path is a base path.
fn url(value: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = value.parse().map_err(|_| format!("not a URL: {value:?}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(format!(
                "takes an http:// or https:// URL, got the scheme {other:?}"
            ));
        }
        None => return Err(format!("takes an http:// or https:// URL, got {value:?}")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("has no host: {value:?}"));
    }
    Ok(uri)
}

/// `*`, or an origin as browsers send it: `scheme://host[:port]`, no path.
fn origin(value: &str) -> Result<String, String> {
    if value == "*" {
        return Ok(value.to_owned());
    }
    let uri: http::Uri = value
        .parse()
        .map_err(|_| format!("not an origin: {value:?}"))?;
    let plain = uri.scheme().is_some()
        && uri.host().is_some()
        && uri.path_and_query().is_none_or(|p| p.as_str() == "/")
        && !value.ends_with('/')
        && http::HeaderValue::from_str(value).is_ok();
    if !plain {
        return Err(format!(
            "takes an origin such as https://app.example:8443 (no path), or *, got {value:?}"
        ));
    }
    Ok(value.to_owned())
}

/// At least one line.
fn log_queue(value: &str) -> Result<usize, String> {
    match value.parse() {
        Ok(0) => Err("is at least 1, got 0".to_string()),
        Ok(lines) => Ok(lines),
        Err(_) => Err(format!("takes a number, got {value:?}")),
    }
}

/// hyper's smallest read buffer is 8192 bytes: a smaller head limit could not be kept.
fn max_header_bytes(value: &str) -> Result<usize, String> {
    let bytes: usize = value
        .parse()
        .map_err(|_| format!("takes a number, got {value:?}"))?;
    if bytes < 8192 {
        return Err(format!("is at least 8192, got {bytes}"));
    }
    Ok(bytes)
}

fn tls_roots() -> impl TypedValueParser<Value = TlsRoots> {
    PossibleValuesParser::new(["webpki", "native"]).map(|roots| match roots.as_str() {
        "native" => TlsRoots::Native,
        _ => TlsRoots::Webpki,
    })
}

fn upstream_version() -> impl TypedValueParser<Value = UpstreamVersion> {
    PossibleValuesParser::new(["1.1", "2"]).map(|version| match version.as_str() {
        "2" => UpstreamVersion::Http2,
        _ => UpstreamVersion::Http1,
    })
}

/// A price table file, read and checked now: a bad one stops the gateway before it starts.
fn prices(path: &str) -> Result<PriceTable, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    PriceTable::from_json(&text).map_err(|e| format!("{path}: {e}"))
}

fn stack() -> impl TypedValueParser<Value = Stack> {
    PossibleValuesParser::new(["full", "bare"]).map(|stack| match stack.as_str() {
        "bare" => Stack::Bare,
        _ => Stack::Full,
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_are_the_configs() {
        let cli = Cli::try_parse_from(["gateway"]).unwrap();
        let upstream: http::Uri = "http://127.0.0.1:9000".parse().unwrap();
        let config = cli.config(upstream.clone());
        let defaults = GatewayConfig::new(upstream);
        assert_eq!(format!("{config:?}"), format!("{defaults:?}"));
        assert_eq!(cli.listen(), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(cli.runtime, RuntimeKind::Multi);
        assert_eq!(cli.log_format, LogFormat::Text);
        assert_eq!(
            cli.log_flush_timeout(),
            example_gateway::log_writer::DEFAULT_FLUSH_TIMEOUT
        );
    }

    #[test]
    fn flags_set_the_config() {
        let cli = Cli::try_parse_from([
            "gateway",
            "--keep-alive",
            "0",
            "--idle-timeout=2.5",
            "--shutdown-grace",
            "0",
            "--max-header-bytes",
            "8192",
            "--tls-roots",
            "native",
            "--stack",
            "bare",
            "--upstream-version",
            "2",
            "--runtime",
            "per-core",
            "--log-format",
            "json",
            "--log-flush-timeout",
            "0",
            "--keep-alive",
            "3",
        ])
        .unwrap();
        let config = cli.config("http://u".parse().unwrap());
        // The last of a repeated flag wins.
        assert_eq!(config.keep_alive, Some(Duration::from_secs(3)));
        assert_eq!(config.idle_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(config.shutdown_grace, Duration::ZERO);
        assert_eq!(config.connections.max_header_bytes, 8192);
        assert_eq!(config.tls_roots, TlsRoots::Native);
        assert_eq!(config.stack, Stack::Bare);
        assert_eq!(config.upstream_version, UpstreamVersion::Http2);
        assert_eq!(cli.runtime, RuntimeKind::PerCore);
        assert_eq!(cli.log_format, LogFormat::Json);
        assert_eq!(cli.log_flush_timeout(), Duration::ZERO);
    }

    #[test]
    fn bad_values_are_refused() {
        for args in [
            &["--upstream", "ftp://x"][..],
            &["--upstream", "x:9000"],
            &["--upstream", "http://"],
            &["--max-streams", "0"],
            &["--idle-timeout", "-1"],
            &["--keep-alive", "NaN"],
            &["--total-timeout", "inf"],
            &["--shutdown-grace", "-0.5"],
            &["--log-flush-timeout", "-1"],
        ] {
            let parsed =
                Cli::try_parse_from(std::iter::once("gateway").chain(args.iter().copied()));
            assert!(parsed.is_err(), "{args:?} was accepted");
        }
        let cli = Cli::try_parse_from(["gateway", "--upstream", "https://h/prefix/v1"]).unwrap();
        assert_eq!(cli.upstream[0].path(), "/prefix/v1");
    }

    /// `--upstream` given several times: the first is the upstream, the others fallbacks in
    /// the order given; once, no fallback (the single-upstream gateway, unchanged).
    #[test]
    fn repeated_upstreams_are_fallbacks_in_order() {
        let cli = Cli::try_parse_from([
            "gateway",
            "--upstream",
            "http://a:1",
            "--upstream",
            "http://b:2",
            "--upstream",
            "https://c/v1",
        ])
        .unwrap();
        assert_eq!(cli.upstream.len(), 3);
        let config = cli.config(cli.upstream[0].clone());
        assert_eq!(config.upstream, "http://a:1");
        let fallbacks: Vec<String> = config
            .fallback_upstreams
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(fallbacks, ["http://b:2/", "https://c/v1"]);
        let cli = Cli::try_parse_from(["gateway", "--upstream", "http://a:1"]).unwrap();
        assert!(
            cli.config(cli.upstream[0].clone())
                .fallback_upstreams
                .is_empty()
        );
    }

    #[test]
    fn prices_are_read_and_checked_at_start() {
        let dir = std::env::temp_dir().join(format!("gateway-prices-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.json");
        std::fs::write(
            &good,
            r#"{"models": {"m*": {"input": "2.5", "output": 10}}}"#,
        )
        .unwrap();
        let cli = Cli::try_parse_from(["gateway", "--prices", good.to_str().unwrap()]).unwrap();
        let config = cli.config("http://u".parse().unwrap());
        let prices = config.prices.expect("--prices sets the table");
        assert_eq!(prices.prices("m-1").map(|p| p.input), Some(2_500_000));

        let bad = dir.join("bad.json");
        std::fs::write(&bad, r#"{"models": {"m": {"input": -1, "output": 1}}}"#).unwrap();
        let Err(error) = Cli::try_parse_from(["gateway", "--prices", bad.to_str().unwrap()]) else {
            panic!("a negative price is refused");
        };
        let error = error.to_string();
        assert!(error.contains("model `m`, price `input`"), "{error}");
        let missing = dir.join("missing.json");
        assert!(Cli::try_parse_from(["gateway", "--prices", missing.to_str().unwrap()]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
