//! pgmux's two flows against a model of PostgreSQL ([`super::pg_model`]):
//! a random client stream goes once straight to the model (what a direct
//! connection would answer) and once through the client flow, the model
//! and the server flow, cut into random reads on both sides and
//! interleaved at random, as the relay would move it. The client must see
//! the same replies either way, and the reply accounting must end where
//! the server ends: nothing owed once it is idle.
//!
//! The client streams are built in [`super::steps`], and the flows linked
//! to the model in [`super::link`].

use proptest::prelude::*;

use super::link::Link;
use super::steps::{direct, encode, moves, replies, step, Step};

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
