//! Layering, least specific first: profile defaults < proxy.toml < the
//! BookTrader contract (`DJANGO_ENV`, `DB_*`) < `PGMUX_<KEY>` variables.
//!
//! The environment is passed in as a map rather than read here, so the same
//! code serves start-up (the process environment) and tests (a literal map).

use std::collections::BTreeMap;
use std::path::Path;

use config::{Environment, File, FileFormat};

use super::{Config, Profile};

/// A snapshot of environment variables.
pub type Env = BTreeMap<String, String>;

/// Variables with the `PGMUX_` prefix that are not settings.
const NOT_SETTINGS: &[&str] = &["PGMUX_CONFIG", "PGMUX_LOG"];

/// List-valued keys, given in the environment as comma-separated names.
const LIST_KEYS: &[(&str, &str)] = &[
    ("PGMUX_ADMIN_USERS", "admin_users"),
    ("PGMUX_STATS_USERS", "stats_users"),
];

/// One line for the operator: which key or variable, and what was expected.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    pub fn new(message: String) -> Self {
        ConfigError(message)
    }
}

/// Build the effective configuration.
pub fn load(file: Option<&Path>, env: &Env) -> Result<Config, ConfigError> {
    let profile = match env.get("DJANGO_ENV").map(String::as_str) {
        Some("production") => Profile::Production,
        _ => Profile::Development,
    };
    let mut builder = defaults(profile).map_err(|e| ConfigError(e.to_string()))?;
    if let Some(path) = file {
        let name = path.to_string_lossy();
        builder = builder.add_source(File::new(&name, FileFormat::Toml).required(true));
    }
    builder = builder.add_source(Environment::default().source(Some(contract_overrides(env)?)));
    let pgmux_vars: config::Map<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with("PGMUX_") && !NOT_SETTINGS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Lists need try_parsing, which would also turn "007" into 7, so the one
    // list-valued key is split here instead.
    for (var, key) in LIST_KEYS {
        if let Some(list) = env.get(*var) {
            let users: Vec<String> = list
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(String::from)
                .collect();
            builder = builder
                .set_override(*key, users)
                .map_err(|e| ConfigError(e.to_string()))?;
        }
    }
    let pgmux_vars = pgmux_vars
        .into_iter()
        .filter(|(k, _)| !LIST_KEYS.iter().any(|(var, _)| var == k))
        .collect();
    builder = builder.add_source(
        Environment::with_prefix("PGMUX")
            .prefix_separator("_")
            .source(Some(pgmux_vars)),
    );
    let mut cfg: Config = builder
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| explain(e, file, env))?;
    cfg.profile = profile;
    add_contract_user_and_database(&mut cfg, env);
    cfg.validate()?;
    Ok(cfg)
}

fn defaults(
    profile: Profile,
) -> Result<config::ConfigBuilder<config::builder::DefaultState>, config::ConfigError> {
    let empty: Vec<String> = Vec::new();
    config::Config::builder()
        .set_default("listen_addr", "127.0.0.1:6432")?
        .set_default("listen_backlog", 1024)?
        .set_default("metrics_addr", "127.0.0.1:9930")?
        .set_default("server_host", "127.0.0.1")?
        .set_default("server_port", 5432)?
        .set_default("target_session_attrs", "any")?
        .set_default("load_balance_hosts", "disable")?
        .set_default("replica_ban_time", 60)?
        .set_default("replica_max_lag", 0)?
        .set_default("dns_max_ttl", 15)?
        .set_default("pool_mode", "transaction")?
        .set_default("pool_size", 20)?
        .set_default("min_pool_size", 0)?
        .set_default("max_db_connections", 0)?
        .set_default("max_client_conn", 1000)?
        .set_default("server_lifetime", profile.server_lifetime())?
        .set_default("server_lifetime_jitter", 0.1)?
        .set_default("server_idle_timeout", 600)?
        .set_default("server_connect_timeout", profile.server_connect_timeout())?
        .set_default("server_login_retry", 1.0)?
        .set_default("query_wait_timeout", 120)?
        .set_default("idle_transaction_timeout", 0)?
        .set_default("query_timeout", 0)?
        .set_default("cancel_wait_timeout", 10)?
        .set_default("transaction_timeout", 0)?
        .set_default("client_idle_timeout", 0)?
        .set_default("server_check_delay", 30)?
        .set_default("server_check_query", "<empty>")?
        .set_default("client_write_timeout", 60)?
        .set_default("client_login_timeout", 60)?
        .set_default("server_reset_query", "DISCARD ALL")?
        .set_default(
            "max_message_size",
            pgmux_wire::frame::DEFAULT_MAX_MESSAGE_SIZE as u64,
        )?
        .set_default("max_prepared_statements", 200)?
        .set_default("max_client_prepared_bytes", 4u64 << 20)?
        .set_default("auth_type", "scram-sha-256")?
        .set_default("auth_file", "")?
        .set_default("auth_user", "")?
        .set_default(
            "auth_query",
            "SELECT usename, passwd FROM pg_shadow WHERE usename=$1",
        )?
        .set_default("auth_dbname", "")?
        .set_default("admin_users", empty.clone())?
        .set_default("stats_users", empty)?
        .set_default("so_reuseport", false)?
        .set_default("shutdown_timeout", 30)?
        .set_default("stats_period", 60)?
        .set_default("log_stats", true)?
        .set_default("log_connections", true)?
        .set_default("log_disconnections", true)?
        .set_default("tcp_keepalive", true)?
        .set_default("tcp_keepidle", 60)?
        .set_default("tcp_keepintvl", 10)?
        .set_default("tcp_keepcnt", 0)?
        .set_default("tcp_user_timeout", 0)?
        .set_default("client_tls_sslmode", "disable")?
        .set_default("client_tls_cert_file", "")?
        .set_default("client_tls_key_file", "")?
        .set_default("client_tls_ca_file", "")?
        .set_default("client_tls_protocols", "secure")?
        .set_default("server_tls_sslmode", "prefer")?
        .set_default("server_tls_ca_file", "")?
        .set_default("server_tls_cert_file", "")?
        .set_default("server_tls_key_file", "")?
        .set_default("server_tls_protocols", "secure")?
        .set_default("peer_id", 0)?
        .set_default("log_format", "text")?
        .set_default("wildcard_databases", true)?
        .set_default("autodb_idle_timeout", 3600)?
        .set_default("max_pools", 1000)?
        .set_default("worker_threads", 0)?
        .set_default("io_backend", "auto")
}

