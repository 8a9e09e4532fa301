//! Transaction mode without surprises: named prepared statements behave as
//! on a direct connection, a schema change under a prepared statement is
//! recovered from, session settings follow their client, and session state
//! that cannot move pins the client to its server (and never reaches
//! another client).

use std::time::Duration;

use pgmux::config::AuthType;
use pgmux_tests::raw::{flush as raw_flush, message, query, sync, Msg, Raw};
use pgmux_tests::*;
use tokio_postgres::AsyncMessage;

fn parse(name: &str, sql: &str) -> Vec<u8> {
    message(b'P', format!("{name}\0{sql}\0\0\0").as_bytes())
}

fn bind(statement: &str) -> Vec<u8> {
    message(b'B', format!("\0{statement}\0\0\0\0\0\0\0").as_bytes())
}

fn execute() -> Vec<u8> {
    message(b'E', b"\0\0\0\0\0")
}

fn describe_portal() -> Vec<u8> {
    message(b'D', b"P\0")
}

fn close_statement(name: &str) -> Vec<u8> {
    message(b'C', format!("S{name}\0").as_bytes())
}

fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

/// The ErrorResponse among `msgs`: (SQLSTATE, message), and that it
/// carries no PL/pgSQL context (pgmux's injected raise must not show).
fn error_of(msgs: &[Msg]) -> (String, String) {
    let e = msgs
        .iter()
        .find(|m| m.tag == b'E')
        .unwrap_or_else(|| panic!("no error in {:?}", tags(msgs)));
    assert_eq!(e.field(b'W'), None, "an error with a context: {e:?}");
    (e.sqlstate().unwrap(), e.field(b'M').unwrap())
}

fn status(msgs: &[Msg]) -> u8 {
    msgs.last().filter(|m| m.tag == b'Z').unwrap().body[0]
}

