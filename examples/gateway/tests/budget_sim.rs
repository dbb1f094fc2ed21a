//! A budget simulation across two gateway processes (`--budgets FILE --redis URL`, the
//! `gateway` binary) in front of one mock upstream, on one real `redis-server`: several
//! tenants with token rates and daily budgets send random concurrent streams that end by
//! random paths — completion, a client disconnect at a random event (on a replica that
//! drains and on one that does not), an upstream cut mid-event, an in-band upstream error,
//! an upstream error status, a first-event deadline (an upstream that stalls after its
//! headers, and one that does not answer in time), a non-streaming answer (which makes no
//! report: the budget layer charges the usage in its JSON, as the `Reservation` docs say), a
//! **budget stop** (the file has `enforce_mid_stream`: a tenant with a small output rate sends
//! streams long enough to pass what it had left, and any tenant's stream may pass it) — and
//! refusals.
//!
//! It checks, for every tenant:
//! - **the ledger is exact:** what each daily budget has counted in the store equals the sum
//!   of what the log lines say was charged: the streams' (one per stream, written where it
//!   was produced; each line's charge is its reported usage wherever the usage has a count,
//!   and flagged an estimate where it has none) and the non-streaming answers' (one
//!   `answer charged` line each, on the replica that served it, charging its usage);
//! - **nothing stays reserved at rest** (that equality, after every stream ended);
//! - **no limit is exceeded by more than the documented bound** ("How far a key can go over
//!   a limit" in the `budget` module docs: what its admitted streams used beyond their
//!   reservations), sampled while the streams run and at rest;
//! - a refused request (`429`, `400`) never reaches the upstream and is never charged;
//! - **a budget stop** ends the stream with the provider's `budget_exceeded` error event (no
//!   `[DONE]`), its line says `budget_exceeded`, the client never received past the stream's
//!   allowance, and what was generated is charged — the event that passed the allowance
//!   included, within one event of it (`BudgetStop`'s bound); a stream that completed never
//!   passed its allowance.
//!
//! Seeded (`BUDGET_SIM_SEED` replays a run), bounded to well under a minute, and it prints
//! its counts. Skipped (one line says why) when this machine has no `redis-server`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio::time::{Instant, sleep, timeout};
use tower_sse_mock::MockConfig;

#[path = "support/binary.rs"]
mod binary;
mod support;
use binary::{Lines, json_logging};
use support::{Process, free_port, redis_server};

/// Streams in the run.
const STREAMS: u64 = 170;
/// What a request without `max_tokens` reserves for its output (the file's
/// `default_output_tokens`).
const DEFAULT_OUTPUT: u64 = 24;
/// The gateways' `--first-event-timeout`, in seconds.
const FIRST_EVENT_TIMEOUT: &str = "1";
/// The tenant whose streams are long enough for its output rate to stop some mid-stream.
const STOP_TENANT: usize = 4;
/// What one event of the mock can add to a running estimate: its longest token is 12 bytes
/// of JSON text (` back\\slash`), at 4 bytes a token, plus one for the rounding up.
const ONE_EVENT_TOKENS: u64 = 4;

/// splitmix64: the test's only source of randomness, from its seed.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A gateway replica with budgets on `redis`, JSON logs: the process, its base URL and its
/// `stream ended` lines (collected as they come).
fn replica(redis: &str, upstream: &str, budgets: &str, extra: &[&str]) -> (Process, String, Lines) {
    let mut args = vec![
        "--budgets",
        budgets,
        "--redis",
        redis,
        "--upstream",
        upstream,
        "--first-event-timeout",
        FIRST_EVENT_TIMEOUT,
    ];
    args.extend_from_slice(extra);
    json_logging(&args)
}

