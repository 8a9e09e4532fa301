//! Fault injection (issue 12): a misbehaving network between pgmux and
//! PostgreSQL, and between a client and pgmux ([`FaultProxy`]). Each test
//! states what the client under the fault sees, and that everyone else is
//! served as before. Only the database under test is routed through the
//! proxy (`[databases.NAME] port`); the others go straight to PostgreSQL.
//! (A connection that stalls mid-TLS-handshake is for when pgmux has TLS.)

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::SinkExt;
use pgmux::config::{AuthType, Config, DatabaseConfig};
use pgmux_tests::faults::{Dir, Fault, FaultProxy};
use pgmux_tests::raw::{self, Raw};
use pgmux_tests::*;

/// A hang guard, never a timing assertion.
const GUARD: Duration = Duration::from_secs(30);

fn postgres() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], cluster().port))
}

/// Send `db`'s server connections through `proxy`.
fn route(c: &mut Config, db: &str, proxy: &FaultProxy) {
    let through = DatabaseConfig {
        port: Some(proxy.addr.port()),
        // Faults are placed by byte counts of the plaintext protocol (a
        // cut inside a DataRow); under TLS a cut record yields no bytes at
        // all, which tls.rs covers.
        server_tls_sslmode: Some(pgmux::config::SslMode::Disable),
        ..Default::default()
    };
    c.databases.insert(db.to_string(), through);
}

/// Whether PostgreSQL still has a backend with this pid.
async fn backend_alive(pid: i32) -> bool {
    let admin = cluster().admin().await;
    let row = admin
        .query_one(
            "select count(*) from pg_stat_activity where pid = $1",
            &[&pid],
        )
        .await
        .unwrap();
    row.get::<_, i64>(0) > 0
}

/// Wait until the backend `pid` is gone: its transaction is decided.
async fn wait_gone(pid: i32) {
    let gone = eventually(GUARD, || async move { !backend_alive(pid).await }).await;
    assert!(gone, "backend {pid} still there");
}

async fn count(c: &tokio_postgres::Client, table: &str) -> i64 {
    let row = c
        .query_one(&format!("select count(*) from {table}"), &[])
        .await
        .unwrap();
    row.get(0)
}

/// Latency on the server side: every query is still answered right, and a
/// transaction begun before the latency commits through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_latency_changes_no_result() {
    let db = fresh_database("fault_latency").await;
    let proxy = FaultProxy::start(postgres()).await;
    let app = start_pgmux(|c| route(c, &db, &proxy)).await;
    let c = connect(app.addr, &db).await;
    c.batch_execute("create table t (id int primary key, note text)")
        .await
        .unwrap();
    c.batch_execute("begin; insert into t values (1, 'before')")
        .await
        .unwrap();
    let delay = Fault::Delay(Duration::from_millis(20));
    proxy.set(Dir::ToTarget, delay.clone());
    proxy.set(Dir::ToClient, delay);
    for i in 2..6 {
        let n = c
            .execute("insert into t values ($1, $2)", &[&i, &format!("n{i}")])
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
    c.batch_execute("commit").await.unwrap();
    // Another client sees the whole transaction.
    let other = connect(app.addr, &db).await;
    let row = other
        .query_one(
            "select count(*), string_agg(note, ',' order by id) from t where id >= $1",
            &[&1i32],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 5);
    assert_eq!(row.get::<_, String>(1), "before,n2,n3,n4,n5");
    assert!(proxy.accepted() >= 1, "the servers went through the proxy");
}

