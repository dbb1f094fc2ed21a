//! Connection plumbing: accept on a listener and serve each connection with hyper-util
//! (HTTP/1.1 and HTTP/2) under the limits of [`ConnectionConfig`], surviving accept errors
//! such as running out of file descriptors.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use http::Request;
use hyper::body::Incoming;

use crate::conn::{Activity, Close, Timeouts, Tracked, Watched, watch};
use crate::os::{Warning, fd_limit_text, is_fd_exhaustion};
use crate::proxy_headers::ClientAddr;

/// hyper's smallest read buffer: `max_header_bytes` is raised to it.
const MIN_HEADER_BYTES: usize = 8192;
/// How long a connection closed for idleness may take to say goodbye (HTTP/2 `GOAWAY`).
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What a client connection may do before it is closed or refused, whatever it asks for.
/// Every limit has a safe default; `None` turns a clock off.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// A request head must arrive whole within this time: counted from accept for a new
    /// connection (any protocol), and for HTTP/1.1 from its first byte. Default: 10 s.
    pub header_timeout: Option<Duration>,
    /// Close a connection with no request in flight for this long (HTTP/1.1 keep-alive and
    /// HTTP/2 alike). Keep it longer than the idle timeout of a load balancer in front.
    /// Default: 75 s.
    pub idle_timeout: Option<Duration>,
    /// The largest request head, in bytes: HTTP/1.1 answers `431` beyond it, HTTP/2 refuses
    /// the stream. At least 8192. Default: 64 KiB.
    pub max_header_bytes: usize,
    /// The most header fields in an HTTP/1.1 request head: `431` beyond it. Default: 100
    /// (hyper's). HTTP/2 heads are bounded by `max_header_bytes` only.
    pub max_headers: usize,
    /// The most concurrent streams on one HTTP/2 connection. Default: 100.
    pub h2_max_streams: u32,
    /// Send an HTTP/2 `PING` after this much silence and drop the connection when it is not
    /// answered within the same time. Default: 30 s.
    pub h2_keepalive: Option<Duration>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            header_timeout: Some(Duration::from_secs(10)),
            idle_timeout: Some(Duration::from_secs(75)),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            h2_max_streams: 100,
            h2_keepalive: Some(Duration::from_secs(30)),
        }
    }
}

impl ConnectionConfig {
    /// hyper-util's builder with these limits, and a timer (without one, hyper silently
    /// disables its timeouts and HTTP/2 keep-alive).
    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        let max_header_bytes = self.max_header_bytes.max(MIN_HEADER_BYTES);
        // hyper's own HTTP/1.1 header timer also runs while a connection is idle, so it is
        // only a backstop here, never earlier than the gateway's clocks (see `conn.rs`).
        let backstop = self
            .header_timeout
            .zip(self.idle_timeout)
            .map(|(h, i)| h + i);
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(backstop)
            .max_buf_size(max_header_bytes)
            .max_headers(self.max_headers);
        let mut http2 = builder.http2();
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.h2_max_streams)
            .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
        if let Some(interval) = self.h2_keepalive {
            http2
                .keep_alive_interval(interval)
                .keep_alive_timeout(interval);
        }
        builder
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            head: self.header_timeout,
            idle: self.idle_timeout,
        }
    }
}

/// Accept connections on `listener` and serve `app` on each (HTTP/1.1 and HTTP/2) under the
/// limits of `config`, on the current runtime, forever. Accept errors never make it spin:
/// running out of file descriptors is reported (at most every few seconds) and waited out.
pub async fn serve(listener: TcpListener, app: Router, config: ConnectionConfig) {
    let (_never, stop) = watch::channel(false);
    serve_until(listener, app, config, stop).await
}

/// [`serve`] until `stop` turns `true`: then the listener closes (new connections are
/// refused) and every connection is shut down gracefully (requests in flight, streams
/// included, run to their end; idle keep-alive connections close).
pub async fn serve_until(
    listener: TcpListener,
    app: Router,
    config: ConnectionConfig,
    mut stop: watch::Receiver<bool>,
) {
    let builder = config.builder();
    let timeouts = config.timeouts();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(&mut stop) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                report_accept_error(&e);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(serve_connection(
            builder.clone(),
            timeouts,
            stream,
            app.clone(),
            stop.clone(),
        ));
    }
}

/// Serve one connection until it ends, or until its watch closes it.
async fn serve_connection(
    builder: auto::Builder<TokioExecutor>,
    timeouts: Timeouts,
    stream: TcpStream,
    app: Router,
    mut stop: watch::Receiver<bool>,
) {
    // Small SSE frames must leave at once, not wait for Nagle.
    let _ = stream.set_nodelay(true);
    // Each request learns the client's address (`X-Forwarded-For`).
    let peer = stream.peer_addr().ok().map(ClientAddr);
    let app = tower::ServiceExt::map_request(app, move |mut request: Request<Incoming>| {
        if let Some(peer) = peer {
            request.extensions_mut().insert(peer);
        }
        request
    });
    let activity = Activity::new();
    let io = TokioIo::new(Watched::new(stream, activity.clone()));
    let service = Tracked::new(TowerToHyperService::new(app), activity.clone());
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let watchers = async {
        tokio::select! {
            close = watch(&activity, timeouts) => Some(close),
            () = stopped(&mut stop) => None,
        }
    };
    // Benchmark-only: look at the clocks and the shutdown only when they woke the task.
    #[cfg(feature = "tuned")]
    let watchers = crate::tuned::WhenWoken::new(watchers);
    tokio::pin!(watchers);
    let close = tokio::select! {
        biased;
        _ = connection.as_mut() => return,
        close = watchers => close,
    };
    let Some(close) = close else {
        // The server shuts down: what is in flight runs to its end, nothing new starts.
        connection.as_mut().graceful_shutdown();
        let _ = connection.as_mut().await;
        return;
    };
    match close {
        // Nothing was asked of it yet: dropping it closes the socket.
        Close::HeadTimeout => {}
        Close::Idle => {
            connection.as_mut().graceful_shutdown();
            // Let it say goodbye; a request that slipped in meanwhile is served to its end.
            loop {
                tokio::select! {
                    _ = connection.as_mut() => return,
                    () = tokio::time::sleep(CLOSE_GRACE) => {
                        if activity.in_flight() == 0 {
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Until the server shuts down (or whoever could say so is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard of the value is dropped here, before any other await.
    let _ = stop.wait_for(|stop| *stop).await.map(|_| ());
}

/// Errors of one connection that the listener can ignore.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

fn report_accept_error(e: &std::io::Error) {
    static OUT_OF_FDS: Warning = Warning::new();
    static OTHER: Warning = Warning::new();
    if is_fd_exhaustion(e) {
        OUT_OF_FDS.emit(|| {
            format!(
                "gateway: accept failed: {e}: out of file descriptors (limit {}; every stream \
                 holds two, the client's and the upstream's); raise it with `ulimit -n` before \
                 starting the gateway. Retrying as streams end.",
                fd_limit_text()
            )
        });
    } else {
        OTHER.emit(|| format!("gateway: accept failed: {e}; retrying"));
    }
}
