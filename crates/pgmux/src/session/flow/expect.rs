//! What the server still owes the client, in order. Every client message
//! that draws a reply pushes an entry; every server reply pops or passes.
//! Entries marked `swallow` are replies to messages pgmux injected; `Synth`
//! entries are replies pgmux owes for messages it answered itself. Pure: no
//! sockets, so every protocol corner is unit-tested (in
//! `session/tests/expect.rs`).

use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// `id`: the statement this Parse creates on the server, if named.
    Parse {
        swallow: bool,
        id: Option<u64>,
    },
    /// `id`: the managed statement bound, if any (for 0A000 recovery).
    Bind {
        id: Option<u64>,
    },
    /// `id`: the managed statement described, if any.
    Describe {
        id: Option<u64>,
    },
    Execute,
    /// `injected`: the statement pgmux closes itself (eviction, stale).
    Close {
        swallow: bool,
        injected: Option<u64>,
    },
    Sync,
    Query,
    FunctionCall,
    /// A reply (ParseComplete, CloseComplete) pgmux sends itself when it
    /// reaches the front.
    Synth(u8),
    /// A client's `DEALLOCATE name` of its own name (by binding number,
    /// closed already), sent to the server as an empty Query so the
    /// transaction moves as it would: the server's EmptyQueryResponse
    /// becomes CommandComplete `DEALLOCATE`, or in a failed transaction the
    /// error PostgreSQL gives (and the name stays).
    Deallocated(u64),
    /// A Parse pgmux injected to make the server fail in the client's name
    /// (42P05, 26000): its error is replaced by the one PostgreSQL would
    /// give the client (kept in `Expect::raises`), and the server then
    /// skips to Sync exactly as for that error.
    Raise,
    /// A client's simple Query that pgmux refused, replaced by one that
    /// fails at the parser: its error is replaced by the refusal (kept in
    /// `Expect::raises`), then ReadyForQuery.
    RefusedQuery,
    /// The client ended COPY data here (CopyDone or CopyFail). Draws no
    /// reply; marks how far Syncs sent during COPY reach.
    CopyEnd,
    /// Follows a client's named Parse: the client's name (by its binding
    /// number) exists only if that Parse is not failed or skipped. Draws no
    /// reply.
    NameBound(u64),
    /// A client's Close or DEALLOCATE of its name (by binding number), which
    /// stays closed unless an error makes the server skip it. Draws no reply.
    NameClosed(u64),
    /// A simple Query whose text may drop every prepared statement
    /// (`DEALLOCATE ALL`, `DISCARD ALL`): a `Query` whose effect on the
    /// statement maps is known only from its reply.
    ForgetAllQuery,
    /// An `Execute` of such a statement.
    ForgetAllExecute,
}

impl Pending {
    fn ends_with_ready(self) -> bool {
        matches!(
            self,
            Pending::Sync
                | Pending::Query
                | Pending::ForgetAllQuery
                | Pending::RefusedQuery
                | Pending::FunctionCall
                | Pending::Deallocated(_)
        )
    }

    /// Carries an error of `Expect::raises`.
    fn raises(self) -> bool {
        matches!(self, Pending::Raise | Pending::RefusedQuery)
    }

    /// Draws no reply at all (see [`Pending::CopyEnd`], [`Pending::NameBound`]).
    fn is_marker(self) -> bool {
        matches!(
            self,
            Pending::CopyEnd | Pending::NameBound(_) | Pending::NameClosed(_)
        )
    }

    /// An error before this message's reply changes which statements the
    /// client or the server has.
    fn unsettles_statements(self) -> bool {
        matches!(
            self,
            Pending::Parse { id: Some(_), .. }
                | Pending::Close {
                    injected: Some(_),
                    ..
                }
                | Pending::NameBound(_)
                | Pending::NameClosed(_)
                | Pending::Deallocated(_)
                | Pending::ForgetAllQuery
                | Pending::ForgetAllExecute
        )
    }

    /// Markers and replies pgmux writes itself: nothing the server sends.
    fn draws_nothing_from_server(self) -> bool {
        self.is_marker() || matches!(self, Pending::Synth(_))
    }
}

