//! The `gateway` binary as a child process, for the tests that run it (each declares this
//! module with `#[path]`: only tests built with the binary's features can name it).
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::support::Process;

/// The lines of a gateway's stdout after its `listening on` line.
pub type Stdout = std::io::Lines<BufReader<ChildStdout>>;

/// The `stream ended` lines of one gateway process, and its `answer charged` lines (with
/// `--budgets`, one per answer that was not a stream), as JSON.
pub type Lines = Arc<Mutex<Vec<serde_json::Value>>>;

/// The gateway binary on `127.0.0.1:0` with `args`, and its base URL once it said
/// `listening on ...`; its log lines are read on (so its stdout never fills) and dropped.
pub fn start(args: &[&str]) -> (Process, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
    command.args(args);
    spawn(command)
}

/// [`start`] for a command built by the test (its arguments and environment), which must be
/// the gateway binary's: `--listen 127.0.0.1:0` is added. Blocks until the address line.
pub fn spawn(command: Command) -> (Process, String) {
    let (running, base, stdout) = spawn_reading(command);
    std::thread::spawn(move || stdout.for_each(drop));
    (running, base)
}

/// [`spawn`], handing back the rest of its stdout, which the caller must keep reading (a
/// full pipe blocks the gateway).
pub fn spawn_reading(mut command: Command) -> (Process, String, Stdout) {
    // Killed and waited for by `Drop` whatever happens next.
    let mut running = Process(
        command
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the gateway binary starts"),
    );
    let mut stdout = BufReader::new(running.0.stdout.take().unwrap()).lines();
    let base = loop {
        let line = stdout
            .next()
            .expect("the gateway exited before printing its address")
            .unwrap();
        if let Some(addr) = line.strip_prefix("listening on ") {
            break addr.to_owned();
        }
    };
    (running, base, stdout)
}

/// The gateway binary with JSON logs and these more arguments: the process, its base URL and
/// its `stream ended` and `answer charged` lines (collected as they come).
pub fn json_logging(args: &[&str]) -> (Process, String, Lines) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
    command.args(["--log-format", "json"]).args(args);
    let (running, base, stdout) = spawn_reading(command);
    let ended = Lines::default();
    let sink = ended.clone();
    std::thread::spawn(move || {
        for line in stdout.map_while(Result::ok) {
            if line.contains("stream ended") || line.contains("answer charged") {
                sink.lock()
                    .unwrap()
                    .push(serde_json::from_str(&line).expect("one JSON object per line"));
            }
        }
    });
    (running, base, ended)
}
