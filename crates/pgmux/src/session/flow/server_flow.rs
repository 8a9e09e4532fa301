//! Server to client: pass bytes on, account each reply against what is
//! owed ([`Expect`]), follow transaction status and ParameterStatus, drop
//! replies to injected messages and add the ones pgmux owes. Without edits
//! the input is forwarded as it is.

use bytes::BytesMut;
use pgmux_wire::backend;
use pgmux_wire::frame::{peek_header, write_message, FrameError, HEADER_LEN};
use pgmux_wire::reply::{self, Severity};

use super::expect::{Desync, Expect, NameOp, Undone, Verdict};
use super::replies::{
    changes_schema, counts_rows, ends_failed_block, other_sessions, statement_trouble, swapped_pid,
    Trouble,
};
use super::retry::Retry;
use super::splice::Splice;
use crate::params::ParamMap;
use crate::prepared::{forgets_statements, ClientStatements, ServerStatements, StatementCache};
use crate::session::state::watch::Watch;

/// What PostgreSQL says to most messages in a failed transaction.
const ABORTED: &str =
    "current transaction is aborted, commands ignored until end of transaction block";

#[derive(Debug, thiserror::Error)]
pub enum ServerFlowError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Desync(#[from] Desync),
}

/// What the flow updates as replies go by.
pub struct Observers<'a> {
    pub server_params: &'a mut ParamMap,
    /// The client's view, when a client is listening.
    pub client_params: Option<&'a mut ParamMap>,
    pub statements: &'a mut ServerStatements,
    /// The client's statement names, when a client is listening.
    pub client_statements: Option<&'a mut ClientStatements>,
    /// The pool's statement map, where stale statements are retired.
    pub cache: Option<&'a StatementCache>,
    /// Notifications this server sends itself (the client's own NOTIFY)
    /// carry the server's pid: (server pid, the pid the client was given)
    /// when the two differ.
    pub own_pid: Option<(u32, u32)>,
}

pub struct ServerBatch {
    pub consumed: usize,
    pub edited: Option<BytesMut>,
    /// ReadyForQuery messages seen, and how many said idle.
    pub ready: u32,
    pub ready_idle: u32,
    /// SQLSTATE classes of the ErrorResponses passed on to the client.
    pub errors: Vec<[u8; 2]>,
    /// The server refused a write as read-only (25006): under
    /// `target_session_attrs = read-write` the primary has moved.
    pub read_only_refused: bool,
    /// Managed statements a schema change made stale on this server, whose
    /// error passed to the client / was held back for a retry.
    pub stale_passed: u32,
    pub stale_retried: u32,
    /// Managed statements this server did not have (26000), whose error
    /// passed to the client / was held back for a retry.
    pub missing_passed: u32,
    pub missing_retried: u32,
    /// A DROP DATABASE was refused because this many other sessions use
    /// the database; its replies are held back (`held`) for the relay to
    /// decide: close pgmux's idle servers and send it again, or pass them.
    pub database_in_use_by: Option<u32>,
    pub held: Option<BytesMut>,
    /// The armed request failed on a stale statement and its error was
    /// held back: send it again.
    pub retry: bool,
}

impl ServerBatch {
    /// What goes on to the peer for this batch: the edited bytes, or the
    /// `consumed` part of `input` as it came.
    pub fn output<'a>(&'a self, input: &'a [u8]) -> &'a [u8] {
        self.edited.as_deref().unwrap_or(&input[..self.consumed])
    }
}

