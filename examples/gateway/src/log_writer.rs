//! The log output, off the runtime threads: each log line is handed to a bounded queue and
//! written to stdout by a dedicated thread.
//!
//! A stream's end-of-stream line is made in `poll_frame` or `Drop` of its body, on a runtime
//! thread. Writing it to stdout there would block that thread (and every connection on it)
//! whenever stdout is slow: a full pipe, a paused terminal, a log shipper that lags. Here the
//! runtime thread only copies the formatted line into the queue. The thread writes lines in
//! batches, at most 5 ms after they were logged, so that logging a line seldom wakes it.
//!
//! **When the queue is full** (the writer is [`DEFAULT_CAPACITY`] lines behind, or the
//! capacity given to [`LogWriter::stdout`]), the line is dropped and counted in the
//! `gateway.log.lines.dropped_total` counter ([`LOG_LINES_DROPPED`], `gateway_log_lines_dropped_total` on
//! `/metrics`) and in
//! [`LogWriter::dropped`]: the runtime never waits for stdout. **At shutdown**,
//! dropping the [`FlushGuard`] waits until every line queued before it is written and
//! flushed, so a graceful exit loses no line; lines logged after that are written directly.
//! It waits [`DEFAULT_FLUSH_TIMEOUT`] at most ([`FlushGuard::flush_timeout`]): a stdout
//! that never drains (a log shipper gone, a pipe nobody reads) must not keep the process
//! from exiting. Then it says so on stderr, if stderr takes it at once, and returns: the
//! lines still queued are lost.
//!
//! ```
//! use std::io::Write;
//! use example_gateway::log_writer::LogWriter;
//!
//! let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
//! # #[derive(Clone)] struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
//! # impl Write for Shared {
//! #     fn write(&mut self, b: &[u8]) -> std::io::Result<usize> { self.0.lock().unwrap().write(b) }
//! #     fn flush(&mut self) -> std::io::Result<()> { Ok(()) }
//! # }
//! let (writer, guard) = LogWriter::to(Shared(out.clone()), 1024).unwrap();
//! writer.line().write_all(b"stream ended\n").unwrap();
//! drop(guard); // waits for the line to be written
//! assert_eq!(&out.lock().unwrap()[..], b"stream ended\n");
//! ```

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The counter of log lines dropped because the writer thread was behind.
pub const LOG_LINES_DROPPED: &str = "gateway.log.lines.dropped_total";

/// Lines the queue holds by default (`--log-queue`): at a few hundred bytes a line, under
/// 100 MB if all are queued, and two minutes of log at a thousand streams a second.
pub const DEFAULT_CAPACITY: usize = 128 * 1024;

/// How long dropping the [`FlushGuard`] waits for the queued lines to be written by default
/// (`--log-flush-timeout`).
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

enum Message {
    Line(Vec<u8>),
    /// Write everything before this, flush, and stop.
    Shutdown,
}

/// Hands log lines to the writer thread (cheap to clone; `tracing_subscriber`'s
/// `MakeWriter`, with the `cli` feature).
#[derive(Clone, Debug)]
pub struct LogWriter {
    queue: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
    /// Where lines go once the writer thread has stopped (at shutdown).
    direct: fn() -> Box<dyn Write>,
}

/// Flushes the queued lines when dropped, and stops the writer thread.
#[derive(Debug)]
#[must_use = "dropping the guard stops the writer thread"]
pub struct FlushGuard {
    queue: SyncSender<Message>,
    thread: Option<JoinHandle<()>>,
    timeout: Duration,
}

impl LogWriter {
    /// Lines to stdout, at most `capacity` queued.
    pub fn stdout(capacity: usize) -> io::Result<(Self, FlushGuard)> {
        Self::spawn(io::stdout(), capacity, || Box::new(io::stdout()))
    }

    /// Lines to `out` (tests), at most `capacity` queued; after shutdown, lines are dropped
    /// (and counted).
    pub fn to(out: impl Write + Send + 'static, capacity: usize) -> io::Result<(Self, FlushGuard)> {
        Self::spawn(out, capacity, || Box::new(io::sink()))
    }

