//! An OpenAI-compatible streaming gateway: every request is forwarded to the upstream with a
//! pooled hyper-util client, and streaming responses (SSE and NDJSON) go through the full
//! tower-sse stack: stream limit, request digest, usage injection, keep-alive, deadlines,
//! usage, timing, digest registry, GenAI metrics and one log line per finished stream.
//!
//! ```sh
//! cargo run --example gateway -- --listen 127.0.0.1:8080 --keep-alive 15 --idle-timeout 30
//! # without --upstream, a mock LLM upstream runs in-process
//! curl -N http://127.0.0.1:8080/v1/chat/completions -d '{"model":"m","stream":true,"messages":[]}'
//! curl http://127.0.0.1:8080/metrics
//! curl http://127.0.0.1:8080/v1/digests/chatcmpl-mock-1
//! # one current-thread runtime per core, each with its own SO_REUSEPORT listener
//! cargo run --release --example gateway -- --runtime per-core --upstream http://127.0.0.1:9000
//! ```

#[path = "support/gateway.rs"]
mod gateway;

use std::net::SocketAddr;
use std::time::Duration;

use gateway::{GatewayConfig, Shared};
use tokio::net::{TcpListener, TcpSocket};

const HELP: &str = "\
gateway: an OpenAI-compatible streaming gateway built from tower-sse's layers

USAGE: cargo run --example gateway -- [OPTIONS]

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

/// Connections waiting to be accepted, per listener (the kernel caps it at somaxconn).
const BACKLOG: u32 = 4096;

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
        None => format!("http://{}", spawn_mock()?).parse().unwrap(),
    };
    match options.runtime {
        RuntimeKind::Multi => run_multi(options),
        RuntimeKind::PerCore => run_per_core(options),
    }
}

/// One multi-thread runtime serving one listener.
fn run_multi(options: Options) -> std::io::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let listener = bind(options.listen, false)?.listen(BACKLOG)?;
            let gateway = gateway::start(listener, options.config, None).await?;
            eprintln!("runtime: multi (one multi-thread runtime)");
            println!("listening on http://{}", gateway.addr);
            tokio::signal::ctrl_c().await
        })
}

/// One current-thread runtime per core, each accepting on its own `SO_REUSEPORT` listener
/// bound to the same address (the kernel spreads connections over them), all sharing one
/// registry, stream limit and metrics recorder.
fn run_per_core(options: Options) -> std::io::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let sockets = bind_reuseport_group(options.listen, cores)?;
    let addr = sockets[0].local_addr()?;
    let shared = Shared::new(options.config, None);
    for (core, socket) in sockets.into_iter().enumerate() {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("gateway-core-{core}"))
            .spawn(move || serve_on_own_runtime(socket, &shared))?;
    }
    eprintln!("runtime: per-core ({cores} current-thread runtimes, SO_REUSEPORT listeners)");
    println!("listening on http://{addr}");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(tokio::signal::ctrl_c())
}

/// `count` sockets bound to `listen` with `SO_REUSEPORT`; with port 0, all on the port the
/// first one got.
fn bind_reuseport_group(listen: SocketAddr, count: usize) -> std::io::Result<Vec<TcpSocket>> {
    let first = bind(listen, true)?;
    let addr = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..count {
        sockets.push(bind(addr, true)?);
    }
    Ok(sockets)
}

/// A bound, not yet listening socket (listening registers it with the runtime that serves it).
fn bind(addr: SocketAddr, reuseport: bool) -> std::io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuseport {
        socket.set_reuseport(true)?;
    }
    socket
        .bind(addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    Ok(socket)
}

/// Serve the gateway on `socket` from a current-thread runtime on this thread, forever.
fn serve_on_own_runtime(socket: TcpSocket, shared: &Shared) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("gateway: cannot start a runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(async {
        let listener: TcpListener = match socket.listen(BACKLOG) {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("gateway: cannot listen: {e}");
                std::process::exit(1);
            }
        };
        gateway::serve(listener, shared.router()).await;
    });
}

/// Start the mock upstream on its own thread and runtime; returns its address.
fn spawn_mock() -> std::io::Result<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("mock-upstream".into())
        .spawn(move || {
            runtime.block_on(async {
                let (addr, _server) =
                    tower_sse_mock::spawn(tower_sse_mock::MockConfig::new()).await;
                let _ = tx.send(addr);
                std::future::pending::<()>().await;
            });
        })?;
    let addr = rx
        .recv()
        .map_err(|_| std::io::Error::other("the mock upstream did not start"))?;
    eprintln!("mock upstream on http://{addr}");
    Ok(addr)
}