/// What an error undid: statements a server did not prepare after all,
/// statements whose injected Close was skipped, and the client's name
/// operations that were skipped (in the order they were made).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Undone {
    pub statements: Vec<u64>,
    pub closes: Vec<u64>,
    pub names: Vec<NameOp>,
}

impl Undone {
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty() && self.closes.is_empty() && self.names.is_empty()
    }
}

/// A change to the client's names, by binding number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameOp {
    /// A named Parse bound it.
    Bound(u64),
    /// A Close or DEALLOCATE closed it.
    Closed(u64),
}

/// What to do with one server message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    Drop,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("server reply {got:?} does not match the request it should answer ({expected:?})")]
pub struct Desync {
    pub got: char,
    pub expected: Option<Pending>,
}

#[derive(Debug, Default)]
pub struct Expect {
    queue: VecDeque<Pending>,
    ready_owed: u32,
    /// The server is in COPY IN and the client has not ended its data:
    /// PostgreSQL ignores Sync (and Flush) meanwhile, so they owe nothing.
    in_copy: bool,
    /// An extended-protocol error left the server discarding every message
    /// until the client's next Sync, and that Sync has not been sent yet:
    /// whatever the client sends before it draws no reply at all.
    skipping: bool,
    /// The errors of the `Raise` and `RefusedQuery` entries, in queue order.
    raises: VecDeque<(&'static str, Box<str>)>,
    /// How many entries of `queue` are of each kind the per-message checks
    /// ask about, so that a long pipeline costs no scan per message.
    kinds: Kinds,
}

/// Counts of queue entries by kind (see [`Expect::statements_unsettled`]
/// and [`Expect::is_empty`]).
#[derive(Debug, Default)]
struct Kinds {
    markers: usize,
    unsettling: usize,
    ends: usize,
    forget_all_executes: usize,
}

impl Kinds {
    fn add(&mut self, p: Pending) {
        self.markers += usize::from(p.is_marker());
        self.unsettling += usize::from(p.unsettles_statements());
        self.ends += usize::from(p.ends_with_ready());
        self.forget_all_executes += usize::from(p == Pending::ForgetAllExecute);
    }

    fn remove(&mut self, p: Pending) {
        self.markers -= usize::from(p.is_marker());
        self.unsettling -= usize::from(p.unsettles_statements());
        self.ends -= usize::from(p.ends_with_ready());
        self.forget_all_executes -= usize::from(p == Pending::ForgetAllExecute);
    }
}

impl Expect {
    pub fn push(&mut self, p: Pending) {
        debug_assert!(
            !self.skipping || p == Pending::Sync,
            "{p:?} pushed while the server skips to Sync (see `skipping`)"
        );
        match p {
            Pending::Sync if self.in_copy => return,
            Pending::Sync => self.skipping = false,
            Pending::CopyEnd if self.in_copy => {
                self.in_copy = false;
                return;
            }
            _ => {}
        }
        if p.ends_with_ready() {
            self.ready_owed += 1;
        }
        self.kinds.add(p);
        self.queue.push_back(p);
    }

    /// Take the front entry off (with its error, if it carries one).
    fn pop(&mut self) -> Option<Pending> {
        let p = self.queue.pop_front()?;
        self.kinds.remove(p);
        if self.queue.is_empty() && self.queue.capacity() > 1024 {
            // A long pipeline is over: the server keeps this queue for
            // life, so it gives the memory back rather than keep the peak.
            self.queue = VecDeque::new();
        }
        if p.raises() {
            self.raises.pop_front();
        }
        Some(p)
    }

    fn skip_markers(&mut self) {
        while self.queue.front().is_some_and(|p| p.is_marker()) {
            self.pop();
        }
    }

