//! Client to server: pass bytes on, note what each message will draw from
//! the server, and (transaction mode) rewrite statement names. Only the
//! header of most messages is looked at; Parse, Bind, Describe and Close are
//! read whole so their statement names can be mapped.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use pgmux_wire::frame::{peek_header, write_message, FrameError, HEADER_LEN};
use pgmux_wire::reply::quote_literal;

use super::ddl::{deallocated_statement, dropped_database};
use super::expect::{Expect, Pending};
use super::pinning::{custom_settings, CustomSettings, TextHints};
use super::splice::Splice;
use crate::prepared::{server_name, ClientStatements, ServerStatements, Statement, StatementCache};

/// Parse and Bind messages up to this size are held whole to be rewritten;
/// a bigger Bind streams with only its head rewritten, a bigger unnamed
/// Parse streams untouched, and a bigger named Parse is refused.
const WHOLE_MESSAGE_LIMIT: usize = 1 << 20;
/// Names at the head of a message (and whole Describe/Close) must fit in this.
const HEAD_LIMIT: usize = 64 * 1024;
/// How much of a statement's text is searched for session-state hints in
/// one piece (simple queries up to this size are held whole for it).
const HINT_SCAN_LIMIT: usize = WHOLE_MESSAGE_LIMIT;

#[derive(Debug, thiserror::Error)]
pub enum ClientFlowError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("malformed {0:?} message")]
    Malformed(char),
    #[error(
        "a named prepared statement of {0} bytes is over pgmux's 1 MiB limit in transaction mode"
    )]
    StatementTooLarge(usize),
}

impl ClientFlowError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ClientFlowError::StatementTooLarge(_) => "54000",
            _ => "08P01",
        }
    }
}

/// The statement maps in play when names are rewritten.
pub struct Statements<'a> {
    pub cache: &'a StatementCache,
    pub client: &'a mut ClientStatements,
    pub server: &'a mut ServerStatements,
    /// `max_prepared_statements`: the server's LRU capacity.
    pub capacity: usize,
    /// The client keeps this server (pinned): a name pgmux does not know
    /// may be one the client made with SQL `PREPARE`, so it passes through.
    pub pinned: bool,
}

/// Result of one pass over the client's buffered bytes.
pub struct ClientBatch {
    /// Input bytes handled (the rest is an incomplete message, kept).
    pub consumed: usize,
    /// The bytes to send when edits were made; else send `input[..consumed]`.
    pub edited: Option<BytesMut>,
    /// The client sent Terminate (not forwarded; nothing after it is read).
    pub terminate: bool,
    pub copy_ended: bool,
    /// A `DROP DATABASE` of this database is among the messages.
    pub dropped_database: Option<String>,
    /// What the statements' texts hint at about session state (`pinning`).
    pub hints: TextHints,
    /// Custom settings the statements may set.
    pub custom_settings: CustomSettings,
    /// The batch is one request that can be sent again as it is if its
    /// statement turns out stale: Bind, Describe, Execute, Sync of a
    /// prepared statement, nothing else (what libpq sends per execution).
    pub replayable: bool,
}

impl ClientBatch {
    /// Search statement text for what it may leave in the session.
    fn search(&mut self, text: &[u8]) {
        let hints = TextHints::of(text);
        if hints.look || hints.session_set {
            self.custom_settings.merge_from(&custom_settings(text));
        }
        self.hints.merge(hints);
    }
}

/// Counts the message kinds of a batch to tell whether it is replayable.
#[derive(Default)]
struct Shape {
    binds: u32,
    describes: u32,
    syncs: u32,
    others: u32,
    ends_with_sync: bool,
}

impl Shape {
    fn note(&mut self, tag: u8) {
        match tag {
            b'B' => self.binds += 1,
            b'D' => self.describes += 1,
            b'S' => self.syncs += 1,
            b'E' | b'H' => {}
            _ => self.others += 1,
        }
        self.ends_with_sync = tag == b'S';
    }

    fn replayable(&self) -> bool {
        self.binds == 1
            && self.describes >= 1
            && self.syncs == 1
            && self.others == 0
            && self.ends_with_sync
    }
}

