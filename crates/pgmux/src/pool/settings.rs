//! What a pool runs with: its settings, copied from the config at creation
//! and at each reload, and the timeouts every request reads without a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::{Config, PoolMode, PoolTimeout};

/// The settings a pool runs with, copied from the config at creation and
/// again at each reload.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    pub mode: PoolMode,
    pub size: u32,
    pub min_size: u32,
    pub lifetime: Option<Duration>,
    pub lifetime_jitter: f64,
    pub idle_timeout: Option<Duration>,
    pub connect_timeout: Duration,
    /// How long a listed server that failed a connection is tried last.
    pub ban_time: Duration,
    /// Bytes of WAL a standby may have left to replay (0: no limit).
    pub max_lag: u64,
    /// How long a server's host name is not looked up again.
    pub dns_ttl: Duration,
    /// Keepalive and user timeout of new server connections.
    pub tcp: crate::io::TcpOptions,
    pub login_retry: Duration,
    pub query_wait_timeout: Option<Duration>,
    pub idle_transaction_timeout: Option<Duration>,
    pub query_timeout: Option<Duration>,
    pub transaction_timeout: Option<Duration>,
    pub cancel_wait_timeout: Duration,
    pub client_idle_timeout: Option<Duration>,
    pub client_write_timeout: Option<Duration>,
    pub reset_query: String,
    /// Run on a server idle `check_delay` or longer before it is lent.
    pub check_query: Option<String>,
    pub check_delay: Duration,
    pub max_message: usize,
    /// Per-server cap of pgmux-managed named statements; 0: none managed.
    pub max_prepared: usize,
    /// Per-client byte budget of named statements.
    pub max_client_prepared: usize,
}

impl PoolSettings {
    pub fn from_config(cfg: &Config, database: &str, user: &str) -> PoolSettings {
        PoolSettings {
            mode: cfg.pool_mode,
            size: cfg.pool_size_for(database),
            min_size: cfg.min_pool_size.min(cfg.pool_size_for(database)),
            lifetime: cfg.server_lifetime(),
            lifetime_jitter: cfg.server_lifetime_jitter,
            idle_timeout: cfg.server_idle_timeout(),
            connect_timeout: cfg.server_connect_timeout(),
            ban_time: cfg.replica_ban_time(),
            max_lag: cfg.replica_max_lag,
            dns_ttl: cfg.dns_max_ttl(),
            tcp: cfg.tcp_options(),
            login_retry: cfg.server_login_retry(),
            query_wait_timeout: cfg.query_wait_timeout(),
            idle_transaction_timeout: cfg.timeout_for(PoolTimeout::IdleTransaction, database, user),
            query_timeout: cfg.timeout_for(PoolTimeout::Query, database, user),
            transaction_timeout: cfg.timeout_for(PoolTimeout::Transaction, database, user),
            cancel_wait_timeout: cfg.cancel_wait_timeout(),
            client_idle_timeout: cfg.client_idle_timeout(),
            client_write_timeout: cfg.client_write_timeout(),
            reset_query: cfg.server_reset_query.clone(),
            check_query: cfg.server_check_query().map(str::to_string),
            check_delay: cfg.server_check_delay(),
            max_message: cfg.max_message_size as usize,
            max_prepared: cfg.max_prepared_statements as usize,
            max_client_prepared: usize::try_from(cfg.max_client_prepared_bytes)
                .unwrap_or(usize::MAX),
        }
    }
}

/// A timeout that a reload may change and every request reads, without a
/// lock: whole milliseconds, 0 for none.
pub struct AtomicTimeout(AtomicU64);

impl AtomicTimeout {
    pub(super) fn new(timeout: Option<Duration>) -> AtomicTimeout {
        AtomicTimeout(AtomicU64::new(Self::millis(timeout)))
    }

    pub fn get(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    pub(super) fn set(&self, timeout: Option<Duration>) {
        self.0.store(Self::millis(timeout), Ordering::Relaxed);
    }

    /// At least 1 ms, so a tiny timeout is not taken for none.
    fn millis(timeout: Option<Duration>) -> u64 {
        timeout.map_or(0, |t| (t.as_millis() as u64).max(1))
    }
}

/// After how long idle a server is checked before it is lent (see
/// `server_check_query`), read on every checkout without the lock: whole
/// milliseconds, `u64::MAX` for never (0 is a real value here: always).
pub struct CheckAfter(AtomicU64);

impl CheckAfter {
    pub(super) fn new(settings: &PoolSettings) -> CheckAfter {
        let after = CheckAfter(AtomicU64::new(u64::MAX));
        after.set(settings);
        after
    }

    pub(super) fn set(&self, settings: &PoolSettings) {
        let ms = match settings.check_query {
            Some(_) => u64::try_from(settings.check_delay.as_millis()).unwrap_or(u64::MAX - 1),
            None => u64::MAX,
        };
        self.0.store(ms, Ordering::Relaxed);
    }

    /// Whether a server idle for `idle` is to be checked.
    pub fn due(&self, idle: Duration) -> bool {
        match self.0.load(Ordering::Relaxed) {
            u64::MAX => false,
            ms => idle >= Duration::from_millis(ms),
        }
    }
}
