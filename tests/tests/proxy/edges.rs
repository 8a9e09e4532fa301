//! Protocol edges real drivers hit (issue 14), on a real PostgreSQL with
//! exact bytes: a Terminate mid-COPY or mid-pipeline, a pipeline aborted
//! by an error, session mode's real backend pid, and parameters spelled as
//! PostgreSQL spells them. Each runs in both pool modes.

use std::time::Duration;

use pgmux::config::{AuthType, PoolMode};
use pgmux_tests::process::{config_text, Proc};
use pgmux_tests::raw::{self, Raw};
use pgmux_tests::*;

const MODES: [PoolMode; 2] = [PoolMode::Transaction, PoolMode::Session];

fn mode_name(mode: PoolMode) -> &'static str {
    match mode {
        PoolMode::Transaction => "transaction",
        PoolMode::Session => "session",
    }
}

/// Servers of `db` that PostgreSQL sees doing anything but waiting idle.
async fn busy_backends(db: &str) -> i64 {
    let admin = cluster().admin().await;
    admin
        .query_one(
            "select count(*) from pg_stat_activity where datname = $1 \
             and backend_type = 'client backend' and state <> 'idle'",
            &[&db],
        )
        .await
        .unwrap()
        .get(0)
}

/// What psycopg does when `conn.close()` follows a COPY it refused to run:
/// the server is in COPY IN, and the client says Terminate.
async fn close_mid_copy(addr: std::net::SocketAddr, db: &str) {
    let mut c = Raw::login(addr, APP_USER, db).await;
    c.send(&raw::query("copy edges from stdin")).await;
    let m = c.next().await.unwrap();
    assert_eq!(m.tag, b'G', "{m:?}");
    c.send(&raw::message(b'X', b"")).await;
    assert!(c.until_closed().await.is_empty());
}

/// A pipeline sent with Flush and no Sync, answered, then Terminate: its
/// INSERT must not be committed.
async fn close_mid_pipeline(addr: std::net::SocketAddr, db: &str) {
    let mut c = Raw::login(addr, APP_USER, db).await;
    let mut batch = raw::extended("insert into edges values (1)");
    batch.extend(raw::flush());
    c.send(&batch).await;
    let mut tags = String::new();
    while !tags.ends_with('C') {
        tags.push(c.next().await.unwrap().tag as char);
    }
    assert_eq!(tags, "12C");
    c.send(&raw::message(b'X', b"")).await;
    assert!(c.until_closed().await.is_empty());
}

/// Issue 14, item 1: 25 orderly closes mid-COPY and 25 mid-pipeline leak
/// no server, commit nothing, and leave the pool serving at once; SIGTERM
/// then finds nothing in flight and exits at once (shutdown_timeout is an
/// hour: a leaked server would hold the exit that long).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orderly_closes_mid_copy_and_mid_pipeline_leak_nothing() {
    for mode in MODES {
        let name = format!("edges_close_{}", mode_name(mode));
        let db = fresh_database(&name).await;
        let c = connect(cluster_addr(), &db).await;
        c.batch_execute("create table edges (id int)")
            .await
            .unwrap();
        let config = config_text(
            "127.0.0.1:0",
            &format!(
                "auth_type = \"trust\"\npool_mode = \"{}\"\npool_size = 4\n\
                 query_wait_timeout = 2\nshutdown_timeout = 3600",
                mode_name(mode)
            ),
        );
        let mut pgmux = Proc::start(&name, &config, &[]).await;
        for _ in 0..25 {
            close_mid_copy(pgmux.addr, &db).await;
        }
        for _ in 0..25 {
            close_mid_pipeline(pgmux.addr, &db).await;
        }
        // Released servers go back asynchronously once the client is gone.
        let metrics = pgmux.metrics;
        assert!(
            eventually(Duration::from_secs(20), || async {
                metric(metrics, "pgmux_servers_active", &[("database", &db)]).await == 0.0
            })
            .await,
            "{mode:?}: servers stay lent after their clients left"
        );
        assert_eq!(busy_backends(&db).await, 0, "{mode:?}");
        let committed = scalar_i32(&c, "select count(*)::int from edges").await;
        assert_eq!(committed, 0, "{mode:?}: an unsynced INSERT was committed");
        // The pool serves at once: no slot was lost (query_wait_timeout 2 s).
        let mut next = Raw::login(pgmux.addr, APP_USER, &db).await;
        let replies = next.exchange(&raw::query("select 1")).await;
        assert_eq!(raw::tags(&replies), "TDCZ", "{mode:?}: {replies:?}");
        drop(next);
        pgmux.signal(libc::SIGTERM);
        assert_eq!(pgmux.wait_exit().await.code(), Some(0));
        assert!(pgmux.log_text().contains("shutdown complete"), "{mode:?}");
        // The start-up line names the I/O backend that runs.
        let expected = match std::env::var("PGMUX_IO_BACKEND") {
            Ok(asked) => format!("io_backend=\"{asked}\""),
            Err(_) => "io_backend=".to_string(),
        };
        assert!(pgmux.log_text().contains(&expected), "{mode:?}");
    }
}

