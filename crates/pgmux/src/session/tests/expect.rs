//! The reply accounting ([`Expect`]) on its own: every protocol corner,
//! reply by reply.

use crate::session::flow::expect::{Expect, NameOp, Pending, Undone, Verdict};

fn replay(e: &mut Expect, tags: &[u8]) -> Vec<(u8, Verdict)> {
    let mut gone = Undone::default();
    tags.iter()
        .map(|&t| (t, e.on_reply(t, &mut gone).unwrap()))
        .collect()
}

#[test]
fn an_extended_batch_is_answered_in_order() {
    let mut e = Expect::default();
    for p in [
        Pending::Parse {
            swallow: false,
            id: None,
        },
        Pending::Bind { id: None },
        Pending::Describe { id: None },
        Pending::Execute,
        Pending::Sync,
    ] {
        e.push(p);
    }
    assert_eq!(e.ready_owed(), 1);
    let out = replay(&mut e, b"12TDDCZ");
    assert!(out.iter().all(|(_, v)| *v == Verdict::Forward));
    assert!(e.is_empty());
    assert_eq!(e.ready_owed(), 0);
}

#[test]
fn injected_parse_replies_are_swallowed_and_synths_come_due() {
    let mut e = Expect::default();
    e.push(Pending::Synth(b'1'));
    e.push(Pending::Parse {
        swallow: true,
        id: Some(7),
    });
    e.push(Pending::Bind { id: None });
    e.push(Pending::Execute);
    e.push(Pending::Sync);
    assert_eq!(e.take_synth(), Some(b'1'));
    assert_eq!(e.take_synth(), None);
    let out = replay(&mut e, b"12CZ");
    assert_eq!(out[0], (b'1', Verdict::Drop));
    assert!(out[1..].iter().all(|(_, v)| *v == Verdict::Forward));
}

#[test]
fn an_error_skips_to_sync_and_unprepares_skipped_parses() {
    let mut e = Expect::default();
    e.push(Pending::Parse {
        swallow: true,
        id: Some(1),
    });
    e.push(Pending::Bind { id: None });
    e.push(Pending::Synth(b'1'));
    e.push(Pending::Parse {
        swallow: false,
        id: Some(2),
    });
    e.push(Pending::Sync);
    e.push(Pending::Query);
    let mut gone = Undone::default();
    assert_eq!(e.on_reply(b'E', &mut gone), Ok(Verdict::Forward));
    assert_eq!(gone.statements, vec![1, 2]);
    assert_eq!(
        e.take_synth(),
        None,
        "a skipped Parse gets no ParseComplete"
    );
    assert_eq!(replay(&mut e, b"ZTDCZ").len(), 5);
    assert!(e.is_empty());
}

#[test]
fn a_name_exists_only_if_its_parse_was_not_failed_or_skipped() {
    let mut e = Expect::default();
    // Parse a (answered by pgmux), Parse b (sent), Bind, Sync.
    e.push(Pending::Synth(b'1'));
    e.push(Pending::NameBound(1));
    e.push(Pending::Parse {
        swallow: false,
        id: Some(5),
    });
    e.push(Pending::NameBound(2));
    e.push(Pending::Bind { id: Some(5) });
    e.push(Pending::Sync);
    assert_eq!(e.take_synth(), Some(b'1'));
    let mut undone = Undone::default();
    // b's Parse fails: b's name goes, a's stays.
    assert_eq!(e.on_reply(b'E', &mut undone), Ok(Verdict::Forward));
    assert_eq!(
        undone,
        Undone {
            statements: vec![5],
            names: vec![NameOp::Bound(2)],
            ..Undone::default()
        }
    );
    replay(&mut e, b"Z");
    assert!(e.is_empty());
}

#[test]
fn an_error_skips_queries_before_the_sync_and_restores_skipped_closes() {
    // Bind, Execute (fails), an injected Close, a Query sent without a
    // Sync first, then Sync: PostgreSQL ignores everything to the Sync.
    let mut e = Expect::default();
    for p in [
        Pending::Bind { id: None },
        Pending::Execute,
        Pending::Close {
            swallow: true,
            injected: Some(4),
        },
        Pending::Query,
        Pending::Sync,
    ] {
        e.push(p);
    }
    assert_eq!(e.ready_owed(), 2);
    let mut undone = Undone::default();
    e.on_reply(b'2', &mut undone).unwrap();
    e.on_reply(b'E', &mut undone).unwrap();
    assert_eq!(undone.closes, vec![4]);
    assert_eq!(e.ready_owed(), 1);
    replay(&mut e, b"Z");
    assert!(e.is_empty());
}

