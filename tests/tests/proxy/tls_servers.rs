//! TLS toward PostgreSQL (issue 11): servers reached with TLS as
//! `server_tls_sslmode` says, against a PostgreSQL the harness starts with
//! `ssl = on`, `hostssl`-only and `cert`-only databases, and certificates
//! it makes itself.

use std::path::Path;

use pgmux::config::{Config, SslMode};
use pgmux_tests::cluster::{CERT_DATABASE, TLS_ONLY_DATABASE};
use pgmux_tests::process::{config_text, Proc};
use pgmux_tests::*;

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The server connections of `db` (as PostgreSQL sees them): how many,
/// and whether every one is encrypted.
async fn server_connections_encrypted(db: &str) -> (i64, bool) {
    let admin = cluster().admin().await;
    let row = admin
        .query_one(
            "select count(*), coalesce(bool_and(s.ssl), false) from pg_stat_activity a \
             join pg_stat_ssl s using (pid) where a.datname = $1 and a.usename = $2",
            &[&db, &APP_USER],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_are_reached_with_tls_as_server_tls_sslmode_says() {
    let db = fresh_database("tls_servers").await;
    let certs = &cluster().certs;
    let verify = |mode: SslMode, host: &'static str, ca: &Path| {
        let ca = path(ca).to_string();
        move |c: &mut Config| {
            c.server_host = host.into();
            c.server_tls_sslmode = mode;
            c.server_tls_ca_file = ca;
            with_console_users(c);
        }
    };
    // verify-full to `localhost`, which the certificate names.
    let app = start_pgmux(verify(SslMode::VerifyFull, "localhost", &certs.ca)).await;
    let clients: Vec<_> =
        futures_util::future::join_all((0..3).map(|_| connect(app.addr, &db))).await;
    for c in &clients {
        c.batch_execute("begin; select 1").await.unwrap();
    }
    let (servers, all_encrypted) = server_connections_encrypted(&db).await;
    assert_eq!(servers, 3);
    assert!(
        all_encrypted,
        "pg_stat_ssl shows every server connection encrypted"
    );
    let console = console(app.addr).await;
    let table = show(&console, "SHOW SERVERS").await.unwrap();
    for row in table.rows_where("database", &db) {
        let tls = table.get(row, "tls");
        assert!(tls.starts_with("TLSv1."), "tls column: {tls:?}");
    }
    drop(clients);

    // verify-full to 127.0.0.1, which it does not name: refused, and the
    // client is told which server and why.
    let db2 = fresh_database("tls_servers_name").await;
    let app = start_pgmux(verify(SslMode::VerifyFull, "127.0.0.1", &certs.ca)).await;
    let err = try_connect(&dsn(app.addr, &db2))
        .await
        .expect_err("refused");
    let text = told(&err);
    assert!(text.starts_with("08001 "), "{text}");
    assert!(text.contains("127.0.0.1") && text.contains("TLS"), "{text}");
    assert!(text.contains("not valid for name"), "{text}");
    // verify-ca checks the chain only: 127.0.0.1 is fine.
    let app = start_pgmux(verify(SslMode::VerifyCa, "127.0.0.1", &certs.ca)).await;
    let c = connect(app.addr, &db2).await;
    assert_eq!(scalar_i32(&c, "select 1").await, 1);
    // A certificate from a CA pgmux does not trust is refused.
    let db3 = fresh_database("tls_servers_ca").await;
    let app = start_pgmux(verify(SslMode::VerifyCa, "localhost", &certs.other_ca)).await;
    let err = try_connect(&dsn(app.addr, &db3))
        .await
        .expect_err("refused");
    assert!(told(&err).contains("UnknownIssuer"), "{}", told(&err));
    let failed = metric(
        app.metrics_addr.unwrap(),
        "pgmux_tls_handshake_errors_total",
        &[("side", "server"), ("reason", "certificate")],
    )
    .await;
    assert!(failed >= 1.0, "{failed}");
    // A database that names its own CA is checked against it, not the
    // general one.
    let db4 = fresh_database("tls_servers_own_ca").await;
    let own_ca = path(&certs.ca).to_string();
    let app = start_pgmux(move |c| {
        verify(SslMode::VerifyFull, "localhost", &cluster().certs.other_ca)(c);
        c.databases.insert(
            db4.clone(),
            pgmux::config::DatabaseConfig {
                server_tls_ca_file: Some(own_ca),
                ..Default::default()
            },
        );
    })
    .await;
    let c = connect(app.addr, "tls_servers_own_ca").await;
    assert_eq!(scalar_i32(&c, "select 4").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostssl_only_database_is_reached_over_tls_and_never_in_plaintext() {
    let _ = fresh_database(TLS_ONLY_DATABASE).await;
    // The default, prefer, takes TLS when the server offers it.
    let app = start_pgmux(|_| {}).await;
    let c = connect(app.addr, TLS_ONLY_DATABASE).await;
    assert_eq!(scalar_i32(&c, "select 1").await, 1);
    // disable: PostgreSQL refuses the plaintext login, and the client
    // hears it.
    let plain = start_pgmux(|c| c.server_tls_sslmode = SslMode::Disable).await;
    let err = try_connect(&dsn(plain.addr, TLS_ONLY_DATABASE))
        .await
        .expect_err("refused by pg_hba.conf");
    assert!(told(&err).contains("no encryption"), "{}", told(&err));
    // A per-database override wins over the general setting.
    let mixed = start_pgmux(|c| {
        c.server_tls_sslmode = SslMode::Disable;
        c.databases.insert(
            TLS_ONLY_DATABASE.into(),
            pgmux::config::DatabaseConfig {
                server_tls_sslmode: Some(SslMode::Require),
                ..Default::default()
            },
        );
    })
    .await;
    let c = connect(mixed.addr, TLS_ONLY_DATABASE).await;
    assert_eq!(scalar_i32(&c, "select 3").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgmux_logs_in_to_postgresql_with_a_client_certificate() {
    let _ = fresh_database(CERT_DATABASE).await;
    let certs = &cluster().certs;
    let app = start_pgmux(|c| {
        c.server_host = "localhost".into();
        c.server_tls_sslmode = SslMode::VerifyFull;
        c.server_tls_ca_file = path(&certs.ca).into();
        c.server_tls_cert_file = path(&certs.client.cert).into();
        c.server_tls_key_file = path(&certs.client.key).into();
    })
    .await;
    let c = connect(app.addr, CERT_DATABASE).await;
    assert_eq!(scalar_text(&c, "select current_user").await, APP_USER);
    // Without the certificate, PostgreSQL's `cert` rule refuses.
    let without = start_pgmux(|c| c.server_host = "localhost".into()).await;
    let err = try_connect(&dsn(without.addr, CERT_DATABASE))
        .await
        .expect_err("refused");
    assert!(told(&err).contains("certificate"), "{}", told(&err));
    // A database of its own certificate: only its entry presents it.
    let (cert, key) = (path(&certs.client.cert), path(&certs.client.key));
    let (cert, key) = (cert.to_string(), key.to_string());
    let per_database = start_pgmux(move |c| {
        c.server_host = "localhost".into();
        c.databases.insert(
            CERT_DATABASE.into(),
            pgmux::config::DatabaseConfig {
                server_tls_cert_file: Some(cert),
                server_tls_key_file: Some(key),
                ..Default::default()
            },
        );
        c.databases.insert(
            "cert_login_bare".into(),
            pgmux::config::DatabaseConfig {
                dbname: Some(CERT_DATABASE.into()),
                ..Default::default()
            },
        );
    })
    .await;
    let c = connect(per_database.addr, CERT_DATABASE).await;
    assert_eq!(scalar_text(&c, "select current_user").await, APP_USER);
    let err = try_connect(&dsn(per_database.addr, "cert_login_bare"))
        .await
        .expect_err("the same database without the certificate");
    assert!(told(&err).contains("certificate"), "{}", told(&err));
}

/// A reload that changes how servers are reached replaces the servers
/// opened the old way as they come back (a client mid-transaction keeps
/// its server until the transaction ends), without dropping any client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_are_replaced_when_their_tls_settings_change() {
    let db = fresh_database("tls_reload_servers").await;
    let settings = |mode: &str| format!("server_tls_sslmode = \"{mode}\"\npool_size = 1\n");
    let mut pgmux = Proc::start(
        "tls-reload-servers",
        &config_text("127.0.0.1:0", &settings("require")),
        &[],
    )
    .await;
    let admin = cluster().admin().await;
    let encrypted = |pid: i32| {
        let admin = &admin;
        async move {
            let row = admin
                .query_one("select ssl from pg_stat_ssl where pid = $1", &[&pid])
                .await
                .unwrap();
            row.get::<_, bool>(0)
        }
    };
    let client = connect(pgmux.addr, &db).await;
    client.batch_execute("begin").await.unwrap();
    let before = backend_pid(&client).await;
    assert!(encrypted(before).await);

    std::fs::write(
        &pgmux.config,
        config_text("127.0.0.1:0", &settings("disable")),
    )
    .unwrap();
    pgmux.signal(libc::SIGHUP);
    pgmux.wait_for_line("configuration reloaded").await;
    // Mid-transaction: the same server, still encrypted.
    assert_eq!(backend_pid(&client).await, before);
    client.batch_execute("commit").await.unwrap();
    // Back in the pool, it was closed; the next one is plaintext.
    let after = backend_pid(&client).await;
    assert_ne!(after, before);
    assert!(!encrypted(after).await);
}
