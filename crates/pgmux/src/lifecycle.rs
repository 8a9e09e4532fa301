//! The process's shutdown states, shared by the listener, every session,
//! the admin console and /readyz.
//!
//! Two tokens, the second a child of the first: `stopping` (hard: close
//! every client now with 57P01) and `draining` (soft: accept no one, close
//! idle clients, let transactions in flight finish). Cancelling `stopping`
//! cancels `draining` too. Each pool hangs its own KILL token under
//! `draining`, so a session waits on one token for all three causes.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub struct Lifecycle {
    stopping: CancellationToken,
    draining: CancellationToken,
    /// Every client session, so shutdown can wait for the last one.
    pub sessions: TaskTracker,
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

    /// A token for one pool: cancelled by a drain, a stop, or its own KILL.
    pub fn pool_token(&self) -> CancellationToken {
        self.draining.child_token()
    }

    /// Resolves once this session must stop at once, whatever it is doing:
    /// its pool was killed, or the shutdown timeout ran out. A drain alone
    /// lets the session finish its transaction first.
    pub async fn must_abort(&self, pool_token: &CancellationToken) {
        pool_token.cancelled().await;
        if self.draining() {
            self.stopping.cancelled().await;
        }
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
