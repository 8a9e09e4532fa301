//! Client authentication: every method, wrong passwords, unknown users and
//! databases, and PgBouncer-style auth files.

use pgmux::config::AuthType;
use pgmux_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_md5_plain_and_trust_let_the_right_people_in() {
    let db = fresh_database("auth_methods").await;
    for method in [
        AuthType::ScramSha256,
        AuthType::Md5,
        AuthType::Plain,
        AuthType::Trust,
    ] {
        let app = start_pgmux(|c| c.auth_type = method).await;
        let c = try_connect(&dsn(app.addr, &db))
            .await
            .unwrap_or_else(|e| panic!("{method:?}: {e}"));
        assert_eq!(scalar_i32(&c, "select 1").await, 1);
        let wrong = format!(
            "host=127.0.0.1 port={} user={APP_USER} password=wrong dbname={db}",
            app.addr.port()
        );
        let result = try_connect(&wrong).await;
        if method == AuthType::Trust {
            assert!(result.is_ok(), "trust lets anyone in");
        } else {
            let err = result
                .err()
                .unwrap_or_else(|| panic!("{method:?} accepted a wrong password"));
            assert_eq!(
                err.code().map(|c| c.code()),
                Some("28P01"),
                "{method:?}: {err}"
            );
            let message = err
                .as_db_error()
                .map(|e| e.message().to_string())
                .unwrap_or_default();
            assert!(
                message.contains(APP_USER),
                "errors name the user: {message}"
            );
        }
        app.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_and_databases_are_refused_clearly() {
    let db = fresh_database("auth_unknown").await;
    let app = start_pgmux(|_| {}).await;
    let nobody = format!(
        "host=127.0.0.1 port={} user=nobody password=x dbname={db}",
        app.addr.port()
    );
    assert_eq!(sqlstate(try_connect(&nobody).await.map(|_| ())), "28P01");
    // Failed logins leave nothing behind: no pool (and no metrics series)
    // is created for a name that never authenticated.
    for n in 0..20 {
        let stranger = format!(
            "host=127.0.0.1 port={} user=stranger{n} password=x dbname=db{n}",
            app.addr.port()
        );
        assert_eq!(sqlstate(try_connect(&stranger).await.map(|_| ())), "28P01");
    }
    assert!(
        app.pools.all().is_empty(),
        "pools were created for unauthenticated users"
    );
    // The server says the database does not exist: the client hears 3D000
    // and no pool is left behind for it.
    let missing = try_connect(&dsn(app.addr, "no_such_db"))
        .await
        .err()
        .unwrap();
    assert_eq!(missing.code().map(|c| c.code()), Some("3D000"), "{missing}");
    assert!(app.pools.all().iter().all(|p| p.database != "no_such_db"));
    // With wildcard pooling off, pgmux itself refuses names it doesn't know.
    let strict = start_pgmux(|c| c.wildcard_databases = false).await;
    let err = try_connect(&dsn(strict.addr, &db)).await.err().unwrap();
    assert_eq!(err.code().map(|c| c.code()), Some("3D000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_file_in_pgbouncer_format_is_honoured() {
    let db = fresh_database("auth_file").await;
    let dir = std::env::temp_dir().join(format!("pgmux-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("userlist.txt");
    // md5user logs in to PostgreSQL with an MD5 password given in
    // plaintext. scramonly is kept as the SCRAM verifier PostgreSQL itself
    // holds (PgBouncer's recommended userlist): it checks the client, and
    // the client's proof yields the key pgmux logs in to the server with.
    let verifier = scram_role("scramonly", "scram-only-secret");
    std::fs::write(
        &file,
        format!("; comment\n\"md5user\" \"md5-secret\"\n\"scramonly\" \"{verifier}\"\n"),
    )
    .unwrap();
    cluster().psql_super(&format!("grant all on database {db} to md5user"));
    let app = start_pgmux(|c| c.auth_file = file.display().to_string()).await;
    let ok = format!(
        "host=127.0.0.1 port={} user=md5user password=md5-secret dbname={db}",
        app.addr.port()
    );
    let c = try_connect(&ok).await.unwrap();
    assert_eq!(
        scalar_text(&c, "select current_user::text").await,
        "md5user"
    );
    let bad = format!(
        "host=127.0.0.1 port={} user=md5user password=nope dbname={db}",
        app.addr.port()
    );
    assert_eq!(sqlstate(try_connect(&bad).await.map(|_| ())), "28P01");
    let scram_only = |password: &str| {
        format!(
            "host=127.0.0.1 port={} user=scramonly password={password} dbname={db}",
            app.addr.port()
        )
    };
    let c = try_connect(&scram_only("scram-only-secret")).await.unwrap();
    assert_eq!(
        scalar_text(&c, "select current_user::text").await,
        "scramonly"
    );
    assert_eq!(
        sqlstate(try_connect(&scram_only("nope")).await.map(|_| ())),
        "28P01"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A login role with a SCRAM password, made afresh; its verifier as
/// PostgreSQL keeps it.
fn scram_role(role: &str, password: &str) -> String {
    let out = std::process::Command::new(cluster().tool("psql"))
        .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-p", &cluster().port.to_string(), "-U", "postgres", "-d", "postgres"])
        .args(["-c", &format!("set password_encryption = 'scram-sha-256'; drop role if exists {role}; create role {role} login password '{password}'; select rolpassword from pg_authid where rolname = '{role}'")])
        .env("PGPASSWORD", pgmux_tests::cluster::SUPERUSER_PASSWORD)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("SCRAM-SHA-256$"))
        .expect("a verifier")
        .to_string()
}
