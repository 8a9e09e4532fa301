//! Pooling: the bound on server connections, isolation between clients,
//! aging, and servers that died never handed out (the timeouts are in
//! `timeouts`).

use std::time::Duration;

use pgmux::config::PoolMode;
use pgmux_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_share_five_servers() {
    let db = fresh_database("pool_many").await;
    let app = start_pgmux(|c| c.pool_size = 5).await;
    let setup = connect(app.addr, &db).await;
    setup
        .batch_execute("create table counter (client int, n int)")
        .await
        .unwrap();
    let watcher = {
        let db = db.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            for _ in 0..400 {
                peak = peak.max(backends_of(&db).await);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            peak
        })
    };
    let mut clients = Vec::new();
    for id in 0..200 {
        let addr = app.addr;
        let db = db.clone();
        clients.push(tokio::spawn(async move {
            let c = connect(addr, &db).await;
            for n in 0..20 {
                let row = c
                    .query_one("select $1::int * 1000 + $2::int", &[&id, &n])
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, i32>(0), id * 1000 + n);
                if n % 5 == 0 {
                    c.batch_execute(&format!(
                        "begin; insert into counter values ({id}, {n}); commit"
                    ))
                    .await
                    .unwrap();
                }
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(
        scalar_i32(&setup, "select count(*)::int from counter").await,
        200 * 4
    );
    let peak = watcher.await.unwrap();
    assert!(
        peak <= 5,
        "PostgreSQL saw {peak} pgmux connections with pool_size = 5"
    );
    assert!(backends_of(&db).await <= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_vanishing_mid_transaction_leaves_nothing_behind() {
    let db = fresh_database("pool_vanish").await;
    let app = start_pgmux(|c| c.pool_size = 1).await;
    for abrupt in [false, true] {
        let (a, task) = connect_abortable(app.addr, &db).await;
        let pid_a = scalar_i32(&a, "select pg_backend_pid()").await;
        a.batch_execute("begin; create temp table leftover (x int); select pg_advisory_lock(42); set local work_mem = '7MB'; set statement_timeout = '1234s'")
            .await
            .unwrap();
        if abrupt {
            task.abort(); // socket closes without a Terminate
        }
        drop(a);
        let b = connect(app.addr, &db).await;
        assert_eq!(
            scalar_i32(&b, "select pg_backend_pid()").await,
            pid_a,
            "pool_size 1 must reuse the server"
        );
        let locks: i64 = b
            .query_one(
                "select count(*) from pg_locks where locktype = 'advisory'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(locks, 0, "advisory lock leaked (abrupt = {abrupt})");
        assert_eq!(
            scalar_text(
                &b,
                "select coalesce(to_regclass('pg_temp.leftover')::text, 'none')"
            )
            .await,
            "none"
        );
        assert_eq!(scalar_text(&b, "show statement_timeout").await, "0");
        // No transaction is open: BEGIN starts a fresh one with its own xid.
        b.batch_execute("begin").await.unwrap();
        b.batch_execute("commit").await.unwrap();
        let admin = cluster().admin().await;
        let stuck: i64 = admin
            .query_one("select count(*) from pg_stat_activity where datname = $1 and state like 'idle in transaction%'", &[&db])
            .await
            .unwrap()
            .get(0);
        assert_eq!(stuck, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_settings_follow_it_and_never_leak() {
    let db = fresh_database("pool_settings").await;
    let app = start_pgmux(|c| c.pool_size = 1).await;
    let a = connect(app.addr, &db).await;
    let b = connect(app.addr, &db).await;
    let default_tz = scalar_text(&b, "show timezone").await;
    a.batch_execute("set timezone = 'Asia/Tokyo'")
        .await
        .unwrap();
    b.batch_execute("set datestyle = 'German, DMY'")
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(
            scalar_i32(&a, "select pg_backend_pid()").await,
            scalar_i32(&b, "select pg_backend_pid()").await
        );
        assert_eq!(scalar_text(&a, "show timezone").await, "Asia/Tokyo");
        assert_eq!(scalar_text(&b, "show timezone").await, default_tz);
        assert_eq!(scalar_text(&a, "show datestyle").await, "ISO, MDY");
        assert_eq!(scalar_text(&b, "show datestyle").await, "German, DMY");
    }
    // Startup parameters count too, and values are quoted safely.
    let odd = "x'; select pg_sleep(100); --";
    let c = try_connect(&format!(
        "{} application_name='{}'",
        dsn(app.addr, &db),
        odd.replace('\'', "\\'")
    ))
    .await
    .unwrap();
    assert_eq!(scalar_text(&c, "show application_name").await, odd);
    assert_eq!(scalar_text(&a, "show application_name").await, "");
    // A setting the server never reports (startup `options -c`) follows its
    // client too, and is reset, not inherited, for the next one.
    let timed = try_connect(&format!(
        "{} options='-c statement_timeout=1234s'",
        dsn(app.addr, &db)
    ))
    .await
    .unwrap();
    for _ in 0..2 {
        assert_eq!(scalar_text(&timed, "show statement_timeout").await, "1234s");
        assert_eq!(scalar_text(&b, "show statement_timeout").await, "0");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_age_out_but_never_mid_transaction() {
    let db = fresh_database("pool_aging").await;
    let app = start_pgmux(|c| {
        c.server_lifetime = 2.0;
        c.server_lifetime_jitter = 0.0;
    })
    .await;
    let c = connect(app.addr, &db).await;
    let first = scalar_i32(&c, "select pg_backend_pid()").await;
    // A transaction longer than the lifetime keeps its server throughout.
    c.batch_execute("begin").await.unwrap();
    let in_tx = scalar_i32(&c, "select pg_backend_pid()").await;
    c.batch_execute("select pg_sleep(3)").await.unwrap();
    assert_eq!(scalar_i32(&c, "select pg_backend_pid()").await, in_tx);
    c.batch_execute("commit").await.unwrap();
    // Once idle past its age, the server is replaced.
    let replaced = eventually(Duration::from_secs(15), || async {
        scalar_i32(&c, "select pg_backend_pid()").await != first
    })
    .await;
    assert!(replaced, "server {first} was never replaced");
    let metrics = http_get(app.metrics_addr.unwrap(), "/metrics").await.1;
    assert!(
        metric_value(
            &metrics,
            "pgmux_server_closed_total",
            &[("database", &db), ("reason", "lifetime")]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_while_idle_is_never_handed_out() {
    let db = fresh_database("pool_killed").await;
    let app = start_pgmux(|c| c.pool_size = 1).await;
    let c = connect(app.addr, &db).await;
    // A simple query: it returns only after ReadyForQuery and leaves no
    // statement for tokio-postgres to close afterwards, so the server is
    // truly idle when it is killed (query_one returns earlier, and its
    // Close + Sync could still be using the server at the kill).
    let replies = c.simple_query("select pg_backend_pid()").await.unwrap();
    let pid: i32 = replies
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0)?.parse().ok(),
            _ => None,
        })
        .expect("a row with the backend pid");
    let admin = cluster().admin().await;
    admin
        .execute("select pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let gone = eventually(Duration::from_secs(10), || async {
        let n: i64 = admin
            .query_one(
                "select count(*) from pg_stat_activity where pid = $1",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        n == 0
    })
    .await;
    assert!(gone);
    // The client's next transaction gets a fresh server, not an error.
    let new_pid = scalar_i32(&c, "select pg_backend_pid()").await;
    assert_ne!(new_pid, pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_keeps_one_server_and_resets_it_after() {
    let db = fresh_database("pool_session").await;
    let app = start_pgmux(|c| {
        c.pool_size = 1;
        c.pool_mode = PoolMode::Session;
    })
    .await;
    let a = connect(app.addr, &db).await;
    a.batch_execute(
        "create temp table mine (x int); prepare p as select 1; set search_path = 'nowhere'",
    )
    .await
    .unwrap();
    assert_eq!(
        scalar_i32(&a, "select count(*)::int from mine").await,
        0,
        "session state lasts across transactions"
    );
    let pid = scalar_i32(&a, "select pg_backend_pid()").await;
    drop(a);
    let b = connect(app.addr, &db).await;
    assert_eq!(scalar_i32(&b, "select pg_backend_pid()").await, pid);
    assert_eq!(
        scalar_text(
            &b,
            "select coalesce(to_regclass('pg_temp.mine')::text, 'none')"
        )
        .await,
        "none"
    );
    assert_eq!(
        scalar_i32(
            &b,
            "select count(*)::int from pg_prepared_statements where name = 'p'"
        )
        .await,
        0
    );
    assert_eq!(
        scalar_text(&b, "show search_path").await,
        "\"$user\", public"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_clients_are_served_first_come_first_served() {
    let db = fresh_database("pool_fifo").await;
    let app = start_pgmux(|c| c.pool_size = 1).await;
    let holder = connect(app.addr, &db).await;
    holder
        .batch_execute("create table arrivals (seq serial, who int)")
        .await
        .unwrap();
    holder.batch_execute("begin; select 1").await.unwrap();
    let mut waiters = Vec::new();
    for who in 0..5 {
        let c = connect(app.addr, &db).await;
        let mut task = tokio::spawn(async move {
            c.batch_execute(&format!("insert into arrivals (who) values ({who})"))
                .await
                .unwrap();
        });
        // Each waiter is queued before the next one starts.
        let queued = eventually(Duration::from_secs(10), || async {
            let text = http_get(app.metrics_addr.unwrap(), "/metrics").await.1;
            metric_value(&text, "pgmux_clients_waiting", &[("database", &db)]) >= (who + 1) as f64
        })
        .await;
        assert!(queued);
        assert!(futures_util::poll!(&mut task).is_pending());
        waiters.push(task);
    }
    holder.batch_execute("commit").await.unwrap();
    for w in waiters {
        w.await.unwrap();
    }
    let order: Vec<i32> = holder
        .query("select who from arrivals order by seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(order, vec![0, 1, 2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_db_connections_caps_a_database_across_its_users() {
    let db = fresh_database("pool_dbcap").await;
    cluster().psql_super(&format!("grant all on database {db} to md5user"));
    let app = start_pgmux(|c| {
        c.pool_size = 3;
        c.max_db_connections = 2;
        c.users.insert(
            "md5user".into(),
            pgmux::config::UserConfig {
                password: Some("md5-secret".into()),
                ..Default::default()
            },
        );
    })
    .await;
    let other = format!(
        "host=127.0.0.1 port={} user=md5user password=md5-secret dbname={db}",
        app.addr.port()
    );
    // Two app transactions take both slots.
    let a = connect(app.addr, &db).await;
    let b = connect(app.addr, &db).await;
    a.batch_execute("begin; select 1").await.unwrap();
    b.batch_execute("begin; select 1").await.unwrap();
    assert_eq!(backends_of(&db).await, 2);
    // A third client of another user waits: no slot, and nothing idle to evict.
    let mut third = tokio::spawn(async move {
        let c = try_connect(&other).await.unwrap();
        scalar_text(&c, "select current_user::text").await
    });
    // A negative check can only be bounded: without the cap it would be
    // served (and PostgreSQL would see a third connection) at once.
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), &mut third)
            .await
            .is_err(),
        "served past the cap"
    );
    assert_eq!(backends_of(&db).await, 2);
    // An app transaction ends; its now idle server is closed to make room.
    a.batch_execute("commit").await.unwrap();
    let who = tokio::time::timeout(Duration::from_secs(30), third)
        .await
        .expect("the waiter gets a slot")
        .unwrap();
    assert_eq!(who, "md5user");
    assert!(backends_of(&db).await <= 2);
    b.batch_execute("commit").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_pool_size_stays_warm_and_idle_servers_above_it_close() {
    let db = fresh_database("pool_warm").await;
    let app = start_pgmux(|c| {
        c.pool_size = 4;
        c.min_pool_size = 2;
        c.server_idle_timeout = 1.0;
    })
    .await;
    // Four transactions at once open four servers.
    let clients = [
        connect(app.addr, &db).await,
        connect(app.addr, &db).await,
        connect(app.addr, &db).await,
        connect(app.addr, &db).await,
    ];
    for c in &clients {
        c.batch_execute("begin; select 1").await.unwrap();
    }
    assert_eq!(backends_of(&db).await, 4);
    for c in &clients {
        c.batch_execute("commit").await.unwrap();
    }
    // Unused past the idle timeout, they close down to min_pool_size, no further.
    let trimmed = eventually(Duration::from_secs(15), || async {
        backends_of(&db).await == 2
    })
    .await;
    assert!(trimmed, "idle servers above min_pool_size were not closed");
    let metrics = http_get(app.metrics_addr.unwrap(), "/metrics").await.1;
    assert_eq!(
        metric_value(
            &metrics,
            "pgmux_server_closed_total",
            &[("database", &db), ("reason", "idle")]
        ),
        2.0
    );
    // Killed from outside, the warm ones are replaced by the housekeeping.
    cluster()
        .admin()
        .await
        .execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where datname = $1",
            &[&db],
        )
        .await
        .unwrap();
    let refilled = eventually(Duration::from_secs(15), || async {
        let text = http_get(app.metrics_addr.unwrap(), "/metrics").await.1;
        metric_value(&text, "pgmux_server_connects_total", &[("database", &db)]) >= 6.0
            && backends_of(&db).await == 2
    })
    .await;
    assert!(refilled, "min_pool_size was not restored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_database_succeeds_although_pgmux_pooled_it() {
    let app = start_pgmux(|_| {}).await;
    let admin = connect(app.addr, "postgres").await;
    for (round, extended) in [(0, false), (1, true)] {
        let name = format!("pool_dropme_{round}");
        admin
            .batch_execute(&format!("drop database if exists {name} with (force)"))
            .await
            .unwrap();
        admin
            .batch_execute(&format!("create database {name}"))
            .await
            .unwrap();
        let user = connect(app.addr, &name).await;
        assert_eq!(scalar_i32(&user, "select 1").await, 1);
        drop(user);
        assert!(
            backends_of(&name).await >= 1,
            "pgmux keeps an idle server to {name}"
        );
        // Simple protocol, then extended (a Parse carries the statement).
        let dropped = if extended {
            admin
                .execute(&format!("DROP DATABASE \"{name}\""), &[])
                .await
                .map(|_| ())
        } else {
            admin.batch_execute(&format!("drop database {name}")).await
        };
        dropped.unwrap_or_else(|e| panic!("DROP DATABASE through pgmux failed: {e:?}"));
    }
}

/// Issue 12: a pool of a wildcard database (not in `[databases]`) that has
/// had no client for `autodb_idle_timeout` is dropped: its servers are
/// closed and its series leave /metrics. And no more than `max_pools`
/// pools exist at once: a login that would make one more gets 53400 until
/// one is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_wildcard_pools_are_dropped_and_max_pools_caps_them() {
    let first = fresh_database("autodb_first").await;
    let second = fresh_database("autodb_second").await;
    let app = start_pgmux(|c| {
        c.autodb_idle_timeout = 0.5;
        c.max_pools = 1;
    })
    .await;
    let m = app.metrics_addr.unwrap();
    let client = connect(app.addr, &first).await;
    assert_eq!(scalar_i32(&client, "select 1").await, 1);
    assert_eq!(backends_of(&first).await, 1);

    let err = try_connect(&dsn(app.addr, &second))
        .await
        .expect_err("one pool is the cap");
    assert_eq!(err.code().map(|c| c.code()), Some("53400"), "{err:?}");
    assert!(format!("{err:?}").contains("max_pools"), "{err:?}");

    drop(client);
    let dropped = eventually(Duration::from_secs(20), || async {
        backends_of(&first).await == 0 && !http_get(m, "/metrics").await.1.contains(&first)
    })
    .await;
    assert!(dropped, "the unused pool keeps its server or its series");
    let next = connect(app.addr, &second).await;
    assert_eq!(
        scalar_i32(&next, "select 2").await,
        2,
        "room for a new pool"
    );
}
