//! Session state in transaction mode: what a client leaves on a server
//! beyond its transaction, which of it keeps the client there ([`Pin`]),
//! and the query that finds it ([`INSPECT_SQL`]).
//!
//! Some of it pgmux carries to whichever server the client gets next:
//! session-level settings (`SET`, `set_config(..., false)`, `search_path`,
//! `SET ROLE`). The rest cannot move: session advisory locks, `LISTEN`,
//! temporary tables, `WITH HOLD` cursors, SQL-level `PREPARE`, `SET SESSION
//! AUTHORIZATION`. A client holding any of those is *pinned*: it keeps its
//! server, as in session mode, until it lets go of the state or leaves (and
//! then the server is reset with `DISCARD ALL` before anyone else gets it).
//!
//! When [`super::watch`] says a transaction may have left some, pgmux asks
//! the server ([`INSPECT_SQL`]); the answer ([`Inspection`]) gives the pins
//! and the settings to carry.

use pgmux_wire::backend;
use pgmux_wire::reply::quote_literal;

/// State that keeps a client on its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    AdvisoryLock,
    Listen,
    TempTable,
    HoldCursor,
    SqlPrepare,
    SessionAuthorization,
    /// A custom setting may have been set under a name pgmux could not
    /// read; kept until `DISCARD ALL` or the client leaves.
    UntrackedSetting,
}

impl Pin {
    pub const ALL: [Pin; 7] = [
        Pin::AdvisoryLock,
        Pin::Listen,
        Pin::TempTable,
        Pin::HoldCursor,
        Pin::SqlPrepare,
        Pin::SessionAuthorization,
        Pin::UntrackedSetting,
    ];

    /// The metric label, and the word the inspection query answers with.
    pub fn label(self) -> &'static str {
        match self {
            Pin::AdvisoryLock => "advisory_lock",
            Pin::Listen => "listen",
            Pin::TempTable => "temp_table",
            Pin::HoldCursor => "with_hold_cursor",
            Pin::SqlPrepare => "sql_prepare",
            Pin::SessionAuthorization => "session_authorization",
            Pin::UntrackedSetting => "untracked_setting",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of [`Pin`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pins(u8);

impl Pins {
    pub fn from_bits(bits: u8) -> Pins {
        Pins(bits)
    }
    pub fn bits(self) -> u8 {
        self.0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn insert(&mut self, pin: Pin) {
        self.0 |= pin.bit();
    }
    pub fn contains(self, pin: Pin) -> bool {
        self.0 & pin.bit() != 0
    }
    pub fn iter(self) -> impl Iterator<Item = Pin> {
        Pin::ALL.into_iter().filter(move |p| self.contains(*p))
    }
}

/// What pgmux asks a server once a hinted transaction is over (status
/// idle, so only session-lived state is left): one row per pin, then the
/// settings changed at session level. Catalog names are schema-qualified so
/// a client's search_path cannot redirect them.
pub const INSPECT_SQL: &str = "\
SELECT 'pin', 'advisory_lock', NULL WHERE EXISTS (SELECT FROM pg_catalog.pg_locks \
 WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()) \
UNION ALL SELECT 'pin', 'listen', NULL WHERE EXISTS (SELECT FROM pg_catalog.pg_listening_channels()) \
UNION ALL SELECT 'pin', 'temp_table', NULL WHERE EXISTS (SELECT FROM pg_catalog.pg_class \
 WHERE relnamespace = pg_catalog.pg_my_temp_schema()) \
UNION ALL SELECT 'pin', 'with_hold_cursor', NULL WHERE EXISTS (SELECT FROM pg_catalog.pg_cursors) \
UNION ALL SELECT 'pin', 'sql_prepare', NULL WHERE EXISTS (SELECT FROM pg_catalog.pg_prepared_statements WHERE from_sql) \
UNION ALL SELECT 'pin', 'session_authorization', NULL WHERE EXISTS (SELECT FROM pg_catalog.pg_settings \
 WHERE name = 'session_authorization' AND source = 'session') \
UNION ALL SELECT 'set', name, setting FROM pg_catalog.pg_settings \
 WHERE source = 'session' AND name <> 'session_authorization'";

/// [`INSPECT_SQL`], plus a row for each custom setting in `custom` that is
/// set (names quoted as literals).
pub fn inspect_sql(custom: &[String]) -> String {
    let mut sql = String::from(INSPECT_SQL);
    if !custom.is_empty() {
        let names: Vec<String> = custom.iter().map(|n| quote_literal(n)).collect();
        sql.push_str(&format!(
            " UNION ALL SELECT 'set', n, pg_catalog.current_setting(n, true) \
             FROM pg_catalog.unnest(ARRAY[{}]::text[]) AS n \
             WHERE pg_catalog.current_setting(n, true) IS NOT NULL",
            names.join(", ")
        ));
    }
    sql
}

/// The answer to [`INSPECT_SQL`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Inspection {
    pub pins: Pins,
    /// Settings the session changed (name, value as `set_config` takes it).
    pub settings: Vec<(String, String)>,
}

impl Inspection {
    /// Read the DataRow bodies of [`INSPECT_SQL`]'s result.
    pub fn from_rows<'a>(rows: impl IntoIterator<Item = &'a [u8]>) -> Inspection {
        let mut out = Inspection::default();
        for row in rows {
            let Some(fields) = backend::data_row(row) else {
                continue;
            };
            let text = |i: usize| {
                fields
                    .get(i)
                    .copied()
                    .flatten()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            };
            match (text(0).as_deref(), text(1)) {
                (Some("pin"), Some(label)) => {
                    if let Some(pin) = Pin::ALL.into_iter().find(|p| p.label() == label) {
                        out.pins.insert(pin);
                    }
                }
                (Some("set"), Some(name)) => {
                    out.settings.push((name, text(2).unwrap_or_default()));
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    fn row(values: &[Option<&str>]) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
        b.to_vec()
    }

    #[test]
    fn an_inspection_reads_pins_and_settings() {
        let rows = [
            row(&[Some("pin"), Some("listen"), None]),
            row(&[Some("pin"), Some("advisory_lock"), None]),
            row(&[Some("set"), Some("search_path"), Some("\"app\", public")]),
            row(&[Some("set"), Some("work_mem"), Some("8192")]),
            row(&[Some("pin"), Some("something_new"), None]),
        ];
        let got = Inspection::from_rows(rows.iter().map(Vec::as_slice));
        assert!(got.pins.contains(Pin::Listen) && got.pins.contains(Pin::AdvisoryLock));
        assert_eq!(got.pins.iter().count(), 2);
        assert_eq!(
            got.settings,
            vec![
                ("search_path".to_string(), "\"app\", public".to_string()),
                ("work_mem".to_string(), "8192".to_string())
            ]
        );
        assert_eq!(Inspection::from_rows([]), Inspection::default());
    }
}
