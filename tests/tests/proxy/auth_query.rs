//! auth_query with SCRAM pass-through (issue 11): roles pgmux has no
//! entry for are looked up in PostgreSQL through a SECURITY DEFINER
//! function (the set-up the README gives for an `auth_user` that may not
//! read pg_shadow), authenticate clients with their own SCRAM verifier or
//! MD5 hash, and log in to the server with what the client's login proved.

use pgmux::config::{Config, UserConfig};
use pgmux_tests::raw::{self, Raw};
use pgmux_tests::*;

const AUTH_USER: &str = "pgmux_auth";
const AUTH_PASSWORD: &str = "auth-lookup-secret";

/// The lookup function in `db` and the role that may call it (roles are
/// cluster-wide: made once, kept).
async fn lookup_setup(db: &str) {
    let admin = cluster().admin().await;
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{AUTH_USER}') THEN \
             CREATE ROLE {AUTH_USER} LOGIN PASSWORD '{AUTH_PASSWORD}'; END IF; END $$"
        ))
        .await
        .unwrap();
    let in_db = pgmux_tests::try_connect(&format!(
        "host=127.0.0.1 port={} user=postgres password={} dbname={db}",
        cluster().port,
        pgmux_tests::cluster::SUPERUSER_PASSWORD
    ))
    .await
    .unwrap();
    in_db
        .batch_execute(&format!(
            "CREATE FUNCTION public.pgmux_lookup(name text, OUT usename name, OUT passwd text) \
             RETURNS record LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog \
             AS $f$ SELECT usename, passwd FROM pg_shadow WHERE usename = name $f$; \
             REVOKE ALL ON FUNCTION public.pgmux_lookup(text) FROM public; \
             GRANT EXECUTE ON FUNCTION public.pgmux_lookup(text) TO {AUTH_USER};"
        ))
        .await
        .unwrap();
}

fn with_auth_query(c: &mut Config, db: &str) {
    c.auth_user = AUTH_USER.into();
    c.auth_query = "SELECT usename, passwd FROM public.pgmux_lookup($1)".into();
    c.auth_dbname = db.into();
    c.users.insert(
        AUTH_USER.into(),
        UserConfig {
            password: Some(AUTH_PASSWORD.into()),
            ..Default::default()
        },
    );
}