/// The budget key of a bearer token: the gateway's tenant (the first 16 bytes of its
/// SHA-256, in hex).
fn key_of(token: &str) -> String {
    Sha256::digest(token.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One limit as the test sees it: measure, amount, per (`"day"` or seconds) and burst.
#[derive(Debug, Clone, Copy)]
struct Lim {
    measure: &'static str,
    amount: u64,
    /// Seconds of a rate; `None`: a UTC day.
    per: Option<u64>,
    burst: Option<u64>,
}

impl Lim {
    fn day(measure: &'static str, amount: u64) -> Self {
        Self {
            measure,
            amount,
            per: None,
            burst: None,
        }
    }

    fn rate(measure: &'static str, amount: u64, per: u64, burst: u64) -> Self {
        Self {
            measure,
            amount,
            per: Some(per),
            burst: Some(burst),
        }
    }

    /// What may be spent at once: a rate's burst, a day's amount.
    fn capacity(&self) -> u64 {
        self.burst.unwrap_or(self.amount)
    }

    fn json(&self) -> serde_json::Value {
        let mut limit = serde_json::json!({"measure": self.measure, "amount": self.amount});
        match self.per {
            Some(per) => {
                limit["per"] = per.into();
                if let Some(burst) = self.burst {
                    limit["burst"] = burst.into();
                }
            }
            None => limit["per"] = "day".into(),
        }
        limit
    }

    /// This limit's measure of (requests, input, output).
    fn of(&self, (requests, input, output): (u64, u64, u64)) -> u64 {
        match self.measure {
            "requests" => requests,
            "input_tokens" => input,
            "output_tokens" => output,
            "total_tokens" => input + output,
            other => panic!("no such measure {other}"),
        }
    }
}

/// The tenants: each has its four exact daily ledgers (requests, input, output, total)
/// plus what makes it interesting.
fn tenants() -> Vec<(String, Vec<Lim>)> {
    let ledgers = |total_day: u64| {
        vec![
            Lim::day("requests", 1_000_000),
            Lim::day("input_tokens", 100_000_000),
            Lim::day("output_tokens", 100_000_000),
            Lim::day("total_tokens", total_day),
        ]
    };
    let with = |mut base: Vec<Lim>, more: &[Lim]| {
        base.extend_from_slice(more);
        base
    };
    vec![
        // Never refused: the pure ledger.
        ("sk-sim-roomy".into(), ledgers(100_000_000)),
        // A tight token rate: refusals with a wait, and debt from overruns.
        (
            "sk-sim-rate".into(),
            with(
                ledgers(100_000_000),
                &[Lim::rate("total_tokens", 600, 5, 600)],
            ),
        ),
        // A request rate and a small daily budget that runs out during the run.
        (
            "sk-sim-daily".into(),
            with(ledgers(700), &[Lim::rate("requests", 2, 2, 2)]),
        ),
        // Output tokens per second, and a burst that a large `max_tokens` never fits.
        (
            "sk-sim-output".into(),
            with(
                ledgers(100_000_000),
                &[Lim::rate("output_tokens", 200, 1, 300)],
            ),
        ),
        // A small output rate and long streams: some pass what was left at their admission
        // and are stopped mid-stream (`enforce_mid_stream`).
        (
            "sk-sim-stop".into(),
            with(
                ledgers(100_000_000),
                &[Lim::rate("output_tokens", 250, 1, 300)],
            ),
        ),
    ]
}

/// How one stream is made to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Complete,
    /// The client drops its response after this many events.
    Disconnect(u64),
    /// The upstream sends half of the event after this many, then aborts.
    UpstreamCut(u64),
    /// The upstream sends its in-band error event after this many events.
    UpstreamError(u64),
    /// The upstream answers this error status.
    Status(u16),
    /// The upstream sends its headers, then nothing: the first-event deadline.
    Stall,
    /// The upstream's headers come after the first-event deadline.
    LateHeaders,
    /// `"stream": false`.
    NotStreamed,
}

impl Path {
    fn pick(rng: &mut Rng, tokens: u64) -> Self {
        let at = 1 + rng.below(tokens + 2);
        match rng.below(16) {
            0..=4 => Self::Complete,
            5..=7 => Self::Disconnect(at),
            8 | 9 => Self::UpstreamCut(at),
            10 => Self::UpstreamError(at),
            11 => Self::Status([429, 500, 503][rng.below(3) as usize]),
            12 => Self::Stall,
            13 => Self::LateHeaders,
            _ => Self::NotStreamed,
        }
    }
}

/// How many tokens a stream of `tenant` generates, and how it is made to end: the stop
/// tenant's streams are long (past its output burst at times) and half of them run to their
/// end unless their budget stops them; the others' are short, their ends at random.
fn plan(rng: &mut Rng, tenant: usize) -> (u64, Path) {
    if tenant == STOP_TENANT {
        let tokens = 40 + rng.below(160);
        let path = match rng.below(2) {
            0 => Path::Complete,
            _ => Path::pick(rng, tokens),
        };
        return (tokens, path);
    }
    let tokens = 2 + rng.below(40);
    (tokens, Path::pick(rng, tokens))
}

/// One planned stream and what became of it.
#[derive(Debug)]
struct Stream {
    index: usize,
    tenant: usize,
    replica: usize,
    path: Path,
    /// The request body the client sent.
    body: String,
    /// `max_tokens`, when the request set it.
    max_tokens: Option<u64>,
    status: u16,
    retry_after: Option<u64>,
    /// Refused by its budget (`429`, or `400` when it can never fit).
    refused: bool,
    /// The bytes of the stream the client received.
    received: Received,
}

/// The bytes a client received (their count when printed).
#[derive(Default)]
struct Received(Vec<u8>);

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes", self.0.len())
    }
}

