//! Session parameters: what a client believes is set, what a server has set,
//! and the SET statements that bring a server in line with a client.

use std::collections::BTreeMap;
use std::sync::Arc;

use pgmux_wire::reply::{quote_ident, quote_literal};

/// Startup keys that are not server settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// Reported by the server for reasons of its own: an administrator's
/// `ALTER SYSTEM`, a cloud provider making a full instance read-only, a
/// standby. Taking a report of it as the client's own setting would carry
/// it to the client's next server and keep the client read-only after the
/// server recovered, or after a failover. So its reports are not taken
/// (the value a client gave at login still is), and a client that sets
/// it in SQL is pinned instead (`session::state::watch`).
pub const SERVER_SIDE: &[&str] = &["default_transaction_read_only"];

/// Reported by the server but not settable by a client: never synced.
const READ_ONLY: &[&str] = &[
    "server_version",
    "server_version_num",
    "server_encoding",
    "integer_datetimes",
    "is_superuser",
    "session_authorization",
    "in_hot_standby",
    "scram_iterations",
];

/// Parameter name -> value, looked up case-insensitively (`DateStyle` and
/// `datestyle` are one setting) while keeping the server's spelling.
///
/// Copy-on-write: clients start from their pool's defaults and share them
/// until a setting of theirs differs, so an idle client that changed
/// nothing holds no copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamMap {
    entries: Arc<BTreeMap<String, (String, String)>>,
}

impl ParamMap {
    pub fn set(&mut self, name: &str, value: &str) {
        let key = name.to_ascii_lowercase();
        if self.entries.get(&key).is_some_and(|(_, v)| v == value) {
            return;
        }
        let entries = Arc::make_mut(&mut self.entries);
        match entries.get_mut(&key) {
            Some(entry) => entry.1 = value.to_string(),
            None => {
                entries.insert(key, (name.to_string(), value.to_string()));
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .get(&name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.values().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// A client's view at login: the server's reported defaults overlaid
    /// with the settings from its startup packet (including `options -c`).
    pub fn for_client(server_defaults: &ParamMap, startup: &[(String, String)]) -> ParamMap {
        let mut out = server_defaults.clone();
        for (name, value) in startup {
            if name == "options" {
                for (k, v) in pgmux_wire::startup::parse_options(value) {
                    out.set(&k, &v);
                }
            } else if !NOT_SETTINGS.contains(&name.as_str()) {
                out.set(name, value);
            }
        }
        out
    }

    pub fn remove(&mut self, name: &str) {
        let key = name.to_ascii_lowercase();
        if self.entries.contains_key(&key) {
            Arc::make_mut(&mut self.entries).remove(&key);
        }
    }

    /// Keep only the settings `keep` accepts (by name).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        if self.entries.values().any(|(name, _)| !keep(name)) {
            Arc::make_mut(&mut self.entries).retain(|_, (name, _)| keep(name));
        }
    }

    /// `reported`'s settings (as `reported` spells their names) with the
    /// values `self` gives them, for a login's ParameterStatus messages;
    /// looked up by the stored lowercase keys, so nothing is allocated.
    pub fn reported_values<'a>(
        &'a self,
        reported: &'a ParamMap,
    ) -> impl Iterator<Item = (&'a str, &'a str)> {
        reported.entries.iter().filter_map(|(key, (name, _))| {
            self.entries
                .get(key)
                .map(|(_, value)| (name.as_str(), value.as_str()))
        })
    }

    /// The same shared map (a pointer compare, no string compares).
    pub fn shares_with(&self, other: &ParamMap) -> bool {
        Arc::ptr_eq(&self.entries, &other.entries)
    }

    /// Whether `server` must be changed to match `self` (the client):
    /// a setting differs, or the server carries one the client never set.
    pub fn differs_from(&self, server: &ParamMap) -> bool {
        !self.shares_with(server)
            && (!self.differences(server).is_empty() || !self.extras(server).is_empty())
    }

    /// Settings the server has (set by pgmux for an earlier client) that
    /// this client does not: they must be RESET, or they would leak.
    pub fn extras<'a>(&self, server: &'a ParamMap) -> Vec<&'a str> {
        server
            .entries
            .iter()
            .filter(|(key, _)| {
                !self.entries.contains_key(*key) && !READ_ONLY.contains(&key.as_str())
            })
            .map(|(_, (name, _))| name.as_str())
            .collect()
    }

    /// Settings where `server` differs from `self` (the client), settable ones only.
    pub fn differences<'a>(&'a self, server: &ParamMap) -> Vec<(&'a str, &'a str)> {
        if Arc::ptr_eq(&self.entries, &server.entries) {
            return Vec::new();
        }
        self.entries
            .iter()
            .filter(|(key, _)| !READ_ONLY.contains(&key.as_str()))
            .filter(|(key, (_, value))| server.entries.get(*key).map(|(_, v)| v) != Some(value))
            .map(|(_, (name, value))| (name.as_str(), value.as_str()))
            .collect()
    }
}

/// Distinct (setting, value) spellings a pool remembers.
const MAX_SPELLINGS: usize = 1024;

/// How a pool's servers spell the values clients give for reported
/// settings (`utf8` → `UTF8`), learnt from the servers themselves.
#[derive(Debug, Default)]
pub struct Spellings {
    known: std::sync::Mutex<std::collections::HashMap<(String, String), String>>,
}

