//! The statement-text scanners: what pgmux reads inside a client's SQL
//! (session state, `DROP DATABASE`, `DEALLOCATE`, reserved names), inside
//! the server's answers (command tags, the inspection's rows), and the SQL
//! it writes itself from names and values (aligning settings).

use crate::params::set_statements;
use crate::session::state::ddl::{
    deallocated_statement, dropped_database, may_forget_statements, reserved_statement_use,
    RESERVED_PREFIX,
};
use crate::session::state::pins::{inspect_sql, Inspection};
use crate::session::state::watch::Watch;
use crate::session::state::words::Words;

use super::Input;

/// Words the one-pass scan gates each precise check on (see
/// `session::state::words`): the client flow runs a check only when its
/// word is in, so a check that finds something must find its word too.
const SET_OR_COMMENT: &[u8] = b"set --";

/// Asserts, on any text: every precise check that finds something also
/// has its gating word found by the one-pass scan (else the flow would
/// skip it); what the checks return is well formed (a DEALLOCATE's name is
/// never an unquoted `all`, a reserved name starts with `pgmux_`, custom
/// setting names are dotted); the custom names a watch keeps stay within
/// its bound however many texts it merges; and the inspection reader and
/// query builder take any rows and names.
pub fn sql_scan(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let sql = input.rest();
    let words = Words::of(sql);

    if let Some(name) = dropped_database(sql) {
        assert!(words.any(Words::DROP) && !name.is_empty());
    }
    if let Some(name) = deallocated_statement(sql) {
        assert!(words.any(Words::DEALLOCATE) && !name.is_empty());
        assert!(name != "all" || sql.contains(&b'"'));
    }
    if let Some((code, name)) = reserved_statement_use(sql) {
        assert!(words.any(Words::PGMUX) && name.starts_with(RESERVED_PREFIX));
        assert!(words.any(Words::DEALLOCATE | Words::PREPARE | Words::EXECUTE));
        assert!(code == "26000" || code == "42P05");
    }
    if may_forget_statements(sql) {
        assert!(words.any(Words::DEALLOCATE | Words::DISCARD));
    }

    // A session-level SET found without the scan's help (every gate open
    // but the hint words') must have been found with it.
    let mut ungated = Watch::of_text_with(sql, Words::of(SET_OR_COMMENT));
    ungated.note_tag(b"SET\0");
    if ungated.calls_for_look() {
        assert!(words.any(Words::SET | Words::COMMENT));
    }

    let watch = Watch::of_text(sql);
    for name in watch.custom_names() {
        assert!(name.contains('.'), "{name:?} is not a custom setting");
    }
    // Texts merge into one watch per transaction: its names stay bounded.
    let mut merged = Watch::default();
    for piece in sql.split(|&b| b == b'\n').take(usize::from(mode) + 1) {
        merged.note_text(piece);
        merged.merge(&watch);
        merged.note_tag(piece);
    }
    assert!(merged.custom_names().len() <= 64);

    // The inspection's answer, and its query for the names found.
    let rows: Vec<&[u8]> = sql.split(|&b| b == 0xfe).collect();
    let inspection = Inspection::from_rows(rows.iter().copied());
    assert!(inspection.settings.len() <= rows.len());
    // Every name found is asked for by name, quoted.
    let query = inspect_sql(merged.custom_names());
    assert!(query.len() >= merged.custom_names().iter().map(String::len).sum::<usize>());

    settings_sql(sql);
}

/// The statement that brings a server's settings in line with a client's
/// must read back as exactly the names and values it was built from,
/// whatever they hold: no quote or backslash breaks out of its literal.
fn settings_sql(sql: &[u8]) {
    let text = String::from_utf8_lossy(sql).replace('\0', "");
    let mut parts = text.split('\u{1}');
    let resets: Vec<&str> = parts.next().unwrap_or_default().split('\u{2}').collect();
    let settings: Vec<(&str, &str)> = parts
        .map(|p| p.split_once('\u{2}').unwrap_or((p, "")))
        .collect();
    let built = set_statements(&settings, &resets);
    let mut lexer = Lexer { rest: &built };
    for name in &resets {
        lexer.expect("RESET ");
        assert_eq!(lexer.ident(), *name, "{built:?}");
        lexer.expect(";");
    }
    for (i, (name, value)) in settings.iter().enumerate() {
        lexer.expect(if i == 0 { "SELECT " } else { ", " });
        lexer.expect("pg_catalog.set_config(");
        assert_eq!(lexer.literal(), *name, "{built:?}");
        lexer.expect(", ");
        assert_eq!(lexer.literal(), *value, "{built:?}");
        lexer.expect(", false)");
    }
    if !settings.is_empty() {
        lexer.expect(";");
    }
    assert!(lexer.rest.is_empty(), "{built:?} has more");
}

/// Reads back quoted identifiers and string literals as PostgreSQL does.
struct Lexer<'a> {
    rest: &'a str,
}

impl Lexer<'_> {
    fn expect(&mut self, token: &str) {
        match self.rest.strip_prefix(token) {
            Some(rest) => self.rest = rest,
            None => panic!("expected {token:?} at {:?}", self.rest),
        }
    }

    /// `"…"` with `""` for a quote.
    fn ident(&mut self) -> String {
        self.expect("\"");
        let mut out = String::new();
        let mut chars = self.rest.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if self.rest[i + 1..].starts_with('"') {
                    out.push('"');
                    chars.next();
                } else {
                    self.rest = &self.rest[i + 1..];
                    return out;
                }
            } else {
                out.push(c);
            }
        }
        panic!("unterminated identifier");
    }

    /// `'…'` with `''` for a quote; `E'…'` also with `\\` and `\'`. A plain
    /// literal must hold no backslash (its meaning would then depend on
    /// `standard_conforming_strings`).
    fn literal(&mut self) -> String {
        let escapes = self.rest.starts_with('E');
        if escapes {
            self.expect("E");
        }
        self.expect("'");
        let mut out = String::new();
        let mut chars = self.rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\'' if self.rest[i + 1..].starts_with('\'') => {
                    out.push('\'');
                    chars.next();
                }
                '\'' => {
                    self.rest = &self.rest[i + 1..];
                    return out;
                }
                '\\' => {
                    assert!(escapes, "a backslash in a plain literal");
                    match chars.next() {
                        Some((_, e @ ('\\' | '\''))) => out.push(e),
                        other => panic!("escape {other:?} in a literal"),
                    }
                }
                c => out.push(c),
            }
        }
        panic!("unterminated literal");
    }
}