/// PostgreSQL's own address, for side-by-side comparisons.
fn cluster_addr() -> std::net::SocketAddr {
    format!("127.0.0.1:{}", cluster().port).parse().unwrap()
}

/// Issue 14, item 2: after an error a pipeline owes nothing until the
/// client's Sync, even for what the client sends after the error arrived;
/// the connection stays usable and the server is not replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_pipeline_keeps_its_connection_and_its_server() {
    for mode in MODES {
        let db = fresh_database(&format!("edges_abort_{}", mode_name(mode))).await;
        let app = start_pgmux(|c| {
            c.auth_type = AuthType::Trust;
            c.pool_mode = mode;
            c.pool_size = 1;
        })
        .await;
        let mut c = Raw::login(app.addr, APP_USER, &db).await;
        let mut batch = raw::extended("select 1");
        batch.extend(raw::extended("select * from doesnotexist"));
        batch.extend(raw::flush());
        c.send(&batch).await;
        let mut first = Vec::new();
        while first.last().is_none_or(|m: &raw::Msg| m.tag != b'E') {
            first.push(c.next().await.unwrap());
        }
        assert_eq!(raw::tags(&first), "12DCE");
        assert_eq!(first[4].sqlstate().as_deref(), Some("42P01"));
        // Sent after the error arrived: PostgreSQL skips it all and
        // answers the Sync alone.
        let mut after = raw::extended("select 'aborted'");
        after.extend(raw::flush());
        after.extend(raw::sync());
        let replies = c.exchange(&after).await;
        assert_eq!(raw::tags(&replies), "Z", "{mode:?}: {replies:?}");
        assert_eq!(raw::status(&replies), b'I');
        let replies = c.exchange(&raw::query("select 'usable'")).await;
        assert_eq!(raw::tags(&replies), "TDCZ", "{mode:?}: {replies:?}");
        let connects = metric(
            app.metrics_addr.unwrap(),
            "pgmux_server_connects_total",
            &[("database", &db)],
        )
        .await;
        let closed = metric(
            app.metrics_addr.unwrap(),
            "pgmux_server_closed_total",
            &[("database", &db)],
        )
        .await;
        assert_eq!(
            (connects, closed),
            (1.0, 0.0),
            "{mode:?}: the server was replaced"
        );
    }
}

