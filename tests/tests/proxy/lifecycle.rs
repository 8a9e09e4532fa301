//! pgmux as a process: SIGTERM drains, SIGHUP reloads, a second signal
//! stops at once, and so_reuseport hands a port over without refusals.

use std::time::Duration;

use pgmux_tests::process::{config_text, free_port, Proc};
use pgmux_tests::raw::{self, Raw};
use pgmux_tests::*;

async fn in_transaction(addr: std::net::SocketAddr, db: &str) -> Raw {
    let mut c = Raw::login(addr, APP_USER, db).await;
    c.send(&raw::query("begin; select 1")).await;
    let replies = c.until_ready().await;
    assert_eq!(replies.last().unwrap().body, b"T");
    c
}

/// The next message is FATAL 57P01, then the connection closes.
async fn told_to_go(c: &mut Raw) {
    let m = c.next().await.expect("an error before the close");
    assert_eq!(m.tag, b'E', "{m:?}");
    assert_eq!(m.sqlstate().as_deref(), Some("57P01"), "{m:?}");
    assert!(
        c.next().await.is_none(),
        "the connection closes after 57P01"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_transactions_finish_then_exits_zero() {
    let db = fresh_database("life_sigterm").await;
    let config = config_text(
        "127.0.0.1:0",
        "auth_type = \"trust\"\nshutdown_timeout = 120",
    );
    let mut pgmux = Proc::start("sigterm", &config, &[]).await;
    let mut busy = in_transaction(pgmux.addr, &db).await;
    let mut idle = Raw::login(pgmux.addr, APP_USER, &db).await;

    pgmux.signal(libc::SIGTERM);
    told_to_go(&mut idle).await;
    pgmux.wait_for_line("stopped accepting").await;
    let refused = tokio::net::TcpStream::connect(pgmux.addr).await;
    assert!(refused.is_err(), "no new connections while draining");
    // Still observable while draining.
    let (status, _) = http_get(pgmux.metrics, "/readyz").await;
    assert!(status.contains("503"), "{status}");
    let (status, text) = http_get(pgmux.metrics, "/metrics").await;
    assert!(status.contains("200"));
    assert_eq!(metric_value(&text, "pgmux_shutting_down", &[]), 1.0);

    // The transaction in flight goes on to its end...
    busy.send(&raw::query("select 3")).await;
    busy.until_ready().await;
    busy.send(&raw::query("select 2; commit")).await;
    let replies = busy.until_ready().await;
    assert!(
        replies
            .iter()
            .any(|m| m.tag == b'C' && m.body.starts_with(b"COMMIT")),
        "{replies:?}"
    );
    assert_eq!(replies.last().unwrap().body, b"I");
    // ...and then the client is let go.
    told_to_go(&mut busy).await;
    let status = pgmux.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", pgmux.log_text());
    assert!(pgmux.log_text().contains("shutdown complete"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_ends_a_transaction_left_open() {
    let db = fresh_database("life_timeout").await;
    let config = config_text(
        "127.0.0.1:0",
        "auth_type = \"trust\"\nshutdown_timeout = 0.5",
    );
    let mut pgmux = Proc::start("timeout", &config, &[]).await;
    let mut busy = in_transaction(pgmux.addr, &db).await;
    pgmux.signal(libc::SIGTERM);
    told_to_go(&mut busy).await;
    assert_eq!(pgmux.wait_exit().await.code(), Some(0));
    assert!(pgmux.log_text().contains("shutdown_timeout reached"));
    // PostgreSQL saw the transaction end without a commit.
    assert!(
        eventually(Duration::from_secs(10), || async {
            backends_of(&db).await == 0
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_at_once() {
    let db = fresh_database("life_second").await;
    let config = config_text(
        "127.0.0.1:0",
        "auth_type = \"trust\"\nshutdown_timeout = 3600",
    );
    let mut pgmux = Proc::start("second", &config, &[]).await;
    let _busy = in_transaction(pgmux.addr, &db).await;
    pgmux.signal(libc::SIGTERM);
    pgmux.wait_for_line("shutting down: draining").await;
    pgmux.signal(libc::SIGINT);
    // An hour of shutdown_timeout is not waited out.
    assert_eq!(pgmux.wait_exit().await.code(), Some(0));
    assert!(
        pgmux.log_text().contains("second signal"),
        "{}",
        pgmux.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_databases_and_sizes_and_refuses_a_bad_file() {
    let db = fresh_database("life_reload").await;
    let first = format!(
        "wildcard_databases = false\npool_size = 2\n[databases.first]\ndbname = \"{db}\"\n"
    );
    let config = config_text("127.0.0.1:0", &first);
    let mut pgmux = Proc::start("reload", &config, &[]).await;
    let kept = connect(pgmux.addr, "first").await;
    let pid_before = scalar_i32(&kept, "select pg_backend_pid()").await;
    let second = try_connect(&dsn(pgmux.addr, "second")).await.map(|_| ());
    assert_eq!(sqlstate(second), "3D000");

    let grown = format!(
        "wildcard_databases = false\npool_size = 5\n[databases.first]\ndbname = \"{db}\"\n[databases.second]\ndbname = \"{db}\"\n"
    );
    std::fs::write(&pgmux.config, config_text("127.0.0.1:0", &grown)).unwrap();
    pgmux.signal(libc::SIGHUP);
    pgmux.wait_for_line("configuration reloaded").await;
    let second = connect(pgmux.addr, "second").await;
    assert_eq!(scalar_i32(&second, "select 1").await, 1);
    // The connected client kept its session and its server.
    assert_eq!(
        scalar_i32(&kept, "select pg_backend_pid()").await,
        pid_before
    );

    std::fs::write(&pgmux.config, "pool_size = \"many\"\n").unwrap();
    pgmux.signal(libc::SIGHUP);
    pgmux.wait_for_line("configuration reload refused").await;
    // The running configuration stays: both names still work.
    connect(pgmux.addr, "second").await;
    assert_eq!(scalar_i32(&kept, "select 2").await, 2);
    let (_, text) = http_get(pgmux.metrics, "/metrics").await;
    assert_eq!(
        metric_value(&text, "pgmux_reloads_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        metric_value(&text, "pgmux_reloads_total", &[("result", "error")]),
        1.0
    );
    assert_eq!(
        metric_value(&text, "pgmux_pool_size", &[("database", "first")]),
        5.0,
        "pool_size applies to the existing pool"
    );
    assert!(
        !pgmux.log_text().contains(APP_PASSWORD),
        "no secret in the log"
    );
}

/// One client's whole life: log in, one query, leave. `Err` only when the
/// connection attempt itself failed; a query cut off by the old instance's
/// drain (57P01) is `Ok(false)`.
async fn one_client(addr: std::net::SocketAddr, db: &str) -> Result<bool, String> {
    let dsn = format!(
        "host={} port={} user={APP_USER} dbname={db}",
        addr.ip(),
        addr.port()
    );
    let client = try_connect(&dsn).await.map_err(|e| format!("{e:?}"))?;
    match client.simple_query("select 1").await {
        Ok(_) => Ok(true),
        Err(e) if e.code().map(|c| c.code()) == Some("57P01") || e.is_closed() => Ok(false),
        Err(e) => Err(format!("query: {e}")),
    }
}

/// Clients one after another until `enough` holds; returns how many were
/// served and every failure.
async fn load_until<F, Fut>(
    addr: std::net::SocketAddr,
    db: &str,
    mut enough: F,
) -> (u32, Vec<String>)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let (mut served, mut failures) = (0u32, Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !enough().await && tokio::time::Instant::now() < deadline {
        for _ in 0..5 {
            match one_client(addr, db).await {
                Ok(true) => served += 1,
                Ok(false) => {}
                Err(e) => failures.push(e),
            }
        }
    }
    (served, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn so_reuseport_lets_a_new_pgmux_take_over_without_refusals() {
    let db = fresh_database("life_reuseport").await;
    let listen = format!("127.0.0.1:{}", free_port());
    let config = config_text(
        &listen,
        "auth_type = \"trust\"\nso_reuseport = true\nshutdown_timeout = 5",
    );
    let mut old = Proc::start("reuseport-old", &config, &[]).await;
    let new = Proc::start("reuseport-new", &config, &[]).await;
    assert_eq!(old.addr, new.addr, "both listen on one port");
    let addr = old.addr;

    // Both instances take connections on the shared port.
    let (served, failures) = load_until(addr, &db, || async {
        served_by(&old).await >= 10.0 && served_by(&new).await >= 10.0
    })
    .await;
    assert!(failures.is_empty(), "refused or failed: {failures:?}");
    assert!(
        served_by(&old).await >= 10.0 && served_by(&new).await >= 10.0,
        "the kernel spreads connections over both"
    );

    // The old one stops accepting; every new client lands on the new one.
    // (A connection the kernel queued on the old socket at the very instant
    // it closes can still be reset; Linux's net.ipv4.tcp_migrate_req moves
    // those. The load pauses while the old one stops, so this test is exact.)
    old.signal(libc::SIGTERM);
    assert_eq!(old.wait_exit().await.code(), Some(0));
    let before = served_by(&new).await;
    let (served_after, failures) = load_until(addr, &db, || async {
        served_by(&new).await >= before + 30.0
    })
    .await;
    assert!(
        failures.is_empty(),
        "refused or failed after the handover: {failures:?}"
    );
    // Each phase runs until its instances served their share (10 + 10,
    // then 30 on the new one), so exactly those counts are a pass.
    assert!(
        served >= 20 && served_after >= 30,
        "{served} + {served_after} clients served"
    );
    assert_eq!(old.wait_exit().await.code(), Some(0));
}

async fn served_by(p: &Proc) -> f64 {
    let (_, text) = http_get(p.metrics, "/metrics").await;
    metric_value(&text, "pgmux_client_logins_total", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_connections_and_periodic_stats_without_secrets() {
    let db = fresh_database("life_logs").await;
    let config = config_text("127.0.0.1:0", "log_format = \"json\"\nstats_period = 0.2");
    let mut pgmux = Proc::start("logs", &config, &[]).await;
    let c = connect(pgmux.addr, &db).await;
    c.simple_query("select 1").await.unwrap();
    drop(c);
    pgmux.wait_for_line("client disconnected").await;
    let stats = pgmux.wait_for_line("stats: ").await;
    assert!(
        stats.starts_with('{') && stats.contains("xacts/s"),
        "{stats}"
    );
    let log = pgmux.log_text();
    let login = log
        .lines()
        .find(|l| l.contains("client logged in"))
        .unwrap();
    assert!(login.starts_with('{'), "JSON lines: {login}");
    for field in ["\"database\":", "\"user\":", "peer"] {
        assert!(login.contains(field), "{field} in {login}");
    }
    assert!(!log.contains(APP_PASSWORD), "no secret in the log");
    pgmux.signal(libc::SIGTERM);
    assert_eq!(pgmux.wait_exit().await.code(), Some(0));
}
