//! Real Python clients through pgmux: psycopg 3, asyncpg and Django, each
//! family run by pytest (tests/python) against a fresh database behind an
//! in-process pgmux in transaction mode with a small pool. The venv comes from
//! tests/python/setup.sh; without it these tests fail and say so.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use pgmux::config::{Config, PoolMode};
use pgmux_tests::*;

/// Server connections per pool: fewer than the clients some tests open, so
/// servers really are shared between them.
const POOL_SIZE: u32 = 4;

/// A pytest run still going after this is taken to hang and is killed.
const DEADLINE: Duration = Duration::from_secs(300);

/// Libpq and Django variables of the calling shell that would steer the
/// clients somewhere else.
const INHERITED_NOISE: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGCONNECT_TIMEOUT",
    "PGTZ",
    "PGDATESTYLE",
    "PGCLIENTENCODING",
    "DJANGO_SETTINGS_MODULE",
    "DJANGO_ENV",
    "DB_NAME",
    "DB_USER",
    "DB_PASSWORD",
    "DB_HOST",
    "DB_PORT",
    "DB_CONN_MAX_AGE",
    "DB_CONNECT_TIMEOUT",
    "PYTHONPATH",
    "PYTEST_ADDOPTS",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives one level below the repository root")
        .to_path_buf()
}

/// The venv's interpreter, or a failure telling how to make it.
fn venv_python(root: &Path) -> PathBuf {
    let python = root.join("target/pyenv/bin/python");
    assert!(
        python.exists(),
        "the Python venv of the end-to-end suite is missing ({} not found): \
         run tests/python/setup.sh first (tests/run.sh does)",
        python.display()
    );
    python
}

/// Run pytest on `target` (a file or directory under tests/python) against
/// a fresh database `db` behind a fresh pgmux in transaction mode (adjusted
/// by `tweak`); fail with pytest's output.
async fn pytest(target: &str, db: &str, tweak: impl FnOnce(&mut Config)) {
    pytest_with(target, db, &[], tweak).await
}

/// [`pytest`], with more variables for the tests.
async fn pytest_with(
    target: &str,
    db: &str,
    env: &[(&str, &str)],
    tweak: impl FnOnce(&mut Config),
) {
    let root = repo_root();
    let python = venv_python(&root);
    let db = fresh_database(db).await;
    let app = start_pgmux(|cfg| {
        cfg.pool_mode = PoolMode::Transaction;
        cfg.pool_size = POOL_SIZE;
        tweak(cfg);
    })
    .await;

    let mode = match app.pools.config().pool_mode {
        PoolMode::Transaction => "transaction",
        PoolMode::Session => "session",
    };
    let log_path =
        std::env::temp_dir().join(format!("pgmux-pytest-{db}-{}.log", std::process::id()));
    let log = File::create(&log_path).unwrap();
    let mut cmd = Command::new(&python);
    cmd.current_dir(&root)
        .args(["-m", "pytest", target, "-q", "-rfEsxX"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for var in INHERITED_NOISE {
        cmd.env_remove(var);
    }
    cmd.env("PGMUX_TEST_HOST", app.addr.ip().to_string())
        .env("PGMUX_TEST_PORT", app.addr.port().to_string())
        .env("PGMUX_TEST_DB", &db)
        .env("PGMUX_TEST_USER", APP_USER)
        .env("PGMUX_TEST_PASSWORD", APP_PASSWORD)
        .env("PGMUX_TEST_POOL_SIZE", POOL_SIZE.to_string())
        .env("PGMUX_TEST_POOL_MODE", mode)
        .envs(env.iter().copied())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    // Its own process group, so a hung run is killed with everything it
    // started (Django's manage.py children).
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);

    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
    // Waiting blocks, so it gets a thread of its own: pgmux keeps serving on
    // the runtime meanwhile.
    let (status, timed_out) = tokio::task::spawn_blocking(move || wait_or_kill(&mut child))
        .await
        .unwrap();
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_file(&log_path);
    println!(
        "---- pytest {target} ({:.1}s) ----\n{output}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        !timed_out,
        "pytest {target} did not finish within {DEADLINE:?} and was killed (a client hanging \
         on pgmux?); its output:\n{output}"
    );
    assert!(
        status.success(),
        "pytest {target} failed ({status}); its output:\n{output}"
    );

    // The clients are gone: pgmux still serves this database, and holds no
    // more server connections to it than the pool allows.
    let c = connect(app.addr, &db).await;
    let row = c.query_one("select 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    let admin = cluster().admin().await;
    let servers: i64 = admin
        .query_one(
            "select count(*) from pg_stat_activity where datname = $1 and usename = $2",
            &[&db, &APP_USER],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        servers <= i64::from(POOL_SIZE),
        "{servers} server connections to {db}, pool_size is {POOL_SIZE}"
    );
}

/// Wait for the child; past [`DEADLINE`] kill its process group.
fn wait_or_kill(child: &mut std::process::Child) -> (ExitStatus, bool) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, false);
        }
        if started.elapsed() > DEADLINE {
            let _ = Command::new("kill")
                .args(["-KILL", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            return (child.wait().unwrap(), true);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_through_pgmux() {
    pytest("tests/python/test_psycopg.py", "python_psycopg", |_| {}).await;
}

/// psycopg over TLS (issue 11). `prefer`, so the plaintext check after
/// the run still gets in (refusing plaintext is tls.rs's to show).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_over_tls() {
    let certs = &cluster().certs;
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let (ca, other_ca) = (path(&certs.ca), path(&certs.other_ca));
    let (cert, key) = (path(&certs.server.cert), path(&certs.server.key));
    let env = [
        ("PGMUX_TEST_TLS_CA", ca.as_str()),
        ("PGMUX_TEST_TLS_OTHER_CA", other_ca.as_str()),
    ];
    pytest_with("tests/python/test_tls.py", "python_tls", &env, |c| {
        c.client_tls_sslmode = pgmux::config::SslMode::Prefer;
        c.client_tls_cert_file = cert;
        c.client_tls_key_file = key;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_through_pgmux() {
    pytest("tests/python/test_asyncpg.py", "python_asyncpg", |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_edges_in_transaction_mode() {
    pytest(
        "tests/python/test_protocol_edges.py",
        "python_edges_tx",
        |_| {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_edges_in_session_mode() {
    pytest(
        "tests/python/test_protocol_edges.py",
        "python_edges_session",
        |c| c.pool_mode = PoolMode::Session,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_through_pgmux() {
    // Django's test runner ends with a plain DROP DATABASE of test_<name>,
    // which pgmux lets through by closing its idle servers of that database
    // first (the default, long server_idle_timeout is kept on purpose).
    pytest("tests/python/test_django.py", "python_django", |_| {}).await;
}
