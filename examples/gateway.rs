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
//! ```

#[path = "support/gateway.rs"]
mod gateway;

use std::time::Duration;

use gateway::GatewayConfig;

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
  -h, --help                    this help
";

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

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_target(false)
        .compact()
        .init();

    let mut listen = "127.0.0.1:8080".to_string();
    let mut upstream = None;
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
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(());
            }
            other => fail(&format!("unknown argument {other:?}")),
        }
    }

    // Without an upstream, run the mock one in this process.
    let _mock = match upstream {
        Some(url) => {
            config.upstream = url
                .parse()
                .unwrap_or_else(|_| fail(&format!("--upstream is not a URL: {url:?}")));
            None
        }
        None => {
            let (addr, server) = tower_sse_mock::spawn(tower_sse_mock::MockConfig::new()).await;
            config.upstream = format!("http://{addr}").parse().unwrap();
            eprintln!("mock upstream on http://{addr}");
            Some(server)
        }
    };

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let gateway = gateway::start(listener, config, None).await?;
    println!("listening on http://{}", gateway.addr);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
