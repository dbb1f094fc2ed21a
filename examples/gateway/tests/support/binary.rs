//! The `gateway` binary as a child process, for the tests that run it (each declares this
//! module with `#[path]`: only tests built with the binary's features can name it).
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::support::Process;

/// The gateway binary on `127.0.0.1:0` with `args`, and its base URL once it said
/// `listening on ...`; its log lines are read on (so its stdout never fills) and dropped.
pub fn start(args: &[&str]) -> (Process, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
    command.args(args);
    spawn(command)
}

/// [`start`] for a command built by the test (its arguments and environment), which must be
/// the gateway binary's: `--listen 127.0.0.1:0` is added. Blocks until the address line.
pub fn spawn(mut command: Command) -> (Process, String) {
    // Killed and waited for by `Drop` whatever happens next.
    let mut running = Process(
        command
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the gateway binary starts"),
    );
    let mut stdout = BufReader::new(running.0.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the gateway exited"
        );
        if let Some(addr) = line.trim_end().strip_prefix("listening on ") {
            let base = addr.to_owned();
            std::thread::spawn(move || for _ in stdout.lines() {});
            return (running, base);
        }
    }
}
