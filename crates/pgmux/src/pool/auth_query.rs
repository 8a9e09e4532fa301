//! Users pgmux does not know from its configuration, looked up in
//! PostgreSQL (`auth_user`, `auth_query`, `auth_dbname`, PgBouncer's
//! names): the SCRAM verifier or MD5 hash the server keeps authenticates
//! the client, and what the client's login proves lets pgmux log in to the
//! server as that user, so no plaintext password exists anywhere.
//!
//! Each lookup runs on a connection of its own as `auth_user`, closed
//! after it: lookups are rare, because what they return is cached per user
//! until a login with it fails. That a name is unknown is cached only
//! briefly, so a role created a moment ago can log in, while a stranger
//! trying names costs PostgreSQL at most one query per name per
//! [`UNKNOWN_FOR`]. A name that is no one's gets a whole SCRAM exchange
//! against a decoy verifier of its own ([`Pools::decoy`]).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use pgmux_wire::auth::{ScramVerifier, Secret};
use pgmux_wire::backend::data_row;

use super::{lock, Pools};
use crate::server::{Login, Server, ServerError};

/// How long "no such user" is believed.
const UNKNOWN_FOR: Duration = Duration::from_secs(5);

/// Names remembered at most; past it the cache starts afresh (a stranger
/// inventing names cannot grow it without bound).
const MAX_CACHED: usize = 10_000;

/// What a lookup found for one name.
#[derive(Clone)]
struct Looked {
    /// `None`: no such user, or no usable secret (a role without a
    /// password, or one the query says is expired).
    secret: Option<Secret>,
    at: Instant,
}

/// The per-user cache of lookups.
#[derive(Default)]
pub struct AuthCache(std::sync::Mutex<HashMap<String, Looked>>);

impl Pools {
    /// The secret PostgreSQL keeps for `user`, looked up with
    /// `auth_query` when `auth_user` is set (`None` otherwise, and for a
    /// user that does not exist). `database` is the one the client asked
    /// for, where the query runs unless `auth_dbname` names another.
    pub async fn look_up_secret(&self, user: &str, database: &str) -> Option<Secret> {
        let config = self.config();
        if config.auth_user.is_empty() {
            return None;
        }
        if let Some(found) = lock(&self.auth_cache.0).get(user) {
            if found.secret.is_some() || found.at.elapsed() < UNKNOWN_FOR {
                return found.secret.clone();
            }
        }
        let secret = match self.run_auth_query(user, database).await {
            Ok(secret) => secret,
            Err(e) => {
                // Not cached: the next login tries again.
                tracing::warn!(%user, auth_user = %config.auth_user, error = %e, "auth_query failed");
                return None;
            }
        };
        let mut cache = lock(&self.auth_cache.0);
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(
            user.to_string(),
            Looked {
                secret: secret.clone(),
                at: Instant::now(),
            },
        );
        secret
    }

    /// The verifier an unknown user's SCRAM exchange runs against: the same
    /// salt for the same name every time, and a different one for another
    /// name, as for real users, so that the exchange tells a stranger
    /// nothing. Its keys come from the configured secrets (stable across
    /// restarts while they are), or from a random key when there are none.
    pub fn decoy(&self, user: &str) -> ScramVerifier {
        ScramVerifier::decoy(&self.current().decoy_key, user)
    }

    /// A login with `user`'s looked-up secret failed: look it up afresh
    /// next time (the password may have changed).
    pub fn forget_looked_up(&self, user: &str) {
        lock(&self.auth_cache.0).remove(user);
    }

    async fn run_auth_query(
        &self,
        user: &str,
        database: &str,
    ) -> Result<Option<Secret>, ServerError> {
        let config = self.config();
        let dbname = match config.auth_dbname.as_str() {
            "" => database,
            named => named,
        };
        let Some(target) = self.target_of(dbname) else {
            return Ok(None);
        };
        let login = Login {
            user: config.auth_user.clone(),
            credential: self.credential_of(&config.auth_user),
        };
        let mut server = Server::connect(
            &target,
            &login,
            &crate::server::OpenPerHost::new(),
            crate::server::Reach {
                timeout: config.server_connect_timeout(),
                tcp: config.tcp_options(),
                ban_time: config.replica_ban_time(),
                max_lag: config.replica_max_lag,
                dns_ttl: config.dns_max_ttl(),
            },
            config.max_message_size as usize,
            0,
        )
        .await?;
        let rows = server.query_params(&config.auth_query, &[user]).await;
        server.close().await;
        let rows = rows?;
        // (name, secret): a NULL secret is a role that cannot log in with
        // a password (or, with a query that checks it, an expired one).
        let secret = rows.first().and_then(|row| {
            let columns = data_row(row)?;
            let text = (*columns.get(1)?)?;
            std::str::from_utf8(text).ok().map(Secret::parse)
        });
        // Only what PostgreSQL keeps counts: a plaintext here would be a
        // query returning something else.
        Ok(secret.filter(|s| s.plaintext().is_none()))
    }
}

/// A key only someone who knows every configured secret could derive.
pub(super) fn decoy_key(secrets: &BTreeMap<String, Secret>) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    if secrets.is_empty() {
        return rand::random();
    }
    let mut h = Sha256::new();
    h.update(b"pgmux decoy verifiers\0");
    for (user, secret) in secrets {
        h.update(user.as_bytes());
        h.update([0]);
        match secret {
            Secret::Plain(p) | Secret::Md5(p) => h.update(p.as_bytes()),
            Secret::Scram(v) => h.update(v.server_key()),
        }
        h.update([0]);
    }
    h.finalize().into()
}
