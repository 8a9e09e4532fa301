//! Both flows must give the same bytes and the same accounting however the
//! stream is cut into reads: property tests over random cut points.

use bytes::{Buf, BytesMut};
use pgmux_wire::frame::write_message;
use proptest::prelude::*;

use super::client_flow::{ClientFlow, Retry, Statements};
use super::expect::{Expect, Pending};
use super::server_flow::{Observers, ServerFlow};
use crate::params::ParamMap;
use crate::prepared::{ClientStatements, ServerStatements, StatementCache};

fn msg(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    let mut b = BytesMut::new();
    write_message(&mut b, tag, |m| m.extend_from_slice(body));
    out.extend_from_slice(&b);
}

/// A client batch: Parse s1, Bind s1, Execute, Sync, the same again under
/// the name s2, then a simple query with a large body.
fn client_stream() -> Vec<u8> {
    let mut v = Vec::new();
    for name in [b"s1", b"s2"] {
        msg(
            &mut v,
            b'P',
            &[&name[..], b"\0select $1::int\0\0\x01\0\0\0\x17"].concat(),
        );
        msg(
            &mut v,
            b'B',
            &[b"\0", &name[..], b"\0\0\0\0\x01\0\0\0\x011\0\0"].concat(),
        );
        msg(&mut v, b'E', b"\0\0\0\0\0");
        msg(&mut v, b'S', b"");
    }
    msg(
        &mut v,
        b'Q',
        &[b"select '".as_slice(), &[b'x'; 3000], b"'\0"].concat(),
    );
    v
}

fn run_client(data: &[u8], cuts: &[usize]) -> (Vec<u8>, u32) {
    let mut rig = Rig::new();
    let mut flow = ClientFlow::new(1 << 20, true);
    let mut buf = BytesMut::new();
    let mut sent = Vec::new();
    let mut owed = 0;
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::once(&data.len())) {
        let c = c.clamp(at, data.len());
        buf.extend_from_slice(&data[at..c]);
        at = c;
        loop {
            let (st, expect) = rig.statements();
            let batch = flow.process(&buf, expect, Some(st)).unwrap();
            match batch.edited {
                Some(e) => sent.extend_from_slice(&e),
                None => sent.extend_from_slice(&buf[..batch.consumed]),
            }
            buf.advance(batch.consumed);
            if buf.is_empty() || !rig.expect.statements_unsettled() {
                break;
            }
            // A later request waits for the earlier one's replies: take
            // them as arrived, all successful.
            owed += rig.expect.ready_owed();
            rig.expect = Expect::default();
        }
    }
    assert!(buf.is_empty() && flow.at_boundary());
    (sent, owed + rig.expect.ready_owed())
}

/// Replies to a batch where the first Parse was swallowed-injected:
/// ParseComplete (dropped), BindComplete, DataRow, CommandComplete, Ready.
fn server_stream() -> Vec<u8> {
    let mut v = Vec::new();
    msg(&mut v, b'1', b"");
    msg(&mut v, b'2', b"");
    msg(
        &mut v,
        b'D',
        &[&[0, 1, 0, 0, 0x0b, 0xb8][..], &[b'y'; 3000]].concat(),
    );
    msg(&mut v, b'S', b"TimeZone\0Asia/Tokyo\0");
    msg(&mut v, b'C', b"SELECT 1\0");
    msg(&mut v, b'Z', b"I");
    v
}

fn run_server(data: &[u8], cuts: &[usize]) -> (Vec<u8>, u8, Option<String>) {
    let mut expect = Expect::default();
    expect.push(Pending::Parse {
        swallow: true,
        id: Some(1),
    });
    expect.push(Pending::Bind { id: None });
    expect.push(Pending::Execute);
    expect.push(Pending::Synth(b'3'));
    expect.push(Pending::Sync);
    let mut flow = ServerFlow::new(1 << 20);
    let (mut sp, mut cp, mut st) = (
        ParamMap::default(),
        ParamMap::default(),
        ServerStatements::default(),
    );
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::once(&data.len())) {
        let c = c.clamp(at, data.len());
        buf.extend_from_slice(&data[at..c]);
        at = c;
        let mut obs = Observers {
            server_params: &mut sp,
            client_params: Some(&mut cp),
            statements: &mut st,
            client_statements: None,
            cache: None,
            own_pid: None,
        };
        let batch = flow.process(&buf, &mut expect, &mut obs).unwrap();
        match batch.edited {
            Some(e) => out.extend_from_slice(&e),
            None => out.extend_from_slice(&buf[..batch.consumed]),
        }
        buf.advance(batch.consumed);
    }
    assert!(expect.is_empty() && flow.at_ready && flow.at_boundary());
    (out, flow.status, cp.get("TimeZone").map(String::from))
}

