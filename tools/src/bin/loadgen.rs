//! A load generator for streaming LLM endpoints: N concurrent clients, started evenly over a
//! ramp-up, each streaming one response (or back to back for a hold time, or K times), in
//! any of the mock upstream's five formats, through the gateway or straight to the mock.
//!
//! ```sh
//! cargo run --release -p tower-sse-tools --bin loadgen -- --url http://127.0.0.1:8080 --streams 1000 \
//!     --ramp 10 --hold 30 --tokens 16 --delay-ms 1000 --output run.json
//! ```
//!
//! Per stream it records the time to the response head (TTFB), to the first content-bearing
//! event (TTFT, decoded with `tower_sse::sse::Decoder` and classified with
//! `tower_sse::provider::Provider`), the duration, events, bytes, keep-alive comments and an outcome:
//!
//! | outcome | meaning |
//! |---|---|
//! | `ok` | the format's terminal event arrived and the body ended cleanly |
//! | `connect` | no connection (refused, out of file descriptors or ports, ...) |
//! | `status` | a non-2xx answer other than 503 |
//! | `rejected` | 503 (the gateway's stream limit) |
//! | `timeout` | the stream outlived `--timeout` |
//! | `truncated` | the body ended without the terminal event, or failed |
//! | `error-event` | the last event was an error (`event: error`, or `{"error":...}` data) |
//! | `client-disconnect` | this client hung up on purpose (`--faults`) |
//!
//! It prints p50/p95/p99 of TTFB, TTFT and duration, the success rate and the outcomes, and
//! with `--output` writes the same as JSON, with one open-streams sample per second. Streams
//! are tasks on one multi-thread runtime with a pooled hyper-util HTTP/1 client per source
//! address: per stream there is a socket, a small decoder and a record of about 80 bytes.
//!
//! With `--http2` it speaks HTTP/2 without an upgrade (h2c, prior knowledge) and puts
//! `--streams-per-conn` clients (100 by default) on each connection: `streams / N`
//! connections (rounded up), each carrying N concurrent streams, checked and reported as over
//! HTTP/1.1. A load balancer or a browser in front of the gateway does the same.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::error::ErrorKind;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, ValueEnum};
use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::{Map, Value, json};
use tower_sse::provider::Provider;
use tower_sse::sse::{Decoder, EventRef, ItemRef};

use tower_sse_tools::os::{
    EADDRNOTAVAIL, EMFILE, ENFILE, Warning, fd_limit, fd_limit_text, io_source,
};

/// File descriptors kept for things other than streams (stdio, epoll, the runtime).
const FD_MARGIN: u64 = 64;
/// Clients per HTTP/2 connection unless `--streams-per-conn` says otherwise: the gateway's
/// default `--h2-max-streams`.
const DEFAULT_STREAMS_PER_CONN: usize = 100;
/// How long a client waits after a failed connect or an error status before its next stream.
const RETRY_BACKOFF: Duration = Duration::from_millis(250);

// ---------------------------------------------------------------------------------------
// Formats

