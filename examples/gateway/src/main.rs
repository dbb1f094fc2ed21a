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
//! The stack itself is in `lib.rs`; `cli.rs` is the command line, `runtime.rs` how it runs,
//! and this file starts them with the logging.

mod cli;
mod runtime;

// The binary's allocator (feature `mimalloc` or `jemalloc`, both off by default): see
// Cargo.toml.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use example_gateway::log_writer::{self, FlushGuard, LogWriter};

use cli::{Cli, LogFormat, RuntimeKind};

/// Colours only on a terminal, and without `NO_COLOR`.
fn ansi() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Log lines go to stdout: tracing-subscriber's compact text, or one JSON object per line,
/// written by the log writer's thread (never on a runtime thread: see
/// `example_gateway::log_writer`, which also says what happens when stdout is too slow).
/// Keep the guard until the end: dropping it writes the lines still queued.
#[cfg(not(feature = "tuned"))]
fn init_logging(format: LogFormat, queue: usize) -> std::io::Result<FlushGuard> {
    let (writer, guard) = LogWriter::stdout(queue)?;
    let builder = tracing_subscriber::fmt()
        .with_target(false)
        .with_ansi(ansi())
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.compact().init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(guard)
}

/// Log lines go to stdout, as without `tuned`, through the benchmark-only formatters: the
/// same text, fewer instructions (see `example_gateway::tuned`).
#[cfg(feature = "tuned")]
fn init_logging(format: LogFormat, queue: usize) -> std::io::Result<FlushGuard> {
    use example_gateway::tuned::log_fields::PlainFields;
    use example_gateway::tuned::log_time::CachedSystemTime;

    let (writer, guard) = LogWriter::stdout(queue)?;
    let ansi = ansi();
    let builder = tracing_subscriber::fmt()
        .with_target(false)
        .with_ansi(ansi)
        .with_timer(CachedSystemTime)
        .with_writer(writer);
    match format {
        LogFormat::Text if ansi => builder.compact().init(),
        LogFormat::Text => builder.compact().fmt_fields(PlainFields).init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(guard)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Dropped when `main` returns, after the runtimes: the queued log lines are written.
    let queue = cli.log_queue.unwrap_or(log_writer::DEFAULT_CAPACITY);
    let _logs = match init_logging(cli.log_format, queue) {
        Ok(guard) => guard.flush_timeout(cli.log_flush_timeout()),
        Err(e) => return failed(&e),
    };
    let upstream = match cli.upstream.first() {
        Some(url) => url.clone(),
        // Without an upstream, run the mock one in this process.
        None => match runtime::spawn_mock() {
            Ok(addr) => format!("http://{addr}")
                .parse()
                .expect("an address is a URL"),
            Err(e) => return failed(&e),
        },
    };
    let config = cli.config(upstream);
    let ran = match cli.runtime {
        RuntimeKind::Multi => runtime::run_multi(cli.listen(), cli.share_port, config),
        RuntimeKind::PerCore => runtime::run_per_core(cli.listen(), cli.share_port, config),
    };
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failed(&e),
    }
}

/// Say why the gateway could not run (such as an address in use, or an `https://` upstream
/// in a build without TLS), and exit 1.
fn failed(e: &std::io::Error) -> ExitCode {
    eprintln!("gateway: {e}");
    ExitCode::FAILURE
}
