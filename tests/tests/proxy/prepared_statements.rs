//! Transaction mode, named prepared statements: they behave as on a direct
//! connection (42P05, 26000, Close, DEALLOCATE, failed Parses), the
//! per-server cap holds, a schema change under one is recovered from, and
//! the replies pgmux owes or skips keep the stream in step. Raw protocol
//! bytes where the exact messages matter.

use pgmux::config::AuthType;
use pgmux_tests::raw::{
    bind, close_statement, describe_portal, error_of, execute, flush, message, parse, query,
    status, sync, tags, Raw,
};
use pgmux_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_behave_as_on_a_direct_connection() {
    let db = fresh_database("tx_statements").await;
    let app = start_pgmux(|c| {
        c.auth_type = AuthType::Trust;
        c.pool_size = 1;
    })
    .await;
    let mut raw = Raw::login(app.addr, APP_USER, &db).await;

    let prepared = raw
        .exchange(&[parse("s1", "select 1"), sync()].concat())
        .await;
    assert_eq!(tags(&prepared), "1Z");

    // Reusing a name is 42P05, whatever the text; the server skips to Sync.
    let again = [parse("s1", "select 2"), bind("s1"), execute(), sync()].concat();
    let reply = raw.exchange(&again).await;
    assert_eq!(tags(&reply), "EZ");
    assert_eq!(
        error_of(&reply),
        (
            "42P05".into(),
            "prepared statement \"s1\" already exists".into()
        )
    );
    assert_eq!(status(&reply), b'I');

    // A Parse that fails, or that an earlier error made the server skip,
    // leaves no name behind: the name is free for the next try.
    let failed = raw
        .exchange(
            &[
                parse("bad", "selec 1"),
                parse("skipped", "select 1"),
                sync(),
            ]
            .concat(),
        )
        .await;
    assert_eq!(error_of(&failed).0, "42601");
    let retried = raw
        .exchange(
            &[
                parse("bad", "select 1"),
                parse("skipped", "select 1"),
                sync(),
            ]
            .concat(),
        )
        .await;
    assert_eq!(tags(&retried), "11Z");

    // An unknown name is 26000, for Bind and for Describe.
    let unknown = raw
        .exchange(&[bind("nope"), execute(), sync()].concat())
        .await;
    assert_eq!(
        error_of(&unknown),
        (
            "26000".into(),
            "prepared statement \"nope\" does not exist".into()
        )
    );
    let describe = message(b'D', b"Snope\0");
    let unknown = raw.exchange(&[describe, sync()].concat()).await;
    assert_eq!(error_of(&unknown).0, "26000");

    // Inside a transaction the error aborts it, as PostgreSQL's own would.
    assert_eq!(status(&raw.exchange(&query("begin")).await), b'T');
    let reply = raw
        .exchange(&[parse("s1", "select 3"), sync()].concat())
        .await;
    assert_eq!(error_of(&reply).0, "42P05");
    assert_eq!(status(&reply), b'E');
    assert_eq!(status(&raw.exchange(&query("rollback")).await), b'I');

    // The statement still works; Close forgets the name (closing an unknown
    // name is no error), and the name may then be used again.
    let rows = raw
        .exchange(&[bind("s1"), execute(), sync()].concat())
        .await;
    assert_eq!(tags(&rows), "2DCZ");
    let closed = raw
        .exchange(&[close_statement("s1"), close_statement("never"), sync()].concat())
        .await;
    assert_eq!(tags(&closed), "33Z");
    let gone = raw
        .exchange(&[bind("s1"), execute(), sync()].concat())
        .await;
    assert_eq!(error_of(&gone).0, "26000");
    let reused = raw
        .exchange(&[parse("s1", "select 'two'"), bind("s1"), execute(), sync()].concat())
        .await;
    assert_eq!(tags(&reused), "12DCZ");
    assert!(String::from_utf8_lossy(&reused[2].body).contains("two"));

    // SQL DEALLOCATE of a protocol-level name, and DEALLOCATE ALL.
    let dealloc = raw.exchange(&query("DEALLOCATE s1")).await;
    assert_eq!(tags(&dealloc), "CZ");
    assert_eq!(&dealloc[0].body, b"DEALLOCATE\0");
    let gone = raw
        .exchange(&[bind("s1"), execute(), sync()].concat())
        .await;
    assert_eq!(error_of(&gone).0, "26000");
    let unknown = raw.exchange(&query("DEALLOCATE s1")).await;
    assert_eq!(error_of(&unknown).0, "26000");
    raw.exchange(&[parse("a", "select 1"), parse("b", "select 2"), sync()].concat())
        .await;
    let all = raw.exchange(&query("DEALLOCATE ALL")).await;
    assert_eq!(&all[0].body, b"DEALLOCATE ALL\0");
    for name in ["a", "b"] {
        let gone = raw
            .exchange(&[bind(name), execute(), sync()].concat())
            .await;
        assert_eq!(error_of(&gone).0, "26000", "{name} survived DEALLOCATE ALL");
    }
    // ... and they can be prepared again (the server's copies went too).
    let again = raw
        .exchange(&[parse("a", "select 1"), bind("a"), execute(), sync()].concat())
        .await;
    assert_eq!(tags(&again), "12DCZ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_prepared_statements_bounds_each_server() {
    let db = fresh_database("tx_statement_cap").await;
    let app = start_pgmux(|c| {
        c.pool_size = 1;
        c.max_prepared_statements = 5;
    })
    .await;
    let c = connect(app.addr, &db).await;
    let mut statements = Vec::new();
    for i in 0..20 {
        statements.push(c.prepare(&format!("select {i}::int")).await.unwrap());
    }
    for round in 0..2 {
        for (i, s) in statements.iter().enumerate() {
            let row = c.query_one(s, &[]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), i as i32, "round {round}");
        }
    }
    // The one server never holds more than the cap (pgmux's, not the
    // client's own 20 names).
    let held = scalar_i32(&c, "select count(*)::int from pg_prepared_statements").await;
    assert!((1..=5).contains(&held), "{held} statements on the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_under_a_prepared_statement_is_recovered() {
    let db = fresh_database("tx_schema_change").await;
    let app = start_pgmux(|c| {
        c.auth_type = AuthType::Trust;
        c.pool_size = 1;
    })
    .await;
    let metrics = app.metrics_addr.unwrap();
    let replans = |retried: &'static str| {
        let db = db.clone();
        async move {
            metric(
                metrics,
                "pgmux_statement_replans_total",
                &[("database", &db), ("retried", retried)],
            )
            .await
        }
    };
    let c = connect(app.addr, &db).await;
    c.batch_execute("create table t (a int); insert into t values (1)")
        .await
        .unwrap();

    // tokio-postgres runs a statement with Bind/Execute/Sync and no
    // Describe: it cannot learn a new row shape, so the error reaches it,
    // as on a direct connection ...
    let stale = c.prepare("select * from t").await.unwrap();
    assert_eq!(c.query(&stale, &[]).await.unwrap()[0].len(), 1);
    c.batch_execute("alter table t add column b int default 2")
        .await
        .unwrap();
    assert_eq!(sqlstate(c.query(&stale, &[]).await), "0A000");
    // ... and preparing again truly prepares again: it is not deduplicated
    // onto the stale copy (PgBouncer issue 1038), here nor on any server.
    let fresh = c.prepare("select * from t").await.unwrap();
    assert_eq!(fresh.columns().len(), 2);
    let row = c.query_one(&fresh, &[]).await.unwrap();
    assert_eq!((row.get::<_, i32>(0), row.get::<_, i32>(1)), (1, 2));
    assert_eq!(replans("no").await, 1.0);

    // libpq's way (Bind, Describe portal, Execute, Sync) learns the shape
    // from the Describe: outside a transaction pgmux prepares afresh and
    // sends the request again itself, and the client sees only the rows.
    let mut raw = Raw::login(app.addr, APP_USER, &db).await;
    let ok = raw
        .exchange(&[parse("q", "select * from t"), sync()].concat())
        .await;
    assert_eq!(tags(&ok), "1Z");
    c.batch_execute("alter table t add column c text default 'three'")
        .await
        .unwrap();
    let exec = [bind("q"), describe_portal(), execute(), sync()].concat();
    let reply = raw.exchange(&exec).await;
    assert_eq!(tags(&reply), "2TDCZ", "{reply:?}");
    assert!(String::from_utf8_lossy(&reply[2].body).contains("three"));
    let again = raw.exchange(&exec).await;
    assert_eq!(tags(&again), "2TDCZ");
    assert_eq!(replans("yes").await, 1.0);

    // Inside a transaction the error passes through (a retry could not
    // undo what the transaction did), and the next try succeeds.
    c.batch_execute("alter table t add column d int default 4")
        .await
        .unwrap();
    assert_eq!(status(&raw.exchange(&query("begin")).await), b'T');
    let failed = raw.exchange(&exec).await;
    assert_eq!(error_of(&failed).0, "0A000");
    assert_eq!(status(&raw.exchange(&query("rollback")).await), b'I');
    let recovered = raw.exchange(&exec).await;
    assert_eq!(tags(&recovered), "2TDCZ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_pgmux_owes_and_errors_before_a_sync_keep_the_stream_in_step() {
    let db = fresh_database("tx_owed_replies").await;
    let app = start_pgmux(|c| {
        c.auth_type = AuthType::Trust;
        c.pool_size = 1;
    })
    .await;
    let mut raw = Raw::login(app.addr, APP_USER, &db).await;
    raw.exchange(&[parse("s1", "select 1"), sync()].concat())
        .await;
    // A Close pgmux answers itself, behind server replies and a Flush: it
    // is due after the server's last message, and must not wait for more.
    raw.send(&[bind("s1"), execute(), close_statement("s1"), flush()].concat())
        .await;
    let mut got = String::new();
    for _ in 0..4 {
        got.push(raw.next().await.unwrap().tag as char);
    }
    assert_eq!(got, "2DC3");
    assert_eq!(tags(&raw.exchange(&sync()).await), "Z");
    // An error before a Sync makes the server ignore a Query sent before
    // that Sync too: one ReadyForQuery, and the stream stays in step.
    let failing = [
        message(b'P', b"\0select 1/0\0\0\0"),
        message(b'B', b"\0\0\0\0\0\0\0\0"),
        execute(),
        query("select 'ignored'"),
        sync(),
    ]
    .concat();
    let reply = raw.exchange(&failing).await;
    // (1/0 is folded when the statement is planned, at Bind.)
    assert_eq!(tags(&reply), "1EZ");
    let after = raw.exchange(&query("select 'in step'")).await;
    assert_eq!(tags(&after), "TDCZ");
    assert!(String::from_utf8_lossy(&after[1].body).contains("in step"));
    // pgmux's own statement names are not a client's to drop.
    let refused = raw.exchange(&query("DEALLOCATE pgmux_0")).await;
    assert_eq!(refused[0].sqlstate().as_deref(), Some("26000"));
}
