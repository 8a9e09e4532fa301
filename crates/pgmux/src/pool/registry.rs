//! All pools, keyed by (database, user), and the configuration they were
//! made from. Looked up once per client login; the relay never touches
//! this map. A reload swaps the configuration and re-tunes every pool in
//! place, so connected clients keep their pools.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use pgmux_wire::auth::{ScramVerifier, Secret};

use super::{lock, maintenance, DbLimit, Pool, PoolSettings};
use crate::config::{Config, ConfigError, Target};
use crate::conninfo::ConnInfo;
use crate::lifecycle::{Lifecycle, Stop};
use crate::reload::ConfigSource;
use crate::server::hosts::HostBook;
use crate::server::{Credential, Login};
use crate::tls::TlsSetup;

/// What a reload replaces in one step.
pub(super) struct Current {
    config: Arc<Config>,
    secrets: BTreeMap<String, Secret>,
    /// SCRAM verifiers, derived once per load for plaintext secrets.
    verifiers: BTreeMap<String, ScramVerifier>,
    /// Certificates and keys, read once per load.
    tls: Arc<TlsSetup>,
    /// Keys the decoy verifiers of unknown users derive from (see
    /// [`Pools::decoy`]).
    pub(super) decoy_key: [u8; 32],
    /// The listed servers' failures and roles, kept across reloads.
    book: Arc<HostBook>,
}

impl Current {
    fn new(
        config: Arc<Config>,
        secrets: BTreeMap<String, Secret>,
        tls: Arc<TlsSetup>,
        book: Arc<HostBook>,
    ) -> Current {
        let verifiers = secrets
            .iter()
            .filter_map(|(user, s)| Some((user.clone(), s.scram_verifier()?)))
            .collect();
        let decoy_key = super::auth_query::decoy_key(&secrets);
        Current {
            config,
            secrets,
            verifiers,
            tls,
            decoy_key,
            book,
        }
    }

    /// Where `database`'s servers are, with the TLS setup to reach them.
    fn target(&self, database: &str) -> Option<Target> {
        let mut target = self.config.target(database)?;
        target.tls = Some(self.tls.clone());
        target.book = Some(self.book.clone());
        Some(target)
    }
}

pub struct Pools {
    current: RwLock<Current>,
    map: Mutex<HashMap<(String, String), Arc<Pool>>>,
    db_limits: Mutex<HashMap<String, Arc<DbLimit>>>,
    pub(super) switches: Mutex<super::switches::Switches>,
    pub lifecycle: Arc<Lifecycle>,
    /// Where to re-read the configuration from on reload.
    source: Mutex<Option<ConfigSource>>,
    /// The control plane's runtime, where pools keep house.
    control: Mutex<Option<tokio::runtime::Handle>>,
    /// Since when each pool of a wildcard database has had no client
    /// (see [`Pools::drop_unused_autodb`]).
    unused_since: Mutex<HashMap<(String, String), Instant>>,
    /// Users looked up with auth_query.
    pub(super) auth_cache: super::auth_query::AuthCache,
}

#[derive(Debug, thiserror::Error)]
#[error("database \"{0}\" does not exist")]
pub struct UnknownDatabase(pub String);

/// Why a login gets no pool.
#[derive(Debug, thiserror::Error)]
pub enum NoPool {
    #[error(transparent)]
    Unknown(#[from] UnknownDatabase),
    #[error("too many pools: all max_pools ({0}) (database, user) pairs are in use")]
    TooMany(u32),
}

impl NoPool {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            NoPool::Unknown(_) => "3D000",
            // configuration_limit_exceeded
            NoPool::TooMany(_) => "53400",
        }
    }
}

impl Pools {
    pub fn new(
        config: Arc<Config>,
        secrets: Arc<BTreeMap<String, Secret>>,
        tls: Arc<TlsSetup>,
    ) -> Pools {
        Pools {
            current: RwLock::new(Current::new(
                config,
                (*secrets).clone(),
                tls,
                Arc::default(),
            )),
            map: Mutex::new(HashMap::new()),
            db_limits: Mutex::new(HashMap::new()),
            switches: Mutex::default(),
            lifecycle: Arc::new(Lifecycle::default()),
            source: Mutex::new(None),
            control: Mutex::new(tokio::runtime::Handle::try_current().ok()),
            unused_since: Mutex::new(HashMap::new()),
            auth_cache: Default::default(),
        }
    }

    pub fn set_source(&self, source: ConfigSource) {
        *lock(&self.source) = Some(source);
    }

    pub fn source(&self) -> Option<ConfigSource> {
        lock(&self.source).clone()
    }

    /// Users with a configured secret.
    pub fn user_names(&self) -> BTreeSet<String> {
        self.current().secrets.keys().cloned().collect()
    }

    pub fn any_paused(&self) -> bool {
        let sw = lock(&self.switches);
        sw.paused_all || !sw.paused.is_empty()
    }

