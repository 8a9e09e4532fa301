//! Several servers for one database: `server_host` and `[databases.NAME]
//! host` take a comma-separated list (`host:port` each, as libpq's
//! multi-host strings), and libpq's `target_session_attrs` and
//! `load_balance_hosts` say which of them a server connection may use.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// One server address of a list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// `a,b:5433,[::1]:5434`: each entry's port defaults to `default_port`.
pub fn parse_hosts(key: &str, list: &str, default_port: u16) -> Result<Vec<Endpoint>, ConfigError> {
    let bad = |entry: &str, why: &str| {
        ConfigError::new(format!(
            "{key}: {entry:?} in {list:?} {why} (expected host or host:port, comma-separated)"
        ))
    };
    let mut out = Vec::new();
    for entry in list.split(',').map(str::trim) {
        if entry.is_empty() {
            return Err(bad(entry, "is empty"));
        }
        let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
            // [IPv6] or [IPv6]:port
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| bad(entry, "has no closing ]"))?;
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                None => return Err(bad(entry, "has text after ]")),
            }
        } else {
            match entry.rsplit_once(':') {
                // A bare IPv6 address has several colons and no port.
                Some((host, port)) if !host.contains(':') => (host, Some(port)),
                _ => (entry, None),
            }
        };
        if host.is_empty() {
            return Err(bad(entry, "has no host"));
        }
        let port = match port {
            None => default_port,
            Some(p) => p
                .parse()
                .map_err(|_| bad(entry, "has a port that is not 1-65535"))?,
        };
        if port == 0 {
            return Err(bad(entry, "has port 0"));
        }
        out.push(Endpoint {
            host: host.to_string(),
            port,
        });
    }
    Ok(out)
}

/// libpq's `target_session_attrs`: which servers of the list will do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionAttrs {
    /// The first that answers.
    Any,
    /// One that takes writes (not in hot standby, `default_transaction_read_only` off).
    ReadWrite,
    /// One that does not.
    ReadOnly,
    /// One not in recovery.
    Primary,
    /// One in recovery (hot standby).
    Standby,
    /// A standby if one answers, else any.
    PreferStandby,
}

impl SessionAttrs {
    pub fn name(self) -> &'static str {
        match self {
            SessionAttrs::Any => "any",
            SessionAttrs::ReadWrite => "read-write",
            SessionAttrs::ReadOnly => "read-only",
            SessionAttrs::Primary => "primary",
            SessionAttrs::Standby => "standby",
            SessionAttrs::PreferStandby => "prefer-standby",
        }
    }

    /// Whether a server in `role` will do (`PreferStandby`'s second pass
    /// takes any, see [`SessionAttrs::passes`]).
    pub fn accepts(self, role: Role) -> bool {
        match self {
            SessionAttrs::Any | SessionAttrs::PreferStandby => true,
            SessionAttrs::ReadWrite => !role.read_only,
            SessionAttrs::ReadOnly => role.read_only,
            SessionAttrs::Primary => !role.in_recovery,
            SessionAttrs::Standby => role.in_recovery,
        }
    }

    /// The attribute each pass over the list asks for: `prefer-standby`
    /// tries standbys first, then anything.
    pub fn passes(self) -> &'static [SessionAttrs] {
        match self {
            SessionAttrs::PreferStandby => &[SessionAttrs::Standby, SessionAttrs::Any],
            SessionAttrs::Any => &[SessionAttrs::Any],
            SessionAttrs::ReadWrite => &[SessionAttrs::ReadWrite],
            SessionAttrs::ReadOnly => &[SessionAttrs::ReadOnly],
            SessionAttrs::Primary => &[SessionAttrs::Primary],
            SessionAttrs::Standby => &[SessionAttrs::Standby],
        }
    }
}

/// What a server said it is at login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Role {
    /// In recovery: a hot standby.
    pub in_recovery: bool,
    /// Refuses writes (a standby, or `default_transaction_read_only`).
    pub read_only: bool,
}

impl Role {
    /// A writable server not in recovery.
    pub const PRIMARY: Role = Role {
        in_recovery: false,
        read_only: false,
    };
    /// A hot standby (in recovery, so read-only).
    pub const STANDBY: Role = Role {
        in_recovery: true,
        read_only: true,
    };

    /// Writable and not in recovery.
    pub fn is_primary(self) -> bool {
        !self.in_recovery && !self.read_only
    }

    pub fn name(self) -> &'static str {
        match (self.in_recovery, self.read_only) {
            (true, _) => "standby",
            (false, false) => "primary",
            (false, true) => "read-only",
        }
    }
}

/// libpq's `load_balance_hosts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadBalance {
    /// In the order listed.
    Disable,
    /// In a random order, per connection.
    Random,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_as_libpq_writes_them() {
        let hosts = parse_hosts("server_host", "a, b:5433,[::1]:5434,::1,[fe80::1]", 5432).unwrap();
        let shown: Vec<String> = hosts.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "a:5432",
                "b:5433",
                "[::1]:5434",
                "[::1]:5432",
                "[fe80::1]:5432"
            ]
        );
        for bad in ["", "a,", "a:x", "a:0", "[::1", ":5432", "a:99999"] {
            assert!(parse_hosts("server_host", bad, 5432).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn attributes_pick_as_libpq_does() {
        let (primary, standby) = (Role::PRIMARY, Role::STANDBY);
        let read_only_primary = Role {
            in_recovery: false,
            read_only: true,
        };
        assert!(SessionAttrs::ReadWrite.accepts(primary));
        assert!(!SessionAttrs::ReadWrite.accepts(standby));
        assert!(!SessionAttrs::ReadWrite.accepts(read_only_primary));
        assert!(SessionAttrs::Primary.accepts(read_only_primary));
        assert!(SessionAttrs::ReadOnly.accepts(standby));
        assert!(SessionAttrs::Standby.accepts(standby) && !SessionAttrs::Standby.accepts(primary));
        assert_eq!(
            SessionAttrs::PreferStandby.passes(),
            [SessionAttrs::Standby, SessionAttrs::Any]
        );
    }
}