/// The stream format asked for: which route, which body, which event ends the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Chat,
    Responses,
    Anthropic,
    Gemini,
    Ollama,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Responses => "responses",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
            Self::Ollama => "ollama",
        }
    }

    /// The mock's route for this format.
    fn path(self) -> &'static str {
        match self {
            Self::Chat => "/v1/chat/completions",
            Self::Responses => "/v1/responses",
            Self::Anthropic => "/v1/messages",
            Self::Gemini => "/v1beta/models/gemini-mock:streamGenerateContent?alt=sse",
            Self::Ollama => "/api/chat",
        }
    }

    /// A streaming request body of this format carrying the `mock` controls.
    fn body(self, mock: &Map<String, Value>) -> Bytes {
        let prompt = "Tell me about streaming.";
        let messages = json!([{"role": "user", "content": prompt}]);
        let body = match self {
            Self::Chat => json!({"model": "gpt-mock", "stream": true, "messages": messages}),
            Self::Responses => json!({"model": "o-mock", "stream": true, "input": prompt}),
            Self::Anthropic => {
                json!({"model": "claude-mock", "stream": true, "max_tokens": 256, "messages": messages})
            }
            Self::Gemini => json!({"contents": [{"role": "user", "parts": [{"text": prompt}]}]}),
            Self::Ollama => json!({"model": "llama-mock", "stream": true, "messages": messages}),
        };
        let mut body = body;
        if !mock.is_empty() {
            body["mock"] = Value::Object(mock.clone());
        }
        Bytes::from(body.to_string())
    }

    /// Whether this event ends a complete stream of this format: the format's terminal event
    /// as tower-sse knows it, or for Gemini (which has none) the chunk with a finish reason.
    fn is_terminal(self, provider: Provider, event: &EventRef<'_>) -> bool {
        match self {
            Self::Gemini => contains(event.data_bytes(), b"\"finishReason\""),
            _ => provider.is_terminal(event),
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

/// An in-band error: `event: error` (tower-sse's error events, OpenAI Responses,
/// Anthropic) or a `{"error":...}` payload (OpenAI Chat, Gemini, Ollama).
fn is_error_event(event: &EventRef<'_>) -> bool {
    event.event_bytes() == b"error" || event.data_bytes().starts_with(b"{\"error\"")
}

// ---------------------------------------------------------------------------------------
// Options

/// What the run does, from the command line.
#[derive(Debug, Clone)]
struct Options {
    url: Uri,
    format: Format,
    /// `--header`: more request headers, sent with every stream.
    headers: Vec<(HeaderName, HeaderValue)>,
    streams: usize,
    ramp: Duration,
    hold: Duration,
    repeat: Option<u32>,
    warm_up: u32,
    timeout: Duration,
    source_ips: Vec<IpAddr>,
    /// HTTP/2 (prior knowledge) with this many clients per connection; `None`: HTTP/1.1.
    http2: Option<usize>,
    faults: f64,
    seed: u64,
    mock: Map<String, Value>,
    output: Option<String>,
    quiet: bool,
    /// `--read-buf`: the exact read buffer of each HTTP/1.1 connection.
    read_buf: Option<usize>,
}

const MOCK_HEADING: &str = "MOCK CONTROLS (sent in the request body's \"mock\" object)";

/// loadgen: concurrent streaming clients against an LLM-style endpoint (the gateway or the mock)
#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    override_usage = "loadgen [OPTIONS]    (cargo run --release -p tower-sse-tools --bin loadgen -- [OPTIONS])",
    after_help = "\
Success rate = ok streams / streams without an injected fault; faulted streams are reported
by fault and outcome. TTFB and TTFT percentiles cover every stream that got that far;
duration percentiles cover ok streams.",
    args_override_self = true
)]
struct Cli {
    /// base URL (default http://127.0.0.1:8080)
    #[arg(long, value_name = "URL", help_heading = "TARGET", value_parser = url,
          default_value = "http://127.0.0.1:8080", hide_default_value = true)]
    url: Uri,
    /// chat | responses | anthropic | gemini | ollama (default chat)
    #[arg(long, value_name = "F", help_heading = "TARGET", value_enum,
          default_value_t = Format::Chat, hide_default_value = true, hide_possible_values = true)]
    format: Format,
    /// a request header sent with every stream (repeatable), e.g.
    /// `--header 'authorization: Bearer sk-test'` (a tenant for the
    /// gateway's budgets and digests)
    #[arg(long, value_name = "NAME:VALUE", help_heading = "TARGET", value_parser = header,
          action = ArgAction::Append, verbatim_doc_comment)]
    header: Vec<(HeaderName, HeaderValue)>,

    /// concurrent clients (default 100)
    #[arg(long, value_name = "N", help_heading = "LOAD", value_parser = at_least_one,
          default_value = "100", hide_default_value = true)]
    streams: usize,
    /// start the clients evenly over SECS (default 0)
    #[arg(long, value_name = "SECS", help_heading = "LOAD", value_parser = secs,
          default_value = "0", hide_default_value = true)]
    ramp: Duration,
    /// each client streams back to back until ramp + hold has passed
    /// (default 0: one stream per client)
    #[arg(long, value_name = "SECS", help_heading = "LOAD", value_parser = secs,
          default_value = "0", hide_default_value = true, verbatim_doc_comment)]
    hold: Duration,
    /// each client runs exactly K streams back to back (instead of --hold)
    #[arg(long, value_name = "K", help_heading = "LOAD")]
    repeat: Option<u32>,
    /// each client first runs K streams that are not recorded (its
    /// connection is then open and the path warm; default 0)
    #[arg(
        long,
        value_name = "K",
        help_heading = "LOAD",
        default_value = "0",
        hide_default_value = true,
        verbatim_doc_comment
    )]
    warm_up: u32,
    /// limit per stream, request to end of body (default 120); after a
    /// failed connect or an error status (503 included) a client waits
    /// 250 ms before its next stream
    #[arg(long, value_name = "SECS", help_heading = "LOAD", value_parser = secs,
          default_value = "120", hide_default_value = true, verbatim_doc_comment)]
    timeout: Duration,
    /// spread connections over these local addresses (e.g. 127.0.0.2,
    /// 127.0.0.3), one connection pool each, clients round-robin: about
    /// 28k connections per source address fit in the ephemeral port range
    #[arg(long, value_name = "A,B,...", help_heading = "LOAD", value_parser = source_ips,
          verbatim_doc_comment)]
    source_ips: Option<SourceIps>,
    /// speak HTTP/2 without upgrade (h2c, prior knowledge), several
    /// clients' streams multiplexed on each connection (default HTTP/1.1,
    /// one connection per client)
    #[arg(long, help_heading = "LOAD", verbatim_doc_comment)]
    http2: bool,
    /// with --http2: clients per connection, so streams / N connections
    /// (rounded up) each carry N concurrent streams (default 100)
    #[arg(long, value_name = "N", help_heading = "LOAD", value_parser = at_least_one,
          requires = "http2", verbatim_doc_comment)]
    streams_per_conn: Option<usize>,
    /// probability per stream of one injected fault, picked evenly:
    /// mock stall_after, error_after or close_after (after 1 to 4 events),
    /// or a client disconnect after 1 to 4 events (default 0)
    #[arg(long, value_name = "P", help_heading = "LOAD", value_parser = probability,
          default_value = "0", hide_default_value = true, verbatim_doc_comment)]
    faults: f64,
    /// seed of the fault choices (default 1)
    #[arg(
        long,
        value_name = "N",
        help_heading = "LOAD",
        default_value = "1",
        hide_default_value = true
    )]
    seed: u64,
    /// HTTP/1.1 clients read each connection into a buffer of exactly
    /// this many bytes (hyper's `http1_read_buf_exact_size`, no 8 KiB
    /// floor), instead of hyper's adaptive buffer (8 KiB, growing)
    #[arg(long, value_name = "BYTES", help_heading = "LOAD", conflicts_with = "http2",
          value_parser = at_least_one, verbatim_doc_comment)]
    read_buf: Option<usize>,

    /// content tokens per stream
    #[arg(long, value_name = "N", help_heading = MOCK_HEADING)]
    tokens: Option<String>,
    /// pause before each content token
    #[arg(long, value_name = "MS", help_heading = MOCK_HEADING)]
    delay_ms: Option<String>,
    /// pause before the response head
    #[arg(long, value_name = "MS", help_heading = MOCK_HEADING)]
    headers_delay_ms: Option<String>,
    /// whole | random | N
    #[arg(long, value_name = "C", help_heading = MOCK_HEADING)]
    chunking: Option<String>,
    /// any other control (repeatable), e.g. --mock stall_after=3
    #[arg(long, value_name = "KEY=VALUE", help_heading = MOCK_HEADING, value_parser = key_value,
          action = ArgAction::Append)]
    mock: Vec<(String, String)>,

    /// write the summary, outcomes and per-second open-stream samples as JSON
    #[arg(long, value_name = "FILE", help_heading = "OUTPUT")]
    output: Option<String>,
    /// no progress line each second (the summary is always printed)
    #[arg(long, help_heading = "OUTPUT")]
    quiet: bool,
}

