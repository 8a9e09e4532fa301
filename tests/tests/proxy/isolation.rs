//! Nothing one client does can hurt another (issue 12, its isolation
//! holes): SQL cannot destroy the pool's shared statements, and a refused
//! DROP DATABASE costs nobody else a server connection.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use pgmux_tests::*;

/// Clients running prepared statements outside transactions (Bind,
/// Execute, Sync each) until `stop`; returns how many errors they saw.
fn victims(
    addr: std::net::SocketAddr,
    db: &str,
    clients: usize,
    stop: Arc<AtomicBool>,
    runs: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..clients)
        .map(|i| {
            let db = db.to_string();
            let stop = stop.clone();
            let runs = runs.clone();
            tokio::spawn(async move {
                let c = connect(addr, &db).await;
                let one = c.prepare("select $1::int + 1").await.unwrap();
                let two = c
                    .prepare("select count(*) from pg_class where oid > $1::oid")
                    .await
                    .unwrap();
                let mut errors = Vec::new();
                let mut n: i32 = i as i32;
                while !stop.load(Ordering::Relaxed) {
                    match c.query_one(&one, &[&n]).await {
                        Ok(row) => assert_eq!(row.get::<_, i32>(0), n + 1),
                        Err(e) => errors.push(e.to_string()),
                    }
                    if let Err(e) = c.query_one(&two, &[&0u32]).await {
                        errors.push(e.to_string());
                    }
                    runs.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
                errors
            })
        })
        .collect()
}

/// Issue 12: one client trying every way to drop the pool's shared
/// statements from SQL; six others running prepared statements see no
/// error. Plain uses of the reserved names are refused before they reach a
/// server (42P05/26000); a name built at run time slips through to the
/// server, which then answers 26000 to a victim, and pgmux prepares the
/// statement again and re-sends the victim's request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_cannot_destroy_the_pools_shared_statements() {
    let db = fresh_database("iso_statements").await;
    let app = start_pgmux(|c| c.pool_size = 3).await;
    let metrics = app.metrics_addr.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicU64::new(0));
    let tasks = victims(app.addr, &db, 6, stop.clone(), runs.clone());

    let attacker = connect(app.addr, &db).await;
    let names: Vec<String> = (0..4).map(|i| format!("pgmux_{i}")).collect();
    let mut refused = Vec::new();
    for round in 0..40 {
        for name in &names {
            let plain = [
                format!("select 1; deallocate {name}"),
                format!("DEALLOCATE PREPARE \"{name}\""),
                format!("do $$ begin execute 'deallocate {name}'; end $$"),
                format!("prepare {name} as select 1"),
                format!("execute {name}"),
            ];
            for sql in &plain {
                refused.push(sqlstate(attacker.simple_query(sql).await));
            }
            // Built at run time: no text to find. The server drops it.
            let built = format!(
                "do $$ begin execute 'dealloc' || 'ate ' || 'pgmux_' || {}; exception when others then null; end $$",
                &name["pgmux_".len()..]
            );
            attacker.simple_query(&built).await.unwrap();
        }
        if round == 20 {
            // And from a pinned session (an advisory lock keeps its server).
            attacker
                .simple_query("select pg_advisory_lock(12)")
                .await
                .unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for t in tasks {
        errors.extend(t.await.unwrap());
    }
    assert!(runs.load(Ordering::Relaxed) > 0);
    assert_eq!(errors, Vec::<String>::new(), "other clients saw errors");
    assert!(
        refused
            .iter()
            .all(|code| code == "26000" || code == "42P05"),
        "{refused:?}"
    );
    assert_eq!(refused.len(), 40 * 4 * 5);
    // The built names did reach servers, and were healed.
    let healed = metric(
        metrics,
        "pgmux_statements_lost_total",
        &[("database", &db), ("retried", "yes")],
    )
    .await;
    println!("statements lost and healed by a retry: {healed}");
}

/// Issue 12: a client looping on DROP DATABASE of its own database, each
/// refused by PostgreSQL, closes no other client's server: pgmux no longer
/// closes idle servers when it merely sees the statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_drop_database_costs_nobody_a_server() {
    let db = fresh_database("iso_drop").await;
    let app = start_pgmux(|c| c.pool_size = 2).await;
    let metrics = app.metrics_addr.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicU64::new(0));
    let tasks = victims(app.addr, &db, 3, stop.clone(), runs.clone());
    let dropper = connect(app.addr, &db).await;
    // Warm up: three clients on two servers open the whole pool.
    let opened = eventually(std::time::Duration::from_secs(20), || async {
        metric(metrics, "pgmux_server_connects_total", &[("database", &db)]).await == 2.0
    })
    .await;
    assert!(opened);
    let opened_before = metric(metrics, "pgmux_server_connects_total", &[("database", &db)]).await;
    let closed_before = metric(metrics, "pgmux_server_closed_total", &[("database", &db)]).await;
    let runs_before = runs.load(Ordering::Relaxed);
    let mut codes = Vec::new();
    for _ in 0..200 {
        codes.push(sqlstate(
            dropper
                .simple_query(&format!("drop database \"{db}\""))
                .await,
        ));
    }
    // Dropping a database it does not own is refused too.
    codes.push(sqlstate(
        dropper.simple_query("drop database postgres").await,
    ));
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        assert_eq!(t.await.unwrap(), Vec::<String>::new());
    }
    assert!(codes[..200].iter().all(|c| c == "55006"), "{codes:?}");
    assert_eq!(codes[200], "42501");
    let opened = metric(metrics, "pgmux_server_connects_total", &[("database", &db)]).await;
    let closed = metric(metrics, "pgmux_server_closed_total", &[("database", &db)]).await;
    assert_eq!(opened, opened_before, "refused drops made pgmux reconnect");
    assert_eq!(closed, closed_before);
    assert!(
        runs.load(Ordering::Relaxed) > runs_before,
        "the others kept running"
    );
}

/// A DROP DATABASE that only pgmux's idle servers block still works: they
/// are closed and the drop runs once more (Django's test runner does this).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_blocked_only_by_idle_servers_goes_through() {
    let doomed = fresh_database("iso_doomed").await;
    let home = fresh_database("iso_home").await;
    let app = start_pgmux(|_| {}).await;
    // Two idle servers to the doomed database.
    let a = connect(app.addr, &doomed).await;
    let b = connect(app.addr, &doomed).await;
    let (ra, rb) = tokio::join!(
        a.simple_query("select pg_sleep(0.2)"),
        b.simple_query("select pg_sleep(0.2)")
    );
    ra.unwrap();
    rb.unwrap();
    drop((a, b));
    assert_eq!(backends_of(&doomed).await, 2);
    let c = connect(app.addr, &home).await;
    c.simple_query(&format!("drop database \"{doomed}\""))
        .await
        .unwrap();
    assert_eq!(backends_of(&doomed).await, 0);
    // A client still connected to it (even idle) is not pgmux's to close:
    // its own server is busy holding it in a transaction.
    let again = fresh_database("iso_doomed").await;
    let holder = connect(app.addr, &again).await;
    holder.batch_execute("begin; select 1").await.unwrap();
    let code = sqlstate(c.simple_query(&format!("drop database \"{again}\"")).await);
    assert_eq!(code, "55006");
    holder.batch_execute("commit").await.unwrap();
}