/// A server that accepts and never answers: the login that needs it gets
/// 08001 ("timed out") after `server_connect_timeout`, while a client of
/// another database is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_server_fails_the_login_with_08001_and_others_are_served() {
    let other = fresh_database("fault_hole_other").await;
    let proxy = FaultProxy::start(postgres()).await;
    proxy.set(Dir::ToTarget, Fault::BlackHole);
    proxy.set(Dir::ToClient, Fault::BlackHole);
    let app = start_pgmux(|c| {
        route(c, "fault_hole", &proxy);
        c.server_connect_timeout = 1.0;
    })
    .await;
    let target = dsn(app.addr, "fault_hole");
    let login = tokio::spawn(async move { try_connect(&target).await });
    // pgmux's server connection is in the hole now.
    proxy.wait_accepted(1).await;
    let served = connect(app.addr, &other).await;
    assert_eq!(scalar_i32(&served, "select 41").await, 41);
    let Err(err) = tokio::time::timeout(GUARD, login).await.unwrap().unwrap() else {
        panic!("a login through a black hole must fail");
    };
    assert_eq!(err.code().map(|c| c.code()), Some("08001"), "{err}");
    assert!(format!("{err:?}").contains("timed out"), "{err:?}");
    assert_eq!(scalar_i32(&served, "select 42").await, 42);
}

/// A server that goes silent mid-request (its replies vanish): with
/// `query_timeout`, pgmux cancels, and when that does not end the request
/// within `cancel_wait_timeout` it closes the server and the client with
/// FATAL 57014. The client's open transaction is not committed, its server
/// is gone from PostgreSQL, and the pool serves the next client on a fresh
/// server; a client of another database is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_gone_silent_mid_request_is_given_up_with_57014() {
    let db = fresh_database("fault_silent").await;
    let other = fresh_database("fault_silent_other").await;
    let proxy = FaultProxy::start(postgres()).await;
    let app = start_pgmux(|c| {
        route(c, &db, &proxy);
        c.query_timeout = 0.5;
        c.cancel_wait_timeout = 0.5;
        c.auth_type = AuthType::Trust;
    })
    .await;
    let mut victim = Raw::login(app.addr, APP_USER, &db).await;
    victim
        .exchange(&raw::query("create table t (id int)"))
        .await;
    let pid: i32 = victim
        .scalar("begin; insert into t values (1); select pg_backend_pid()")
        .await
        .parse()
        .unwrap();
    // Replies on the open connections vanish; new ones (the cancel, the
    // next server) pass.
    proxy.set_open(Dir::ToClient, Fault::BlackHole);
    victim.send(&raw::query("select 1")).await;
    let (msgs, bystander) =
        tokio::join!(tokio::time::timeout(GUARD, victim.until_closed()), async {
            let c = connect(app.addr, &other).await;
            scalar_i32(&c, "select 43").await
        });
    assert_eq!(bystander, 43);
    let msgs = msgs.expect("no hang");
    assert_eq!(raw::tags(&msgs), "E");
    assert_eq!(msgs[0].field(b'S').as_deref(), Some("FATAL"));
    assert_eq!(msgs[0].sqlstate().as_deref(), Some("57014"));
    assert!(
        msgs[0].field(b'M').unwrap().contains("query_timeout"),
        "{msgs:?}"
    );
    wait_gone(pid).await;
    let next = connect(app.addr, &db).await;
    assert_ne!(backend_pid(&next).await, pid);
    assert_eq!(
        count(&next, "t").await,
        0,
        "the open transaction committed nothing"
    );
}

/// The reply to `select repeat('x', 2000)` from PostgreSQL, in bytes:
/// RowDescription (32), DataRow (2011), CommandComplete (14), ReadyForQuery (6).
const ROW_DESCRIPTION: usize = 32;
const DATA_ROW: usize = 2011;

/// A raw client in a transaction on a server routed through `proxy` that
/// is reset after `cut` bytes of the reply to its next query. Returns what
/// the client read before the close, and its server's backend pid.
async fn reset_mid_reply(
    app: SocketAddr,
    db: &str,
    proxy: &FaultProxy,
    cut: usize,
) -> (Vec<raw::Msg>, i32) {
    let mut victim = Raw::login(app, APP_USER, db).await;
    let pid = victim
        .scalar("begin; insert into t values (1); select pg_backend_pid()")
        .await
        .parse()
        .unwrap();
    proxy.set_open(Dir::ToClient, Fault::ResetAfter(cut));
    victim.send(&raw::query("select repeat('x', 2000)")).await;
    let msgs = tokio::time::timeout(GUARD, victim.until_closed())
        .await
        .expect("no hang");
    (msgs, pid)
}

