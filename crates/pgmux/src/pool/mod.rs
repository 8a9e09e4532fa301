//! One pool per (database, user): a LIFO of idle servers and a fair (FIFO)
//! semaphore of checkout permits ([`permits`]), whose common paths take no
//! lock. A [`Checkout`] lends a server; it goes back with
//! [`Checkout::checkin`], and is closed if the checkout is dropped instead.

mod auth_query;
mod checkout;
mod client_params;
mod control;
mod db_limit;
mod guards;
mod health;
pub mod idle;
mod maintenance;
mod permits;
mod registry;
mod settings;
mod switches;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use self::checkout::Permit;
use self::permits::Permits;

use crate::config::{PoolMode, Target};
use crate::conninfo::ConnInfo;
use crate::params::{ParamMap, Spellings};
use crate::prepared::StatementCache;
use crate::server::{Login, Server, ServerError};
use crate::stats::{CloseReason, PoolStats};

pub use checkout::Checkout;
pub use db_limit::DbLimit;
pub use registry::{NoPool, Pools, UnknownDatabase};
pub use settings::{AtomicTimeout, CheckAfter, PoolSettings};

/// An idle server unused this long counts as "used" rather than "idle" in
/// SHOW POOLS and /metrics (PgBouncer's server_check_delay default is 30 s;
/// pgmux probes every idle server before reuse, so this only sorts them).
const USED_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("query_wait_timeout: no server connection became free within {0:?}")]
    WaitTimeout(Duration),
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// After a failed login, clients asking before `until` get `error` at once;
/// the wait doubles from [`FIRST_RETRY`] up to `server_login_retry`.
#[derive(Default)]
struct Backoff {
    until: Option<Instant>,
    delay: Duration,
    error: Option<ServerError>,
}

const FIRST_RETRY: Duration = Duration::from_millis(50);

pub struct Pool {
    pub database: String,
    pub user: String,
    /// Fixed for the pool's life (a reload that changes it needs a restart).
    pub mode: PoolMode,
    pub max_message: usize,
    /// Transaction mode with `max_prepared_statements` above 0 at creation:
    /// client statement names are mapped (fixed for the pool's life, as
    /// clients' names would break if it changed under them).
    pub manages_statements: bool,
    /// `max_prepared_statements`, read per request without the lock.
    pub max_prepared: AtomicUsize,
    /// `max_client_prepared_bytes`, read per named Parse without the lock.
    pub max_client_prepared: AtomicUsize,
    /// `idle_transaction_timeout`, `query_timeout`, `cancel_wait_timeout`,
    /// `transaction_timeout` and `client_idle_timeout`, read per request
    /// without the lock.
    pub idle_transaction_timeout: AtomicTimeout,
    pub query_timeout: AtomicTimeout,
    pub transaction_timeout: AtomicTimeout,
    pub cancel_wait_timeout: AtomicTimeout,
    pub client_idle_timeout: AtomicTimeout,
    pub client_write_timeout: AtomicTimeout,
    /// `server_check_delay`, when `server_check_query` is set.
    check_after: CheckAfter,
    target: Mutex<Target>,
    login: Mutex<Login>,
    settings: Mutex<PoolSettings>,
    /// `settings.size`, read on every checkout without the lock.
    size: AtomicU32,
    /// Permits to retire as they come back, after a reload shrank the pool.
    permit_debt: AtomicU32,
    permits: Permits,
    /// One list per worker (see [`idle`]); boxed so a checkout (held in
    /// every linked client's task) stays small and servers move between
    /// pool and client as one pointer.
    idle: idle::IdleLists,
    /// Servers open or being opened; never above `settings.size`.
    open: AtomicU32,
    returned: Notify,
    backoff: Mutex<Backoff>,
    defaults: Mutex<Option<ParamMap>>,
    param_variants: Mutex<Vec<ParamMap>>,
    logins_seen: Mutex<Vec<client_params::LoginSeen>>,
    waiters: Mutex<BTreeMap<u64, Instant>>,
    next_waiter: AtomicU64,
    pub stats: PoolStats,
    /// When a server last logged in or ended a transaction cleanly (for
    /// /readyz).
    pub answered: health::LastAnswer,
    /// Server-side names of the named statements clients prepare.
    pub statements: StatementCache,
    /// How servers spell the setting values clients give at login.
    pub spellings: Spellings,
    /// The database-wide server cap, when `max_db_connections` is set.
    db_limit: Option<Arc<DbLimit>>,
    /// Servers opened under an older generation are closed when next seen
    /// (RECONNECT, or a reload that moved the database).
    generation: AtomicU64,
    paused: AtomicBool,
    resumed: Notify,
    clients: Mutex<HashMap<u64, Arc<ConnInfo>>>,
    servers: Mutex<HashMap<u64, ServerEntry>>,
}