#[derive(Debug)]
pub struct ClientFlow {
    max: usize,
    /// Bytes of the current message still to pass through.
    remaining: usize,
    /// Transaction mode: look for statements that leave session state.
    watch_state: bool,
    /// The message passing through is a simple Query too big to hold.
    streaming_query: bool,
}

/// Where the client's buffered bytes stand before a server is borrowed.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestState {
    /// A complete message that makes the server answer (or Terminate) is in.
    pub complete: bool,
}

impl ClientFlow {
    pub fn new(max_message: usize, watch_state: bool) -> ClientFlow {
        ClientFlow {
            max: max_message,
            remaining: 0,
            watch_state,
            streaming_query: false,
        }
    }

    pub fn at_boundary(&self) -> bool {
        self.remaining == 0
    }

    /// Look (without consuming) whether `buf`, which starts on a message
    /// boundary, holds a whole request yet.
    pub fn request_state(&self, buf: &[u8]) -> Result<RequestState, FrameError> {
        let mut pos = 0;
        let mut complete = false;
        while let Some((tag, len)) = peek_header(&buf[pos..], self.max)? {
            let end = pos + HEADER_LEN + len;
            if end > buf.len() {
                break;
            }
            complete |= matches!(tag, b'Q' | b'S' | b'H' | b'F' | b'c' | b'f' | b'X');
            pos = end;
        }
        Ok(RequestState { complete })
    }