async fn reset_setup(name: &str) -> (String, FaultProxy, pgmux::app::App, tokio_postgres::Client) {
    let db = fresh_database(name).await;
    let proxy = FaultProxy::start(postgres()).await;
    let app = start_pgmux(|c| {
        route(c, &db, &proxy);
        c.auth_type = AuthType::Trust;
    })
    .await;
    let bystander = connect(app.addr, &db).await;
    bystander
        .batch_execute("create table t (id int)")
        .await
        .unwrap();
    (db, proxy, app, bystander)
}

/// The server's connection is reset in the middle of a reply (inside its
/// CommandComplete, which pgmux passes on only whole): the client gets the
/// rows that came whole and then FATAL 08006, nothing half. Its transaction
/// is not committed; it can log in again; a client of the same pool that
/// was idle meanwhile keeps its connection and is served on a fresh server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_reset_mid_reply_gives_08006_and_the_pool_a_fresh_server() {
    let (db, proxy, app, bystander) = reset_setup("fault_reset_reply").await;
    let cut = ROW_DESCRIPTION + DATA_ROW + 5;
    let (msgs, pid) = reset_mid_reply(app.addr, &db, &proxy, cut).await;
    assert_eq!(raw::tags(&msgs), "TDE");
    assert_eq!(msgs[1].body[6..], [b'x'; 2000][..], "the row whole");
    let err = &msgs[2];
    assert_eq!(err.field(b'S').as_deref(), Some("FATAL"));
    assert_eq!(err.sqlstate().as_deref(), Some("08006"), "{err:?}");
    assert!(
        err.field(b'M').unwrap().contains("server connection lost"),
        "{err:?}"
    );

    assert_ne!(backend_pid(&bystander).await, pid, "a fresh server");
    let mut again = Raw::login(app.addr, APP_USER, &db).await;
    assert_eq!(again.scalar("select 44").await, "44");
    wait_gone(pid).await;
    assert_eq!(count(&bystander, "t").await, 0, "nothing committed");
}

/// The server's connection is reset inside a DataRow that pgmux has begun
/// to pass on. The client must not be given a row that is not the
/// server's: the half row can only be followed by the close (as on a
/// direct connection), so the client reads the RowDescription and then the
/// end of the stream. The pool goes on as above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_reset_inside_a_row_gives_no_half_row() {
    let (db, proxy, app, bystander) = reset_setup("fault_reset_row").await;
    let cut = ROW_DESCRIPTION + DATA_ROW - 3;
    let (msgs, pid) = reset_mid_reply(app.addr, &db, &proxy, cut).await;
    assert_eq!(raw::tags(&msgs), "T", "the client is given a row");
    assert_ne!(backend_pid(&bystander).await, pid, "a fresh server");
    wait_gone(pid).await;
    assert_eq!(count(&bystander, "t").await, 0, "nothing committed");
}