/// An open server as SHOW SERVERS and the choice of host see it.
#[derive(Clone)]
pub struct ServerEntry {
    pub info: Arc<ConnInfo>,
    /// The listed server it reached.
    pub host: crate::config::Endpoint,
    /// What it said it is, when known.
    pub role: Option<crate::config::Role>,
}

impl Pool {
    pub fn new(
        database: &str,
        user: &str,
        target: Target,
        login: Login,
        settings: PoolSettings,
        db_limit: Option<Arc<DbLimit>>,
    ) -> Arc<Pool> {
        let mode_label = match settings.mode {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        };
        let pool = Arc::new(Pool {
            database: database.to_string(),
            user: user.to_string(),
            mode: settings.mode,
            max_message: settings.max_message,
            manages_statements: settings.mode == PoolMode::Transaction && settings.max_prepared > 0,
            max_prepared: AtomicUsize::new(settings.max_prepared),
            max_client_prepared: AtomicUsize::new(settings.max_client_prepared),
            idle_transaction_timeout: AtomicTimeout::new(settings.idle_transaction_timeout),
            query_timeout: AtomicTimeout::new(settings.query_timeout),
            transaction_timeout: AtomicTimeout::new(settings.transaction_timeout),
            cancel_wait_timeout: AtomicTimeout::new(Some(settings.cancel_wait_timeout)),
            client_idle_timeout: AtomicTimeout::new(settings.client_idle_timeout),
            client_write_timeout: AtomicTimeout::new(settings.client_write_timeout),
            check_after: CheckAfter::new(&settings),
            target: Mutex::new(target),
            login: Mutex::new(login),
            permits: Permits::new(settings.size),
            size: AtomicU32::new(settings.size),
            permit_debt: AtomicU32::new(0),
            settings: Mutex::new(settings),
            idle: idle::IdleLists::default(),
            open: AtomicU32::new(0),
            returned: Notify::new(),
            backoff: Mutex::new(Backoff::default()),
            defaults: Mutex::new(None),
            param_variants: Mutex::new(Vec::new()),
            logins_seen: Mutex::new(Vec::new()),
            waiters: Mutex::new(BTreeMap::new()),
            next_waiter: AtomicU64::new(0),
            stats: PoolStats::new(database, user, mode_label),
            answered: health::LastAnswer::default(),
            statements: StatementCache::default(),
            spellings: Spellings::default(),
            db_limit,
            generation: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            resumed: Notify::new(),
            clients: Mutex::new(HashMap::new()),
            servers: Mutex::new(HashMap::new()),
        });
        if let Some(limit) = &pool.db_limit {
            limit.register(&pool);
        }
        pool
    }

    /// A copy of the current settings (slow paths only; the hot path reads
    /// `size` and the fixed fields).
    pub fn settings(&self) -> PoolSettings {
        lock(&self.settings).clone()
    }

