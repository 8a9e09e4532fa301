//! The process's shutdown states, and the signal each client session
//! watches.
//!
//! Process-wide, two tokens, the second a child of the first: `stopping`
//! (hard: close every client now with 57P01) and `draining` (soft: accept
//! no one, close idle clients, let transactions in flight finish). The
//! listener, the admin console, /readyz and the app wait on those (cold
//! paths). Sessions instead each have a [`StopSignal`] of their own, raised
//! by the pool registry for a drain, a stop or a KILL: checking it is one
//! atomic load and waiting on it touches no lock another client shares
//! (a token's future locks its tree node on every poll).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How far a session is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Stop {
    /// Keep serving.
    No = 0,
    /// Finish the transaction in flight, then close (a drain).
    AfterTransaction = 1,
    /// Close now (KILL, or the shutdown timeout ran out).
    Now = 2,
}

/// One session's stop request: a level that only rises, and the waker of
/// the session's task.
///
/// A signal is polled by one task, its session's, whose waker stays the
/// same: so the waker is registered once and again only after a raise
/// took it, not on every poll (several per transaction).
#[derive(Default)]
pub struct StopSignal {
    level: AtomicU8,
    waker: AtomicWaker,
    /// A waker is registered and no raise has taken it since.
    registered: AtomicBool,
}

impl StopSignal {
    pub fn get(&self) -> Stop {
        match self.level.load(Ordering::SeqCst) {
            0 => Stop::No,
            1 => Stop::AfterTransaction,
            _ => Stop::Now,
        }
    }

    pub fn raise(&self, to: Stop) {
        self.level.fetch_max(to as u8, Ordering::SeqCst);
        // Before the wake takes the waker: the next poll registers again,
        // and reads the level after that.
        self.registered.store(false, Ordering::SeqCst);
        self.waker.wake();
    }

    /// The current level, after registering to be woken when it rises.
    pub fn poll(&self, cx: &mut Context<'_>) -> Stop {
        // Marked before registering: a raise in between clears the mark,
        // so the waker is registered again at the next poll, and this
        // poll's read of the level, after the registration, sees the raise.
        if !self.registered.swap(true, Ordering::SeqCst) {
            self.waker.register(cx.waker());
        }
        self.get()
    }

    /// Resolves once the level reaches `at_least`.
    pub async fn reached(&self, at_least: Stop) {
        std::future::poll_fn(|cx| {
            if self.poll(cx) >= at_least {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

pub struct Lifecycle {
    stopping: CancellationToken,
    draining: CancellationToken,
    /// Every client session, so shutdown can wait for the last one.
    pub sessions: TaskTracker,
    /// Every worker's accepting, so shutdown knows every listening socket
    /// has closed (and its queue was taken) before it waits for sessions.
    pub accepting: TaskTracker,
    /// Asked for by the admin console's SHUTDOWN; the app runs it.
    shutdown_requested: Notify,
    requested: AtomicBool,
}

impl Default for Lifecycle {
    fn default() -> Self {
        let stopping = CancellationToken::new();
        let draining = stopping.child_token();
        Lifecycle {
            stopping,
            draining,
            sessions: TaskTracker::new(),
            accepting: TaskTracker::new(),
            shutdown_requested: Notify::new(),
            requested: AtomicBool::new(false),
        }
    }
}

impl Lifecycle {
    pub fn draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    pub fn stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    pub fn begin_drain(&self) {
        self.draining.cancel();
    }

    pub fn stop_now(&self) {
        self.stopping.cancel();
    }

    pub async fn drain_started(&self) {
        self.draining.cancelled().await
    }

    pub async fn stopped(&self) {
        self.stopping.cancelled().await
    }

    pub fn request_shutdown(&self) {
        self.requested.store(true, Ordering::Release);
        self.shutdown_requested.notify_waiters();
    }

    pub async fn shutdown_requested(&self) {
        loop {
            let notified = self.shutdown_requested.notified();
            if self.requested.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    #[test]
    fn a_signal_wakes_its_waiter_only_at_the_level_asked_and_never_falls() {
        let signal = StopSignal::default();
        let woken = std::sync::Arc::new(Wakes::default());
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut wait = Box::pin(signal.reached(Stop::Now));
        // Polled again and again (the waker is registered once): one wake.
        for _ in 0..3 {
            assert!(wait.as_mut().poll(&mut cx).is_pending());
        }
        signal.raise(Stop::AfterTransaction);
        assert_eq!(woken.count(), 1, "every raise wakes the session");
        assert!(
            wait.as_mut().poll(&mut cx).is_pending(),
            "a drain is not a stop"
        );
        signal.raise(Stop::Now);
        assert_eq!(woken.count(), 2);
        assert!(wait.as_mut().poll(&mut cx).is_ready());
        signal.raise(Stop::AfterTransaction);
        assert_eq!(signal.get(), Stop::Now, "a stop level only rises");
    }

    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl Wakes {
        fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl std::task::Wake for Wakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}
