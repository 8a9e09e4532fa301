//! Test harness: one real PostgreSQL per test binary, started from the
//! machine's own server binaries into a temporary directory on a free
//! loopback port, and pgmux started in-process on port 0 in front of it.

#![allow(clippy::unwrap_used)]

pub mod cluster;

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
    .collect();
    config::load(None, &env).unwrap()
}

/// Start pgmux with the test config, adjusted by `tweak`.
pub async fn start_pgmux(tweak: impl FnOnce(&mut Config)) -> App {
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
