//! Test harness: one real PostgreSQL per test binary, started from the
//! machine's own server binaries into a temporary directory on a free
//! loopback port, and pgmux started in-process on port 0 in front of it.

#![allow(clippy::unwrap_used)]

pub mod cluster;
pub mod faults;
pub mod process;
pub mod raw;
pub mod relay;
pub mod replication;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;

pub use cluster::{cluster, Cluster};
use pgmux::app::App;
use pgmux::config::{self, Config};

/// The application role every test logs in as (SCRAM at the server).
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "app-secret";

/// A pgmux configuration aimed at the test cluster: ports chosen by the OS,
/// the app user known, everything else at its default.
pub fn test_config() -> Config {
    let c = cluster();
    let env: BTreeMap<String, String> = [
        ("PGMUX_LISTEN_ADDR", "127.0.0.1:0".to_string()),
        ("PGMUX_METRICS_ADDR", "127.0.0.1:0".to_string()),
        ("DB_HOST", "127.0.0.1".to_string()),
        ("DB_PORT", c.port.to_string()),
        ("DB_USER", APP_USER.to_string()),
        ("DB_PASSWORD", APP_PASSWORD.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    // PGMUX_IO_BACKEND picks the I/O backend the suite runs on; tests/run.sh
    // runs it once on each.
    .chain(
        std::env::var("PGMUX_IO_BACKEND")
            .ok()
            .map(|v| ("PGMUX_IO_BACKEND".to_string(), v)),
    )
    .collect();
    config::load(None, &env).unwrap()
}

/// Start pgmux with the test config, adjusted by `tweak`.
pub async fn start_pgmux(tweak: impl FnOnce(&mut Config)) -> App {
    // PGMUX_TEST_LOG=debug shows pgmux's own log while a test runs.
    if let Ok(filter) = std::env::var("PGMUX_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let mut cfg = test_config();
    tweak(&mut cfg);
    App::start(cfg).await.unwrap()
}

/// A fresh database owned by the app user; its name doubles as a pool name
/// no other test shares.
pub async fn fresh_database(name: &str) -> String {
    let admin = cluster().admin().await;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\" OWNER {APP_USER}"))
        .await
        .unwrap();
    name.to_string()
}

/// A libpq-style connection string through pgmux.
pub fn dsn(addr: SocketAddr, database: &str) -> String {
    format!(
        "host={} port={} user={APP_USER} password={APP_PASSWORD} dbname={database}",
        addr.ip(),
        addr.port()
    )
}

/// Connect with tokio-postgres and drive the connection in the background.
pub async fn connect(addr: SocketAddr, database: &str) -> tokio_postgres::Client {
    try_connect(&dsn(addr, database)).await.unwrap()
}

pub async fn try_connect(dsn: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// What a failed call was told: the server's SQLSTATE and message, or
/// the client's own error.
pub fn told(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// The SQLSTATE of a failed call, or a panic naming what succeeded instead.
pub fn sqlstate<T: std::fmt::Debug>(r: Result<T, tokio_postgres::Error>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e
            .code()
            .map(|c| c.code().to_string())
            .unwrap_or_else(|| format!("no SQLSTATE: {e}")),
    }
}

/// GET a path from pgmux's HTTP endpoint; returns the status line and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// Sum the samples of a metric whose labels contain all of `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Scrape pgmux's /metrics at `metrics` and sum one metric (see
/// [`metric_value`]).
pub async fn metric(metrics: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, text) = http_get(metrics, "/metrics").await;
    metric_value(&text, name, labels)
}

/// The PostgreSQL backend serving the client's next transaction.
pub async fn backend_pid(c: &tokio_postgres::Client) -> i32 {
    scalar_i32(c, "select pg_backend_pid()").await
}

/// Connect and also return the connection task, so a test can make the
/// client vanish abruptly (abort the task: the socket closes without a
/// Terminate message).
pub async fn connect_abortable(
    addr: SocketAddr,
    database: &str,
) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
    let (client, conn) = tokio_postgres::connect(&dsn(addr, database), tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (client, task)
}

/// Server processes pgmux holds open to `database`, seen by PostgreSQL.
pub async fn backends_of(database: &str) -> i64 {
    let admin = cluster().admin().await;
    let row = admin
        .query_one("select count(*) from pg_stat_activity where datname = $1 and backend_type = 'client backend'", &[&database])
        .await
        .unwrap();
    row.get(0)
}

/// Poll `check` every 50 ms until it holds or `limit` passes. For effects
/// of time itself (lifetimes, timeouts), which have no event to await.
pub async fn eventually<F, Fut>(limit: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

pub async fn scalar_i32(c: &tokio_postgres::Client, sql: &str) -> i32 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

pub async fn scalar_text(c: &tokio_postgres::Client, sql: &str) -> String {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// Console users the console tests add: an admin and a stats-only user.
pub const CONSOLE_ADMIN: &str = "ops";
pub const CONSOLE_ADMIN_PASSWORD: &str = "ops-secret";
pub const CONSOLE_STATS: &str = "watcher";
pub const CONSOLE_STATS_PASSWORD: &str = "watcher-secret";

/// Let the console users in (a `start_pgmux` tweak).
pub fn with_console_users(c: &mut Config) {
    for (name, password) in [
        (CONSOLE_ADMIN, CONSOLE_ADMIN_PASSWORD),
        (CONSOLE_STATS, CONSOLE_STATS_PASSWORD),
    ] {
        c.users.insert(
            name.to_string(),
            config::UserConfig {
                password: Some(password.to_string()),
                ..Default::default()
            },
        );
    }
    c.admin_users = vec![CONSOLE_ADMIN.to_string()];
    c.stats_users = vec![CONSOLE_STATS.to_string()];
}

/// Connect to the admin console as `user`.
pub async fn console_as(
    addr: SocketAddr,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    try_connect(&format!(
        "host={} port={} user={user} password={password} dbname=pgbouncer",
        addr.ip(),
        addr.port()
    ))
    .await
}

/// The admin console, as its admin.
pub async fn console(addr: SocketAddr) -> tokio_postgres::Client {
    console_as(addr, CONSOLE_ADMIN, CONSOLE_ADMIN_PASSWORD)
        .await
        .unwrap()
}

/// A console (simple-protocol) result: column names and text rows.
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl Table {
    /// The rows whose `column` equals `value`.
    pub fn rows_where(&self, column: &str, value: &str) -> Vec<&Vec<Option<String>>> {
        let i = self.index(column);
        self.rows
            .iter()
            .filter(|r| r[i].as_deref() == Some(value))
            .collect()
    }

    pub fn index(&self, column: &str) -> usize {
        self.columns
            .iter()
            .position(|c| c == column)
            .unwrap_or_else(|| panic!("no column {column} in {:?}", self.columns))
    }

    /// `column` of `row`, as text ("" for NULL).
    pub fn get<'a>(&self, row: &'a [Option<String>], column: &str) -> &'a str {
        row[self.index(column)].as_deref().unwrap_or("")
    }

    /// The single row whose `key` column is `value`.
    pub fn row(&self, key: &str, value: &str) -> &Vec<Option<String>> {
        let rows = self.rows_where(key, value);
        assert_eq!(
            rows.len(),
            1,
            "one row with {key} = {value}: {:?}",
            self.rows
        );
        rows[0]
    }
}

/// Run a console command and collect its result set.
pub async fn show(
    c: &tokio_postgres::Client,
    command: &str,
) -> Result<Table, tokio_postgres::Error> {
    use tokio_postgres::SimpleQueryMessage as M;
    let mut table = Table {
        columns: Vec::new(),
        rows: Vec::new(),
    };
    for message in c.simple_query(command).await? {
        match message {
            M::RowDescription(columns) => {
                table.columns = columns.iter().map(|c| c.name().to_string()).collect();
            }
            M::Row(row) => table.rows.push(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => {}
        }
    }
    Ok(table)
}
