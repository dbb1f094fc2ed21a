//! `sse-server`: an SSE server on axum that generates its own events, behind tower-sse's
//! `SseLayer` with full metering (usage, timing, metrics, the response digest into a
//! registry) and a `StreamLimitLayer`: the like-for-like of the streaming-daemon benchmarks'
//! servers (no upstream side), for `tools/scripts/scale-procs.sh` with `SERVER=1`.
//!
//! Every request gets an OpenAI Chat stream: `--tokens` content chunks `--delay-ms` apart
//! (the first one after the delay), then a usage chunk and `[DONE]`. It prints
//! `metrics on http://ADDR/metrics` (its Prometheus text, on a listener of its own) and
//! `listening on http://ADDR`. With `--share-port`, several processes listen on one port
//! (`SO_REUSEPORT`): past one process's descriptor limit.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use clap::Parser;
use http_body::Frame;
use tokio::net::TcpSocket;
use tokio::time::Sleep;
use tower_sse::{
    DigestObserver, DigestRegistry, MetricsObserver, SseLayer, StreamLimitLayer, TimingObserver,
    UsageObserver,
};

/// The command line.
#[derive(Debug, Parser)]
#[command(about = "An SSE server generating its own events behind tower-sse's SseLayer")]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Content chunks per stream.
    #[arg(long, default_value_t = 18)]
    tokens: u32,
    /// Milliseconds between chunks.
    #[arg(long, default_value_t = 5625)]
    delay_ms: u64,
    /// Streams served at once; more are refused with 503.
    #[arg(long, default_value_t = 10_000)]
    max_streams: usize,
    /// Address of the `/metrics` listener.
    #[arg(long, default_value = "127.0.0.1:0")]
    metrics_listen: SocketAddr,
    /// Share `--listen`'s port with other processes (`SO_REUSEPORT`).
    #[arg(long)]
    share_port: bool,
}

/// One stream's events, generated as time passes: one timer per stream.
struct Events {
    id: u64,
    sent: u32,
    tokens: u32,
    delay: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl http_body::Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent > self.tokens {
            return Poll::Ready(None);
        }
        if self.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let this = &mut *self;
        this.sent += 1;
        let id = this.id;
        let event = if this.sent <= this.tokens {
            let deadline = this.sleep.deadline() + this.delay;
            this.sleep.as_mut().reset(deadline);
            format!(
                "data: {{\"id\":\"chatcmpl-{id}\",\"object\":\"chat.completion.chunk\",\"model\":\"sse-server\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token {} \"}}}}]}}\n\n",
                this.sent
            )
        } else {
            format!(
                "data: {{\"id\":\"chatcmpl-{id}\",\"object\":\"chat.completion.chunk\",\"model\":\"sse-server\",\"choices\":[],\"usage\":{{\"prompt_tokens\":8,\"completion_tokens\":{0},\"total_tokens\":{1}}}}}\n\ndata: [DONE]\n\n",
                this.tokens,
                this.tokens + 8
            )
        };
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent > self.tokens
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(std::io::Error::other)?;
    tower_sse::metrics::describe();

    let metrics = tokio::net::TcpListener::bind(cli.metrics_listen).await?;
    println!("metrics on http://{}/metrics", metrics.local_addr()?);
    let render = Router::new().route(
        "/metrics",
        axum::routing::get(move || std::future::ready(recorder.render())),
    );
    tokio::spawn(async move { axum::serve(metrics, render).await });

    let next_id = std::sync::Arc::new(AtomicU64::new(1));
    let (tokens, delay) = (cli.tokens, Duration::from_millis(cli.delay_ms));
    let events = move || {
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let events = Events {
            id,
            sent: 0,
            tokens,
            delay,
            sleep: Box::pin(tokio::time::sleep(delay)),
        };
        std::future::ready(
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::new(events))
                .expect("a static head"),
        )
    };
    let app = Router::new()
        .fallback(events)
        .layer(SseLayer::new().observer((
            UsageObserver::new(),
            TimingObserver::new(),
            DigestObserver::with_registry(DigestRegistry::new()),
            MetricsObserver::new(),
        )))
        .layer(StreamLimitLayer::new(cli.max_streams));

    let socket = if cli.listen.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if cli.share_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(cli.listen)?;
    let listener = socket.listen(4096)?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}