#[derive(Debug)]
pub struct ServerFlow {
    max: usize,
    remaining: usize,
    dropping: bool,
    /// The last transaction status reported.
    pub status: u8,
    /// The transaction is failed right now: the last ReadyForQuery said
    /// so, and no COMMIT or ROLLBACK has run since.
    failed: bool,
    /// The server told the client a FATAL error (it is going away): the
    /// client needs no word of pgmux's on top.
    pub fatal_passed: bool,
    /// The last complete message was ReadyForQuery.
    pub at_ready: bool,
    /// The server waits for COPY data from the client.
    pub copy_in: bool,
    /// What the client's transactions may have left in the session since
    /// the last look (statement texts noted by the relay, tags here).
    pub watch: Watch,
    /// Whether the request in flight may be sent again if its statement is
    /// missing or stale (set by the relay; cleared by any reply).
    pub retry_armed: Retry,
    /// Dropping the replies of a request that will be sent again.
    retrying: bool,
    /// Replies the client already had when the request was held back
    /// (a DROP DATABASE's BindComplete): dropped from the resend's.
    answered_before_retry: u32,
    /// Of those, still to drop from the resend's replies.
    to_drop_on_resend: u32,
    /// The replies held back while the relay decides (a refused drop's).
    holding: Option<BytesMut>,
    undone: Undone,
}

impl ServerFlow {
    pub fn new(max_message: usize) -> ServerFlow {
        ServerFlow {
            max: max_message,
            remaining: 0,
            dropping: false,
            status: b'I',
            failed: false,
            fatal_passed: false,
            at_ready: true,
            copy_in: false,
            watch: Watch::default(),
            retry_armed: Retry::Never,
            retrying: false,
            answered_before_retry: 0,
            to_drop_on_resend: 0,
            holding: None,
            undone: Undone::default(),
        }
    }

    pub fn at_boundary(&self) -> bool {
        self.remaining == 0
    }

