//! [`Shutdown`]: end every open stream at once, each with its error event and its report.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use tokio::sync::{Notify, futures::OwnedNotified};

/// A handle that ends the open streams of every [`SseLayer`](crate::SseLayer) it was given
/// to (with [`SseLayer::shutdown`](crate::SseLayer::shutdown)).
///
/// A server shutting down gracefully stops accepting, lets open streams run for a grace
/// period, then calls [`end_streams`](Self::end_streams): each stream still open sends what
/// it has, then the error event (`server_shutdown`), and its report says
/// [`Outcome::ServerShutdown`](crate::Outcome::ServerShutdown). A stream that starts
/// afterwards ends at once the same way. Without it, the connections are cut mid-event when
/// the process exits, and their reports are lost.
///
/// ```
/// use tower_sse::SseLayer;
/// use tower_sse::stream::Shutdown;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let shutdown = Shutdown::new();
/// let layer = SseLayer::new().shutdown(shutdown.clone());
/// # let _ = layer;
///
/// // On SIGTERM: stop accepting, wait for the streams to end (say, with
/// // `StreamLimitLayer::counter`) for up to a grace period, then:
/// shutdown.end_streams();
/// assert!(shutdown.is_ended());
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Shutdown {
    ended: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl Shutdown {
    /// A handle that has not ended anything yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// End every open stream (and every stream that starts from now on).
    pub fn end_streams(&self) {
        self.ended.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Whether [`end_streams`](Self::end_streams) was called.
    pub fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// What one stream waits on.
    pub(crate) fn watch(&self) -> ShutdownWatch {
        ShutdownWatch {
            shutdown: self.clone(),
            notified: None,
            registered: None,
        }
    }
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("ended", &self.is_ended())
            .finish()
    }
}

/// One stream's view of a [`Shutdown`]. The wake-up is registered (one allocation) only when
/// the stream first waits; a stream that never waits only reads a flag.
///
/// Every open stream registers with the same [`Notify`], whose waiter list is behind one lock:
/// polling the registration takes that lock, so it is polled only when the task's waker is
/// new (the first wait, or the stream moved to another task), not at every poll of the body.
pub(crate) struct ShutdownWatch {
    shutdown: Shutdown,
    notified: Option<Pin<Box<OwnedNotified>>>,
    /// The waker the registration holds.
    registered: Option<Waker>,
}

impl ShutdownWatch {
    /// Whether the streams are to end (a flag read; registers nothing).
    #[inline]
    pub(crate) fn is_ended(&self) -> bool {
        self.shutdown.is_ended()
    }

    /// Ready once the streams are to end; when pending, the task is woken then.
    pub(crate) fn poll_ended(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.shutdown.is_ended() {
            return Poll::Ready(());
        }
        if let Some(waker) = &self.registered
            && waker.will_wake(cx.waker())
        {
            // `end_streams` sets the flag, then wakes this very waker.
            return Poll::Pending;
        }
        let notified = self.notified.get_or_insert_with(|| {
            let mut notified = Box::pin(self.shutdown.notify.clone().notified_owned());
            // Registered before the flag is read: a signal in between is not missed.
            notified.as_mut().enable();
            notified
        });
        if self.shutdown.is_ended() {
            return Poll::Ready(());
        }
        if notified.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        self.registered = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use super::*;

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn woken(counter: &Arc<Counter>) -> usize {
        counter.0.load(Ordering::SeqCst)
    }

    #[test]
    fn the_registered_waker_is_woken_however_often_the_stream_was_polled() {
        let shutdown = Shutdown::new();
        let mut watch = shutdown.watch();
        let counter = Arc::new(Counter::default());
        let waker = Waker::from(counter.clone());
        for _ in 0..3 {
            assert!(
                watch
                    .poll_ended(&mut Context::from_waker(&waker))
                    .is_pending()
            );
        }
        shutdown.end_streams();
        assert_eq!(woken(&counter), 1);
        assert!(
            watch
                .poll_ended(&mut Context::from_waker(&waker))
                .is_ready()
        );
    }

    #[test]
    fn a_new_waker_replaces_the_registered_one() {
        let shutdown = Shutdown::new();
        let mut watch = shutdown.watch();
        let (first, second) = (Arc::new(Counter::default()), Arc::new(Counter::default()));
        let first_waker = Waker::from(first.clone());
        let second_waker = Waker::from(second.clone());
        assert!(
            watch
                .poll_ended(&mut Context::from_waker(&first_waker))
                .is_pending()
        );
        assert!(
            watch
                .poll_ended(&mut Context::from_waker(&second_waker))
                .is_pending()
        );
        shutdown.end_streams();
        assert_eq!((woken(&first), woken(&second)), (0, 1));
        assert!(
            watch
                .poll_ended(&mut Context::from_waker(&second_waker))
                .is_ready()
        );
    }

    #[test]
    fn an_ended_shutdown_is_ready_at_once() {
        let shutdown = Shutdown::new();
        shutdown.end_streams();
        let waker = Waker::from(Arc::new(Counter::default()));
        assert!(
            shutdown
                .watch()
                .poll_ended(&mut Context::from_waker(&waker))
                .is_ready()
        );
    }
}
