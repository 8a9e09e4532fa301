//! The timeouts: a wait for a server, a server that never answers, a
//! request that runs too long, and clients that hold a connection without
//! using it (issue 12).

use std::time::Duration;

use pgmux_tests::raw::{self, Raw};
use pgmux_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_wait_timeout_ends_a_wait_with_an_error() {
    let db = fresh_database("pool_wait").await;
    let app = start_pgmux(|c| {
        c.pool_size = 1;
        c.query_wait_timeout = 1.0;
    })
    .await;
    let holder = connect(app.addr, &db).await;
    holder.batch_execute("begin; select 1").await.unwrap();
    // A new client's login still works (defaults are cached) but its
    // query waits for the only server, then gets an error.
    let waiter = connect(app.addr, &db).await;
    let err = tokio::time::timeout(Duration::from_secs(30), waiter.simple_query("select 1"))
        .await
        .expect("the wait must end")
        .unwrap_err();
    assert!(format!("{err:?}").contains("query_wait_timeout"), "{err:?}");
    holder.batch_execute("commit").await.unwrap();
    let again = connect(app.addr, &db).await;
    assert_eq!(scalar_i32(&again, "select 5").await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_against_a_silent_server() {
    // Accepts TCP connections and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut keep = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            keep.push(s);
        }
    });
    let app = start_pgmux(|c| {
        c.server_port = port;
        c.server_connect_timeout = 1.0;
    })
    .await;
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        try_connect(&dsn(app.addr, "anything")),
    )
    .await
    .expect("login must not hang");
    let Err(err) = result else {
        panic!("login must fail")
    };
    let text = format!("{err:?}");
    assert!(text.contains("timed out"), "{text}");
    assert_eq!(err.code().map(|c| c.code()), Some("08001"));
    held.abort();
}

/// Issue 12: a client that opens a transaction and goes quiet is closed
/// after `idle_transaction_timeout` with 25P03, as PostgreSQL's own
/// idle_in_transaction_session_timeout does, and its server is rolled back
/// and serves the client waiting for it (the pool has one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_idle_in_a_transaction_is_closed_and_its_server_reused() {
    let db = fresh_database("iso_idle_tx").await;
    let app = start_pgmux(|c| {
        c.pool_size = 1;
        c.idle_transaction_timeout = 0.3;
        c.auth_type = pgmux::config::AuthType::Trust;
    })
    .await;
    let mut quiet = Raw::login(app.addr, APP_USER, &db).await;
    quiet
        .send(&raw::query(
            "begin; create table left_open (id int); insert into left_open values (1)",
        ))
        .await;
    let replies = quiet.until_ready().await;
    assert_eq!(replies.last().map(|m| m.body.clone()), Some(b"T".to_vec()));

    // The one server is held by the quiet client: this waits until pgmux
    // takes it back, and then finds the quiet client's work rolled back.
    let next = connect(app.addr, &db).await;
    let rows = next
        .query_one(
            "select count(*) from pg_tables where tablename = 'left_open'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.get::<_, i64>(0), 0, "rolled back");

    let msgs = tokio::time::timeout(Duration::from_secs(30), quiet.until_closed())
        .await
        .expect("no hang");
    let err = raw::error_in(&msgs);
    assert_eq!(err.sqlstate().as_deref(), Some("25P03"));
    assert!(
        err.field(b'M')
            .unwrap()
            .contains("idle_transaction_timeout"),
        "{msgs:?}"
    );
}

/// Issue 12: a client idle (outside a transaction) past
/// `client_idle_timeout` is closed with 57P05, as PostgreSQL's
/// idle_session_timeout does; the pool serves the next client as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_idle_past_client_idle_timeout_is_closed() {
    let db = fresh_database("iso_idle_client").await;
    let app = start_pgmux(|c| {
        c.client_idle_timeout = 1.0;
        c.auth_type = pgmux::config::AuthType::Trust;
    })
    .await;
    let mut idle = Raw::login(app.addr, APP_USER, &db).await;
    idle.send(&raw::query("select 1")).await;
    assert!(idle.until_ready().await.iter().any(|m| m.tag == b'D'));
    let msgs = tokio::time::timeout(Duration::from_secs(30), idle.until_closed())
        .await
        .expect("no hang");
    let err = raw::error_in(&msgs);
    assert_eq!(err.sqlstate().as_deref(), Some("57P05"));
    assert!(
        err.field(b'M').unwrap().contains("client_idle_timeout"),
        "{msgs:?}"
    );
    let next = connect(app.addr, &db).await;
    let one: i32 = next.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// Issue 12: a request that runs past `query_timeout` is cancelled on its
