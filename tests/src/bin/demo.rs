//! pgmux's main job on an embedded default: a throwaway PostgreSQL from the
//! machine's own binaries, pgmux in front of it with the repo's proxy.toml,
//! a short pgbench through it, then the pool statistics.

use std::collections::BTreeMap;
use std::process::Command;

use pgmux::app::App;
use pgmux_tests::{cluster, fresh_database, http_get, metric_value, APP_PASSWORD, APP_USER};

const CLIENTS: &str = "50";
const POOL_SIZE: u32 = 10;

#[tokio::main]
async fn main() {
    println!("== starting a throwaway PostgreSQL");
    let pg = cluster();
    println!(
        "   PostgreSQL {} on 127.0.0.1:{}",
        pg.bindir.display(),
        pg.port
    );
    let db = fresh_database("booktrader").await;

    let env: BTreeMap<String, String> = [
        ("PGMUX_LISTEN_ADDR", "127.0.0.1:0".to_string()),
        ("PGMUX_METRICS_ADDR", "127.0.0.1:0".to_string()),
        ("PGMUX_POOL_SIZE", POOL_SIZE.to_string()),
        ("DB_HOST", "127.0.0.1".to_string()),
        ("DB_PORT", pg.port.to_string()),
        ("DB_NAME", db.clone()),
        ("DB_USER", APP_USER.to_string()),
        ("DB_PASSWORD", APP_PASSWORD.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let proxy_toml = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proxy.toml");
    let config = pgmux::config::load(Some(&proxy_toml), &env).expect("configuration");
    let app = App::start(config).await.expect("pgmux starts");
    let metrics = app.metrics_addr.expect("metrics endpoint");
    println!(
        "== pgmux listening on {} (metrics on http://{metrics}/metrics), pool_size {POOL_SIZE}",
        app.addr
    );

    let port = app.addr.port().to_string();
    let pgbench = {
        let (port, db) = (port.clone(), db.clone());
        move |args: &[&str]| {
            let out = Command::new(pg.tool("pgbench"))
                .args(["-h", "127.0.0.1", "-p", &port, "-U", APP_USER])
                .args(args)
                .arg(&db)
                .env("PGPASSWORD", APP_PASSWORD)
                .output()
                .expect("pgbench runs");
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "pgbench failed:\n{text}");
            text
        }
    };
    println!("== pgbench -i -s 5 through pgmux");
    let _ = tokio::task::spawn_blocking({
        let pgbench = pgbench.clone();
        move || pgbench(&["-i", "-s", "5", "-q"])
    })
    .await;
    let runs: [(&str, &[&str]); 3] = [
        (
            "select-only, simple protocol",
            &["-S", "-M", "simple", "-T", "5"],
        ),
        (
            "select-only, named prepared statements",
            &["-S", "-M", "prepared", "-T", "5"],
        ),
        // Not -M prepared here: pgbench prepares synchronously, stalling its
        // whole thread while another of its clients holds a server
        // mid-transaction (the same happens through any transaction pooler).
        (
            "TPC-B-like read/write, extended protocol",
            &["-M", "extended", "-T", "5"],
        ),
    ];
    for (label, args) in runs {
        println!("== pgbench {label}: {CLIENTS} clients through pgmux");
        let mut full = vec!["-c", CLIENTS, "-j", "2", "-n"];
        full.extend_from_slice(args);
        let text = tokio::task::spawn_blocking({
            let pgbench = pgbench.clone();
            let full: Vec<String> = full.iter().map(|s| s.to_string()).collect();
            move || pgbench(&full.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .expect("pgbench task");
        for line in text.lines().filter(|l| {
            l.starts_with("number of") || l.starts_with("latency average") || l.starts_with("tps")
        }) {
            println!("   {line}");
        }
    }

    let admin = pg.admin().await;
    let servers: i64 = admin
        .query_one("select count(*) from pg_stat_activity where datname = $1 and backend_type = 'client backend'", &[&db])
        .await
        .expect("pg_stat_activity")
        .get(0);
    let (_, text) = http_get(metrics, "/metrics").await;
    let labels = [("database", db.as_str()), ("user", APP_USER)];
    println!("== pool {db}/{APP_USER}");
    println!("   PostgreSQL sees {servers} server connections from pgmux (pool_size {POOL_SIZE}, {CLIENTS} clients)");
    for name in [
        "pgmux_transactions_total",
        "pgmux_queries_total",
        "pgmux_received_bytes_total",
        "pgmux_sent_bytes_total",
        "pgmux_server_connects_total",
        "pgmux_servers_idle",
        "pgmux_client_wait_seconds_count",
        "pgmux_client_wait_seconds_sum",
    ] {
        println!("   {name:36} {}", metric_value(&text, name, &labels));
    }
    app.stop();
}
