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
//! curl http://127.0.0.1:8080/v1/digests/chatcmpl-mock-1
//! # the release binary lands at target/release/gateway
//! cargo build --release -p example-gateway
//! # one current-thread runtime per core, each with its own SO_REUSEPORT listener
//! target/release/gateway --runtime per-core --upstream http://127.0.0.1:9000
//! ```
//!
//! The stack itself is in `lib.rs`; this file is the command line, `runtime.rs` how it runs.

mod runtime;

use std::net::SocketAddr;
use std::time::Duration;

use example_gateway::GatewayConfig;

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
  --runtime multi|per-core      one multi-thread tokio runtime (default), or one current-thread
                                runtime per CPU core, each accepting on its own SO_REUSEPORT
                                listener; both share one registry, stream limit and metrics
  -h, --help                    this help
";

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
}

fn secs(value: &str, flag: &str) -> Option<Duration> {
    let secs: f64 = value
        .parse()
        .unwrap_or_else(|_| fail(&format!("{flag} takes seconds, got {value:?}")));
    (secs > 0.0).then(|| Duration::from_secs_f64(secs))
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
            "--max-streams" => {
                let value = value();
                config.max_streams = value.parse().unwrap_or_else(|_| {
                    fail(&format!("--max-streams takes a number, got {value:?}"))
                });
            }
            "--early-response" => config.early_response = true,
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
    let listen = std::net::ToSocketAddrs::to_socket_addrs(&listen)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| fail(&format!("--listen is not an address: {listen:?}")));
    Some(Options {
        listen,
        upstream,
        config,
        runtime,
    })
}

fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_target(false)
        .compact()
        .init();
    let Some(mut options) = parse_args() else {
        return Ok(());
    };
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
