//! Statement names in transaction mode, with the client flow driven by
//! hand ([`Rig`]): names rewritten to pgmux's, reused and unknown names
//! failed as PostgreSQL would fail them, DEALLOCATE answered by pgmux,
//! stale or missing statements prepared again and their request sent
//! again, big messages streamed or refused.

use bytes::BytesMut;

use super::{msg, Rig};
use crate::params::ParamMap;
use crate::session::flow::client_flow::ClientFlow;
use crate::session::flow::expect::{Expect, Pending};
use crate::session::flow::retry::Retry;
use crate::session::flow::server_flow::{Observers, ServerFlow};

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
    let mut undone = crate::session::flow::expect::Undone::default();
    for reply in [b'1', b'3'] {
        assert_eq!(
            rig.expect.on_reply(reply, &mut undone),
            Ok(crate::session::flow::expect::Verdict::Drop)
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
