//! Noticing, as messages pass, that a transaction may have left session
//! state on its server (what state, and why it matters: [`super::pins`]).
//!
//! Looking at the server after every transaction would cost a round trip
//! each, so pgmux looks only when a transaction gave a reason to: a command
//! tag (`LISTEN`, `DECLARE CURSOR`, ...) or a statement text naming
//! something tags do not reveal (`pg_advisory_lock` answers `SELECT 1`).
//! The `SET` tag counts only when the client's text had a `SET` that may be
//! session-level: `SET LOCAL`, which row-level-security apps run in every
//! transaction, leaves nothing behind. False alarms cost one query; the
//! check itself is the server's truth.

use super::words::Words;

/// Words in a statement's text that call for a look at the session after
/// the transaction: advisory locks and set_config() hide behind `SELECT`,
/// and `CREATE TEMP TABLE ... AS` / `SELECT ... INTO TEMP` answer `SELECT n`.
const HINT_WORDS: u16 = Words::ADVISORY | Words::TEMP | Words::SET_CONFIG;

/// Custom setting names remembered between two looks at a session.
const MAX_CUSTOM_SETTINGS: usize = 64;

/// What a client's transactions may have left in the session since the
/// last look, gathered as messages pass: from statement texts on the way
/// in, from command tags on the way back. Taken when a transaction ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watch {
    /// A tag or a text calls for a look at the session.
    look: bool,
    /// A text had a `SET` that may be session-level: a `SET` tag then
    /// calls for a look (a `SET LOCAL` alone does not).
    session_set: bool,
    /// Custom settings named, and whether one may hide behind a name pgmux
    /// could not read.
    custom: CustomSettings,
    /// `DISCARD ALL` ran.
    discarded_all: bool,
}

impl Watch {
    /// What `sql` may leave behind (custom names are read only when the
    /// text gives a reason to).
    pub fn of_text(sql: &[u8]) -> Watch {
        Watch::of_text_with(sql, Words::of(sql))
    }

    /// [`Watch::of_text`], given the words already found in `sql`.
    pub fn of_text_with(sql: &[u8], words: Words) -> Watch {
        let mut watch = Watch {
            look: words.any(HINT_WORDS),
            session_set: words.any(Words::SET | Words::COMMENT) && sets_session(sql),
            ..Watch::default()
        };
        if watch.look || watch.session_set {
            watch.custom = custom_settings(sql);
        }
        watch
    }

    pub fn note_text(&mut self, sql: &[u8]) {
        self.merge(&Watch::of_text(sql));
    }

    pub fn note_text_with(&mut self, sql: &[u8], words: Words) {
        self.merge(&Watch::of_text_with(sql, words));
    }

    /// A command tag the server sent.
    pub fn note_tag(&mut self, tag: &[u8]) {
        self.look |= tag_hint(tag) || (is_set_tag(tag) && self.session_set);
        self.discarded_all |= tag.starts_with(b"DISCARD ALL\0");
    }

    pub fn merge(&mut self, other: &Watch) {
        self.look |= other.look;
        self.session_set |= other.session_set;
        self.discarded_all |= other.discarded_all;
        self.custom.unresolved |= other.custom.unresolved;
        for name in &other.custom.names {
            // Bounded: a client naming thousands only loses the excess.
            if self.custom.names.len() < MAX_CUSTOM_SETTINGS {
                self.custom.add(name.clone());
            }
        }
    }

    /// Whether the session must be looked at now.
    pub fn calls_for_look(&self) -> bool {
        self.look
    }

    pub fn custom_names(&self) -> &[String] {
        &self.custom.names
    }

    /// A custom setting may have been set under a name pgmux cannot read.
    pub fn untracked_setting(&self) -> bool {
        self.custom.unresolved
    }

    pub fn discarded_all(&self) -> bool {
        self.discarded_all
    }
}

/// Whether `sql` may leave session state behind (ASCII case-insensitive).
#[cfg(test)]
fn text_hint(sql: &[u8]) -> bool {
    Words::of(sql).any(HINT_WORDS)
}

