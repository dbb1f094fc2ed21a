//! An OpenAI-compatible streaming gateway: every request is forwarded to the upstream with a
//! pooled hyper-util client, and streaming responses (SSE and NDJSON) go through the full
//! tower-sse stack: stream limit, request digest, usage injection, keep-alive, deadlines,
//! usage, timing, digest registry, GenAI metrics and one log line per finished stream.
//!
//! ```sh
//! cargo run -p example-gateway -- --listen 127.0.0.1:8080 --keep-alive 15 --idle-timeout 30
//! # without --upstream, a mock LLM upstream runs in-process
//! curl -N http://127.0.0.1:8080/v1/chat/completions -d '{"model":"m","stream":true,"messages":[]}'
//! curl http://127.0.0.1:8080/metrics
//! curl http://127.0.0.1:8080/healthz
//! curl http://127.0.0.1:8080/v1/digests/chatcmpl-mock-1   # with the stream's bearer token, if any
//! # --resumable: events get ids; after a cut, resume with the last one received
//! curl -N http://127.0.0.1:8080/v1/chat/completions -H 'Last-Event-ID: <sse-stream-id>.<seq>'
//! # the release binary lands at target/release/gateway
//! cargo build --release -p example-gateway
//! # one current-thread runtime per core, each with its own SO_REUSEPORT listener
//! target/release/gateway --runtime per-core --upstream http://127.0.0.1:9000
//! ```
//!
//! The stack itself is in `lib.rs`; this file is the command line, `runtime.rs` how it runs.

mod runtime;

// The binary's allocator (feature `mimalloc`, on by default; or `jemalloc`): see Cargo.toml.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use example_gateway::log_fields::PlainFields;
use example_gateway::log_time::CachedSystemTime;
use example_gateway::{GatewayConfig, Stack, TlsRoots};

const HELP: &str = "\
gateway: an OpenAI-compatible streaming gateway built from tower-sse's layers

USAGE: gateway [OPTIONS]    (cargo run -p example-gateway -- [OPTIONS])

