//! The two statements pgmux looks inside.
//!
//! `DROP DATABASE name`: PostgreSQL refuses it while other sessions use that
//! database, and pgmux's idle servers count as such sessions, so they are
//! closed before it is sent (Django's test runner drops its `test_<name>`
//! database this way).
//!
//! Reserved statement names: in transaction mode the servers' prepared
//! statements are pgmux's, named `pgmux_…`, and shared by every client of
//! the pool; SQL that deallocates, prepares or executes such a name is
//! refused wherever it appears in a query.
//!
//! `DEALLOCATE name`: in transaction mode a client's protocol-level statement
//! names exist only in pgmux (servers know them by pgmux's names), so pgmux
//! answers a DEALLOCATE of one itself, as a direct connection would
//! (psycopg deallocates statements it evicts this way).

/// The database a statement drops, if it is a `DROP DATABASE`.
pub fn dropped_database(sql: &[u8]) -> Option<String> {
    let mut rest = skip_space(sql);
    rest = keyword(rest, b"drop")?;
    rest = keyword(rest, b"database")?;
    if let Some(after) = keyword(rest, b"if").and_then(|r| keyword(r, b"exists")) {
        rest = after;
    }
    identifier(rest).map(|(name, _)| name)
}

/// The statement name of a Query that is exactly `DEALLOCATE [PREPARE] name`
/// (one statement, `;` optional); not `DEALLOCATE ALL`, which the server runs.
pub fn deallocated_statement(sql: &[u8]) -> Option<String> {
    let mut rest = skip_space(sql);
    rest = keyword(rest, b"deallocate")?;
    if let Some(after) = keyword(rest, b"prepare") {
        rest = after;
    }
    let (name, rest) = identifier(rest)?;
    let rest = skip_space(rest);
    let rest = rest.strip_prefix(b";").map(skip_space).unwrap_or(rest);
    let rest = rest.strip_suffix(b"\0").unwrap_or(rest);
    let unquoted_all = name == "all" && !sql.contains(&b'"');
    (rest.is_empty() && !unquoted_all).then_some(name)
}

/// The prefix of the statement names pgmux gives its servers' statements.
pub const RESERVED_PREFIX: &str = "pgmux_";

/// Where `sql` deallocates, prepares or executes a statement whose name
/// is reserved for pgmux (`pgmux_…`), anywhere in the text (a string
/// literal or a comment counts: better refused than a pool's statements
/// lost): the SQLSTATE to refuse it with and the name.
pub fn reserved_statement_use(sql: &[u8]) -> Option<(&'static str, String)> {
    find_ignore_case(sql, RESERVED_PREFIX.as_bytes())?;
    let mut at = 0;
    while at < sql.len() {
        let word_start = at == 0 || !is_ident(sql[at - 1]);
        if !word_start || !sql[at].is_ascii_alphabetic() {
            at += 1;
            continue;
        }
        let rest = &sql[at..];
        let found = if let Some(after) = keyword(rest, b"deallocate") {
            let after = keyword(after, b"prepare").unwrap_or(after);
            reserved_name(after).map(|name| ("26000", name))
        } else if let Some(after) = keyword(rest, b"prepare") {
            reserved_name(after).map(|name| ("42P05", name))
        } else if let Some(after) = keyword(rest, b"execute") {
            reserved_name(after).map(|name| ("26000", name))
        } else {
            None
        };
        if found.is_some() {
            return found;
        }
        at += 1;
    }
    None
}

/// The identifier at the start of `s`, if it is a reserved name.
fn reserved_name(s: &[u8]) -> Option<String> {
    let (name, _) = identifier(s)?;
    name.starts_with(RESERVED_PREFIX).then_some(name)
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Whether `sql` may drop every prepared statement of the session
/// (`DEALLOCATE [PREPARE] ALL`, `DISCARD ALL`): a cautious look, which may
/// say yes to a mere mention in a string or a comment.
pub fn may_forget_statements(sql: &[u8]) -> bool {
    let mut rest = sql;
    while let Some(at) = find_ignore_case(rest, b"deallocate") {
        rest = skip_space(&rest[at + b"deallocate".len()..]);
        if let Some(after) = keyword(rest, b"prepare") {
            rest = after;
        }
        let word_end = rest
            .get(3)
            .is_none_or(|b| !(b.is_ascii_alphanumeric() || *b == b'_'));
        if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"all") && word_end {
            return true;
        }
    }
    find_ignore_case(sql, b"discard").is_some()
}

fn find_ignore_case(s: &[u8], word: &[u8]) -> Option<usize> {
    s.windows(word.len())
        .position(|w| w.eq_ignore_ascii_case(word))
}

fn skip_space(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &s[n..]
}