/// Whether a statement of `sql` may be a session-level `SET`: one that
/// starts with `SET` but not `SET LOCAL`, `SET TRANSACTION`, `SET
/// CONSTRAINTS` or `SET SESSION CHARACTERISTICS`. Statements are taken to
/// start at the beginning and after each `;` (a `;` inside a string only
/// adds starts, so it can only make the answer more cautious); a start
/// behind a comment counts as a possible `SET`.
fn sets_session(sql: &[u8]) -> bool {
    sql.split(|&b| b == b';').any(|statement| {
        let start = statement
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(statement.len());
        let rest = &statement[start..];
        if rest.starts_with(b"--") || rest.starts_with(b"/*") {
            return true;
        }
        let Some(after_set) = word(rest, b"set") else {
            return false;
        };
        let next = after_set.trim_ascii_start();
        let transaction_scoped = [&b"local"[..], b"transaction", b"constraints"]
            .iter()
            .any(|w| word(next, w).is_some())
            || word(next, b"session")
                .is_some_and(|r| word(r.trim_ascii_start(), b"characteristics").is_some());
        !transaction_scoped
    })
}

/// Custom settings (`app.user_id`: dotted names) that statements name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomSettings {
    pub names: Vec<String>,
    /// A statement may set one whose name pgmux could not read (a `SET`
    /// behind a comment, `set_config($1, …)`): such a client is pinned.
    pub unresolved: bool,
}

impl CustomSettings {
    /// Note a custom setting (only dotted names are custom).
    fn add(&mut self, name: String) {
        if name.contains('.') && !self.names.contains(&name) {
            self.names.push(name);
        } else if crate::params::SERVER_SIDE.contains(&name.as_str()) {
            // Its reports are the server's (see `params::SERVER_SIDE`):
            // a client's own value cannot be carried, so it pins.
            self.unresolved = true;
        }
    }
}

/// The custom settings a session-level `SET` or a `set_config('…')` in
/// `sql` names. PostgreSQL lists such placeholders in no catalog view, so
/// the inspection asks for each by name.
fn custom_settings(sql: &[u8]) -> CustomSettings {
    let mut out = CustomSettings::default();
    for statement in sql.split(|&b| b == b';') {
        let statement = statement.trim_ascii_start();
        if statement.starts_with(b"--") || statement.starts_with(b"/*") {
            out.unresolved = true;
            continue;
        }
        let Some(after_set) = word(statement, b"set") else {
            continue;
        };
        let mut next = after_set.trim_ascii_start();
        if let Some(rest) = word(next, b"session") {
            next = rest.trim_ascii_start();
        }
        if [
            &b"local"[..],
            b"transaction",
            b"constraints",
            b"characteristics",
        ]
        .iter()
        .any(|w| word(next, w).is_some())
        {
            continue;
        }
        match setting_name(next) {
            Some(name) => out.add(name),
            None => out.unresolved = true,
        }
    }
    let mut rest = sql;
    while let Some(at) = find_ignore_case(rest, b"set_config") {
        rest = &rest[at + b"set_config".len()..];
        let literal = rest
            .trim_ascii_start()
            .strip_prefix(b"(")
            .map(<[u8]>::trim_ascii_start)
            .and_then(string_literal);
        match literal {
            Some(name) => out.add(name.to_ascii_lowercase()),
            None => out.unresolved = true,
        }
    }
    out
}

/// A setting name as `SET` takes it: dot-separated parts, each an unquoted
/// identifier (folded to lower case) or a quoted one.
fn setting_name(s: &[u8]) -> Option<String> {
    let mut name = String::new();
    let mut rest = s;
    loop {
        if let Some(quoted) = rest.strip_prefix(b"\"") {
            let end = quoted.iter().position(|&b| b == b'"')?;
            if end == 0 || quoted.get(end + 1) == Some(&b'"') {
                return None; // empty, or with "" escapes: not worth following
            }
            if quoted[..end].iter().any(u8::is_ascii_control) {
                // Not a name PostgreSQL would take (the scanned text may
                // run past a statement's NUL into its parameter types),
                // and one pgmux must not echo into a query of its own.
                return None;
            }
            name.push_str(std::str::from_utf8(&quoted[..end]).ok()?);
            rest = &quoted[end + 1..];
        } else {
            let n = rest
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_' || **b == b'$')
                .count();
            if n == 0 {
                return None;
            }
            name.push_str(&String::from_utf8_lossy(&rest[..n]).to_ascii_lowercase());
            rest = &rest[n..];
        }
        match rest.strip_prefix(b".") {
            Some(more) => {
                name.push('.');
                rest = more;
            }
            None => return Some(name),
        }
    }
}