    pub(super) fn current(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn scram_verifier(&self, user: &str) -> Option<ScramVerifier> {
        self.current().verifiers.get(user).cloned()
    }

    pub fn config(&self) -> Arc<Config> {
        self.current().config.clone()
    }

    /// Where `database`'s servers are (with the TLS setup), if it may be
    /// asked for.
    pub fn target_of(&self, database: &str) -> Option<Target> {
        self.current().target(database)
    }

    /// What pgmux logs in to servers with as `user`, from its
    /// configuration alone.
    pub fn credential_of(&self, user: &str) -> Credential {
        Credential::from_secret(self.current().secrets.get(user))
    }

    /// The listed servers' failures and roles (for /metrics).
    pub fn host_book(&self) -> Arc<HostBook> {
        self.current().book.clone()
    }

    /// The TLS setup in force (new connections use it).
    pub fn tls(&self) -> Arc<TlsSetup> {
        self.current().tls.clone()
    }

    pub fn secret(&self, user: &str) -> Option<Secret> {
        self.current().secrets.get(user).cloned()
    }

    /// Whether clients may ask for `database` at all.
    pub fn check_database(&self, database: &str) -> Result<(), UnknownDatabase> {
        if self.current().config.serves(database) {
            Ok(())
        } else {
            Err(UnknownDatabase(database.to_string()))
        }
    }

    /// The pool for (database, user), created on first use (unless
    /// `max_pools` are there already).
    pub fn get(&self, database: &str, user: &str) -> Result<Arc<Pool>, NoPool> {
        let key = (database.to_string(), user.to_string());
        if let Some(pool) = lock(&self.map).get(&key) {
            return Ok(pool.clone());
        }
        let (target, login, settings, max_db, max_pools) = {
            let current = self.current();
            let config = &current.config;
            let target = current
                .target(database)
                .ok_or_else(|| UnknownDatabase(database.to_string()))?;
            (
                target,
                login_for(&current.secrets, user),
                PoolSettings::from_config(config, database, user),
                config.max_db_connections,
                config.max_pools,
            )
        };
        let mut map = lock(&self.map);
        if max_pools > 0 && map.len() >= max_pools as usize && !map.contains_key(&key) {
            return Err(NoPool::TooMany(max_pools));
        }
        let pool = map
            .entry(key)
            .or_insert_with(|| {
                // Shared by the database's pools, and made only with one
                // (under the map's lock), so a name that gets no pool
                // leaves nothing behind.
                let db_limit = (max_db > 0).then(|| {
                    lock(&self.db_limits)
                        .entry(database.to_string())
                        .or_insert_with(|| DbLimit::new(max_db))
                        .clone()
                });
                let pool = Pool::new(database, user, target, login, settings, db_limit);
                if self.is_paused(database) {
                    pool.pause();
                }
                maintenance::spawn(Arc::downgrade(&pool), lock(&self.control).clone());
                pool
            })
            .clone();
        Ok(pool)
    }

    /// Drop a pool that could not log in and holds nothing, so a database
    /// that does not exist leaves no broken pool behind.
    pub fn forget_if_unused(&self, pool: &Arc<Pool>) {
        let mut map = lock(&self.map);
        let key = (pool.database.clone(), pool.user.clone());
        let unused = pool.open_servers() == 0 && pool.stats.clients.get() == 0;
        if unused && map.get(&key).is_some_and(|p| Arc::ptr_eq(p, pool)) {
            map.remove(&key);
            self.release_db_limit(pool);
        }
    }

    /// Forget the `max_db_connections` count of `removed`'s database once
    /// no pool in the map shares it (called with the map's lock held,
    /// after `removed`, which has no server open, left it). `removed` may
    /// live on a moment in the session that dropped it: its own share does
    /// not keep the count.
    fn release_db_limit(&self, removed: &Pool) {
        let Some(own) = removed.db_limit.as_ref() else {
            return;
        };
        let mut limits = lock(&self.db_limits);
        let only_removed_holds_it = limits
            .get(&removed.database)
            .is_some_and(|limit| Arc::ptr_eq(limit, own) && Arc::strong_count(limit) == 2);
        if only_removed_holds_it {
            limits.remove(&removed.database);
        }
    }

    /// Drop the pools of wildcard databases (not in `[databases]`) that
    /// have had no client for `autodb_idle_timeout`: their idle servers are
    /// closed, and once none is open the pool leaves the map (its series
    /// leave /metrics with it). Called by the control plane every second.
    pub fn drop_unused_autodb(&self, now: Instant) {
        let config = self.config();
        let Some(limit) = config.autodb_idle_timeout() else {
            lock(&self.unused_since).clear();
            return;
        };
        let auto: Vec<Arc<Pool>> = lock(&self.map)
            .values()
            .filter(|p| !config.databases.contains_key(&p.database))
            .cloned()
            .collect();
        let mut unused_since = lock(&self.unused_since);
        // Forget pools that are gone (a lookup each, not a scan).
        {
            let map = lock(&self.map);
            unused_since.retain(|key, _| map.contains_key(key));
        }
        for pool in auto {
            let key = (pool.database.clone(), pool.user.clone());
            if pool.stats.clients.get() > 0 {
                unused_since.remove(&key);
                continue;
            }
            let since = *unused_since.entry(key.clone()).or_insert(now);
            if now.duration_since(since) < limit {
                continue;
            }
            while pool.evict_one_idle() {}
            let mut map = lock(&self.map);
            // Checked again under the map's lock, which a login takes to
            // find the pool.
            let unused = pool.open_servers() == 0 && pool.stats.clients.get() == 0;
            if unused && map.get(&key).is_some_and(|p| Arc::ptr_eq(p, &pool)) {
                map.remove(&key);
                self.release_db_limit(&pool);
                unused_since.remove(&key);
                tracing::info!(database = %pool.database, user = %pool.user, "unused pool dropped (autodb_idle_timeout)");
            }
        }
    }

    /// Idle servers connected to the server-side database `dbname`.
    pub fn idle_to(&self, dbname: &str) -> u32 {
        self.all()
            .iter()
            .filter(|p| p.target().dbname == dbname)
            .map(|p| p.idle_servers() as u32)
            .sum()
    }

    /// Close every idle server connected to the server-side database
    /// `dbname` (before a DROP DATABASE, which they would block).
    pub fn close_idle_to(&self, dbname: &str) {
        for pool in self
            .all()
            .into_iter()
            .filter(|p| p.target().dbname == dbname)
        {
            while pool.evict_one_idle() {}
        }
    }

    pub fn all(&self) -> Vec<Arc<Pool>> {
        let mut pools: Vec<Arc<Pool>> = lock(&self.map).values().cloned().collect();
        pools.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
        pools
    }

    /// The pools of one client-facing database, or of all when `None`.
    pub fn of(&self, database: Option<&str>) -> Vec<Arc<Pool>> {
        let mut pools = self.all();
        if let Some(db) = database {
            pools.retain(|p| p.database == db);
        }
        pools
    }

    /// Database names clients can see: configured ones and pooled ones.
    pub fn database_names(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self.current().config.databases.keys().cloned().collect();
        names.extend(self.all().iter().map(|p| p.database.clone()));
        names
    }

    /// Register a logged-in client with its pool. A client that arrives
    /// while a drain or stop is under way is told at once (the flag is set
    /// before the pools are walked, so no client is missed).
    pub fn register_client(&self, pool: &Pool, info: Arc<ConnInfo>) {
        pool.register_client(info.clone());
        if self.lifecycle.stopping() {
            info.stop.raise(Stop::Now);
        } else if self.lifecycle.draining() {
            info.stop.raise(Stop::AfterTransaction);
        }
    }

    /// Adopt a newly loaded configuration: settings, databases and users
    /// change for every pool in place. Keys that only take effect at start
    /// are reported back so the caller can say so.
    pub fn reload(&self, config: Config) -> Result<Vec<&'static str>, ConfigError> {
        config.validate()?;
        let secrets = config.user_secrets()?;
        let tls = Arc::new(TlsSetup::load(&config)?);
        let config = Arc::new(config);
        let restart_needed = {
            let old = self.config();
            old.restart_only_differences(&config)
        };
        let book = self.current().book.clone();
        let current = Current::new(config.clone(), secrets, tls, book);
        let pools = self.all();
        for pool in &pools {
            // A database gone from the config keeps its pool for the clients
            // connected to it; new logins to it are refused.
            if let Some(target) = current.target(&pool.database) {
                pool.reconfigure(
                    PoolSettings::from_config(&config, &pool.database, &pool.user),
                    target,
                    login_for(&current.secrets, &pool.user),
                );
            }
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = current;
        Ok(restart_needed)
    }
}

fn login_for(secrets: &BTreeMap<String, Secret>, user: &str) -> Login {
    Login {
        user: user.to_string(),
        credential: Credential::from_secret(secrets.get(user)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12: database names that get no pool, or whose pool goes
    /// again, leave nothing behind: not a pool, not a connection count.
    #[tokio::test]
    async fn names_without_a_pool_leave_nothing_behind() {
        let env = [("DB_USER", "app"), ("DB_PASSWORD", "secret")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut config = crate::config::load(None, &env).unwrap();
        config.wildcard_databases = true;
        config.max_db_connections = 5;
        config.max_pools = 2;
        let pools = Pools::new(
            Arc::new(config),
            Arc::default(),
            Arc::new(TlsSetup::disabled()),
        );
        let kept = pools.get("kept", "app").unwrap();
        for i in 0..10_000 {
            let name = format!("db{i}");
            // As a login whose server refused the database does.
            let pool = pools.get(&name, "app").unwrap();
            pools.forget_if_unused(&pool);
        }
        let other = pools.get("other", "app").unwrap();
        for i in 0..10_000 {
            let refused = pools.get(&format!("more{i}"), "app");
            assert!(matches!(refused, Err(NoPool::TooMany(2))));
        }
        assert_eq!(pools.all().len(), 2);
        let limits: BTreeSet<String> = lock(&pools.db_limits).keys().cloned().collect();
        assert_eq!(limits, BTreeSet::from(["kept".into(), "other".into()]));
        drop((kept, other));
    }
}