/// `--source-ips`: one flag, a comma-separated list.
#[derive(Debug, Clone)]
struct SourceIps(Vec<IpAddr>);

fn url(value: &str) -> Result<Uri, String> {
    value
        .trim_end_matches('/')
        .parse()
        .map_err(|_| format!("not a URL: {value:?}"))
}

fn number<T: std::str::FromStr>(value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("takes a number, got {value:?}"))
}

fn at_least_one(value: &str) -> Result<usize, String> {
    match number(value)? {
        0 => Err("must be at least 1".to_owned()),
        n => Ok(n),
    }
}

fn secs(value: &str) -> Result<Duration, String> {
    let secs: f64 = number(value)?;
    if !(secs >= 0.0 && secs.is_finite()) {
        return Err(format!("takes seconds >= 0, got {value:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn source_ips(value: &str) -> Result<SourceIps, String> {
    value
        .split(',')
        .filter(|ip| !ip.is_empty())
        .map(|ip| number(ip.trim()))
        .collect::<Result<_, _>>()
        .map(SourceIps)
}

fn probability(value: &str) -> Result<f64, String> {
    let p: f64 = number(value)?;
    if !(0.0..=1.0).contains(&p) {
        return Err("is a probability between 0 and 1".to_owned());
    }
    Ok(p)
}

fn header(value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = value
        .split_once(':')
        .ok_or_else(|| format!("takes NAME:VALUE, got {value:?}"))?;
    let name = HeaderName::try_from(name.trim()).map_err(|e| format!("{name:?}: {e}"))?;
    let value = HeaderValue::try_from(value.trim()).map_err(|e| format!("{value:?}: {e}"))?;
    Ok((name, value))
}

fn key_value(value: &str) -> Result<(String, String), String> {
    let (name, value) = value
        .split_once('=')
        .ok_or_else(|| format!("takes KEY=VALUE, got {value:?}"))?;
    Ok((name.replace('-', "_"), value.to_owned()))
}

/// A mock control value: a number when it looks like one, else a string.
fn control_value(value: &str) -> Value {
    value
        .parse::<u64>()
        .map_or_else(|_| Value::String(value.to_owned()), Value::from)
}

/// The run's options from `args` (the program's name first).
fn parse_from<I, T>(args: I) -> Result<Options, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = Cli::command().try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    // `--hold 0` with `--repeat` is no conflict: zero is the default.
    if cli.repeat.is_some() && !cli.hold.is_zero() {
        return Err(Cli::command().error(
            ErrorKind::ArgumentConflict,
            "--repeat and --hold exclude each other",
        ));
    }
    // The mock controls in command-line order, so that the last one given wins, as in the
    // request body the mock reads.
    let mut controls: Vec<(usize, String, &str)> = Vec::new();
    for (name, value) in [
        ("tokens", &cli.tokens),
        ("delay_ms", &cli.delay_ms),
        ("headers_delay_ms", &cli.headers_delay_ms),
        ("chunking", &cli.chunking),
    ] {
        // The flag's id is the control's name.
        if let (Some(value), Some(index)) = (value, matches.index_of(name)) {
            controls.push((index, name.to_owned(), value));
        }
    }
    let indices = matches.indices_of("mock").into_iter().flatten();
    for (index, (name, value)) in indices.zip(&cli.mock) {
        controls.push((index, name.clone(), value));
    }
    controls.sort_by_key(|(index, ..)| *index);
    let mock = controls
        .into_iter()
        .map(|(_, name, value)| (name, control_value(value)))
        .collect();
    Ok(Options {
        url: cli.url,
        format: cli.format,
        headers: cli.header,
        streams: cli.streams,
        ramp: cli.ramp,
        hold: cli.hold,
        repeat: cli.repeat,
        warm_up: cli.warm_up,
        timeout: cli.timeout,
        source_ips: cli.source_ips.map(|ips| ips.0).unwrap_or_default(),
        http2: cli
            .http2
            .then(|| cli.streams_per_conn.unwrap_or(DEFAULT_STREAMS_PER_CONN)),
        faults: cli.faults,
        seed: cli.seed,
        mock,
        output: cli.output,
        quiet: cli.quiet,
        read_buf: cli.read_buf,
    })
}

// ---------------------------------------------------------------------------------------
// Faults and randomness

/// A fault injected into one stream on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// The mock stops sending after N events (`stall_after`).
    Stall(u32),
    /// The mock sends its in-band error after N events (`error_after`).
    UpstreamError(u32),
    /// The mock aborts the connection in the middle of event N + 1 (`close_after`).
    UpstreamClose(u32),
    /// This client drops the response after N events.
    ClientDisconnect(u32),
}

impl Fault {
    const NAMES: [&str; 4] = [
        "stall",
        "upstream-error",
        "upstream-close",
        "client-disconnect",
    ];

    fn index(self) -> usize {
        match self {
            Self::Stall(_) => 0,
            Self::UpstreamError(_) => 1,
            Self::UpstreamClose(_) => 2,
            Self::ClientDisconnect(_) => 3,
        }
    }

    /// The mock control that injects this fault, if the mock does it.
    fn mock_control(self) -> Option<(&'static str, u32)> {
        match self {
            Self::Stall(n) => Some(("stall_after", n)),
            Self::UpstreamError(n) => Some(("error_after", n)),
            Self::UpstreamClose(n) => Some(("close_after", n)),
            Self::ClientDisconnect(_) => None,
        }
    }
}

/// xorshift64*: tiny, seedable, good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Self {
        // Spread nearby seeds apart (splitmix64 finaliser); never zero.
        let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A float in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A fault with probability `p`, else `None`.
    fn fault(&mut self, p: f64) -> Option<Fault> {
        if p <= 0.0 || self.unit() >= p {
            return None;
        }
        let after = 1 + self.below(4) as u32;
        Some(match self.below(4) {
            0 => Fault::Stall(after),
            1 => Fault::UpstreamError(after),
            2 => Fault::UpstreamClose(after),
            _ => Fault::ClientDisconnect(after),
        })
    }
}