    pub fn target(&self) -> Target {
        lock(&self.target).clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn size(&self) -> u32 {
        self.size.load(Ordering::Relaxed)
    }

    /// Lend a server: wait (FIFO) for a permit, then reuse an idle server or
    /// open a new one.
    pub async fn checkout(self: &Arc<Self>) -> Result<Checkout, CheckoutError> {
        self.checkout_at(Instant::now()).await
    }

    /// [`Pool::checkout`] for a caller that read the time (`now`) just
    /// before; a checkout that waits reads it again.
    pub async fn checkout_at(
        self: &Arc<Self>,
        mut now: Instant,
    ) -> Result<Checkout, CheckoutError> {
        let ready = !self.is_paused() && self.permits.try_acquire();
        let permit = match ready {
            true => {
                self.stats.waited(Duration::ZERO);
                Permit::held(self)
            }
            // The slow paths are boxed: every client's task embeds this
            // future, and the fast path should not carry their size.
            false => {
                let permit = Box::pin(self.wait_for_permit()).await?;
                now = Instant::now();
                permit
            }
        };
        self.stats.assignments.add(1);
        loop {
            if let Some((mut server, check)) = self.take_idle(now) {
                if check {
                    if !Box::pin(self.passes_check(&mut server)).await {
                        self.discard(server, CloseReason::CheckFailed);
                        continue;
                    }
                    now = Instant::now();
                }
                return Ok(self.lend(server, permit, now));
            }
            if self.reserve_slot() {
                let server = Box::pin(self.open_server()).await?;
                return Ok(self.lend(server, permit, Instant::now()));
            }
            // Every slot is taken by a server on its way back or being
            // closed; the permit we hold guarantees one will be ours.
            self.returned.notified().await;
            now = Instant::now();
        }
    }

    async fn wait_for_permit(&self) -> Result<Permit<'_>, CheckoutError> {
        let started = Instant::now();
        // Undone when dropped: a client closed mid-wait (KILL, shutdown)
        // drops this future, and must not stay counted as waiting.
        let _waiting = guards::Waiting::new(self, started);
        let acquire = async {
            self.until_resumed().await;
            self.permits.acquire().await;
            Permit::held(self)
        };
        let result = match self.settings().query_wait_timeout {
            Some(limit) => crate::io::timeout(limit, acquire)
                .await
                .map_err(|_| CheckoutError::WaitTimeout(limit)),
            None => Ok(acquire.await),
        };
        self.stats.waited(started.elapsed());
        result
    }

    async fn until_resumed(&self) {
        while self.is_paused() {
            let resumed = self.resumed.notified();
            if !self.is_paused() {
                break;
            }
            resumed.await;
        }
    }

    /// An idle server to lend: this worker's own first, another worker's
    /// (moved into this worker's reactor) only when it has none. With it,
    /// whether it has been idle long enough to be checked first.
    fn take_idle(&self, now: Instant) -> Option<(Box<Server>, bool)> {
        loop {
            let (server, moved) = match self.idle.pop_here() {
                Some(s) => (s, false),
                None => (self.idle.pop_elsewhere()?, true),
            };
            if server.expires.is_some_and(|at| at <= now) {
                self.discard(server, CloseReason::Lifetime);
            } else if server.info.generation < self.generation.load(Ordering::Acquire) {
                self.discard(server, CloseReason::Reconnect);
            } else if moved {
                let check = self.check_after.due(server.idle_for(now));
                match server.rehome() {
                    // Its readiness is not known here yet: a real peek.
                    Ok(server) if server.check_health(true) => return Some((server, check)),
                    Ok(server) => self.discard(server, CloseReason::Error),
                    Err(e) => {
                        // The socket is gone with the failed move.
                        tracing::warn!(error = %e, "could not move a server between workers");
                        self.forget_lost_server();
                    }
                }
            } else {
                let idle = server.idle_for(now);
                if !server.is_healthy(idle) {
                    self.discard(server, CloseReason::Error);
                } else {
                    return Some((server, self.check_after.due(idle)));
                }
            }
        }
    }

    /// A server whose socket was lost outside `discard`: free its slot.
    fn forget_lost_server(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.stats.closed(CloseReason::Error);
        self.returned.notify_one();
    }

