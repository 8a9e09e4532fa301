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
    let (status, text) = http_get(m, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    let labels = [("database", db.as_str()), ("user", APP_USER)];
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
    assert!(!text.contains("127.0.0.1"), "no client addresses in labels");
    let (status, body) = http_get(m, "/healthz").await;
    assert!(status.contains("200") && body.contains("ok"));
    let (status, _) = http_get(m, "/nope").await;
    assert!(status.contains("404"));
}
