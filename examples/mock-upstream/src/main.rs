//! A mock LLM upstream on a TCP port, for trying the middleware by hand and for load runs.
//!
//! ```text
//! cargo run -p example-mock-upstream -- --listen 127.0.0.1:9000 --tokens 64 --delay-ms 20
//! curl -N localhost:9000/v1/chat/completions -d '{"model":"m","stream":true}'
//! ```
//!
//! `--help` lists the routes and the per-request controls; every control is also a flag that
//! sets the server's default.

use std::net::SocketAddr;
use std::process::ExitCode;

use tower_sse_mock::{CONTROLS, MockConfig};

const DEFAULT_LISTEN: &str = "127.0.0.1:9000";

fn usage() -> String {
    let mut text = format!(
        "mock_upstream: an LLM-like streaming server (tower-sse-mock)\n\n\
         Usage: mock_upstream [OPTIONS]    (cargo run -p example-mock-upstream -- [OPTIONS])\n\n\
         Options:\n  \
         --listen ADDR           address to bind (default {DEFAULT_LISTEN})\n  \
         --model NAME            model named when a request names none (default mock-model)\n"
    );
    for control in CONTROLS {
        let flag = format!("--{} V", control.name.replace('_', "-"));
        text.push_str(&format!("  {flag:<23} default for `{}`\n", control.name));
    }
    text.push_str("  -h, --help              this text\n\n");
    text.push_str(&tower_sse_mock::help());
    text
}

/// What the command line asks for.
struct Args {
    listen: SocketAddr,
    config: MockConfig,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut listen = DEFAULT_LISTEN.to_owned();
    let mut config = MockConfig::new();
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        let Some(flag) = arg.strip_prefix("--") else {
            return Err(format!("unexpected argument `{arg}`"));
        };
        let (name, value) = match flag.split_once('=') {
            Some((name, value)) => (name.to_owned(), value.to_owned()),
            None => {
                let value = args
                    .next()
                    .ok_or_else(|| format!("`--{flag}` needs a value"))?;
                (flag.to_owned(), value)
            }
        };
        match name.as_str() {
            "listen" => listen = value,
            "model" => config = config.model(value),
            control => config = config.control(control, &value).map_err(|e| e.to_string())?,
        }
    }
    let listen = listen
        .parse()
        .map_err(|e| format!("`--listen {listen}`: {e}"))?;
    Ok(Some(Args { listen, config }))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("error: {message}\n\nTry --help.");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(args.listen);
    println!("listening on http://{addr}");
    tokio::select! {
        result = tower_sse_mock::serve(listener, args.config) => {
            if let Err(e) = result {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
        _ = tokio::signal::ctrl_c() => {}
    }
    ExitCode::SUCCESS
}