/// BookTrader's variables, checked here so a bad value names the variable.
fn contract_overrides(env: &Env) -> Result<config::Map<String, String>, ConfigError> {
    let mut out = config::Map::new();
    let seconds = |var: &str| -> Result<Option<String>, ConfigError> {
        match env.get(var) {
            None => Ok(None),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) => Ok(Some(n.to_string())),
                Err(_) => Err(ConfigError(format!(
                    "{var}: expected a whole number of seconds, got {v:?}"
                ))),
            },
        }
    };
    if let Some(v) = seconds("DB_CONN_MAX_AGE")? {
        out.insert("server_lifetime".into(), v);
    }
    if let Some(v) = seconds("DB_CONNECT_TIMEOUT")? {
        if v == "0" {
            return Err(ConfigError(
                "DB_CONNECT_TIMEOUT: expected at least 1 second, got \"0\"".into(),
            ));
        }
        out.insert("server_connect_timeout".into(), v);
    }
    if let Some(v) = env.get("DB_HOST").filter(|v| !v.is_empty()) {
        out.insert("server_host".into(), v.clone());
    }
    if let Some(v) = env.get("DB_PORT") {
        match v.trim().parse::<u16>() {
            Ok(p) if p > 0 => out.insert("server_port".into(), p.to_string()),
            _ => {
                return Err(ConfigError(format!(
                    "DB_PORT: expected a TCP port from 1 to 65535, got {v:?}"
                )))
            }
        };
    }
    Ok(out)
}

/// `DB_NAME` becomes a configured database and `DB_USER`/`DB_PASSWORD` a user
/// (towards clients and the server alike).
fn add_contract_user_and_database(cfg: &mut Config, env: &Env) {
    if let Some(name) = env.get("DB_NAME").filter(|v| !v.is_empty()) {
        cfg.databases.entry(name.clone()).or_default();
    }
    if let (Some(user), Some(password)) = (env.get("DB_USER"), env.get("DB_PASSWORD")) {
        if !user.is_empty() {
            // The contract's password; the user's own settings stay.
            cfg.users.entry(user.clone()).or_default().password = Some(password.clone());
        }
    }
}

/// Turn the config crate's message into one naming what the operator set.
fn explain(err: config::ConfigError, file: Option<&Path>, env: &Env) -> ConfigError {
    let text = err.to_string();
    let key = text.split('`').nth(1).unwrap_or_default().to_string();
    let var = format!("PGMUX_{}", key.to_ascii_uppercase());
    if !key.is_empty() && env.contains_key(&var) {
        return ConfigError(format!(
            "{var}: {}",
            text.split(" for key").next().unwrap_or(&text)
        ));
    }
    if let Some(unknown) = text.strip_prefix("unknown field `") {
        let name = unknown.split('`').next().unwrap_or_default();
        let var = format!("PGMUX_{}", name.to_ascii_uppercase());
        if env.contains_key(&var) {
            return ConfigError(format!("{var}: not a pgmux setting"));
        }
        let where_ = file
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "configuration".into());
        return ConfigError(format!("{where_}: unknown key `{name}`"));
    }
    ConfigError(text)
}

/// Parse PgBouncer's userlist.txt: `"user" "secret"` per line, `""` for a
/// quote inside, blank lines and `;` comments ignored. Err carries the line.
pub fn parse_userlist(text: &str) -> Result<Vec<(String, String)>, usize> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        let mut rest = line;
        let mut fields = Vec::with_capacity(2);
        while fields.len() < 2 {
            let (field, after) = quoted(rest.trim_start()).ok_or(n + 1)?;
            fields.push(field);
            rest = after;
        }
        let secret = fields.pop().ok_or(n + 1)?;
        let user = fields.pop().ok_or(n + 1)?;
        out.push((user, secret));
    }
    Ok(out)
}

fn quoted(s: &str) -> Option<(String, &str)> {
    let mut chars = s.strip_prefix('"')?.char_indices().peekable();
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        if c == '"' {
            if let Some((_, '"')) = chars.peek() {
                chars.next();
                out.push('"');
            } else {
                return Some((out, &s[i + 2..]));
            }
        } else {
            out.push(c);
        }
    }
    None
}
