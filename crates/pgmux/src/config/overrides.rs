//! The timeouts a pool may take from its `[users.NAME]` entry, its
//! `[databases.NAME]` entry, or the general settings, in that order: one
//! place for the precedence and for checking the per-entry values.

use std::time::Duration;

use super::{optional_secs, Config, DatabaseConfig, UserConfig};

/// A timeout a user or database entry may set for its pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolTimeout {
    IdleTransaction,
    Query,
    Transaction,
}

impl PoolTimeout {
    pub const ALL: [PoolTimeout; 3] = [
        PoolTimeout::IdleTransaction,
        PoolTimeout::Query,
        PoolTimeout::Transaction,
    ];

    /// The setting's name, in every section.
    pub fn key(self) -> &'static str {
        match self {
            PoolTimeout::IdleTransaction => "idle_transaction_timeout",
            PoolTimeout::Query => "query_timeout",
            PoolTimeout::Transaction => "transaction_timeout",
        }
    }
}

impl DatabaseConfig {
    fn timeout(&self, t: PoolTimeout) -> Option<f64> {
        match t {
            PoolTimeout::IdleTransaction => self.idle_transaction_timeout,
            PoolTimeout::Query => self.query_timeout,
            PoolTimeout::Transaction => self.transaction_timeout,
        }
    }
}

impl UserConfig {
    fn timeout(&self, t: PoolTimeout) -> Option<f64> {
        match t {
            PoolTimeout::IdleTransaction => self.idle_transaction_timeout,
            PoolTimeout::Query => self.query_timeout,
            PoolTimeout::Transaction => self.transaction_timeout,
        }
    }
}

impl Config {
    fn general_timeout(&self, t: PoolTimeout) -> f64 {
        match t {
            PoolTimeout::IdleTransaction => self.idle_transaction_timeout,
            PoolTimeout::Query => self.query_timeout,
            PoolTimeout::Transaction => self.transaction_timeout,
        }
    }

    /// Timeout `t` for the pool of `user` on `database`: the user's own,
    /// else the database's, else the general one (0: off).
    pub fn timeout_for(&self, t: PoolTimeout, database: &str, user: &str) -> Option<Duration> {
        let own = self.users.get(user).and_then(|u| u.timeout(t));
        let database = || self.databases.get(database).and_then(|d| d.timeout(t));
        optional_secs(own.or_else(database).unwrap_or(self.general_timeout(t)))
    }

    /// Every timeout set in a `[users]` or `[databases]` entry, by its
    /// full key (`databases.app.query_timeout`), for validation.
    pub(super) fn entry_timeouts(&self) -> Vec<(String, f64)> {
        let databases = self.databases.iter().flat_map(|(name, d)| {
            PoolTimeout::ALL
                .into_iter()
                .filter_map(move |t| Some((format!("databases.{name}.{}", t.key()), d.timeout(t)?)))
        });
        let users = self.users.iter().flat_map(|(name, u)| {
            PoolTimeout::ALL
                .into_iter()
                .filter_map(move |t| Some((format!("users.{name}.{}", t.key()), u.timeout(t)?)))
        });
        databases.chain(users).collect()
    }
}