// ---------------------------------------------------------------------------------------
// One stream

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Ok,
    Connect,
    Status,
    Rejected,
    Timeout,
    Truncated,
    ErrorEvent,
    ClientDisconnect,
}

impl Outcome {
    const ALL: [Outcome; 8] = [
        Self::Ok,
        Self::Connect,
        Self::Status,
        Self::Rejected,
        Self::Timeout,
        Self::Truncated,
        Self::ErrorEvent,
        Self::ClientDisconnect,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Connect => "connect",
            Self::Status => "status",
            Self::Rejected => "rejected",
            Self::Timeout => "timeout",
            Self::Truncated => "truncated",
            Self::ErrorEvent => "error-event",
            Self::ClientDisconnect => "client-disconnect",
        }
    }
}

/// What one stream measured.
#[derive(Debug, Clone)]
struct Record {
    fault: Option<Fault>,
    outcome: Outcome,
    /// Request sent to response head.
    ttfb: Option<Duration>,
    /// Request sent to the first content-bearing event.
    ttft: Option<Duration>,
    /// Request sent to the end (or the give-up).
    duration: Duration,
    events: u32,
    keep_alives: u32,
    bytes: u64,
}

impl Record {
    fn new(fault: Option<Fault>) -> Self {
        Self {
            fault,
            outcome: Outcome::Truncated,
            ttfb: None,
            ttft: None,
            duration: Duration::ZERO,
            events: 0,
            keep_alives: 0,
            bytes: 0,
        }
    }
}

/// Splits a body into events (SSE, or NDJSON lines when the mock is hit directly with
/// `--format ollama`) and keeps what the record needs: counts, TTFT, the terminal event.
struct EventReader {
    frames: Frames,
    seen: Seen,
}

/// The framing of a response body.
enum Frames {
    Sse(Box<Decoder>),
    /// NDJSON: the bytes of the line being assembled.
    Lines(BytesMut),
}

/// What the events so far said.
struct Seen {
    format: Format,
    provider: Provider,
    confirmed: bool,
    saw_terminal: bool,
    last_was_error: bool,
}

impl Seen {
    fn on_event(&mut self, event: &EventRef<'_>, started: Instant, record: &mut Record) {
        record.events += 1;
        if !self.confirmed
            && let Some(provider) = Provider::from_event(event)
        {
            self.provider = provider;
            self.confirmed = true;
        }
        if record.ttft.is_none() && self.provider.is_content(event) {
            record.ttft = Some(started.elapsed());
        }
        self.saw_terminal |= self.format.is_terminal(self.provider, event);
        self.last_was_error = is_error_event(event);
    }
}

impl EventReader {
    fn new(format: Format, ndjson: bool) -> Self {
        let path = format.path().split('?').next().unwrap_or_default();
        Self {
            frames: if ndjson {
                Frames::Lines(BytesMut::new())
            } else {
                Frames::Sse(Box::new(Decoder::new()))
            },
            seen: Seen {
                format,
                provider: Provider::from_path(path),
                confirmed: false,
                saw_terminal: false,
                last_was_error: false,
            },
        }
    }

    /// Take one body chunk: count its events and keep-alives, note TTFT.
    fn push(&mut self, chunk: Bytes, started: Instant, record: &mut Record) {
        match &mut self.frames {
            Frames::Sse(decoder) => {
                decoder.push(chunk);
                drain_sse(decoder, &mut self.seen, started, record);
            }
            Frames::Lines(line) => {
                for piece in chunk.split_inclusive(|b| *b == b'\n') {
                    line.extend_from_slice(piece);
                    if line.ends_with(b"\n") {
                        on_json_line(line, &mut self.seen, started, record);
                        line.clear();
                    }
                }
            }
        }
    }

    /// The body ended cleanly: how the stream went.
    fn finish(&mut self, started: Instant, record: &mut Record) -> Outcome {
        let truncated = match &mut self.frames {
            Frames::Sse(decoder) => {
                decoder.finish();
                drain_sse(decoder, &mut self.seen, started, record);
                decoder.is_truncated()
            }
            Frames::Lines(line) => !line.iter().all(u8::is_ascii_whitespace),
        };
        if self.seen.last_was_error {
            Outcome::ErrorEvent
        } else if self.seen.saw_terminal && !truncated {
            Outcome::Ok
        } else {
            Outcome::Truncated
        }
    }
}

fn drain_sse(decoder: &mut Decoder, seen: &mut Seen, started: Instant, record: &mut Record) {
    while let Some(item) = decoder.next_ref() {
        match item {
            Ok(ItemRef::Event(event)) => seen.on_event(&event, started, record),
            Ok(ItemRef::Comment(_)) => record.keep_alives += 1,
            _ => {}
        }
    }
}

