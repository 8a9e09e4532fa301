//! What operators and the rest of pgmux do to a pool from outside the
//! checkout path: reload its settings, RECONNECT, PAUSE, KILL, and look at
//! it (the client and server lists, levels for SHOW POOLS and /metrics).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{lock, Pool, PoolSettings, ServerEntry, USED_AFTER};
use crate::config::SessionAttrs;
use crate::config::Target;
use crate::conninfo::ConnInfo;
use crate::lifecycle::Stop;
use crate::server::{Credential, Login, Server};
use crate::stats::{CloseReason, PoolLevels};

impl Pool {
    /// Adopt reloaded settings, target and login. Connected clients stay;
    /// a moved database has its servers replaced as they come back.
    pub fn reconfigure(&self, settings: PoolSettings, target: Target, login: Login) {
        let old_size = self.size.swap(settings.size, Ordering::AcqRel);
        if settings.size > old_size {
            let grow = settings.size - old_size;
            // Pay back permits still owed from an earlier shrink first.
            let repaid = self
                .permit_debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                    Some(d.saturating_sub(grow))
                })
                .unwrap_or(0)
                .min(grow);
            self.permits.release(grow - repaid);
        } else if settings.size < old_size {
            let shrink = old_size - settings.size;
            let forgotten = self.permits.forget(shrink);
            self.permit_debt
                .fetch_add(shrink - forgotten, Ordering::AcqRel);
        }
        self.max_prepared
            .store(settings.max_prepared, Ordering::Relaxed);
        self.max_client_prepared
            .store(settings.max_client_prepared, Ordering::Relaxed);
        self.idle_transaction_timeout
            .set(settings.idle_transaction_timeout);
        self.query_timeout.set(settings.query_timeout);
        self.transaction_timeout.set(settings.transaction_timeout);
        self.cancel_wait_timeout
            .set(Some(settings.cancel_wait_timeout));
        self.client_idle_timeout.set(settings.client_idle_timeout);
        self.client_write_timeout.set(settings.client_write_timeout);
        self.check_after.set(&settings);
        *lock(&self.settings) = settings;
        {
            let mut current = lock(&self.login);
            // A credential learned from a client's login (auth_query) is
            // not in the configuration: keep it.
            if login.credential != Credential::None || current.user != login.user {
                *current = login;
            }
        }
        let moved = {
            let mut current = lock(&self.target);
            let moved = *current != target;
            *current = target;
            moved
        };
        if moved {
            self.reconnect();
        }
    }

    /// Log in to servers with what a client's login proved (auth_query's
    /// pass-through). Servers already open stay: they logged in alike.
    pub fn adopt_credential(&self, credential: Credential) {
        let mut login = lock(&self.login);
        if login.credential != credential {
            login.credential = credential;
        }
    }

    /// A server refused a write as read-only (25006). Where the pool wants
    /// a writable server, the primary has moved (a failover): every server
    /// of the pool opened before now is replaced as it comes back, and new
    /// ones look for the writable server among the listed hosts. Once per
    /// move: servers opened after it do not start another.
    pub fn refused_write(&self, server: &Server) {
        let attrs = lock(&self.target).session_attrs;
        if !matches!(attrs, SessionAttrs::ReadWrite | SessionAttrs::Primary)
            || server.info.generation != self.generation()
        {
            return;
        }
        tracing::warn!(
            database = %self.database,
            user = %self.user,
            server = %server.addr,
            "a server refused a write (25006): the primary has moved; replacing this pool's servers"
        );
        crate::stats::failover();
        self.reconnect();
    }

    /// Close the longest-idle server, if any (to free a database slot).
    pub fn evict_one_idle(&self) -> bool {
        match self.idle.take_oldest() {
            Some(server) => {
                self.discard(server, CloseReason::Idle);
                true
            }
            None => false,
        }
    }

    /// Close every idle server now, and each lent one when it comes back.
    pub fn reconnect(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.close_idle(CloseReason::Reconnect);
    }

    pub fn close_idle(&self, reason: CloseReason) {
        for server in self.idle.take_where(|_| true) {
            self.discard(server, reason);
        }
    }

    /// Servers opened before the last RECONNECT, still open.
    pub fn stale_servers(&self) -> usize {
        let generation = self.generation.load(Ordering::Acquire);
        lock(&self.servers)
            .values()
            .filter(|s| s.info.generation < generation)
            .count()
    }

    pub fn pause(&self) {
        self.paused.store(true, Ordering::Release);
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::Release);
        self.resumed.notify_waiters();
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Ask every client of the pool to stop (drain, shutdown or KILL).
    pub fn stop_clients(&self, how: Stop) {
        for client in lock(&self.clients).values() {
            client.stop.raise(how);
        }
    }

    /// KILL: cut every client of the pool off now and close its servers.
    pub fn kill(&self) {
        self.stop_clients(Stop::Now);
        self.reconnect();
    }

    pub fn register_client(&self, info: Arc<ConnInfo>) {
        lock(&self.clients).insert(info.id, info);
    }

    pub fn forget_client(&self, id: u64) {
        lock(&self.clients).remove(&id);
    }

    pub fn clients(&self) -> Vec<Arc<ConnInfo>> {
        lock(&self.clients).values().cloned().collect()
    }

    pub fn servers(&self) -> Vec<ServerEntry> {
        lock(&self.servers).values().cloned().collect()
    }

    pub fn open_servers(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }

    pub fn idle_servers(&self) -> usize {
        self.idle.len()
    }

    /// Levels for SHOW POOLS and /metrics that only the pool knows.
    pub fn levels(&self) -> PoolLevels {
        let now = Instant::now();
        let (mut idle, mut used) = (0, 0);
        self.idle.each(|server| {
            if now.saturating_duration_since(server.last_used) >= USED_AFTER {
                used += 1;
            } else {
                idle += 1;
            }
        });
        PoolLevels {
            servers_idle: idle,
            servers_used: used,
            max_wait: self.max_wait(),
            pool_size: self.size(),
            paused: self.is_paused(),
        }
    }

    /// How long the longest-waiting client has waited.
    pub fn max_wait(&self) -> Duration {
        lock(&self.waiters)
            .values()
            .next()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }
}