/// (SQLSTATE, message) of a refused login.
async fn refused(
    addr: std::net::SocketAddr,
    user: &str,
    password: &str,
    db: &str,
) -> (String, String) {
    let dsn = format!(
        "host={} port={} user={user} password={password} dbname={db}",
        addr.ip(),
        addr.port()
    );
    let err = try_connect(&dsn).await.expect_err("refused");
    let db_err = err
        .as_db_error()
        .unwrap_or_else(|| panic!("no server error: {err}"));
    (
        db_err.code().code().to_string(),
        db_err.message().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_made_after_start_logs_in_with_scram_and_no_password_in_pgmux() {
    let db = fresh_database("auth_query_scram").await;
    lookup_setup(&db).await;
    let app = start_pgmux(|c| with_auth_query(c, &db)).await;
    let admin = cluster().admin().await;
    admin
        .batch_execute(
            "SET password_encryption = 'scram-sha-256'; \
             DROP ROLE IF EXISTS aq_late; CREATE ROLE aq_late LOGIN PASSWORD 'late-secret'; \
             DROP ROLE IF EXISTS aq_old; \
             CREATE ROLE aq_old LOGIN PASSWORD 'old-secret' VALID UNTIL '2001-01-01'; \
             DROP ROLE IF EXISTS aq_md5; SET password_encryption = 'md5'; \
             CREATE ROLE aq_md5 LOGIN PASSWORD 'md5-late-secret';",
        )
        .await
        .unwrap();
    let stored: String = admin
        .query_one(
            "select rolpassword from pg_authid where rolname = 'aq_late'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(stored.starts_with("SCRAM-SHA-256$"), "{stored}");

    let dsn = |user: &str, password: &str| {
        format!(
            "host={} port={} user={user} password={password} dbname={db}",
            app.addr.ip(),
            app.addr.port()
        )
    };
    let late = try_connect(&dsn("aq_late", "late-secret")).await.unwrap();
    assert_eq!(scalar_text(&late, "select current_user").await, "aq_late");
    // Its server connection is PostgreSQL's own login as aq_late, made
    // with the keys its client's proof yielded.
    let servers: i64 = admin
        .query_one(
            "select count(*) from pg_stat_activity where usename = 'aq_late' and datname = $1",
            &[&db],
        )
        .await
        .unwrap()
        .get(0);
    assert!(servers >= 1);
    // A second client reuses what was looked up, and its own proof.
    let again = try_connect(&dsn("aq_late", "late-secret")).await.unwrap();
    assert_eq!(scalar_i32(&again, "select 1").await, 1);
    // An MD5-stored role: MD5 both ways, from the stored hash.
    let md5 = try_connect(&dsn("aq_md5", "md5-late-secret"))
        .await
        .unwrap();
    assert_eq!(scalar_text(&md5, "select current_user").await, "aq_md5");

    // Wrong password, unknown role, expired role: one answer.
    for (user, password) in [
        ("aq_late", "guess"),
        ("aq_nobody", "late-secret"),
        ("aq_old", "old-secret"),
    ] {
        let (code, message) = refused(app.addr, user, password, &db).await;
        assert_eq!(code, "28P01", "{user}: {message}");
        assert_eq!(
            message,
            format!("password authentication failed for user \"{user}\""),
            "{user}"
        );
    }
    // The password changed: the cached verifier fails once, is looked up
    // again, and the new password works.
    admin
        .batch_execute(
            "SET password_encryption = 'scram-sha-256'; ALTER ROLE aq_late PASSWORD 'changed-secret'",
        )
        .await
        .unwrap();
    let _ = try_connect(&dsn("aq_late", "changed-secret")).await;
    let changed = try_connect(&dsn("aq_late", "changed-secret"))
        .await
        .unwrap();
    assert_eq!(scalar_i32(&changed, "select 2").await, 2);
    assert!(
        !app.pools.config().auth_query.contains("aq_"),
        "the name is a parameter, never spliced into the query"
    );
}

/// The salt a SCRAM exchange shows for `user` (the server-first message).
async fn salt_shown(addr: std::net::SocketAddr, user: &str, db: &str) -> String {
    let mut c = Raw::connect(addr).await;
    c.send(&raw::startup_packet(&[("user", user), ("database", db)]))
        .await;
    let request = c.next().await.unwrap();
    assert_eq!(&request.body[..4], &[0, 0, 0, 10], "AuthenticationSASL");
    let first = b"n,,n=,r=clientnonce";
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&(first.len() as i32).to_be_bytes());
    body.extend_from_slice(first);
    c.send(&raw::message(b'p', &body)).await;
    let cont = c.next().await.unwrap();
    assert_eq!(
        &cont.body[..4],
        &[0, 0, 0, 11],
        "AuthenticationSASLContinue"
    );
    let text = String::from_utf8_lossy(&cont.body[4..]).into_owned();
    text.split(',')
        .find_map(|a| a.strip_prefix("s="))
        .unwrap()
        .to_string()
}

/// An unknown user's exchange is the same every time (its salt is a
/// function of its name, as a real user's is fixed), and differs between
/// names: asking twice tells a stranger nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_see_a_salt_of_their_own_that_does_not_change() {
    let db = fresh_database("auth_query_decoy").await;
    let app = start_pgmux(|_| {}).await;
    let ghost = salt_shown(app.addr, "ghost", &db).await;
    assert_eq!(salt_shown(app.addr, "ghost", &db).await, ghost);
    assert_ne!(salt_shown(app.addr, "another_ghost", &db).await, ghost);
    let real = salt_shown(app.addr, APP_USER, &db).await;
    assert_eq!(salt_shown(app.addr, APP_USER, &db).await, real);
}
