//! Transaction mode, session state: settings (search_path, custom ones,
//! set_config) follow their client and never reach another; state that
//! cannot move (LISTEN, advisory locks, temp tables, WITH HOLD cursors, SQL
//! PREPARE, unreadable custom settings) pins the client to its server until
//! it lets go, and is reset before anyone else gets that server.

use std::time::Duration;

use pgmux_tests::*;
use tokio_postgres::AsyncMessage;

/// A client whose notifications (LISTEN) arrive on a channel.
async fn listener(
    dsn: &str,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (client, mut conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n.payload().to_string());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    (client, rx)
}

async fn pinned_gauge(metrics: std::net::SocketAddr, db: &str) -> f64 {
    metric(metrics, "pgmux_clients_pinned", &[("database", db)]).await
}

async fn pins_total(metrics: std::net::SocketAddr, db: &str, reason: &str) -> f64 {
    metric(
        metrics,
        "pgmux_client_pins_total",
        &[("database", db), ("reason", reason)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_pins_until_unlisten_and_notifications_reach_an_idle_client() {
    let db = fresh_database("tx_listen").await;
    let app = start_pgmux(|c| c.pool_size = 2).await;
    let metrics = app.metrics_addr.unwrap();
    let (a, mut notes) = listener(&dsn(app.addr, &db)).await;
    let b = connect(app.addr, &db).await;
    a.batch_execute("listen jobs").await.unwrap();
    let a_pid = backend_pid(&a).await;
    assert_eq!(pinned_gauge(metrics, &db).await, 1.0);
    assert_eq!(pins_total(metrics, &db, "listen").await, 1.0);
    for i in 0..10 {
        // b never gets a's server, and a keeps it.
        assert_ne!(backend_pid(&b).await, a_pid);
        b.batch_execute(&format!("notify jobs, 'job {i}'"))
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), notes.recv())
            .await
            .expect("a notification reached the idle listener")
            .unwrap();
        assert_eq!(got, format!("job {i}"));
        assert_eq!(backend_pid(&a).await, a_pid);
    }
    a.batch_execute("unlisten *").await.unwrap();
    // pgmux looks at the session after replying; a's next reply comes after.
    backend_pid(&a).await;
    assert_eq!(pinned_gauge(metrics, &db).await, 0.0);
    // Unpinned, a's server serves others again: with b in a transaction
    // on one server, a new client is served by the other.
    b.batch_execute("begin").await.unwrap();
    let b_pid = backend_pid(&b).await;
    let d = connect(app.addr, &db).await;
    let d_pid = tokio::time::timeout(Duration::from_secs(10), backend_pid(&d))
        .await
        .expect("a's old server is free again");
    assert_ne!(d_pid, b_pid);
    b.batch_execute("rollback").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisory_locks_pin_until_released_and_never_leak() {
    let db = fresh_database("tx_advisory").await;
    let app = start_pgmux(|c| c.pool_size = 2).await;
    let metrics = app.metrics_addr.unwrap();
    let a = connect(app.addr, &db).await;
    let b = connect(app.addr, &db).await;
    a.query_one("select pg_advisory_lock(7)", &[])
        .await
        .unwrap();
    a.query_one("select pg_advisory_lock(7)", &[])
        .await
        .unwrap();
    let a_pid = backend_pid(&a).await;
    assert_eq!(pinned_gauge(metrics, &db).await, 1.0);
    for _ in 0..6 {
        assert_ne!(backend_pid(&b).await, a_pid);
        assert_eq!(backend_pid(&a).await, a_pid);
        let free: bool = b
            .query_one("select pg_try_advisory_lock(7)", &[])
            .await
            .unwrap()
            .get(0);
        assert!(!free, "the lock is a's");
    }
    // Locked twice: one unlock keeps it (and the pin), the second frees it.
    // (pgmux looks at the session after replying; a's next reply comes after.)
    a.query_one("select pg_advisory_unlock(7)", &[])
        .await
        .unwrap();
    backend_pid(&a).await;
    assert_eq!(pinned_gauge(metrics, &db).await, 1.0);
    a.query_one("select pg_advisory_unlock(7)", &[])
        .await
        .unwrap();
    backend_pid(&a).await;
    assert_eq!(pinned_gauge(metrics, &db).await, 0.0);
    assert_eq!(pins_total(metrics, &db, "advisory_lock").await, 1.0);

    // A client that leaves while holding one: the server is reset before
    // anyone else gets it.
    let leaver = connect(app.addr, &db).await;
    leaver
        .query_one("select pg_advisory_lock(8)", &[])
        .await
        .unwrap();
    drop(leaver);
    let held_by_anyone = "select count(*)::int from pg_locks where locktype = 'advisory'";
    assert!(
        eventually(Duration::from_secs(10), || async {
            scalar_i32(&b, held_by_anyone).await == 0
        })
        .await,
        "the lock of a client that left was released"
    );
    assert_eq!(pinned_gauge(metrics, &db).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_tables_hold_cursors_and_sql_prepare_pin_and_are_reset_after() {
    let db = fresh_database("tx_temp").await;
    let app = start_pgmux(|c| c.pool_size = 1).await;
    let metrics = app.metrics_addr.unwrap();
    let a = connect(app.addr, &db).await;
    a.batch_execute("create temp table scratch (x int); insert into scratch values (1), (2)")
        .await
        .unwrap();
    a.batch_execute("prepare twice(int) as select $1 * 2; declare c cursor with hold for select g from generate_series(1, 3) g")
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(scalar_i32(&a, "select count(*)::int from scratch").await, 2);
        assert_eq!(scalar_i32(&a, "execute twice(21)").await, 42);
    }
    let fetched = a.simple_query("fetch 2 from c").await.unwrap();
    assert_eq!(
        fetched
            .iter()
            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
            .count(),
        2
    );
    for reason in ["temp_table", "with_hold_cursor", "sql_prepare"] {
        assert_eq!(pins_total(metrics, &db, reason).await, 1.0, "{reason}");
    }
    // The pool's one server is a's: another client waits for it ...
    let (addr, db_b) = (app.addr, db.clone());
    let waiting = tokio::spawn(async move {
        let b = connect(addr, &db_b).await;
        let left = scalar_i32(
            &b,
            "select (select count(*) from pg_class where relnamespace = pg_my_temp_schema())::int \
             + (select count(*) from pg_cursors where is_holdable)::int \
             + (select count(*) from pg_prepared_statements where from_sql)::int",
        )
        .await;
        (b, left)
    });
    // ... until a lets go of everything, which unpins it.
    a.batch_execute("drop table scratch; close c; deallocate twice")
        .await
        .unwrap();
    let (_b, left) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the unpinned server served the waiting client")
        .unwrap();
    assert_eq!(left, 0, "nothing of a's session reached b");
    assert_eq!(pinned_gauge(metrics, &db).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_path_and_session_settings_follow_their_client() {
    let db = fresh_database("tx_search_path").await;
    let app = start_pgmux(|c| c.pool_size = 2).await;
    let setup = connect(app.addr, &db).await;
    setup
        .batch_execute(
            "create schema shop; create table shop.items (name text); insert into shop.items values ('from shop'); \
             create schema \"Odd, Name\"; create table \"Odd, Name\".items (name text); insert into \"Odd, Name\".items values ('odd')",
        )
        .await
        .unwrap();
    let a = connect(app.addr, &db).await;
    let b = connect(app.addr, &db).await;
    let c = connect(app.addr, &db).await;
    a.batch_execute("set search_path = shop, public")
        .await
        .unwrap();
    c.query_one(
        "select set_config('search_path', '\"Odd, Name\", public', false)",
        &[],
    )
    .await
    .unwrap();
    b.batch_execute("set work_mem = '7MB'").await.unwrap();
    // A transaction holding one server makes the others share the second.
    let holder = connect(app.addr, &db).await;
    holder.batch_execute("begin").await.unwrap();
    for round in 0..4 {
        if round == 2 {
            holder.batch_execute("commit").await.unwrap();
        }
        assert_eq!(scalar_text(&a, "select name from items").await, "from shop");
        assert_eq!(scalar_text(&c, "select name from items").await, "odd");
        assert_eq!(
            sqlstate(b.query_one("select name from items", &[]).await),
            "42P01"
        );
        assert_eq!(scalar_text(&b, "show work_mem").await, "7MB");
        assert_eq!(scalar_text(&a, "show work_mem").await, "4MB");
    }
    // A rolled-back SET is not kept; RESET returns to the default.
    a.batch_execute("begin; set search_path = public; rollback")
        .await
        .unwrap();
    assert_eq!(scalar_text(&a, "select name from items").await, "from shop");
    a.batch_execute("reset search_path").await.unwrap();
    assert_eq!(
        sqlstate(a.query_one("select name from items", &[]).await),
        "42P01"
    );
    assert_eq!(
        scalar_text(&b, "show search_path").await,
        "\"$user\", public"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_local_costs_no_session_check_and_a_session_set_costs_one() {
    let db = fresh_database("tx_set_local").await;
    let app = start_pgmux(|c| c.pool_size = 2).await;
    let metrics = app.metrics_addr.unwrap();
    let checks =
        || async { metric(metrics, "pgmux_session_checks_total", &[("database", &db)]).await };
    let a = connect(app.addr, &db).await;
    let b = connect(app.addr, &db).await;
    let before = checks().await;
    // What row-level-security apps do in every transaction.
    for i in 0..20 {
        a.batch_execute(&format!(
            "begin; set local app.user_id = '{i}'; set transaction read only; select 1; commit"
        ))
        .await
        .unwrap();
        assert_eq!(
            scalar_text(
                &b,
                "select coalesce(current_setting('app.user_id', true), '')"
            )
            .await,
            ""
        );
    }
    backend_pid(&a).await;
    assert_eq!(checks().await, before, "SET LOCAL needs no look");
    // A session-level SET is looked at once, and then follows its client.
    a.batch_execute("set app.user_id = 'a'").await.unwrap();
    backend_pid(&a).await;
    assert_eq!(checks().await, before + 1.0);
    for _ in 0..4 {
        assert_eq!(
            scalar_text(&a, "select current_setting('app.user_id')").await,
            "a"
        );
        assert_eq!(
            scalar_text(
                &b,
                "select coalesce(current_setting('app.user_id', true), '')"
            )
            .await,
            ""
        );
    }
    // Custom settings are in no catalog view: pgmux follows them by name,
    // set with set_config() too, and keeps the earlier ones when a later
    // SET names another.
    a.query_one("select set_config('app.role', 'auditor', false)", &[])
        .await
        .unwrap();
    a.batch_execute("set statement_timeout = '1h'")
        .await
        .unwrap();
    for _ in 0..4 {
        assert_eq!(
            scalar_text(
                &a,
                "select current_setting('app.user_id') || '/' || current_setting('app.role')"
            )
            .await,
            "a/auditor"
        );
        assert_eq!(scalar_text(&a, "show statement_timeout").await, "1h");
        assert_eq!(
            scalar_text(&b, "select coalesce(current_setting('app.role', true), '')").await,
            ""
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_queries_are_searched_whole_and_unreadable_settings_pin() {
    let db = fresh_database("tx_big_and_untracked").await;
    let app = start_pgmux(|c| c.pool_size = 2).await;
    let metrics = app.metrics_addr.unwrap();
    let setup = connect(app.addr, &db).await;
    setup
        .batch_execute("create schema shop; create table shop.items (name text); insert into shop.items values ('shop')")
        .await
        .unwrap();
    let a = connect(app.addr, &db).await;
    let b = connect(app.addr, &db).await;
    // A 200 kB script whose last statement is a session-level SET: held
    // whole, searched whole, and the setting follows a.
    let padding = "x".repeat(200_000);
    a.batch_execute(&format!("select '{padding}'; set search_path = shop"))
        .await
        .unwrap();
    // A 200 kB named statement is gathered whole too (and served).
    let big = a
        .prepare(&format!("select length('{padding}')"))
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(scalar_text(&a, "select name from items").await, "shop");
        assert_eq!(
            sqlstate(b.query_one("select name from items", &[]).await),
            "42P01"
        );
        let n: i32 = a.query_one(&big, &[]).await.unwrap().get(0);
        assert_eq!(n, 200_000);
    }
    // A custom setting behind a comment cannot be read by name: a is
    // pinned, and b never sees it; DISCARD ALL lets go.
    a.batch_execute("/* tenant */ SET app.tenant = 'a'")
        .await
        .unwrap();
    let a_pid = backend_pid(&a).await;
    assert_eq!(pins_total(metrics, &db, "untracked_setting").await, 1.0);
    for _ in 0..4 {
        assert_ne!(backend_pid(&b).await, a_pid);
        assert_eq!(
            scalar_text(
                &b,
                "select coalesce(current_setting('app.tenant', true), '')"
            )
            .await,
            ""
        );
        assert_eq!(backend_pid(&a).await, a_pid);
    }
    a.batch_execute("discard all").await.unwrap();
    backend_pid(&a).await;
    assert_eq!(pinned_gauge(metrics, &db).await, 0.0);
}