    /// Process as much of `input` as can be sent now.
    pub fn process(
        &mut self,
        input: &[u8],
        expect: &mut Expect,
        mut stmts: Option<Statements<'_>>,
    ) -> Result<ClientBatch, ClientFlowError> {
        let mut splice = Splice::new();
        let mut pos = 0;
        let mut batch = ClientBatch {
            consumed: 0,
            edited: None,
            terminate: false,
            copy_ended: false,
            dropped_database: None,
            hints: TextHints::default(),
            custom_settings: CustomSettings::default(),
            replayable: false,
        };
        let mut shape = Shape::default();
        if let Some(st) = stmts.as_mut() {
            // Stale statements are closed as soon as the server is idle (a
            // COPY may be under way otherwise), and in any case before a
            // Parse that would recreate one (see `close_stale`).
            if self.remaining == 0 && expect.is_empty() && st.server.has_closing() {
                let mut out = BytesMut::new();
                close_stale(st.server, expect, &mut out);
                splice.replace(input, 0, 0, &out);
            }
        }
        while pos < input.len() {
            if self.remaining > 0 {
                let take = self.remaining.min(input.len() - pos);
                if self.streaming_query {
                    // Over the whole-message limit: scanned piece by piece
                    // (a word cut by a piece boundary can be missed).
                    batch.search(&input[pos..pos + take]);
                }
                self.remaining -= take;
                self.streaming_query &= self.remaining > 0;
                pos += take;
                continue;
            }
            let Some((tag, len)) = peek_header(&input[pos..], self.max)? else {
                break;
            };
            let body_start = pos + HEADER_LEN;
            let whole_end = body_start + len;
            let have_whole = whole_end <= input.len();
            if tag == b'Q' && self.watch_state && !have_whole && len <= WHOLE_MESSAGE_LIMIT {
                // Held whole, so its text is searched for session state
                // (and a DEALLOCATE recognised) in one piece.
                break;
            }
            if matches!(tag, b'Q' | b'P') {
                let body = &input[body_start..whole_end.min(input.len())];
                // A Parse starts with the statement name.
                let sql = if tag == b'P' {
                    body.splitn(2, |&b| b == 0).nth(1).unwrap_or_default()
                } else {
                    body
                };
                if let Some(name) = dropped_database(sql) {
                    batch.dropped_database = Some(name);
                }
                // A named statement's text is searched once, when pgmux
                // first sees it (`Statement::hints`); otherwise here.
                let managed_parse =
                    tag == b'P' && stmts.is_some() && body.first().is_some_and(|&b| b != 0);
                if self.watch_state && !managed_parse {
                    batch.search(&sql[..sql.len().min(HINT_SCAN_LIMIT)]);
                }
                if let (b'Q', true, Some(st)) = (tag, have_whole, stmts.as_mut()) {
                    if let Some(name) = deallocated_statement(sql) {
                        if st.client.remove(name.as_bytes()) {
                            // Known only to pgmux: answered here, nothing sent.
                            expect.push(Pending::Deallocated);
                            shape.note(tag);
                            splice.replace(input, pos, whole_end, b"");
                            pos = whole_end;
                            continue;
                        }
                        if name.starts_with("pgmux_") && !st.pinned {
                            // pgmux's own statement, shared by every client of
                            // the server: not the client's to drop. It gets
                            // what a direct connection would say of a name it
                            // never prepared.
                            let message = format!("prepared statement \"{name}\" does not exist");
                            let mut out = BytesMut::new();
                            write_message(&mut out, b'Q', |b| {
                                b.put_slice(raise_sql("26000", &message).as_bytes());
                                b.put_u8(0);
                            });
                            expect.push(Pending::Query);
                            shape.note(tag);
                            splice.replace(input, pos, whole_end, &out);
                            pos = whole_end;
                            continue;
                        }
                    }
                }
            }
            shape.note(tag);
            if let (Some(st), b'P' | b'B' | b'D' | b'C') = (stmts.as_mut(), tag) {
                if !have_whole {
                    // Hold a message whole only while it is small; past that
                    // only its head (the names) is needed, or it is refused.
                    let available = input.len() - body_start;
                    match tag {
                        b'B' if len > WHOLE_MESSAGE_LIMIT => {
                            match stream_big_bind(input, pos, len, expect, st, &mut splice)? {
                                Some(next) => {
                                    self.remaining = whole_end - next.min(whole_end);
                                    pos = next;
                                    continue;
                                }
                                None => break,
                            }
                        }
                        b'P' if len > WHOLE_MESSAGE_LIMIT => match input[body_start..].first() {
                            // Unnamed: nothing to rewrite, so it streams.
                            Some(0) => {
                                expect.push(Pending::Parse {
                                    swallow: false,
                                    id: None,
                                });
                                self.remaining = len - available;
                                pos = input.len();
                                continue;
                            }
                            Some(_) => return Err(ClientFlowError::StatementTooLarge(len)),
                            None => break,
                        },
                        b'D' | b'C' if len > HEAD_LIMIT => {
                            return Err(ClientFlowError::Malformed(tag as char))
                        }
                        _ => break,
                    }
                }
                let (hints, custom) = rewrite(
                    tag,
                    &input[body_start..whole_end],
                    input,
                    pos,
                    whole_end,
                    expect,
                    st,
                    &mut splice,
                )?;
                batch.hints.merge(hints);
                if let Some(s) = custom {
                    batch.custom_settings.merge_from(&s.custom_settings);
                }
                pos = whole_end;
                continue;
            }
            match tag {
                b'X' => {
                    batch.terminate = true;
                    batch.consumed = pos;
                    batch.edited = splice.finish(input, pos);
                    return Ok(batch);
                }
                b'c' | b'f' => {
                    batch.copy_ended = true;
                    expect.push(Pending::CopyEnd);
                }
                _ => {}
            }
            if let Some(p) = pending_for(tag) {
                expect.push(p);
            }
            let available = (input.len() - body_start).min(len);
            self.remaining = len - available;
            self.streaming_query = tag == b'Q' && self.watch_state && self.remaining > 0;
            pos = body_start + available;
        }
        batch.consumed = pos;
        batch.edited = splice.finish(input, pos);
        batch.replayable = shape.replayable() && self.remaining == 0;
        Ok(batch)
    }
}

