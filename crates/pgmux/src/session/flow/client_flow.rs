//! Client to server: pass bytes on, note what each message will draw from
//! the server, watch statement texts for session state, and (transaction
//! mode) have statement names rewritten ([`super::rewrite`]). Only the
//! header of most messages is looked at; Parse, Bind, Describe and Close are
//! read whole so their statement names can be mapped, and simple queries so
//! their text can be searched.

use bytes::BytesMut;
use pgmux_wire::frame::{peek_header, FrameError, HEADER_LEN};

use super::expect::{Expect, Pending};
use super::retry::{Retry, Shape};
use super::rewrite::{close_stale, rewrite, rewrite_query, stream_big_bind, Message, HEAD_LIMIT};
use super::splice::Splice;
use crate::session::state::ddl::{deallocated_statement, dropped_database, may_forget_statements};
use crate::session::state::watch::Watch;
use crate::session::state::words::Words;

pub use super::rewrite::Statements;

const FLUSH: &[u8] = b"H\0\0\0\x04";

/// Parse and Bind messages up to this size are held whole to be rewritten;
/// a bigger Bind streams with only its head rewritten, a bigger unnamed
/// Parse streams untouched, and a bigger named Parse is refused.
const WHOLE_MESSAGE_LIMIT: usize = 1 << 20;
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

/// Result of one pass over the client's buffered bytes.
pub struct ClientBatch {
    /// Input bytes handled (the rest is an incomplete message, kept).
    pub consumed: usize,
    /// The bytes to send when edits were made; else send `input[..consumed]`.
    pub edited: Option<BytesMut>,
    /// The client sent Terminate (not forwarded; nothing after it is read).
    pub terminate: bool,
    pub copy_ended: bool,
    /// A `DROP DATABASE` of this server-side database is the request.
    pub dropped_database: Option<String>,
    /// What the statements may leave in the session (see `state::watch`).
    pub watch: Watch,
    /// Whether the batch is one request that can be sent again as it is if
    /// its statement turns out missing or stale on the server.
    pub retry: Retry,
}

