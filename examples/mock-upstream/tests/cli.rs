//! The mock upstream as scripts drive it: the binary on port 0, its `listening on http://ADDR`
//! line, and a whole stream over a plain HTTP/1.1 connection.
//!
//! Having an integration test also makes `cargo test` build `target/debug/mock_upstream`
//! with the test command's features, so scripts/e2e_clients.sh runs it without a second build.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Kills the server when the test ends, passed or not.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary with `args` and returns it with the address its first line names.
fn start(args: &[&str]) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mock_upstream"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("the mock upstream starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("a first line");
    let addr = line
        .trim_end()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("not a listening line: {line:?}"))
        .to_owned();
    (server, addr)
}

/// A streaming request naming no model, over HTTP/1.1 with `Connection: close`; the whole
/// response.
fn post_stream(addr: &str) -> String {
    let mut tcp = TcpStream::connect(addr).expect("connects");
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = r#"{"stream":true}"#;
    write!(
        tcp,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).expect("a whole response");
    response
}

#[test]
fn it_prints_its_address_and_streams_the_tokens_its_flags_ask_for() {
    let (_server, addr) = start(&["--tokens", "3", "--delay-ms", "0", "--model", "cli-model"]);
    let response = post_stream(&addr);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("text/event-stream"), "{response}");
    assert!(response.contains("cli-model"), "{response}");
    // The first chunk carries the role and an empty content; each token one content.
    let tokens =
        response.matches("\"content\":\"").count() - response.matches("\"content\":\"\"").count();
    assert_eq!(tokens, 3, "{response}");
    assert!(response.contains("data: [DONE]"), "{response}");
}

#[test]
fn a_bad_flag_exits_with_status_2() {
    let status = Command::new(env!("CARGO_BIN_EXE_mock_upstream"))
        .args(["--tokens", "x"])
        .stderr(Stdio::null())
        .status()
        .expect("runs");
    assert_eq!(status.code(), Some(2));
}
