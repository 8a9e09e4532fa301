//! All pools, keyed by (database, user). Looked up once per client login;
//! the relay never touches this map.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use pgmux_wire::auth::{ScramVerifier, Secret};

use super::{lock, maintenance, DbLimit, Pool, PoolSettings};
use crate::config::Config;
use crate::server::Login;

pub struct Pools {
    config: Arc<Config>,
    secrets: Arc<BTreeMap<String, Secret>>,
    /// SCRAM verifiers, derived once at start-up for plaintext secrets.
    verifiers: BTreeMap<String, ScramVerifier>,
    map: Mutex<HashMap<(String, String), Arc<Pool>>>,
    db_limits: Mutex<HashMap<String, Arc<DbLimit>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("database \"{0}\" does not exist")]
pub struct UnknownDatabase(pub String);

impl Pools {
    pub fn new(config: Arc<Config>, secrets: Arc<BTreeMap<String, Secret>>) -> Pools {
        let verifiers = secrets
            .iter()
            .filter_map(|(user, s)| Some((user.clone(), s.scram_verifier()?)))
            .collect();
        Pools {
            config,
            secrets,
            verifiers,
            map: Mutex::new(HashMap::new()),
            db_limits: Mutex::new(HashMap::new()),
        }
    }

    pub fn scram_verifier(&self, user: &str) -> Option<ScramVerifier> {
        self.verifiers.get(user).cloned()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn secret(&self, user: &str) -> Option<&Secret> {
        self.secrets.get(user)
    }

    /// Whether clients may ask for `database` at all.
    pub fn check_database(&self, database: &str) -> Result<(), UnknownDatabase> {
        match self.config.target(database) {
            Some(_) => Ok(()),
            None => Err(UnknownDatabase(database.to_string())),
        }
    }

    /// The pool for (database, user), created on first use.
    pub fn get(&self, database: &str, user: &str) -> Result<Arc<Pool>, UnknownDatabase> {
        let key = (database.to_string(), user.to_string());
        if let Some(pool) = lock(&self.map).get(&key) {
            return Ok(pool.clone());
        }
        let target = self
            .config
            .target(database)
            .ok_or_else(|| UnknownDatabase(database.to_string()))?;
        let login = Login {
            user: user.to_string(),
            password: self
                .secrets
                .get(user)
                .and_then(|s| s.plaintext())
                .map(String::from),
        };
        let settings = PoolSettings::from_config(&self.config, database);
        let max_db = self.config.max_db_connections;
        let db_limit = (max_db > 0).then(|| {
            lock(&self.db_limits)
                .entry(database.to_string())
                .or_insert_with(|| DbLimit::new(max_db))
                .clone()
        });
        let mut map = lock(&self.map);
        let pool = map
            .entry(key)
            .or_insert_with(|| {
                let pool = Pool::new(database, user, target, login, settings, db_limit);
                maintenance::spawn(Arc::downgrade(&pool));
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
        }
    }

    /// Close every idle server connected to the server-side database
    /// `dbname` (before a DROP DATABASE, which they would block).
    pub fn close_idle_to(&self, dbname: &str) {
        for pool in self.all().into_iter().filter(|p| p.target.dbname == dbname) {
            while pool.evict_one_idle() {}
        }
    }

    pub fn all(&self) -> Vec<Arc<Pool>> {
        lock(&self.map).values().cloned().collect()
    }
}
