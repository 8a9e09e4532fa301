//! One pool per (database, user): a LIFO of idle servers and a fair (FIFO)
//! semaphore of checkout permits, under one short lock that is never held
//! across an await. A [`Checkout`] lends a server; it goes back with
//! [`Checkout::checkin`], and is closed if the checkout is dropped instead.

mod db_limit;
mod maintenance;
mod registry;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::config::{Config, PoolMode, Target};
use crate::params::ParamMap;
use crate::prepared::StatementCache;
use crate::server::{Login, Server, ServerError};
use crate::stats::{CloseReason, PoolStats};

pub use db_limit::DbLimit;
pub use registry::{Pools, UnknownDatabase};

/// The settings a pool runs with, copied from the config at creation.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub mode: PoolMode,
    pub size: u32,
    pub min_size: u32,
    pub lifetime: Option<Duration>,
    pub lifetime_jitter: f64,
    pub idle_timeout: Option<Duration>,
    pub connect_timeout: Duration,
    pub login_retry: Duration,
    pub query_wait_timeout: Option<Duration>,
    pub reset_query: String,
    pub max_message: usize,
}

impl PoolSettings {
    pub fn from_config(cfg: &Config, database: &str) -> PoolSettings {
        PoolSettings {
            mode: cfg.pool_mode,
            size: cfg.pool_size_for(database),
            min_size: cfg.min_pool_size.min(cfg.pool_size_for(database)),
            lifetime: cfg.server_lifetime(),
            lifetime_jitter: cfg.server_lifetime_jitter,
            idle_timeout: cfg.server_idle_timeout(),
            connect_timeout: cfg.server_connect_timeout(),
            login_retry: cfg.server_login_retry(),
            query_wait_timeout: cfg.query_wait_timeout(),
            reset_query: cfg.server_reset_query.clone(),
            max_message: cfg.max_message_size as usize,
        }
    }
}

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

/// Distinct client setting maps a pool shares among its clients.
const MAX_PARAM_VARIANTS: usize = 64;

pub struct Pool {
    pub database: String,
    pub user: String,
    pub target: Target,
    login: Login,
    pub settings: PoolSettings,
    permits: Arc<Semaphore>,
    /// Boxed so a checkout (held in every linked client's task) stays small
    /// and servers move between pool and client as one pointer.
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<Server>>>,
    /// Servers open or being opened; never above `settings.size`.
    open: AtomicU32,
    returned: Notify,
    backoff: Mutex<Backoff>,
    defaults: Mutex<Option<ParamMap>>,
    param_variants: Mutex<Vec<ParamMap>>,
    waiters: Mutex<BTreeMap<u64, Instant>>,
    next_waiter: AtomicU64,
    pub stats: PoolStats,
    /// Server-side names of the named statements clients prepare.
    pub statements: StatementCache,
    /// The database-wide server cap, when `max_db_connections` is set.
    db_limit: Option<Arc<DbLimit>>,
}

