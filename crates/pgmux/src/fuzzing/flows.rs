//! The protocol flows ([`ClientFlow`], [`ServerFlow`] and the [`Expect`]
//! account between them) driven as the relay drives them
//! (`session/relay/linked.rs`), by a script of the fuzzer's: client
//! messages and server messages (framed, or raw bytes), delivered in
//! pieces of its choosing, interleaved as it likes. Session or transaction
//! mode (statement names rewritten, under a small LRU capacity and name
//! budget so eviction happens), pinned or not, under several size caps.
//!
//! A flow error ends the run, as it ends the session. Until then, asserted
//! after every pass: each pass consumes no more than it was given; the
//! account stays consistent (no more ReadyForQuery owed than entries, no
//! counter underflow, which the fuzz build's overflow checks catch) and
//! bounded by what the client sent; no server holds more statements than
//! its capacity; a batch never counts more idle ReadyForQuery than
//! ReadyForQuery. And whenever a flow stands at a message boundary,
//! everything pgmux has sent on that side so far is whole messages.

use bytes::{Buf, BytesMut};
use pgmux_wire::frame::{peek_header, write_message, DEFAULT_MAX_MESSAGE_SIZE, HEADER_LEN};

use super::Input;
use crate::params::ParamMap;
use crate::prepared::{ClientStatements, ServerStatements, StatementCache};
use crate::session::flow::client_flow::{ClientFlow, Statements};
use crate::session::flow::expect::Expect;
use crate::session::flow::retry::{Retry, REPLAY_LIMIT};
use crate::session::flow::server_flow::{Observers, ServerFlow};

/// The client flow alone: whenever the script says the server answers,
/// everything owed is taken as answered (as the session tests' rig does).
pub fn client_flow(data: &[u8]) {
    Rig::run(data, false);
}

/// Both flows linked, the server's side of the conversation fuzzed too.
pub fn server_flow(data: &[u8]) {
    Rig::run(data, true);
}

struct Rig {
    linked: bool,
    rewrite: bool,
    pinned: bool,
    capacity: usize,
    client_budget: usize,
    /// Idle servers pgmux has to a database a DROP DATABASE names.
    idle_to_dropped: u32,
    own_pid: Option<(u32, u32)>,
    client_flow: ClientFlow,
    server_flow: ServerFlow,
    expect: Expect,
    cache: StatementCache,
    client_statements: ClientStatements,
    server_statements: ServerStatements,
    client_params: ParamMap,
    server_params: ParamMap,
    /// What the client has written that pgmux has not read yet, and what
    /// it read and has not handled.
    client_unread: Vec<u8>,
    cbuf: BytesMut,
    /// The same on the server's side.
    server_unread: Vec<u8>,
    sbuf: BytesMut,
    /// Bytes of the client's pgmux has read.
    client_read: usize,
    to_server: Vec<u8>,
    to_client: Vec<u8>,
    /// How much of `to_server` / `to_client` is known to be whole
    /// messages (checked once: the check stays linear in the output).
    server_whole: usize,
    client_whole: usize,
    /// The request kept for a resend, and whether one was made.
    kept: Option<Vec<u8>>,
    replay_used: bool,
    terminated: bool,
}

/// The session ended (a flow refused the bytes, or the client left).
struct Ended;

