//! A `redis-server` from the system packages, on a free loopback port, for the tests of the
//! Redis stores (stream logs, budgets).
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tower_sse_mock::system::program_or_skip;

/// A `redis-server` of this test, killed when dropped.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    /// A new server, or `None` (the test is skipped, one line says why) when this machine
    /// has no `redis-server`.
    pub fn start() -> Option<Self> {
        program_or_skip(&["redis-server"], "redis-server")?;
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Some(Self::start_on(port))
    }

    pub fn start_on(port: u16) -> Self {
        Self::start_with(port, &["--save", "", "--appendonly", "no"])
    }

    /// A server that keeps every write it acknowledged across a restart (an append-only file
    /// in `dir`, synced on every write).
    pub fn start_persistent_on(port: u16, dir: &str) -> Self {
        let args = [
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            dir,
        ];
        Self::start_with(port, &args)
    }

    pub fn start_with(port: u16, persistence: &[&str]) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(persistence)
            // `DEBUG SLEEP` makes a slow server (Redis 7 refuses DEBUG by default).
            .args(["--enable-debug-command", "local"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let redis = Self { child, port };
        redis.until_up();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn until_up(&self) {
        for _ in 0..500 {
            if self.cli(&["PING"]).is_some_and(|out| out.contains("PONG")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start");
    }

    /// Run `redis-cli` against it; its output, `None` when it could not connect.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        (output.status.success() && !text.contains("Could not connect")).then_some(text)
    }

    pub fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
