//! What the gateway needs to know about the operating system's limits: file descriptors
//! running out (every stream holds two, the client's and the upstream's), and warnings
//! about it (and other storms) that do not flood the terminal or the log. Public because the
//! load tools (`tower-sse-tools`) use the same helpers.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Too many open files in the system.
pub const ENFILE: i32 = 23;
/// Too many open files in this process.
pub const EMFILE: i32 = 24;

/// `EMFILE` (the process's limit) or `ENFILE` (the system's).
pub fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(EMFILE | ENFILE))
}

/// The first `io::Error` in an error's chain of sources.
pub fn io_source<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        next = e.source();
    }
    None
}

/// A warning printed at most once every few seconds, with how many were held back; one per
/// kind of message, so that one storm does not hide another.
#[derive(Debug)]
pub struct Warning {
    last: AtomicU64,
    skipped: AtomicU64,
}

impl Default for Warning {
    fn default() -> Self {
        Self::new()
    }
}

impl Warning {
    const EVERY_SECS: u64 = 5;

    /// A warning that has not been printed yet.
    pub const fn new() -> Self {
        Self {
            last: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// Print the message (built only when printed) unless one went out lately.
    pub fn emit(&self, message: impl FnOnce() -> String) {
        self.check(|skipped| match skipped {
            0 => eprintln!("{}", message()),
            skipped => eprintln!("{} ({skipped} more since the last such message)", message()),
        });
    }

    /// Run `report` with how many were held back since the last one, unless one ran lately.
    pub fn check(&self, report: impl FnOnce(u64)) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last.load(Ordering::Relaxed);
        if now < last + Self::EVERY_SECS
            || self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        report(self.skipped.swap(0, Ordering::Relaxed));
    }
}

/// The soft limit on open files, read once (reading it needs a free descriptor).
pub fn fd_limit() -> Option<u64> {
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line.split_whitespace().nth(3)?.parse().ok()
    })
}

/// [`fd_limit`] as text, `unknown` when it could not be read.
pub fn fd_limit_text() -> String {
    fd_limit().map_or_else(|| "unknown".to_owned(), |n| n.to_string())
}