impl Spellings {
    /// The server's spelling of `value` for `name`, if known. A printable
    /// ASCII `application_name` is reported as given, so it is never asked.
    pub fn spelling(&self, name: &str, value: &str) -> Option<String> {
        if name.eq_ignore_ascii_case("application_name")
            && value.bytes().all(|b| (0x20..0x7f).contains(&b))
        {
            return Some(value.to_string());
        }
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known
            .get(&(name.to_ascii_lowercase(), value.to_string()))
            .cloned()
    }

    /// Remember that the server reports `given` for `name` as `canonical`
    /// (bounded: past the cap, spellings are asked for each time).
    pub fn learn(&self, name: &str, given: &str, canonical: &str) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() < MAX_SPELLINGS {
            known.insert(
                (name.to_ascii_lowercase(), given.to_string()),
                canonical.to_string(),
            );
        }
    }
}

/// One simple query that applies `settings` and resets `resets`, every
/// name and value quoted. Values go through `set_config`, which reads them
/// as the server shows them: `SET search_path TO 'a, b'` would instead make
/// one schema named "a, b" of a list setting.
pub fn set_statements(settings: &[(&str, &str)], resets: &[&str]) -> String {
    let mut sql = String::new();
    for name in resets {
        sql.push_str("RESET ");
        sql.push_str(&quote_ident(name));
        sql.push(';');
    }
    for (i, (name, value)) in settings.iter().enumerate() {
        sql.push_str(if i == 0 { "SELECT " } else { ", " });
        sql.push_str("pg_catalog.set_config(");
        sql.push_str(&quote_literal(name));
        sql.push_str(", ");
        sql.push_str(&quote_literal(value));
        sql.push_str(", false)");
    }
    if !settings.is_empty() {
        sql.push(';');
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> ParamMap {
        let mut m = ParamMap::default();
        for (k, v) in pairs {
            m.set(k, v);
        }
        m
    }

    #[test]
    fn client_view_overlays_startup_on_defaults() {
        let defaults = map(&[
            ("TimeZone", "UTC"),
            ("DateStyle", "ISO, MDY"),
            ("server_version", "15"),
        ]);
        let startup = vec![
            ("user".to_string(), "u".to_string()),
            ("timezone".to_string(), "Europe/Paris".to_string()),
            ("options".to_string(), "-c search_path=app".to_string()),
        ];
        let client = ParamMap::for_client(&defaults, &startup);
        assert_eq!(client.get("TimeZone"), Some("Europe/Paris"));
        assert_eq!(client.get("search_path"), Some("app"));
        assert_eq!(client.get("user"), None);
        let names: Vec<_> = client.iter().map(|(n, _)| n).collect();
        assert!(
            names.contains(&"TimeZone"),
            "keeps the server's spelling: {names:?}"
        );
    }

    #[test]
    fn clients_share_the_defaults_until_they_differ() {
        let defaults = map(&[("TimeZone", "UTC")]);
        let same = ParamMap::for_client(&defaults, &[("TimeZone".into(), "UTC".into())]);
        assert!(Arc::ptr_eq(&same.entries, &defaults.entries));
        let mut other = ParamMap::for_client(&defaults, &[]);
        other.set("timezone", "Asia/Tokyo");
        assert!(!Arc::ptr_eq(&other.entries, &defaults.entries));
        assert_eq!(defaults.get("TimeZone"), Some("UTC"));
    }

    #[test]
    fn differences_skip_read_only_and_equal_settings() {
        let client = map(&[
            ("TimeZone", "Asia/Tokyo"),
            ("DateStyle", "ISO, MDY"),
            ("server_version", "14"),
        ]);
        let server = map(&[
            ("TimeZone", "UTC"),
            ("DateStyle", "ISO, MDY"),
            ("server_version", "15"),
        ]);
        assert_eq!(
            client.differences(&server),
            vec![("TimeZone", "Asia/Tokyo")]
        );
    }

    #[test]
    fn settings_a_server_keeps_from_another_client_are_extras() {
        let client = map(&[("TimeZone", "UTC")]);
        let server = map(&[
            ("TimeZone", "UTC"),
            ("statement_timeout", "5s"),
            ("server_version", "15"),
        ]);
        assert_eq!(client.extras(&server), vec!["statement_timeout"]);
        assert!(client.differs_from(&server));
        let mut cleaned = server.clone();
        cleaned.remove("Statement_Timeout");
        assert!(client.extras(&cleaned).is_empty());
        assert!(!client.differs_from(&cleaned));
    }

    #[test]
    fn spellings_are_learnt_per_setting_and_bounded() {
        let s = Spellings::default();
        assert_eq!(s.spelling("client_encoding", "utf8"), None);
        s.learn("Client_Encoding", "utf8", "UTF8");
        assert_eq!(
            s.spelling("client_encoding", "utf8").as_deref(),
            Some("UTF8")
        );
        assert_eq!(s.spelling("DateStyle", "utf8"), None);
        assert_eq!(
            s.spelling("application_name", "web 1").as_deref(),
            Some("web 1")
        );
        assert_eq!(s.spelling("application_name", "caf\u{e9}"), None);
        for i in 0..2 * MAX_SPELLINGS {
            s.learn("TimeZone", &format!("zone{i}"), "x");
        }
        assert_eq!(s.known.lock().unwrap().len(), MAX_SPELLINGS);
    }

    #[test]
    fn set_statements_quote_names_and_values() {
        let sql = set_statements(
            &[("TimeZone", "x'; DROP TABLE t; --"), ("a\"b", "c")],
            &["work_mem"],
        );
        assert_eq!(
            sql,
            "RESET \"work_mem\";SELECT pg_catalog.set_config('TimeZone', 'x''; DROP TABLE t; --', false), \
             pg_catalog.set_config('a\"b', 'c', false);"
        );
    }
}