/// `word` (any case) followed by a space or the end, then any spaces.
fn keyword<'a>(s: &'a [u8], word: &[u8]) -> Option<&'a [u8]> {
    let head = s.get(..word.len())?;
    if !head.eq_ignore_ascii_case(word) {
        return None;
    }
    let rest = &s[word.len()..];
    match rest.first() {
        Some(b) if b.is_ascii_whitespace() => Some(skip_space(rest)),
        Some(b'"')
            if matches!(
                word,
                b"database" | b"exists" | b"deallocate" | b"prepare" | b"execute"
            ) =>
        {
            Some(rest)
        }
        _ => None,
    }
}

/// A quoted identifier (with `""` escapes) as written, or an unquoted one
/// folded to lower case as PostgreSQL does; and what follows it.
fn identifier(s: &[u8]) -> Option<(String, &[u8])> {
    if let Some(quoted) = s.strip_prefix(b"\"") {
        let mut out = Vec::new();
        let mut i = 0;
        while i < quoted.len() {
            match (quoted[i], quoted.get(i + 1)) {
                (b'"', Some(b'"')) => {
                    out.push(b'"');
                    i += 2;
                }
                (b'"', _) => {
                    let name = String::from_utf8(out).ok().filter(|n| !n.is_empty())?;
                    return Some((name, &quoted[i + 1..]));
                }
                (b, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        return None;
    }
    let n = s
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_' || **b == b'$' || **b >= 0x80)
        .count();
    (n > 0).then(|| (String::from_utf8_lossy(&s[..n]).to_lowercase(), &s[n..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_dropped_database() {
        assert_eq!(
            dropped_database(b"DROP DATABASE test_booktrader"),
            Some("test_booktrader".into())
        );
        assert_eq!(
            dropped_database(b"  drop  database  if  exists Shop;"),
            Some("shop".into())
        );
        assert_eq!(
            dropped_database(b"DROP DATABASE \"My \"\"Shop\"\"\""),
            Some("My \"Shop\"".into())
        );
        assert_eq!(
            dropped_database(b"DROP DATABASE IF EXISTS \"x\" WITH (FORCE)"),
            Some("x".into())
        );
    }

    #[test]
    fn finds_a_single_deallocate() {
        assert_eq!(
            deallocated_statement(b"DEALLOCATE _pg3_0"),
            Some("_pg3_0".into())
        );
        assert_eq!(
            deallocated_statement(b" deallocate prepare S1 ;\0"),
            Some("s1".into())
        );
        assert_eq!(
            deallocated_statement(b"DEALLOCATE \"My \"\"S\"\"\""),
            Some("My \"S\"".into())
        );
        assert_eq!(
            deallocated_statement(b"DEALLOCATE \"all\""),
            Some("all".into())
        );
        assert_eq!(deallocated_statement(b"DEALLOCATE ALL"), None);
        assert_eq!(deallocated_statement(b"DEALLOCATE PREPARE ALL;"), None);
        assert_eq!(deallocated_statement(b"DEALLOCATE a; DEALLOCATE b"), None);
        assert_eq!(deallocated_statement(b"DEALLOCATE"), None);
        assert_eq!(deallocated_statement(b"select 'DEALLOCATE a'"), None);
    }

    #[test]
    fn finds_reserved_names_anywhere_in_a_query() {
        for (sql, code) in [
            (&b"select 1; deallocate pgmux_0"[..], "26000"),
            (b"DEALLOCATE PREPARE \"pgmux_12\"", "26000"),
            (b"do $$ begin execute 'DEALLOCATE pgmux_3'; end $$", "26000"),
            (b"PREPARE pgmux_7 AS select 1", "42P05"),
            (b"/* x */ EXECUTE pgmux_1(2)", "26000"),
        ] {
            assert_eq!(
                reserved_statement_use(sql).map(|r| r.0),
                Some(code),
                "{sql:?}"
            );
        }
        for sql in [
            &b"select * from pgmux_stats"[..],
            b"deallocate s1; select 'pgmux_0'",
            b"prepare transaction 'pgmux_1'",
            b"select undeallocate pgmux_1",
            b"DEALLOCATE \"PGMUX_1\"",
        ] {
            assert_eq!(reserved_statement_use(sql), None, "{sql:?}");
        }
    }

    #[test]
    fn finds_what_may_drop_every_statement() {
        assert!(may_forget_statements(b"DEALLOCATE ALL"));
        assert!(may_forget_statements(b"select 1; deallocate prepare all"));
        assert!(may_forget_statements(b"DISCARD ALL"));
        assert!(!may_forget_statements(b"DEALLOCATE s1"));
        assert!(!may_forget_statements(b"DEALLOCATE allowed_stmt"));
        assert!(!may_forget_statements(b"select 1"));
    }

    #[test]
    fn ignores_everything_else() {
        assert_eq!(dropped_database(b"DROP TABLE database"), None);
        assert_eq!(dropped_database(b"select 'DROP DATABASE x'"), None);
        assert_eq!(dropped_database(b"DROPDATABASE x"), None);
        assert_eq!(dropped_database(b"DROP DATABASE \"unterminated"), None);
        assert_eq!(dropped_database(b""), None);
    }
}