    /// Which statements the client and the server have depends on replies
    /// to an earlier request (one closed by a Sync, or a simple Query) that
    /// have not arrived: an error there would change it (PostgreSQL confines
    /// that error's skipping to the earlier request), and a statement that
    /// may drop every prepared statement changes it when it runs. A message
    /// whose rewriting depends on statement names must wait for those
    /// replies, which the server sends without further word from the
    /// client. Within one request no wait is needed: an error skips
    /// everything after it in that request anyway.
    ///
    /// An Execute that may drop every statement is waited for even within
    /// its request (pgmux sends a Flush behind it, so its reply comes).
    pub fn statements_unsettled(&self) -> bool {
        // Counted, so the usual answer takes no scan (this is asked for
        // every message of a pipeline).
        if self.kinds.forget_all_executes > 0 {
            return true;
        }
        if self.kinds.unsettling == 0 || self.kinds.ends == 0 {
            return false;
        }
        let last_end = self.queue.iter().rposition(|p| p.ends_with_ready());
        self.queue.iter().enumerate().any(|(i, p)| {
            *p == Pending::ForgetAllExecute
                || (last_end.is_some_and(|end| i <= end) && p.unsettles_statements())
        })
    }

    /// The server entered COPY IN: Syncs the client sent after the COPY
    /// started and before its data ended are ignored by the server.
    fn copy_started(&mut self) {
        let mut i = 1;
        while i < self.queue.len() {
            match self.queue[i] {
                Pending::CopyEnd => {
                    self.queue.remove(i);
                    self.kinds.remove(Pending::CopyEnd);
                    return;
                }
                Pending::Sync => {
                    self.queue.remove(i);
                    self.kinds.remove(Pending::Sync);
                    self.ready_owed -= 1;
                }
                _ => i += 1,
            }
        }
        self.in_copy = true;
    }

    /// Nothing is owed and the server is not waiting for a Sync to end an
    /// error (see [`Expect::skipping`]).
    pub fn is_empty(&self) -> bool {
        !self.skipping && self.queue.len() == self.kinds.markers
    }

    /// The server discards what the client sends until its next Sync (an
    /// extended-protocol error whose Sync the client has not sent yet).
    /// Such messages must not be pushed: they will never be answered.
    pub fn skipping(&self) -> bool {
        self.skipping
    }

    /// Something sent to the server is not closed by a Sync (or a simple
    /// Query or FunctionCall): without one more Sync, the server would not
    /// finish on its own.
    pub fn open_tail(&self) -> bool {
        self.skipping
            || self
                .queue
                .iter()
                .rev()
                .find(|p| !p.draws_nothing_from_server())
                .is_some_and(|p| !p.ends_with_ready())
    }

    /// Entries queued (replies owed, and markers).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// ReadyForQuery messages still owed.
    pub fn ready_owed(&self) -> u32 {
        self.ready_owed
    }

    /// The next reply pgmux must send itself, if it is due now: the tag of
    /// an empty-bodied message (ParseComplete, CloseComplete).
    pub fn take_synth(&mut self) -> Option<u8> {
        self.skip_markers();
        let canned = match self.queue.front() {
            Some(Pending::Synth(tag)) => *tag,
            _ => return None,
        };
        self.pop();
        Some(canned)
    }

    /// The managed statement the reply due next is about (a Bind or a
    /// statement Describe), for an error that names no statement itself.
    pub fn statement_at_front(&mut self) -> Option<u64> {
        self.skip_markers();
        match self.queue.front() {
            Some(Pending::Bind { id } | Pending::Describe { id }) => *id,
            _ => None,
        }
    }

    /// An earlier request (closed by a Sync, or a simple Query) still owes
    /// replies: whatever it does, the transaction status may change.
    pub fn closed_request_pending(&self) -> bool {
        self.ready_owed > 0
    }

    /// The client's `DEALLOCATE` whose reply is due next (its binding).
    pub fn deallocation_at_front(&mut self) -> Option<u64> {
        self.skip_markers();
        match self.queue.front() {
            Some(Pending::Deallocated(binding)) => Some(*binding),
            _ => None,
        }
    }

    /// Owe the error `code`/`message` in place of a client message (see
    /// [`Pending::Raise`]).
    pub fn push_raise(&mut self, code: &'static str, message: &str) {
        self.push_carrying(Pending::Raise, code, message);
    }