/// Issue 14, item 3: in session mode the client is told its server's real
/// pid; its own notifications carry it, terminating that backend ends the
/// client's session, and cancels still go through pgmux's key check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_gives_the_real_backend_pid() {
    let db = fresh_database("edges_pid").await;
    let app = start_pgmux(|c| {
        c.auth_type = AuthType::Trust;
        c.pool_mode = PoolMode::Session;
    })
    .await;
    let (mut c, greeting) =
        Raw::login_with(app.addr, &[("user", APP_USER), ("database", &db)], None).await;
    let (pid, key) = raw::key_data(&greeting);
    assert_eq!(c.scalar("select pg_backend_pid()").await, pid.to_string());
    assert_notify_carries(&mut c, pid).await;

    // A cancel with a wrong key is refused: the sleep runs to its end.
    c.send(&raw::query("select pg_sleep(0.3)")).await;
    send_cancel(app.addr, pid, key ^ 1).await;
    let replies = c.until_ready().await;
    assert!(replies.iter().all(|m| m.tag != b'E'), "{replies:?}");
    // The right key cancels.
    c.send(&raw::query("select pg_sleep(60)")).await;
    wait_until_running(pid, "pg_sleep(60)").await;
    send_cancel(app.addr, pid, key).await;
    let replies = c.until_ready().await;
    assert_eq!(raw::error_of(&replies).0, "57014");

    // A cancel sent while the client is idle is over when its connection
    // closes: it cannot land on the client's next statement (pgmux once
    // closed it before PostgreSQL had acted on it).
    for _ in 0..20 {
        send_cancel(app.addr, pid, key).await;
        let replies = c.exchange(&raw::query("select pg_sleep(0.01)")).await;
        assert!(replies.iter().all(|m| m.tag != b'E'), "{replies:?}");
    }

    // pg_terminate_backend of that pid ends the client's session, with the
    // server's own FATAL and nothing of pgmux's after it.
    let admin = cluster().admin().await;
    let killed: bool = admin
        .query_one("select pg_terminate_backend($1)", &[&(pid as i32)])
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    let last = c.until_closed().await;
    assert_eq!(raw::tags(&last), "E", "{last:?}");
    assert_eq!(last[0].sqlstate().as_deref(), Some("57P01"));
}

/// A schema change seen through the pool makes the next Parse of a text
/// prepare afresh: a new client gets the parameter types of the new
/// schema, as on a direct connection (pgmux once answered it from the
/// statement another client prepared before the change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_is_seen_by_the_next_prepare() {
    let db = fresh_database("edges_ddl").await;
    let app = start_pgmux(|c| c.pool_size = 1).await;
    let first = connect(app.addr, &db).await;
    first
        .batch_execute("create table t (v date)")
        .await
        .unwrap();
    let old = first.prepare("insert into t values ($1)").await.unwrap();
    assert_eq!(old.params(), &[tokio_postgres::types::Type::DATE]);
    first
        .batch_execute("drop table t; create table t (v int)")
        .await
        .unwrap();
    let second = connect(app.addr, &db).await;
    let new = second.prepare("insert into t values ($1)").await.unwrap();
    assert_eq!(new.params(), &[tokio_postgres::types::Type::INT4]);
    second.execute(&new, &[&42i32]).await.unwrap();
}

/// In transaction mode the pid is pgmux's own, and a notification the
/// client's own transaction raised carries that pid too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_gives_own_notifications_the_clients_pid() {
    let db = fresh_database("edges_notify").await;
    let app = start_pgmux(|c| {
        c.auth_type = AuthType::Trust;
        c.pool_mode = PoolMode::Transaction;
    })
    .await;
    let (mut c, greeting) =
        Raw::login_with(app.addr, &[("user", APP_USER), ("database", &db)], None).await;
    let (pid, _) = raw::key_data(&greeting);
    let server_pid = c.scalar("select pg_backend_pid()").await;
    assert_ne!(
        server_pid,
        pid.to_string(),
        "transaction mode keeps a made-up pid"
    );
    assert_notify_carries(&mut c, pid).await;
}