impl Stream {
    /// Admitted, and answered with a stream (which has a report, so a line).
    fn reported(&self) -> bool {
        !self.refused && self.path != Path::NotStreamed
    }

    /// What a non-streaming answer reports, so is charged: the mock's input tokens (the
    /// body's bytes / 4, rounded up) and the tokens it was told to generate.
    fn answered(&self) -> (u64, u64, u64) {
        let body: serde_json::Value = serde_json::from_str(&self.body).unwrap();
        let tokens = body["mock"]["tokens"].as_u64().unwrap();
        (1, tower_sse_mock::prompt_tokens(self.body.len()), tokens)
    }

    /// What its admission reserves: 1 request, the body's bytes / 4 (rounded up) of input
    /// (the budget layer's estimator), its `max_tokens` or the default of output.
    fn reservation(&self) -> (u64, u64, u64) {
        (
            1,
            self.body.len().div_ceil(4) as u64,
            self.max_tokens.unwrap_or(DEFAULT_OUTPUT),
        )
    }
}

async fn run_stream(mut s: Stream, base: String, token: String, delay: u64) -> Stream {
    sleep(Duration::from_millis(delay)).await;
    let http = reqwest::Client::new();
    let response = http
        .post(format!("{base}/v1/chat/completions"))
        .header("authorization", format!("Bearer {token}"))
        // The line of the stream names it: its reservation is then known.
        .header("x-request-id", format!("sim-{}", s.index))
        .header("content-type", "application/json")
        .body(s.body.clone())
        .send()
        .await
        .unwrap();
    s.status = response.status().as_u16();
    s.retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let mut response = response;
    if matches!(s.status, 429 | 400) {
        // The budget's refusal, or the upstream's own status.
        let text = response.text().await.unwrap_or_default();
        s.refused = text.contains("budget");
        return s;
    }
    let mut events = 0u64;
    loop {
        if let Path::Disconnect(n) = s.path
            && events >= n
        {
            // Dropped mid-stream: the client goes.
            return s;
        }
        match timeout(Duration::from_secs(30), response.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                events += chunk.windows(2).filter(|w| w == b"\n\n").count() as u64;
                s.received.0.extend_from_slice(&chunk);
            }
            Ok(Ok(None) | Err(_)) => return s,
            Err(_) => panic!("stuck stream: {s:?}"),
        }
    }
}

