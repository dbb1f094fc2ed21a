//! Counters a test can watch: requests seen and streams open.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

/// Live counters of one mock server (cheap to clone; clones share them).
#[derive(Debug, Clone)]
pub struct MockStats {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    requests: AtomicU64,
    responses: AtomicU64,
    open_streams: watch::Sender<usize>,
}

impl Default for MockStats {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                requests: AtomicU64::new(0),
                responses: AtomicU64::new(0),
                open_streams: watch::Sender::new(0),
            }),
        }
    }
}

impl MockStats {
    /// Requests that reached a route, whatever the answer.
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// Streaming bodies alive right now: a stream counts from its headers until its body is
    /// dropped (finished, or the client went away).
    pub fn open_streams(&self) -> usize {
        *self.inner.open_streams.borrow()
    }

    /// Wait until exactly `n` streams are open; for example `0` once a client disconnected
    /// from a stalled stream and the server noticed.
    pub async fn wait_open_streams(&self, n: usize) {
        let mut open = self.inner.open_streams.subscribe();
        // The sender lives in `self`, so this cannot fail.
        let _ = open.wait_for(|&open| open == n).await;
    }

    pub(crate) fn count_request(&self) {
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The number of the next response: 1, 2, 3, ...
    pub(crate) fn next_response(&self) -> u64 {
        self.inner.responses.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn open_stream(&self) -> OpenStream {
        self.inner.open_streams.send_modify(|open| *open += 1);
        OpenStream(self.clone())
    }
}

/// Counts one open stream until dropped.
#[derive(Debug)]
pub(crate) struct OpenStream(MockStats);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.inner.open_streams.send_modify(|open| *open -= 1);
    }
}
