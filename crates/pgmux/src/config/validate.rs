//! Checks no single key's type can express, and which keys a reload
//! cannot change.

use super::{hosts, AuthType, Config, ConfigError, SslMode};

impl Config {
    /// Keys a reload cannot change: they shape listeners, the runtime or
    /// pools' identity, and take effect at the next start.
    pub const RESTART_ONLY: &'static [&'static str] = &[
        "listen_addr",
        "listen_backlog",
        "metrics_addr",
        "worker_threads",
        "io_backend",
        "so_reuseport",
        "peer_id",
        "pool_mode",
        "max_client_conn",
        "max_message_size",
        "max_db_connections",
        "log_format",
    ];

    /// The restart-only keys whose value differs in `new`.
    pub fn restart_only_differences(&self, new: &Config) -> Vec<&'static str> {
        let (Ok(old), Ok(new)) = (toml::Table::try_from(self), toml::Table::try_from(new)) else {
            return Vec::new();
        };
        Self::RESTART_ONLY
            .iter()
            .copied()
            .filter(|key| old.get(*key) != new.get(*key))
            .collect()
    }

    /// Checks no single key's type can express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen()?;
        self.metrics()?;
        let positive = [
            ("pool_size", self.pool_size as f64),
            ("max_client_conn", self.max_client_conn as f64),
            ("server_connect_timeout", self.server_connect_timeout),
            ("client_login_timeout", self.client_login_timeout),
            ("cancel_wait_timeout", self.cancel_wait_timeout),
            ("server_login_retry", self.server_login_retry),
            ("stats_period", self.stats_period),
        ];
        for (key, v) in positive {
            if v.is_nan() || v <= 0.0 {
                return Err(ConfigError::new(format!(
                    "{key}: expected a value above zero, got {v}"
                )));
            }
        }
        let non_negative = [
            ("server_lifetime", self.server_lifetime),
            ("server_idle_timeout", self.server_idle_timeout),
            ("query_wait_timeout", self.query_wait_timeout),
            ("idle_transaction_timeout", self.idle_transaction_timeout),
            ("query_timeout", self.query_timeout),
            ("transaction_timeout", self.transaction_timeout),
            ("client_idle_timeout", self.client_idle_timeout),
            ("autodb_idle_timeout", self.autodb_idle_timeout),
            ("server_check_delay", self.server_check_delay),
            ("replica_ban_time", self.replica_ban_time),
            ("dns_max_ttl", self.dns_max_ttl),
            ("client_write_timeout", self.client_write_timeout),
            ("shutdown_timeout", self.shutdown_timeout),
        ];
        let non_negative = non_negative
            .into_iter()
            .map(|(key, v)| (key.to_string(), v))
            .chain(self.entry_timeouts());
        for (key, v) in non_negative {
            if v.is_nan() || !(0.0..=1e9).contains(&v) {
                return Err(ConfigError::new(format!(
                    "{key}: expected seconds from 0 (off) upwards, got {v}"
                )));
            }
        }
        if !(0.0..=0.5).contains(&self.server_lifetime_jitter) {
            return Err(ConfigError::new(format!(
                "server_lifetime_jitter: expected a fraction between 0 and 0.5, got {}",
                self.server_lifetime_jitter
            )));
        }
        if self.min_pool_size > self.pool_size {
            return Err(ConfigError::new(format!(
                "min_pool_size: {} is larger than pool_size {}",
                self.min_pool_size, self.pool_size
            )));
        }
        if self.auth_type == AuthType::Cert && self.client_tls_sslmode < SslMode::VerifyCa {
            return Err(ConfigError::new(format!(
                "auth_type: \"cert\" logs clients in by their certificate, which client_tls_sslmode = \"{}\" does not ask for (use verify-ca or verify-full)",
                self.client_tls_sslmode.name()
            )));
        }
        hosts::parse_hosts("server_host", &self.server_host, self.server_port)?;
        for (name, db) in &self.databases {
            if let Some(host) = &db.host {
                let port = db.port.unwrap_or(self.server_port);
                hosts::parse_hosts(&format!("databases.{name}.host"), host, port)?;
            }
            if db.server_tls_cert_file.is_some() != db.server_tls_key_file.is_some() {
                return Err(ConfigError::new(format!(
                    "databases.{name}: server_tls_cert_file and server_tls_key_file: give both or neither"
                )));
            }
        }
        if self.peer_id > crate::peering::MAX_PEER_ID {
            return Err(ConfigError::new(format!(
                "peer_id: expected 0 (no peering) to {}, got {}",
                crate::peering::MAX_PEER_ID,
                self.peer_id
            )));
        }
        for name in self.peers.keys() {
            match name.parse::<u16>() {
                Ok(id) if (1..=crate::peering::MAX_PEER_ID).contains(&id) => {}
                _ => {
                    return Err(ConfigError::new(format!(
                        "peers.{name}: a peer is named by its peer_id, 1 to {}",
                        crate::peering::MAX_PEER_ID
                    )))
                }
            }
        }
        if self.max_message_size < 1024 {
            return Err(ConfigError::new(
                "max_message_size: expected at least 1024 bytes".into(),
            ));
        }
        Ok(())
    }
}