/// server: the client gets PostgreSQL's 57014 and keeps its connection,
/// nothing the request did is committed, and the pool's one server then
/// serves another client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_query_timeout_is_cancelled_and_its_client_stays() {
    let db = fresh_database("iso_query_timeout").await;
    let app = start_pgmux(|c| {
        c.pool_size = 1;
        c.query_timeout = 0.5;
    })
    .await;
    let client = connect(app.addr, &db).await;
    client
        .batch_execute("create table timed_out (id int)")
        .await
        .unwrap();
    // One simple Query is one implicit transaction: the insert stands or
    // falls with the sleep.
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        client.batch_execute("insert into timed_out values (1); select pg_sleep(60)"),
    )
    .await
    .expect("the request must end")
    .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err:?}");
    assert_eq!(scalar_i32(&client, "select 7").await, 7, "still connected");

    let other = connect(app.addr, &db).await;
    let rows: i64 = other
        .query_one("select count(*) from timed_out", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "the cancelled request committed nothing");
    // A request shorter than the limit is not touched.
    assert_eq!(scalar_i32(&other, "select 8 from pg_sleep(0.1)").await, 8);
}

/// Issue 12: a client whose transaction lasts past `transaction_timeout`
/// is closed with 25P04 (as PostgreSQL 17's own transaction_timeout): what
/// its server ran is cancelled and rolled back, and the pool's one server
/// then serves another client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_past_transaction_timeout_is_ended_and_its_server_reused() {
    let db = fresh_database("iso_tx_timeout").await;
    let app = start_pgmux(|c| {
        c.pool_size = 1;
        c.transaction_timeout = 0.5;
        c.auth_type = pgmux::config::AuthType::Trust;
    })
    .await;
    let setup = connect(app.addr, &db).await;
    setup
        .batch_execute("create table too_long (id int)")
        .await
        .unwrap();
    drop(setup);

    // Busy, not idle: the transaction runs one long statement.
    let mut busy = Raw::login(app.addr, APP_USER, &db).await;
    busy.send(&raw::query(
        "begin; insert into too_long values (1); select pg_sleep(60)",
    ))
    .await;
    let msgs = tokio::time::timeout(Duration::from_secs(30), busy.until_closed())
        .await
        .expect("no hang");
    let err = raw::error_in(&msgs);
    assert_eq!(err.sqlstate().as_deref(), Some("25P04"), "{msgs:?}");
    assert!(
        err.field(b'M').unwrap().contains("transaction_timeout"),
        "{msgs:?}"
    );

    let next = connect(app.addr, &db).await;
    let rows: i64 = next
        .query_one("select count(*) from too_long", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "rolled back");
}

/// Issue 12: a client that stops reading a large result is given up after
/// `client_write_timeout` of taking no byte: its server is cleaned and
/// serves the next client (the pool has one), instead of waiting for the
/// stalled reader forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_its_server_after_client_write_timeout() {
    let db = fresh_database("iso_write_timeout").await;
    let app = start_pgmux(|c| {
        c.pool_size = 1;
        c.client_write_timeout = 1.0;
        c.auth_type = pgmux::config::AuthType::Trust;
    })
    .await;
    let mut stalled = Raw::login(app.addr, APP_USER, &db).await;
    // About 200 MB of rows, far more than every buffer on the way holds;
    // the client reads none of it.
    stalled
        .send(&raw::query(
            "select repeat('x', 1000) from generate_series(1, 200000)",
        ))
        .await;

    let next = tokio::time::timeout(Duration::from_secs(60), async {
        let c = connect(app.addr, &db).await;
        scalar_i32(&c, "select 3").await
    })
    .await
    .expect("the server must come back from the stalled reader");
    assert_eq!(next, 3);
    drop(stalled);
}

