use super::*;
use std::io::Write;

fn env(pairs: &[(&str, &str)]) -> Env {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn repo_proxy_toml() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proxy.toml")
}

#[test]
fn nothing_set_gives_the_documented_defaults() {
    let cfg = load(None, &Env::new()).unwrap();
    assert_eq!(cfg.listen_addr, "127.0.0.1:6432");
    assert_eq!(cfg.listen_backlog, 1024);
    assert_eq!(
        (cfg.server_host.as_str(), cfg.server_port),
        ("127.0.0.1", 5432)
    );
    assert_eq!(cfg.pool_mode, PoolMode::Transaction);
    assert_eq!(cfg.auth_type, AuthType::ScramSha256);
    assert_eq!(
        (cfg.server_lifetime, cfg.server_connect_timeout),
        (300.0, 10.0)
    );
    assert_eq!(cfg.profile, Profile::Development);
    assert_eq!(
        cfg.server_check_query(),
        Some(""),
        "<empty>: an empty query"
    );
    assert_eq!(cfg.max_client_prepared_bytes, 4 << 20);
}

#[test]
fn server_check_query_spellings() {
    let off = load(None, &env(&[("PGMUX_SERVER_CHECK_QUERY", "")])).unwrap();
    assert_eq!(off.server_check_query(), None);
    let sql = load(None, &env(&[("PGMUX_SERVER_CHECK_QUERY", "select 1")])).unwrap();
    assert_eq!(sql.server_check_query(), Some("select 1"));
}

/// deploy/pgmux-tls.toml, the production example with TLS to the
/// database, loads and says what its comments say.
#[test]
fn the_deploy_tls_example_loads() {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/pgmux-tls.toml");
    let cfg = load(Some(&file), &env(&[("DJANGO_ENV", "production")])).unwrap();
    assert_eq!(cfg.server_tls_sslmode, SslMode::VerifyFull);
    assert_eq!(cfg.client_tls_sslmode, SslMode::Require);
    assert_eq!(cfg.auth_user, "pgmux_auth");
    assert_eq!(cfg.server_lifetime, 600.0);
}

#[test]
fn production_profile_holds_even_with_the_repo_proxy_toml() {
    let file = repo_proxy_toml();
    for f in [None, Some(file.as_path())] {
        let cfg = load(f, &env(&[("DJANGO_ENV", "production")])).unwrap();
        assert_eq!(
            (cfg.server_lifetime, cfg.server_connect_timeout),
            (600.0, 30.0),
            "file {f:?}"
        );
        assert_eq!(cfg.profile, Profile::Production);
        let cfg = load(f, &env(&[("DJANGO_ENV", "development")])).unwrap();
        assert_eq!(
            (cfg.server_lifetime, cfg.server_connect_timeout),
            (300.0, 10.0),
            "file {f:?}"
        );
    }
}

#[test]
fn contract_variables_override_profile_and_file() {
    let cfg = load(
        Some(&repo_proxy_toml()),
        &env(&[
            ("DJANGO_ENV", "production"),
            ("DB_CONN_MAX_AGE", "42"),
            ("DB_CONNECT_TIMEOUT", "7"),
            ("DB_HOST", "db.internal"),
            ("DB_PORT", "5433"),
            ("DB_NAME", "booktrader"),
            ("DB_USER", "bt"),
            ("DB_PASSWORD", "007"),
        ]),
    )
    .unwrap();
    assert_eq!(
        (cfg.server_lifetime, cfg.server_connect_timeout),
        (42.0, 7.0)
    );
    assert_eq!(
        (cfg.server_host.as_str(), cfg.server_port),
        ("db.internal", 5433)
    );
    assert!(cfg.databases.contains_key("booktrader"));
    assert_eq!(
        cfg.users["bt"].password.as_deref(),
        Some("007"),
        "a password must never be parsed as a number"
    );
}

