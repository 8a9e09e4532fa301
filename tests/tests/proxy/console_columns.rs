//! The admin console's column lists: PgBouncer's, name for name and in
//! order, so its tooling (exporters, scripts) reads pgmux unchanged; pgmux's
//! own columns come after them.

use pgmux_tests::*;

/// Column lists as PgBouncer 1.18.0 (Debian bookworm's) sends them,
/// recorded from a real instance; pgmux must match name and order.
const PGBOUNCER_COLUMNS: &[(&str, &[&str])] = &[
    (
        "SHOW POOLS",
        &[
            "database",
            "user",
            "cl_active",
            "cl_waiting",
            "cl_active_cancel_req",
            "cl_waiting_cancel_req",
            "sv_active",
            "sv_active_cancel",
            "sv_being_canceled",
            "sv_idle",
            "sv_used",
            "sv_tested",
            "sv_login",
            "maxwait",
            "maxwait_us",
            "pool_mode",
        ],
    ),
    (
        "SHOW STATS",
        &[
            "database",
            "total_xact_count",
            "total_query_count",
            "total_received",
            "total_sent",
            "total_xact_time",
            "total_query_time",
            "total_wait_time",
            "avg_xact_count",
            "avg_query_count",
            "avg_recv",
            "avg_sent",
            "avg_xact_time",
            "avg_query_time",
            "avg_wait_time",
        ],
    ),
    ("SHOW STATS_TOTALS", STATS_TOTALS_COLUMNS),
    ("SHOW STATS_AVERAGES", STATS_TOTALS_COLUMNS),
    ("SHOW SERVERS", CONNECTION_COLUMNS),
    ("SHOW CLIENTS", CONNECTION_COLUMNS),
    (
        "SHOW DATABASES",
        &[
            "name",
            "host",
            "port",
            "database",
            "force_user",
            "pool_size",
            "min_pool_size",
            "reserve_pool",
            "pool_mode",
            "max_connections",
            "current_connections",
            "paused",
            "disabled",
        ],
    ),
    ("SHOW USERS", &["name", "pool_mode"]),
    ("SHOW CONFIG", &["key", "value", "default", "changeable"]),
    ("SHOW LISTS", &["list", "items"]),
    ("SHOW VERSION", &["version"]),
];

/// SHOW STATS_TOTALS and SHOW STATS_AVERAGES share PgBouncer's columns.
const STATS_TOTALS_COLUMNS: &[&str] = &[
    "database",
    "xact_count",
    "query_count",
    "bytes_received",
    "bytes_sent",
    "xact_time",
    "query_time",
    "wait_time",
];

const CONNECTION_COLUMNS: &[&str] = &[
    "type",
    "user",
    "database",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_show_command_has_pgbouncers_columns() {
    let db = fresh_database("console_columns").await;
    let app = start_pgmux(with_console_users).await;
    let client = connect(app.addr, &db).await;
    client.simple_query("select 1").await.unwrap();
    let admin = console(app.addr).await;
    for (command, expected) in PGBOUNCER_COLUMNS {
        let table = show(&admin, command).await.unwrap();
        let mut expected: Vec<&str> = expected.to_vec();
        match *command {
            // Kept for Debian's prometheus-pgbouncer-exporter (see show_stats.rs).
            "SHOW STATS" => expected.push("total_requests"),
            // pgmux's own, after PgBouncer's: where each server is and what
            // it is, and each database's current primary (issue 13).
            "SHOW SERVERS" => expected.extend(["host", "role"]),
            "SHOW DATABASES" => expected.push("primary"),
            _ => {}
        }
        assert_eq!(table.columns, expected, "{command}");
    }
    let lists = show(&admin, "show lists;").await.unwrap();
    let names: Vec<&str> = lists
        .rows
        .iter()
        .map(|r| r[0].as_deref().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "databases",
            "users",
            "pools",
            "free_clients",
            "used_clients",
            "login_clients",
            "free_servers",
            "used_servers",
            "dns_names",
            "dns_zones",
            "dns_queries",
            "dns_pending"
        ]
    );
    let version = show(&admin, "SHOW VERSION").await.unwrap();
    assert!(version.rows[0][0].as_deref().unwrap().starts_with("pgmux "));
    // SHOW CONFIG lists settings with their defaults, and never a secret.
    let config = show(&admin, "SHOW CONFIG").await.unwrap();
    let pool_size = config.row("key", "pool_size");
    assert_eq!(config.get(pool_size, "default"), "20");
    assert_eq!(config.get(pool_size, "changeable"), "yes");
    assert_eq!(
        config.get(config.row("key", "listen_addr"), "changeable"),
        "no"
    );
    // io_backend names what was asked for and what runs.
    let backend = config.get(config.row("key", "io_backend"), "value");
    match std::env::var("PGMUX_IO_BACKEND") {
        Ok(asked) => assert_eq!(backend, format!("{asked} ({asked})")),
        Err(_) => assert!(
            backend == "auto (io_uring)" || backend == "auto (epoll)",
            "{backend}"
        ),
    }
    let dump = format!("{:?}", config.rows);
    assert!(!dump.contains(CONSOLE_ADMIN_PASSWORD) && !dump.contains(APP_PASSWORD));
}
