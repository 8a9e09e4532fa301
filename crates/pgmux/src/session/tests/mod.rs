//! Tests of the protocol flows, pure state machines fed bytes as the relay
//! would feed them: [`expect`] the reply accounting alone,
//! [`read_boundaries`] both flows however reads cut the stream,
//! [`statement_names`] transaction mode's name rewriting, and
//! [`protocol_props`] the property that a client through pgmux sees what a
//! direct connection shows, against a model of PostgreSQL ([`pg_model`]),
//! with random client streams ([`steps`]) and the flows linked to the
//! model ([`link`]). Here: the fixtures several of them share.

mod expect;
mod link;
mod pg_model;
mod protocol_props;
mod read_boundaries;
mod statement_names;
mod steps;

use bytes::BytesMut;
use pgmux_wire::frame::write_message;

use crate::prepared::{ClientStatements, ServerStatements, StatementCache};
use crate::session::flow::client_flow::{ClientFlow, Statements};
use crate::session::flow::expect::Expect;
use crate::session::flow::retry::Retry;

/// Append one message (`tag`, `body`) to `out`.
fn msg(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    let mut b = BytesMut::new();
    write_message(&mut b, tag, |m| m.extend_from_slice(body));
    out.extend_from_slice(&b);
}

/// A client's statement maps, a server's, and the reply queue between them,
/// for driving the client flow by hand.
struct Rig {
    cache: StatementCache,
    client: ClientStatements,
    server: ServerStatements,
    expect: Expect,
    pinned: bool,
}

impl Rig {
    fn new() -> Rig {
        Rig {
            cache: StatementCache::default(),
            client: ClientStatements::default(),
            server: ServerStatements::default(),
            expect: Expect::default(),
            pinned: false,
        }
    }

    /// The client prepares `name` as `sql` (Parse, Sync); what it drew
    /// from the server is taken as answered.
    fn prepare(&mut self, name: &str, sql: &str) {
        let mut parse = Vec::new();
        msg(&mut parse, b'P', format!("{name}\0{sql}\0\0\0").as_bytes());
        msg(&mut parse, b'S', b"");
        self.send(&parse);
        self.expect = Expect::default();
    }

    /// The statement maps as the flow gets them, and the reply queue.
    fn statements(&mut self) -> (Statements<'_>, &mut Expect) {
        let st = Statements {
            cache: &self.cache,
            client: &mut self.client,
            server: &mut self.server,
            capacity: 200,
            client_budget: 1 << 20,
            pinned: self.pinned,
            server_status: b'I',
        };
        (st, &mut self.expect)
    }

    /// The bytes sent to the server, and when the batch may be sent again.
    /// Earlier requests whose replies this one would wait for are taken as
    /// answered, successfully.
    fn send(&mut self, data: &[u8]) -> (Vec<u8>, Retry) {
        if self.expect.statements_unsettled() {
            self.expect = Expect::default();
        }
        let (st, expect) = self.statements();
        let batch = ClientFlow::new(1 << 20, true)
            .process(data, expect, Some(st))
            .unwrap();
        assert_eq!(batch.consumed, data.len());
        let sent = batch.edited.map_or(data.to_vec(), |e| e.to_vec());
        (sent, batch.retry)
    }
}
