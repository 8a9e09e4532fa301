//! Where a pool's servers are: a client-facing database name resolved
//! against `[databases]` and the general server settings into a [`Target`].

use std::sync::Arc;

use super::hosts::{self, Endpoint, LoadBalance, SessionAttrs};
use super::{Config, PeerConfig, SslMode};
use crate::tls::TlsSetup;

/// Where a pool's server connections go, and how they are secured.
#[derive(Debug, Clone)]
pub struct Target {
    /// The servers that may serve it, in the order listed.
    pub hosts: Vec<Endpoint>,
    pub session_attrs: SessionAttrs,
    pub load_balance: LoadBalance,
    pub dbname: String,
    pub tls_mode: SslMode,
    /// The CA file that checks this server, when the database names its
    /// own (`None`: the general one).
    pub tls_ca_file: Option<String>,
    /// The client certificate and key presented to this server (the
    /// database's own, else the general ones; `None`: none).
    pub tls_identity: Option<TlsIdentity>,
    /// The loaded TLS setup servers are reached with (set by the pools;
    /// `None`: plaintext).
    pub tls: Option<Arc<TlsSetup>>,
    /// Where the pools note which listed servers failed or what role they
    /// had (set by the pools; `None`: not noted).
    pub book: Option<Arc<crate::server::hosts::HostBook>>,
}

/// A client certificate file and its key file.
pub type TlsIdentity = (String, String);

/// Two targets are the same place reached the same way: servers opened
/// for one serve the other. A reload that re-read unchanged certificate
/// files changes nothing.
impl PartialEq for Target {
    fn eq(&self, other: &Target) -> bool {
        let fingerprint = |t: &Target| t.tls.as_ref().map(|s| s.server_fingerprint);
        (
            &self.hosts,
            self.session_attrs,
            &self.dbname,
            self.tls_mode,
            &self.tls_ca_file,
            &self.tls_identity,
        ) == (
            &other.hosts,
            other.session_attrs,
            &other.dbname,
            other.tls_mode,
            &other.tls_ca_file,
            &other.tls_identity,
        ) && fingerprint(self) == fingerprint(other)
    }
}

impl Eq for Target {}

impl Target {
    /// The server list as written: `a:5432,b:5432`.
    pub fn hosts_text(&self) -> String {
        self.hosts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Config {
    /// The backend for a client-facing database name, or `None` when the
    /// name is not configured and wildcard pooling is off.
    pub fn target(&self, database: &str) -> Option<Target> {
        if !self.serves(database) {
            return None;
        }
        let db = self.databases.get(database);
        let db = db.cloned().unwrap_or_default();
        let (key, list) = match &db.host {
            Some(host) => (format!("databases.{database}.host"), host.as_str()),
            None => ("server_host".to_string(), self.server_host.as_str()),
        };
        let port = db.port.unwrap_or(self.server_port);
        // Checked by `validate`; an entry it let through is taken whole.
        let hosts = hosts::parse_hosts(&key, list, port).unwrap_or_else(|_| {
            vec![Endpoint {
                host: list.to_string(),
                port,
            }]
        });
        Some(Target {
            hosts,
            session_attrs: db.target_session_attrs.unwrap_or(self.target_session_attrs),
            load_balance: db.load_balance_hosts.unwrap_or(self.load_balance_hosts),
            dbname: db.dbname.unwrap_or_else(|| database.to_string()),
            tls_mode: db.server_tls_sslmode.unwrap_or(self.server_tls_sslmode),
            tls_ca_file: db.server_tls_ca_file,
            tls_identity: match (db.server_tls_cert_file, db.server_tls_key_file) {
                (Some(cert), Some(key)) => Some((cert, key)),
                _ => self.server_tls_identity(),
            },
            tls: None,
            book: None,
        })
    }

    /// The general client certificate toward servers, if one is set.
    pub fn server_tls_identity(&self) -> Option<TlsIdentity> {
        match (&self.server_tls_cert_file, &self.server_tls_key_file) {
            (cert, key) if cert.is_empty() || key.is_empty() => None,
            (cert, key) => Some((cert.clone(), key.clone())),
        }
    }

    /// Whether clients may log in to `database` (what [`Config::target`]
    /// decides, without building the target: asked at every login).
    pub fn serves(&self, database: &str) -> bool {
        self.wildcard_databases || self.databases.contains_key(database)
    }

    /// `server_host` as a list of servers.
    pub fn server_hosts(&self) -> Vec<Endpoint> {
        hosts::parse_hosts("server_host", &self.server_host, self.server_port).unwrap_or_else(
            |_| {
                vec![Endpoint {
                    host: self.server_host.clone(),
                    port: self.server_port,
                }]
            },
        )
    }

    /// Where peer `id` listens, if it is listed.
    pub fn peer(&self, id: u16) -> Option<&PeerConfig> {
        self.peers.get(&id.to_string())
    }
}
