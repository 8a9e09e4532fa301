//! The Prometheus side, with the real tools: promtool lints /metrics, a
//! real Prometheus scrapes it, and Debian's prometheus-pgbouncer-exporter
//! reads the admin console. Each tool comes from Debian's packages, which
//! tests/run.sh installs.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use pgmux_tests::*;

/// A Debian-packaged tool, or a clear failure naming the package.
fn tool(name: &str, package: &str) -> PathBuf {
    let path = PathBuf::from("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: apt-get install {package} (tests/run.sh does this)",
        path.display()
    );
    path
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pgmux-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_addr() -> String {
    format!("127.0.0.1:{}", pgmux_tests::process::free_port())
}

/// Some traffic, an error and a failed login, so every kind of series has
/// samples.
async fn traffic(app: &pgmux::app::App, db: &str) {
    let c = connect(app.addr, db).await;
    for _ in 0..5 {
        c.simple_query("select 1").await.unwrap();
    }
    assert!(c.simple_query("select * from no_such_table").await.is_err());
    let wrong = format!(
        "host={} port={} user={APP_USER} password=wrong dbname={db}",
        app.addr.ip(),
        app.addr.port()
    );
    assert!(try_connect(&wrong).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_finds_nothing_to_fix_in_metrics() {
    let promtool = tool("promtool", "prometheus");
    let db = fresh_database("prom_lint").await;
    let app = start_pgmux(|_| {}).await;
    traffic(&app, &db).await;
    let (_, text) = http_get(app.metrics_addr.unwrap(), "/metrics").await;
    for name in [
        "pgmux_errors_total",
        "pgmux_client_login_failures_total",
        "pgmux_transaction_duration_seconds_bucket",
        "pgmux_query_duration_seconds_bucket",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    let mut child = tokio::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check metrics:\n{report}");
    assert!(report.trim().is_empty(), "promtool has remarks:\n{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_pgmux_and_answers_queries() {
    let prometheus = tool("prometheus", "prometheus");
    let db = fresh_database("prom_scrape").await;
    let app = start_pgmux(|_| {}).await;
    traffic(&app, &db).await;
    let dir = scratch("prometheus");
    let listen = free_addr();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: pgmux\n    static_configs:\n      - targets: ['{}']\n",
            app.metrics_addr.unwrap()
        ),
    )
    .unwrap();
    let _prometheus = tokio::process::Command::new(prometheus)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={listen}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let query = format!("/api/v1/query?query=pgmux_queries_total%7Bdatabase%3D%22{db}%22%7D");
    // Prometheus applies its targets on a 5 s tick; then it scrapes each second.
    let answer = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let scraped = eventually(Duration::from_secs(60), || {
        let query = query.clone();
        let answer = answer.clone();
        async move {
            let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                return false;
            };
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let request = format!("GET {query} HTTP/1.0\r\nHost: prometheus\r\n\r\n");
            if s.write_all(request.as_bytes()).await.is_err() {
                return false;
            }
            let mut out = String::new();
            let _ = s.read_to_string(&mut out).await;
            let found = out.contains("\"result\":[{");
            *answer.lock().unwrap() = out;
            found
        }
    })
    .await;
    let answer = answer.lock().unwrap().clone();
    assert!(scraped, "Prometheus never had the series: {answer}");
    assert!(answer.contains("\"job\":\"pgmux\""), "{answer}");
    assert!(
        answer.contains(&format!("\"database\":\"{db}\"")),
        "{answer}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_pgbouncer_exporter_reads_the_console() {
    let exporter = tool(
        "prometheus-pgbouncer-exporter",
        "prometheus-pgbouncer-exporter",
    );
    let db = fresh_database("prom_exporter").await;
    let app = start_pgmux(with_console_users).await;
    traffic(&app, &db).await;
    let client = connect(app.addr, &db).await;
    client.simple_query("select 1").await.unwrap();
    let dir = scratch("exporter");
    let listen: std::net::SocketAddr = free_addr().parse().unwrap();
    let mut child = tokio::process::Command::new(exporter)
        .arg("--host")
        .arg(listen.ip().to_string())
        .arg("--port")
        .arg(listen.port().to_string())
        .arg("--pgbouncer-host")
        .arg(app.addr.ip().to_string())
        .arg("--pgbouncer-port")
        .arg(app.addr.port().to_string())
        .arg("--pgbouncer-user")
        .arg(CONSOLE_STATS)
        .env("PGPASSWORD", CONSOLE_STATS_PASSWORD)
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The exporter queries the console once at start; it is up when its
    // HTTP port answers (or it died, which the stderr below explains).
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let up = eventually(Duration::from_secs(60), || {
        let seen = seen.clone();
        async move {
            if tokio::net::TcpStream::connect(listen).await.is_err() {
                return false;
            }
            let (status, text) = http_get(listen, "/metrics").await;
            *seen.lock().unwrap() = text;
            status.contains("200")
        }
    })
    .await;
    if !up {
        let _ = child.start_kill();
        let out = child.wait_with_output().await.unwrap();
        panic!(
            "the exporter never served: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let body = seen.lock().unwrap().clone();
    let (_, ours) = http_get(app.metrics_addr.unwrap(), "/metrics").await;
    let labels = [("database", db.as_str())];
    // SHOW STATS, SHOW POOLS, SHOW DATABASES and SHOW LISTS all came through,
    // with pgmux's own numbers.
    assert_eq!(
        metric_value(&body, "pgbouncer_requests_total", &labels),
        metric_value(&ours, "pgmux_queries_total", &labels),
        "{body}"
    );
    assert_eq!(
        metric_value(&body, "pgbouncer_sent_bytes_total", &labels),
        metric_value(&ours, "pgmux_sent_bytes_total", &labels)
    );
    assert_eq!(
        metric_value(&body, "pgbouncer_active_clients", &labels),
        metric_value(&ours, "pgmux_clients_active", &labels)
            + metric_value(&ours, "pgmux_clients_idle", &labels),
        "cl_active counts idle clients, as PgBouncer's does"
    );
    assert_eq!(metric_value(&body, "pgbouncer_pool_size", &labels), 20.0);
    assert!(metric_value(&body, "pgbouncer_pools", &[]) >= 1.0);
    let _ = child.start_kill();
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("Traceback"),
        "the exporter failed:\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