fn on_json_line(line: &[u8], seen: &mut Seen, started: Instant, record: &mut Record) {
    let text = line.trim_ascii();
    if !text.is_empty() {
        seen.on_event(&EventRef::new(b"", text, line), started, record);
    }
}

/// One client's connection pool and what every request needs.
#[derive(Clone)]
struct Target {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    format: Format,
    mock: Arc<Map<String, Value>>,
    /// The body of streams without a mock fault, built once.
    plain_body: Bytes,
    /// `--header`: sent with every request.
    headers: Arc<[(HeaderName, HeaderValue)]>,
    timeout: Duration,
}

impl Target {
    fn request(&self, fault: Option<Fault>) -> Request<Full<Bytes>> {
        let body = match fault.and_then(Fault::mock_control) {
            Some((name, after)) => {
                let mut mock = (*self.mock).clone();
                mock.insert(name.to_owned(), Value::from(after));
                self.format.body(&mock)
            }
            None => self.plain_body.clone(),
        };
        let mut request = Request::post(self.uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .expect("a valid request");
        for (name, value) in self.headers.iter() {
            request.headers_mut().append(name.clone(), value.clone());
        }
        request
    }
}

/// Run one stream to its end, its fault or the timeout.
async fn run_stream(target: &Target, fault: Option<Fault>, live: &Live) -> Record {
    let mut record = Record::new(fault);
    let request = target.request(fault);
    let open = live.open.fetch_add(1, Ordering::Relaxed) + 1;
    live.peak.fetch_max(open, Ordering::Relaxed);
    let started = Instant::now();
    record.outcome =
        tokio::time::timeout(target.timeout, drive(target, request, started, &mut record))
            .await
            .unwrap_or(Outcome::Timeout);
    record.duration = started.elapsed();
    live.open.fetch_sub(1, Ordering::Relaxed);
    live.done.fetch_add(1, Ordering::Relaxed);
    record
}

async fn drive(
    target: &Target,
    request: Request<Full<Bytes>>,
    started: Instant,
    record: &mut Record,
) -> Outcome {
    let response = match target.client.request(request).await {
        Ok(response) => response,
        Err(e) => return request_failed(&e),
    };
    record.ttfb = Some(started.elapsed());
    let status = response.status();
    if !status.is_success() {
        // Read the (small) error body, so the connection goes back to the pool instead of
        // leaving a socket in TIME_WAIT per rejection.
        let _ = response.into_body().collect().await;
        return if status == StatusCode::SERVICE_UNAVAILABLE {
            Outcome::Rejected
        } else {
            Outcome::Status
        };
    }
    let ndjson = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/x-ndjson"));
    let hang_up_after = match record.fault {
        Some(Fault::ClientDisconnect(n)) => Some(n),
        _ => None,
    };
    let mut reader = EventReader::new(target.format, ndjson);
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Outcome::Truncated;
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        record.bytes += data.len() as u64;
        reader.push(data, started, record);
        if hang_up_after.is_some_and(|n| record.events >= n) {
            // Dropping the body closes the connection.
            return Outcome::ClientDisconnect;
        }
    }
    reader.finish(started, record)
}

/// A request that got no response head: a connect failure (reported clearly when the cause
/// is a full fd table or no free port), or a connection that failed before the head.
fn request_failed(e: &hyper_util::client::legacy::Error) -> Outcome {
    if !e.is_connect() {
        return Outcome::Truncated;
    }
    static OUT_OF_FDS: Warning = Warning::new();
    static OUT_OF_PORTS: Warning = Warning::new();
    static OTHER: Warning = Warning::new();
    if let Some(io) = io_source(e) {
        match io.raw_os_error() {
            Some(EMFILE | ENFILE) => OUT_OF_FDS.emit(|| {
                format!(
                    "loadgen: connect failed: {io}: out of file descriptors (one per stream); \
                     raise the limit with `ulimit -n` (soft limit now {}) or run fewer --streams",
                    fd_limit_text()
                )
            }),
            Some(EADDRNOTAVAIL) => OUT_OF_PORTS.emit(|| {
                format!(
                    "loadgen: connect failed: {io}: out of ephemeral ports; spread the streams \
                     over more local addresses with --source-ips 127.0.0.2,127.0.0.3,..."
                )
            }),
            _ => OTHER.emit(|| format!("loadgen: connect failed: {io}")),
        }
    }
    Outcome::Connect
}

// ---------------------------------------------------------------------------------------
// Clients

/// Counters the sampler reads while the run goes on.
#[derive(Default)]
struct Live {
    open: AtomicUsize,
    /// The most streams open at once.
    peak: AtomicUsize,
    done: AtomicUsize,
}

/// When each client starts and stops starting new streams.
#[derive(Clone, Copy)]
struct Schedule {
    t0: tokio::time::Instant,
    ramp: Duration,
    clients: usize,
    /// Hold mode: no new stream after this. Without it, one stream per client.
    stop_at: Option<tokio::time::Instant>,
    repeat: Option<u32>,
    /// Streams each client runs first, unrecorded.
    warm_up: u32,
}

impl Schedule {
    fn start_of(&self, client: usize) -> tokio::time::Instant {
        self.t0 + self.ramp.mul_f64(client as f64 / self.clients as f64)
    }

    /// Whether a client that ran `done` streams starts another.
    fn another(&self, done: u32) -> bool {
        match (self.repeat, self.stop_at) {
            (Some(k), _) => done < k,
            (None, Some(stop_at)) => done == 0 || tokio::time::Instant::now() < stop_at,
            (None, None) => done == 0,
        }
    }
}