    fn reserve_slot(&self) -> bool {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.size()).then_some(n + 1)
            })
            .is_ok()
    }

    /// Open a server in a slot already reserved; the slot is freed on
    /// failure, and also if this future is dropped half way (its client
    /// was closed meanwhile).
    async fn open_server(&self) -> Result<Box<Server>, ServerError> {
        let reserved = guards::ReservedSlot(Some(self));
        if let Some(err) = self.backing_off() {
            return Err(err);
        }
        let settings = self.settings();
        let slot = match &self.db_limit {
            Some(limit) => Some(limit.acquire(settings.query_wait_timeout).await?),
            None => None,
        };
        let logging_in = guards::LoggingIn::new(&self.stats);
        let started = Instant::now();
        let (target, login) = (self.target(), lock(&self.login).clone());
        let open_per_host = self.open_per_host(&target);
        let result = Box::pin(Server::connect(
            &target,
            &login,
            &open_per_host,
            crate::server::Reach {
                timeout: settings.connect_timeout,
                tcp: settings.tcp,
                ban_time: settings.ban_time,
                max_lag: settings.max_lag,
                dns_ttl: settings.dns_ttl,
            },
            self.max_message,
            self.generation.load(Ordering::Acquire),
        ))
        .await;
        drop(logging_in);
        match result {
            Ok(mut server) => {
                // The server holds its slot now (`discard` frees it).
                reserved.keep();
                server.db_slot = slot;
                self.answered.record(Instant::now());
                self.stats.connected(started.elapsed());
                *lock(&self.backoff) = Backoff::default();
                server.expires = settings
                    .lifetime
                    .map(|l| server.created + jittered(l, settings.lifetime_jitter));
                lock(&self.defaults).get_or_insert_with(|| server.params.clone());
                lock(&self.servers).insert(
                    server.info.id,
                    ServerEntry {
                        info: server.info.clone(),
                        host: server.endpoint.clone(),
                        role: server.role.or_else(|| server.reported_role()),
                    },
                );
                tracing::debug!(server = server.info.id, database = %self.database, user = %self.user, backend_pid = server.backend_pid, "server connection opened");
                Ok(Box::new(server))
            }
            Err(err) => {
                drop(reserved);
                self.stats.connect_failures.add(1);
                tracing::warn!(database = %self.database, user = %self.user, server = %target.hosts_text(), error = %err, "could not open a server connection");
                let mut b = lock(&self.backoff);
                b.delay = (b.delay * 2).clamp(FIRST_RETRY, settings.login_retry.max(FIRST_RETRY));
                b.until = Some(Instant::now() + b.delay);
                b.error = Some(err.clone());
                Err(err)
            }
        }
    }

    /// This pool's open servers per listed host, where the choice of host
    /// depends on it (a list balanced by `load_balance_hosts = random`).
    fn open_per_host(&self, target: &Target) -> crate::server::OpenPerHost {
        let mut counts = crate::server::OpenPerHost::new();
        if target.hosts.len() > 1 && target.load_balance == crate::config::LoadBalance::Random {
            for entry in lock(&self.servers).values() {
                *counts.entry(entry.host.clone()).or_default() += 1;
            }
        }
        counts
    }

    fn backing_off(&self) -> Option<ServerError> {
        let b = lock(&self.backoff);
        match b.until {
            Some(until) if Instant::now() < until => b.error.clone(),
            _ => None,
        }
    }

    /// Close a server and free its slot.
    fn discard(&self, server: Box<Server>, reason: CloseReason) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.stats.closed(reason);
        lock(&self.servers).remove(&server.info.id);
        tracing::debug!(server = server.info.id, database = %self.database, user = %self.user, backend_pid = server.backend_pid, reason = ?reason, "server connection closed");
        self.returned.notify_one();
        crate::io::spawn(server.close());
    }
}

/// `base * (1 ± jitter)`, drawn per connection so servers opened together
/// are not all replaced together.
fn jittered(base: Duration, jitter: f64) -> Duration {
    let factor = 1.0 + jitter * (rand::random::<f64>() * 2.0 - 1.0);
    base.mul_f64(factor.max(0.0))
}

/// Lock a mutex whose data stays consistent even if a holder panicked (no
/// critical section here can leave it half-updated).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_bounds_and_varies() {
        let base = Duration::from_secs(300);
        let draws: Vec<_> = (0..200).map(|_| jittered(base, 0.1)).collect();
        assert!(draws
            .iter()
            .all(|d| *d >= Duration::from_secs(270) && *d <= Duration::from_secs(330)));
        let distinct: std::collections::BTreeSet<_> = draws.iter().map(|d| d.as_millis()).collect();
        assert!(
            distinct.len() > 100,
            "lifetimes must spread out, got {} distinct",
            distinct.len()
        );
        assert_eq!(jittered(base, 0.0), base);
    }
}
