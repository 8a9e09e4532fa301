//! Per-pool statistics. Hot counters are `metrics` handles (an atomic add
//! each, no lookup per event); levels the scrape needs are plain atomics
//! turned into gauges when /metrics is rendered.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// Seconds; spans a fast checkout to a long queue wait.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Install the process-wide Prometheus recorder (once; later calls reuse it).
pub fn recorder() -> &'static PrometheusHandle {
    RECORDER.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("bucket list is not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // A recorder installed earlier (by an embedding program) keeps working;
        // our handle then renders only what reaches ours.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Histogram samples wait in per-metric buckets until the exporter's upkeep
/// folds them in; without it they would pile up between scrapes.
pub async fn upkeep() {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        recorder().run_upkeep();
    }
}

/// Why a server connection was closed.
#[derive(Debug, Clone, Copy)]
pub enum CloseReason {
    Lifetime,
    Idle,
    Error,
    /// The client vanished mid-transaction and the server could not be cleaned.
    Dirty,
}

#[derive(Default)]
pub struct Level(AtomicI64);

impl Level {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed).max(0)
    }
}

pub struct PoolStats {
    pub clients: Level,
    pub clients_active: Level,
    pub clients_waiting: Level,
    pub servers_active: Level,
    pub servers_login: Level,
    pub transactions: Counter,
    pub queries: Counter,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    pub servers_opened: Counter,
    pub server_connect_failures: Counter,
    closed_lifetime: Counter,
    closed_idle: Counter,
    closed_error: Counter,
    closed_dirty: Counter,
    pub wait_seconds: Histogram,
    pub connect_seconds: Histogram,
    gauges: Gauges,
}

struct Gauges {
    clients_active: Gauge,
    clients_waiting: Gauge,
    clients_idle: Gauge,
    servers_active: Gauge,
    servers_idle: Gauge,
    servers_login: Gauge,
    max_wait: Gauge,
}

impl PoolStats {
    pub fn new(database: &str, user: &str) -> PoolStats {
        recorder();
        let l = [
            ("database", database.to_string()),
            ("user", user.to_string()),
        ];
        let closed = |reason: &'static str| {
            counter!(
                "pgmux_server_closed_total",
                &[
                    ("database", database.to_string()),
                    ("user", user.to_string()),
                    ("reason", reason.to_string())
                ]
            )
        };
        PoolStats {
            clients: Level::default(),
            clients_active: Level::default(),
            clients_waiting: Level::default(),
            servers_active: Level::default(),
            servers_login: Level::default(),
            transactions: counter!("pgmux_transactions_total", &l),
            queries: counter!("pgmux_queries_total", &l),
            bytes_received: counter!("pgmux_received_bytes_total", &l),
            bytes_sent: counter!("pgmux_sent_bytes_total", &l),
            servers_opened: counter!("pgmux_server_opened_total", &l),
            server_connect_failures: counter!("pgmux_server_connect_failures_total", &l),
            closed_lifetime: closed("lifetime"),
            closed_idle: closed("idle"),
            closed_error: closed("error"),
            closed_dirty: closed("client_vanished_mid_transaction"),
            wait_seconds: histogram!("pgmux_client_wait_seconds", &l),
            connect_seconds: histogram!("pgmux_server_connect_seconds", &l),
            gauges: Gauges {
                clients_active: gauge!("pgmux_clients_active", &l),
                clients_waiting: gauge!("pgmux_clients_waiting", &l),
                clients_idle: gauge!("pgmux_clients_idle", &l),
                servers_active: gauge!("pgmux_servers_active", &l),
                servers_idle: gauge!("pgmux_servers_idle", &l),
                servers_login: gauge!("pgmux_servers_login", &l),
                max_wait: gauge!("pgmux_max_wait_seconds", &l),
            },
        }
    }

    pub fn closed(&self, reason: CloseReason) {
        match reason {
            CloseReason::Lifetime => &self.closed_lifetime,
            CloseReason::Idle => &self.closed_idle,
            CloseReason::Error => &self.closed_error,
            CloseReason::Dirty => &self.closed_dirty,
        }
        .increment(1);
    }

    /// Copy the levels into gauges just before a scrape.
    pub fn publish(&self, servers_idle: usize, max_wait: Duration) {
        let g = &self.gauges;
        let active = self.clients_active.get();
        let waiting = self.clients_waiting.get();
        g.clients_active.set(active as f64);
        g.clients_waiting.set(waiting as f64);
        g.clients_idle
            .set((self.clients.get() - active - waiting).max(0) as f64);
        g.servers_active.set(self.servers_active.get() as f64);
        g.servers_idle.set(servers_idle as f64);
        g.servers_login.set(self.servers_login.get() as f64);
        g.max_wait.set(max_wait.as_secs_f64());
    }
}
