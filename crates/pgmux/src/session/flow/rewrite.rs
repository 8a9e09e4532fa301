//! Statement names in transaction mode: the client's Parse, Bind, Describe
//! and Close are rewritten to pgmux's pool-wide names ([`crate::prepared`]),
//! with a Parse injected where a server lacks the statement, stale or
//! evicted ones closed first, and the errors PostgreSQL would give (42P05,
//! 26000) raised by the server itself in the client's name.

use bytes::{BufMut, BytesMut};
use pgmux_wire::frame::{write_message, HEADER_LEN};

use super::client_flow::ClientFlowError;
use super::expect::{Expect, Pending};
use super::splice::Splice;
use crate::prepared::{server_name, ClientStatements, ServerStatements, Statement, StatementCache};
use crate::session::state::ddl::{deallocated_statement, reserved_statement_use, RESERVED_PREFIX};
use crate::session::state::watch::Watch;
use crate::session::state::words::Words;

/// The statement name pgmux parses a client's text under to see whether
/// it parses (and closes again at once).
const CHECK_NAME: &[u8] = b"pgmux_check";

/// Names at the head of a message (and whole Describe/Close) must fit in this.
pub(super) const HEAD_LIMIT: usize = 64 * 1024;

/// The statement maps in play when names are rewritten.
pub struct Statements<'a> {
    pub cache: &'a StatementCache,
    pub client: &'a mut ClientStatements,
    pub server: &'a mut ServerStatements,
    /// `max_prepared_statements`: the server's LRU capacity.
    pub capacity: usize,
    /// `max_client_prepared_bytes`: the client's budget of names.
    pub client_budget: usize,
    /// The client keeps this server (pinned): a name pgmux does not know
    /// may be one the client made with SQL `PREPARE`, so it passes through.
    pub pinned: bool,
    /// The server's transaction status at its last ReadyForQuery.
    pub server_status: u8,
}

/// One whole message in the client's input: `input[start..end]`.
#[derive(Clone, Copy)]
pub(super) struct Message<'a> {
    pub input: &'a [u8],
    pub start: usize,
    pub end: usize,
    /// The words of its statement text (Query, Parse), read once.
    pub words: Words,
}

impl<'a> Message<'a> {
    pub(super) fn body(&self) -> &'a [u8] {
        &self.input[self.start + HEADER_LEN..self.end]
    }
}

/// A simple Query as transaction mode needs it. One that deallocates,
/// prepares or executes a name reserved for pgmux's shared statements is
/// refused (the pool's statements must keep working for everyone); one
/// that is exactly `DEALLOCATE name` of the client's own name is answered
/// in the client's name. Returns whether the Query was handled.
pub(super) fn rewrite_query(
    sql: &[u8],
    message: Message<'_>,
    expect: &mut Expect,
    st: &mut Statements<'_>,
    splice: &mut Splice,
) -> bool {
    let Message {
        input,
        start,
        end,
        words,
    } = message;
    let reserved = words
        .any(Words::PGMUX)
        .then(|| reserved_statement_use(sql))
        .flatten();
    if let Some((code, name)) = reserved {
        // A query that fails at the parser stands in for it; its error is
        // replaced by this one on the way back.
        splice.replace(input, start, end, REFUSED_QUERY);
        expect.push_refusal(code, &reserved_message(code, &name));
        return true;
    }
    if !words.any(Words::DEALLOCATE) {
        return false;
    }
    let Some(name) = deallocated_statement(sql) else {
        return false;
    };
    let Some(binding) = st.client.close(name.as_bytes()) else {
        return false;
    };
    // The server gets an empty query in its place: a simple Query ends an
    // implicit transaction, drops the unnamed statement and its portals,
    // and that must still happen (see `Pending::Deallocated`).
    expect.push(Pending::Deallocated(binding));
    splice.replace(input, start, end, b"Q\0\0\0\x05\0");
    true
}

