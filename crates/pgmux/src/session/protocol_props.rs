//! pgmux's two flows against a model of PostgreSQL ([`super::pg_model`]):
//! a random client stream goes once straight to the model (what a direct
//! connection would answer) and once through the client flow, the model
//! and the server flow, cut into random reads on both sides and
//! interleaved at random, as the relay would move it. The client must see
//! the same replies either way, and the reply accounting must end where
//! the server ends: nothing owed once it is idle.

use bytes::{Buf, BytesMut};
use pgmux_wire::frame::{peek_header, write_message, HEADER_LEN};
use proptest::prelude::*;

use super::client_flow::{ClientFlow, Statements};
use super::expect::Expect;
use super::pg_model::{PgModel, Sql};
use super::server_flow::{Observers, ServerFlow};
use crate::params::ParamMap;
use crate::prepared::{ClientStatements, ServerStatements, StatementCache};

const STATEMENT_NAMES: [&str; 3] = ["", "s1", "s2"];
const PORTAL_NAMES: [&str; 2] = ["", "p1"];

/// One thing a client sends.
#[derive(Debug, Clone)]
pub(super) enum Step {
    Parse {
        name: usize,
        sql: usize,
    },
    Bind {
        portal: usize,
        name: usize,
    },
    Describe {
        statement: bool,
        name: usize,
    },
    Execute {
        portal: usize,
        max_rows: u32,
    },
    Close {
        statement: bool,
        name: usize,
    },
    Sync,
    Flush,
    Query {
        sql: usize,
    },
    Deallocate {
        name: usize,
    },
    FunctionCall,
    /// COPY data rows, then CopyDone (or CopyFail).
    CopyData {
        rows: u8,
        fail: bool,
    },
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn sql_text(i: usize) -> &'static str {
    Sql::ALL[i % Sql::ALL.len()].1
}

impl Step {
    fn encode(&self, out: &mut BytesMut) {
        let mut body = Vec::new();
        let tag = match *self {
            Step::Parse { name, sql } => {
                cstr(&mut body, STATEMENT_NAMES[name]);
                cstr(&mut body, sql_text(sql));
                body.extend_from_slice(&0i16.to_be_bytes());
                b'P'
            }
            Step::Bind { portal, name } => {
                cstr(&mut body, PORTAL_NAMES[portal]);
                cstr(&mut body, STATEMENT_NAMES[name]);
                body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
                b'B'
            }
            Step::Describe { statement, name } => {
                if statement {
                    body.push(b'S');
                    cstr(&mut body, STATEMENT_NAMES[name]);
                } else {
                    body.push(b'P');
                    cstr(&mut body, PORTAL_NAMES[name % 2]);
                }
                b'D'
            }
            Step::Execute { portal, max_rows } => {
                cstr(&mut body, PORTAL_NAMES[portal]);
                body.extend_from_slice(&max_rows.to_be_bytes());
                b'E'
            }
            Step::Close { statement, name } => {
                if statement {
                    body.push(b'S');
                    cstr(&mut body, STATEMENT_NAMES[name]);
                } else {
                    body.push(b'P');
                    cstr(&mut body, PORTAL_NAMES[name % 2]);
                }
                b'C'
            }
            Step::Sync => b'S',
            Step::Flush => b'H',
            Step::Query { sql } => {
                cstr(&mut body, sql_text(sql));
                b'Q'
            }
            Step::Deallocate { name } => {
                let name = STATEMENT_NAMES[1 + name % 2];
                cstr(&mut body, &format!("{}{name}", Sql::Deallocate.text()));
                b'Q'
            }
            Step::FunctionCall => {
                body.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
                b'F'
            }
            Step::CopyData { rows, fail } => {
                for _ in 0..rows {
                    write_message(out, b'd', |b| b.extend_from_slice(b"row\n"));
                }
                if fail {
                    write_message(out, b'f', |b| b.extend_from_slice(b"no\0"));
                } else {
                    write_message(out, b'c', |_| {});
                }
                return;
            }
        };
        write_message(out, tag, |b| b.extend_from_slice(&body));
    }
}