/// One client: wait for its start, then stream as the schedule says.
async fn run_client(
    index: usize,
    target: Target,
    schedule: Schedule,
    faults: f64,
    seed: u64,
    live: Arc<Live>,
) -> Vec<Record> {
    tokio::time::sleep_until(schedule.start_of(index)).await;
    let mut rng = Rng::new(seed, index as u64);
    for _ in 0..schedule.warm_up {
        run_stream(&target, None, &live).await;
    }
    let mut records = Vec::new();
    while schedule.another(records.len() as u32) {
        let record = run_stream(&target, rng.fault(faults), &live).await;
        if matches!(
            record.outcome,
            Outcome::Connect | Outcome::Rejected | Outcome::Status
        ) {
            tokio::time::sleep(RETRY_BACKOFF).await;
        }
        records.push(record);
    }
    records
}

/// A command line that makes no run: say why, exit 2.
fn fail(message: &str) -> ! {
    eprintln!("loadgen: {message}\n\nTry --help.");
    std::process::exit(2)
}

/// One pooled HTTP/1 client per source address (or one with the system's choice), or with
/// `--http2` one client per HTTP/2 connection ([`http2_clients`]).
fn clients(options: &Options) -> Vec<Client<HttpConnector, Full<Bytes>>> {
    if let Some(per_connection) = options.http2 {
        return http2_clients(options, per_connection);
    }
    let addresses: Vec<Option<IpAddr>> = if options.source_ips.is_empty() {
        vec![None]
    } else {
        options.source_ips.iter().copied().map(Some).collect()
    };
    addresses
        .into_iter()
        .map(|address| {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            connector.set_local_address(address);
            connector.set_connect_timeout(Some(options.timeout));
            let mut builder = Client::builder(TokioExecutor::new());
            builder
                .pool_idle_timeout(Duration::from_secs(30))
                .pool_timer(TokioTimer::new());
            if let Some(size) = options.read_buf {
                builder.http1_read_buf_exact_size(size);
            }
            builder.build(connector)
        })
        .collect()
}

/// `--http2`: one HTTP/2-only client (h2c, prior knowledge) per connection, `streams / N`
/// of them rounded up, their source addresses taken round-robin. Each client's pool holds a
/// single connection to the one target, which its N clients' streams share: hyper-util opens
/// one HTTP/2 connection per host and multiplexes every request on it (the run's script
/// counts the sockets to check it).
fn http2_clients(
    options: &Options,
    per_connection: usize,
) -> Vec<Client<HttpConnector, Full<Bytes>>> {
    let connections = options.streams.div_ceil(per_connection);
    (0..connections)
        .map(|k| {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            if !options.source_ips.is_empty() {
                connector.set_local_address(Some(options.source_ips[k % options.source_ips.len()]));
            }
            connector.set_connect_timeout(Some(options.timeout));
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .pool_timer(TokioTimer::new())
                .http2_only(true)
                .build(connector)
        })
        .collect()
}

/// The target (connection pool) of client `index`: round-robin over the HTTP/1.1 pools, or
/// with `--http2` clients `k·N .. (k+1)·N` on connection `k`.
fn target_of(options: &Options, index: usize, targets: usize) -> usize {
    match options.http2 {
        Some(per_connection) => (index / per_connection).min(targets - 1),
        None => index % targets,
    }
}

fn targets(options: &Options) -> Vec<Target> {
    let base = options.url.to_string();
    let uri: Uri = format!("{}{}", base.trim_end_matches('/'), options.format.path())
        .parse()
        .unwrap_or_else(|_| fail("--url and the format's path make no URL"));
    let mock = Arc::new(options.mock.clone());
    let plain_body = options.format.body(&mock);
    let headers: Arc<[_]> = options.headers.clone().into();
    clients(options)
        .into_iter()
        .map(|client| Target {
            client,
            uri: uri.clone(),
            format: options.format,
            mock: mock.clone(),
            plain_body: plain_body.clone(),
            headers: headers.clone(),
            timeout: options.timeout,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Sampling and the summary

/// Every second: open streams (and a progress line unless quiet), until told to stop.
async fn sample(
    live: Arc<Live>,
    started: tokio::time::Instant,
    quiet: bool,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Vec<(f64, usize)> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => return samples,
        }
        let t = started.elapsed().as_secs_f64();
        let open = live.open.load(Ordering::Relaxed);
        samples.push((t, open));
        if !quiet {
            let done = live.done.load(Ordering::Relaxed);
            eprintln!("loadgen: {t:6.1}s open {open:6} done {done:8}");
        }
    }
}

/// Percentiles and spread of a set of durations, in milliseconds.
fn distribution(mut values: Vec<Duration>) -> Value {
    if values.is_empty() {
        return json!({"count": 0});
    }
    values.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let n = values.len();
    let pick = |q: f64| ms(values[((q * n as f64).ceil() as usize).clamp(1, n) - 1]);
    let mean = values.iter().map(|d| ms(*d)).sum::<f64>() / n as f64;
    let variance = values.iter().map(|d| (ms(*d) - mean).powi(2)).sum::<f64>() / n as f64;
    let stddev = variance.sqrt();
    json!({
        "count": n,
        "min": ms(values[0]),
        "p50": pick(0.50),
        "p95": pick(0.95),
        "p99": pick(0.99),
        "max": ms(values[n - 1]),
        "mean": mean,
        "stddev": stddev,
        "cv": if mean > 0.0 { stddev / mean } else { 0.0 },
    })
}

fn count_outcomes<'a>(records: impl Iterator<Item = &'a Record>) -> BTreeMap<&'static str, u64> {
    let mut counts = BTreeMap::new();
    for record in records {
        *counts.entry(record.outcome.name()).or_insert(0) += 1;
    }
    counts
}

