//! TLS toward clients (issue 11): clients served TLS as
//! `client_tls_sslmode` says, against a PostgreSQL the harness starts with
//! `ssl = on` and certificates it makes itself. The server side is in
//! `tls_servers.rs`.

use std::path::Path;
use std::time::Duration;

use pgmux::config::{Config, SslMode};
use pgmux_tests::process::{config_text, Proc};
use pgmux_tests::raw::{self, Msg};
use pgmux_tests::tls::{psql, ClientTls};
use pgmux_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Serve clients TLS with the harness's `localhost` certificate.
fn serve_tls(c: &mut Config, mode: SslMode) {
    let certs = &cluster().certs;
    c.client_tls_sslmode = mode;
    c.client_tls_cert_file = path(&certs.server.cert).into();
    c.client_tls_key_file = path(&certs.server.key).into();
}

fn conninfo(host: &str, port: u16, db: &str, extra: &str) -> String {
    format!("host={host} port={port} user={APP_USER} dbname={db} {extra}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_get_tls_as_client_tls_sslmode_says() {
    let db = fresh_database("tls_clients").await;
    let certs = &cluster().certs;
    let app = start_pgmux(|c| {
        serve_tls(c, SslMode::Require);
        with_console_users(c);
    })
    .await;
    let port = app.addr.port();
    let ca = format!("sslrootcert={}", path(&certs.ca));
    let other_ca = format!("sslrootcert={}", path(&certs.other_ca));
    let ok = |r: Result<String, String>| r.unwrap_or_else(|e| panic!("refused: {e}"));

    // psql: encrypted, and checked as far as its sslmode asks.
    let sql = "select 1";
    ok(psql(&conninfo("127.0.0.1", port, &db, "sslmode=require"), sql).await);
    ok(psql(
        &conninfo("127.0.0.1", port, &db, &format!("sslmode=verify-ca {ca}")),
        sql,
    )
    .await);
    ok(psql(
        &conninfo("localhost", port, &db, &format!("sslmode=verify-full {ca}")),
        sql,
    )
    .await);
    let wrong_host = psql(
        &conninfo("127.0.0.1", port, &db, &format!("sslmode=verify-full {ca}")),
        sql,
    )
    .await
    .unwrap_err();
    assert!(
        wrong_host.contains("does not match host name"),
        "{wrong_host}"
    );
    let wrong_ca = psql(
        &conninfo(
            "localhost",
            port,
            &db,
            &format!("sslmode=verify-ca {other_ca}"),
        ),
        sql,
    )
    .await
    .unwrap_err();
    assert!(wrong_ca.contains("certificate verify failed"), "{wrong_ca}");

    // Plaintext is refused with 28000, naming the setting.
    let plain = try_connect(&dsn(app.addr, &db)).await;
    let err = told(&plain.expect_err("plaintext refused"));
    assert!(err.starts_with("28000 "), "{err}");
    assert!(err.contains("client_tls_sslmode"), "{err}");

    // A TLS client is served like any other, and SHOW CLIENTS says how.
    let tls = ClientTls::verify_full(&certs.ca, None);
    let dsn_tls = format!(
        "host=localhost port={port} user={APP_USER} password={APP_PASSWORD} dbname={db} sslmode=require"
    );
    let client = pgmux_tests::tls::connect(&dsn_tls, &tls).await.unwrap();
    let rows = client
        .query(
            "select i, repeat('x', 1000) from generate_series(1, 20000) i",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 20000, "a result bigger than any TLS record");
    // The console is a client too: over TLS.
    let console_dsn = format!(
        "host=localhost port={port} user={CONSOLE_ADMIN} password={CONSOLE_ADMIN_PASSWORD} dbname=pgmux sslmode=require"
    );
    let console = pgmux_tests::tls::connect(&console_dsn, &tls).await.unwrap();
    let clients = show(&console, "SHOW CLIENTS").await.unwrap();
    let mine = clients.rows_where("database", &db);
    assert!(!mine.is_empty());
    for row in mine {
        let tls = clients.get(row, "tls");
        assert!(tls.starts_with("TLSv1.3/"), "tls column: {tls:?}");
    }
    let handshakes = metric(
        app.metrics_addr.unwrap(),
        "pgmux_tls_handshakes_total",
        &[("side", "client")],
    )
    .await;
    assert!(handshakes >= 5.0, "{handshakes}");
    let failed = metric(
        app.metrics_addr.unwrap(),
        "pgmux_tls_handshake_errors_total",
        &[("side", "client"), ("reason", "certificate")],
    )
    .await;
    assert!(
        failed >= 1.0,
        "the wrong-CA client's refusal is counted: {failed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_serves_tls_and_plaintext_alike() {
    let db = fresh_database("tls_prefer").await;
    let app = start_pgmux(|c| serve_tls(c, SslMode::Prefer)).await;
    let port = app.addr.port();
    let plain = connect(app.addr, &db).await;
    assert_eq!(scalar_i32(&plain, "select 1").await, 1);
    let over_tls = psql(
        &conninfo("127.0.0.1", port, &db, "sslmode=require"),
        "select 2",
    )
    .await
    .unwrap();
    assert_eq!(over_tls, "2");
    // With TLS off, a client that insists on it is told no.
    let off = start_pgmux(|_| {}).await;
    let refused = psql(
        &conninfo("127.0.0.1", off.addr.port(), &db, "sslmode=require"),
        "select 1",
    )
    .await
    .unwrap_err();
    assert!(refused.contains("does not support SSL"), "{refused}");
}

/// Read backend messages from `stream` until ReadyForQuery or an error.
async fn read_until_ready(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<Msg> {
    let mut out = Vec::new();
    loop {
        let mut head = [0u8; 5];
        if stream.read_exact(&mut head).await.is_err() {
            return out;
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        stream.read_exact(&mut body).await.unwrap();
        let tag = head[0];
        out.push(Msg { tag, body });
        if tag == b'Z' || tag == b'E' {
            return out;
        }
    }
}

/// PostgreSQL 17's `sslnegotiation=direct`: a ClientHello first, which must
/// name ALPN `postgresql`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_is_accepted_with_alpn_postgresql() {
    let db = fresh_database("tls_direct").await;
    let certs = &cluster().certs;
    let app = start_pgmux(|c| {
        serve_tls(c, SslMode::Require);
        c.auth_type = pgmux::config::AuthType::Trust;
    })
    .await;
    let tls = ClientTls::verify_full(&certs.ca, None);
    let startup = raw::startup_packet(&[("user", APP_USER), ("database", &db)]);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();

    let with_alpn = tokio_rustls::TlsConnector::from(tls.config(&[b"postgresql"]));
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let mut session = with_alpn.connect(name.clone(), tcp).await.unwrap();
    session.write_all(&startup).await.unwrap();
    let greeting = read_until_ready(&mut session).await;
    assert_eq!(greeting.last().map(|m| m.tag), Some(b'Z'), "{greeting:?}");
    session
        .write_all(&raw::query("select 40 + 2"))
        .await
        .unwrap();
    let answer = read_until_ready(&mut session).await;
    let row = answer.iter().find(|m| m.tag == b'D').expect("a row");
    assert!(row.body.ends_with(b"42"), "{answer:?}");

    let without_alpn = tokio_rustls::TlsConnector::from(tls.config(&[]));
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let mut session = without_alpn.connect(name, tcp).await.unwrap();
    session.write_all(&startup).await.unwrap();
    let refused = read_until_ready(&mut session).await;
    let err = raw::error_in(&refused);
    assert_eq!(err.sqlstate().as_deref(), Some("08P01"));
    assert!(err.field(b'M').unwrap().contains("ALPN"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_and_checked_under_verify_ca() {
    let db = fresh_database("tls_client_certs").await;
    let certs = &cluster().certs;
    let app = start_pgmux(|c| {
        serve_tls(c, SslMode::VerifyCa);
        c.client_tls_ca_file = path(&certs.ca).into();
    })
    .await;
    let port = app.addr.port();
    let with = |pair: &pgmux_tests::tls::Pair| {
        format!(
            "sslmode=require sslcert={} sslkey={}",
            path(&pair.cert),
            path(&pair.key)
        )
    };
    let ok = psql(
        &conninfo("127.0.0.1", port, &db, &with(&certs.client)),
        "select 1",
    )
    .await;
    assert_eq!(ok.unwrap(), "1");
    let none = psql(
        &conninfo("127.0.0.1", port, &db, "sslmode=require"),
        "select 1",
    )
    .await;
    assert!(none.is_err(), "no client certificate: refused");
    let other = psql(
        &conninfo("127.0.0.1", port, &db, &with(&certs.other_client)),
        "select 1",
    )
    .await;
    assert!(other.is_err(), "a certificate from another CA: refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_rotated_by_reload_and_a_broken_file_changes_nothing() {
    let db = fresh_database("tls_rotation").await;
    let certs = cluster().certs.clone();
    let dir = std::env::temp_dir().join(format!("pgmux-tls-rotation-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("pgmux.crt"), dir.join("pgmux.key"));
    std::fs::copy(&certs.server.cert, &cert).unwrap();
    std::fs::copy(&certs.server.key, &key).unwrap();
    let extra = format!(
        "client_tls_sslmode = \"require\"\nclient_tls_cert_file = \"{}\"\nclient_tls_key_file = \"{}\"\n",
        path(&cert),
        path(&key)
    );
    let mut pgmux = Proc::start("tls-rotation", &config_text("127.0.0.1:0", &extra), &[]).await;
    let port = pgmux.addr.port();
    let dsn_tls = format!(
        "host=localhost port={port} user={APP_USER} password={APP_PASSWORD} dbname={db} sslmode=require"
    );
    let old_ca = ClientTls::verify_full(&certs.ca, None);
    let new_ca = ClientTls::verify_full(&certs.other_ca, None);
    let established = pgmux_tests::tls::connect(&dsn_tls, &old_ca).await.unwrap();
    assert!(pgmux_tests::tls::connect(&dsn_tls, &new_ca).await.is_err());

    std::fs::copy(&certs.other_server.cert, &cert).unwrap();
    std::fs::copy(&certs.other_server.key, &key).unwrap();
    pgmux.signal(libc::SIGHUP);
    pgmux.wait_for_line("configuration reloaded").await;
    let fresh = pgmux_tests::tls::connect(&dsn_tls, &new_ca).await.unwrap();
    assert_eq!(scalar_i32(&fresh, "select 1").await, 1);
    assert!(
        pgmux_tests::tls::connect(&dsn_tls, &old_ca).await.is_err(),
        "new clients see the new certificate"
    );
    assert_eq!(
        scalar_i32(&established, "select 2").await,
        2,
        "the established client keeps working"
    );

    std::fs::write(&cert, "not a certificate\n").unwrap();
    pgmux.signal(libc::SIGHUP);
    let refused = pgmux.wait_for_line("configuration reload refused").await;
    assert!(
        refused.contains(path(&cert)),
        "the log names the file: {refused}"
    );
    let still = pgmux_tests::tls::connect(&dsn_tls, &new_ca).await.unwrap();
    assert_eq!(scalar_i32(&still, "select 3").await, 3);
    assert_eq!(scalar_i32(&established, "select 4").await, 4);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Half-open handshakes, stalled ones and a broken record: each costs
/// pgmux only its own connection, memory stays bounded, and everyone else
/// is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_broken_tls_handshakes_leave_others_served() {
    let db = fresh_database("tls_hostile").await;
    let certs = cluster().certs.clone();
    let extra = format!(
        "client_tls_sslmode = \"require\"\nclient_tls_cert_file = \"{}\"\nclient_tls_key_file = \"{}\"\nclient_login_timeout = 3\nmax_client_conn = 2000\nlog_connections = false\n",
        path(&certs.server.cert),
        path(&certs.server.key)
    );
    let pgmux = Proc::start("tls-hostile", &config_text("127.0.0.1:0", &extra), &[]).await;
    let port = pgmux.addr.port();
    let dsn_tls = format!(
        "host=localhost port={port} user={APP_USER} password={APP_PASSWORD} dbname={db} sslmode=require"
    );
    let tls = ClientTls::verify_full(&certs.ca, None);
    let bystander = pgmux_tests::tls::connect(&dsn_tls, &tls).await.unwrap();
    assert_eq!(scalar_i32(&bystander, "select 1").await, 1);
    let before = pgmux.rss_kib();

    // 1,000 handshakes left half done: SSLRequest answered, then a
    // ClientHello's first bytes and nothing more.
    let mut stalled = Vec::new();
    for i in 0..1000 {
        let mut s = tokio::net::TcpStream::connect(pgmux.addr).await.unwrap();
        s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .await
            .unwrap();
        let mut answer = [0u8; 1];
        s.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"S");
        if i % 2 == 0 {
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
                .await
                .unwrap();
        }
        stalled.push(s);
    }
    // A client that finished its handshake and then sends a record that
    // does not decrypt is closed; the others carry on.
    let connector = tokio_rustls::TlsConnector::from(tls.config(&[]));
    let tcp = tokio::net::TcpStream::connect(pgmux.addr).await.unwrap();
    let mut tcp = tcp;
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut broken = connector.connect(name, tcp).await.unwrap();
    let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x40];
    record.extend([0x5a; 0x40]);
    broken.get_mut().0.write_all(&record).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(20),
        broken.get_mut().0.read_to_end(&mut rest),
    )
    .await
    .expect("the broken client is closed");

    assert_eq!(scalar_i32(&bystander, "select 2").await, 2);
    let newcomer = pgmux_tests::tls::connect(&dsn_tls, &tls).await.unwrap();
    assert_eq!(scalar_i32(&newcomer, "select 3").await, 3);
    let grown = pgmux.rss_kib().saturating_sub(before);
    assert!(
        grown < 64 * 1024,
        "1,000 half-open handshakes grew pgmux by {grown} KiB"
    );
    // Every stalled handshake ends at client_login_timeout.
    for mut s in stalled {
        let mut sink = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut sink))
            .await
            .expect("a stalled handshake is closed after client_login_timeout")
            .ok();
    }
    assert_eq!(scalar_i32(&bystander, "select 4").await, 4);
    // Each stall counts as a TLS handshake that timed out (and as a login
    // timeout); the broken record came after a finished handshake.
    let labels = [("side", "client"), ("reason", "timeout")];
    let timed_out = metric(pgmux.metrics, "pgmux_tls_handshake_errors_total", &labels).await;
    assert_eq!(timed_out, 1000.0);
}

/// SCRAM channel binding through pgmux (PgBouncer refuses a client that
/// requires it): over TLS pgmux offers SCRAM-SHA-256-PLUS with
/// `tls-server-end-point`, so libpq's `channel_binding=require` logs in;
/// without TLS there is nothing to bind to, and libpq will not go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_require_works_over_tls() {
    let db = fresh_database("tls_channel_binding").await;
    let app = start_pgmux(|c| serve_tls(c, SslMode::Prefer)).await;
    let port = app.addr.port();
    let bound = psql(
        &conninfo(
            "127.0.0.1",
            port,
            &db,
            "sslmode=require channel_binding=require",
        ),
        "select current_user",
    )
    .await;
    assert_eq!(bound.unwrap(), APP_USER);
    // The wrong password still fails, bound or not.
    let wrong = psql(
        &format!(
            "host=127.0.0.1 port={port} user={APP_USER} dbname={db} password=wrong sslmode=require channel_binding=require"
        ),
        "select 1",
    )
    .await
    .unwrap_err();
    assert!(wrong.contains("password authentication failed"), "{wrong}");
    let plaintext = psql(
        &conninfo(
            "127.0.0.1",
            port,
            &db,
            "sslmode=disable channel_binding=require",
        ),
        "select 1",
    )
    .await
    .unwrap_err();
    assert!(plaintext.contains("channel binding"), "{plaintext}");
}

/// `auth_type = cert`: the client certificate's CommonName is the user it
/// logs in as, with no password; another user's name is refused (28000),
/// and so is a certificate from another CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_type_cert_logs_the_common_name_in() {
    let db = fresh_database("tls_auth_cert").await;
    let certs = &cluster().certs;
    let app = start_pgmux(|c| {
        serve_tls(c, SslMode::VerifyFull);
        c.client_tls_ca_file = path(&certs.ca).into();
        c.auth_type = pgmux::config::AuthType::Cert;
    })
    .await;
    let port = app.addr.port();
    let with = |pair: &pgmux_tests::tls::Pair, user: &str| {
        format!(
            "host=127.0.0.1 port={port} dbname={db} user={user} password=unused sslmode=require sslcert={} sslkey={}",
            path(&pair.cert),
            path(&pair.key)
        )
    };
    let me = psql(&with(&certs.client, APP_USER), "select current_user").await;
    assert_eq!(me.unwrap(), APP_USER);
    let other = psql(&with(&certs.client, "md5user"), "select 1")
        .await
        .unwrap_err();
    assert!(
        other.contains("certificate authentication failed for user \"md5user\""),
        "{other}"
    );
    let stranger = psql(&with(&certs.other_client, APP_USER), "select 1").await;
    assert!(stranger.is_err(), "a certificate from another CA");
}

/// Bytes sent after an SSLRequest, before the TLS handshake, would be
/// plaintext passing for encrypted (CVE-2021-23214's shape): refused with
/// 08P01, and the connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_after_an_ssl_request_is_refused() {
    let app = start_pgmux(|c| serve_tls(c, SslMode::Prefer)).await;
    let mut r = raw::Raw::connect(app.addr).await;
    let mut request = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    request.extend_from_slice(&raw::query("select 1"));
    r.send(&request).await;
    let answer = r.until_closed().await;
    assert_eq!(raw::error_in(&answer).sqlstate().as_deref(), Some("08P01"));
}