pub(super) fn step() -> impl Strategy<Value = Step> {
    let sql = 0..Sql::ALL.len();
    prop_oneof![
        4 => (0..3usize, sql.clone()).prop_map(|(name, sql)| Step::Parse { name, sql }),
        3 => (0..2usize, 0..3usize).prop_map(|(portal, name)| Step::Bind { portal, name }),
        2 => (any::<bool>(), 0..3usize).prop_map(|(statement, name)| Step::Describe { statement, name }),
        3 => (0..2usize, prop_oneof![Just(0u32), Just(2u32)])
            .prop_map(|(portal, max_rows)| Step::Execute { portal, max_rows }),
        1 => (any::<bool>(), 0..3usize).prop_map(|(statement, name)| Step::Close { statement, name }),
        4 => Just(Step::Sync),
        1 => Just(Step::Flush),
        2 => sql.prop_map(|sql| Step::Query { sql }),
        1 => (0..2usize).prop_map(|name| Step::Deallocate { name }),
        1 => Just(Step::FunctionCall),
        2 => (0..3u8, any::<bool>()).prop_map(|(rows, fail)| Step::CopyData { rows, fail }),
    ]
}

/// How bytes move: `(true, n)` hands pgmux up to n more bytes from the
/// client, `(false, n)` up to n more from the server.
pub(super) fn moves() -> impl Strategy<Value = Vec<(bool, usize)>> {
    proptest::collection::vec((any::<bool>(), 1..64usize), 0..120)
}

/// One reply, as compared: its tag, and its SQLSTATE or its body.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Reply {
    Error(String),
    Other(char, Vec<u8>),
}

/// The replies in `bytes`, without the model's chatter (notices and other
/// sessions' notifications, which appear at random), and how much chatter
/// there was.
pub(super) fn replies(bytes: &[u8]) -> (Vec<Reply>, usize) {
    let mut out = Vec::new();
    let mut chatter = 0;
    let mut pos = 0;
    while let Ok(Some((tag, len))) = peek_header(&bytes[pos..], usize::MAX) {
        let body = &bytes[pos + HEADER_LEN..pos + HEADER_LEN + len];
        if PgModel::is_chatter(tag, body) {
            chatter += 1;
            pos += HEADER_LEN + len;
            continue;
        }
        out.push(if tag == b'E' {
            Reply::Error(
                pgmux_wire::backend::error_field(body, b'C')
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .unwrap_or_default(),
            )
        } else {
            Reply::Other(tag as char, body.to_vec())
        });
        pos += HEADER_LEN + len;
    }
    assert_eq!(pos, bytes.len(), "a torn message at the end");
    (out, chatter)
}

/// The client's stream. A client sends nothing but COPY data while the
/// server reads COPY data (libpq refuses to), so a step that starts a COPY
/// is followed by its data where the steps do not say so already.
pub(super) fn encode(steps: &[Step]) -> Vec<u8> {
    let mut out = BytesMut::new();
    let mut pg = PgModel::new(7, 0);
    for (i, s) in steps.iter().enumerate() {
        let start = out.len();
        s.encode(&mut out);
        pg.feed(&out[start..]);
        let data_follows = matches!(steps.get(i + 1), Some(Step::CopyData { .. }));
        if pg.copying() && !data_follows {
            let start = out.len();
            Step::CopyData {
                rows: 1,
                fail: false,
            }
            .encode(&mut out);
            pg.feed(&out[start..]);
        }
    }
    out.to_vec()
}

/// What a direct connection answers.
pub(super) fn direct(stream: &[u8], noise: u64) -> Vec<u8> {
    let mut pg = PgModel::new(7, noise);
    pg.feed(stream);
    pg.out.to_vec()
}

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
            pinned: false,
            server_status: self.server_flow.status,
        });
        let batch = self
            .client_flow
            .process(&self.cbuf, &mut self.expect, statements)
            .expect("the client stream is well-formed");
        let sent = match &batch.edited {
            Some(edited) => edited.to_vec(),
            None => self.cbuf[..batch.consumed].to_vec(),
        };
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
        match &batch.edited {
            Some(edited) => self.to_client.extend_from_slice(edited),
            None => self
                .to_client
                .extend_from_slice(&self.sbuf[..batch.consumed]),
        }
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