/// A server that stops reading in the middle of a large COPY (pgmux's
/// writes to it block): with `query_timeout`, the request is cancelled and,
/// when that does not end it within `cancel_wait_timeout`, the server is
/// closed and the client told 57014 (or, if pgmux closed while the COPY
/// data was still coming, cut off). Nothing of the COPY is committed, the
/// pool's one server is replaced for the next client, and a client of
/// another database is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_reading_a_copy_is_given_up_after_query_timeout() {
    let db = fresh_database("fault_stop_reading").await;
    let other = fresh_database("fault_stop_reading_other").await;
    let proxy = FaultProxy::start(postgres()).await;
    let app = start_pgmux(|c| {
        route(c, &db, &proxy);
        c.pool_size = 1;
        c.query_timeout = 0.5;
        c.cancel_wait_timeout = 0.5;
    })
    .await;
    let c = connect(app.addr, &db).await;
    c.batch_execute("create table t (line text)").await.unwrap();
    let sink = c.copy_in("copy t from stdin").await.unwrap();
    proxy.set_open(Dir::ToTarget, Fault::StopReading);
    // 64 MB: far more than every socket buffer on the way holds.
    let copy = async {
        futures_util::pin_mut!(sink);
        let chunk = bytes::Bytes::from(("x".repeat(1023) + "\n").repeat(1024));
        for _ in 0..64 {
            sink.send(chunk.clone()).await?;
        }
        sink.finish().await
    };
    let (copied, bystander) = tokio::join!(tokio::time::timeout(GUARD, copy), async {
        let c = connect(app.addr, &other).await;
        scalar_i32(&c, "select 45").await
    });
    assert_eq!(bystander, 45);
    let err = copied.expect("the COPY must end, not hang").unwrap_err();
    if let Some(code) = err.code() {
        assert_eq!(code.code(), "57014", "{err:?}");
    }
    let next = tokio::time::timeout(GUARD, async {
        let c = connect(app.addr, &db).await;
        count(&c, "t").await
    })
    .await
    .expect("the pool's server must come back");
    assert_eq!(next, 0, "nothing of the COPY committed");
}

/// A full session: SCRAM login, extended-protocol queries with parameters
/// and a prepared statement used many times, a transaction, COPY in and
/// out, an error and a rollback.
async fn full_session(addr: SocketAddr, db: &str) {
    let c = connect(addr, db).await;
    c.batch_execute("create table t (id int primary key, note text)")
        .await
        .unwrap();
    let insert = c.prepare("insert into t values ($1, $2)").await.unwrap();
    c.batch_execute("begin").await.unwrap();
    for i in 0..20 {
        c.execute(&insert, &[&i, &format!("n{i}")]).await.unwrap();
    }
    c.batch_execute("commit").await.unwrap();
    let sink = c.copy_in("copy t from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    let data: String = (20..500).map(|i| format!("{i}\tcopied {i}\n")).collect();
    sink.send(bytes::Bytes::from(data)).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 480);
    let err = c
        .batch_execute("begin; insert into t values (1, 'dup')")
        .await;
    assert_eq!(sqlstate(err), "23505");
    c.batch_execute("rollback").await.unwrap();
    let row = c
        .query_one(
            "select count(*), sum(id)::int, max(note) from t where id >= $1",
            &[&0i32],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 500);
    assert_eq!(row.get::<_, i32>(1), (0..500).sum::<i32>());
    assert_eq!(row.get::<_, String>(2), "n9");
    let out = c
        .copy_out("copy (select id from t where id % 100 = 0 order by id) to stdout")
        .await
        .unwrap();
    futures_util::pin_mut!(out);
    let mut text = Vec::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut out).await {
        text.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(text, b"0\n100\n200\n300\n400\n");
}

/// Byte-at-a-time delivery both ways between pgmux and PostgreSQL: every
/// message pgmux reads from the server, and PostgreSQL from pgmux, comes
/// cut everywhere; the session is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_at_a_time_on_the_server_side_changes_nothing() {
    let db = fresh_database("fault_bytes_server").await;
    let proxy = FaultProxy::start(postgres()).await;
    proxy.set(Dir::ToTarget, Fault::ByteAtATime);
    proxy.set(Dir::ToClient, Fault::ByteAtATime);
    let app = start_pgmux(|c| route(c, &db, &proxy)).await;
    tokio::time::timeout(GUARD, full_session(app.addr, &db))
        .await
        .expect("no hang");
    assert!(proxy.accepted() >= 1, "the servers went through the proxy");
}