/// A simple Query that fails at the parser, in any transaction state.
const REFUSED_QUERY: &[u8] = b"Q\0\0\0\x1dpgmux refuses this query\0";

/// What a client is told when its SQL uses a reserved statement name.
fn reserved_message(code: &str, name: &str) -> String {
    let what = if code == "42P05" {
        "already exists"
    } else {
        "does not exist"
    };
    format!(
        "prepared statement \"{name}\" {what} (names starting with {RESERVED_PREFIX} are reserved for the pgmux pooler's shared statements)"
    )
}

/// Have the server parse a client's statement text under a scratch name
/// and close it again: its answer (ParseComplete, or the error PostgreSQL
/// gives that text in this transaction) is the client's unless `swallow`.
fn check_parse(definition: &[u8], swallow: bool, expect: &mut Expect, out: &mut BytesMut) {
    write_message(out, b'P', |b| {
        b.put_slice(CHECK_NAME);
        b.put_u8(0);
        b.put_slice(definition);
    });
    expect.push(Pending::Parse { swallow, id: None });
    write_message(out, b'C', |b| {
        b.put_u8(b'S');
        b.put_slice(CHECK_NAME);
        b.put_u8(0);
    });
    expect.push(Pending::Close {
        swallow: true,
        injected: None,
    });
}

fn cstr(body: &[u8], tag: u8) -> Result<(&[u8], &[u8]), ClientFlowError> {
    let end = body
        .iter()
        .position(|&b| b == 0)
        .ok_or(ClientFlowError::Malformed(tag as char))?;
    Ok((&body[..end], &body[end + 1..]))
}

/// Make sure the server has `s`, injecting a Parse (and an eviction Close)
/// into `out` if not.
fn ensure_prepared(
    s: &Statement,
    server: &mut ServerStatements,
    capacity: usize,
    expect: &mut Expect,
    out: &mut BytesMut,
) {
    if server.contains(s.id) {
        return;
    }
    close_stale(server, expect, out);
    if let Some(victim) = server.add(s, capacity) {
        close_injected(victim, expect, out);
    }
    s.parse_message(out);
    expect.push(Pending::Parse {
        swallow: true,
        id: Some(s.id),
    });
}

/// Close the server's stale statements (a schema change broke them) into
/// `out`: a Parse of the same server name would otherwise be refused.
pub(super) fn close_stale(server: &mut ServerStatements, expect: &mut Expect, out: &mut BytesMut) {
    for id in server.take_closing() {
        close_injected(id, expect, out);
    }
}

/// A Close of statement `id` that pgmux sends itself; its reply is dropped.
fn close_injected(id: u64, expect: &mut Expect, out: &mut BytesMut) {
    Statement::close_message(&server_name(id), out);
    expect.push(Pending::Close {
        swallow: true,
        injected: Some(id),
    });
}

/// Have the server fail in place of a client message, as PostgreSQL would
/// fail that message with `code` and `message`. pgmux injects a Parse of a
/// named statement whose text does not parse: it fails in any transaction
/// state, creates nothing, and leaves the client's unnamed statement alone
/// (a failed unnamed Parse would drop it). The server then skips to Sync
/// exactly as for the message's own error, and its syntax error is replaced
/// by `code`/`message` on the way back (see [`Expect::raise_at_front`]).
pub(in crate::session) fn raise(
    code: &'static str,
    message: &str,
    expect: &mut Expect,
    out: &mut BytesMut,
) {
    write_message(out, b'P', |b| {
        b.put_slice(b"pgmux_raise\0pgmux: fail here in the client's name\0");
        b.put_i16(0);
    });
    expect.push_raise(code, message);
}