OPTIONS:
  --listen ADDR                 address to listen on (default 127.0.0.1:8080)
  --upstream URL                upstream base URL (default: start the mock upstream in-process)
  --keep-alive SECS             keep-alive comment after this much silence (default 15; 0 = off)
  --first-event-timeout SECS    end streams with no content event within SECS
  --idle-timeout SECS           end streams whose upstream is silent for SECS
  --total-timeout SECS          end streams running longer than SECS
  --max-streams N               at most N open streams, then 503 (default 10000)
  --early-response              answer streaming requests at once, keep-alives before the upstream
  --resumable                   make streams resumable: events get ids, the stream id is in the
                                sse-stream-id header, and a request with Last-Event-ID (or
                                ?last_event_id=) replays what followed it, then the live tail;
                                204 when it cannot (unknown, another tenant's, expired)
  --redis URL                   keep the digest records, and with --resumable the stream
                                logs, on this Redis (redis://host:port/) too, so that any
                                replica serves any lookup or resume; a stream starting while
                                Redis is down is served, not resumable (sse-resume: off)
  --runtime multi|per-core      one multi-thread tokio runtime (default), or one current-thread
                                runtime per CPU core, each accepting on its own SO_REUSEPORT
                                listener; both share one registry, stream limit and metrics
  --max-body-bytes N            refuse request bodies larger than N bytes with 413
                                (default 16777216, 16 MiB)
  --header-timeout SECS         close a connection whose request head has not arrived whole
                                within SECS: from accept for a new connection, from its first
                                byte for the next HTTP/1.1 request (default 10; 0 = off)
  --idle-connection-timeout SECS
                                close connections with no request in flight for SECS; keep it
                                above a load balancer's idle timeout (default 75; 0 = off)
  --max-header-bytes N          largest request head: 431 (HTTP/1.1) or a refused stream
                                (HTTP/2) beyond it; at least 8192 (default 65536)
  --h2-max-streams N            concurrent streams per HTTP/2 connection (default 100)
  --h2-keepalive SECS           HTTP/2 PING after SECS of silence; no answer within SECS
                                closes the connection (default 30; 0 = off)
  --tls-roots webpki|native     CAs for an https:// upstream: Mozilla's, built in (default),
                                or the system's store
  --metrics-listen ADDR         serve /metrics (and /healthz) on ADDR instead of --listen
  --log-format text|json        log lines on stdout as text (default; no colours unless
                                stdout is a terminal) or one JSON object per line
  --shutdown-grace SECS         on SIGTERM or SIGINT: stop accepting, let open streams run
                                to their end for up to SECS, then end the rest with an SSE
                                error event (server_shutdown), report them all, exit 0
                                (default 30; 0 = end them at once)
  --drain SECS                  after a client disconnects, read its upstream on for up to
                                SECS so that the final usage is reported; the stream keeps its
                                --max-streams permit meanwhile (default 0 = off: cancel)
  --max-model-labels N          distinct model names kept as metric label values; later
                                new ones (and names over 128 bytes) are _OTHER (default 100)
  --stack full|bare             full: the tower-sse stack (default); bare: no tower-sse layer,
                                the same server, router and pooled upstream client forwarding
                                bytes as they come: a benchmark floor, not a gateway (no
                                stream limit, metering, keep-alive or deadlines)
  -h, --help                    this help

ENDPOINTS:
  GET /healthz                  200 while the process serves (liveness; cheap)
  GET /metrics                  Prometheus text (on --metrics-listen when given)
  GET /v1/digests/{id}          the digest record of a stream, for the tenant that made it
                                (the same bearer token or x-api-key); 404 otherwise
  anything else                 forwarded to the upstream through the tower-sse stack
";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// How the gateway runs on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RuntimeKind {
    /// One multi-thread runtime, one listener.
    Multi,
    /// One current-thread runtime per core, one `SO_REUSEPORT` listener each.
    PerCore,
}

/// What the command line asks for.
struct Options {
    listen: SocketAddr,
    upstream: Option<String>,
    config: GatewayConfig,
    runtime: RuntimeKind,
    log_format: LogFormat,
}

/// Seconds; 0 (or less) is `None`, "off".
fn secs(value: &str, flag: &str) -> Option<Duration> {
    let secs: f64 = value
        .parse()
        .unwrap_or_else(|_| fail(&format!("{flag} takes seconds, got {value:?}")));
    if secs.is_nan() || secs <= 0.0 {
        return None;
    }
    Some(
        Duration::try_from_secs_f64(secs)
            .unwrap_or_else(|_| fail(&format!("{flag}: {value} seconds is too long"))),
    )
}

fn number<T: FromStr>(value: &str, flag: &str) -> T {
    value
        .parse()
        .unwrap_or_else(|_| fail(&format!("{flag} takes a number, got {value:?}")))
}

fn address(value: &str, flag: &str) -> SocketAddr {
    std::net::ToSocketAddrs::to_socket_addrs(value)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| fail(&format!("{flag} is not an address: {value:?}")))
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}\n\n{HELP}");
    std::process::exit(2)
}

