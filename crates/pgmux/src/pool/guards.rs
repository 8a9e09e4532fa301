//! Counts kept by the checkout path, each undone by a guard when dropped:
//! a checkout future can be dropped at any await (its client was killed,
//! closed for a timeout, or pgmux is stopping), and a count left behind
//! would leak a server slot or leave a gauge wrong for good.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{lock, Pool};
use crate::stats::PoolStats;

/// A client waiting for a server: in `clients_waiting` and the waiter map
/// (SHOW POOLS' `maxwait`) until dropped.
pub(super) struct Waiting<'a> {
    pool: &'a Pool,
    id: u64,
}

impl<'a> Waiting<'a> {
    pub(super) fn new(pool: &'a Pool, since: Instant) -> Waiting<'a> {
        let id = pool.next_waiter.fetch_add(1, Ordering::Relaxed);
        lock(&pool.waiters).insert(id, since);
        pool.stats.clients_waiting.inc();
        Waiting { pool, id }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.pool.stats.clients_waiting.dec();
        lock(&self.pool.waiters).remove(&self.id);
    }
}

/// A slot under `pool_size` reserved for a server being opened: freed when
/// dropped, unless [`ReservedSlot::keep`] handed it to the opened server.
pub(super) struct ReservedSlot<'a>(pub(super) Option<&'a Pool>);

impl ReservedSlot<'_> {
    pub(super) fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for ReservedSlot<'_> {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take() {
            pool.open.fetch_sub(1, Ordering::AcqRel);
            pool.returned.notify_one();
        }
    }
}

/// A server logging in: counted in `servers_login` until dropped.
pub(super) struct LoggingIn<'a>(&'a PoolStats);

impl<'a> LoggingIn<'a> {
    pub(super) fn new(stats: &'a PoolStats) -> LoggingIn<'a> {
        stats.servers_login.inc();
        LoggingIn(stats)
    }
}

impl Drop for LoggingIn<'_> {
    fn drop(&mut self) {
        self.0.servers_login.dec();
    }
}
