//! Chaos across two gateway processes (`--resumable --redis URL`, the `gateway` binary) in
//! front of one mock upstream, on a real `redis-server`: random cuts, random replica
//! switches, silences longer than the Redis lease, slow readers and a Redis restart.
//!
//! Every client either collects every event of its stream exactly once, in order (checked
//! against the mock's seeded text, event ids and `[DONE]`), or is told (an SSE error event,
//! a broken end, a `204` with `sse-resume`, a stream served `sse-resume: off`): nothing is
//! lost silently. Every report is true: each stream has exactly one `stream ended` log line,
//! written by the replica that produced it, and for each client that got its whole stream
//! the line's outcome, event count, digest (of the stamped stream, as the `resume` module docs
//! tell a client to verify it), connections and resumes are what the client saw, wherever its
//! connections were served.
//!
//! Seeded (`CHAOS_SEED` replays a run), bounded to about a minute, and it prints its counts.
//! Skipped (one line says why) when this machine has no `redis-server`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio::time::{Instant, sleep, timeout};
use tower_sse_mock::MockConfig;

#[path = "support/binary.rs"]
mod binary;
mod support;
use binary::{Lines, json_logging};
use support::{Process, free_port, redis_server};

/// Concurrent clients, one stream each.
const CLIENTS: u64 = 24;
/// The most connections one client makes (its first and its resumes).
const MAX_CONNECTIONS: u32 = 8;
/// Longer than the gateway's Redis lease (10 s by default): a silent upstream.
const SILENCE_MS: u64 = 11_000;

/// A persistent `redis-server` (an append-only file synced on every write, as production
/// runs it: a restart without persistence also loses the logs of streams that ended before
/// it, which the `RedisStore` docs say no mirror writes again).
fn redis_on(port: u16, dir: &Path) -> Process {
    let dir = dir.to_str().expect("a UTF-8 temporary directory");
    redis_server(
        port,
        &[
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            dir,
        ],
    )
}

/// A gateway replica on `redis` in front of `upstream`, JSON logs: the process, its base
/// URL and its `stream ended` lines (collected as they come).
fn replica(redis: &str, upstream: &str) -> (Process, String, Lines) {
    json_logging(&[
        "--resumable",
        "--redis",
        redis,
        "--upstream",
        upstream,
        // Keep-alives during the silences: each reader's own, never in the digest.
        "--keep-alive",
        "2",
    ])
}

/// splitmix64: the test's only source of randomness, from its seed.
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

/// One block of an event stream as a client parses it.
struct Block {
    raw: Vec<u8>,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

/// Take the complete blocks (ended by a blank line; the gateway writes LF) off the front of
/// `buffer`; comment-only blocks (keep-alives) are dropped.
fn take_blocks(buffer: &mut Vec<u8>) -> Vec<Block> {
    let mut blocks = Vec::new();
    while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
        let raw: Vec<u8> = buffer.drain(..end + 2).collect();
        let text = std::str::from_utf8(&raw).expect("UTF-8 events");
        let (mut id, mut event, mut data) = (None, None, None::<String>);
        let mut fields = 0;
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with(':'))
        {
            fields += 1;
            let (name, value) = line.split_once(": ").unwrap_or((line, ""));
            match name {
                "id" => id = Some(value.to_owned()),
                "event" => event = Some(value.to_owned()),
                "data" => match &mut data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => data = Some(value.to_owned()),
                },
                _ => {}
            }
        }
        if fields > 0 {
            blocks.push(Block {
                raw,
                id,
                event,
                data,
            });
        }
    }
    blocks
}

/// What one client did and got.
#[derive(Debug, Default)]
struct Client {
    index: u64,
    seed: u64,
    tokens: u32,
    silent: bool,
    slow: bool,
    /// The stream's id (the part of the event ids before the dot).
    stream: Option<String>,
    /// The upstream's response id (`chatcmpl-mock-<n>`): its report's key.
    response_id: Option<String>,
    /// The replica of the first connection (the producer's): 0 or 1.
    producer: usize,
    /// The stamped events, in order, byte for byte.
    bytes: Vec<u8>,
    events: u64,
    last_seq: u64,
    text: String,
    done: bool,
    /// When each connection answered 200 (wall clock), and whether it was a resume.
    attached: Vec<(SystemTime, bool)>,
    /// Connections answered 200, and of those, resumes (`Last-Event-ID`).
    connections: u64,
    resumes: u64,
    switches: u64,
    explicit_errors: u64,
    not_resumable: bool,
    /// How the client's last connection ended.
    end: String,
    trace: Vec<String>,
}