    fn spawn(
        mut out: impl Write + Send + 'static,
        capacity: usize,
        direct: fn() -> Box<dyn Write>,
    ) -> io::Result<(Self, FlushGuard)> {
        let (queue, lines) = sync_channel(capacity.max(1));
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_lines(&lines, &mut out))?;
        let writer = Self {
            queue: queue.clone(),
            dropped: Arc::default(),
            direct,
        };
        let guard = FlushGuard {
            queue,
            thread: Some(thread),
            timeout: DEFAULT_FLUSH_TIMEOUT,
        };
        Ok((writer, guard))
    }

    /// A writer for one log line: what is written to it is queued, whole, when it is
    /// dropped.
    pub fn line(&self) -> Line<'_> {
        Line {
            writer: self,
            buf: Vec::new(),
        }
    }

    /// Lines dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn send(&self, line: Vec<u8>) {
        match self.queue.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(LOG_LINES_DROPPED).increment(1);
            }
            // The writer thread has stopped (shutdown): write the line here.
            Err(TrySendError::Disconnected(Message::Line(line))) => {
                let _ = (self.direct)().write_all(&line);
            }
            Err(TrySendError::Disconnected(Message::Shutdown)) => {}
        }
    }
}

/// One log line on its way to the queue (see [`LogWriter::line`]).
#[derive(Debug)]
pub struct Line<'a> {
    writer: &'a LogWriter,
    buf: Vec<u8>,
}

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.writer.send(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(any(feature = "cli", feature = "tuned"))]
impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        self.line()
    }
}

/// The writer thread: write the lines queued so far in one write (one system call for a
/// burst of lines, where stdout's line buffering made one per line), flush, and when that
/// emptied the queue, pause [`BATCH_PAUSE`] before waiting for the next line: lines logged
/// meanwhile are queued without waking this thread (no futex call on the runtime thread
/// that logs them), and go out together. Stops at `Shutdown` (or when every sender is
/// gone), after writing what came before it.
fn write_lines(lines: &Receiver<Message>, out: &mut impl Write) {
    let mut batch = Vec::new();
    while let Ok(message) = lines.recv() {
        let mut next = Some(message);
        let mut stop = false;
        let mut emptied = false;
        // Take what is queued, at most `MAX_BATCH_BYTES` at once.
        while let Some(message) = next.take() {
            match message {
                Message::Line(line) => batch.extend_from_slice(&line),
                Message::Shutdown => {
                    stop = true;
                    break;
                }
            }
            if batch.len() >= MAX_BATCH_BYTES {
                break;
            }
            next = lines.try_recv().ok();
            emptied = next.is_none();
        }
        let _ = out.write_all(&batch);
        let _ = out.flush();
        batch.clear();
        batch.shrink_to(MAX_BATCH_BYTES);
        if stop {
            return;
        }
        if emptied {
            std::thread::sleep(BATCH_PAUSE);
        }
    }
}

/// The most bytes of lines the writer thread writes at once.
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// How long the writer thread lets lines gather after writing all it had: what a log line
/// may be delayed by (a full batch is written at once, whatever the pause).
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

impl FlushGuard {
    /// Wait at most `timeout` for the queued lines when dropped (default
    /// [`DEFAULT_FLUSH_TIMEOUT`]; zero: write what the output takes at once, wait for
    /// nothing).
    pub fn flush_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Queue the stop behind every line, and wait for the thread to write them, until
    /// `deadline`. `false` when the output did not drain in time.
    fn stop_by(&mut self, deadline: Instant) -> bool {
        let mut message = Message::Shutdown;
        // Room in a full queue, while the thread writes.
        loop {
            match self.queue.try_send(message) {
                Ok(()) => break,
                // The thread is gone: nothing is left to wait for.
                Err(TrySendError::Disconnected(_)) => return true,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    message = m;
                    std::thread::sleep(FLUSH_POLL);
                }
                Err(TrySendError::Full(_)) => return false,
            }
        }
        let Some(thread) = self.thread.take() else {
            return true;
        };
        if !finished_by(&thread, deadline) {
            // Detached: it ends with the process.
            return false;
        }
        let _ = thread.join();
        true
    }
}