fn statement_name(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// Handle a whole Parse, Bind, Describe or Close when names are rewritten;
/// what the statement may leave in the session goes to `watch`.
pub(super) fn rewrite(
    tag: u8,
    message: Message<'_>,
    expect: &mut Expect,
    st: &mut Statements<'_>,
    splice: &mut Splice,
    watch: &mut Watch,
) -> Result<(), ClientFlowError> {
    let Message {
        input, start, end, ..
    } = message;
    let body = message.body();
    let mut out = BytesMut::new();
    match tag {
        b'P' => {
            let (name, definition) = cstr(body, tag)?;
            let text = definition.split(|&b| b == 0).next().unwrap_or_default();
            let reserved = message
                .words
                .any(Words::PGMUX)
                .then(|| reserved_statement_use(text))
                .flatten();
            if let Some((code, reserved)) = reserved {
                raise(code, &reserved_message(code, &reserved), expect, &mut out);
                splice.replace(input, start, end, &out);
                return Ok(());
            }
            if name.is_empty() {
                expect.push(Pending::Parse {
                    swallow: false,
                    id: None,
                });
                return Ok(());
            }
            if st.client.get(name).is_some() {
                // PostgreSQL parses and analyses the text before it finds
                // the name taken: a text that fails fails with its own
                // error. So the text is checked first; only if that worked
                // is 42P05 raised.
                check_parse(definition, true, expect, &mut out);
                let message = format!(
                    "prepared statement \"{}\" already exists",
                    statement_name(name)
                );
                raise("42P05", &message, expect, &mut out);
                splice.replace(input, start, end, &out);
                return Ok(());
            }
            let s = st.cache.intern(definition);
            watch.merge(&s.watch);
            let binding = st.client.insert(name, s.clone(), st.client_budget);
            if st.server.contains(s.id) {
                if st.server_status != b'E' && !expect.closed_request_pending() {
                    // Already there, as far as pgmux knows: prepared again
                    // all the same (closed first), so that a Describe or
                    // Bind after it cannot meet a statement that SQL
                    // deallocated behind pgmux's back (issue 12). A
                    // client's Parse costs the server what it would cost
                    // without pgmux; executions of shared statements stay
                    // free.
                    close_injected(s.id, expect, &mut out);
                    s.parse_message(&mut out);
                    expect.push(Pending::Parse {
                        swallow: false,
                        id: Some(s.id),
                    });
                } else {
                    // The transaction may have failed, and PostgreSQL then
                    // refuses the Parse: let the server say.
                    check_parse(definition, false, expect, &mut out);
                }
            } else {
                close_stale(st.server, expect, &mut out);
                if let Some(victim) = st.server.add(&s, st.capacity) {
                    close_injected(victim, expect, &mut out);
                }
                s.parse_message(&mut out);
                expect.push(Pending::Parse {
                    swallow: false,
                    id: Some(s.id),
                });
            }
            expect.push(Pending::NameBound(binding));
        }
        b'B' => {
            let (portal, rest) = cstr(body, tag)?;
            let (name, params) = cstr(rest, tag)?;
            if name.is_empty() {
                expect.push(Pending::Bind { id: None });
                return Ok(());
            }
            // Borrowed, not cloned: this is every prepared execution.
            let Some(s) = st.client.use_statement(name) else {
                unknown_name(name, Pending::Bind { id: None }, st, expect, &mut out);
                if !out.is_empty() {
                    splice.replace(input, start, end, &out);
                }
                return Ok(());
            };
            watch.merge(&s.watch);
            ensure_prepared(s, st.server, st.capacity, expect, &mut out);
            write_message(&mut out, b'B', |b| {
                b.put_slice(portal);
                b.put_u8(0);
                b.put_slice(s.server_name.as_bytes());
                b.put_u8(0);
                b.put_slice(params);
            });
            expect.push(Pending::Bind { id: Some(s.id) });
        }
        b'D' | b'C' => {
            let (&kind, rest) = body
                .split_first()
                .ok_or(ClientFlowError::Malformed(tag as char))?;
            let (name, _) = cstr(rest, tag)?;
            let named_statement = kind == b'S' && !name.is_empty();
            if !named_statement {
                expect.push(if tag == b'D' {
                    Pending::Describe { id: None }
                } else {
                    Pending::Close {
                        swallow: false,
                        injected: None,
                    }
                });
                return Ok(());
            }
            if tag == b'C' {
                let closed = st.client.close(name);
                if closed.is_none() && st.pinned && !name.starts_with(RESERVED_PREFIX.as_bytes()) {
                    // Perhaps the client's own SQL PREPARE: the server closes it.
                    expect.push(Pending::Close {
                        swallow: false,
                        injected: None,
                    });
                    return Ok(());
                }
                // The server copy stays for other clients; only the
                // client's name goes (closing an unknown name is no error).
                expect.push(Pending::Synth(b'3'));
                if let Some(binding) = closed {
                    expect.push(Pending::NameClosed(binding));
                }
            } else {
                let Some(s) = st.client.use_statement(name) else {
                    unknown_name(name, Pending::Describe { id: None }, st, expect, &mut out);
                    if !out.is_empty() {
                        splice.replace(input, start, end, &out);
                    }
                    return Ok(());
                };
                ensure_prepared(s, st.server, st.capacity, expect, &mut out);
                write_message(&mut out, b'D', |b| {
                    b.put_u8(b'S');
                    b.put_slice(s.server_name.as_bytes());
                    b.put_u8(0);
                });
                expect.push(Pending::Describe { id: Some(s.id) });
            }
        }
        _ => return Ok(()),
    }
    splice.replace(input, start, end, &out);
    Ok(())
}

/// A Bind or Describe of a statement name pgmux does not know. Unpinned,
/// `out` gets an injected 26000 error standing in for the message. Pinned,
/// the name may be the client's own SQL-level PREPARE on its server: the
/// message passes unchanged (`out` stays empty) and draws `as_is`.
fn unknown_name(
    name: &[u8],
    as_is: Pending,
    st: &Statements<'_>,
    expect: &mut Expect,
    out: &mut BytesMut,
) {
    if st.pinned && !name.starts_with(RESERVED_PREFIX.as_bytes()) {
        expect.push(as_is);
        return;
    }
    let message = format!(
        "prepared statement \"{}\" does not exist",
        statement_name(name)
    );
    raise("26000", &message, expect, out);
}

/// A Bind too big to hold whole: rewrite its head once the two names are in,
/// then let the rest stream. Returns where streaming continues, or `None`
/// to wait for more bytes.
pub(super) fn stream_big_bind(
    input: &[u8],
    start: usize,
    len: usize,
    expect: &mut Expect,
    st: &mut Statements<'_>,
    splice: &mut Splice,
) -> Result<Option<usize>, ClientFlowError> {
    let body = &input[start + HEADER_LEN..];
    let Some(portal_end) = body.iter().position(|&b| b == 0) else {
        return if body.len() > HEAD_LIMIT {
            Err(ClientFlowError::Malformed('B'))
        } else {
            Ok(None)
        };
    };
    let Some(name_len) = body[portal_end + 1..].iter().position(|&b| b == 0) else {
        return if body.len() > HEAD_LIMIT {
            Err(ClientFlowError::Malformed('B'))
        } else {
            Ok(None)
        };
    };
    let name = &body[portal_end + 1..portal_end + 1 + name_len];
    let head_end = start + HEADER_LEN + portal_end + 1 + name_len + 1;
    let statement = (!name.is_empty())
        .then(|| st.client.use_statement(name).cloned())
        .flatten();
    let id = statement.as_ref().map(|s| s.id);
    if let Some(s) = statement {
        let mut out = BytesMut::new();
        ensure_prepared(&s, st.server, st.capacity, expect, &mut out);
        let new_len = len - name_len + s.server_name.len() + 4;
        out.put_u8(b'B');
        out.put_i32(new_len as i32);
        out.put_slice(&body[..=portal_end]);
        out.put_slice(s.server_name.as_bytes());
        out.put_u8(0);
        splice.replace(input, start, head_end, &out);
    }
    expect.push(Pending::Bind { id });
    Ok(Some(head_end))
}
