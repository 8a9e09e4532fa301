//! Several servers for one database (issue 13, items 1 and 2): a primary
//! and a streaming standby made by the harness (`pg_basebackup -R`), a
//! host list with libpq's `target_session_attrs`, and a failover by
//! `pg_ctl promote` that pgmux follows without a restart.

use std::sync::Arc;

use pgmux::config::{Config, SessionAttrs};
use pgmux_tests::replication::{on_pair, started, Pair};
use pgmux_tests::*;

async fn pair(name: &'static str) -> Arc<Pair> {
    started(name, false).await
}

/// `ALTER SYSTEM <change>` on the primary, applied by a reload.
fn alter_primary(pair: &Pair, change: &str) {
    pair.psql(pair.primary.port, &format!("ALTER SYSTEM {change}"));
    pair.psql(pair.primary.port, "SELECT pg_reload_conf()");
}

fn listing(c: &mut Config, hosts: &[u16], attrs: SessionAttrs) {
    c.server_host = hosts
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect::<Vec<_>>()
        .join(",");
    c.target_session_attrs = attrs;
    c.server_connect_timeout = 3.0;
    c.server_tls_sslmode = pgmux::config::SslMode::Disable;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_session_attrs_picks_the_server_from_the_list() {
    let pair = pair("attrs").await;
    let (p, s) = (pair.primary.port, pair.standby.port);
    // The standby is listed first: read-write passes it over.
    let writer = start_pgmux(|c| {
        listing(c, &[s, p], SessionAttrs::ReadWrite);
        with_console_users(c);
    })
    .await;
    let c = connect(writer.addr, "app").await;
    assert_eq!(
        scalar_text(&c, "select pg_is_in_recovery()::text").await,
        "false"
    );
    c.batch_execute("create table t (x int); insert into t values (1)")
        .await
        .unwrap();
    // The console says where the server is, what it is, and which listed
    // server is the primary.
    let admin = console(writer.addr).await;
    let servers = show(&admin, "SHOW SERVERS").await.unwrap();
    let primary = format!("127.0.0.1:{p}");
    assert!(
        servers
            .rows
            .iter()
            .any(|r| servers.get(r, "host") == primary && servers.get(r, "role") == "primary"),
        "{:?}",
        servers.rows
    );
    let dbs = show(&admin, "SHOW DATABASES").await.unwrap();
    let app_db = &dbs.rows_where("name", "app")[0];
    assert_eq!(dbs.get(app_db, "primary"), primary);
    assert_eq!(
        dbs.get(app_db, "host"),
        format!("127.0.0.1:{s},127.0.0.1:{p}")
    );
    let reader = start_pgmux(|c| listing(c, &[p, s], SessionAttrs::Standby)).await;
    let r = connect(reader.addr, "app").await;
    assert_eq!(
        scalar_text(&r, "select pg_is_in_recovery()::text").await,
        "true"
    );
    let preferring = start_pgmux(|c| listing(c, &[p, s], SessionAttrs::PreferStandby)).await;
    let r = connect(preferring.addr, "app").await;
    assert_eq!(
        scalar_text(&r, "select pg_is_in_recovery()::text").await,
        "true"
    );
    // Only the standby listed, and a writable server asked for: refused,
    // naming the setting and what each server was.
    let nowhere = start_pgmux(|c| listing(c, &[s], SessionAttrs::ReadWrite)).await;
    let err = try_connect(&dsn(nowhere.addr, "app"))
        .await
        .expect_err("no writable server");
    let message = told(&err);
    assert!(
        message.contains("target_session_attrs") && message.contains("standby"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_the_promoted_standby_without_a_restart() {
    let pair = pair("promote").await;
    let (p, s) = (pair.primary.port, pair.standby.port);
    let app = start_pgmux(|c| {
        listing(c, &[p, s], SessionAttrs::ReadWrite);
        c.pool_size = 2;
        with_console_users(c);
    })
    .await;
    let idle = connect(app.addr, "app").await;
    idle.batch_execute("create table t (x int); insert into t values (1)")
        .await
        .unwrap();
    let busy = connect(app.addr, "app").await;
    busy.batch_execute("begin; insert into t values (2)")
        .await
        .unwrap();

    on_pair(&pair, |pair| {
        pair.sync();
        pair.stop_primary()
    })
    .await;
    // The transaction in flight is lost with its server, and said so.
    assert!(busy.batch_execute("commit").await.is_err());
    on_pair(&pair, |pair| pair.promote_standby()).await;

    // The idle client's next write goes to the new primary at once.
    idle.batch_execute("insert into t values (3)")
        .await
        .unwrap();
    assert_eq!(
        scalar_text(&idle, "select pg_is_in_recovery()::text").await,
        "false"
    );
    assert_eq!(
        scalar_i32(&idle, "select inet_server_port()").await,
        i32::from(s),
        "served by the promoted standby"
    );
    let on_new_primary = {
        let pair = pair.clone();
        tokio::task::spawn_blocking(move || {
            pair.query_in(
                pair.standby.port,
                "app",
                "select string_agg(x::text, ',' order by x) from t",
            )
        })
        .await
        .unwrap()
    };
    assert_eq!(
        on_new_primary, "1,3",
        "the committed rows, and not the lost one"
    );
    let fresh = connect(app.addr, "app").await;
    assert_eq!(scalar_i32(&fresh, "select 1").await, 1);
    // The console names the new primary.
    let admin = console(app.addr).await;
    let dbs = show(&admin, "SHOW DATABASES").await.unwrap();
    let app_db = &dbs.rows_where("name", "app")[0];
    assert_eq!(dbs.get(app_db, "primary"), format!("127.0.0.1:{s}"));
}

/// A server that refuses a write as read-only (25006) where a writable
/// one is wanted means the primary moved: the pool's servers are replaced
/// (once), and the next write goes through a server that takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_as_read_only_replaces_the_pools_servers() {
    let pair = pair("readonly").await;
    let (p, s) = (pair.primary.port, pair.standby.port);
    let app = start_pgmux(|c| listing(c, &[p, s], SessionAttrs::ReadWrite)).await;
    let c = connect(app.addr, "app").await;
    c.batch_execute("create table t (x int)").await.unwrap();
    let before = backend_pid(&c).await;

    on_pair(&pair, |pair| {
        alter_primary(pair, "SET default_transaction_read_only = on")
    })
    .await;
    let refused = eventually(std::time::Duration::from_secs(10), || async {
        let r = c.batch_execute("insert into t values (1)").await;
        matches!(r, Err(e) if e.code().map(|c| c.code()) == Some("25006"))
    })
    .await;
    assert!(refused, "a write refused as read-only");
    on_pair(&pair, |pair| {
        alter_primary(pair, "RESET default_transaction_read_only")
    })
    .await;
    c.batch_execute("insert into t values (2)").await.unwrap();
    assert_ne!(backend_pid(&c).await, before, "a new server");
    assert_eq!(
        metric(app.metrics_addr.unwrap(), "pgmux_failovers_total", &[]).await,
        1.0
    );
}

/// A listed server that refuses connections is tried last for
/// `replica_ban_time`, and /metrics says so; the one that answers shows
/// its role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_server_in_the_list_is_held_back_and_shown() {
    let db = fresh_database("hosts_ban").await;
    // Nothing listens on 127.0.0.2 (everything of the tests is on
    // 127.0.0.1): refused, every time.
    let dead = format!("127.0.0.2:{}", cluster().port);
    let live = format!("127.0.0.1:{}", cluster().port);
    let (d, l) = (dead.clone(), live.clone());
    let app = start_pgmux(move |c| {
        listing(c, &[], SessionAttrs::ReadWrite);
        c.server_host = format!("{d},{l}");
    })
    .await;
    let c = connect(app.addr, &db).await;
    assert_eq!(scalar_i32(&c, "select 1").await, 1);
    let metrics = app.metrics_addr.unwrap();
    assert_eq!(
        metric(metrics, "pgmux_replica_banned", &[("host", &dead)]).await,
        1.0
    );
    assert_eq!(
        metric(metrics, "pgmux_replica_banned", &[("host", &live)]).await,
        0.0
    );
    assert_eq!(
        metric(
            metrics,
            "pgmux_server_role",
            &[("host", &live), ("role", "primary")]
        )
        .await,
        1.0
    );
}

/// A standby with more received WAL left to replay than
/// `replica_max_lag` is passed over: refused where only standbys will do,
/// and skipped for the primary under `prefer-standby`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_too_far_behind_is_passed_over() {
    let pair = pair("lag").await;
    let (p, s) = (pair.primary.port, pair.standby.port);
    // A pool whose standby server is checked before every lending
    // (server_check_delay 0), opened while the standby keeps up.
    let watching = start_pgmux(|c| {
        listing(c, &[s], SessionAttrs::Standby);
        c.replica_max_lag = 1024;
        c.server_check_delay = 0.0;
    })
    .await;
    let watched = connect(watching.addr, "app").await;
    assert_eq!(scalar_i32(&watched, "select 1").await, 1);
    // Replay paused on the standby while the primary writes: the standby
    // receives WAL it does not replay.
    on_pair(&pair, |pair| {
        pair.psql(pair.standby.port, "SELECT pg_wal_replay_pause()");
        pair.psql(
            pair.primary.port,
            "CREATE TABLE filler AS SELECT g FROM generate_series(1, 100000) g",
        );
        let behind =
            "SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) > 100000";
        let start = std::time::Instant::now();
        while pair.query(pair.standby.port, behind) != "t" {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "the standby never fell behind"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    })
    .await;
    // The open server is found behind at its next lending and closed, and
    // no other server fits: the request is refused, saying why.
    let refused = watched
        .simple_query("select 2")
        .await
        .expect_err("the lagging standby is closed");
    let why = told(&refused);
    assert!(why.contains("bytes of WAL behind"), "{why}");
    let strict = start_pgmux(|c| {
        listing(c, &[s], SessionAttrs::Standby);
        c.replica_max_lag = 1024;
    })
    .await;
    let err = try_connect(&dsn(strict.addr, "app"))
        .await
        .expect_err("only a lagging standby");
    let message = told(&err);
    assert!(message.contains("bytes of WAL behind"), "{message}");
    let preferring = start_pgmux(|c| {
        listing(c, &[s, p], SessionAttrs::PreferStandby);
        c.replica_max_lag = 1024;
    })
    .await;
    let c = connect(preferring.addr, "app").await;
    assert_eq!(
        scalar_text(&c, "select pg_is_in_recovery()::text").await,
        "false"
    );
    let lenient = start_pgmux(|c| listing(c, &[s], SessionAttrs::Standby)).await;
    let c = connect(lenient.addr, "app").await;
    assert_eq!(
        scalar_text(&c, "select pg_is_in_recovery()::text").await,
        "true"
    );
}