impl Client {
    /// Take one stamped event: in order and once, or the test fails.
    fn take(&mut self, block: Block) {
        if block.event.as_deref() == Some("error") {
            // The gateway cut the stream and said so (`resume_gap`, `server_shutdown`...).
            self.explicit_errors += 1;
            self.trace.push(format!("error event {:?}", block.data));
            return;
        }
        let data = block.data.expect("an event with data");
        // A stream served `sse-resume: off` has no ids of ours: its events are counted.
        let seq = match &block.id {
            Some(id) => {
                let (stream, seq) = id.rsplit_once('.').expect("<stream>.<seq>");
                assert_eq!(
                    self.stream.get_or_insert_with(|| stream.to_owned()),
                    stream,
                    "client {}: another stream's event",
                    self.index
                );
                seq.parse().expect("a numeric seq")
            }
            None => {
                assert!(
                    self.not_resumable,
                    "client {}: an event without an id",
                    self.index
                );
                self.last_seq + 1
            }
        };
        assert_eq!(
            seq,
            self.last_seq + 1,
            "client {}: a duplicate or a hole: {:?}",
            self.index,
            self.trace
        );
        self.last_seq = seq;
        self.events += 1;
        self.bytes.extend_from_slice(&block.raw);
        if data == "[DONE]" {
            self.done = true;
            return;
        }
        let json: serde_json::Value = serde_json::from_str(&data).expect("a JSON chunk");
        if self.response_id.is_none() {
            self.response_id = json["id"].as_str().map(str::to_owned);
        }
        if let Some(text) = json["choices"][0]["delta"]["content"].as_str() {
            self.text.push_str(text);
        }
    }

    fn complete(&self) -> bool {
        self.done && self.text == tower_sse_mock::content(self.seed, self.tokens)
    }
}

/// Read one connection's body; `cut_after` events (if any) and the client drops it. Returns
/// how it ended: `"cut"`, `"clean"` or `"broken"`.
async fn read(
    client: &mut Client,
    mut response: reqwest::Response,
    cut_after: Option<u64>,
    rng: &mut Rng,
) -> &'static str {
    let mut buffer = Vec::new();
    let mut got = 0;
    loop {
        if cut_after.is_some_and(|n| got >= n) {
            return "cut";
        }
        if client.slow {
            sleep(Duration::from_millis(50 + rng.below(150))).await;
        }
        // Keep-alives every 2 s: 20 s of nothing is a stuck stream.
        let chunk = timeout(Duration::from_secs(20), response.chunk())
            .await
            .unwrap_or_else(|_| panic!("client {}: stuck: {:?}", client.index, client.trace));
        match chunk {
            Ok(Some(chunk)) => {
                buffer.extend_from_slice(&chunk);
                for block in take_blocks(&mut buffer) {
                    got += 1;
                    client.take(block);
                }
            }
            Ok(None) => return "clean",
            Err(_) => return "broken",
        }
    }
}