#[test]
fn a_repeated_parse_is_answered_by_pgmux_and_names_are_rewritten() {
    let (sent, owed) = run_client(&client_stream(), &[]);
    assert_eq!(owed, 3);
    let text = String::from_utf8_lossy(&sent);
    assert_eq!(
        text.matches("pgmux_0").count(),
        3,
        "one Parse and two Binds renamed: {text:?}"
    );
    assert!(
        !text.contains("s1\0") && !text.contains("s2\0"),
        "the client's names never reach the server"
    );
    assert_eq!(
        text.matches("select $1::int").count(),
        1,
        "the second Parse is not sent"
    );
}

#[test]
fn injected_replies_are_dropped_and_owed_ones_added() {
    let (out, status, tz) = run_server(&server_stream(), &[]);
    assert_eq!(status, b'I');
    assert_eq!(tz.as_deref(), Some("Asia/Tokyo"));
    let tags: Vec<u8> = {
        let mut b = BytesMut::from(&out[..]);
        let mut tags = Vec::new();
        while let Some(f) = pgmux_wire::frame::take_frame(&mut b, 1 << 20).unwrap() {
            tags.push(f.tag);
        }
        tags
    };
    assert_eq!(tags, b"2DSC3Z");
}

proptest! {
    #[test]
    fn client_flow_ignores_read_boundaries(mut cuts in proptest::collection::vec(0usize..3400, 0..16)) {
        cuts.sort();
        let data = client_stream();
        prop_assert_eq!(run_client(&data, &cuts), run_client(&data, &[]));
    }

    #[test]
    fn server_flow_ignores_read_boundaries(mut cuts in proptest::collection::vec(0usize..3100, 0..16)) {
        cuts.sort();
        let data = server_stream();
        prop_assert_eq!(run_server(&data, &cuts), run_server(&data, &[]));
    }
}