/// What a client message (not rewritten) will draw from the server.
fn pending_for(tag: u8) -> Option<Pending> {
    Some(match tag {
        b'P' => Pending::Parse {
            swallow: false,
            id: None,
        },
        b'B' => Pending::Bind { id: None },
        b'D' => Pending::Describe { id: None },
        b'E' => Pending::Execute,
        b'C' => Pending::Close {
            swallow: false,
            injected: None,
        },
        b'S' => Pending::Sync,
        b'Q' => Pending::Query,
        b'F' => Pending::FunctionCall,
        _ => return None,
    })
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
fn close_stale(server: &mut ServerStatements, expect: &mut Expect, out: &mut BytesMut) {
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

/// Make the server raise `code`/`message` in place of a client message: an
/// injected `DO` block that raises, whose ParseComplete and BindComplete are
/// dropped. The server then aborts the transaction and skips to Sync just as
/// for an error of its own, so the client sees what PostgreSQL would show.
fn raise(code: &str, message: &str, expect: &mut Expect, out: &mut BytesMut) {
    let sql = raise_sql(code, message);
    write_message(out, b'P', |b| {
        b.put_u8(0);
        b.put_slice(sql.as_bytes());
        b.put_u8(0);
        b.put_i16(0);
    });
    write_message(out, b'B', |b| {
        b.put_slice(b"\0\0");
        b.put_i16(0);
        b.put_i16(0);
        b.put_i16(0);
    });
    write_message(out, b'E', |b| {
        b.put_u8(0);
        b.put_i32(0);
    });
    expect.push(Pending::Parse {
        swallow: true,
        id: None,
    });
    expect.push(Pending::Raise);
}

/// A `DO` block that raises `code` with `message`, every part quoted.
fn raise_sql(code: &str, message: &str) -> String {
    let block = format!(
        "BEGIN RAISE EXCEPTION USING ERRCODE = {}, MESSAGE = {}; END",
        quote_literal(code),
        quote_literal(message)
    );
    format!("DO {}", quote_literal(&block))
}

fn statement_name(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// Handle a whole Parse, Bind, Describe or Close when names are rewritten.
/// Returns what the statement involved hints at about session state.
#[allow(clippy::too_many_arguments)]
fn rewrite(
    tag: u8,
    body: &[u8],
    input: &[u8],
    start: usize,
    end: usize,
    expect: &mut Expect,
    st: &mut Statements<'_>,
    splice: &mut Splice,
) -> Result<(TextHints, Option<Arc<Statement>>), ClientFlowError> {
    let mut out = BytesMut::new();
    let mut hints = TextHints::default();
    let mut custom = None;
    match tag {
        b'P' => {
            let (name, definition) = cstr(body, tag)?;
            if name.is_empty() {
                expect.push(Pending::Parse {
                    swallow: false,
                    id: None,
                });
                return Ok((TextHints::default(), None));
            }
            if st.client.get(name).is_some() {
                let message = format!(
                    "prepared statement \"{}\" already exists",
                    statement_name(name)
                );
                raise("42P05", &message, expect, &mut out);
                splice.replace(input, start, end, &out);
                return Ok((TextHints::default(), None));
            }
            let s = st.cache.intern(definition);
            (hints, custom) = statement_hints(&s);
            let binding = st.client.insert(name, s.clone());
            if st.server.contains(s.id) {
                // Already there: answer it ourselves.
                expect.push(Pending::Synth(b'1'));
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
                return Ok((TextHints::default(), None));
            }
            // Borrowed, not cloned: this is every prepared execution.
            let Some(s) = st.client.get(name) else {
                unknown_name(name, Pending::Bind { id: None }, st, expect, &mut out);
                if !out.is_empty() {
                    splice.replace(input, start, end, &out);
                }
                return Ok((TextHints::default(), None));
            };
            (hints, custom) = statement_hints(s);
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
                return Ok((TextHints::default(), None));
            }
            if tag == b'C' {
                if !st.client.remove(name) && st.pinned {
                    // Perhaps the client's own SQL PREPARE: the server closes it.
                    expect.push(Pending::Close {
                        swallow: false,
                        injected: None,
                    });
                    return Ok((TextHints::default(), None));
                }
                // The server copy stays for other clients; only the
                // client's name goes (closing an unknown name is no error).
                expect.push(Pending::Synth(b'3'));
            } else {
                let Some(s) = st.client.get(name) else {
                    unknown_name(name, Pending::Describe { id: None }, st, expect, &mut out);
                    if !out.is_empty() {
                        splice.replace(input, start, end, &out);
                    }
                    return Ok((TextHints::default(), None));
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
        _ => return Ok((TextHints::default(), None)),
    }
    splice.replace(input, start, end, &out);
    Ok((hints, custom))
}

/// A statement's hints, and the statement itself when it names custom
/// settings (rare: only then is its Arc cloned).
fn statement_hints(s: &Arc<Statement>) -> (TextHints, Option<Arc<Statement>>) {
    let names_settings = !s.custom_settings.names.is_empty() || s.custom_settings.unresolved;
    (s.hints, names_settings.then(|| s.clone()))
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
    if st.pinned {
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
fn stream_big_bind(
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
        .then(|| st.client.get(name).cloned())
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