pub struct Checkout {
    server: Option<Box<Server>>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
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
        let pool = Arc::new(Pool {
            database: database.to_string(),
            user: user.to_string(),
            target,
            login,
            permits: Arc::new(Semaphore::new(settings.size as usize)),
            settings,
            idle: Mutex::new(Vec::new()),
            open: AtomicU32::new(0),
            returned: Notify::new(),
            backoff: Mutex::new(Backoff::default()),
            defaults: Mutex::new(None),
            param_variants: Mutex::new(Vec::new()),
            waiters: Mutex::new(BTreeMap::new()),
            next_waiter: AtomicU64::new(0),
            stats: PoolStats::new(database, user),
            statements: StatementCache::default(),
            db_limit,
        });
        if let Some(limit) = &pool.db_limit {
            limit.register(&pool);
        }
        pool
    }

    /// Close the longest-idle server, if any (to free a database slot).
    pub fn evict_one_idle(&self) -> bool {
        let oldest = {
            let mut idle = lock(&self.idle);
            (!idle.is_empty()).then(|| idle.remove(0))
        };
        match oldest {
            Some(server) => {
                self.discard(server, CloseReason::Idle);
                true
            }
            None => false,
        }
    }

    pub fn open_servers(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }

    pub fn idle_servers(&self) -> usize {
        lock(&self.idle).len()
    }

    /// How long the longest-waiting client has waited.
    pub fn max_wait(&self) -> Duration {
        lock(&self.waiters)
            .values()
            .next()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    /// Lend a server: wait (FIFO) for a permit, then reuse an idle server or
    /// open a new one.
    pub async fn checkout(self: &Arc<Self>) -> Result<Checkout, CheckoutError> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => {
                self.stats.wait_seconds.record(0.0);
                p
            }
            // The slow paths are boxed: every client's task embeds this
            // future, and the fast path should not carry their size.
            Err(_) => Box::pin(self.wait_for_permit()).await?,
        };
        loop {
            if let Some(server) = self.take_idle() {
                return Ok(self.lend(server, permit));
            }
            if self.reserve_slot() {
                let server = Box::pin(self.open_server()).await?;
                return Ok(self.lend(server, permit));
            }
            // Every slot is taken by a server on its way back or being
            // closed; the permit we hold guarantees one will be ours.
            self.returned.notified().await;
        }
    }

    async fn wait_for_permit(self: &Arc<Self>) -> Result<OwnedSemaphorePermit, CheckoutError> {
        let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        lock(&self.waiters).insert(id, started);
        self.stats.clients_waiting.inc();
        let acquire = self.permits.clone().acquire_owned();
        let result = match self.settings.query_wait_timeout {
            Some(limit) => tokio::time::timeout(limit, acquire)
                .await
                .map_err(|_| CheckoutError::WaitTimeout(limit)),
            None => Ok(acquire.await),
        };
        self.stats.clients_waiting.dec();
        lock(&self.waiters).remove(&id);
        self.stats
            .wait_seconds
            .record(started.elapsed().as_secs_f64());
        // The semaphore is never closed, so acquire cannot fail.
        result.map(|p| p.expect("pool semaphore is never closed"))
    }

    fn take_idle(&self) -> Option<Box<Server>> {
        loop {
            let server = lock(&self.idle).pop()?;
            let now = Instant::now();
            if server.expires.is_some_and(|at| at <= now) {
                self.discard(server, CloseReason::Lifetime);
            } else if !server.is_healthy(now) {
                self.discard(server, CloseReason::Error);
            } else {
                return Some(server);
            }
        }
    }

    fn reserve_slot(&self) -> bool {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.settings.size).then_some(n + 1)
            })
            .is_ok()
    }

    /// Open a server in a slot already reserved; the slot is freed on failure.
    async fn open_server(&self) -> Result<Box<Server>, ServerError> {
        if let Some(err) = self.backing_off() {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(err);
        }
        let slot = match &self.db_limit {
            Some(limit) => match limit.acquire(self.settings.query_wait_timeout).await {
                Ok(slot) => Some(slot),
                Err(err) => {
                    self.open.fetch_sub(1, Ordering::AcqRel);
                    self.returned.notify_one();
                    return Err(err);
                }
            },
            None => None,
        };
        self.stats.servers_login.inc();
        let started = Instant::now();
        let result = Box::pin(Server::connect(
            &self.target,
            &self.login,
            self.settings.connect_timeout,
            self.settings.max_message,
        ))
        .await;
        self.stats.servers_login.dec();
        match result {
            Ok(mut server) => {
                server.db_slot = slot;
                self.stats
                    .connect_seconds
                    .record(started.elapsed().as_secs_f64());
                self.stats.servers_opened.increment(1);
                *lock(&self.backoff) = Backoff::default();
                server.expires = self
                    .settings
                    .lifetime
                    .map(|l| server.created + jittered(l, self.settings.lifetime_jitter));
                lock(&self.defaults).get_or_insert_with(|| server.params.clone());
                Ok(Box::new(server))
            }
            Err(err) => {
                self.open.fetch_sub(1, Ordering::AcqRel);
                self.returned.notify_one();
                self.stats.server_connect_failures.increment(1);
                let mut b = lock(&self.backoff);
                b.delay =
                    (b.delay * 2).clamp(FIRST_RETRY, self.settings.login_retry.max(FIRST_RETRY));
                b.until = Some(Instant::now() + b.delay);
                b.error = Some(err.clone());
                Err(err)
            }
        }
    }

    fn backing_off(&self) -> Option<ServerError> {
        let b = lock(&self.backoff);
        match b.until {
            Some(until) if Instant::now() < until => b.error.clone(),
            _ => None,
        }
    }

    fn lend(self: &Arc<Self>, server: Box<Server>, permit: OwnedSemaphorePermit) -> Checkout {
        self.stats.servers_active.inc();
        Checkout {
            server: Some(server),
            pool: self.clone(),
            _permit: permit,
        }
    }

    /// Close a server and free its slot.
    fn discard(&self, server: Box<Server>, reason: CloseReason) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.stats.closed(reason);
        self.returned.notify_one();
        tokio::spawn(server.close());
    }

    /// Whether servers of this pool report `name` (ParameterStatus).
    pub fn reports(&self, name: &str) -> bool {
        lock(&self.defaults)
            .as_ref()
            .is_some_and(|d| d.get(name).is_some())
    }

    /// One shared map per distinct set of client settings: clients that log
    /// in alike share it, and servers adopt it, so checking that a server
    /// matches its client is a pointer compare.
    pub fn intern_params(&self, params: ParamMap) -> ParamMap {
        let mut variants = lock(&self.param_variants);
        if let Some(known) = variants.iter().find(|v| **v == params) {
            return known.clone();
        }
        if variants.len() < MAX_PARAM_VARIANTS {
            variants.push(params.clone());
        }
        params
    }

    /// The parameters a fresh server reports, learnt from the first server
    /// this pool opened (opening one if needed, which also surfaces login
    /// errors such as an unknown database to the first client).
    pub async fn server_defaults(self: &Arc<Self>) -> Result<ParamMap, CheckoutError> {
        if let Some(d) = lock(&self.defaults).clone() {
            return Ok(d);
        }
        let checkout = self.checkout().await?;
        let params = checkout.server().params.clone();
        checkout.checkin();
        Ok(lock(&self.defaults).clone().unwrap_or(params))
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
        if let Some(mut server) = self.server.take() {
            self.pool.stats.servers_active.dec();
            let now = Instant::now();
            if server.expires.is_some_and(|at| at <= now) {
                self.pool.discard(server, CloseReason::Lifetime);
                return;
            }
            server.last_used = now;
            lock(&self.pool.idle).push(server);
            self.pool.returned.notify_one();
            if let Some(limit) = &self.pool.db_limit {
                limit.idle_appeared.notify_waiters();
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