#[test]
fn big_messages_stream_or_are_refused_without_being_held_whole() {
    let mut rig = Rig::new();
    let big_query = [b"select '".as_slice(), &vec![b'q'; 2 << 20], b"'\0\0\0"].concat();
    // Unnamed: passes through as it arrives.
    let mut unnamed = Vec::new();
    msg(&mut unnamed, b'P', &[b"\0".as_slice(), &big_query].concat());
    let mut flow = ClientFlow::new(8 << 20, true);
    let (st, expect) = rig.statements();
    let first = flow.process(&unnamed[..100_000], expect, Some(st)).unwrap();
    assert_eq!(first.consumed, 100_000, "streamed, not held");
    assert!(!flow.at_boundary());
    // Named: refused with a clear error instead of buffering it.
    let mut named = Vec::new();
    msg(
        &mut named,
        b'P',
        &[b"big\0".as_slice(), &big_query].concat(),
    );
    let mut flow = ClientFlow::new(8 << 20, true);
    rig.expect = Expect::default();
    let (st, expect) = rig.statements();
    let err = flow
        .process(&named[..100_000], expect, Some(st))
        .err()
        .unwrap();
    assert_eq!(err.sqlstate(), "54000");
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

fn tags_of(bytes: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::from(bytes);
    let mut tags = Vec::new();
    while let Some(f) = pgmux_wire::frame::take_frame(&mut b, 1 << 20).unwrap() {
        tags.push(f.tag);
    }
    tags
}

#[test]
fn a_reused_name_and_an_unknown_one_are_raised_by_the_server_as_postgres_would() {
    let mut rig = Rig::new();
    rig.prepare("s1", "select 1");

    let mut again = Vec::new();
    msg(&mut again, b'P', b"s1\0select 2\0\0\0");
    msg(&mut again, b'B', b"\0nope\0\0\0\0\0\0\0");
    msg(&mut again, b'S', b"");
    let (sent, _) = rig.send(&again);
    let text = String::from_utf8_lossy(&sent);
    assert!(
        !text.contains("s1\0select 2"),
        "the refused Parse is not sent under its name: {text}"
    );
    // The reused name's text is parsed under a scratch name and closed (a
    // text that fails must fail with its own error, as in PostgreSQL),
    // then each refusal is a Parse that fails at the parser; the Sync last.
    // The errors the client will see instead are owed in order.
    assert!(text.contains("pgmux_check\0select 2"), "{text}");
    assert_eq!(tags_of(&sent), b"PCPPS");
    let mut undone = super::expect::Undone::default();
    for reply in [b'1', b'3'] {
        assert_eq!(
            rig.expect.on_reply(reply, &mut undone),
            Ok(super::expect::Verdict::Drop)
        );
    }
    assert_eq!(
        rig.expect.raise_at_front(),
        Some(("42P05", "prepared statement \"s1\" already exists"))
    );
    rig.expect.on_reply(b'E', &mut undone).unwrap();
    assert_eq!(rig.expect.raise_at_front(), None, "the second was skipped");
    assert_eq!(
        rig.client.get(b"s1").map(|s| s.definition.clone()),
        Some(bytes::Bytes::from_static(b"select 1\0\0\0"))
    );

    // A pinned client's unknown name may be its own SQL PREPARE: unchanged.
    rig.pinned = true;
    let mut bind = Vec::new();
    msg(&mut bind, b'B', b"\0mine\0\0\0\0\0\0\0");
    assert_eq!(rig.send(&bind).0, bind);
}

#[test]
fn deallocate_of_a_client_name_is_answered_by_pgmux() {
    let mut rig = Rig::new();
    rig.prepare("_pg3_0", "select 1");
    let mut dealloc = Vec::new();
    msg(&mut dealloc, b'Q', b"DEALLOCATE _pg3_0\0");
    let (sent, _) = rig.send(&dealloc);
    // The server gets an empty query (a simple Query still ends the
    // implicit transaction), whose reply becomes DEALLOCATE.
    assert_eq!(sent, b"Q\0\0\0\x05\0");
    assert!(rig.client.get(b"_pg3_0").is_none());
    let mut replies = Vec::new();
    msg(&mut replies, b'I', b"");
    msg(&mut replies, b'Z', b"I");
    let (mut sp, mut cp, mut st) = Default::default();
    let mut obs = Observers {
        server_params: &mut sp,
        client_params: Some(&mut cp),
        statements: &mut st,
        client_statements: Some(&mut rig.client),
        cache: None,
        own_pid: None,
    };
    let batch = ServerFlow::new(1 << 20)
        .process(&replies, &mut rig.expect, &mut obs)
        .unwrap();
    let out = batch.edited.unwrap();
    assert_eq!(tags_of(&out), b"CZ");
    assert!(String::from_utf8_lossy(&out).contains("DEALLOCATE"));
    assert!(rig.expect.is_empty());
    // Not pgmux's: the server answers (26000 for an unknown name).
    assert_eq!(rig.send(&dealloc).0, dealloc);
}

#[test]
fn a_stale_statement_is_closed_reprepared_and_its_request_replayed() {
    let mut rig = Rig::new();
    rig.prepare("s", "select * from t");
    let id = rig.client.get(b"s").unwrap().id;
    assert!(rig.server.contains(id));

    // Bind, Describe portal, Execute, Sync: what libpq sends per execution.
    let mut exec = Vec::new();
    msg(&mut exec, b'B', b"\0s\0\0\0\0\0\0\0");
    msg(&mut exec, b'D', b"P\0");
    msg(&mut exec, b'E', b"\0\0\0\0\0");
    msg(&mut exec, b'S', b"");
    let (_, retry) = rig.send(&exec);
    assert_eq!(retry, Retry::IfMissingOrStale);

    let mut replies = Vec::new();
    msg(
        &mut replies,
        b'E',
        b"SERROR\0C0A000\0Mcached plan must not change result type\0\0",
    );
    msg(&mut replies, b'Z', b"I");
    let mut flow = ServerFlow::new(1 << 20);
    flow.retry_armed = Retry::IfMissingOrStale;
    let (mut sp, mut cp) = (ParamMap::default(), ParamMap::default());
    let mut obs = Observers {
        server_params: &mut sp,
        client_params: Some(&mut cp),
        statements: &mut rig.server,
        client_statements: Some(&mut rig.client),
        cache: Some(&rig.cache),
        own_pid: None,
    };
    let batch = flow.process(&replies, &mut rig.expect, &mut obs).unwrap();
    assert!(batch.retry && batch.stale_retried == 1 && batch.stale_passed == 0);
    assert_eq!(
        batch.edited.as_deref(),
        Some(&b""[..]),
        "error and ready held back"
    );
    assert_eq!(batch.ready, 0);
    assert!(rig.expect.is_empty());

    // Sent again: the stale copy is closed first, then prepared afresh.
    let (sent, _) = rig.send(&exec);
    assert_eq!(tags_of(&sent), b"CPBDES");
    // And a new Parse of the same text gets a new server name.
    assert_ne!(rig.cache.intern(b"select * from t\0\0\0").id, id);
}

/// Someone deallocated pgmux's statement behind its back: the server says
/// 26000 for a name pgmux believes it holds. The statement is prepared
/// again, and a lone execution outside a transaction is sent again, with
/// or without a Describe; its error never reaches the client.
#[test]
fn a_statement_missing_on_its_server_is_prepared_again_and_its_request_replayed() {
    let mut rig = Rig::new();
    rig.prepare("s", "select 1");
    let id = rig.client.get(b"s").unwrap().id;
    let mut exec = Vec::new();
    msg(&mut exec, b'B', b"\0s\0\0\0\0\0\0\0");
    msg(&mut exec, b'E', b"\0\0\0\0\0");
    msg(&mut exec, b'S', b"");
    let (sent, retry) = rig.send(&exec);
    assert_eq!(tags_of(&sent), b"BES", "the server is believed to have it");
    assert_eq!(retry, Retry::IfMissing);

    let mut replies = Vec::new();
    msg(
        &mut replies,
        b'E',
        format!("SERROR\0C26000\0Mprepared statement \"pgmux_{id}\" does not exist\0\0").as_bytes(),
    );
    msg(&mut replies, b'Z', b"I");
    let mut flow = ServerFlow::new(1 << 20);
    flow.retry_armed = retry;
    let (mut sp, mut cp) = (ParamMap::default(), ParamMap::default());
    let mut obs = Observers {
        server_params: &mut sp,
        client_params: Some(&mut cp),
        statements: &mut rig.server,
        client_statements: Some(&mut rig.client),
        cache: Some(&rig.cache),
        own_pid: None,
    };
    let batch = flow.process(&replies, &mut rig.expect, &mut obs).unwrap();
    assert!(batch.retry && batch.missing_retried == 1 && batch.missing_passed == 0);
    assert_eq!(batch.edited.as_deref(), Some(&b""[..]), "held back");
    assert!(!rig.server.contains(id));
    // Sent again: prepared first (same server name: the text is fine).
    let (sent, _) = rig.send(&exec);
    assert_eq!(tags_of(&sent), b"PBES");
    assert_eq!(rig.cache.intern(b"select 1\0\0\0").id, id);

    // Inside a transaction (the relay arms no retry) the error passes.
    rig.expect = Expect::default();
    for p in [
        Pending::Bind { id: Some(id) },
        Pending::Execute,
        Pending::Sync,
    ] {
        rig.expect.push(p);
    }
    let mut flow = ServerFlow::new(1 << 20);
    let mut obs = Observers {
        server_params: &mut sp,
        client_params: Some(&mut cp),
        statements: &mut rig.server,
        client_statements: Some(&mut rig.client),
        cache: Some(&rig.cache),
        own_pid: None,
    };
    let batch = flow.process(&replies, &mut rig.expect, &mut obs).unwrap();
    assert!(!batch.retry && batch.missing_passed == 1);
    assert!(batch.edited.is_none(), "passed on as it is");
}

#[test]
fn only_a_lone_prepared_execution_may_be_sent_again() {
    let mut rig = Rig::new();
    let mut prepare = Vec::new();
    msg(&mut prepare, b'P', b"s\0select 1\0\0\0");
    msg(&mut prepare, b'S', b"");
    assert_eq!(
        rig.send(&prepare).1,
        Retry::Never,
        "a Parse is not replayed"
    );
    let mut without_describe = Vec::new();
    msg(&mut without_describe, b'B', b"\0s\0\0\0\0\0\0\0");
    msg(&mut without_describe, b'E', b"\0\0\0\0\0");
    msg(&mut without_describe, b'S', b"");
    assert_eq!(
        rig.send(&without_describe).1,
        Retry::IfMissing,
        "no Describe: the client could not learn a new shape, but a missing statement is the same again"
    );
    let mut two = Vec::new();
    for _ in 0..2 {
        msg(&mut two, b'B', b"\0s\0\0\0\0\0\0\0");
        msg(&mut two, b'D', b"P\0");
        msg(&mut two, b'E', b"\0\0\0\0\0");
    }
    msg(&mut two, b'S', b"");
    assert_eq!(
        rig.send(&two).1,
        Retry::Never,
        "two executions: the first may have been answered"
    );
}

#[test]
fn a_stale_copy_is_closed_before_its_name_is_prepared_again_even_mid_pipeline() {
    let mut rig = Rig::new();
    rig.prepare("s", "select * from t");
    let id = rig.client.get(b"s").unwrap().id;
    rig.server.invalidate(id);
    // Something is still in flight (a COPY could be): no Close at the start.
    rig.expect.push(Pending::Query);
    let mut query = Vec::new();
    msg(&mut query, b'Q', b"select 1\0");
    assert_eq!(tags_of(&rig.send(&query).0), b"Q");
    // A Bind of the stale statement re-prepares it: the Close goes first.
    let mut exec = Vec::new();
    msg(&mut exec, b'B', b"\0s\0\0\0\0\0\0\0");
    msg(&mut exec, b'E', b"\0\0\0\0\0");
    msg(&mut exec, b'S', b"");
    assert_eq!(tags_of(&rig.send(&exec).0), b"CPBES");
    assert!(!rig.server.has_closing());
}

/// A DROP DATABASE refused because other sessions use the database: its
/// replies are held back with the count, so the relay can close its own
/// idle servers and send the drop again, or pass the refusal on. Replies
/// the client already had (BindComplete) are dropped from the resend's.
#[test]
fn a_drop_refused_for_sessions_in_use_is_held_for_the_relay() {
    let mut expect = Expect::default();
    for p in [Pending::Bind { id: None }, Pending::Execute, Pending::Sync] {
        expect.push(p);
    }
    let mut replies = Vec::new();
    msg(&mut replies, b'2', b"");
    msg(
        &mut replies,
        b'E',
        b"SERROR\0C55006\0Mdatabase \"x\" is being accessed by other users\0DThere are 2 other sessions using the database.\0\0",
    );
    msg(&mut replies, b'Z', b"I");
    let mut flow = ServerFlow::new(1 << 20);
    flow.retry_armed = Retry::IfDatabaseInUse;
    let (mut sp, mut cp, mut st) = Default::default();
    let mut obs = Observers {
        server_params: &mut sp,
        client_params: Some(&mut cp),
        statements: &mut st,
        client_statements: None,
        cache: None,
        own_pid: None,
    };
    let batch = flow.process(&replies, &mut expect, &mut obs).unwrap();
    assert!(batch.retry);
    assert_eq!(batch.database_in_use_by, Some(2));
    assert_eq!(
        tags_of(batch.edited.as_deref().unwrap()),
        b"2",
        "BindComplete passed"
    );
    assert_eq!(tags_of(&batch.held.unwrap()), b"EZ", "kept for the relay");
    // The resend: its BindComplete is the client's already.
    for p in [Pending::Bind { id: None }, Pending::Execute, Pending::Sync] {
        expect.push(p);
    }
    let mut again = Vec::new();
    msg(&mut again, b'2', b"");
    msg(&mut again, b'C', b"DROP DATABASE\0");
    msg(&mut again, b'Z', b"I");
    let batch = flow.process(&again, &mut expect, &mut obs).unwrap();
    assert_eq!(tags_of(batch.edited.as_deref().unwrap()), b"CZ");

    // The current database, or no count: not pgmux's to fix.
    expect.push(Pending::Query);
    let mut current = Vec::new();
    msg(
        &mut current,
        b'E',
        b"SERROR\0C55006\0Mcannot drop the currently open database\0\0",
    );
    msg(&mut current, b'Z', b"I");
    flow.retry_armed = Retry::IfDatabaseInUse;
    let batch = flow.process(&current, &mut expect, &mut obs).unwrap();
    assert!(!batch.retry && batch.edited.is_none());
}