/// The same, between a client and pgmux; a client connected straight to
/// pgmux meanwhile is served as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_at_a_time_on_the_client_side_changes_nothing() {
    let db = fresh_database("fault_bytes_client").await;
    let app = start_pgmux(|_| {}).await;
    let proxy = FaultProxy::start(app.addr).await;
    proxy.set(Dir::ToTarget, Fault::ByteAtATime);
    proxy.set(Dir::ToClient, Fault::ByteAtATime);
    let direct = connect(app.addr, &db).await;
    tokio::time::timeout(GUARD, full_session(proxy.addr, &db))
        .await
        .expect("no hang");
    assert_eq!(proxy.accepted(), 1);
    assert_eq!(
        scalar_i32(&direct, "select count(*)::int from t").await,
        500
    );
}

/// A client whose connection is reset halfway through a Bind, inside a
/// transaction: pgmux rolls its server back and gives it to the next
/// client (the pool has one server), and nothing the broken client sent
/// is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reset_mid_bind_frees_its_server_and_commits_nothing() {
    let db = fresh_database("fault_client_reset").await;
    let app = start_pgmux(|c| {
        c.pool_size = 1;
        c.auth_type = AuthType::Trust;
    })
    .await;
    let proxy = FaultProxy::start(app.addr).await;
    let mut broken = Raw::login(proxy.addr, APP_USER, &db).await;
    broken
        .exchange(&raw::query("create table t (id int)"))
        .await;
    let pid = broken
        .scalar("begin; insert into t values (1); select pg_backend_pid()")
        .await;
    let parse = raw::parse("", "insert into t values (2)");
    let bind = raw::bind("");
    proxy.set_open(
        Dir::ToTarget,
        Fault::ResetAfter(parse.len() + bind.len() / 2),
    );
    broken
        .send(&[parse, bind, raw::execute(), raw::sync()].concat())
        .await;
    let msgs = tokio::time::timeout(GUARD, broken.until_closed())
        .await
        .expect("no hang");
    assert_eq!(raw::tags(&msgs), "", "the broken client hears nothing more");

    let next = tokio::time::timeout(GUARD, async {
        let c = connect(app.addr, &db).await;
        let pid = backend_pid(&c).await;
        (pid, count(&c, "t").await)
    })
    .await
    .expect("the pool's one server must come back");
    assert_eq!(
        next,
        (pid.parse().unwrap(), 0),
        "the same server, rolled back"
    );
}

/// A client that stops reading a large result: after
/// `client_write_timeout` without taking a byte it is cut off (no FATAL: it
/// would not read one), and its server goes to the next client (the pool
/// has one). Once its network reads again, the stalled client finds its
/// connection gone: an error, never a result cut short as a success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_and_its_server_reused() {
    let db = fresh_database("fault_client_stops").await;
    let app = start_pgmux(|c| {
        c.pool_size = 1;
        c.client_write_timeout = 0.5;
    })
    .await;
    let proxy = FaultProxy::start(app.addr).await;
    let stalled = connect(proxy.addr, &db).await;
    proxy.set_open(Dir::ToClient, Fault::StopReading);
    // About 200 MB of rows, far more than every buffer on the way holds.
    let big = tokio::spawn(async move {
        stalled
            .simple_query("select repeat('x', 1000) from generate_series(1, 200000)")
            .await
            .map(|rows| rows.len())
    });
    let next = tokio::time::timeout(GUARD, async {
        let c = connect(app.addr, &db).await;
        scalar_i32(&c, "select 46").await
    })
    .await
    .expect("the server must come back from the stalled reader");
    assert_eq!(next, 46);
    proxy.set_open(Dir::ToClient, Fault::Pass);
    let result = tokio::time::timeout(GUARD, big)
        .await
        .expect("no hang")
        .unwrap();
    let err = result.expect_err("the stalled client's result cannot be whole");
    assert!(err.code().is_none(), "cut off, not told: {err:?}");
}
