//! Configuration: the serde model, profile defaults and validation.
//! Layering (least to most specific) lives in [`load`].

mod hosts;
mod load;
mod overrides;
mod target;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use pgmux_wire::auth::Secret;
use serde::{Deserialize, Serialize};

pub use hosts::{Endpoint, LoadBalance, Role, SessionAttrs};
pub use load::{load, ConfigError, Env};
pub use overrides::PoolTimeout;
pub use target::{Target, TlsIdentity};

pub use crate::tls::SslMode;

/// `DJANGO_ENV=production` selects [`Profile::Production`]; anything else is
/// development. The profile sets the defaults that BookTrader's contract names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Development,
    Production,
}

impl Profile {
    pub fn server_lifetime(self) -> u64 {
        match self {
            Profile::Development => 300,
            Profile::Production => 600,
        }
    }
    pub fn server_connect_timeout(self) -> u64 {
        match self {
            Profile::Development => 10,
            Profile::Production => 30,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    Transaction,
    Session,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthType {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    Md5,
    Plain,
    Trust,
    /// A client certificate logs its CommonName in (needs
    /// `client_tls_sslmode` `verify-ca` or `verify-full`).
    Cert,
}

/// The workers' I/O backend (see [`crate::io`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IoBackend {
    /// io_uring when the kernel allows it (containers' default seccomp
    /// profiles do not), epoll otherwise.
    Auto,
    IoUring,
    Epoll,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Every general setting is a flat top-level key; see proxy.toml for the
/// annotated list. Durations are in seconds (fractions allowed).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen_addr: String,
    pub listen_backlog: u32,
    pub metrics_addr: String,
    /// One server, or a comma-separated list (`host:port` each, the port
    /// defaulting to `server_port`) that `target_session_attrs` picks from.
    pub server_host: String,
    pub server_port: u16,
    /// Which server of the list will do: `any`, `read-write`, `read-only`,
    /// `primary`, `standby`, `prefer-standby` (libpq's).
    pub target_session_attrs: SessionAttrs,
    /// `disable` (in the order listed) or `random` (libpq's).
    pub load_balance_hosts: LoadBalance,
    /// A listed server that failed a connection attempt is tried last for
    /// this many seconds (0: never held back).
    pub replica_ban_time: f64,
    /// A standby with more than this many bytes of received WAL still to
    /// replay is passed over when a server connection is opened (0: no
    /// limit).
    pub replica_max_lag: u64,
    /// A server's (or peer's) host name is looked up again at most after
    /// this many seconds (0: for every new connection).
    pub dns_max_ttl: f64,
    pub pool_mode: PoolMode,
    pub pool_size: u32,
    pub min_pool_size: u32,
    pub max_db_connections: u32,
    pub max_client_conn: u32,
    pub server_lifetime: f64,
    pub server_lifetime_jitter: f64,
    pub server_idle_timeout: f64,
    pub server_connect_timeout: f64,
    pub server_login_retry: f64,
    pub query_wait_timeout: f64,
    /// A request that runs longer than this is cancelled on its server
    /// (the client gets PostgreSQL's 57014 and keeps its connection); 0:
    /// never.
    pub query_timeout: f64,
    /// How long a cancel sent for `query_timeout` may take to end the
    /// request before the server is closed instead.
    pub cancel_wait_timeout: f64,
    /// A client whose transaction has lasted longer than this is closed
    /// (25P04) and its server rolled back and reused; 0: never.
    pub transaction_timeout: f64,
    /// A client idle inside a transaction longer than this is closed
    /// (25P03) and its server rolled back and reused; 0: never.
    pub idle_transaction_timeout: f64,
    /// A client idle (outside a transaction) longer than this is closed
    /// (57P05); 0: never.
    pub client_idle_timeout: f64,
    /// A client that takes no byte of its result for this long is closed
    /// and its server released; 0: never.
    pub client_write_timeout: f64,
    /// A server idle longer than this runs `server_check_query` before it
    /// is lent again (0: before every lending); and `/readyz` vouches for a
    /// PostgreSQL whose servers answered within it, without connecting.
    pub server_check_delay: f64,
    /// What checks an idle server: `<empty>` (the default) sends an empty
    /// query, `""` turns the check off, anything else is run as SQL.
    pub server_check_query: String,
    pub client_login_timeout: f64,
    pub server_reset_query: String,
    pub max_message_size: u32,
    /// Named prepared statements each server keeps (transaction mode, LRU);
    /// 0 turns pgmux's statement handling off (names pass through).
    pub max_prepared_statements: u32,
    /// Bytes of named statements (name, text and a fixed overhead each)
    /// one client may hold in transaction mode; past it the least recently
    /// used are forgotten.
    pub max_client_prepared_bytes: u64,
    pub auth_type: AuthType,
    pub auth_file: String,
    /// A user absent from `auth_file` and `[users]` is looked up in
    /// PostgreSQL with `auth_query`, run as `auth_user` (who needs a
    /// password pgmux knows) in `auth_dbname` (default: the database the
    /// client asked for). `""` turns lookups off.
    pub auth_user: String,
    /// Gets (name, secret) for `$1`, sent as a parameter, never spliced.
    pub auth_query: String,
    pub auth_dbname: String,
    /// Users allowed into the admin console with every command.
    pub admin_users: Vec<String>,
    /// Users allowed into the admin console for SHOW commands only.
    pub stats_users: Vec<String>,
    /// Let another pgmux bind the same port (restarts without refusals).
    pub so_reuseport: bool,
    /// On SIGTERM, how long transactions in flight may take to finish.
    pub shutdown_timeout: f64,
    /// Period of the averages in SHOW STATS and of the stats log line.
    pub stats_period: f64,
    pub log_stats: bool,
    pub log_connections: bool,
    pub log_disconnections: bool,
    /// TCP keepalive on client and server sockets, so a peer that vanished
    /// is noticed; its timings in seconds (0: the OS default). PgBouncer's
    /// names.
    pub tcp_keepalive: bool,
    pub tcp_keepidle: u32,
    pub tcp_keepintvl: u32,
    pub tcp_keepcnt: u32,
    /// Milliseconds sent data may stay unacknowledged before the connection
    /// is dropped (0: the OS default).
    pub tcp_user_timeout: u32,
    pub log_format: LogFormat,
    pub wildcard_databases: bool,
    /// A pool of a database not listed in `[databases]` (made for a
    /// wildcard name) is dropped, servers and series, once it has had no
    /// client this many seconds; 0: never.
    pub autodb_idle_timeout: f64,
    /// At most this many pools ((database, user) pairs) at once; a login
    /// that would make one more is refused (53400). 0: no cap.
    pub max_pools: u32,
    /// Worker threads (per-core event loops); 0 means one per CPU.
    pub worker_threads: u32,
    /// The workers' I/O backend: `auto`, `io_uring` or `epoll`.
    pub io_backend: IoBackend,
    /// TLS toward clients (PgBouncer's names): `disable`, `allow`,
    /// `prefer`, `require` (plaintext refused), `verify-ca`/`verify-full`
    /// (a client certificate signed by `client_tls_ca_file` is required).
    pub client_tls_sslmode: SslMode,
    pub client_tls_cert_file: String,
    pub client_tls_key_file: String,
    pub client_tls_ca_file: String,
    /// `secure` (TLS 1.2 and 1.3), or `tlsv1.2` / `tlsv1.3`.
    pub client_tls_protocols: String,
    /// TLS toward PostgreSQL, as libpq's sslmode: `prefer` (the default)
    /// uses it when the server offers it, `require` insists, `verify-ca`
    /// and `verify-full` check the certificate (and the host name).
    pub server_tls_sslmode: SslMode,
    /// CAs that sign the servers' certificates (default: the system's).
    pub server_tls_ca_file: String,
    /// A client certificate for logging in to PostgreSQL (`cert` in
    /// pg_hba.conf), with its key.
    pub server_tls_cert_file: String,
    pub server_tls_key_file: String,
    pub server_tls_protocols: String,
    /// This instance's id among peered pgmux instances (1 to 16383, the
    /// same in no two; 0: no peering). Written into every cancel key, so a
    /// CancelRequest that reaches another peer is forwarded here.
    pub peer_id: u16,
    /// `[peers.N]`: where peer N listens, the same list in every instance.
    #[serde(default)]
    pub peers: BTreeMap<String, PeerConfig>,
    #[serde(default)]
    pub databases: BTreeMap<String, DatabaseConfig>,
    #[serde(default)]
    pub users: BTreeMap<String, UserConfig>,
    /// Chosen by `DJANGO_ENV`, not by a key.
    #[serde(skip_deserializing, default = "default_profile")]
    pub profile: Profile,
}

fn default_profile() -> Profile {
    Profile::Development
}

/// `[peers.N]`: a peered pgmux instance, by its `peer_id`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub host: String,
    pub port: u16,
}

/// `[databases.NAME]`: where a client-facing database name really lives.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub dbname: Option<String>,
    pub pool_size: Option<u32>,
    /// Overrides the general `idle_transaction_timeout` for this database.
    pub idle_transaction_timeout: Option<f64>,
    /// Overrides the general `query_timeout` for this database.
    pub query_timeout: Option<f64>,
    /// Overrides the general `transaction_timeout` for this database.
    pub transaction_timeout: Option<f64>,
    /// Overrides the general `server_tls_sslmode` for this database (one
    /// that lives on another server).
    pub server_tls_sslmode: Option<SslMode>,
    /// Overrides the general `server_tls_ca_file` for this database.
    pub server_tls_ca_file: Option<String>,
    /// With `server_tls_key_file`: the client certificate pgmux presents
    /// to this database's servers instead of the general one.
    pub server_tls_cert_file: Option<String>,
    pub server_tls_key_file: Option<String>,
    /// Overrides the general `target_session_attrs` for this database.
    pub target_session_attrs: Option<SessionAttrs>,
    /// Overrides the general `load_balance_hosts` for this database.
    pub load_balance_hosts: Option<LoadBalance>,
}