/// How often a dropped [`FlushGuard`] looks whether a thread is done.
const FLUSH_POLL: Duration = Duration::from_millis(1);

/// Whether `thread` finished by `deadline` (looked at every [`FLUSH_POLL`]).
fn finished_by(thread: &JoinHandle<()>, deadline: Instant) -> bool {
    while !thread.is_finished() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(FLUSH_POLL);
    }
    true
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        if self.stop_by(Instant::now() + self.timeout) {
            return;
        }
        // Said from a thread of its own, waited for briefly: stderr may be the same stalled
        // pipe as stdout, and must not hold the exit either.
        let timeout = self.timeout;
        let said = std::thread::Builder::new().spawn(move || {
            eprintln!(
                "log writer: stdout did not take the queued log lines within {timeout:?}; \
                 the lines not yet written are lost"
            );
        });
        if let Ok(said) = said {
            finished_by(&said, Instant::now() + Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Condvar, Mutex};

    use super::*;

    /// A shared buffer; writes wait while `blocked` is set (a stalled stdout).
    #[derive(Clone, Default)]
    struct Out {
        bytes: Arc<Mutex<Vec<u8>>>,
        blocked: Arc<(Mutex<bool>, Condvar)>,
        writes: Arc<AtomicU64>,
        /// Writes that have begun (and may be waiting while blocked).
        started: Arc<AtomicU64>,
    }

    impl Out {
        fn block(&self, blocked: bool) {
            *self.blocked.0.lock().unwrap() = blocked;
            self.blocked.1.notify_all();
        }

        fn text(&self) -> String {
            String::from_utf8(self.bytes.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for Out {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.started.fetch_add(1, Ordering::Release);
            let (lock, wake) = &*self.blocked;
            drop(wake.wait_while(lock.lock().unwrap(), |b| *b).unwrap());
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.bytes.lock().unwrap().write(buf)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_from_many_threads_arrive_whole_and_the_guard_flushes_them() {
        let out = Out::default();
        let (writer, guard) = LogWriter::to(out.clone(), DEFAULT_CAPACITY).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let writer = writer.clone();
                s.spawn(move || {
                    for i in 0..250 {
                        let mut line = writer.line();
                        // In pieces, as a formatter may write: the line stays whole.
                        write!(line, "thread={t} ").unwrap();
                        writeln!(line, "line={i}").unwrap();
                    }
                });
            }
        });
        drop(guard);
        let text = out.text();
        let mut lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1000);
        lines.sort_unstable();
        lines.dedup();
        assert_eq!(lines.len(), 1000);
        assert!(lines.iter().all(|l| l.starts_with("thread=")));
        assert_eq!(writer.dropped(), 0);
    }

    /// Lines logged while the thread writes (or pauses) go out together: one write for
    /// the lot, not one per line, in the order they were logged.
    #[test]
    fn lines_queued_while_the_output_is_busy_go_out_in_one_write() {
        let out = Out::default();
        out.block(true);
        let (writer, guard) = LogWriter::to(out.clone(), DEFAULT_CAPACITY).unwrap();
        for i in 0..100 {
            writeln!(writer.line(), "line {i}").unwrap();
        }
        out.block(false);
        drop(guard);
        let text = out.text();
        let expected: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
        assert_eq!(text.lines().collect::<Vec<_>>(), expected);
        // The first batch (what was queued when the thread took the first line), then the
        // rest at once.
        let writes = out.writes.load(Ordering::Relaxed);
        assert!((1..=2).contains(&writes), "{writes} writes");
    }

    #[test]
    fn a_stalled_output_drops_and_counts_lines_without_blocking() {
        let out = Out::default();
        out.block(true);
        let (writer, guard) = LogWriter::to(out.clone(), 4).unwrap();
        // The thread takes the first line and waits on the output (it would take whatever
        // is queued with it, so the rest is logged once it waits).
        writeln!(writer.line(), "line 0").unwrap();
        while out.started.load(Ordering::Acquire) == 0 {
            std::thread::yield_now();
        }
        // 4 more fill the queue; the rest are dropped at once.
        for i in 1..100 {
            writeln!(writer.line(), "line {i}").unwrap();
        }
        let dropped = writer.dropped();
        // The output moves again before anything is checked: a failed check unwinding
        // through the guard would otherwise wait for it forever.
        out.block(false);
        drop(guard);
        assert_eq!(dropped, 100 - 5);
        let written = out.text().lines().count() as u64;
        assert_eq!(written + dropped, 100);
        assert!(out.text().starts_with("line 0\n"));
    }

    /// A stdout that never drains does not hold the exit: the guard gives up at its
    /// timeout (zero here: nothing waits) and returns, the lines already written kept.
    #[test]
    fn a_guard_gives_up_on_an_output_that_never_drains() {
        let out = Out::default();
        let (writer, guard) = LogWriter::to(out.clone(), 4).unwrap();
        writeln!(writer.line(), "line 0").unwrap();
        // Written before the output stalls: kept.
        while out.writes.load(Ordering::Acquire) == 0 {
            std::thread::yield_now();
        }
        out.block(true);
        writeln!(writer.line(), "line 1").unwrap();
        while out.started.load(Ordering::Acquire) < 2 {
            std::thread::yield_now();
        }
        // Fills the queue: the guard cannot even queue its stop.
        for i in 2..10 {
            writeln!(writer.line(), "line {i}").unwrap();
        }
        drop(guard.flush_timeout(Duration::ZERO));
        assert_eq!(out.text(), "line 0\n");
        // The stalled write goes on once the output moves (the thread is not waited for).
        out.block(false);
    }

    /// With time enough, a slow output gets every line before the guard returns.
    #[test]
    fn a_guard_waits_for_a_slow_output_within_its_timeout() {
        let out = Out::default();
        out.block(true);
        let (writer, guard) = LogWriter::to(out.clone(), DEFAULT_CAPACITY).unwrap();
        for i in 0..10 {
            writeln!(writer.line(), "line {i}").unwrap();
        }
        let unblock = {
            let out = out.clone();
            std::thread::spawn(move || {
                while out.started.load(Ordering::Acquire) == 0 {
                    std::thread::yield_now();
                }
                out.block(false);
            })
        };
        drop(guard.flush_timeout(Duration::from_secs(600)));
        unblock.join().unwrap();
        assert_eq!(out.text().lines().count(), 10);
    }

    /// Through `tracing_subscriber`, as the binary logs: the lines of events logged on a
    /// multi-thread runtime are all on the output once the guard is dropped.
    #[cfg(feature = "cli")]
    #[test]
    fn tracing_lines_from_runtime_threads_are_flushed_at_shutdown() {
        let out = Out::default();
        let (writer, guard) = LogWriter::to(out.clone(), DEFAULT_CAPACITY).unwrap();
        let subscriber = tracing_subscriber::fmt()
            .with_target(false)
            .with_ansi(false)
            .compact()
            .with_writer(writer)
            .finish();
        let dispatch = tracing::Dispatch::new(subscriber);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        runtime.block_on(async {
            let tasks: Vec<_> = (0..200)
                .map(|i| {
                    let dispatch = dispatch.clone();
                    tokio::spawn(async move {
                        tracing::dispatcher::with_default(&dispatch, || {
                            tracing::info!(events = i, "stream ended");
                        });
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        });
        drop(runtime);
        drop(guard);
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 200);
        for i in 0..200 {
            let field = format!(" events={i}");
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains("stream ended") && l.ends_with(&field)),
                "{field}: {text}"
            );
        }
    }
}