/// Issue 12: a server idle for `server_check_delay` (0 here: every time)
/// runs `server_check_query` before it is lent again. One that fails it is
/// closed and the client is served by another, none the wiser; an empty
/// setting turns the check off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_server_runs_the_check_query_before_it_is_lent() {
    let db = fresh_database("server_check").await;
    let owner = try_connect(&format!(
        "host=127.0.0.1 port={} user={APP_USER} password={APP_PASSWORD} dbname={db}",
        cluster().port
    ))
    .await
    .unwrap();
    owner
        .batch_execute("create table checks (n serial)")
        .await
        .unwrap();
    let app = start_pgmux(|c| {
        c.pool_size = 1;
        c.server_check_delay = 0.0;
        c.server_check_query = "insert into checks default values".into();
    })
    .await;
    let client = connect(app.addr, &db).await;
    let mut counts = Vec::new();
    for _ in 0..3 {
        // A simple query: one transaction, one lending.
        counts.push(simple_scalar(&client, "select count(*) from checks").await);
    }
    // Each lending of the idle server was preceded by exactly one check.
    assert_eq!(counts[2] - counts[1], 1, "{counts:?}");
    assert_eq!(counts[1] - counts[0], 1, "{counts:?}");
    let first = simple_scalar(&client, "select pg_backend_pid()").await;

    // The check now fails (its table is gone): the server is closed and
    // the client's query runs on a new one, without an error.
    owner.batch_execute("drop table checks").await.unwrap();
    let second = simple_scalar(&client, "select pg_backend_pid()").await;
    assert_ne!(first, second, "the server that failed its check was lent");
    let failed = metric(
        app.metrics_addr.unwrap(),
        "pgmux_server_closed_total",
        &[("database", &db), ("reason", "check_failed")],
    )
    .await;
    assert_eq!(failed, 1.0);

    // Turned off: nothing runs before the client's queries.
    owner
        .batch_execute("create table checks (n serial)")
        .await
        .unwrap();
    let quiet = start_pgmux(|c| {
        c.pool_size = 1;
        c.server_check_delay = 0.0;
        c.server_check_query = String::new();
    })
    .await;
    let client = connect(quiet.addr, &db).await;
    for _ in 0..3 {
        assert_eq!(
            simple_scalar(&client, "select count(*) from checks").await,
            0
        );
    }
}

async fn simple_scalar(client: &tokio_postgres::Client, sql: &str) -> i64 {
    let rows = client.simple_query(sql).await.unwrap();
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .expect("a row");
    row.get(0).unwrap().parse().unwrap()
}

/// Issue 12: `query_timeout` holds while the request is still being sent.
/// PostgreSQL reads nothing while it runs a statement, so a long query
/// followed by megabytes of pipelined queries leaves pgmux with bytes the
/// server will not take; the timeout must still cancel the long query
/// (which once ran to its end, the write to the server blocking pgmux's
/// whole link), and everything after it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_holds_while_the_server_is_not_reading() {
    let db = fresh_database("timeout_unread").await;
    // Each request is timed (not the pipeline): 5 s is far more than any
    // of the small queries takes.
    let app = start_pgmux(|c| c.query_timeout = 5.0).await;
    let client = connect(app.addr, &db).await;
    let padding = "-".repeat(1000);
    let sleeper = client.simple_query("select pg_sleep(120)");
    let rest: Vec<_> = (0..16_000)
        .map(|i| {
            let sql = format!("select {i} /* {padding} */");
            let client = &client;
            async move { client.simple_query(&sql).await.map(|_| ()) }
        })
        .collect();
    let (slept, rest) = tokio::time::timeout(
        Duration::from_secs(90),
        futures_util::future::join(sleeper, futures_util::future::join_all(rest)),
    )
    .await
    .expect("the long query must be cancelled, not run to its end");
    let err = slept.expect_err("cancelled");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err:?}");
    // The queries after it are served. One that waited out a starved
    // client on a loaded machine may be cancelled too (its time counts
    // from when the one before it was answered, and includes waiting for
    // the client to read); none may fail any other way.
    let failed: Vec<_> = rest.iter().filter_map(|r| r.as_ref().err()).collect();
    let other = failed
        .iter()
        .find(|e| e.code().map(|c| c.code()) != Some("57014"));
    assert!(other.is_none(), "{other:?}");
    assert!(
        failed.len() < 100,
        "{} of the queries after it were cancelled",
        failed.len()
    );
    assert_eq!(scalar_i32(&client, "select 7").await, 7);
}