impl Rig {
    fn run(data: &[u8], linked: bool) {
        let mut input = Input::new(data);
        let config = input.byte();
        let max = [1 << 20, 4096, DEFAULT_MAX_MESSAGE_SIZE, 64][usize::from(config >> 2) & 3];
        let mut rig = Rig {
            linked,
            rewrite: config & 1 != 0,
            pinned: config & 2 != 0,
            capacity: usize::from(input.byte() % 8) + 1,
            client_budget: usize::from(input.u16()) * 4,
            idle_to_dropped: u32::from(config >> 6),
            own_pid: (config & 0x10 != 0).then_some((7, 9)),
            client_flow: ClientFlow::new(max, config & 1 != 0),
            server_flow: ServerFlow::new(max),
            expect: Expect::default(),
            cache: StatementCache::default(),
            client_statements: ClientStatements::default(),
            server_statements: ServerStatements::default(),
            client_params: ParamMap::default(),
            server_params: ParamMap::default(),
            client_unread: Vec::new(),
            cbuf: BytesMut::new(),
            server_unread: Vec::new(),
            sbuf: BytesMut::new(),
            client_read: 0,
            to_server: Vec::new(),
            to_client: Vec::new(),
            server_whole: 0,
            client_whole: 0,
            kept: None,
            replay_used: false,
            terminated: false,
        };
        while !input.is_empty() && !rig.terminated {
            if rig.step(&mut input).is_err() {
                return;
            }
            rig.check();
        }
    }

    /// One step of the script.
    fn step(&mut self, input: &mut Input<'_>) -> Result<(), Ended> {
        match input.byte() % 8 {
            0 => {
                let tag = input.byte();
                framed(&mut self.client_unread, tag, input.piece());
            }
            1 if self.linked => {
                let tag = input.byte();
                framed(&mut self.server_unread, tag, input.piece());
            }
            2 => {
                let n = usize::from(input.byte());
                self.read_client(n)?;
            }
            3 if self.linked => {
                let n = usize::from(input.byte());
                self.read_server(n)?;
            }
            4 => self.client_unread.extend_from_slice(input.piece()),
            5 if self.linked => self.server_unread.extend_from_slice(input.piece()),
            // Everything sent so far arrives.
            6 | 7 => {
                self.read_client(0)?;
                if self.linked {
                    self.read_server(0)?;
                }
            }
            // The client flow alone: the server answered everything owed.
            _ => {
                self.expect = Expect::default();
                self.read_client(usize::from(input.byte()))?;
            }
        }
        Ok(())
    }

    /// pgmux reads up to `n` more bytes of the client's (all for 0).
    fn read_client(&mut self, n: usize) -> Result<(), Ended> {
        let n = if n == 0 {
            self.client_unread.len()
        } else {
            n.min(self.client_unread.len())
        };
        self.cbuf.extend_from_slice(&self.client_unread[..n]);
        self.client_unread.drain(..n);
        self.client_read += n;
        while self.client_pass()? && !self.cbuf.is_empty() && !self.terminated {}
        Ok(())
    }

    /// One pass over the client's bytes, as `forward_client_pass`; whether
    /// pgmux wrote replies of its own (which may let waiting bytes go).
    fn client_pass(&mut self) -> Result<bool, Ended> {
        let idle_before = self.expect.is_empty();
        let statements = self.rewrite.then_some(Statements {
            cache: &self.cache,
            client: &mut self.client_statements,
            server: &mut self.server_statements,
            capacity: self.capacity,
            client_budget: self.client_budget,
            pinned: self.pinned,
            server_status: self.server_flow.status,
        });
        let batch = self
            .client_flow
            .process(&self.cbuf, &mut self.expect, statements)
            .map_err(|_| Ended)?;
        assert!(batch.consumed <= self.cbuf.len());
        self.server_flow.watch.merge(&batch.watch);
        let retry = match batch.dropped_database {
            Some(_) => Retry::IfDatabaseInUse,
            None => batch.retry,
        };
        let replayable = retry != Retry::Never
            && !self.replay_used
            && idle_before
            && self.server_flow.status == b'I'
            && batch.consumed <= REPLAY_LIMIT;
        self.server_flow.retry_armed = if replayable { retry } else { Retry::Never };
        self.to_server.extend_from_slice(batch.output(&self.cbuf));
        self.kept = replayable.then(|| self.cbuf[..batch.consumed].to_vec());
        self.cbuf.advance(batch.consumed);
        if batch.copy_ended {
            self.server_flow.copy_in = false;
        }
        if batch.terminate {
            self.terminated = true;
            self.cbuf.clear();
        }
        let mut due = BytesMut::new();
        if self.server_flow.at_boundary() {
            self.server_flow.due_synths(&mut self.expect, &mut due);
        }
        self.to_client.extend_from_slice(&due);
        Ok(!due.is_empty())
    }

