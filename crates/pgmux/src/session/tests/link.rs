//! pgmux's two flows between a client stream and the PostgreSQL model,
//! moved as the relay moves bytes, for [`super::protocol_props`].

use bytes::{Buf, BytesMut};

use super::pg_model::PgModel;
use crate::params::ParamMap;
use crate::prepared::{ClientStatements, ServerStatements, StatementCache};
use crate::session::flow::client_flow::{ClientFlow, Statements};
use crate::session::flow::expect::Expect;
use crate::session::flow::server_flow::{Observers, ServerFlow};

/// Everything on one side of pgmux for one linked client and server.
pub(super) struct Link {
    pub client_flow: ClientFlow,
    pub server_flow: ServerFlow,
    pub expect: Expect,
    pub cache: StatementCache,
    pub client_statements: ClientStatements,
    pub server_statements: ServerStatements,
    pub client_params: ParamMap,
    pub server_params: ParamMap,
    /// Transaction mode: names are rewritten.
    pub rewrite: bool,
    pub pg: PgModel,
    /// Client bytes pgmux has read and not yet handled.
    pub cbuf: BytesMut,
    /// Server bytes pgmux has read and not yet handled.
    pub sbuf: BytesMut,
    /// What the server sent that pgmux has not read yet.
    pub unread: BytesMut,
    /// What the client received.
    pub to_client: Vec<u8>,
}

impl Link {
    pub fn new(rewrite: bool, noise: u64) -> Link {
        Link {
            client_flow: ClientFlow::new(1 << 20, rewrite),
            server_flow: ServerFlow::new(1 << 20),
            expect: Expect::default(),
            cache: StatementCache::default(),
            client_statements: ClientStatements::default(),
            server_statements: ServerStatements::default(),
            client_params: ParamMap::default(),
            server_params: ParamMap::default(),
            rewrite,
            pg: PgModel::new(7, noise),
            cbuf: BytesMut::new(),
            sbuf: BytesMut::new(),
            unread: BytesMut::new(),
            to_client: Vec::new(),
        }
    }

    /// pgmux reads `bytes` from the client and forwards what it can, as
    /// the relay's `forward_client_bytes` does.
    pub fn read_client(&mut self, bytes: &[u8]) {
        self.cbuf.extend_from_slice(bytes);
        while self.client_pass() && !self.cbuf.is_empty() {}
    }

    /// One pass over the client's bytes; whether pgmux wrote replies of its
    /// own (which may let bytes that waited go on).
    fn client_pass(&mut self) -> bool {
        let statements = self.rewrite.then_some(Statements {
            cache: &self.cache,
            client: &mut self.client_statements,
            server: &mut self.server_statements,
            capacity: 200,
            client_budget: 1 << 20,
            pinned: false,
            server_status: self.server_flow.status,
        });
        let batch = self
            .client_flow
            .process(&self.cbuf, &mut self.expect, statements)
            .expect("the client stream is well-formed");
        let sent = batch.output(&self.cbuf).to_vec();
        self.cbuf.advance(batch.consumed);
        if batch.copy_ended {
            self.server_flow.copy_in = false;
        }
        self.pg.feed(&sent);
        self.unread.extend_from_slice(&self.pg.out.split());
        let mut due = BytesMut::new();
        if self.server_flow.at_boundary() {
            self.server_flow.due_synths(&mut self.expect, &mut due);
            self.to_client.extend_from_slice(&due);
        }
        !due.is_empty()
    }

    /// pgmux reads up to `n` bytes the server sent and forwards them, as
    /// the relay's `forward_server_bytes` does.
    pub fn read_server(&mut self, n: usize) {
        let n = n.min(self.unread.len());
        if n == 0 {
            return;
        }
        let read = self.unread.split_to(n);
        self.sbuf.extend_from_slice(&read);
        let mut observers = Observers {
            server_params: &mut self.server_params,
            client_params: Some(&mut self.client_params),
            statements: &mut self.server_statements,
            client_statements: Some(&mut self.client_statements),
            cache: Some(&self.cache),
            own_pid: None,
        };
        let batch = self
            .server_flow
            .process(&self.sbuf, &mut self.expect, &mut observers)
            .unwrap_or_else(|e| panic!("pgmux lost track of the server: {e}"));
        self.to_client.extend_from_slice(batch.output(&self.sbuf));
        self.sbuf.advance(batch.consumed);
        if !self.cbuf.is_empty() {
            // Client bytes that waited for these replies may go now.
            self.read_client(&[]);
        }
    }

    /// Move the client's stream through pgmux as `moves` say, then
    /// everything that is left.
    pub fn run(&mut self, stream: &[u8], moves: &[(bool, usize)]) {
        let mut sent = 0;
        for &(read_client, n) in moves {
            if read_client {
                let end = (sent + n).min(stream.len());
                self.read_client(&stream[sent..end]);
                sent = end;
            } else {
                self.read_server(n);
            }
        }
        self.read_client(&stream[sent..]);
        while !self.unread.is_empty() {
            self.read_server(usize::MAX);
        }
    }
}