/// Streams by injected fault, and how each ended.
fn fault_table(records: &[Record]) -> Value {
    let mut table = Map::new();
    for (index, name) in Fault::NAMES.iter().enumerate() {
        let faulted: Vec<&Record> = records
            .iter()
            .filter(|r| r.fault.is_some_and(|f| f.index() == index))
            .collect();
        table.insert(
            (*name).to_owned(),
            json!({"injected": faulted.len(), "outcomes": count_outcomes(faulted.into_iter())}),
        );
    }
    Value::Object(table)
}

/// The end of a run: what the clients recorded and what was sampled on the way.
struct Run {
    records: Vec<Record>,
    elapsed: Duration,
    peak_open: usize,
    samples: Vec<(f64, usize)>,
}

fn summary(options: &Options, run: &Run) -> Value {
    let records = &run.records;
    let unfaulted = records.iter().filter(|r| r.fault.is_none()).count();
    let ok_unfaulted = records
        .iter()
        .filter(|r| r.fault.is_none() && r.outcome == Outcome::Ok)
        .count();
    let mut outcomes = count_outcomes(records.iter());
    for outcome in Outcome::ALL {
        outcomes.entry(outcome.name()).or_insert(0);
    }
    json!({
        "config": {
            "url": options.url.to_string(),
            "format": options.format.name(),
            "streams": options.streams,
            "ramp_s": options.ramp.as_secs_f64(),
            "hold_s": options.hold.as_secs_f64(),
            "repeat": options.repeat,
            "warm_up": options.warm_up,
            "timeout_s": options.timeout.as_secs_f64(),
            "source_ips": options.source_ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "http_version": if options.http2.is_some() { "2" } else { "1.1" },
            "streams_per_conn": options.http2.unwrap_or(1),
            "faults": options.faults,
            "seed": options.seed,
            "mock": options.mock,
            "read_buf": options.read_buf,
        },
        "elapsed_s": run.elapsed.as_secs_f64(),
        "total": records.len(),
        "outcomes": outcomes,
        "unfaulted": unfaulted,
        "ok_unfaulted": ok_unfaulted,
        "unfaulted_outcomes": count_outcomes(records.iter().filter(|r| r.fault.is_none())),
        "success_rate": if unfaulted > 0 { ok_unfaulted as f64 / unfaulted as f64 } else { 0.0 },
        "faults": fault_table(records),
        "ttfb_ms": distribution(records.iter().filter_map(|r| r.ttfb).collect()),
        "ttft_ms": distribution(records.iter().filter_map(|r| r.ttft).collect()),
        "duration_ms": distribution(
            records.iter().filter(|r| r.outcome == Outcome::Ok).map(|r| r.duration).collect()
        ),
        "events": records.iter().map(|r| u64::from(r.events)).sum::<u64>(),
        "keep_alives": records.iter().map(|r| u64::from(r.keep_alives)).sum::<u64>(),
        "bytes": records.iter().map(|r| r.bytes).sum::<u64>(),
        "peak_open": run.peak_open,
        "open_samples": run.samples.iter().map(|(t, n)| json!([(t * 10.0).round() / 10.0, n])).collect::<Vec<_>>(),
    })
}