    /// pgmux reads up to `n` more bytes of the server's (all for 0), as
    /// `forward_server_bytes`.
    fn read_server(&mut self, n: usize) -> Result<(), Ended> {
        let n = if n == 0 {
            self.server_unread.len()
        } else {
            n.min(self.server_unread.len())
        };
        self.sbuf.extend_from_slice(&self.server_unread[..n]);
        self.server_unread.drain(..n);
        let mut observers = Observers {
            server_params: &mut self.server_params,
            client_params: Some(&mut self.client_params),
            statements: &mut self.server_statements,
            client_statements: self.rewrite.then_some(&mut self.client_statements),
            cache: self.rewrite.then_some(&self.cache),
            own_pid: self.own_pid,
        };
        let mut batch = self
            .server_flow
            .process(&self.sbuf, &mut self.expect, &mut observers)
            .map_err(|_| Ended)?;
        assert!(batch.consumed <= self.sbuf.len());
        assert!(batch.ready_idle <= batch.ready);
        self.to_client.extend_from_slice(batch.output(&self.sbuf));
        self.sbuf.advance(batch.consumed);
        if batch.retry {
            let in_use_by = batch.database_in_use_by.unwrap_or(0);
            if batch.database_in_use_by.is_none() || in_use_by <= self.idle_to_dropped {
                // The held-back request goes out again, ahead of anything
                // the client sent since.
                if let Some(again) = self.kept.take() {
                    let mut joined = BytesMut::from(&again[..]);
                    joined.extend_from_slice(&self.cbuf);
                    self.cbuf = joined;
                }
                self.replay_used = true;
            } else if let Some(held) = batch.held.take() {
                // Someone else uses the database: the refusal stands.
                self.kept = None;
                self.to_client.extend_from_slice(&held);
            }
        } else if self.expect.is_empty() {
            self.kept = None;
        }
        if !self.cbuf.is_empty() && !self.terminated {
            // Client bytes that waited for these replies may go now.
            while self.client_pass()? && !self.cbuf.is_empty() && !self.terminated {}
        }
        Ok(())
    }

    /// What must hold between any two steps.
    fn check(&mut self) {
        let owed = self.expect.ready_owed() as usize;
        assert!(
            owed <= self.expect.len(),
            "{owed} ReadyForQuery owed, {} entries",
            self.expect.len()
        );
        // Each client message is five bytes at least and draws a handful
        // of entries at most; pgmux's own Closes are bounded by capacity.
        let bound = self.client_read + self.to_server.len() + 4 * self.capacity + 16;
        assert!(
            self.expect.len() <= bound,
            "{} entries owed",
            self.expect.len()
        );
        assert!(self.server_statements.len() <= self.capacity);
        if self.client_flow.at_boundary() {
            self.server_whole = assert_whole(&self.to_server, self.server_whole, "to the server");
        }
        if self.server_flow.at_boundary() {
            self.client_whole = assert_whole(&self.to_client, self.client_whole, "to the client");
        }
    }
}

/// Append one message.
fn framed(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    let mut msg = BytesMut::new();
    write_message(&mut msg, tag, |b| b.extend_from_slice(body));
    out.extend_from_slice(&msg);
}

/// `bytes` is whole messages, nothing torn at the end, given that it was
/// up to `from`; returns its length, the new such point.
fn assert_whole(bytes: &[u8], from: usize, side: &str) -> usize {
    let mut pos = from;
    while let Ok(Some((_, len))) = peek_header(&bytes[pos..], usize::MAX) {
        if pos + HEADER_LEN + len > bytes.len() {
            break;
        }
        pos += HEADER_LEN + len;
    }
    assert_eq!(pos, bytes.len(), "a torn message {side}");
    pos
}