#[test]
fn errors_inside_a_simple_query_wait_for_its_ready() {
    let mut e = Expect::default();
    e.push(Pending::Query);
    replay(&mut e, b"TDCE");
    assert_eq!(e.ready_owed(), 1);
    replay(&mut e, b"Z");
    assert!(e.is_empty());
}

#[test]
fn syncs_sent_during_copy_in_owe_nothing() {
    // Bind, Execute(COPY FROM STDIN), Sync, data..., CopyDone, Sync:
    // PostgreSQL ignores the first Sync while it reads COPY data.
    let mut e = Expect::default();
    for p in [Pending::Bind { id: None }, Pending::Execute, Pending::Sync] {
        e.push(p);
    }
    replay(&mut e, b"2G");
    assert_eq!(e.ready_owed(), 0);
    e.push(Pending::Sync); // sent mid-copy: ignored too
    e.push(Pending::CopyEnd);
    e.push(Pending::Sync);
    assert_eq!(e.ready_owed(), 1);
    replay(&mut e, b"CZ");
    assert!(e.is_empty());
    // The client may end its data before the server's CopyInResponse.
    let mut e = Expect::default();
    for p in [
        Pending::Bind { id: None },
        Pending::Execute,
        Pending::Sync,
        Pending::CopyEnd,
        Pending::Sync,
    ] {
        e.push(p);
    }
    replay(&mut e, b"2GCZ");
    assert!(e.is_empty());
}

#[test]
fn a_deallocate_answered_in_the_clients_name_is_an_empty_query() {
    let mut e = Expect::default();
    e.push(Pending::Query);
    e.push(Pending::Deallocated(4));
    assert_eq!(e.ready_owed(), 2);
    assert_eq!(
        e.deallocation_at_front(),
        None,
        "the earlier query is answered first"
    );
    replay(&mut e, b"CZ");
    assert_eq!(e.deallocation_at_front(), Some(4));
    replay(&mut e, b"IZ");
    assert!(e.is_empty());
    assert_eq!(e.ready_owed(), 0);
}

#[test]
fn an_injected_raise_stands_for_the_clients_message_and_skips_to_sync() {
    // A failing Parse injected for a client's Parse, then the client's
    // own Bind, Execute, Sync.
    let mut e = Expect::default();
    e.push_raise("42P05", "prepared statement \"a\" already exists");
    for p in [
        Pending::Bind { id: Some(3) },
        Pending::Execute,
        Pending::Sync,
    ] {
        e.push(p);
    }
    let mut gone = Undone::default();
    assert_eq!(e.raise_at_front().map(|r| r.0), Some("42P05"));
    assert_eq!(e.on_reply(b'E', &mut gone), Ok(Verdict::Forward));
    assert_eq!(e.raise_at_front(), None);
    assert_eq!(replay(&mut e, b"Z").len(), 1);
    assert!(e.is_empty());
    // A raise skipped by an earlier error takes its message with it.
    e.push(Pending::Execute);
    e.push_raise("26000", "first");
    e.push(Pending::Sync);
    e.push_raise("26000", "second");
    e.on_reply(b'E', &mut gone).unwrap();
    replay(&mut e, b"Z");
    assert_eq!(e.raise_at_front(), Some(("26000", "second")));
}

#[test]
fn the_statement_behind_a_failing_bind_is_known() {
    let mut e = Expect::default();
    e.push(Pending::Bind { id: Some(9) });
    e.push(Pending::Describe { id: None });
    e.push(Pending::Sync);
    assert_eq!(e.statement_at_front(), Some(9));
    let mut gone = Undone::default();
    e.on_reply(b'E', &mut gone).unwrap();
    assert_eq!(e.statement_at_front(), None);
}

#[test]
fn a_reply_nobody_asked_for_is_a_desync() {
    let mut e = Expect::default();
    e.push(Pending::Bind { id: None });
    let mut gone = Undone::default();
    assert!(e.on_reply(b'1', &mut gone).is_err());
    assert!(Expect::default().on_reply(b'Z', &mut gone).is_err());
}
