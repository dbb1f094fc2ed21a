//! Helpers shared by the gateway's tests: child processes that never outlive their test,
//! free loopback ports, and an in-process gateway whose reports the test reads.
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::process::Child;

use example_gateway::{Gateway, GatewayConfig};
use tokio::sync::mpsc;
use tower_sse::StreamReport;

/// A child process (a `gateway` binary, a `redis-server`), killed and waited for when
/// dropped, whatever the test does next.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nothing listens on right now (for programs that take a port, not a
/// listener).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The gateway in process on `127.0.0.1:0`, and the receiver of its reports (one per stream).
pub async fn start(config: GatewayConfig) -> (Gateway, mpsc::UnboundedReceiver<StreamReport>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    (
        example_gateway::start(listener, config, Some(tx))
            .await
            .unwrap(),
        rx,
    )
}
