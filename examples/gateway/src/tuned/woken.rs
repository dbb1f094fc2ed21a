//! [`WhenWoken`]: a future polled only when it asked to be.
//!
//! A connection's task is woken for every event it relays, and `select!` then polls each of
//! its branches: the connection, and the watchers of its clocks and of the server's shutdown
//! (a timer, and a watch channel whose waiter lists are behind locks shared by every
//! connection).
//! Wrapped, the watchers cost an atomic load per wake-up instead.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

pin_project_lite::pin_project! {
    /// `inner`, polled on its first poll, after it woke the task, and when the task's
    /// waker changed; otherwise `Pending` without polling it.
    pub(crate) struct WhenWoken<F> {
        #[pin]
        inner: F,
        signal: Arc<Signal>,
        // The task waker `signal` forwards to.
        task: Option<Waker>,
    }
}

/// The waker `inner` sees: it notes the wake-up, then wakes the task.
#[derive(Default)]
struct Signal {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        // Woken outside the lock: an executor may poll the task inside `wake`.
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl<F: Future> WhenWoken<F> {
    pub(crate) fn new(inner: F) -> Self {
        Self {
            inner,
            signal: Arc::default(),
            task: None,
        }
    }
}

impl<F: Future> Future for WhenWoken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let same_task = this.task.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if same_task {
            if !this.signal.woken.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
        } else {
            *this
                .signal
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
            *this.task = Some(cx.waker().clone());
            this.signal.woken.store(false, Ordering::Release);
        }
        let waker = Waker::from(this.signal.clone());
        this.inner.poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;

    /// Counts its polls; ready once `ready` was notified.
    struct Counted<'a> {
        polls: &'a AtomicUsize,
        inner: Pin<Box<tokio::sync::futures::Notified<'a>>>,
    }

    impl Future for Counted<'_> {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            self.inner.as_mut().poll(cx)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn it_is_polled_once_until_it_wakes_the_task_and_then_completes() {
        let notify = Notify::new();
        let polls = AtomicUsize::new(0);
        let watched = WhenWoken::new(Counted {
            polls: &polls,
            inner: Box::pin(notify.notified()),
        });
        tokio::pin!(watched);
        // The task is woken a hundred times by something else.
        for _ in 0..100 {
            tokio::select! {
                biased;
                () = tokio::time::sleep(Duration::from_millis(1)) => {}
                () = watched.as_mut() => panic!("ready before the notification"),
            }
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        notify.notify_waiters();
        watched.await;
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_wake_up_from_another_task_is_not_lost() {
        let notify = Arc::new(Notify::new());
        let polls = AtomicUsize::new(0);
        let watched = WhenWoken::new(Counted {
            polls: &polls,
            inner: Box::pin(notify.notified()),
        });
        let waker = {
            let notify = notify.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                notify.notify_waiters();
            })
        };
        watched.await;
        waker.await.unwrap();
        assert!(polls.load(Ordering::Relaxed) >= 2);
    }

    #[tokio::test]
    async fn a_new_task_waker_is_registered() {
        let notify = Arc::new(Notify::new());
        let polls = AtomicUsize::new(0);
        let mut watched = Box::pin(WhenWoken::new(Counted {
            polls: &polls,
            inner: Box::pin(notify.notified()),
        }));
        // First polled with a no-op waker (another "task")...
        let mut noop = Context::from_waker(Waker::noop());
        assert!(watched.as_mut().poll(&mut noop).is_pending());
        // ...then by this task, which must hear about the notification.
        let notifier = notify.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            notifier.notify_waiters();
        });
        watched.await;
        assert_eq!(polls.load(Ordering::Relaxed), 3);
    }
}
