//! The admin console: a virtual database named `pgbouncer` (or `pgmux`)
//! that speaks the simple query protocol, with PgBouncer's commands and
//! output, so its operators' tools and habits carry over.

pub mod command;
mod commands;

use std::sync::Arc;

use crate::io::Stream as TcpStream;
use bytes::{Buf, BytesMut};
use pgmux_wire::frame::take_frame;
use pgmux_wire::reply::{self, Severity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use command::Role;
use command::{AdminError, Arg, Command, Ctx};

use crate::config::Config;
use crate::session::Shared;

/// Console queries are short; a bigger message is refused.
const MAX_CONSOLE_MESSAGE: usize = 64 * 1024;

pub fn is_console(database: &str) -> bool {
    database == "pgbouncer" || database == "pgmux"
}

impl Role {
    /// The user's role at the console, if any.
    pub fn of(config: &Config, user: &str) -> Option<Role> {
        if config.admin_users.iter().any(|u| u == user) {
            Some(Role::Admin)
        } else if config.stats_users.iter().any(|u| u == user) {
            Some(Role::Stats)
        } else {
            None
        }
    }
}

pub struct AdminSession {
    pub user: String,
    pub role: Role,
}

/// AuthenticationOk and the parameters a console client sees (those a
/// libpq driver needs; DateStyle ISO keeps psycopg2 from sending a SET).
pub fn greeting(out: &mut BytesMut) {
    reply::auth_ok(out);
    for (name, value) in [
        ("server_version", "1.18.0/pgmux"),
        ("client_encoding", "UTF8"),
        ("server_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("TimeZone", "GMT"),
        ("standard_conforming_strings", "on"),
        ("integer_datetimes", "on"),
        ("is_superuser", "on"),
    ] {
        reply::parameter_status(out, name, value);
    }
    reply::backend_key_data(out, rand::random::<u32>() & 0x7fff_ffff, rand::random());
    reply::ready_for_query(out, b'I');
}

/// Serve console queries until the client leaves or pgmux stops.
/// `pending`: what the client sent past its login, if anything.
pub async fn run(
    mut stream: TcpStream,
    session: AdminSession,
    shared: Arc<Shared>,
    pending: BytesMut,
) {
    let ctx = Ctx {
        pools: shared.pools.clone(),
    };
    let lifecycle = shared.pools.lifecycle.clone();
    drop(shared);
    let mut buf = pending;
    buf.reserve(1024);
    loop {
        let frame = match take_frame(&mut buf, MAX_CONSOLE_MESSAGE) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                tokio::select! {
                    read = stream.read_buf(&mut buf) => match read {
                        Ok(0) | Err(_) => return,
                        Ok(_) => continue,
                    },
                    _ = lifecycle.drain_started() => {
                        close(&mut stream, "57P01", "terminating connection: the pgmux proxy is shutting down").await;
                        return;
                    }
                }
            }
            Err(e) => {
                close(&mut stream, "08P01", &format!("invalid message: {e}")).await;
                return;
            }
        };
        match frame.tag {
            b'Q' => {
                let mut body = frame.body;
                let text = body
                    .split(|&b| b == 0)
                    .next()
                    .map(|t| String::from_utf8_lossy(t).into_owned())
                    .unwrap_or_default();
                body.advance(body.len());
                let mut out = answer(&ctx, session.role, &text).await;
                reply::ready_for_query(&mut out, b'I');
                if stream.write_all(&out).await.is_err() {
                    return;
                }
                tracing::debug!(user = %session.user, command = %text, "admin console command");
            }
            b'X' => return,
            other => {
                let message = format!(
                    "the pgmux admin console speaks only the simple query protocol (got message {:?})",
                    other as char
                );
                close(&mut stream, "08P01", &message).await;
                return;
            }
        }
    }
}

async fn close(stream: &mut TcpStream, code: &str, message: &str) {
    crate::session::refuse(stream, code, message).await;
}