#[test]
fn pgmux_variables_win_over_everything() {
    let cfg = load(
        None,
        &env(&[
            ("DB_CONN_MAX_AGE", "42"),
            ("PGMUX_SERVER_LIFETIME", "9"),
            ("PGMUX_LISTEN_ADDR", "127.0.0.1:7432"),
            ("PGMUX_POOL_SIZE", "5"),
            ("PGMUX_ADMIN_USERS", "ops,root"),
            ("PGMUX_CONFIG", "/ignored"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.server_lifetime, 9.0);
    assert_eq!(cfg.listen_addr, "127.0.0.1:7432");
    assert_eq!(cfg.pool_size, 5);
    assert_eq!(cfg.admin_users, vec!["ops".to_string(), "root".to_string()]);
}

#[test]
fn bad_values_name_the_variable_or_key() {
    let err = |pairs: &[(&str, &str)]| load(None, &env(pairs)).unwrap_err().to_string();
    let e = err(&[("DB_CONN_MAX_AGE", "abc")]);
    assert!(
        e.starts_with("DB_CONN_MAX_AGE: expected a whole number of seconds"),
        "{e}"
    );
    let e = err(&[("DB_PORT", "70000")]);
    assert!(e.starts_with("DB_PORT: expected a TCP port"), "{e}");
    let e = err(&[("PGMUX_POOL_SIZE", "lots")]);
    assert!(e.starts_with("PGMUX_POOL_SIZE:"), "{e}");
    let e = err(&[("PGMUX_NO_SUCH_THING", "1")]);
    assert!(e.contains("PGMUX_NO_SUCH_THING"), "{e}");
    let e = err(&[("PGMUX_LISTEN_ADDR", "nowhere")]);
    assert!(e.starts_with("listen_addr: expected host:port"), "{e}");
}

#[test]
fn unknown_file_key_and_bad_port_are_named() {
    let mut f = tempfile_in_target("unknown.toml");
    writeln!(f.1, "pool_sise = 3").unwrap();
    let e = load(Some(&f.0), &Env::new()).unwrap_err().to_string();
    assert!(e.contains("unknown key `pool_sise`"), "{e}");
    let mut f = tempfile_in_target("port.toml");
    writeln!(f.1, "server_port = 99999").unwrap();
    let e = load(Some(&f.0), &Env::new()).unwrap_err().to_string();
    assert!(e.contains("server_port"), "{e}");
}

#[test]
fn a_databases_client_certificate_needs_its_key() {
    let mut f = tempfile_in_target("db_cert.toml");
    writeln!(
        f.1,
        "[databases.ledger]\nserver_tls_cert_file = \"/etc/pgmux/ledger.pem\""
    )
    .unwrap();
    let e = load(Some(&f.0), &Env::new()).unwrap_err().to_string();
    assert!(
        e.contains("databases.ledger") && e.contains("server_tls_key_file"),
        "{e}"
    );
    let mut f = tempfile_in_target("db_cert_pair.toml");
    writeln!(
        f.1,
        "[databases.ledger]\nserver_tls_cert_file = \"c.pem\"\nserver_tls_key_file = \"c.key\""
    )
    .unwrap();
    let cfg = load(Some(&f.0), &Env::new()).unwrap();
    let identity = cfg.target("ledger").unwrap().tls_identity;
    assert_eq!(identity, Some(("c.pem".to_string(), "c.key".to_string())));
    assert_eq!(cfg.target("other").and_then(|t| t.tls_identity), None);
}

fn tempfile_in_target(name: &str) -> (std::path::PathBuf, std::fs::File) {
    let dir = std::env::temp_dir().join(format!("pgmux-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let f = std::fs::File::create(&path).unwrap();
    (path, f)
}

#[test]
fn userlist_lines_parse_like_pgbouncer() {
    let parsed =
        load::parse_userlist("; comment\n\"alice\" \"md5abc\"\n\n\"bo\"\"b\" \"se cret\" extra\n")
            .unwrap();
    assert_eq!(
        parsed,
        vec![
            ("alice".into(), "md5abc".into()),
            ("bo\"b".into(), "se cret".into())
        ]
    );
    assert_eq!(load::parse_userlist("alice secret"), Err(1));
}

#[test]
fn wildcard_and_mapped_targets() {
    let mut cfg = load(None, &Env::new()).unwrap();
    cfg.databases.insert(
        "app".into(),
        DatabaseConfig {
            host: Some("h".into()),
            port: Some(1),
            dbname: Some("real".into()),
            pool_size: Some(3),
            idle_transaction_timeout: None,
            query_timeout: None,
            transaction_timeout: None,
            server_tls_sslmode: Some(SslMode::VerifyFull),
            server_tls_ca_file: None,
            server_tls_cert_file: None,
            server_tls_key_file: None,
            target_session_attrs: None,
            load_balance_hosts: None,
        },
    );
    assert_eq!(
        cfg.target("app").unwrap(),
        Target {
            hosts: vec![Endpoint {
                host: "h".into(),
                port: 1
            }],
            session_attrs: SessionAttrs::Any,
            load_balance: LoadBalance::Disable,
            dbname: "real".into(),
            tls_mode: SslMode::VerifyFull,
            tls_ca_file: None,
            tls_identity: None,
            tls: None,
            book: None,
        }
    );
    // A list, each port defaulting to the database's own.
    cfg.databases.get_mut("app").unwrap().host = Some("h1,h2:7".into());
    let hosts = cfg.target("app").unwrap().hosts;
    assert_eq!(
        hosts[0],
        Endpoint {
            host: "h1".into(),
            port: 1
        }
    );
    assert_eq!(
        hosts[1],
        Endpoint {
            host: "h2".into(),
            port: 7
        }
    );
    // Other databases follow the general setting (libpq's default).
    assert_eq!(cfg.target("test_app").unwrap().tls_mode, SslMode::Prefer);
    assert_eq!(cfg.target("test_app").unwrap().dbname, "test_app");
    assert_eq!(cfg.pool_size_for("app"), 3);
    cfg.wildcard_databases = false;
    assert_eq!(cfg.target("test_app"), None);
}

#[test]
fn idle_transaction_timeout_is_general_and_per_database() {
    let mut f = tempfile_in_target("idle_tx.toml");
    writeln!(
        f.1,
        "idle_transaction_timeout = 30\n[databases.reports]\nidle_transaction_timeout = 0\n[databases.app]\npool_size = 5"
    )
    .unwrap();
    let cfg = load(Some(&f.0), &Env::new()).unwrap();
    cfg.validate().unwrap();
    assert_eq!(
        cfg.timeout_for(PoolTimeout::IdleTransaction, "app", "someone"),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        cfg.timeout_for(PoolTimeout::IdleTransaction, "reports", "someone"),
        None,
        "0: off"
    );
    assert_eq!(
        load(None, &Env::new()).unwrap().timeout_for(
            PoolTimeout::IdleTransaction,
            "app",
            "someone"
        ),
        None,
        "off by default"
    );

    let mut f = tempfile_in_target("idle_tx_bad.toml");
    writeln!(f.1, "[databases.app]\nidle_transaction_timeout = -1").unwrap();
    let e = load(Some(&f.0), &Env::new())
        .and_then(|c| c.validate().map(|()| c))
        .expect_err("a negative timeout is refused")
        .to_string();
    assert!(e.contains("databases.app.idle_transaction_timeout"), "{e}");
}

#[test]
fn tcp_keepalive_defaults_and_variables() {
    let cfg = load(None, &Env::new()).unwrap();
    assert_eq!(
        cfg.tcp_options(),
        crate::io::TcpOptions {
            keepalive: true,
            idle: 60,
            interval: 10,
            count: 0,
            user_timeout_ms: 0,
        }
    );
    let cfg = load(
        None,
        &env(&[
            ("PGMUX_TCP_KEEPALIVE", "false"),
            ("PGMUX_TCP_USER_TIMEOUT", "5000"),
        ]),
    )
    .unwrap();
    assert!(!cfg.tcp_options().keepalive);
    assert_eq!(cfg.tcp_options().user_timeout_ms, 5000);
}

#[test]
fn query_timeout_is_general_and_per_database_and_cancel_wait_is_positive() {
    let mut f = tempfile_in_target("query_timeout.toml");
    writeln!(
        f.1,
        "query_timeout = 120\ncancel_wait_timeout = 3\ntransaction_timeout = 300\n[databases.reports]\nquery_timeout = 900\ntransaction_timeout = 0\n[databases.app]\npool_size = 5"
    )
    .unwrap();
    let cfg = load(Some(&f.0), &Env::new()).unwrap();
    cfg.validate().unwrap();
    assert_eq!(
        cfg.timeout_for(PoolTimeout::Query, "app", "someone"),
        Some(Duration::from_secs(120))
    );
    assert_eq!(
        cfg.timeout_for(PoolTimeout::Query, "reports", "someone"),
        Some(Duration::from_secs(900))
    );
    assert_eq!(cfg.cancel_wait_timeout(), Duration::from_secs(3));
    assert_eq!(
        cfg.timeout_for(PoolTimeout::Transaction, "app", "someone"),
        Some(Duration::from_secs(300))
    );
    assert_eq!(
        cfg.timeout_for(PoolTimeout::Transaction, "reports", "someone"),
        None,
        "0: off"
    );
    let defaults = load(None, &Env::new()).unwrap();
    assert_eq!(
        defaults.timeout_for(PoolTimeout::Query, "app", "someone"),
        None,
        "off by default"
    );
    assert_eq!(defaults.cancel_wait_timeout(), Duration::from_secs(10));

    let mut f = tempfile_in_target("query_timeout_bad.toml");
    writeln!(f.1, "cancel_wait_timeout = 0").unwrap();
    let e = load(Some(&f.0), &Env::new())
        .and_then(|c| c.validate().map(|()| c))
        .expect_err("a cancel must be given time")
        .to_string();
    assert!(e.contains("cancel_wait_timeout"), "{e}");
    let mut f = tempfile_in_target("query_timeout_bad_db.toml");
    writeln!(f.1, "[databases.app]\nquery_timeout = -1").unwrap();
    let e = load(Some(&f.0), &Env::new())
        .and_then(|c| c.validate().map(|()| c))
        .expect_err("a negative timeout is refused")
        .to_string();
    assert!(e.contains("databases.app.query_timeout"), "{e}");
}

#[test]
fn wildcard_pools_are_bounded_by_default() {
    let cfg = load(None, &Env::new()).unwrap();
    assert_eq!(cfg.autodb_idle_timeout(), Some(Duration::from_secs(3600)));
    assert_eq!(cfg.max_pools, 1000);
    let cfg = load(
        None,
        &env(&[
            ("PGMUX_AUTODB_IDLE_TIMEOUT", "0"),
            ("PGMUX_MAX_POOLS", "50"),
        ]),
    )
    .unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg.autodb_idle_timeout(), None, "0: never");
    assert_eq!(cfg.max_pools, 50);
}

#[test]
fn a_users_timeouts_win_over_its_databases_and_the_general_ones() {
    let mut f = tempfile_in_target("user_timeouts.toml");
    writeln!(
        f.1,
        "query_timeout = 60\n[databases.app]\nquery_timeout = 30\n[users.reporter]\nquery_timeout = 600\ntransaction_timeout = 900\n[users.web]\npassword = \"pw\"\nidle_transaction_timeout = 5"
    )
    .unwrap();
    let cfg = load(Some(&f.0), &Env::new()).unwrap();
    cfg.validate().unwrap();
    let secs = |s| Some(Duration::from_secs(s));
    assert_eq!(
        cfg.timeout_for(PoolTimeout::Query, "app", "reporter"),
        secs(600),
        "the user's"
    );
    assert_eq!(
        cfg.timeout_for(PoolTimeout::Query, "app", "web"),
        secs(30),
        "the database's"
    );
    assert_eq!(
        cfg.timeout_for(PoolTimeout::Query, "other", "web"),
        secs(60),
        "the general one"
    );
    assert_eq!(
        cfg.timeout_for(PoolTimeout::Transaction, "app", "reporter"),
        secs(900)
    );
    assert_eq!(
        cfg.timeout_for(PoolTimeout::IdleTransaction, "app", "web"),
        secs(5)
    );
    let secrets = cfg.user_secrets().unwrap();
    assert!(secrets.contains_key("web"));
    assert!(
        !secrets.contains_key("reporter"),
        "no password: settings only"
    );

    // The contract's DB_PASSWORD keeps the user's own settings.
    let cfg = load(
        Some(&f.0),
        &env(&[("DB_USER", "reporter"), ("DB_PASSWORD", "secret")]),
    )
    .unwrap();
    assert_eq!(cfg.users["reporter"].password.as_deref(), Some("secret"));
    assert_eq!(
        cfg.timeout_for(PoolTimeout::Query, "app", "reporter"),
        secs(600)
    );

    let mut f = tempfile_in_target("user_timeouts_bad.toml");
    writeln!(f.1, "[users.web]\nquery_timeout = -2").unwrap();
    let e = load(Some(&f.0), &Env::new())
        .and_then(|c| c.validate().map(|()| c))
        .expect_err("a negative timeout is refused")
        .to_string();
    assert!(e.contains("users.web.query_timeout"), "{e}");
}