    /// Owe the error `code`/`message` for a simple Query pgmux refused,
    /// then its ReadyForQuery (see [`Pending::RefusedQuery`]).
    pub fn push_refusal(&mut self, code: &'static str, message: &str) {
        self.push_carrying(Pending::RefusedQuery, code, message);
    }

    fn push_carrying(&mut self, p: Pending, code: &'static str, message: &str) {
        self.push(p);
        if self.queue.back() == Some(&p) {
            self.raises.push_back((code, message.into()));
        }
    }

    /// The reply due next is the error pgmux made the server raise: the
    /// SQLSTATE and message the client is to see instead.
    pub fn raise_at_front(&mut self) -> Option<(&'static str, &str)> {
        self.skip_markers();
        if !self.queue.front().is_some_and(|p| p.raises()) {
            return None;
        }
        self.raises
            .front()
            .map(|(code, message)| (*code, &**message))
    }

    /// Account for one server message (any due `Synth` taken first).
    /// What a failed or skipped Parse leaves undone goes to `undone`.
    pub fn on_reply(&mut self, tag: u8, undone: &mut Undone) -> Result<Verdict, Desync> {
        self.skip_markers();
        let front = self.queue.front().copied();
        let desync = || Desync {
            got: tag as char,
            expected: front,
        };
        let verdict = match tag {
            // Asynchronous or informational: they belong to no request.
            b'N' | b'S' | b'A' => Verdict::Forward,
            b'E' => {
                let simple = |p: Pending| {
                    matches!(
                        p,
                        Pending::Query
                            | Pending::ForgetAllQuery
                            | Pending::RefusedQuery
                            | Pending::FunctionCall
                            | Pending::Deallocated(_)
                    )
                };
                if !front.is_some_and(simple) {
                    // The server skips everything up to the next Sync, a
                    // Query or FunctionCall sent before it included; if the
                    // client has not sent that Sync yet, what it sends until
                    // then is skipped too. An error also ends a COPY.
                    self.in_copy = false;
                    self.skipping = true;
                    while let Some(p) = self.queue.front().copied() {
                        if p == Pending::Sync {
                            self.skipping = false;
                            break;
                        }
                        match p {
                            Pending::Parse { id: Some(id), .. } => undone.statements.push(id),
                            Pending::NameBound(binding) => {
                                undone.names.push(NameOp::Bound(binding))
                            }
                            Pending::NameClosed(binding) | Pending::Deallocated(binding) => {
                                undone.names.push(NameOp::Closed(binding))
                            }
                            Pending::Close {
                                injected: Some(id), ..
                            } => undone.closes.push(id),
                            _ => {}
                        }
                        if p.ends_with_ready() {
                            self.ready_owed -= 1;
                        }
                        self.pop();
                    }
                }
                Verdict::Forward
            }
            b'Z' => match front {
                Some(p) if p.ends_with_ready() => {
                    self.pop();
                    self.ready_owed -= 1;
                    // Whatever COPY there was is over.
                    self.in_copy = false;
                    Verdict::Forward
                }
                _ => return Err(desync()),
            },
            // ParseComplete, BindComplete, CloseComplete answer exactly the
            // message at the front; replies to injected ones are dropped.
            b'1' | b'2' | b'3' => {
                let swallow = match (tag, front) {
                    (b'1', Some(Pending::Parse { swallow, .. }))
                    | (b'3', Some(Pending::Close { swallow, .. })) => swallow,
                    (b'2', Some(Pending::Bind { .. })) => false,
                    _ => return Err(desync()),
                };
                self.pop();
                if swallow {
                    Verdict::Drop
                } else {
                    Verdict::Forward
                }
            }
            b'T' | b'n' => {
                if matches!(front, Some(Pending::Describe { .. })) {
                    self.pop();
                }
                Verdict::Forward
            }
            b'G' => {
                self.copy_started();
                Verdict::Forward
            }
            b'C' | b'I' | b's' => match front {
                Some(Pending::Execute | Pending::ForgetAllExecute) => {
                    self.pop();
                    Verdict::Forward
                }
                _ => Verdict::Forward,
            },
            _ => Verdict::Forward,
        };
        Ok(verdict)
    }
}
