//! The per-pool housekeeping task: replaces servers past their lifetime,
//! closes servers idle too long, keeps `min_pool_size` warm. It holds only a
//! weak reference, so a pool that is forgotten stops its task.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::{lock, Pool};
use crate::stats::CloseReason;

/// How often a pool is looked after. Lifetimes are minutes; a server past its
/// age is also caught at checkout and checkin, so this only bounds how long
/// an unused one lingers.
const PERIOD: Duration = Duration::from_millis(250);

/// Run a pool's housekeeping on the control plane (`control`; pools are
/// created on workers, which may not run tokio).
pub(super) fn spawn(pool: Weak<Pool>, control: Option<tokio::runtime::Handle>) {
    let Some(control) = control.or_else(|| tokio::runtime::Handle::try_current().ok()) else {
        tracing::warn!("no control runtime: pool housekeeping does not run");
        return;
    };
    control.spawn(async move {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(pool) = pool.upgrade() else { break };
            pool.prune(Instant::now());
            pool.close_idle_clients();
            pool.fill_to_min().await;
        }
    });
}

impl Pool {
    /// Ask clients idle past `client_idle_timeout` to leave. A sweep here,
    /// not a timer in each idle client's task: idle clients stay small,
    /// and the timeout is exact to this task's period.
    fn close_idle_clients(&self) {
        let Some(limit) = self.client_idle_timeout.get() else {
            return;
        };
        let limit_us = limit.as_micros() as u64;
        let now_us = crate::conninfo::now_micros();
        for client in lock(&self.clients).values() {
            if client.idle_past(now_us, limit_us) && !client.idle_timed_out() {
                client.time_out_idle();
            }
        }
    }

    /// Close idle servers that died, are past their lifetime, or sat unused
    /// past the idle timeout while more than `min_pool_size` are open.
    fn prune(&self, now: Instant) {
        let settings = self.settings();
        let generation = self.generation.load(Ordering::Acquire);
        // Decided per server; `open` counts down as servers are picked so
        // that idle_timeout never takes the pool below min_pool_size.
        let mut open = self.open.load(Ordering::Acquire);
        let mut reasons = Vec::new();
        let closing = self.idle.take_where(|s| {
            let expired = s.expires.is_some_and(|at| at <= now);
            let unused = settings
                .idle_timeout
                .is_some_and(|t| now.duration_since(s.last_used) >= t)
                && open > settings.min_size;
            let surplus = open > settings.size || s.info.generation < generation;
            let dead = !s.is_healthy(s.idle_for(now));
            let reason = if dead {
                Some(CloseReason::Error)
            } else if expired {
                Some(CloseReason::Lifetime)
            } else if surplus {
                Some(CloseReason::Reconnect)
            } else if unused {
                Some(CloseReason::Idle)
            } else {
                None
            };
            if let Some(reason) = reason {
                reasons.push(reason);
                open = open.saturating_sub(1);
            }
            reason.is_some()
        });
        let closing = closing.into_iter().zip(reasons);
        for (server, reason) in closing {
            self.discard(server, reason);
        }
    }

    async fn fill_to_min(self: &Arc<Self>) {
        let min_size = self.settings().min_size;
        while self.open.load(Ordering::Acquire) < min_size
            && self.backing_off().is_none()
            && !self.is_paused()
        {
            let reserved = self
                .open
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < min_size).then_some(n + 1)
                })
                .is_ok();
            if !reserved {
                break;
            }
            match self.open_server().await {
                Ok(mut server) => {
                    server.last_used = Instant::now();
                    self.idle.push(server);
                    self.returned.notify_one();
                }
                // open_server has logged the failure.
                Err(_) => break,
            }
        }
    }
}
