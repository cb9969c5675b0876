//! [`Quiet`]: a future that is polled only after its own waker fired.
//!
//! A task that serves a connection or pumps a flight waits, beside its work,
//! for signals that almost never fire: drain, shutdown, idle, abuse, a flight
//! deserted. `select!` polls every branch each time the task wakes, and a
//! pending tokio `Notified` (the heart of every `CancellationToken`) takes
//! its `Notify`'s lock on every poll. The drain and shutdown tokens are shared
//! by every connection and every flight, so each read and write on any
//! connection took the same few locks, from every worker thread. Wrapped in
//! `Quiet`, such a future is polled once, to register its waker, and after
//! that only when that waker fired; a wake-up of the task for its own work
//! costs two atomic operations on memory of its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

pin_project_lite::pin_project! {
    /// `future`, polled only when it asked to be.
    pub struct Quiet<F> {
        #[pin]
        future: F,
        woken: Arc<Woken>,
    }
}

impl<F: Future> Quiet<F> {
    /// Wraps `future`; the first poll polls it.
    pub fn new(future: F) -> Self {
        Self {
            future,
            woken: Arc::new(Woken {
                fired: AtomicBool::new(true),
                task: AtomicWaker::new(),
            }),
        }
    }
}

impl<F: Future> Future for Quiet<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Registered before the flag is read: a wake-up in between is not
        // lost, it wakes the task again.
        this.woken.task.register(cx.waker());
        if !this.woken.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = Waker::from(Arc::clone(this.woken));
        this.future.poll(&mut Context::from_waker(&waker))
    }
}

/// The waker the wrapped future holds: it raises the flag, then wakes the
/// task that polls the `Quiet`.
struct Woken {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;

    /// Counts its polls of `inner`.
    struct Counted<'a, F> {
        polls: &'a AtomicUsize,
        inner: Pin<Box<F>>,
    }

    impl<F: Future> Future for Counted<'_, F> {
        type Output = F::Output;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            self.inner.as_mut().poll(cx)
        }
    }

    #[tokio::test]
    async fn the_inner_future_is_polled_once_then_only_when_woken() {
        let (polls, token) = (AtomicUsize::new(0), CancellationToken::new());
        let quiet = Quiet::new(Counted {
            polls: &polls,
            inner: Box::pin(token.cancelled()),
        });
        tokio::pin!(quiet);
        let noop = Waker::noop();
        let mut cx = Context::from_waker(noop);
        for _ in 0..100 {
            assert!(quiet.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1);

        token.cancel();
        assert!(quiet.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_wake_up_of_the_inner_future_wakes_the_task() {
        let token = CancellationToken::new();
        let (started, waited) = tokio::sync::oneshot::channel();
        let waiting = tokio::spawn({
            let token = token.clone();
            async move {
                // The task's own work keeps waking it meanwhile.
                let busy = async {
                    let _ = started.send(());
                    loop {
                        tokio::task::yield_now().await;
                    }
                };
                tokio::select! {
                    () = Quiet::new(token.cancelled()) => {}
                    () = busy => {}
                }
            }
        });
        // One thread: the task has polled both branches once by now.
        waited.await.unwrap();
        token.cancel();
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the cancellation reached the task")
            .expect("the task ran to its end");
    }
}