/// Run one query's text: the reply, or an ERROR (the session goes on).
async fn answer(ctx: &Ctx, role: Role, text: &str) -> BytesMut {
    let result = match parse(text) {
        Some((command, _)) if command.admin_only() && role != Role::Admin => {
            Err(AdminError("admin access needed".into()))
        }
        Some((command, database)) => command.run(ctx, database.as_deref()).await,
        None => Err(AdminError(format!(
            "invalid command '{text}', use SHOW HELP;"
        ))),
    };
    result.unwrap_or_else(|e| {
        let mut out = BytesMut::new();
        reply::error(&mut out, Severity::Error, "08P01", &e.0);
        out
    })
}

/// Find the command `text` names and its database argument. Words are
/// case-insensitive; one trailing `;` is allowed; a database name may be
/// double-quoted.
pub(crate) fn parse(text: &str) -> Option<(&'static dyn Command, Option<String>)> {
    let text = text.trim();
    let text = text.strip_suffix(';').unwrap_or(text).trim_end();
    let words: Vec<&str> = text.split_whitespace().collect();
    for command in commands::ALL {
        let name: Vec<&str> = command.name().split(' ').collect();
        if words.len() < name.len()
            || !name
                .iter()
                .zip(&words)
                .all(|(n, w)| n.eq_ignore_ascii_case(w))
        {
            continue;
        }
        let rest = &words[name.len()..];
        let database = match (command.arg(), rest) {
            (_, []) if command.arg() != Arg::Database => None,
            (Arg::OptionalDatabase | Arg::Database, [db]) => Some(unquote(db)?),
            _ => return None,
        };
        return Some((*command, database));
    }
    None
}

fn unquote(word: &str) -> Option<String> {
    match word.strip_prefix('"') {
        Some(rest) => rest
            .strip_suffix('"')
            .filter(|inner| !inner.is_empty())
            .map(|inner| inner.replace("\"\"", "\"")),
        None if !word.contains(['\'', '"']) => Some(word.to_string()),
        None => None,
    }
}

pub use commands::VERSION;

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Option<(&'static str, Option<String>)> {
        parse(text).map(|(c, db)| (c.name(), db))
    }

    #[test]
    fn commands_parse_like_pgbouncers() {
        assert_eq!(parsed("SHOW POOLS"), Some(("SHOW POOLS", None)));
        assert_eq!(parsed("show pools;"), Some(("SHOW POOLS", None)));
        assert_eq!(
            parsed("  Show Stats_Totals ; "),
            Some(("SHOW STATS_TOTALS", None))
        );
        assert_eq!(parsed("PAUSE"), Some(("PAUSE", None)));
        assert_eq!(parsed("PAUSE app;"), Some(("PAUSE", Some("app".into()))));
        assert_eq!(
            parsed("RESUME \"My Db\""),
            None,
            "a quoted name is one word"
        );
        assert_eq!(
            parsed("RESUME \"my\"\"db\""),
            Some(("RESUME", Some("my\"db".into())))
        );
        assert_eq!(parsed("KILL app"), Some(("KILL", Some("app".into()))));
        // A required database is required; extra words are errors.
        assert_eq!(parsed("KILL"), None);
        assert_eq!(parsed("DISABLE"), None);
        assert_eq!(parsed("SHOW POOLS extra"), None);
        assert_eq!(parsed("RELOAD now"), None);
        assert_eq!(parsed("PAUSE 'app'"), None);
        assert_eq!(parsed("SELECT 1"), None);
        assert_eq!(parsed(""), None);
        assert_eq!(parsed("SHOW"), None);
    }

    #[test]
    fn only_show_commands_are_open_to_stats_users() {
        for command in commands::ALL {
            let is_show = command.name().starts_with("SHOW ");
            assert_eq!(command.admin_only(), !is_show, "{}", command.name());
        }
    }
}