    pub fn process(
        &mut self,
        input: &[u8],
        expect: &mut Expect,
        obs: &mut Observers<'_>,
    ) -> Result<ServerBatch, ServerFlowError> {
        let mut splice = Splice::new();
        let mut batch = ServerBatch {
            consumed: 0,
            edited: None,
            ready: 0,
            ready_idle: 0,
            errors: Vec::new(),
            read_only_refused: false,
            stale_passed: 0,
            stale_retried: 0,
            missing_passed: 0,
            missing_retried: 0,
            database_in_use_by: None,
            held: None,
            retry: false,
        };
        let mut pos = 0;
        while pos < input.len() {
            if self.remaining > 0 {
                let take = self.remaining.min(input.len() - pos);
                if self.dropping {
                    splice.replace(input, pos, pos + take, b"");
                    self.keep_held(&input[pos..pos + take]);
                }
                self.remaining -= take;
                pos += take;
                continue;
            }
            let Some((tag, len)) = peek_header(&input[pos..], self.max)? else {
                break;
            };
            let body_start = pos + HEADER_LEN;
            let whole_end = body_start + len;
            // ReadyForQuery, ParameterStatus, ErrorResponse and
            // CommandComplete are read whole (they are small, and bounded
            // by the message size cap).
            let read_whole =
                matches!(tag, b'Z' | b'S' | b'E' | b'C') || (tag == b'A' && obs.own_pid.is_some());
            if read_whole && whole_end > input.len() {
                break;
            }
            while let Some(tag) = expect.take_synth() {
                splice.replace(input, pos, pos, &[tag, 0, 0, 0, 4]);
            }
            if tag == b'D' && !self.retrying && self.to_drop_on_resend == 0 {
                // A DataRow passes with nothing else to do: what the general
                // path below comes to for one (a result is mostly these).
                self.retry_armed = Retry::Never;
                self.answered_before_retry = 0;
                self.at_ready = false;
                self.dropping = false;
                let available = (input.len() - body_start).min(len);
                self.remaining = len - available;
                pos = body_start + available;
                continue;
            }
            let mut replacement = None;
            let mut hold_back = false;
            if tag == b'I' {
                if let Some(binding) = expect.deallocation_at_front() {
                    // The empty query that stood for the client's DEALLOCATE.
                    let mut msg = BytesMut::new();
                    if self.failed {
                        // Refused in a failed transaction; the name stays.
                        if let Some(client) = obs.client_statements.as_deref_mut() {
                            client.reopen(binding);
                        }
                        reply::error(&mut msg, Severity::Error, "25P02", ABORTED);
                    } else {
                        reply::command_complete(&mut msg, "DEALLOCATE");
                    }
                    replacement = Some(msg);
                }
            } else if tag == b'E' {
                let body = &input[body_start..whole_end];
                if let Some((code, message)) = expect.raise_at_front() {
                    // The error pgmux made the server raise in the client's
                    // name: the one PostgreSQL would have given.
                    let mut msg = BytesMut::new();
                    reply::error(&mut msg, Severity::Error, code, message);
                    replacement = Some(msg);
                } else if self.retry_armed == Retry::IfDatabaseInUse {
                    batch.database_in_use_by = other_sessions(body);
                    hold_back = batch.database_in_use_by.is_some();
                    if hold_back {
                        self.holding = Some(BytesMut::new());
                    }
                } else if let Some((id, trouble)) = statement_trouble(body, expect) {
                    match trouble {
                        Trouble::Stale => {
                            // Closed before its name is prepared again, and
                            // retired: the next Parse of its text is fresh.
                            obs.statements.invalidate(id);
                            if let Some(cache) = obs.cache {
                                cache.retire(id);
                            }
                            hold_back = self.retry_armed == Retry::IfMissingOrStale;
                            *if hold_back {
                                &mut batch.stale_retried
                            } else {
                                &mut batch.stale_passed
                            } += 1;
                        }
                        Trouble::Missing => {
                            // Someone deallocated it behind pgmux's back:
                            // the next use prepares it again.
                            obs.statements.forget(id);
                            hold_back = self.retry_armed != Retry::Never;
                            *if hold_back {
                                &mut batch.missing_retried
                            } else {
                                &mut batch.missing_passed
                            } += 1;
                        }
                    }
                }
            }
            let mut verdict = expect.on_reply(tag, &mut self.undone)?;
            if hold_back {
                self.retrying = true;
                self.to_drop_on_resend = self.answered_before_retry;
                verdict = Verdict::Drop;
            }
            let replies_to_requests = !matches!(tag, b'N' | b'A' | b'S');
            if self.to_drop_on_resend > 0 && replies_to_requests && !self.retrying {
                // The resend's first replies: the client has them already.
                self.to_drop_on_resend -= 1;
                verdict = Verdict::Drop;
            }
            if self.retrying && tag == b'Z' {
                self.retrying = false;
                batch.retry = true;
                verdict = Verdict::Drop;
                self.keep_held(&input[pos..whole_end]);
                batch.held = self.holding.take();
            } else if self.retrying {
                verdict = Verdict::Drop;
            }
            if verdict == Verdict::Forward && replies_to_requests {
                // A DROP DATABASE stays armed through the replies that
                // come before its execution's (they come again, the same).
                let before_execution = matches!(tag, b'1' | b'2' | b't' | b'T' | b'n');
                if self.retry_armed == Retry::IfDatabaseInUse && before_execution {
                    self.answered_before_retry += 1;
                } else {
                    self.retry_armed = Retry::Never;
                    self.answered_before_retry = 0;
                }
            }
            if !self.undone.is_empty() {
                self.apply_undone(obs);
            }
            if !matches!(tag, b'N' | b'A' | b'S') {
                self.at_ready = false;
            }
            match tag {
                b'Z' => {
                    let status =
                        backend::ready_status(&input[body_start..whole_end]).unwrap_or(b'E');
                    self.status = status;
                    self.failed = status == b'E';
                    self.at_ready = true;
                    self.copy_in = false;
                    self.retry_armed = Retry::Never;
                    self.answered_before_retry = 0;
                    // Replies to what pgmux itself sent are not the client's.
                    if verdict != Verdict::Drop {
                        batch.ready += 1;
                        batch.ready_idle += u32::from(status == b'I');
                    }
                }
                b'S' => {
                    if let Some((name, value)) =
                        backend::parameter_status(&input[body_start..whole_end])
                    {
                        obs.server_params.set(&name, &value);
                        let servers_own = crate::params::SERVER_SIDE.contains(&name.as_str());
                        if let Some(client) =
                            obs.client_params.as_deref_mut().filter(|_| !servers_own)
                        {
                            client.set(&name, &value);
                        }
                    }
                }
                b'A' => {
                    if let Some(swapped) = obs
                        .own_pid
                        .and_then(|pids| swapped_pid(&input[body_start..whole_end], pids))
                    {
                        splice.replace(input, body_start, body_start + 4, &swapped);
                    }
                }
                b'G' => self.copy_in = true,
                // An error ends COPY IN: the server reads no more data.
                b'E' if verdict != Verdict::Drop => {
                    self.copy_in = false;
                    let body = &input[body_start..whole_end];
                    if let Some(class) = backend::sqlstate_class(body) {
                        batch.errors.push(class);
                        batch.read_only_refused |= class == *b"25"
                            && backend::error_field(body, b'C') == Some(b"25006".as_slice());
                    }
                    self.fatal_passed |= matches!(
                        backend::error_field(body, b'V')
                            .or_else(|| backend::error_field(body, b'S')),
                        Some(b"FATAL" | b"PANIC")
                    );
                }
                b'E' => self.copy_in = false,
                // Rows read or written: none of the tags below.
                b'C' if counts_rows(&input[body_start..whole_end]) => {}
                b'C' => {
                    let command_tag = &input[body_start..whole_end];
                    self.watch.note_tag(command_tag);
                    if ends_failed_block(command_tag) {
                        self.failed = false;
                    }
                    if changes_schema(command_tag) {
                        if let Some(cache) = obs.cache {
                            cache.retire_all();
                        }
                    }
                    if forgets_statements(command_tag) {
                        obs.statements.clear();
                        if let Some(client) = obs.client_statements.as_deref_mut() {
                            client.clear();
                        }
                    }
                }
                _ => {}
            }
            if let Some(msg) = replacement {
                splice.replace(input, pos, whole_end, &msg);
                pos = whole_end;
                continue;
            }
            self.dropping = verdict == Verdict::Drop;
            let available = (input.len() - body_start).min(len);
            if self.dropping {
                splice.replace(input, pos, body_start + available, b"");
                if tag != b'Z' {
                    self.keep_held(&input[pos..body_start + available]);
                }
            }
            self.remaining = len - available;
            pos = body_start + available;
        }
        if self.remaining == 0 {
            // Replies pgmux owes after the server's last message (a Close
            // or DEALLOCATE answered here, behind a Flush): due now, not
            // when the server next speaks.
            while let Some(tag) = expect.take_synth() {
                splice.replace(input, pos, pos, &[tag, 0, 0, 0, 4]);
            }
        }
        if expect.is_empty() {
            if let Some(client) = obs.client_statements.as_deref_mut() {
                client.settle();
            }
        }
        batch.consumed = pos;
        batch.edited = splice.finish(input, pos);
        Ok(batch)
    }