async fn run(raw: &mut Raw, bytes: &[u8]) -> Vec<Msg> {
    raw.send(bytes).await;
    raw.until_ready().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_behave_as_on_a_direct_connection() {
    let db = fresh_database("tx_statements").await;
    let app = start_pgmux(|c| {
        c.auth_type = AuthType::Trust;
        c.pool_size = 1;
    })
    .await;
    let mut raw = Raw::login(app.addr, APP_USER, &db).await;

    let prepared = run(&mut raw, &[parse("s1", "select 1"), sync()].concat()).await;
    assert_eq!(tags(&prepared), "1Z");

    // Reusing a name is 42P05, whatever the text; the server skips to Sync.
    let again = [parse("s1", "select 2"), bind("s1"), execute(), sync()].concat();
    let reply = run(&mut raw, &again).await;
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
    let failed = run(
        &mut raw,
        &[
            parse("bad", "selec 1"),
            parse("skipped", "select 1"),
            sync(),
        ]
        .concat(),
    )
    .await;
    assert_eq!(error_of(&failed).0, "42601");
    let retried = run(
        &mut raw,
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
    let unknown = run(&mut raw, &[bind("nope"), execute(), sync()].concat()).await;
    assert_eq!(
        error_of(&unknown),
        (
            "26000".into(),
            "prepared statement \"nope\" does not exist".into()
        )
    );
    let describe = message(b'D', b"Snope\0");
    let unknown = run(&mut raw, &[describe, sync()].concat()).await;
    assert_eq!(error_of(&unknown).0, "26000");

    // Inside a transaction the error aborts it, as PostgreSQL's own would.
    assert_eq!(status(&run(&mut raw, &query("begin")).await), b'T');
    let reply = run(&mut raw, &[parse("s1", "select 3"), sync()].concat()).await;
    assert_eq!(error_of(&reply).0, "42P05");
    assert_eq!(status(&reply), b'E');
    assert_eq!(status(&run(&mut raw, &query("rollback")).await), b'I');

    // The statement still works; Close forgets the name (closing an unknown
    // name is no error), and the name may then be used again.
    let rows = run(&mut raw, &[bind("s1"), execute(), sync()].concat()).await;
    assert_eq!(tags(&rows), "2DCZ");
    let closed = run(
        &mut raw,
        &[close_statement("s1"), close_statement("never"), sync()].concat(),
    )
    .await;
    assert_eq!(tags(&closed), "33Z");
    let gone = run(&mut raw, &[bind("s1"), execute(), sync()].concat()).await;
    assert_eq!(error_of(&gone).0, "26000");
    let reused = run(
        &mut raw,
        &[parse("s1", "select 'two'"), bind("s1"), execute(), sync()].concat(),
    )
    .await;
    assert_eq!(tags(&reused), "12DCZ");
    assert!(String::from_utf8_lossy(&reused[2].body).contains("two"));

    // SQL DEALLOCATE of a protocol-level name, and DEALLOCATE ALL.
    let dealloc = run(&mut raw, &query("DEALLOCATE s1")).await;
    assert_eq!(tags(&dealloc), "CZ");
    assert_eq!(&dealloc[0].body, b"DEALLOCATE\0");
    let gone = run(&mut raw, &[bind("s1"), execute(), sync()].concat()).await;
    assert_eq!(error_of(&gone).0, "26000");
    let unknown = run(&mut raw, &query("DEALLOCATE s1")).await;
    assert_eq!(error_of(&unknown).0, "26000");
    run(
        &mut raw,
        &[parse("a", "select 1"), parse("b", "select 2"), sync()].concat(),
    )
    .await;
    let all = run(&mut raw, &query("DEALLOCATE ALL")).await;
    assert_eq!(&all[0].body, b"DEALLOCATE ALL\0");
    for name in ["a", "b"] {
        let gone = run(&mut raw, &[bind(name), execute(), sync()].concat()).await;
        assert_eq!(error_of(&gone).0, "26000", "{name} survived DEALLOCATE ALL");
    }
    // ... and they can be prepared again (the server's copies went too).
    let again = run(
        &mut raw,
        &[parse("a", "select 1"), bind("a"), execute(), sync()].concat(),
    )
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
    let replans = |text: &str, retried: &str| {
        metric_value(
            text,
            "pgmux_statement_replans_total",
            &[("database", &db), ("retried", retried)],
        )
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
    let (_, text) = http_get(metrics, "/metrics").await;
    assert_eq!(replans(&text, "no"), 1.0);

    // libpq's way (Bind, Describe portal, Execute, Sync) learns the shape
    // from the Describe: outside a transaction pgmux prepares afresh and
    // sends the request again itself, and the client sees only the rows.
    let mut raw = Raw::login(app.addr, APP_USER, &db).await;
    let ok = run(&mut raw, &[parse("q", "select * from t"), sync()].concat()).await;
    assert_eq!(tags(&ok), "1Z");
    c.batch_execute("alter table t add column c text default 'three'")
        .await
        .unwrap();
    let exec = [bind("q"), describe_portal(), execute(), sync()].concat();
    let reply = run(&mut raw, &exec).await;
    assert_eq!(tags(&reply), "2TDCZ", "{reply:?}");
    assert!(String::from_utf8_lossy(&reply[2].body).contains("three"));
    let again = run(&mut raw, &exec).await;
    assert_eq!(tags(&again), "2TDCZ");
    let (_, text) = http_get(metrics, "/metrics").await;
    assert_eq!(replans(&text, "yes"), 1.0);

    // Inside a transaction the error passes through (a retry could not
    // undo what the transaction did), and the next try succeeds.
    c.batch_execute("alter table t add column d int default 4")
        .await
        .unwrap();
    assert_eq!(status(&run(&mut raw, &query("begin")).await), b'T');
    let failed = run(&mut raw, &exec).await;
    assert_eq!(error_of(&failed).0, "0A000");
    assert_eq!(status(&run(&mut raw, &query("rollback")).await), b'I');
    let recovered = run(&mut raw, &exec).await;
    assert_eq!(tags(&recovered), "2TDCZ");
}

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

async fn pid(c: &tokio_postgres::Client) -> i32 {
    scalar_i32(c, "select pg_backend_pid()").await
}

async fn pinned_gauge(metrics: std::net::SocketAddr, db: &str) -> f64 {
    let (_, text) = http_get(metrics, "/metrics").await;
    metric_value(&text, "pgmux_clients_pinned", &[("database", db)])
}

async fn pins_total(metrics: std::net::SocketAddr, db: &str, reason: &str) -> f64 {
    let (_, text) = http_get(metrics, "/metrics").await;
    metric_value(
        &text,
        "pgmux_client_pins_total",
        &[("database", db), ("reason", reason)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_pins_until_unlisten_and_notifications_reach_an_idle_client() {
    let db = fresh_database("tx_listen").await;
    let app = start_pgmux(|c| c.pool_size = 2).await;
    let metrics = app.metrics_addr.unwrap();
    let (a, mut notes) = listener(&dsn(app.addr, &db)).await;
    let b = connect(app.addr, &db).await;
    a.batch_execute("listen jobs").await.unwrap();
    let a_pid = pid(&a).await;
    assert_eq!(pinned_gauge(metrics, &db).await, 1.0);
    assert_eq!(pins_total(metrics, &db, "listen").await, 1.0);
    for i in 0..10 {
        // b never gets a's server, and a keeps it.
        assert_ne!(pid(&b).await, a_pid);
        b.batch_execute(&format!("notify jobs, 'job {i}'"))
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), notes.recv())
            .await
            .expect("a notification reached the idle listener")
            .unwrap();
        assert_eq!(got, format!("job {i}"));
        assert_eq!(pid(&a).await, a_pid);
    }
    a.batch_execute("unlisten *").await.unwrap();
    // pgmux looks at the session after replying; a's next reply comes after.
    pid(&a).await;
    assert_eq!(pinned_gauge(metrics, &db).await, 0.0);
    // Unpinned, a's server serves others again: with b in a transaction
    // on one server, a new client is served by the other.
    b.batch_execute("begin").await.unwrap();
    let b_pid = pid(&b).await;
    let d = connect(app.addr, &db).await;
    let d_pid = tokio::time::timeout(Duration::from_secs(10), pid(&d))
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
    let a_pid = pid(&a).await;
    assert_eq!(pinned_gauge(metrics, &db).await, 1.0);
    for _ in 0..6 {
        assert_ne!(pid(&b).await, a_pid);
        assert_eq!(pid(&a).await, a_pid);
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
    pid(&a).await;
    assert_eq!(pinned_gauge(metrics, &db).await, 1.0);
    a.query_one("select pg_advisory_unlock(7)", &[])
        .await
        .unwrap();
    pid(&a).await;
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
    let checks = || async {
        let (_, text) = http_get(metrics, "/metrics").await;
        metric_value(&text, "pgmux_session_checks_total", &[("database", &db)])
    };
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
    pid(&a).await;
    assert_eq!(checks().await, before, "SET LOCAL needs no look");
    // A session-level SET is looked at once, and then follows its client.
    a.batch_execute("set app.user_id = 'a'").await.unwrap();
    pid(&a).await;
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
async fn replies_pgmux_owes_and_errors_before_a_sync_keep_the_stream_in_step() {
    let db = fresh_database("tx_owed_replies").await;
    let app = start_pgmux(|c| {
        c.auth_type = AuthType::Trust;
        c.pool_size = 1;
    })
    .await;
    let mut raw = Raw::login(app.addr, APP_USER, &db).await;
    run(&mut raw, &[parse("s1", "select 1"), sync()].concat()).await;
    // A Close pgmux answers itself, behind server replies and a Flush: it
    // is due after the server's last message, and must not wait for more.
    raw.send(&[bind("s1"), execute(), close_statement("s1"), raw_flush()].concat())
        .await;
    let mut got = String::new();
    for _ in 0..4 {
        got.push(raw.next().await.unwrap().tag as char);
    }
    assert_eq!(got, "2DC3");
    assert_eq!(tags(&run(&mut raw, &sync()).await), "Z");
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
    let reply = run(&mut raw, &failing).await;
    // (1/0 is folded when the statement is planned, at Bind.)
    assert_eq!(tags(&reply), "1EZ");
    let after = run(&mut raw, &query("select 'in step'")).await;
    assert_eq!(tags(&after), "TDCZ");
    assert!(String::from_utf8_lossy(&after[1].body).contains("in step"));
    // pgmux's own statement names are not a client's to drop.
    let refused = run(&mut raw, &query("DEALLOCATE pgmux_0")).await;
    assert_eq!(refused[0].sqlstate().as_deref(), Some("26000"));
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
    let a_pid = pid(&a).await;
    assert_eq!(pins_total(metrics, &db, "untracked_setting").await, 1.0);
    for _ in 0..4 {
        assert_ne!(pid(&b).await, a_pid);
        assert_eq!(
            scalar_text(
                &b,
                "select coalesce(current_setting('app.tenant', true), '')"
            )
            .await,
            ""
        );
        assert_eq!(pid(&a).await, a_pid);
    }
    a.batch_execute("discard all").await.unwrap();
    pid(&a).await;
    assert_eq!(pinned_gauge(metrics, &db).await, 0.0);
}