async fn run_client(mut c: Client, bases: [String; 2], mut rng: Rng) -> Client {
    let http = reqwest::Client::new();
    let tenant = format!("Bearer tenant-{}", c.index % 3);
    // Start at staggered times: some while Redis is away.
    sleep(Duration::from_millis(rng.below(12_000))).await;
    let mut replica = rng.below(2) as usize;
    c.producer = replica;
    let mut last_id: Option<String> = None;
    for connection in 0..MAX_CONNECTIONS {
        let response = match &last_id {
            None => {
                let delay = if c.silent {
                    SILENCE_MS
                } else {
                    20 + rng.below(80)
                };
                let body = serde_json::json!({
                    "model": "gpt-mock", "stream": true, "messages": [],
                    // Asked for, the usage chunk reaches the client: the report's events
                    // (received from the upstream) are then the client's.
                    "stream_options": {"include_usage": true},
                    "mock": {"tokens": c.tokens, "delay_ms": delay, "seed": c.seed},
                });
                http.post(format!("{}/v1/chat/completions", bases[replica]))
                    .header("authorization", &tenant)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap()
            }
            Some(id) => http
                .get(format!("{}/v1/chat/completions", bases[replica]))
                .header("authorization", &tenant)
                .header("last-event-id", id)
                .send()
                .await
                .unwrap(),
        };
        let status = response.status().as_u16();
        let told = response
            .headers()
            .get("sse-resume")
            .map(|v| v.to_str().unwrap().to_owned());
        c.trace.push(format!(
            "#{connection} replica {replica}: {status} {told:?} after seq {}",
            c.last_seq
        ));
        if status == 204 {
            c.end = format!("204 {told:?}");
            if told.is_some() {
                c.explicit_errors += 1;
            }
            if told.as_deref() == Some("unavailable") {
                // The store could not answer (Redis restarting): a client may try again.
                sleep(Duration::from_millis(500)).await;
                continue;
            }
            break;
        }
        assert_eq!(status, 200, "client {}: {:?}", c.index, c.trace);
        c.connections += 1;
        c.attached.push((SystemTime::now(), last_id.is_some()));
        if last_id.is_some() {
            c.resumes += 1;
        }
        if told.as_deref() == Some("off") {
            // Redis was away when it began: served, and the client told it is not resumable.
            c.not_resumable = true;
        }
        // Cut at a random event, up to three times per stream, most often early.
        let cut_after = (connection < 3 && rng.below(3) > 0)
            .then(|| 1 + rng.below(u64::from(c.tokens) / 2 + 1));
        let ended = read(&mut c, response, cut_after, &mut rng).await;
        c.trace.push(format!("  {ended} at seq {}", c.last_seq));
        match ended {
            "clean" => {
                c.end = "clean".into();
                break;
            }
            "broken" => c.explicit_errors += 1,
            _ => {}
        }
        if c.not_resumable {
            // Told at the start: cut, it knows it lost the rest.
            c.explicit_errors += 1;
            c.end = format!("{ended}, not resumable");
            break;
        }
        let Some(stream) = c.stream.as_deref() else {
            c.end = format!("{ended} before its first event");
            break;
        };
        last_id = Some(format!("{stream}.{}", c.last_seq));
        // A pause, sometimes longer (the stream goes on with no reader: a replay), then a
        // resume, on the other replica two times in three.
        let pause = if rng.below(5) == 0 {
            2_000 + rng.below(3_000)
        } else {
            rng.below(800)
        };
        sleep(Duration::from_millis(pause)).await;
        if rng.below(3) > 0 {
            replica = 1 - replica;
            c.switches += 1;
        }
    }
    c
}