    /// What an error undid (only an ErrorResponse fills `undone`): the
    /// statements and names its skipped messages would have made.
    fn apply_undone(&mut self, obs: &mut Observers<'_>) {
        for id in self.undone.statements.drain(..) {
            obs.statements.forget(id);
        }
        for id in self.undone.closes.drain(..) {
            obs.statements.close_later(id);
        }
        if let Some(client) = obs.client_statements.as_deref_mut() {
            // Newest first, as a stack unwinds: a name closed, bound
            // again and closed again comes back to its first binding.
            for op in self.undone.names.drain(..).rev() {
                match op {
                    NameOp::Bound(binding) => client.unbind(binding),
                    NameOp::Closed(binding) => client.reopen(binding),
                }
            }
        } else {
            self.undone.names.clear();
        }
    }

    /// Keep bytes dropped while a refused drop's replies are held back.
    fn keep_held(&mut self, bytes: &[u8]) {
        if let Some(held) = self.holding.as_mut() {
            held.extend_from_slice(bytes);
        }
    }

    /// Replies pgmux owes that are due with no server message to wait for.
    pub fn due_synths(&self, expect: &mut Expect, out: &mut BytesMut) {
        while let Some(tag) = expect.take_synth() {
            write_message(out, tag, |_| {});
        }
    }
}
