//! The admin console: PgBouncer's commands and columns, who may use it, and
//! what its control commands do to clients and servers.

use std::time::Duration;

use pgmux_tests::*;

/// Whether SHOW POOLS comes to show one client of `db` waiting for a server.
async fn one_client_waits(admin: &tokio_postgres::Client, db: &str) -> bool {
    eventually(Duration::from_secs(10), || async {
        let pools = show(admin, "SHOW POOLS").await.unwrap();
        pools
            .rows_where("database", db)
            .iter()
            .any(|r| pools.get(r, "cl_waiting") == "1")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_clients_and_servers_show_what_is_happening() {
    let db = fresh_database("console_levels").await;
    let app = start_pgmux(|c| {
        with_console_users(c);
        c.pool_size = 1;
    })
    .await;
    let admin = console(app.addr).await;
    let idle = connect(app.addr, &db).await;
    idle.simple_query("select 1").await.unwrap();
    let busy = connect(app.addr, &db).await;
    busy.batch_execute("begin").await.unwrap();
    let busy_pid = scalar_i32(&busy, "select pg_backend_pid()").await;
    // A third client waits for the only server.
    let waiter = connect(app.addr, &db).await;
    let waiting = tokio::spawn(async move {
        let seven = scalar_i32(&waiter, "select 7").await;
        // query_one returns before its ReadyForQuery is in; a simple query
        // returns after its own, so everything before it has been counted.
        waiter.batch_execute("select 1").await.unwrap();
        (seven, waiter)
    });
    assert!(one_client_waits(&admin, &db).await);
    let pools = show(&admin, "SHOW POOLS").await.unwrap();
    let row = pools.row("database", &db);
    assert_eq!(pools.get(row, "user"), APP_USER);
    assert_eq!(
        pools.get(row, "cl_active"),
        "2",
        "linked + idle, as PgBouncer counts"
    );
    assert_eq!(pools.get(row, "sv_active"), "1");
    assert_eq!(pools.get(row, "pool_mode"), "transaction");

    let servers = show(&admin, "SHOW SERVERS").await.unwrap();
    let server = servers.row("database", &db);
    assert_eq!(servers.get(server, "type"), "S");
    assert_eq!(servers.get(server, "state"), "active");
    assert_eq!(servers.get(server, "remote_pid"), busy_pid.to_string());
    let clients = show(&admin, "SHOW CLIENTS").await.unwrap();
    let ours = clients.rows_where("database", &db);
    assert_eq!(ours.len(), 3, "{:?}", clients.rows);
    let states: Vec<&str> = ours.iter().map(|r| clients.get(r, "state")).collect();
    assert!(
        states.contains(&"waiting") && states.contains(&"active"),
        "{states:?}"
    );
    // The busy client and its server point at each other.
    let linked: Vec<_> = ours
        .iter()
        .filter(|r| clients.get(r, "link") == servers.get(server, "ptr"))
        .collect();
    assert_eq!(linked.len(), 1);
    assert_eq!(servers.get(server, "link"), clients.get(linked[0], "ptr"));
    assert!(clients.get(linked[0], "connect_time").ends_with(" UTC"));

    busy.batch_execute("commit").await.unwrap();
    let (seven, _waiter) = waiting.await.unwrap();
    assert_eq!(seven, 7);

    // SHOW STATS agrees with /metrics.
    let stats = show(&admin, "SHOW STATS").await.unwrap();
    let row = stats.row("database", &db);
    let (_, text) = http_get(app.metrics_addr.unwrap(), "/metrics").await;
    let labels = [("database", db.as_str())];
    for (column, metric) in [
        ("total_query_count", "pgmux_queries_total"),
        ("total_xact_count", "pgmux_transactions_total"),
        ("total_received", "pgmux_received_bytes_total"),
        ("total_sent", "pgmux_sent_bytes_total"),
    ] {
        let shown: f64 = stats.get(row, column).parse().unwrap();
        assert_eq!(
            shown,
            metric_value(&text, metric, &labels),
            "{column} vs {metric}"
        );
        assert!(shown > 0.0, "{column}");
    }
    let xact_us: f64 = stats.get(row, "total_xact_time").parse().unwrap();
    assert!(xact_us > 0.0, "transaction time is counted");
    let histogram_count = metric_value(&text, "pgmux_transaction_duration_seconds_count", &labels);
    assert_eq!(
        histogram_count,
        metric_value(&text, "pgmux_transactions_total", &labels)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_console_users_get_in_and_stats_users_only_look() {
    let app = start_pgmux(with_console_users).await;
    let watcher = console_as(app.addr, CONSOLE_STATS, CONSOLE_STATS_PASSWORD)
        .await
        .unwrap();
    show(&watcher, "SHOW POOLS").await.unwrap();
    let denied = watcher
        .simple_query("PAUSE")
        .await
        .expect_err("PAUSE is for admins");
    let denied = denied.as_db_error().expect("an ErrorResponse");
    assert_eq!(denied.code().code(), "08P01");
    assert_eq!(denied.message(), "admin access needed");

    // The application's user is not a console user, even with its password.
    let app_user = console_as(app.addr, APP_USER, APP_PASSWORD)
        .await
        .map(|_| ());
    assert_eq!(sqlstate(app_user), "28000");
    let wrong = console_as(app.addr, CONSOLE_ADMIN, "not-it")
        .await
        .map(|_| ());
    assert_eq!(sqlstate(wrong), "28P01");

    let admin = console(app.addr).await;
    let unknown = admin.simple_query("SELECT 1").await;
    let message = unknown
        .as_ref()
        .err()
        .map(|e| format!("{e:?}"))
        .unwrap_or_default();
    assert!(message.contains("SHOW HELP"), "{message}");
    // The session goes on after an error.
    show(&admin, "SHOW VERSION").await.unwrap();
    // SHOW HELP answers with a notice and the SHOW tag.
    admin.simple_query("SHOW HELP").await.unwrap();
    // The extended protocol is refused with a clear error.
    let extended = admin.query("SHOW POOLS", &[]).await.map(|_| ());
    assert!(extended.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_waits_for_transactions_and_resume_lets_clients_go_on() {
    let db = fresh_database("console_pause").await;
    let app = start_pgmux(with_console_users).await;
    let admin = console(app.addr).await;
    let busy = connect(app.addr, &db).await;
    busy.batch_execute("begin").await.unwrap();
    busy.simple_query("select 1").await.unwrap();
    let later = connect(app.addr, &db).await;
    later.simple_query("select 1").await.unwrap();

    let admin2 = console(app.addr).await;
    let pause = {
        let db = db.clone();
        tokio::spawn(async move { admin2.simple_query(&format!("PAUSE {db}")).await })
    };
    // The pause is in force (new transactions are held) but cannot finish
    // while a transaction is open.
    assert!(
        eventually(Duration::from_secs(10), || async {
            let dbs = show(&admin, "SHOW DATABASES").await.unwrap();
            dbs.get(dbs.row("name", &db), "paused") == "1"
        })
        .await
    );
    assert!(
        !pause.is_finished(),
        "PAUSE returned with a transaction open"
    );
    let held = tokio::spawn(async move { scalar_i32(&later, "select 42").await });
    busy.batch_execute("select 2; commit").await.unwrap();
    pause.await.unwrap().unwrap();
    // Paused: servers closed, the later client waits.
    assert!(
        eventually(Duration::from_secs(10), || async {
            backends_of(&db).await == 0
        })
        .await
    );
    assert!(one_client_waits(&admin, &db).await);
    assert!(!held.is_finished());
    admin.simple_query(&format!("RESUME {db}")).await.unwrap();
    assert_eq!(held.await.unwrap(), 42);
    let again = admin.simple_query(&format!("RESUME {db}")).await;
    assert!(format!("{:?}", again.err()).contains("is not paused"));
    let nosuch = admin.simple_query("PAUSE no_such_db").await;
    assert!(format!("{:?}", nosuch.err()).contains("no such database"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_closes_clients_with_57p01_and_leaves_the_database_paused() {
    let db = fresh_database("console_kill").await;
    let app = start_pgmux(|c| {
        with_console_users(c);
        c.auth_type = pgmux::config::AuthType::Trust;
    })
    .await;
    let admin = console(app.addr).await;
    let mut idle = raw::Raw::login(app.addr, APP_USER, &db).await;
    idle.send(&raw::query("select 1")).await;
    idle.until_ready().await;
    let mut busy = raw::Raw::login(app.addr, APP_USER, &db).await;
    busy.send(&raw::query("begin; select 1")).await;
    busy.until_ready().await;

    admin.simple_query(&format!("KILL {db}")).await.unwrap();
    for client in [&mut idle, &mut busy] {
        let m = client.next().await.expect("an error before the close");
        assert_eq!(m.tag, b'E');
        assert_eq!(m.sqlstate().as_deref(), Some("57P01"));
        assert!(client.next().await.is_none(), "then the connection closes");
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            backends_of(&db).await == 0
        })
        .await
    );
    // New clients wait until RESUME.
    let late = tokio::spawn({
        let addr = app.addr;
        let db = db.clone();
        async move {
            let c = connect(addr, &db).await;
            scalar_i32(&c, "select 5").await
        }
    });
    assert!(one_client_waits(&admin, &db).await);
    admin.simple_query(&format!("RESUME {db}")).await.unwrap();
    assert_eq!(late.await.unwrap(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_replaces_servers_and_wait_close_waits_for_them() {
    let db = fresh_database("console_reconnect").await;
    let app = start_pgmux(|c| {
        with_console_users(c);
        c.pool_size = 1;
    })
    .await;
    let admin = console(app.addr).await;
    let client = connect(app.addr, &db).await;
    client.batch_execute("begin").await.unwrap();
    let before = scalar_i32(&client, "select pg_backend_pid()").await;
    admin
        .simple_query(&format!("RECONNECT {db}"))
        .await
        .unwrap();
    let servers = show(&admin, "SHOW SERVERS").await.unwrap();
    assert_eq!(
        servers.get(servers.row("database", &db), "close_needed"),
        "1"
    );
    let admin2 = console(app.addr).await;
    let wait_close = tokio::spawn(async move { admin2.simple_query("WAIT_CLOSE").await });
    client.batch_execute("commit").await.unwrap();
    wait_close.await.unwrap().unwrap();
    let after = scalar_i32(&client, "select pg_backend_pid()").await;
    assert_ne!(before, after, "the next transaction runs on a new server");
    let (_, text) = http_get(app.metrics_addr.unwrap(), "/metrics").await;
    assert_eq!(
        metric_value(
            &text,
            "pgmux_server_closed_total",
            &[("database", &db), ("reason", "reconnect")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_refuses_new_logins_until_enable() {
    let db = fresh_database("console_disable").await;
    let app = start_pgmux(with_console_users).await;
    let admin = console(app.addr).await;
    let inside = connect(app.addr, &db).await;
    admin.simple_query(&format!("DISABLE {db}")).await.unwrap();
    let refused = try_connect(&dsn(app.addr, &db)).await.map(|_| ());
    assert_eq!(sqlstate(refused), "55000");
    assert_eq!(
        scalar_i32(&inside, "select 3").await,
        3,
        "clients inside go on"
    );
    admin.simple_query(&format!("ENABLE {db}")).await.unwrap();
    let back = connect(app.addr, &db).await;
    assert_eq!(scalar_i32(&back, "select 4").await, 4);
    let (_, text) = http_get(app.metrics_addr.unwrap(), "/metrics").await;
    assert!(
        metric_value(
            &text,
            "pgmux_client_login_failures_total",
            &[("reason", "database_disabled")]
        ) >= 1.0
    );
}

/// Issue 12: a client closed while it waits for a server (here by KILL)
/// leaves no count behind: SHOW POOLS shows nobody waiting and no wait
/// time afterwards. The wait's bookkeeping is a guard that its dropped
/// future undoes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_while_waiting_leaves_no_waiter_behind() {
    let db = fresh_database("console_kill_waiter").await;
    let app = start_pgmux(|c| {
        with_console_users(c);
        c.pool_size = 1;
        c.auth_type = pgmux::config::AuthType::Trust;
    })
    .await;
    let admin = console(app.addr).await;
    let mut holder = raw::Raw::login(app.addr, APP_USER, &db).await;
    holder.send(&raw::query("begin; select 1")).await;
    holder.until_ready().await;
    let mut waiter = raw::Raw::login(app.addr, APP_USER, &db).await;
    waiter.send(&raw::query("select 2")).await;
    assert!(one_client_waits(&admin, &db).await);

    admin.simple_query(&format!("KILL {db}")).await.unwrap();
    for client in [&mut holder, &mut waiter] {
        let m = client.next().await.expect("an error before the close");
        assert_eq!(m.sqlstate().as_deref(), Some("57P01"), "{m:?}");
    }
    let settled = eventually(Duration::from_secs(10), || async {
        let pools = show(&admin, "SHOW POOLS").await.unwrap();
        pools.rows_where("database", &db).iter().all(|r| {
            pools.get(r, "cl_waiting") == "0"
                && pools.get(r, "maxwait") == "0"
                && pools.get(r, "cl_active") == "0"
        })
    })
    .await;
    assert!(settled, "a killed waiter is still counted in SHOW POOLS");
}
