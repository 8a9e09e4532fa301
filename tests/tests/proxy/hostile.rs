//! Bad input gets an ErrorResponse with a SQLSTATE and a clean close; never
//! a hang, a panic or an allocation the peer chose. Others keep being served.

use std::time::Duration;

use pgmux_tests::process::{config_text, Proc};
use pgmux_tests::raw::{self, Raw};
use pgmux_tests::*;
use tokio::io::AsyncWriteExt;

async fn refused_with(app_addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut r = Raw::connect(app_addr).await;
    r.send(bytes).await;
    let msgs = r.until_closed().await;
    let err = msgs
        .iter()
        .find(|m| m.tag == b'E')
        .unwrap_or_else(|| panic!("no ErrorResponse for {bytes:?}: {msgs:?}"));
    assert_eq!(err.field(b'S').as_deref(), Some("FATAL"));
    err.sqlstate().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_huge_and_negative_lengths_are_refused_and_others_served() {
    let db = fresh_database("hostile_lengths").await;
    let app = start_pgmux(|c| c.client_login_timeout = 2.0).await;
    let bystander = connect(app.addr, &db).await;
    assert_eq!(
        refused_with(app.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await,
        "08P01"
    );
    assert_eq!(
        refused_with(app.addr, &0x7fff_ffffu32.to_be_bytes()).await,
        "08P01"
    );
    assert_eq!(
        refused_with(app.addr, &(-8i32).to_be_bytes()).await,
        "08P01"
    );
    assert_eq!(
        refused_with(app.addr, &[0, 0, 0, 8, 0, 2, 0, 0]).await,
        "0A000"
    );
    // A startup packet with a parameter that never ends.
    assert_eq!(
        refused_with(
            app.addr,
            &[&[0u8, 0, 0, 13, 0, 3, 0, 0][..], b"user\0"].concat()
        )
        .await,
        "08P01"
    );
    // After login: a message length over the cap, then a negative one.
    let trusting = start_pgmux(|c| {
        c.auth_type = pgmux::config::AuthType::Trust;
        c.max_message_size = 1 << 20;
    })
    .await;
    for header in [
        [b'Q', 0x7f, 0xff, 0xff, 0xff],
        [b'Q', 0xff, 0xff, 0xff, 0xf0],
    ] {
        let mut r = Raw::login(trusting.addr, APP_USER, &db).await;
        r.send(&header).await;
        let msgs = r.until_closed().await;
        assert_eq!(
            msgs.iter()
                .find(|m| m.tag == b'E')
                .and_then(|m| m.sqlstate())
                .as_deref(),
            Some("08P01"),
            "{msgs:?}"
        );
    }
    // Mid-transaction garbage: the transaction is rolled back, not leaked.
    let mut r = Raw::login(trusting.addr, APP_USER, &db).await;
    r.send(&raw::query("begin; create table half_done (x int)"))
        .await;
    r.until_ready().await;
    r.send(&[b'Q', 0xff, 0xff, 0xff, 0xff]).await;
    r.until_closed().await;
    let check = connect(trusting.addr, &db).await;
    assert_eq!(
        scalar_text(
            &check,
            "select coalesce(to_regclass('half_done')::text, 'none')"
        )
        .await,
        "none"
    );
    assert_eq!(scalar_i32(&bystander, "select 99").await, 99);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_that_never_finishes_is_closed_after_the_timeout() {
    let db = fresh_database("hostile_slow").await;
    let app = start_pgmux(|c| c.client_login_timeout = 1.0).await;
    let bystander = connect(app.addr, &db).await;
    // Silent after connecting.
    let mut silent = Raw::connect(app.addr).await;
    // Half a startup packet.
    let mut half = Raw::connect(app.addr).await;
    half.send(&raw::startup_packet(&[("user", APP_USER)])[..6])
        .await;
    // Startup sent, password never sent.
    let mut mute = Raw::connect(app.addr).await;
    mute.send(&raw::startup_packet(&[
        ("user", APP_USER),
        ("database", &db),
    ]))
    .await;
    for conn in [&mut silent, &mut half, &mut mute] {
        let msgs = tokio::time::timeout(Duration::from_secs(20), conn.until_closed())
            .await
            .expect("closed after the login timeout");
        let err = msgs
            .iter()
            .find(|m| m.tag == b'E')
            .expect("an ErrorResponse before the close");
        assert_eq!(err.sqlstate().as_deref(), Some("08P01"));
        assert!(err.field(b'M').unwrap().contains("client_login_timeout"));
    }
    assert_eq!(scalar_i32(&bystander, "select 1").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_clients_get_53300() {
    let db = fresh_database("hostile_many").await;
    let app = start_pgmux(|c| c.max_client_conn = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(app.addr, &db).await);
    }
    let err = try_connect(&dsn(app.addr, &db)).await.err().unwrap();
    assert_eq!(err.code().map(|c| c.code()), Some("53300"), "{err}");
    drop(held.pop());
    // A slot frees once that client's session ends.
    let back = eventually(Duration::from_secs(10), || async {
        try_connect(&dsn(app.addr, &db)).await.is_ok()
    })
    .await;
    assert!(back);
    // A client may also just drop the socket mid-startup.
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    s.write_all(&[0, 0]).await.unwrap();
    drop(s);
    assert_eq!(scalar_i32(&held[0], "select 3").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encryption_requests_get_n_and_the_greeting_is_complete() {
    use tokio::io::AsyncReadExt;
    let db = fresh_database("hostile_greeting").await;
    let app = start_pgmux(|c| c.auth_type = pgmux::config::AuthType::Trust).await;
    let mut r = Raw::connect(app.addr).await;
    for code in [80_877_103u32, 80_877_104] {
        let mut request = 8u32.to_be_bytes().to_vec();
        request.extend_from_slice(&code.to_be_bytes());
        r.send(&request).await;
        let mut answer = [0u8; 1];
        r.stream.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"N", "SSLRequest and GSSENCRequest are declined");
    }
    // Protocol 3.2 with a _pq_ option: negotiated down to 3.0.
    let mut startup = raw::startup_packet(&[
        ("user", APP_USER),
        ("database", &db),
        ("application_name", "greeter"),
        ("_pq_.extension", "on"),
    ]);
    startup[4..8].copy_from_slice(&196_610u32.to_be_bytes());
    r.send(&startup).await;
    let greeting = r.until_ready().await;
    let negotiate = greeting
        .iter()
        .find(|m| m.tag == b'v')
        .expect("NegotiateProtocolVersion");
    assert_eq!(&negotiate.body[..8], &[0, 0, 0, 0, 0, 0, 0, 1]);
    let params: Vec<(String, String)> = greeting
        .iter()
        .filter(|m| m.tag == b'S')
        .map(|m| {
            let mut parts = m
                .body
                .split(|&b| b == 0)
                .map(|p| String::from_utf8_lossy(p).into_owned());
            (parts.next().unwrap(), parts.next().unwrap())
        })
        .collect();
    assert!(
        params.contains(&("application_name".into(), "greeter".into())),
        "{params:?}"
    );
    for reported in [
        "server_version",
        "client_encoding",
        "DateStyle",
        "TimeZone",
        "integer_datetimes",
    ] {
        assert!(
            params.iter().any(|(k, _)| k == reported),
            "{reported} missing from {params:?}"
        );
    }
    let key = greeting
        .iter()
        .find(|m| m.tag == b'K')
        .expect("BackendKeyData");
    let pgmux_pid = i32::from_be_bytes(key.body[..4].try_into().unwrap());
    r.send(&raw::query("select pg_backend_pid()")).await;
    let reply = r.until_ready().await;
    let row = reply.iter().find(|m| m.tag == b'D').unwrap();
    let server_pid: i32 = String::from_utf8_lossy(&row.body[6..]).parse().unwrap();
    assert_ne!(
        pgmux_pid, server_pid,
        "clients get pgmux's own cancel key, not the server's"
    );
    assert_eq!(greeting.last().map(|m| m.tag), Some(b'Z'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_startup_packets_and_impossible_client_caps_are_refused() {
    let app = start_pgmux(|_| {}).await;
    let mut huge = 20_000u32.to_be_bytes().to_vec();
    huge.extend_from_slice(&196_608u32.to_be_bytes());
    assert_eq!(refused_with(app.addr, &huge).await, "08P01");
    let mut cfg = test_config();
    cfg.max_client_conn = 2_000_000_000;
    let Err(err) = pgmux::app::App::start(cfg).await else {
        panic!("start-up must refuse")
    };
    assert!(err.to_string().contains("max_client_conn"), "{err}");
}

/// Issue 12: after an extended-protocol error the server discards every
/// message up to the client's next Sync. A client that goes on sending
/// Bind/Execute without a Sync must not make pgmux remember each one:
/// pgmux reads the server's error before more of the client's requests and
/// then records nothing for the skipped ones, and the list of replies owed
/// is capped besides. So 52 MB of such messages (which once cost pgmux about
/// twice that) leave it within a bound set by its buffers and that cap, and
/// each Sync gets the one error and ReadyForQuery, as on a direct
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_past_an_error_without_a_sync_cost_no_memory() {
    let db = fresh_database("flood_no_sync").await;
    let config = config_text("127.0.0.1:0", "auth_type = \"trust\"");
    let pgmux = Proc::start("flood_no_sync", &config, &[]).await;
    let mut client = Raw::login(pgmux.addr, APP_USER, &db).await;
    assert_eq!(client.scalar("select 1").await, "1", "warm");
    let pair = [raw::bind("no_such_statement"), raw::execute()].concat();
    let megabyte = pair.repeat(1024 * 1024 / pair.len());

    let mut flood = async |megabytes: usize| {
        for _ in 0..megabytes {
            client.send(&megabyte).await;
        }
        client.send(&raw::sync()).await;
        let replies = client.until_ready().await;
        assert_eq!(raw::error_in(&replies).sqlstate().as_deref(), Some("26000"));
        assert_eq!(
            replies.iter().filter(|m| m.tag == b'E').count(),
            1,
            "the messages after the error draw nothing: {}",
            raw::tags(&replies)
        );
    };
    let start = pgmux.rss_kib();
    for megabytes in [4, 12, 12, 24] {
        flood(megabytes).await;
    }
    let after = pgmux.rss_kib();
    println!("pgmux: {start} KiB, {after} KiB after 52 MB");
    // The owed-reply cap (2^18 entries of 24 bytes, doubled by the queue's
    // growth) and the buffers come to well under 40 MiB; remembering every
    // message would be about 100.
    assert!(
        after.saturating_sub(start) < 40 * 1024,
        "pgmux grew from {start} to {after} KiB while a client sent 52 MB of skipped messages"
    );
    assert_eq!(client.scalar("select 2").await, "2", "still served");
}

/// Issue 12: a client that prepares statement after statement and closes
/// none holds at most `max_client_prepared_bytes` of them, and the pool's
/// index of statement texts is capped too: 12,000 distinct 8 KB statements
/// (about 100 MB of text, which pgmux once kept whole) leave it within a
/// few tens of MiB. The names used last still work; the first is gone, with
/// PostgreSQL's 26000 for a name that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_preparing_without_end_is_held_to_its_budget() {
    let db = fresh_database("prepare_flood").await;
    let config = config_text(
        "127.0.0.1:0",
        "auth_type = \"trust\"\nmax_client_prepared_bytes = 1048576",
    );
    let pgmux = Proc::start(
        "prepare_flood",
        &config,
        &[("PGMUX_LOG", "warn,pgmux::app=info")],
    )
    .await;
    let mut client = Raw::login(pgmux.addr, APP_USER, &db).await;
    let filler = "x".repeat(8000);
    const BATCH: usize = 100;
    let mut prepare = async |batch: usize| {
        let mut bytes = Vec::new();
        for i in batch * BATCH..(batch + 1) * BATCH {
            bytes.extend(raw::parse(
                &format!("s{i}"),
                &format!("select '{i} {filler}'"),
            ));
        }
        bytes.extend(raw::sync());
        let replies = client.exchange(&bytes).await;
        assert_eq!(
            replies.iter().filter(|m| m.tag == b'1').count(),
            BATCH,
            "batch {batch}: {}",
            raw::tags(&replies)
        );
    };
    for batch in 0..40 {
        prepare(batch).await;
    }
    // 32 MB so far: the client's budget and the pool's index are full.
    let warm = pgmux.rss_kib();
    for batch in 40..120 {
        prepare(batch).await;
    }
    let after = pgmux.rss_kib();
    println!("pgmux: {warm} KiB after 32 MB of statements, {after} KiB after 96 MB");
    assert!(
        after.saturating_sub(warm) < 32 * 1024,
        "pgmux grew from {warm} to {after} KiB while a client prepared 64 MB more statements"
    );

    let run = |name: &str| [raw::bind(name), raw::execute(), raw::sync()].concat();
    let last = client.exchange(&run("s11999")).await;
    assert_eq!(
        raw::tags(&last).matches('D').count(),
        1,
        "{}",
        raw::tags(&last)
    );
    let first = client.exchange(&run("s0")).await;
    assert_eq!(raw::error_in(&first).sqlstate().as_deref(), Some("26000"));
    assert_eq!(client.scalar("select 3").await, "3", "still served");
}

/// Issue 12: with `wildcard_databases` on, a logged-in user who tries
/// 100,000 made-up database names leaves pgmux's memory and /metrics as
/// they were: a name whose database does not exist gets PostgreSQL's 3D000
/// and leaves no pool behind; once `max_pools` pools exist, further names
/// get 53400 without reaching PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_database_names_leave_nothing_behind() {
    let kept = [
        fresh_database("names_kept_a").await,
        fresh_database("names_kept_b").await,
        fresh_database("names_kept_c").await,
    ];
    let config = config_text(
        "127.0.0.1:0",
        "auth_type = \"trust\"\nwildcard_databases = true\nmax_pools = 3\nmax_db_connections = 4",
    );
    let pgmux = Proc::start(
        "db_names",
        &config,
        &[("PGMUX_LOG", "error,pgmux::app=info")],
    )
    .await;
    let mut holders = Vec::new();
    for db in &kept[..2] {
        let mut c = Raw::login(pgmux.addr, APP_USER, db).await;
        assert_eq!(c.scalar("select 1").await, "1");
        holders.push(c);
    }
    let metrics_lines = || async { http_get(pgmux.metrics, "/metrics").await.1.lines().count() };
    // Log in to `count` made-up names from `parallel` clients at once;
    // each must be refused with `sqlstate`.
    let try_names =
        |prefix: &'static str, count: usize, parallel: usize, sqlstate: &'static str| {
            let addr = pgmux.addr;
            async move {
                let tasks: Vec<_> = (0..parallel)
                    .map(|t| {
                        tokio::spawn(async move {
                            for i in (t..count).step_by(parallel) {
                                let name = format!("{prefix}{i}");
                                let (_, msgs) = Raw::login_with(
                                    addr,
                                    &[("user", APP_USER), ("database", &name)],
                                    None,
                                )
                                .await;
                                let got = raw::error_in(&msgs).sqlstate();
                                assert_eq!(got.as_deref(), Some(sqlstate), "{name}");
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            }
        };
    // One free slot: each name in turn is tried at PostgreSQL, which has
    // no such database.
    try_names("warm_", 200, 1, "3D000").await;
    let (warm_rss, warm_lines) = (pgmux.rss_kib(), metrics_lines().await);
    try_names("missing_", 2_000, 1, "3D000").await;
    // The last slot taken: names are refused before PostgreSQL.
    let mut third = Raw::login(pgmux.addr, APP_USER, &kept[2]).await;
    assert_eq!(third.scalar("select 1").await, "1");
    try_names("made_up_", 98_000, 8, "53400").await;
    let (rss, lines) = (pgmux.rss_kib(), metrics_lines().await);
    println!("pgmux: {warm_rss} KiB and {warm_lines} /metrics lines, then {rss} KiB and {lines}");
    assert!(
        rss.saturating_sub(warm_rss) < 8 * 1024,
        "pgmux grew from {warm_rss} to {rss} KiB over 100,000 database names"
    );
    // The third pool's series came; nothing else did.
    let one_pool = {
        let text = http_get(pgmux.metrics, "/metrics").await.1;
        text.lines().filter(|l| l.contains(&kept[2])).count()
    };
    assert_eq!(lines, warm_lines + one_pool, "series left behind");
    for c in holders.iter_mut() {
        assert_eq!(
            c.scalar("select 2").await,
            "2",
            "the pools' clients still served"
        );
    }
}

/// A client that sends its first query in the same write as its startup
/// packet (the server answers nothing it must wait for under trust): the
/// query is read with the startup packet and served after the greeting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_sent_with_the_startup_packet_is_served() {
    let db = fresh_database("hostile_pipelined_login").await;
    let app = start_pgmux(|c| c.auth_type = pgmux::config::AuthType::Trust).await;
    let mut r = Raw::connect(app.addr).await;
    let mut first = raw::startup_packet(&[("user", APP_USER), ("database", &db)]);
    first.extend_from_slice(&raw::query("select 7"));
    r.send(&first).await;
    let greeting = r.until_ready().await;
    assert!(greeting.iter().any(|m| m.tag == b'K'), "{greeting:?}");
    let replies = r.until_ready().await;
    let row = replies.iter().find(|m| m.tag == b'D').expect("a DataRow");
    assert!(row.body.ends_with(b"7"), "{row:?}");
    assert_eq!(r.scalar("select 8").await, "8");
}