/// A log line's RFC 3339 UTC timestamp (`2026-12-07T06:34:40.127198Z`) as a `SystemTime`.
fn timestamp(text: &str) -> SystemTime {
    let number = |range: std::ops::Range<usize>| -> i64 { text[range].parse().unwrap() };
    let (year, month, day) = (number(0..4), number(5..7), number(8..10));
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + number(11..13) * 3600 + number(14..16) * 60 + number(17..19);
    let fraction: f64 = format!("0{}", text[19..].trim_end_matches('Z'))
        .parse()
        .unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds as u64) + Duration::from_secs_f64(fraction)
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tower-sse-gateway-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_cuts_switches_silences_slow_readers_and_a_redis_restart_lose_nothing_silently()
 {
    if tower_sse_mock::system::program_or_skip(&["redis-server"], "redis-server").is_none() {
        return;
    }
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00c4_a05e_ed23);
    println!("CHAOS_SEED={seed}");
    let dir = temp_dir();
    let port = free_port();
    let redis = redis_on(port, &dir);
    let url = format!("redis://127.0.0.1:{port}/");
    let (upstream, mock) = tower_sse_mock::spawn(MockConfig::new()).await;
    let upstream = format!("http://{upstream}");
    let (_a, a, a_lines) = replica(&url, &upstream);
    let (_b, b, b_lines) = replica(&url, &upstream);
    let started = Instant::now();

    let mut rng = Rng(seed);
    let mut tasks = Vec::new();
    for index in 0..CLIENTS {
        let mut client_rng = Rng(rng.next());
        let silent = index % 4 == 0;
        let client = Client {
            index,
            seed: client_rng.below(1_000),
            tokens: if silent {
                3
            } else {
                10 + client_rng.below(40) as u32
            },
            silent,
            slow: client_rng.below(3) == 0,
            ..Client::default()
        };
        tasks.push(tokio::spawn(run_client(
            client,
            [a.clone(), b.clone()],
            client_rng,
        )));
    }
    // Redis restarts in the middle: streams that start while it is away are served without
    // resumption (`sse-resume: off`); live ones re-sync.
    sleep(Duration::from_secs(5)).await;
    drop(redis);
    sleep(Duration::from_millis(1_500)).await;
    let _redis = redis_on(port, &dir);

    let mut clients = Vec::new();
    for task in tasks {
        clients.push(
            timeout(Duration::from_secs(150), task)
                .await
                .expect("the chaos test is bounded")
                .unwrap(),
        );
    }
    println!("clients done after {:?}", started.elapsed());
    // Each stream was generated once: resumes never reach the upstream.
    assert_eq!(mock.stats().requests(), CLIENTS);

    // Each stream's one report, from the replica that produced it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let reports = loop {
        let mut reports: HashMap<String, Vec<(usize, serde_json::Value)>> = HashMap::new();
        for (replica, lines) in [&a_lines, &b_lines].into_iter().enumerate() {
            for line in lines.lock().unwrap().iter() {
                if let Some(id) = line["fields"]["response_id"].as_str() {
                    reports
                        .entry(id.to_owned())
                        .or_default()
                        .push((replica, line.clone()));
                }
            }
        }
        if reports.len() as u64 >= CLIENTS || Instant::now() > deadline {
            break reports;
        }
        sleep(Duration::from_millis(100)).await;
    };

    let (mut complete, mut told, mut losses, mut miscounted) = (0, 0, 0, 0);
    let (mut resumes, mut switches, mut explicit) = (0, 0, 0);
    for c in &clients {
        resumes += c.resumes;
        switches += c.switches;
        explicit += c.explicit_errors;
        let quiet_end = c.end == "clean" || c.end == "204 None";
        if c.complete() {
            complete += 1;
        } else if c.explicit_errors > 0 && !quiet_end {
            told += 1;
        } else {
            losses += 1;
            println!("client {}: LOST silently: {:?}", c.index, c.trace);
        }
        println!(
            "client {:2}: {} tokens{}{}, {} events, {} connections, {} resumes, {} switches, {} explicit, end {}, complete {}",
            c.index,
            c.tokens,
            if c.silent { " silent" } else { "" },
            if c.slow { " slow" } else { "" },
            c.events,
            c.connections,
            c.resumes,
            c.switches,
            c.explicit_errors,
            c.end,
            c.complete()
        );

        // The report.
        let id = c
            .response_id
            .as_deref()
            .expect("every client got its first event");
        let lines = reports.get(id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            lines.len(),
            1,
            "client {}: one report per stream: {lines:?}",
            c.index
        );
        let (replica, line) = &lines[0];
        assert_eq!(
            *replica, c.producer,
            "client {}: reported where it was produced",
            c.index
        );
        let fields = &line["fields"];
        let span = &line["span"];
        if c.not_resumable {
            continue;
        }
        assert_eq!(
            span["stream_id"].as_str(),
            c.stream.as_deref(),
            "client {}: {line}",
            c.index
        );
        if !c.complete() {
            continue;
        }
        assert_eq!(fields["outcome"], "completed", "client {}: {line}", c.index);
        assert_eq!(
            fields["events"].as_u64(),
            Some(c.events),
            "client {}: {line}",
            c.index
        );
        let digest: String = Sha256::digest(&c.bytes)[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            fields["digest"].as_str(),
            Some(digest.as_str()),
            "client {}: the digest of what it got: {line}",
            c.index
        );
        // The report is made when the stream ends: it counts the connections attached by
        // then, wherever they were served. Those within a margin of the end may or may not
        // be in it; the rest must be counted exactly.
        let end = timestamp(line["timestamp"].as_str().expect("a timestamp"));
        let margin = Duration::from_millis(500);
        let count = |pick: &dyn Fn(&(SystemTime, bool)) -> bool| {
            c.attached.iter().filter(|a| pick(a)).count() as u64
        };
        let surely = (
            count(&|(t, _)| *t + margin < end),
            count(&|(t, resume)| *resume && *t + margin < end),
        );
        let maybe = (
            count(&|(t, _)| *t < end + margin),
            count(&|(t, resume)| *resume && *t < end + margin),
        );
        let reported = (
            span["connections"].as_u64().unwrap(),
            span["resumes"].as_u64().unwrap(),
        );
        if !(surely.0..=maybe.0).contains(&reported.0)
            || !(surely.1..=maybe.1).contains(&reported.1)
        {
            miscounted += 1;
            println!(
                "client {}: MISCOUNTED: reported (connections, resumes) {reported:?}, attached before the end {surely:?} (up to {maybe:?} within {margin:?}): {:?} end {:?} attached {:?}",
                c.index, c.trace, end, c.attached
            );
        }
    }
    println!(
        "chaos (seed {seed}): {CLIENTS} streams, {resumes} resumes, {switches} switches, {explicit} explicit errors, {complete} complete, {told} told of a loss, losses = {losses}, reports miscounting readers = {miscounted}; {:?}",
        started.elapsed()
    );
    assert_eq!(losses, 0, "a client lost events without being told");
    assert_eq!(
        miscounted, 0,
        "a report did not count every reader attached before its end"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every command `redis-cli INFO commandstats` counts, by name.
fn command_calls(port: u16) -> HashMap<String, u64> {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "commandstats"])
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(":calls=")?;
            Some((name.to_owned(), rest.split(',').next()?.parse().ok()?))
        })
        .collect()
}