fn print_summary(summary: &Value) {
    let line = |name: &str| {
        let d = &summary[name];
        if d["count"].as_u64().unwrap_or(0) == 0 {
            return format!("{name:<12} n=0");
        }
        format!(
            "{name:<12} n={:<7} p50 {:>9.2}  p95 {:>9.2}  p99 {:>9.2}  max {:>9.2}  cv {:.3}",
            d["count"],
            d["p50"].as_f64().unwrap_or(0.0),
            d["p95"].as_f64().unwrap_or(0.0),
            d["p99"].as_f64().unwrap_or(0.0),
            d["max"].as_f64().unwrap_or(0.0),
            d["cv"].as_f64().unwrap_or(0.0),
        )
    };
    println!(
        "streams {} in {:.1}s, peak open {}, events {}, keep-alives {}, bytes {}",
        summary["total"],
        summary["elapsed_s"].as_f64().unwrap_or(0.0),
        summary["peak_open"],
        summary["events"],
        summary["keep_alives"],
        summary["bytes"],
    );
    for name in ["ttfb_ms", "ttft_ms", "duration_ms"] {
        println!("{}", line(name));
    }
    println!(
        "success     {:.2}% ({} of {} streams without an injected fault ended ok)",
        summary["success_rate"].as_f64().unwrap_or(0.0) * 100.0,
        summary["ok_unfaulted"],
        summary["unfaulted"],
    );
    let outcomes: Vec<String> = summary["outcomes"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, n)| n.as_u64() != Some(0))
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    println!("outcomes    {}", outcomes.join(", "));
    for (fault, row) in summary["faults"].as_object().into_iter().flatten() {
        if row["injected"].as_u64().unwrap_or(0) > 0 {
            println!(
                "fault       {fault:<18} {:>6} injected -> {}",
                row["injected"], row["outcomes"]
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Limits of the machine

/// The size of the ephemeral port range.
fn ephemeral_ports() -> Option<u64> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut bounds = range.split_whitespace().map(|n| n.parse::<u64>().ok());
    let (low, high) = (bounds.next()??, bounds.next()??);
    Some(high.saturating_sub(low) + 1)
}

/// Warn before starting when the run cannot fit the fd limit or the port range.
fn check_machine_limits(options: &Options) {
    let streams = options.streams as u64;
    if let Some(limit) = fd_limit()
        && streams + FD_MARGIN > limit
    {
        eprintln!(
            "loadgen: warning: {streams} streams need about {} file descriptors, the soft \
             limit is {limit}: raise it with `ulimit -n` first",
            streams + FD_MARGIN
        );
    }
    let sources = options.source_ips.len().max(1) as u64;
    if let Some(ports) = ephemeral_ports()
        && streams / sources > ports
    {
        eprintln!(
            "loadgen: warning: {streams} streams over {sources} source address(es) exceed the \
             {ports} ephemeral ports of each: add addresses with --source-ips"
        );
    }
}

// ---------------------------------------------------------------------------------------

#[tokio::main]
async fn main() {
    // Exits after `--help`, or with status 2 on a bad flag.
    let options = parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit());
    check_machine_limits(&options);
    let targets = targets(&options);
    let live = Arc::new(Live::default());
    let t0 = tokio::time::Instant::now();
    let schedule = Schedule {
        t0,
        ramp: options.ramp,
        clients: options.streams,
        stop_at: (!options.hold.is_zero()).then(|| t0 + options.ramp + options.hold),
        repeat: options.repeat,
        warm_up: options.warm_up,
    };
    let (stop_sampler, stopped) = tokio::sync::oneshot::channel();
    let sampler = tokio::spawn(sample(live.clone(), t0, options.quiet, stopped));

    let clients: Vec<_> = (0..options.streams)
        .map(|index| {
            let target = targets[target_of(&options, index, targets.len())].clone();
            tokio::spawn(run_client(
                index,
                target,
                schedule,
                options.faults,
                options.seed,
                live.clone(),
            ))
        })
        .collect();
    let mut records = Vec::with_capacity(options.streams);
    for client in clients {
        match client.await {
            Ok(mut client_records) => records.append(&mut client_records),
            Err(e) => eprintln!("loadgen: a client task failed: {e}"),
        }
    }
    let elapsed = t0.elapsed();
    let _ = stop_sampler.send(());
    let run = Run {
        records,
        elapsed,
        peak_open: live.peak.load(Ordering::Relaxed),
        samples: sampler.await.unwrap_or_default(),
    };
    let summary = summary(&options, &run);
    print_summary(&summary);
    if let Some(path) = &options.output
        && let Err(e) = std::fs::write(path, format!("{summary:#}\n"))
    {
        eprintln!("loadgen: cannot write {path}: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        parse_from(std::iter::once("loadgen").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let options = parse(&[]).unwrap();
        assert_eq!(options.url, "http://127.0.0.1:8080");
        assert_eq!(options.format, Format::Chat);
        assert_eq!(options.streams, 100);
        assert_eq!(options.timeout, Duration::from_secs(120));
        assert_eq!(options.seed, 1);
        assert!(options.mock.is_empty() && options.source_ips.is_empty() && !options.quiet);
    }

    #[test]
    fn headers_are_kept_in_order_and_checked() {
        let options = parse(&[
            "--header",
            "authorization: Bearer sk-test",
            "--header",
            "x-team:a",
        ])
        .unwrap();
        let headers: Vec<(&str, &str)> = options
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.to_str().unwrap()))
            .collect();
        assert_eq!(
            headers,
            [("authorization", "Bearer sk-test"), ("x-team", "a")]
        );
        assert!(parse(&[]).unwrap().headers.is_empty());
        assert!(parse(&["--header", "no colon"]).is_err());
        assert!(parse(&["--header", "bad name: x"]).is_err());
    }

    #[test]
    fn mock_controls_keep_the_command_line_order() {
        let options = parse(&[
            "--url",
            "http://h:1/",
            "--format",
            "ollama",
            "--tokens",
            "5",
            "--mock",
            "tokens=7",
            "--mock",
            "stall-after=3",
            "--chunking",
            "random",
            "--source-ips",
            "127.0.0.2, 127.0.0.3,",
            "--hold",
            "0",
            "--repeat",
            "2",
        ])
        .unwrap();
        assert_eq!(options.url, "http://h:1");
        assert_eq!(options.format, Format::Ollama);
        assert_eq!(options.mock["tokens"], 7);
        assert_eq!(options.mock["stall_after"], 3);
        assert_eq!(options.mock["chunking"], "random");
        assert_eq!(options.source_ips.len(), 2);
        let options = parse(&["--mock", "tokens=7", "--tokens", "5"]).unwrap();
        assert_eq!(options.mock["tokens"], 5);
    }

    #[test]
    fn http2_puts_n_clients_on_each_connection() {
        let options = parse(&["--streams", "250", "--http2"]).unwrap();
        assert_eq!(options.http2, Some(DEFAULT_STREAMS_PER_CONN));
        // 250 clients, 100 per connection: three connections, the last one half full.
        let connections = http2_clients(&options, 100).len();
        assert_eq!(connections, 3);
        let on = |index| target_of(&options, index, connections);
        assert_eq!((on(0), on(99), on(100), on(199), on(249)), (0, 0, 1, 1, 2));

        let options = parse(&["--http2", "--streams-per-conn", "7", "--streams", "7"]).unwrap();
        assert_eq!(options.http2, Some(7));
        assert_eq!(http2_clients(&options, 7).len(), 1);

        let options = parse(&["--streams", "3"]).unwrap();
        assert_eq!(options.http2, None);
        assert_eq!(
            (0..3)
                .map(|i| target_of(&options, i, 2))
                .collect::<Vec<_>>(),
            [0, 1, 0]
        );
    }

    #[test]
    fn bad_command_lines_are_refused() {
        for bad in [
            &["--repeat", "2", "--hold", "1"][..],
            &["--streams", "0"],
            &["--faults", "1.5"],
            &["--ramp", "-1"],
            &["--format", "xml"],
            &["--mock", "tokens"],
            &["--no-such-flag"],
            &["--streams-per-conn", "10"],
            &["--http2", "--streams-per-conn", "0"],
        ] {
            let error = parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(error.exit_code(), 2, "{bad:?}");
        }
    }
}
