//! The Prometheus endpoint and health check.

use pgmux_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    let db = fresh_database("metrics_counts").await;
    let app = start_pgmux(|c| c.pool_size = 2).await;
    let m = app.metrics_addr.unwrap();
    let c = connect(app.addr, &db).await;
    for _ in 0..10 {
        c.simple_query("select 1").await.unwrap();
    }
    c.batch_execute("begin; select 1; select 2; commit")
        .await
        .unwrap();
    let labels = [("database", db.as_str()), ("user", APP_USER)];
    // The client reads its ReadyForQuery a moment before pgmux has put the
    // server back: wait for that event, then read everything from one scrape.
    let settled = eventually(std::time::Duration::from_secs(10), || async {
        let (_, text) = http_get(m, "/metrics").await;
        metric_value(&text, "pgmux_servers_idle", &labels) == 1.0
            && metric_value(&text, "pgmux_clients_idle", &labels) == 1.0
    })
    .await;
    assert!(settled, "the server never went back to idle");
    let (status, text) = http_get(m, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    assert!(
        metric_value(&text, "pgmux_transactions_total", &labels) >= 11.0,
        "{text}"
    );
    assert!(metric_value(&text, "pgmux_queries_total", &labels) >= 11.0);
    assert!(metric_value(&text, "pgmux_received_bytes_total", &labels) > 0.0);
    assert!(metric_value(&text, "pgmux_sent_bytes_total", &labels) > 0.0);
    assert!(metric_value(&text, "pgmux_server_connects_total", &labels) >= 1.0);
    assert_eq!(metric_value(&text, "pgmux_servers_idle", &labels), 1.0);
    assert_eq!(metric_value(&text, "pgmux_clients_idle", &labels), 1.0);
    assert!(
        text.contains("pgmux_client_wait_seconds_bucket{"),
        "wait time is a real histogram"
    );
    // Listed servers are labelled by their address (other tests' pgmux
    // in this process share the recorder); no client ever is.
    let server_hosts = ["pgmux_replica_banned", "pgmux_server_role"];
    assert!(
        !text
            .lines()
            .filter(|l| !server_hosts.iter().any(|s| l.starts_with(s)))
            .any(|l| l.contains("127.0.0.1")),
        "no client addresses in labels"
    );
    // Shown from the start, so a dashboard reads 0 rather than no data.
    for series in [
        "pgmux_client_login_failures_total{reason=\"too_many_pools\"}",
        "pgmux_reloads_total{result=\"error\"}",
    ] {
        assert!(text.contains(series), "{series} missing");
    }
    let (status, body) = http_get(m, "/healthz").await;
    assert!(status.contains("200") && body.contains("ok"));
    let (status, _) = http_get(m, "/nope").await;
    assert!(status.contains("404"));
}

/// Issue 12: the metrics listener serves at most `MAX_CONNECTIONS` at once.
/// A connection beyond that is closed unanswered, so a stranger holding
/// connections open cannot spend the file descriptors clients need; once
/// the holders leave, the endpoint answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_caps_its_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = start_pgmux(|_| {}).await;
    let m = app.metrics_addr.unwrap();
    let mut held = Vec::new();
    for _ in 0..pgmux::http::MAX_CONNECTIONS {
        // Each sends half a request and waits (pgmux's read deadline is
        // 5 s; the check below takes milliseconds).
        let mut s = tokio::net::TcpStream::connect(m).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        held.push(s);
    }
    let mut extra = tokio::net::TcpStream::connect(m).await.unwrap();
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        extra.read_to_end(&mut answer),
    )
    .await
    .expect("closed, not left hanging");
    assert!(
        answer.is_empty(),
        "served past the cap ({read:?}): {}",
        String::from_utf8_lossy(&answer)
    );

    drop(held);
    let healthy = eventually(std::time::Duration::from_secs(20), || async {
        let Ok(mut s) = tokio::net::TcpStream::connect(m).await else {
            return false;
        };
        let mut out = Vec::new();
        s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await.is_ok()
            && s.read_to_end(&mut out).await.is_ok()
            && out.starts_with(b"HTTP/1.1 200")
    })
    .await;
    assert!(healthy, "answered again once the holders left");
}

/// Issue 12: a client trying made-up database names (each refused by
/// PostgreSQL with 3D000) leaves no pool behind, and the pools' series
/// leave /metrics with them, while a live pool's series stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_database_names_leave_no_series_behind() {
    let db = fresh_database("metrics_live").await;
    let app = start_pgmux(|_| {}).await;
    let m = app.metrics_addr.unwrap();
    let live = connect(app.addr, &db).await;
    live.simple_query("select 1").await.unwrap();
    for i in 0..20 {
        let err = try_connect(&dsn(app.addr, &format!("made_up_{i}")))
            .await
            .expect_err("no such database");
        assert_eq!(err.code().map(|c| c.code()), Some("3D000"), "{err:?}");
        // Scraped while the name was tried: its series were rendered.
        http_get(m, "/metrics").await;
    }
    let gone = eventually(std::time::Duration::from_secs(20), || async {
        !http_get(m, "/metrics").await.1.contains("made_up_")
    })
    .await;
    let (_, text) = http_get(m, "/metrics").await;
    assert!(gone, "series of pools that are gone stay: {text}");
    let labels = [("database", db.as_str()), ("user", APP_USER)];
    assert_eq!(
        metric_value(&text, "pgmux_client_logins_total", &labels),
        1.0
    );
    assert!(
        metric_value(
            &text,
            "pgmux_client_login_failures_total",
            &[("reason", "unknown_database")]
        ) >= 20.0,
        "{text}"
    );
}

/// Issue 12: `/readyz` vouches for a PostgreSQL whose servers answered
/// within `server_check_delay` without connecting to it (each probe makes
/// PostgreSQL fork a backend). Seen through a relay taken down after a
/// query: the recent answer still says ready, where a pgmux that must probe
/// (`server_check_delay = 0`) says not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_from_what_the_pools_know() {
    use pgmux_tests::relay::Relay;

    let db = fresh_database("readyz_known").await;
    let relay = Relay::start(std::net::SocketAddr::from(([127, 0, 0, 1], cluster().port))).await;
    let knowing = start_pgmux(|c| c.server_port = relay.addr.port()).await;
    let probing = start_pgmux(|c| {
        c.server_port = relay.addr.port();
        c.server_check_delay = 0.0;
    })
    .await;
    let (status, _) = http_get(probing.metrics_addr.unwrap(), "/readyz").await;
    assert!(status.contains("200"), "the relay is up: {status}");
    let client = connect(knowing.addr, &db).await;
    assert_eq!(scalar_i32(&client, "select 1").await, 1);

    relay.down().await;
    let (status, body) = http_get(knowing.metrics_addr.unwrap(), "/readyz").await;
    assert!(
        status.contains("200"),
        "served moments ago: {status} {body}"
    );
    let (status, body) = http_get(probing.metrics_addr.unwrap(), "/readyz").await;
    assert!(status.contains("503"), "{status} {body}");
    assert!(body.contains("PostgreSQL at"), "{body}");
}