/// `[users.NAME]`: a user allowed in. `password` may be plaintext, an
/// `md5...` hash or a SCRAM verifier; only plaintext lets pgmux log in to the
/// server as that user when the server asks for a password.
///
/// A user may also have its own timeouts, which win over its database's
/// and the general ones (a user's password may then come from `auth_file`).
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    #[serde(
        default,
        serialize_with = "mask",
        skip_serializing_if = "Option::is_none"
    )]
    pub password: Option<String>,
    pub idle_transaction_timeout: Option<f64>,
    pub query_timeout: Option<f64>,
    pub transaction_timeout: Option<f64>,
}

impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("idle_transaction_timeout", &self.idle_transaction_timeout)
            .field("query_timeout", &self.query_timeout)
            .field("transaction_timeout", &self.transaction_timeout)
            .finish()
    }
}

fn mask<S: serde::Serializer>(_: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("********")
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// Zero means "never" for the optional timeouts.
fn optional_secs(s: f64) -> Option<Duration> {
    (s > 0.0).then(|| secs(s))
}

impl Config {
    pub fn listen(&self) -> Result<SocketAddr, ConfigError> {
        parse_addr("listen_addr", &self.listen_addr)
    }
    pub fn metrics(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.metrics_addr.is_empty() {
            return Ok(None);
        }
        parse_addr("metrics_addr", &self.metrics_addr).map(Some)
    }
    pub fn server_lifetime(&self) -> Option<Duration> {
        optional_secs(self.server_lifetime)
    }
    pub fn client_idle_timeout(&self) -> Option<Duration> {
        optional_secs(self.client_idle_timeout)
    }
    pub fn tcp_options(&self) -> crate::io::TcpOptions {
        crate::io::TcpOptions {
            keepalive: self.tcp_keepalive,
            idle: self.tcp_keepidle,
            interval: self.tcp_keepintvl,
            count: self.tcp_keepcnt,
            user_timeout_ms: self.tcp_user_timeout,
        }
    }
    pub fn server_idle_timeout(&self) -> Option<Duration> {
        optional_secs(self.server_idle_timeout)
    }
    pub fn dns_max_ttl(&self) -> Duration {
        secs(self.dns_max_ttl)
    }

    pub fn replica_ban_time(&self) -> Duration {
        secs(self.replica_ban_time)
    }
    pub fn server_connect_timeout(&self) -> Duration {
        secs(self.server_connect_timeout)
    }
    pub fn server_login_retry(&self) -> Duration {
        secs(self.server_login_retry)
    }
    pub fn query_wait_timeout(&self) -> Option<Duration> {
        optional_secs(self.query_wait_timeout)
    }
    pub fn client_write_timeout(&self) -> Option<Duration> {
        optional_secs(self.client_write_timeout)
    }
    pub fn server_check_delay(&self) -> Duration {
        secs(self.server_check_delay)
    }
    /// The SQL that checks an idle server, if any (`<empty>`: an empty query).
    pub fn server_check_query(&self) -> Option<&str> {
        match self.server_check_query.as_str() {
            "" => None,
            "<empty>" => Some(""),
            sql => Some(sql),
        }
    }
    pub fn autodb_idle_timeout(&self) -> Option<Duration> {
        optional_secs(self.autodb_idle_timeout)
    }
    pub fn cancel_wait_timeout(&self) -> Duration {
        secs(self.cancel_wait_timeout)
    }
    pub fn client_login_timeout(&self) -> Duration {
        secs(self.client_login_timeout)
    }
    pub fn shutdown_timeout(&self) -> Duration {
        secs(self.shutdown_timeout)
    }
    pub fn stats_period(&self) -> Duration {
        secs(self.stats_period)
    }

    pub fn pool_size_for(&self, database: &str) -> u32 {
        self.databases
            .get(database)
            .and_then(|d| d.pool_size)
            .unwrap_or(self.pool_size)
    }

    /// The secrets of every user allowed in: proxy.toml's `[users]`, then
    /// the auth_file (which wins for a name in both).
    pub fn user_secrets(&self) -> Result<BTreeMap<String, Secret>, ConfigError> {
        let mut out: BTreeMap<String, Secret> = self
            .users
            .iter()
            .filter_map(|(name, u)| Some((name.clone(), Secret::parse(u.password.as_ref()?))))
            .collect();
        if !self.auth_file.is_empty() {
            let text = std::fs::read_to_string(&self.auth_file).map_err(|e| {
                ConfigError::new(format!("auth_file: cannot read {}: {e}", self.auth_file))
            })?;
            for (name, secret) in load::parse_userlist(&text).map_err(|line| {
                ConfigError::new(format!(
                    "auth_file: {}: line {line} is not `\"user\" \"secret\"`",
                    self.auth_file
                ))
            })? {
                out.insert(name, Secret::parse(&secret));
            }
        }
        Ok(out)
    }
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::new(format!(
            "{key}: expected host:port such as 127.0.0.1:6432, got {value:?}"
        ))
    })
}
