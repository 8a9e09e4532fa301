//! A server lent out of its pool: [`Checkout`], and [`Pool::lend`], which
//! makes one (after `server_check_query` where the server sat idle). It goes back with [`Checkout::checkin`]; a checkout dropped
//! instead closes its server, so a client that vanishes leaves no server
//! half-used in the pool.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::{Pool, PoolSettings};
use crate::conninfo::State;
use crate::server::Server;
use crate::stats::CloseReason;

pub struct Checkout {
    server: Option<Box<Server>>,
    pool: Arc<Pool>,
    /// A checkout permit is held (given back when the checkout ends).
    permit: bool,
}

impl Pool {
    /// Run `server_check_query` on a server that has been idle a while,
    /// within `server_connect_timeout`: PostgreSQL (or something between)
    /// may have dropped it without a word, and that is better found here
    /// than by the client's first query.
    pub(super) async fn passes_check(&self, server: &mut Server) -> bool {
        let settings = self.settings();
        let Some(query) = settings.check_query.as_deref() else {
            return true;
        };
        let result = crate::io::timeout(settings.connect_timeout, server.run(query)).await;
        match result {
            Ok(Ok(b'I')) => return self.standby_keeps_up(server, &settings).await,
            Ok(Ok(status)) => {
                tracing::warn!(server = server.info.id, database = %self.database, status = %char::from(status), "server_check_query left a transaction open; server closed")
            }
            Ok(Err(e)) => {
                tracing::warn!(server = server.info.id, database = %self.database, error = %e, "server failed server_check_query; closed")
            }
            Err(_) => {
                tracing::warn!(server = server.info.id, database = %self.database, "server_check_query got no answer within server_connect_timeout; server closed")
            }
        }
        false
    }

    /// A standby checked for health is also checked for lag: one more
    /// than `replica_max_lag` bytes of WAL behind in its replay is closed,
    /// and the next connection passes it over.
    async fn standby_keeps_up(&self, server: &mut Server, settings: &PoolSettings) -> bool {
        if settings.max_lag == 0 || !server.role.is_some_and(|r| r.in_recovery) {
            return true;
        }
        let lag = crate::io::timeout(settings.connect_timeout, server.replay_lag()).await;
        match lag {
            Ok(Ok(behind)) if behind <= settings.max_lag => true,
            Ok(Ok(behind)) => {
                tracing::warn!(server = %server.addr, database = %self.database, behind, max = settings.max_lag, "a standby fell behind replica_max_lag; server closed");
                false
            }
            _ => false,
        }
    }

    /// `now`: the time the caller read last, which begins the server's
    /// turn.
    pub(super) fn lend(
        self: &Arc<Self>,
        mut server: Box<Server>,
        permit: Permit<'_>,
        now: Instant,
    ) -> Checkout {
        permit.pass_on();
        server.timing.turn_at(now);
        self.stats.servers_active.inc();
        server.info.set_state(State::Active);
        Checkout {
            server: Some(server),
            pool: self.clone(),
            permit: true,
        }
    }
}

impl Pool {
    /// Give a permit back, or retire it while a shrink is still owed.
    fn release_permit(&self) {
        let retired = self.permit_debt.load(Ordering::Relaxed) > 0
            && self
                .permit_debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
                .is_ok();
        if !retired {
            self.permits.release(1);
        }
    }
}

/// A checkout permit held while a server is found; given back if the
/// checkout is given up, else passed on to the [`Checkout`].
pub(super) struct Permit<'a> {
    pool: &'a Pool,
    held: bool,
}

impl<'a> Permit<'a> {
    pub(super) fn held(pool: &'a Pool) -> Permit<'a> {
        Permit { pool, held: true }
    }

    /// The checkout holds it from now on.
    fn pass_on(mut self) {
        self.held = false;
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.held {
            self.pool.release_permit();
        }
    }
}

impl Checkout {
    pub fn server(&self) -> &Server {
        self.server
            .as_ref()
            .expect("a checkout holds its server until consumed")
    }

    pub fn server_mut(&mut self) -> &mut Server {
        self.server
            .as_mut()
            .expect("a checkout holds its server until consumed")
    }

    /// Return a clean server (transaction status idle) to the pool.
    pub fn checkin(mut self) {
        if let Some(server) = self.server.as_mut() {
            server.timing.next_turn();
        }
        self.checkin_in_turn();
    }

    /// [`Checkout::checkin`] at the time of the server's current turn: for
    /// the relay, right after the reply that ended the transaction.
    pub fn checkin_in_turn(mut self) {
        if let Some(mut server) = self.server.take() {
            let pool = &self.pool;
            pool.stats.servers_active.dec();
            let now = server.timing.now();
            if server.expires.is_some_and(|at| at <= now) {
                pool.discard(server, CloseReason::Lifetime);
            } else if server.info.generation < pool.generation.load(Ordering::Acquire) {
                pool.discard(server, CloseReason::Reconnect);
            } else {
                server.last_used = now;
                pool.answered.record(now);
                // A server comes back with no transaction open; one whose
                // client was cut off (a timeout, a vanished client) must
                // not pass that transaction's start on to the next.
                server.timing = Default::default();
                server.info.set_state(State::Idle);
                server.info.link(0);
                pool.idle.push(server);
                pool.returned.notify_one();
                if let Some(limit) = &pool.db_limit {
                    limit.idle_appeared.notify_waiters();
                }
            }
        }
    }

    /// Close the server instead of returning it.
    pub fn discard(mut self, reason: CloseReason) {
        if let Some(server) = self.server.take() {
            self.pool.stats.servers_active.dec();
            self.pool.discard(server, reason);
        }
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.pool.stats.servers_active.dec();
            self.pool.discard(server, CloseReason::Error);
        }
        if std::mem::take(&mut self.permit) {
            self.pool.release_permit();
        }
    }
}