/// Cases per run: 2,000 in the normal suite; `PGMUX_PROTOCOL_CASES` asks
/// for more (a long run before a release, say).
fn cases() -> u32 {
    std::env::var("PGMUX_PROTOCOL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// The property: whatever a client sends and however the bytes are
    /// cut, it sees what a direct connection would show, and pgmux owes
    /// nothing exactly when the server waits for a new request.
    #[test]
    fn clients_see_what_postgresql_would_show(
        steps in proptest::collection::vec(step(), 1..40),
        moves in moves(),
        rewrite in any::<bool>(),
        noise in any::<u64>(),
    ) {
        let stream = encode(&steps);
        let (expected, _) = replies(&direct(&stream, noise));
        let mut link = Link::new(rewrite, noise);
        link.run(&stream, &moves);
        prop_assert!(link.cbuf.is_empty() && link.sbuf.is_empty());
        let (seen, chatter) = replies(&link.to_client);
        prop_assert_eq!(seen, expected);
        prop_assert_eq!(chatter, link.pg.chatter, "notices or notifications lost or doubled");
        let settled = link.expect.is_empty() && link.server_flow.at_ready;
        prop_assert_eq!(
            settled,
            link.pg.idle(),
            "pgmux thinks the server is {}",
            if settled { "idle" } else { "busy" }
        );
    }
}

/// The client's stream must come back as PostgreSQL would answer it;
/// `pauses` lists step counts after which pgmux reads everything the
/// server has sent so far before the client sends more.
fn assert_transparent(steps: &[Step], pauses: &[usize], noise: u64) {
    let stream = encode(steps);
    let (expected, _) = replies(&direct(&stream, noise));
    for rewrite in [true, false] {
        let mut link = Link::new(rewrite, noise);
        let mut moves = Vec::new();
        let mut sent = 0;
        for &after in pauses {
            let upto = encode(&steps[..after]).len();
            moves.push((true, upto - sent));
            moves.push((false, usize::MAX));
            sent = upto;
        }
        link.run(&stream, &moves);
        let (seen, chatter) = replies(&link.to_client);
        assert_eq!(seen, expected, "rewrite = {rewrite}");
        assert_eq!(chatter, link.pg.chatter);
        assert_eq!(
            link.expect.is_empty() && link.server_flow.at_ready,
            link.pg.idle()
        );
    }
}

// The vocabulary's indexes (see `Sql::ALL`) and names.
const ONE: usize = 0;
const THREE: usize = 1;
const NODATA: usize = 2;
const BAD: usize = 3;
const BOOM: usize = 4;
const BEGIN: usize = 5;
const DEALLOCATE_ALL: usize = 11;
const UNNAMED: usize = 0;
const S1: usize = 1;
const S2: usize = 2;

fn parse(name: usize, sql: usize) -> Step {
    Step::Parse { name, sql }
}
fn bind(portal: usize, name: usize) -> Step {
    Step::Bind { portal, name }
}
fn execute(portal: usize) -> Step {
    Step::Execute {
        portal,
        max_rows: 0,
    }
}
fn describe_statement(name: usize) -> Step {
    Step::Describe {
        statement: true,
        name,
    }
}

/// Issue 14's psycopg script: after an error in a pipeline the client
/// sends more before its Sync; PostgreSQL answers only that Sync.
#[test]
fn an_aborted_pipeline_owes_nothing_until_its_sync() {
    let steps = [
        parse(UNNAMED, ONE),
        bind(0, UNNAMED),
        execute(0),
        parse(UNNAMED, BAD),
        bind(0, UNNAMED),
        execute(0),
        Step::Flush,
        parse(UNNAMED, ONE),
        bind(0, UNNAMED),
        execute(0),
        Step::Flush,
        Step::Sync,
        Step::Query { sql: ONE },
    ];
    assert_transparent(&steps, &[7], 0);
}

/// pgmux's own error in the client's name must not replace the client's
/// unnamed statement (it once used the unnamed statement to raise).
#[test]
fn a_refused_bind_leaves_the_unnamed_statement_alone() {
    let steps = [
        parse(UNNAMED, ONE),
        Step::Sync,
        bind(0, S1),
        Step::Sync,
        bind(0, UNNAMED),
        execute(0),
        Step::Sync,
    ];
    assert_transparent(&steps, &[], 0);
}

/// A CopyDone outside COPY draws nothing, and leaves nothing owed.
#[test]
fn a_stray_copy_done_owes_nothing() {
    assert_transparent(
        &[Step::CopyData {
            rows: 0,
            fail: false,
        }],
        &[],
        0,
    );
}

/// PostgreSQL parses a text before it finds the name taken.
#[test]
fn a_reused_name_with_a_bad_text_fails_on_the_text() {
    assert_transparent(&[parse(S2, BOOM), parse(S2, BAD), Step::Sync], &[], 0);
}

/// An error confines its skipping to its own request: a name whose Parse
/// it skipped is free in the next request, one it did not close stays.
#[test]
fn names_follow_what_an_earlier_request_really_did() {
    let skipped_parse = [
        bind(0, S1),
        parse(S1, ONE),
        Step::Sync,
        parse(S1, ONE),
        Step::Sync,
    ];
    assert_transparent(&skipped_parse, &[], 0);
    let skipped_closes = [
        parse(S1, BOOM),
        bind(0, UNNAMED),
        Step::Close {
            statement: true,
            name: S1,
        },
        parse(S1, ONE),
        Step::Close {
            statement: true,
            name: S1,
        },
        Step::Sync,
        describe_statement(S1),
        Step::Sync,
    ];
    assert_transparent(&skipped_closes, &[], 0);
}

/// DEALLOCATE ALL drops the client's names when it runs, whether sent as a
/// Query or run through a portal in the middle of a request.
#[test]
fn deallocate_all_frees_every_name() {
    let query = [
        parse(S1, ONE),
        Step::Sync,
        Step::Query {
            sql: DEALLOCATE_ALL,
        },
        parse(S1, ONE),
        Step::Sync,
    ];
    assert_transparent(&query, &[], 0);
    let portal = [
        parse(S1, ONE),
        parse(S2, DEALLOCATE_ALL),
        bind(1, S2),
        execute(1),
        parse(S1, THREE),
        Step::Sync,
    ];
    assert_transparent(&portal, &[], 0);
}

/// A reply pgmux writes itself waits while a server message is half
/// passed on (here another session's notification).
#[test]
fn a_canned_reply_never_splits_a_server_message() {
    let steps = [
        Step::FunctionCall,
        Step::CopyData {
            rows: 1,
            fail: true,
        },
        Step::CopyData {
            rows: 2,
            fail: false,
        },
        Step::Close {
            statement: true,
            name: S1,
        },
    ];
    let stream = encode(&steps);
    let noise = 586982017227115348;
    let (expected, _) = replies(&direct(&stream, noise));
    let mut link = Link::new(true, noise);
    link.run(
        &stream,
        &[(true, 18), (false, 38), (true, 37), (false, 9), (true, 1)],
    );
    assert_eq!(replies(&link.to_client).0, expected);
}

/// The client's DEALLOCATE of its own name still ends the implicit
/// transaction (and its portals), and is refused in a failed transaction.
#[test]
fn a_deallocate_pgmux_answers_moves_the_transaction_as_postgresql_would() {
    let ends_the_implicit_transaction = [
        parse(S1, BOOM),
        bind(1, S1),
        Step::Deallocate { name: 0 },
        execute(1),
        Step::Sync,
    ];
    assert_transparent(&ends_the_implicit_transaction, &[], 0);
    let refused_when_failed = [
        Step::Query { sql: BEGIN },
        parse(S1, BOOM),
        parse(S1, ONE),
        Step::Sync,
        Step::Deallocate { name: 0 },
        describe_statement(S1),
        Step::Sync,
    ];
    assert_transparent(&refused_when_failed, &[], 0);
}

/// In a failed transaction PostgreSQL refuses a Parse that pgmux could
/// otherwise answer itself (the server already has the text).
#[test]
fn a_known_text_is_refused_in_a_failed_transaction() {
    let steps = [
        Step::Query { sql: BEGIN },
        parse(S1, NODATA),
        Step::Sync,
        Step::Query { sql: BAD },
        parse(S2, NODATA),
        Step::Sync,
    ];
    assert_transparent(&steps, &[3], 0);
}

/// "May drop every statement" sticks until nothing earlier can skip what
/// would clear it: here a later unnamed Parse that an error skipped.
#[test]
fn a_skipped_parse_does_not_clear_what_the_unnamed_statement_may_do() {
    let steps = [
        parse(UNNAMED, DEALLOCATE_ALL),
        bind(0, S1),
        parse(UNNAMED, ONE),
        Step::Sync,
        parse(S2, ONE),
        bind(1, UNNAMED),
        execute(1),
        parse(S2, BOOM),
        Step::Sync,
    ];
    assert_transparent(&steps, &[], 0);
}

/// A ROLLBACK run earlier in the same request ends a failed transaction:
/// the client's DEALLOCATE after it is not refused.
#[test]
fn a_rollback_within_the_request_ends_the_failed_transaction() {
    let steps = [
        Step::Query { sql: BEGIN },
        parse(S1, 6), // commit
        execute(0),
        Step::Sync,
        bind(1, S1),
        execute(1),
        parse(S2, ONE),
        Step::Deallocate { name: 0 },
    ];
    assert_transparent(&steps, &[], 0);
}
