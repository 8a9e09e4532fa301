//! The whole protocol through pgmux: big results, COPY both ways,
//! pipelines, Flush without Sync, and the stock client tools.

use pgmux::config::AuthType;
use pgmux_tests::raw::{self, Raw};
use pgmux_tests::*;

/// FNV-1a over a byte stream: enough to compare two transfers.
fn fnv(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= *b as u64;
        *hash = hash.wrapping_mul(0x100000001b3);
    }
}

async fn copy_out_digest(c: &tokio_postgres::Client, sql: &str) -> (u64, usize) {
    use futures_util::StreamExt;
    let stream = c.copy_out(sql).await.unwrap();
    futures_util::pin_mut!(stream);
    let (mut h, mut n) = (0xcbf29ce484222325u64, 0usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        n += chunk.len();
        fnv(&mut h, &chunk);
    }
    (h, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_result_arrives_intact() {
    let db = fresh_database("proto_big").await;
    let app = start_pgmux(|_| {}).await;
    let via = connect(app.addr, &db).await;
    let direct = try_connect(&format!(
        "host=127.0.0.1 port={} user={APP_USER} password={APP_PASSWORD} dbname={db}",
        cluster().port
    ))
    .await
    .unwrap();
    let sql = "copy (select i, md5(i::text) || repeat('x', 1000) from generate_series(1, 100000) i) to stdout";
    let through = copy_out_digest(&via, sql).await;
    let straight = copy_out_digest(&direct, sql).await;
    assert!(through.1 > 100_000_000, "only {} bytes", through.1);
    assert_eq!(through, straight);
    // And as ordinary rows over the extended protocol.
    let rows = via
        .query(
            "select repeat('y', 1000000) from generate_series(1, 100)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 100);
    assert!(rows
        .iter()
        .all(|r| r.get::<_, String>(0).len() == 1_000_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_match_checksums() {
    use futures_util::SinkExt;
    let db = fresh_database("proto_copy").await;
    let app = start_pgmux(|_| {}).await;
    let c = connect(app.addr, &db).await;
    c.batch_execute("create table t (id int primary key, payload text)")
        .await
        .unwrap();
    let mut data = Vec::new();
    for i in 0..200_000 {
        data.extend_from_slice(format!("{i}\tpayload-{i}-{}\n", "z".repeat(i % 50)).as_bytes());
    }
    let sink = c.copy_in("copy t from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    for chunk in data.chunks(100_000) {
        sink.send(bytes::Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    let rows = sink.finish().await.unwrap();
    assert_eq!(rows, 200_000);
    let mut expected = 0xcbf29ce484222325u64;
    fnv(&mut expected, &data);
    let (got, len) = copy_out_digest(&c, "copy (select * from t order by id) to stdout").await;
    assert_eq!((got, len), (expected, data.len()));
    // A failed COPY leaves the connection usable.
    assert!(c
        .simple_query("copy t from stdin with (format csv, header wrong)")
        .await
        .is_err());
    assert_eq!(scalar_i32(&c, "select count(*)::int from t").await, 200_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_with_several_syncs_and_flush_without_sync() {
    let db = fresh_database("proto_pipeline").await;
    let app = start_pgmux(|c| {
        c.auth_type = AuthType::Trust;
        c.pool_size = 1;
    })
    .await;
    let mut r = Raw::login(app.addr, APP_USER, &db).await;
    // Three requests in one write.
    let mut batch = raw::extended("select 1");
    batch.extend(raw::sync());
    batch.extend(raw::extended("select 1/0"));
    batch.extend(raw::sync());
    batch.extend(raw::extended("select 'three'"));
    batch.extend(raw::sync());
    r.send(&batch).await;
    let first = r.until_ready().await;
    assert!(first.iter().any(|m| m.tag == b'D'));
    let second = r.until_ready().await;
    assert_eq!(
        second
            .iter()
            .find(|m| m.tag == b'E')
            .and_then(|m| m.sqlstate())
            .as_deref(),
        Some("22012")
    );
    let third = r.until_ready().await;
    assert!(third
        .iter()
        .any(|m| m.tag == b'D' && m.body.ends_with(b"three")));
    // Flush without Sync: results arrive, no ReadyForQuery yet, and the
    // server stays with this client until the Sync.
    let mut req = raw::extended("select pg_backend_pid()");
    req.extend(raw::flush());
    r.send(&req).await;
    let mut seen = Vec::new();
    while let Some(m) = r.next().await {
        let done = m.tag == b'C';
        seen.push(m.tag);
        if done {
            break;
        }
    }
    assert_eq!(seen, b"12DC");
    r.send(&raw::sync()).await;
    let tail = r.until_ready().await;
    assert_eq!(tail.iter().map(|m| m.tag).collect::<Vec<_>>(), b"Z");
    // tokio-postgres pipelines concurrent queries on one connection.
    let c = connect(app.addr, &db).await;
    let (a, b, d) = tokio::join!(
        c.query_one("select 1::int", &[]),
        c.query_one("select 2::int", &[]),
        c.query_one("select 3::int", &[])
    );
    assert_eq!(
        [
            a.unwrap().get::<_, i32>(0),
            b.unwrap().get(0),
            d.unwrap().get(0)
        ],
        [1, 2, 3]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_notifications_and_function_calls_pass_through() {
    let db = fresh_database("proto_misc").await;
    let app = start_pgmux(|c| c.pool_mode = pgmux::config::PoolMode::Session).await;
    let (c, mut conn) = tokio_postgres::connect(&dsn(app.addr, &db), tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    tokio::spawn(async move {
        use futures_util::StreamExt;
        futures_util::pin_mut!(stream);
        while let Some(Ok(m)) = stream.next().await {
            let _ = tx.send(m);
        }
    });
    c.batch_execute(
        "listen chan; do $$ begin raise notice 'hello notice'; end $$; notify chan, 'payload'",
    )
    .await
    .unwrap();
    let mut notice = false;
    let mut notification = false;
    while !(notice && notification) {
        match rx.recv().await.unwrap() {
            tokio_postgres::AsyncMessage::Notice(n) => notice |= n.message() == "hello notice",
            tokio_postgres::AsyncMessage::Notification(n) => {
                notification |= n.payload() == "payload"
            }
            _ => {}
        }
    }
    // FunctionCall ('F') by raw protocol: int4pl(20, 22) through trust.
    let app2 = start_pgmux(|c| c.auth_type = AuthType::Trust).await;
    let mut r = Raw::login(app2.addr, APP_USER, &db).await;
    let oid: u32 = c
        .query_one("select 'int4pl'::regproc::oid", &[])
        .await
        .unwrap()
        .get(0);
    let mut body = oid.to_be_bytes().to_vec();
    body.extend_from_slice(&[0, 1, 0, 1, 0, 2]); // one format code: binary; two args
    for v in [20i32, 22] {
        body.extend_from_slice(&4i32.to_be_bytes());
        body.extend_from_slice(&v.to_be_bytes());
    }
    body.extend_from_slice(&[0, 1]); // binary result
    r.send(&raw::message(b'F', &body)).await;
    let reply = r.until_ready().await;
    let v = reply
        .iter()
        .find(|m| m.tag == b'V')
        .expect("FunctionCallResponse");
    assert_eq!(&v.body[..], &[0, 0, 0, 4, 0, 0, 0, 42]);
}

fn run_tool(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_pg_isready_and_pgbench_through_pgmux() {
    let db = fresh_database("proto_tools").await;
    let app = start_pgmux(|c| c.pool_size = 4).await;
    let port = app.addr.port().to_string();
    let c = cluster();
    let tool = |name: &str| {
        let mut cmd = std::process::Command::new(c.tool(name));
        cmd.env("PGPASSWORD", APP_PASSWORD)
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", &port)
            .env("PGUSER", APP_USER)
            .env("PGDATABASE", &db);
        cmd
    };
    let ready = tokio::task::spawn_blocking({
        let mut cmd = tool("pg_isready");
        move || run_tool(&mut cmd)
    });
    assert!(ready.await.unwrap().contains("accepting connections"));
    let out = tokio::task::spawn_blocking({
        let mut cmd = tool("psql");
        cmd.args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "select 40 + 2",
            "-c",
            "\\copy (select 'copied') to stdout",
        ]);
        move || run_tool(&mut cmd)
    });
    let out = out.await.unwrap();
    assert!(out.contains("42") && out.contains("copied"), "{out}");
    let init = tokio::task::spawn_blocking({
        let mut cmd = tool("pgbench");
        cmd.args(["-i", "-s", "1", "-q"]);
        move || run_tool(&mut cmd)
    });
    init.await.unwrap();
    for mode in ["simple", "extended"] {
        let run = tokio::task::spawn_blocking({
            let mut cmd = tool("pgbench");
            cmd.args(["-S", "-M", mode, "-c", "8", "-j", "2", "-t", "300", "-n"]);
            move || run_tool(&mut cmd)
        });
        let out = run.await.unwrap();
        assert!(
            out.contains("number of transactions actually processed: 2400/2400"),
            "{mode}: {out}"
        );
        assert!(
            out.contains("number of failed transactions: 0"),
            "{mode}: {out}"
        );
    }
    // Named prepared statements in transaction mode, 20 clients over the
    // pool's 4 servers: every client prepares the same names, on whatever
    // server each transaction gets.
    let prepared = tokio::task::spawn_blocking({
        let mut cmd = tool("pgbench");
        cmd.args([
            "-S", "-M", "prepared", "-c", "20", "-j", "2", "-t", "200", "-n",
        ]);
        move || run_tool(&mut cmd)
    });
    let out = prepared.await.unwrap();
    assert!(
        out.contains("number of transactions actually processed: 4000/4000"),
        "prepared: {out}"
    );
    assert!(
        out.contains("number of failed transactions: 0"),
        "prepared: {out}"
    );
    let tpcb = tokio::task::spawn_blocking({
        let mut cmd = tool("pgbench");
        cmd.args(["-c", "8", "-j", "2", "-t", "100", "-n"]);
        move || run_tool(&mut cmd)
    });
    let out = tpcb.await.unwrap();
    assert!(out.contains("number of failed transactions: 0"), "{out}");
    assert!(backends_of(&db).await <= 4);
}
