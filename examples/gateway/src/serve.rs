//! Connection plumbing: accept on a listener and serve each connection with hyper-util
//! (HTTP/1.1 and HTTP/2), surviving accept errors such as running out of file descriptors.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::os::{Warning, fd_limit_text, is_fd_exhaustion};

/// Accept connections on `listener` and serve `app` on each (HTTP/1.1 and HTTP/2), on the
/// current runtime, forever. Accept errors never make it spin: running out of file
/// descriptors is reported (at most every few seconds) and waited out.
pub async fn serve(listener: TcpListener, app: Router) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                report_accept_error(&e);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small SSE frames must leave at once, not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
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
