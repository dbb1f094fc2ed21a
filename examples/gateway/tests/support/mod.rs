//! Helpers shared by the gateway's tests: child processes that never outlive their test,
//! free loopback ports, a `redis-server`, a plain-thread SSE upstream, files in the temp
//! directory, and an in-process gateway whose reports the test reads.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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

/// An HTTP/1.1 upstream on plain threads: each request is read whole, counted in `hits`,
/// and answered with `body` as one SSE response (`content-length`, then the connection
/// closes). Its base URL.
pub fn sse_upstream(body: String, hits: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let body: Arc<str> = body.into();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (hits, body) = (hits.clone(), body.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(value) = lower.strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut request = vec![0; length];
                let _ = reader.read_exact(&mut request);
                hits.fetch_add(1, Ordering::SeqCst);
                let mut stream = reader.into_inner();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    format!("http://{addr}")
}

/// `text` in a file of the temp directory named after this process, `name` and `extension`.
pub fn temp_file(name: &str, extension: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "gateway-test-{}-{name}.{extension}",
        std::process::id()
    ));
    std::fs::write(&path, text).unwrap();
    path
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

/// A `redis-server` on a free port and its URL, or `None` (the test is skipped, one line
/// says why) when this machine has no `redis-server`.
pub fn redis() -> Option<(Process, String)> {
    tower_sse_mock::system::program_or_skip(&["redis-server"], "redis-server")?;
    let port = free_port();
    let redis = redis_server(port, &["--save", "", "--appendonly", "no"]);
    Some((redis, format!("redis://127.0.0.1:{port}/")))
}

/// A `redis-server` on 127.0.0.1:`port` with these more arguments, once it accepts
/// connections.
pub fn redis_server(port: u16, args: &[&str]) -> Process {
    let redis = Process(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts"),
    );
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return redis;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("redis-server did not start");
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