impl ClientBatch {
    /// What goes on to the peer for this batch: the edited bytes, or the
    /// `consumed` part of `input` as it came.
    pub fn output<'a>(&'a self, input: &'a [u8]) -> &'a [u8] {
        self.edited.as_deref().unwrap_or(&input[..self.consumed])
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
    /// Transaction mode: the client's unnamed statement may drop every
    /// prepared statement when run, and so may these portals (almost
    /// always none).
    unnamed_may_forget_all: bool,
    /// Boxed (8 bytes instead of a Vec's 24): every idle client keeps
    /// this flow, and almost none ever has such a portal.
    #[allow(clippy::box_collection)]
    portals_may_forget_all: Option<Box<Vec<Box<[u8]>>>>,
    /// The client parsed an unnamed statement and has not bound it yet: it
    /// lives on this server only (asyncpg without a statement cache parses,
    /// looks up types with queries of their own, then binds).
    unnamed_unbound: bool,
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
            unnamed_may_forget_all: false,
            portals_may_forget_all: None,
            unnamed_unbound: false,
        }
    }

    pub fn at_boundary(&self) -> bool {
        self.remaining == 0
    }

    /// An unnamed statement the client parsed waits for its Bind: the
    /// client must keep its server (transaction mode) until then.
    pub fn awaits_unnamed_bind(&self) -> bool {
        self.unnamed_unbound
    }

    /// Follow the client's unnamed statement through a message it sends.
    fn note_unnamed(&mut self, tag: u8, body: &[u8]) {
        match tag {
            b'P' if body.first() == Some(&0) => self.unnamed_unbound = true,
            b'B' if bound_statement(body).is_some_and(<[u8]>::is_empty) => {
                self.unnamed_unbound = false
            }
            // A simple Query drops the unnamed statement; so does its Close.
            b'Q' => self.unnamed_unbound = false,
            b'C' if body.starts_with(b"S\0") => self.unnamed_unbound = false,
            _ => {}
        }
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

    /// Note whether the portal a Bind `body` fills may drop every prepared
    /// statement when executed. A "may": a portal is struck off only when
    /// no earlier error can skip this Bind (`settled`).
    fn note_bound_portal(&mut self, body: &[u8], st: &Statements<'_>, settled: bool) {
        let (Some(portal), Some(statement)) =
            (body.split(|&b| b == 0).next(), bound_statement(body))
        else {
            return;
        };
        let forgets = if statement.is_empty() {
            self.unnamed_may_forget_all
        } else {
            st.client.get(statement).is_some_and(|s| s.may_forget_all)
        };
        let known = self.forgetting_portals().iter().any(|p| **p == *portal);
        if forgets && !known {
            self.portals_may_forget_all
                .get_or_insert_with(Default::default)
                .push(portal.into());
        } else if !forgets && settled {
            if let Some(portals) = &mut self.portals_may_forget_all {
                portals.retain(|p| **p != *portal);
                if portals.is_empty() {
                    self.portals_may_forget_all = None;
                }
            }
        }
    }

    fn forgetting_portals(&self) -> &[Box<[u8]>] {
        self.portals_may_forget_all
            .as_deref()
            .map_or(&[], Vec::as_slice)
    }

    /// A simple Query, or an Execute of a portal, that may drop every
    /// prepared statement draws its `ForgetAll` kind of reply.
    fn forgetting(&self, p: Pending, body: &[u8], words: Words) -> Pending {
        match p {
            Pending::Query
                if words.any(Words::DEALLOCATE | Words::DISCARD) && may_forget_statements(body) =>
            {
                Pending::ForgetAllQuery
            }
            Pending::Execute
                if self
                    .forgetting_portals()
                    .iter()
                    .any(|portal| body.split(|&b| b == 0).next() == Some(portal)) =>
            {
                Pending::ForgetAllExecute
            }
            p => p,
        }
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
            watch: Watch::default(),
            retry: Retry::Never,
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
                    batch.watch.note_text(&input[pos..pos + take]);
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
            if expect.skipping() && !matches!(tag, b'S' | b'X') {
                // After an error the server ignores everything up to the
                // client's Sync: such a message passes unchanged, draws no
                // reply, binds no name and is searched for nothing.
                shape.note(tag);
                let available = (input.len() - body_start).min(len);
                self.remaining = len - available;
                pos = body_start + available;
                continue;
            }
            if tag == b'Q' && self.watch_state && !have_whole && len <= WHOLE_MESSAGE_LIMIT {
                // Held whole, so its text is searched for session state
                // (and a DEALLOCATE recognised) in one piece.
                break;
            }
            self.note_unnamed(tag, &input[body_start..whole_end.min(input.len())]);
            if stmts.is_some()
                && expect.statements_unsettled()
                && depends_on_names(tag, &input[body_start..whole_end.min(input.len())])
            {
                // How to rewrite it depends on replies to an earlier request
                // (see `Expect::statements_unsettled`): wait for them.
                break;
            }
            let mut words = Words::default();
            if matches!(tag, b'Q' | b'P') {
                let body = &input[body_start..whole_end.min(input.len())];
                // A Parse starts with the statement name.
                let sql = if tag == b'P' {
                    body.splitn(2, |&b| b == 0).nth(1).unwrap_or_default()
                } else {
                    body
                };
                // Read once; each check below runs only if its word is in.
                words = Words::of(&sql[..sql.len().min(HINT_SCAN_LIMIT)]);
                if words.any(Words::DROP) {
                    if let Some(name) = dropped_database(sql) {
                        batch.dropped_database = Some(name);
                    }
                }
                // A named statement's text is searched once, when pgmux
                // first sees it (`Statement::hints`); otherwise here.
                let managed_parse =
                    tag == b'P' && stmts.is_some() && body.first().is_some_and(|&b| b != 0);
                if self.watch_state && !managed_parse {
                    batch
                        .watch
                        .note_text_with(&sql[..sql.len().min(HINT_SCAN_LIMIT)], words);
                }
                if stmts.is_some() && tag == b'P' && body.first() == Some(&0) {
                    // An Execute of it through a portal may drop every
                    // statement (see `Pending::ForgetAllExecute`). A "may":
                    // cleared only when no earlier error can skip this Parse.
                    if words.any(Words::DEALLOCATE | Words::DISCARD) && may_forget_statements(sql) {
                        self.unnamed_may_forget_all = true;
                    } else if expect.is_empty() {
                        self.unnamed_may_forget_all = false;
                    }
                }
                if let (b'Q', true, Some(st)) = (tag, have_whole, stmts.as_mut()) {
                    let message = Message {
                        input,
                        start: pos,
                        end: whole_end,
                        words,
                    };
                    if rewrite_query(sql, message, expect, st, &mut splice) {
                        shape.note(tag);
                        pos = whole_end;
                        continue;
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
                let message = Message {
                    input,
                    start: pos,
                    end: whole_end,
                    words,
                };
                if tag == b'B' {
                    let settled = expect.is_empty();
                    self.note_bound_portal(message.body(), st, settled);
                    // A statement prepared earlier may be a DROP DATABASE.
                    if let Some(db) = bound_statement(message.body())
                        .and_then(|name| st.client.get(name))
                        .and_then(|s| s.drops_database.clone())
                    {
                        batch.dropped_database = Some(db);
                    }
                }
                rewrite(tag, message, expect, st, &mut splice, &mut batch.watch)?;
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
            if let Some(mut p) = pending_for(tag) {
                if stmts.is_some() {
                    if !have_whole && tag == b'E' && !self.forgetting_portals().is_empty() {
                        break; // the portal name decides; it is a few bytes
                    }
                    p = self.forgetting(p, &input[body_start..whole_end.min(input.len())], words);
                }
                if p == Pending::ForgetAllExecute {
                    // What follows waits for its reply: have the server send
                    // it now rather than at the client's Sync.
                    splice.replace(input, whole_end, whole_end, FLUSH);
                }
                expect.push(p);
            }
            let available = (input.len() - body_start).min(len);
            self.remaining = len - available;
            self.streaming_query = tag == b'Q' && self.watch_state && self.remaining > 0;
            pos = body_start + available;
        }
        batch.consumed = pos;
        batch.edited = splice.finish(input, pos);
        if self.remaining == 0 {
            batch.retry = shape.retry();
        }
        if !(self.remaining == 0 && shape.one_request()) {
            // Only a request on its own may be sent again.
            batch.dropped_database = None;
        }
        Ok(batch)
    }
}

/// The statement name a Bind `body` binds (after the portal name).
fn bound_statement(body: &[u8]) -> Option<&[u8]> {
    let mut parts = body.splitn(3, |&b| b == 0);
    parts.next();
    let statement = parts.next()?;
    // A name only counts when its terminator is there.
    parts.next().map(|_| statement)
}

/// Whether rewriting a message (transaction mode) depends on which
/// statements the client and server have: Parse, Bind, Describe and Close,
/// and a `DEALLOCATE name` that pgmux answers itself.
fn depends_on_names(tag: u8, body: &[u8]) -> bool {
    match tag {
        b'P' | b'B' | b'D' | b'C' => true,
        b'Q' => deallocated_statement(body).is_some(),
        _ => false,
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