/// A plain `'…'` literal (with `''` escapes) at the start of `s` that is a
/// whole argument (a `,` follows it, not `||`).
fn string_literal(s: &[u8]) -> Option<String> {
    let mut body = s.strip_prefix(b"'")?;
    let mut out = Vec::new();
    loop {
        let end = body.iter().position(|&b| b == b'\'')?;
        out.extend_from_slice(&body[..end]);
        if body.get(end + 1) == Some(&b'\'') {
            out.push(b'\'');
            body = &body[end + 2..];
        } else {
            let whole_argument = body[end + 1..].trim_ascii_start().starts_with(b",");
            return String::from_utf8(out)
                .ok()
                .filter(|n| !n.is_empty() && whole_argument);
        }
    }
}

fn find_ignore_case(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

/// `s` without its leading keyword `w` (any case, then a space or the end).
fn word<'a>(s: &'a [u8], w: &[u8]) -> Option<&'a [u8]> {
    let head = s.get(..w.len())?;
    let rest = &s[w.len()..];
    let ends = rest
        .first()
        .is_none_or(|b| !(b.is_ascii_alphanumeric() || *b == b'_'));
    (head.eq_ignore_ascii_case(w) && ends).then_some(rest)
}

/// The `SET` command tag: a look only if the text had a session-level SET.
fn is_set_tag(tag: &[u8]) -> bool {
    tag.starts_with(b"SET\0")
}

/// Command tags (CommandComplete bodies) after which the session is looked
/// at: they set or drop state pgmux follows or pins on (`SET`: see
/// [`is_set_tag`]).
const TAG_HINTS: &[&[u8]] = &[
    b"RESET\0",
    b"DISCARD",
    b"LISTEN\0",
    b"UNLISTEN\0",
    b"DECLARE CURSOR\0",
    b"CLOSE CURSOR",
    b"PREPARE\0",
    b"DEALLOCATE",
    b"CREATE TABLE\0",
    b"DROP TABLE\0",
];