/// The commands each kind of round trip carries, per second, over `window`, and the total.
async fn rates(port: u16, window: Duration) -> (String, f64) {
    let before = command_calls(port);
    sleep(window).await;
    let after = command_calls(port);
    let mut rates: Vec<(String, f64)> = after
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "info" | "ping"))
        .map(|(name, n)| {
            let d = n - before.get(name).copied().unwrap_or(0);
            (name.clone(), d as f64 / window.as_secs_f64())
        })
        .filter(|(_, rate)| *rate > 0.0)
        .collect();
    rates.sort_by(|a, b| a.0.cmp(&b.0));
    let total = rates.iter().map(|(_, r)| r).sum();
    let text = rates
        .iter()
        .map(|(name, rate)| format!("{name} {rate:.2}/s"))
        .collect::<Vec<_>>()
        .join(", ");
    (text, total)
}

/// For BENCHMARKS.md: what one silent resumable stream costs Redis at the gateway's
/// defaults (lease 10 s, poll 1 s, detach grace 30 s), two gateway processes, counted with
/// `INFO commandstats`: with its reader on the producer's replica, then with its reader
/// moved to the other replica. Run with `--ignored --nocapture` (about 80 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement for BENCHMARKS.md"]
async fn redis_round_trips_of_a_silent_stream_at_the_default_lease() {
    if tower_sse_mock::system::program_or_skip(&["redis-server"], "redis-server").is_none() {
        return;
    }
    let dir = temp_dir();
    let port = free_port();
    let _redis = redis_on(port, &dir);
    let url = format!("redis://127.0.0.1:{port}/");
    let (upstream, _mock) = tower_sse_mock::spawn(MockConfig::new()).await;
    let upstream = format!("http://{upstream}");
    let (_a, a, _) = replica(&url, &upstream);
    let (_b, b, _) = replica(&url, &upstream);
    let http = reqwest::Client::new();
    let window = Duration::from_secs(30);

    // Idle: two replicas, no stream (their subscriptions and safety polls only).
    let (idle, idle_total) = rates(port, Duration::from_secs(10)).await;
    println!("idle (two replicas, no stream): {idle} = {idle_total:.2} commands/s");

    // One stream: its first event, then silence for longer than the measurement.
    let body = serde_json::json!({
        "model": "gpt-mock", "stream": true, "messages": [],
        "mock": {"tokens": 2, "delay_ms": 120_000},
    });
    let mut response = http
        .post(format!("{a}/v1/chat/completions"))
        .header("authorization", "Bearer k")
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let mut buffer = Vec::new();
    let mut client = Client::default();
    while client.events == 0 {
        buffer.extend_from_slice(&response.chunk().await.unwrap().unwrap());
        for block in take_blocks(&mut buffer) {
            client.take(block);
        }
    }
    let id = format!("{}.{}", client.stream.clone().unwrap(), client.last_seq);
    sleep(Duration::from_secs(2)).await;
    let (local, local_total) = rates(port, window).await;
    println!(
        "silent stream, reader on the producer's replica: {local} = {local_total:.2} commands/s (idle {idle_total:.2})"
    );

    // The reader moves to the other replica.
    drop(response);
    let remote = http
        .get(format!("{b}/v1/chat/completions"))
        .header("authorization", "Bearer k")
        .header("last-event-id", &id)
        .send()
        .await
        .unwrap();
    assert_eq!(remote.status(), 200);
    sleep(Duration::from_secs(2)).await;
    let (moved, moved_total) = rates(port, window).await;
    println!(
        "silent stream, reader on the other replica: {moved} = {moved_total:.2} commands/s (idle {idle_total:.2})"
    );
    drop(remote);
    let _ = std::fs::remove_dir_all(&dir);
}