/// LISTEN, then NOTIFY in one transaction: the notification that follows
/// carries `pid`.
async fn assert_notify_carries(c: &mut Raw, pid: u32) {
    c.exchange(&raw::query("listen edges")).await;
    let replies = c.exchange(&raw::query("notify edges, 'mine'")).await;
    let note = replies
        .iter()
        .find(|m| m.tag == b'A')
        .unwrap_or_else(|| panic!("no notification: {replies:?}"));
    assert_eq!(u32::from_be_bytes(note.body[..4].try_into().unwrap()), pid);
}

async fn send_cancel(addr: std::net::SocketAddr, pid: u32, key: u32) {
    let mut r = Raw::connect(addr).await;
    r.send(&raw::cancel_request(pid, key)).await;
    assert!(r.until_closed().await.is_empty());
}

/// Until backend `pid` is running a query containing `text`.
async fn wait_until_running(pid: u32, text: &str) {
    let admin = cluster().admin().await;
    let running = eventually(Duration::from_secs(10), || async {
        let n: i64 = admin
            .query_one(
                "select count(*) from pg_stat_activity where pid = $1 and state = 'active' \
                 and position($2 in query) > 0",
                &[&(pid as i32), &text],
            )
            .await
            .unwrap()
            .get(0);
        n == 1
    })
    .await;
    assert!(running, "backend {pid} never ran {text}");
}

/// Issue 14, item 4: startup settings come back spelled as PostgreSQL
/// spells them, in both modes; a value PostgreSQL refuses refuses the login
/// with PostgreSQL's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_parameters_are_spelled_as_postgresql_spells_them() {
    let db = fresh_database("edges_spelling").await;
    let settings = [
        ("client_encoding", "utf8"),
        ("DateStyle", "iso,dmy"),
        ("IntervalStyle", "ISO_8601"),
        ("TimeZone", "europe/paris"),
        ("application_name", "caf\u{e9} \u{2615}"),
        ("default_transaction_read_only", "yes"),
    ];
    let with = |user: &'static str| {
        let mut params = vec![("user", user), ("database", db.as_str())];
        params.extend(settings);
        params
    };
    let (_, direct) = Raw::login_with(cluster_addr(), &with("md5user"), Some("md5-secret")).await;
    let mut expected = raw::parameters(&direct);
    // These name the role, which differs between the two logins.
    expected.remove("session_authorization");
    expected.remove("is_superuser");
    assert_eq!(expected["client_encoding"], "UTF8", "{expected:?}");
    for mode in MODES {
        let app = start_pgmux(|c| {
            c.auth_type = AuthType::Trust;
            c.pool_mode = mode;
        })
        .await;
        let (_, greeting) = Raw::login_with(app.addr, &with(APP_USER), None).await;
        let mut seen = raw::parameters(&greeting);
        seen.remove("session_authorization");
        seen.remove("is_superuser");
        assert_eq!(seen, expected, "{mode:?}");
        // A second client with the same settings is told the same.
        let (_, again) = Raw::login_with(app.addr, &with(APP_USER), None).await;
        assert_eq!(raw::parameters(&again)["TimeZone"], "Europe/Paris");

        let refused = [
            ("user", APP_USER),
            ("database", db.as_str()),
            ("TimeZone", "Mars/Olympus"),
        ];
        let (_, through) = Raw::login_with(app.addr, &refused, None).await;
        let direct_refused = [
            ("user", "md5user"),
            ("database", db.as_str()),
            ("TimeZone", "Mars/Olympus"),
        ];
        let (_, straight) =
            Raw::login_with(cluster_addr(), &direct_refused, Some("md5-secret")).await;
        let error = |msgs: &[raw::Msg]| {
            let e = msgs
                .last()
                .filter(|m| m.tag == b'E')
                .unwrap_or_else(|| panic!("{msgs:?}"));
            (e.sqlstate().unwrap(), e.field(b'M').unwrap())
        };
        assert_eq!(error(&through), error(&straight), "{mode:?}");
    }
}