fn tag_hint(tag: &[u8]) -> bool {
    TAG_HINTS.iter().any(|hint| tag.starts_with(hint))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::state::pins::{inspect_sql, INSPECT_SQL};

    #[test]
    fn text_hints_find_their_words_in_any_case() {
        assert!(text_hint(b"SELECT pg_advisory_lock(42)"));
        assert!(text_hint(b"select PG_TRY_ADVISORY_LOCK($1)"));
        assert!(text_hint(b"CREATE TEMPORARY TABLE t AS SELECT 1"));
        assert!(text_hint(b"select * into temp t from x"));
        assert!(text_hint(b"select set_config('search_path', 'a', false)"));
        assert!(!text_hint(
            b"SELECT abalance FROM pgbench_accounts WHERE aid = $1"
        ));
        assert!(!text_hint(b"UPDATE t SET v = 1"));
        assert!(!text_hint(b"tem"));
        assert!(!text_hint(b""));
    }

    #[test]
    fn tags_that_call_for_a_look() {
        for tag in [
            &b"RESET\0"[..],
            b"DISCARD ALL\0",
            b"LISTEN\0",
            b"UNLISTEN\0",
            b"DECLARE CURSOR\0",
            b"CLOSE CURSOR ALL\0",
            b"PREPARE\0",
            b"DEALLOCATE ALL\0",
            b"CREATE TABLE\0",
        ] {
            assert!(tag_hint(tag), "{:?}", String::from_utf8_lossy(tag));
        }
        for tag in [
            &b"SELECT 1\0"[..],
            b"INSERT 0 1\0",
            b"UPDATE 3\0",
            b"SETX\0",
            b"COMMIT\0",
        ] {
            assert!(!tag_hint(tag), "{:?}", String::from_utf8_lossy(tag));
        }
    }

    #[test]
    fn only_a_set_that_may_outlive_the_transaction_counts() {
        for session in [
            &b"SET search_path = app"[..],
            b"set work_mem to '8MB'",
            b"BEGIN; SET LOCAL a.b = 1; SET statement_timeout = 5",
            b"  SET\nrole app",
            b"SET SESSION work_mem = 1",
            b"/* why */ SET LOCAL x = 1",
            b"-- note\nselect 1",
            b"select 'a;set x = 1'",
        ] {
            assert!(
                sets_session(session),
                "{:?}",
                String::from_utf8_lossy(session)
            );
        }
        for local in [
            &b"SET LOCAL app.user_id = '42'"[..],
            b"begin; set local role app; select 1; commit",
            b"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            b"set constraints all deferred",
            b"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            b"select settings from t",
            b"UPDATE t SET v = 1",
            b"",
        ] {
            assert!(!sets_session(local), "{:?}", String::from_utf8_lossy(local));
        }
    }

    #[test]
    fn a_watch_looks_after_a_session_set_but_not_after_set_local() {
        let mut local = Watch::of_text(b"SET LOCAL app.user_id = '1'");
        local.note_tag(b"SET\0");
        assert!(!local.calls_for_look());
        let mut session = Watch::default();
        session.merge(&Watch::of_text(b"SET app.user_id = '1'"));
        assert!(
            !session.calls_for_look(),
            "not before the server confirms it"
        );
        session.note_tag(b"SET\0");
        assert!(session.calls_for_look());
        assert_eq!(session.custom_names(), ["app.user_id"]);
        let mut discard = Watch::default();
        discard.note_tag(b"DISCARD ALL\0");
        assert!(discard.calls_for_look() && discard.discarded_all());
        assert!(Watch::of_text(b"select set_config($1, $2, false)").untracked_setting());
        assert_eq!(
            Watch::of_text(b"select abalance from a where aid = $1"),
            Watch::default()
        );
    }

    #[test]
    fn a_quoted_name_with_control_bytes_is_not_followed() {
        // A Parse's text runs on past its NUL into the parameter types.
        let found = custom_settings(b"select 1; set \"a.b\0\" = 'x'");
        assert!(
            found.names.iter().all(|n| !n.contains('\0')),
            "{:?}",
            found.names
        );
        let watch = Watch::of_text(b"select pg_advisory_lock(1); set \"a.b\0\" = 'x'");
        assert!(!format!("{watch:?}").contains("\\0"), "{watch:?}");
    }

    #[test]
    fn setting_default_transaction_read_only_pins() {
        assert!(Watch::of_text(b"SET default_transaction_read_only = on").untracked_setting());
        assert!(
            Watch::of_text(b"select set_config('default_transaction_read_only', 'on', false)")
                .untracked_setting()
        );
        assert!(!Watch::of_text(b"SET work_mem = '8MB'").untracked_setting());
    }

    #[test]
    fn custom_settings_are_found_by_name() {
        let found = custom_settings(b"SET app.user_id = '42'; set session My.\"Tenant\" to 'x'");
        assert_eq!(found.names, ["app.user_id", "my.Tenant"]);
        assert!(!found.unresolved);
        let found = custom_settings(
            b"select set_config( 'App.Role', $1, false), set_config('plain', 'x', false)",
        );
        assert_eq!(
            (found.names, found.unresolved),
            (vec!["app.role".to_string()], false)
        );
        assert_eq!(
            custom_settings(b"SET LOCAL app.user_id = 1; SET work_mem = 1"),
            CustomSettings::default()
        );
        assert_eq!(custom_settings(b"select 1"), CustomSettings::default());
        // What pgmux cannot read it does not guess: the client gets pinned.
        for unreadable in [
            &b"/* svc */ SET app.user_id = 42"[..],
            b"select set_config($1, $2, false)",
            b"select set_config('app.' || $1, 'x', false)",
        ] {
            let found = custom_settings(unreadable);
            assert!(
                found.unresolved,
                "{:?}",
                String::from_utf8_lossy(unreadable)
            );
        }
        let sql = inspect_sql(&["app.o'x".to_string()]);
        assert!(sql.contains("ARRAY['app.o''x']"), "{sql}");
        assert_eq!(inspect_sql(&[]), INSPECT_SQL);
    }
}