/// Parse the command line; `None` after printing the help.
fn parse_args() -> Option<Options> {
    let mut listen = "127.0.0.1:8080".to_string();
    let mut upstream = None;
    let mut runtime = RuntimeKind::Multi;
    let mut log_format = LogFormat::Text;
    let mut config = GatewayConfig::new("http://127.0.0.1:9000".parse().unwrap());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| fail(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--listen" => listen = value(),
            "--upstream" => upstream = Some(value()),
            "--keep-alive" => config.keep_alive = secs(&value(), "--keep-alive"),
            "--first-event-timeout" => {
                config.first_event_timeout = secs(&value(), "--first-event-timeout")
            }
            "--idle-timeout" => config.idle_timeout = secs(&value(), "--idle-timeout"),
            "--total-timeout" => config.total_timeout = secs(&value(), "--total-timeout"),
            "--max-streams" => config.max_streams = number(&value(), "--max-streams"),
            "--shutdown-grace" => {
                config.shutdown_grace = secs(&value(), "--shutdown-grace").unwrap_or(Duration::ZERO)
            }
            "--drain" => config.drain = secs(&value(), "--drain"),
            "--max-model-labels" => {
                config.max_model_labels = number(&value(), "--max-model-labels")
            }
            "--max-body-bytes" => config.max_body_bytes = number(&value(), "--max-body-bytes"),
            "--header-timeout" => {
                config.connections.header_timeout = secs(&value(), "--header-timeout")
            }
            "--idle-connection-timeout" => {
                config.connections.idle_timeout = secs(&value(), "--idle-connection-timeout")
            }
            "--max-header-bytes" => {
                let bytes = number(&value(), "--max-header-bytes");
                if bytes < 8192 {
                    fail(&format!("--max-header-bytes is at least 8192, got {bytes}"));
                }
                config.connections.max_header_bytes = bytes;
            }
            "--h2-max-streams" => {
                config.connections.h2_max_streams = number(&value(), "--h2-max-streams")
            }
            "--h2-keepalive" => config.connections.h2_keepalive = secs(&value(), "--h2-keepalive"),
            "--tls-roots" => {
                config.tls_roots = match value().as_str() {
                    "webpki" => TlsRoots::Webpki,
                    "native" => TlsRoots::Native,
                    other => fail(&format!("--tls-roots is webpki or native, got {other:?}")),
                }
            }
            "--metrics-listen" => {
                config.metrics_listen = Some(address(&value(), "--metrics-listen"))
            }
            "--log-format" => {
                log_format = match value().as_str() {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    other => fail(&format!("--log-format is text or json, got {other:?}")),
                }
            }
            "--early-response" => config.early_response = true,
            "--resumable" => config.resumable = true,
            "--redis" => config.redis = Some(value()),
            "--stack" => {
                config.stack = match value().as_str() {
                    "full" => Stack::Full,
                    "bare" => Stack::Bare,
                    other => fail(&format!("--stack is full or bare, got {other:?}")),
                }
            }
            "--runtime" => {
                runtime = match value().as_str() {
                    "multi" => RuntimeKind::Multi,
                    "per-core" => RuntimeKind::PerCore,
                    other => fail(&format!("--runtime is multi or per-core, got {other:?}")),
                }
            }
            "-h" | "--help" => {
                print!("{HELP}");
                return None;
            }
            other => fail(&format!("unknown argument {other:?}")),
        }
    }
    let listen = address(&listen, "--listen");
    Some(Options {
        listen,
        upstream,
        config,
        runtime,
        log_format,
    })
}

/// Log lines go to stdout: text, with colours only on a terminal (and without `NO_COLOR`),
/// or one JSON object per line.
fn init_logging(format: LogFormat) {
    let ansi = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_target(false)
        .with_ansi(ansi)
        .with_timer(CachedSystemTime);
    match format {
        LogFormat::Text if ansi => builder.compact().init(),
        // The same `name=value` text as tracing-subscriber's default fields, written straight
        // (see `log_fields`).
        LogFormat::Text => builder.compact().fmt_fields(PlainFields).init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> std::io::Result<()> {
    let Some(mut options) = parse_args() else {
        return Ok(());
    };
    init_logging(options.log_format);
    options.config.upstream = match &options.upstream {
        Some(url) => url
            .parse()
            .unwrap_or_else(|_| fail(&format!("--upstream is not a URL: {url:?}"))),
        // Without an upstream, run the mock one in this process.
        None => format!("http://{}", runtime::spawn_mock()?)
            .parse()
            .unwrap(),
    };
    match options.runtime {
        RuntimeKind::Multi => runtime::run_multi(options.listen, options.config),
        RuntimeKind::PerCore => runtime::run_per_core(options.listen, options.config),
    }
}