/// Each tenant's limits as `GET /v1/budgets/self` shows them: `used` per limit, in order.
async fn used(http: &reqwest::Client, base: &str, token: &str) -> Vec<u64> {
    let answer = http
        .get(format!("{base}/v1/budgets/self"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    answer["limits"]
        .as_array()
        .unwrap_or_else(|| panic!("a budget status: {answer}"))
        .iter()
        .map(|l| l["used"].as_u64().unwrap())
        .collect()
}

fn day_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400
}

/// One log line's charge: (requests, input, output), and whether it is flagged estimated.
fn charge_of(line: &serde_json::Value) -> ((u64, u64, u64), bool) {
    let f = &line["fields"];
    let n = |name: &str| {
        f[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} in every charged line: {line}"))
    };
    (
        (1, n("charged_input_tokens"), n("charged_output_tokens")),
        f["charge_estimated"].as_bool().unwrap(),
    )
}

/// Per replica and tenant: the (requests, input, output) charged to each of its answers.
type AnswerCharges = BTreeMap<(usize, usize), Vec<(u64, u64, u64)>>;

/// The lines the replicas logged so far, each with the index of its replica.
fn logged(replicas: &[&Lines]) -> Vec<(usize, serde_json::Value)> {
    replicas
        .iter()
        .enumerate()
        .flat_map(|(r, lines)| {
            let lines = lines.lock().unwrap();
            lines
                .iter()
                .map(|line| (r, line.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The index of the stream a line is of, from its request id (`sim-<index>`).
fn index_of(line: &serde_json::Value) -> usize {
    line["span"]["request_id"]
        .as_str()
        .and_then(|id| id.strip_prefix("sim-")?.parse().ok())
        .unwrap_or_else(|| panic!("the line names its request: {line}"))
}

/// What the client of a stream saw.
#[derive(Debug, Default)]
struct Seen {
    /// Its last event is the provider's (OpenAI's) `budget_exceeded` error object.
    budget_error: bool,
    /// `budget_exceeded` error events anywhere in the stream.
    budget_errors: u64,
    /// `data: [DONE]` came.
    done: bool,
    /// The bytes of content text received (`choices[0].delta.content`, decoded).
    content_bytes: u64,
}

impl Seen {
    fn of(received: &[u8]) -> Self {
        let text = String::from_utf8_lossy(received);
        let mut seen = Self::default();
        let is_budget_error = |json: &serde_json::Value| {
            json["error"]["type"] == "budget_exceeded" && json["error"]["code"] == "budget_exceeded"
        };
        let mut last = None;
        for event in text.split("\n\n") {
            for data in event.lines().filter_map(|l| l.strip_prefix("data: ")) {
                if data == "[DONE]" {
                    seen.done = true;
                    last = None;
                    continue;
                }
                // A client that left mid-event has half of its last one.
                let Ok(json) = serde_json::from_str::<serde_json::Value>(data) else {
                    continue;
                };
                if let Some(content) = json["choices"][0]["delta"]["content"].as_str() {
                    seen.content_bytes += content.len() as u64;
                }
                seen.budget_errors += u64::from(is_budget_error(&json));
                last = Some(json);
            }
        }
        seen.budget_error = last.as_ref().is_some_and(is_budget_error);
        seen
    }

    /// The running estimate of what was received (4 bytes a token, rounded up: the
    /// gateway's heuristic, on the decoded text, which is never longer than the JSON text
    /// the gateway counts).
    fn tokens(&self) -> u64 {
        self.content_bytes.div_ceil(4)
    }
}

/// The budget stops of the run (`enforce_mid_stream`), checked against each stream's line
/// and what its client saw; returns how many streams were stopped.
///
/// - a client that got the `budget_exceeded` error event got it last, with no `[DONE]`,
///   and the stream's line says `budget_exceeded`; a `budget_exceeded` line is a client's
///   that got the event, unless the client had left already (a drained stream);
/// - a stopped stream passed its allowance (output or total tokens), by at most one event,
///   and its client never received past it: what was charged is what the upstream
///   generated, the event that passed the allowance included;
/// - a completed stream never passed its allowance.
fn check_budget_stops(streams: &[Stream], lines: &[(usize, serde_json::Value)]) -> u64 {
    let mut line_of = vec![None; streams.len()];
    for (_, line) in lines {
        line_of[index_of(line)] = Some(line);
    }
    let mut stops = 0;
    let mut stops_of_stop_tenant = 0;
    // Stops per replica (A drains after disconnects, B does not; both drop the upstream at a
    // stop), and of those charged the running estimate.
    let mut per_replica = [(0, 0); 2];
    for s in streams {
        let seen = Seen::of(&s.received.0);
        assert!(
            seen.budget_errors == u64::from(seen.budget_error),
            "a budget error event ends its stream: {s:?} {seen:?}"
        );
        let Some(line) = line_of[s.index] else {
            assert!(!seen.budget_error, "a stopped stream has its line: {s:?}");
            continue;
        };
        let f = &line["fields"];
        let outcome = f["outcome"].as_str().unwrap();
        if seen.budget_error {
            assert!(
                !seen.done,
                "a stream stopped by its budget never looks done: {s:?}"
            );
            assert_eq!(
                outcome, "budget_exceeded",
                "the client got the budget error: {s:?} {line}"
            );
        }
        let ((_, input, output), _) = charge_of(line);
        let allowed_output = f["allowed_output_tokens"].as_u64();
        let allowed_total = f["allowed_total_tokens"].as_u64();
        let within = |slack: u64| {
            allowed_output.is_none_or(|a| output <= a + slack)
                && allowed_total.is_none_or(|a| input + output <= a + slack)
        };
        match outcome {
            "budget_exceeded" => {
                stops += 1;
                stops_of_stop_tenant += u64::from(s.tenant == STOP_TENANT);
                per_replica[s.replica].0 += 1;
                per_replica[s.replica].1 += u64::from(f["usage_estimated"] == true);
                if !matches!(s.path, Path::Disconnect(_)) {
                    assert!(
                        seen.budget_error,
                        "the client got the provider's budget_exceeded error event: {s:?} {seen:?} {line}"
                    );
                }
                assert!(
                    f["policy_stopped_by"]
                        .as_str()
                        .is_some_and(|by| by.starts_with("budget:")),
                    "{line}"
                );
                assert!(
                    allowed_output.is_some() || allowed_total.is_some(),
                    "a stopped stream had an allowance: {line}"
                );
                // The running check counts the request's input estimate until the
                // provider reports its count (at the end).
                let received = seen.tokens();
                let input_estimate = s.reservation().1;
                assert!(
                    allowed_output.is_none_or(|a| received <= a)
                        && allowed_total.is_none_or(|a| input_estimate + received <= a),
                    "the client never received past its allowance ({received} tokens of content): {s:?} {line}"
                );
                if f["usage_estimated"] == true {
                    // Charged the running estimate: the event that passed the allowance
                    // included (counted, never sent), and nothing after it: the upstream
                    // is dropped at a budget stop, on the replica that drains too.
                    assert!(
                        !within(0),
                        "a stopped stream passed its allowance, and what passed it is charged: {line}"
                    );
                    assert!(
                        output >= received,
                        "what was generated is charged: {s:?} {line}"
                    );
                    assert!(
                        within(ONE_EVENT_TOKENS),
                        "a stream stops within one event of its allowance: {line}"
                    );
                } else {
                    // The upstream's own count: the stop came at its final usage event.
                    let planned: serde_json::Value = serde_json::from_str(&s.body).unwrap();
                    assert_eq!(
                        Some(output),
                        planned["mock"]["tokens"].as_u64(),
                        "what the upstream generated is charged: {s:?} {line}"
                    );
                }
            }
            "completed" => assert!(
                within(0),
                "a completed stream never passed its allowance: {line}"
            ),
            _ => {}
        }
    }
    println!(
        "budget stops (replica: stopped, of which charged the running estimate): A {:?}, B {:?}",
        per_replica[0], per_replica[1]
    );
    assert!(
        stops_of_stop_tenant > 0 && per_replica[0].1 > 0 && per_replica[1].1 > 0,
        "the run stopped some of the stop tenant's streams mid-stream, on each replica (the one that drains too)"
    );
    stops
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_redis_charge_every_stream_exactly_once_whatever_its_end() {
    if tower_sse_mock::system::program_or_skip(&["redis-server"], "redis-server").is_none() {
        return;
    }
    let seed: u64 = std::env::var("BUDGET_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00b0_d6e7_5124);
    println!("BUDGET_SIM_SEED={seed}");
    let day = day_now();
    let port = free_port();
    let _redis = redis_server(port, &["--save", "", "--appendonly", "no"]);
    let url = format!("redis://127.0.0.1:{port}/");
    let (upstream, mock) = tower_sse_mock::spawn(MockConfig::new()).await;
    let upstream = format!("http://{upstream}");

    let tenants = tenants();
    let keys: Vec<String> = tenants.iter().map(|(token, _)| key_of(token)).collect();
    let file = serde_json::json!({
        "default": [{"measure": "requests", "amount": 1, "per": "day"}],
        "keys": tenants.iter().zip(&keys).map(|((_, limits), key)| {
            (key.clone(), serde_json::Value::Array(limits.iter().map(Lim::json).collect()))
        }).collect::<serde_json::Map<_, _>>(),
        "default_output_tokens": DEFAULT_OUTPUT,
        // Budget stops: a stream that passes what its key had left ends mid-stream.
        "enforce_mid_stream": true,
    });
    let path = std::env::temp_dir().join(format!("budget-sim-{}.json", std::process::id()));
    std::fs::write(&path, file.to_string()).unwrap();
    let budgets = path.to_str().unwrap();
    // One replica drains the upstream of a client that left (its usage is then reported),
    // the other cancels it (its output is estimated from what was delivered).
    let (_a, a, a_lines) = replica(&url, &upstream, budgets, &["--drain", "5"]);
    let (_b, b, b_lines) = replica(&url, &upstream, budgets, &[]);
    let bases = [a, b];
    let started = Instant::now();

    let mut rng = Rng(seed);
    let mut tasks = Vec::new();
    for index in 0..STREAMS as usize {
        let tenant = rng.below(tenants.len() as u64) as usize;
        let replica = rng.below(2) as usize;
        let (tokens, path) = plan(&mut rng, tenant);
        // Some cap the output below what the upstream generates (an overrun: debt), some
        // above, some not at all (the default is reserved); now and then a cap that no burst
        // of the output rate fits (`400`, never retried).
        let max_tokens = match rng.below(8) {
            0..=2 => None,
            3 => Some(1 + rng.below(tokens)),
            4 => Some(5_000),
            _ => Some(tokens + rng.below(20)),
        };
        let mut mock_controls = serde_json::json!({
            "tokens": tokens, "delay_ms": 5 + rng.below(25), "seed": rng.below(1_000),
        });
        match path {
            Path::UpstreamCut(n) => mock_controls["close_after"] = n.into(),
            Path::UpstreamError(n) => mock_controls["error_after"] = n.into(),
            Path::Status(code) => mock_controls["status"] = code.into(),
            Path::Stall => mock_controls["stall_after"] = 0.into(),
            Path::LateHeaders => mock_controls["headers_delay_ms"] = 2_500.into(),
            _ => {}
        }
        let mut body = serde_json::json!({
            "model": "gpt-mock",
            "stream": path != Path::NotStreamed,
            "messages": [{"role": "user", "content": "x".repeat(rng.below(400) as usize)}],
            "mock": mock_controls,
        });
        if let Some(max) = max_tokens {
            body["max_tokens"] = max.into();
        }
        let stream = Stream {
            index,
            tenant,
            replica,
            path,
            body: body.to_string(),
            max_tokens,
            status: 0,
            retry_after: None,
            refused: false,
            received: Received::default(),
        };
        tasks.push(tokio::spawn(run_stream(
            stream,
            bases[replica].clone(),
            tenants[tenant].0.clone(),
            rng.below(8_000),
        )));
    }

    // While the streams run, sample every tenant's limits for the bound.
    let http = reqwest::Client::new();
    let mut peaks: Vec<Vec<u64>> = tenants.iter().map(|(_, l)| vec![0; l.len()]).collect();
    while tasks.iter().any(|t| !t.is_finished()) {
        for (t, (token, _)) in tenants.iter().enumerate() {
            let now = used(&http, &bases[t % 2], token).await;
            for (peak, u) in peaks[t].iter_mut().zip(now) {
                *peak = (*peak).max(u);
            }
        }
        sleep(Duration::from_millis(150)).await;
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the simulation is bounded"
        );
    }
    let mut streams = Vec::new();
    for task in tasks {
        streams.push(task.await.unwrap());
    }
    println!("streams done after {:?}", started.elapsed());

    // Every admitted stream has its one line, on the replica that served it (a drained
    // stream's line comes when its drain ends). A request answered without a stream has no
    // report, so no `stream ended` line: the usage of its answer is charged (the
    // `Reservation` docs), and logged in an `answer charged` line.
    let admitted = streams.iter().filter(|s| !s.refused).count() as u64;
    let reported = streams.iter().filter(|s| s.reported()).count();
    let answered = streams
        .iter()
        .filter(|s| !s.refused && !s.reported())
        .count();
    let deadline = Instant::now() + Duration::from_secs(20);
    let lines = loop {
        let lines = logged(&[&a_lines, &b_lines]);
        if lines.len() >= reported + answered || Instant::now() > deadline {
            break lines;
        }
        sleep(Duration::from_millis(100)).await;
    };
    let (lines, answer_lines): (Vec<_>, Vec<_>) = lines
        .into_iter()
        .partition(|(_, line)| line["fields"]["message"] == "stream ended");
    assert_eq!(lines.len(), reported, "one line per admitted stream");
    assert_eq!(
        answer_lines.len(),
        answered,
        "one `answer charged` line per request answered without a stream"
    );
    assert_eq!(
        mock.stats().requests(),
        admitted,
        "refused requests never reach the upstream"
    );

    // Per tenant: the streams served and refused, and the ledger of their lines.
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut charged: Vec<(u64, u64, u64)> = vec![(0, 0, 0); tenants.len()];
    let mut lined = vec![0u32; streams.len()];
    let mut estimated = 0;
    for s in &streams {
        let name = match (s.refused, s.status) {
            (true, 429) => "refused 429",
            (true, _) => "refused 400 (never fits)",
            _ => "admitted",
        };
        *counts.entry(name).or_default() += 1;
        if s.refused && s.status == 429 {
            assert!(
                s.retry_after.is_some_and(|r| r >= 1),
                "a 429 says when to retry: {s:?}"
            );
        }
        if s.refused && s.status == 400 {
            let reserved = s.reservation();
            assert!(
                tenants[s.tenant]
                    .1
                    .iter()
                    .any(|l| l.of(reserved) > l.capacity()),
                "only a request that can never fit is told so: {s:?}"
            );
        }
    }
    for (replica, line) in &lines {
        let f = &line["fields"];
        *outcomes
            .entry(f["outcome"].as_str().unwrap().to_owned())
            .or_default() += 1;
        let key = f["budget_key"]
            .as_str()
            .unwrap_or_else(|| panic!("every admitted stream is charged: {line}"));
        let t = keys
            .iter()
            .position(|k| k == key)
            .unwrap_or_else(|| panic!("a tenant of the run: {line}"));
        assert_eq!(f["tenant"].as_str(), Some(key), "{line}");
        let ((requests, input, output), flagged) = charge_of(line);
        // The charge is the report's usage wherever the usage has a count.
        if let Some(reported) = f["input_tokens"].as_u64() {
            assert_eq!(input, reported, "the input charged is the report's: {line}");
        } else {
            assert!(
                flagged || input == 0,
                "an input the report has no count of is flagged: {line}"
            );
        }
        if let Some(reported) = f["output_tokens"].as_u64() {
            assert_eq!(
                output, reported,
                "the output charged is the report's: {line}"
            );
        }
        if f["content_events"].as_u64().unwrap_or(0) > 0 {
            assert!(
                output > 0,
                "tokens that flowed are never charged as zero: {line}"
            );
        }
        estimated += u64::from(flagged);
        let c = &mut charged[t];
        c.0 += requests;
        c.1 += input;
        c.2 += output;
        let index = index_of(line);
        let s = &streams[index];
        lined[index] += 1;
        assert_eq!(
            (s.tenant, s.replica),
            (t, *replica),
            "a stream's line is written by the replica that served it, for its tenant: {line}"
        );
        assert!(!s.refused, "a refused request has no line: {line}");
    }
    for (s, n) in streams.iter().zip(&lined) {
        let expected = u32::from(s.reported());
        assert_eq!(*n, expected, "one line per admitted stream: {s:?}");
    }
    // Answered without a stream: charged the usage its answer reports, as its line says.
    // A line names no request (an answer has no report), so per replica and tenant the
    // lines' charges are the answers' usage, as multisets.
    let mut expected = AnswerCharges::new();
    for s in streams.iter().filter(|s| !s.refused && !s.reported()) {
        expected
            .entry((s.replica, s.tenant))
            .or_default()
            .push(s.answered());
    }
    let mut logged = AnswerCharges::new();
    for (replica, line) in &answer_lines {
        let key = line["fields"]["budget_key"]
            .as_str()
            .unwrap_or_else(|| panic!("an answer line names its budget: {line}"));
        let t = keys
            .iter()
            .position(|k| k == key)
            .unwrap_or_else(|| panic!("a tenant of the run: {line}"));
        let ((requests, input, output), flagged) = charge_of(line);
        assert!(
            !flagged,
            "every answer of the mock reports its usage: {line}"
        );
        logged
            .entry((*replica, t))
            .or_default()
            .push((requests, input, output));
        let c = &mut charged[t];
        c.0 += requests;
        c.1 += input;
        c.2 += output;
    }
    for list in expected.values_mut().chain(logged.values_mut()) {
        list.sort_unstable();
    }
    assert_eq!(
        logged, expected,
        "each answer's line, on the replica that served it, charges its usage"
    );

    let stops = check_budget_stops(&streams, &lines);
    println!("{stops} streams stopped by their budget mid-stream");

    // Overruns per tenant: what each stream used beyond what it reserved, per limit (the
    // documented bound). A stream's reservation: 1 request, its body's bytes / 4 (rounded
    // up) of input, its `max_tokens` or the default of output.
    let mut overrun: Vec<Vec<u64>> = tenants.iter().map(|(_, l)| vec![0; l.len()]).collect();
    let answered = streams.iter().filter(|s| !s.refused && !s.reported());
    let charges = lines
        .iter()
        .map(|(_, line)| (&streams[index_of(line)], charge_of(line).0))
        .chain(answered.map(|s| (s, s.answered())));
    for (s, used) in charges {
        let reserved = s.reservation();
        for (i, limit) in tenants[s.tenant].1.iter().enumerate() {
            overrun[s.tenant][i] += limit.of(used).saturating_sub(limit.of(reserved));
        }
    }

    // At rest: each daily ledger holds exactly what the lines say was charged (settlements
    // run after the line, on a task: wait for them).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut at_rest = Vec::new();
    for (t, (token, limits)) in tenants.iter().enumerate() {
        let expected: Vec<u64> = limits[..4].iter().map(|l| l.of(charged[t])).collect();
        let now = loop {
            let now = used(&http, &bases[t % 2], token).await;
            if now[..4] == expected[..] || Instant::now() > deadline {
                break now;
            }
            sleep(Duration::from_millis(100)).await;
        };
        if day_now() != day {
            println!("the UTC day changed during the run: its daily ledgers started afresh");
            return;
        }
        assert_eq!(
            now[..4],
            expected[..],
            "tenant {t}: the daily ledgers (requests, input, output, total) are what the lines charged, nothing stays reserved"
        );
        // The bound, while running and at rest.
        for (i, limit) in limits.iter().enumerate() {
            let bound = limit.capacity() + overrun[t][i];
            assert!(
                peaks[t][i].max(now[i]) <= bound,
                "tenant {t}: {limit:?} reached {} (at rest {}), over its capacity by more than its streams' overruns ({})",
                peaks[t][i],
                now[i],
                overrun[t][i]
            );
        }
        at_rest.push(now);
    }
    let _ = std::fs::remove_file(&path);
    println!(
        "budget simulation (seed {seed}): {STREAMS} streams, {counts:?}, outcomes {outcomes:?}, {estimated} charges flagged estimated; charged per tenant (requests, input, output) {charged:?}; at rest {at_rest:?}; peaks {peaks:?}; {:?}",
        started.elapsed()
    );
}

/// A stream resumed on the other replica (`--resumable` on the same redis-server) is charged
/// once, by the replica that produced it: the resume is answered from the shared store,
/// outside the budget, and the producer, which ran on after its client left, settles what
/// the upstream generated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_resumed_on_the_other_replica_is_charged_once_by_its_producer() {
    if tower_sse_mock::system::program_or_skip(&["redis-server"], "redis-server").is_none() {
        return;
    }
    let day = day_now();
    let port = free_port();
    let _redis = redis_server(port, &["--save", "", "--appendonly", "no"]);
    let url = format!("redis://127.0.0.1:{port}/");
    let (upstream, mock) = tower_sse_mock::spawn(MockConfig::new()).await;
    let upstream = format!("http://{upstream}");
    let token = "sk-sim-resume";
    let limits = [
        Lim::day("requests", 1_000),
        Lim::day("input_tokens", 1_000_000),
        Lim::day("output_tokens", 1_000_000),
        Lim::day("total_tokens", 1_000_000),
    ];
    let file = serde_json::json!({
        "keys": {key_of(token): limits.iter().map(Lim::json).collect::<Vec<_>>()},
        "default_output_tokens": DEFAULT_OUTPUT,
    });
    let path = std::env::temp_dir().join(format!("budget-sim-resume-{}.json", std::process::id()));
    std::fs::write(&path, file.to_string()).unwrap();
    let budgets = path.to_str().unwrap();
    let (_a, a, a_lines) = replica(&url, &upstream, budgets, &["--resumable"]);
    let (_b, b, b_lines) = replica(&url, &upstream, budgets, &["--resumable"]);
    let http = reqwest::Client::new();

    // 20 tokens, 50 ms apart, produced on A; the client reads five events and goes.
    let mut response = http
        .post(format!("{a}/v1/chat/completions"))
        .header("authorization", format!("Bearer {token}"))
        .header("x-request-id", "sim-resume")
        .header("content-type", "application/json")
        .body(r#"{"model":"gpt-mock","stream":true,"messages":[],"mock":{"tokens":20,"delay_ms":50}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut first = String::new();
    let last_id = loop {
        let chunk = timeout(Duration::from_secs(30), response.chunk())
            .await
            .expect("the stream goes on")
            .unwrap()
            .expect("more of the stream");
        first.push_str(std::str::from_utf8(&chunk).unwrap());
        // The ids of whole events only.
        let whole = &first[..first.rfind("\n\n").map_or(0, |end| end + 2)];
        let ids: Vec<&str> = whole
            .lines()
            .filter_map(|l| l.strip_prefix("id: "))
            .collect();
        if ids.len() >= 5 {
            break ids.last().unwrap().to_string();
        }
    };
    drop(response);

    // Its tenant resumes on B, to the end.
    let resumed = http
        .get(format!("{b}/v1/chat/completions"))
        .header("authorization", format!("Bearer {token}"))
        .header("last-event-id", &last_id)
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200);
    let rest = timeout(Duration::from_secs(30), resumed.text())
        .await
        .expect("the resumed stream ends")
        .unwrap();
    assert!(rest.contains("data: [DONE]"), "resumed to the end: {rest}");
    assert_eq!(mock.stats().requests(), 1, "one upstream request");

    // One charged line, the producer's (A), for everything the upstream generated: its
    // reported usage, 20 tokens of output.
    let deadline = Instant::now() + Duration::from_secs(10);
    let charged = loop {
        let mut charged = logged(&[&a_lines, &b_lines]);
        charged.retain(|(_, line)| line["fields"]["budget_key"].is_string());
        if !charged.is_empty() || Instant::now() > deadline {
            break charged;
        }
        sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(charged.len(), 1, "one charged line: {charged:?}");
    let (replica, line) = &charged[0];
    assert_eq!(*replica, 0, "charged by the producer: {line}");
    assert_eq!(
        line["span"]["request_id"].as_str(),
        Some("sim-resume"),
        "{line}"
    );
    let ((requests, input, output), _) = charge_of(line);
    assert_eq!(
        line["fields"]["output_tokens"].as_u64(),
        Some(20),
        "the producer ran to the end and has the upstream's usage: {line}"
    );
    assert_eq!(output, 20, "what the upstream generated is charged: {line}");

    // The shared ledger holds that one charge, nothing reserved, seen from either replica:
    // one request (B admitted nothing: a resume is answered before the budget, and an
    // admission would have reserved its request before B answered).
    let expected: Vec<u64> = limits
        .iter()
        .map(|l| l.of((requests, input, output)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    for base in [&a, &b] {
        let now = loop {
            let now = used(&http, base, token).await;
            if now == expected || Instant::now() > deadline {
                break now;
            }
            sleep(Duration::from_millis(50)).await;
        };
        if day_now() != day {
            println!("the UTC day changed during the run: its daily ledgers started afresh");
            return;
        }
        assert_eq!(now, expected, "the ledger, from {base}");
    }
    assert!(
        b_lines
            .lock()
            .unwrap()
            .iter()
            .all(|line| !line["fields"]["budget_key"].is_string()),
        "the replica that resumed charged nothing"
    );
    let _ = std::fs::remove_file(&path);
}
