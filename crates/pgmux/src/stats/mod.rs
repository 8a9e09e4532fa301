//! Statistics. Per-pool totals, levels and latency histograms are kept in
//! per-worker cells (one relaxed add on the worker's own cache line per
//! event, no lookup; see [`cells`]), read alike by the admin console's SHOW
//! and by /metrics, which copies totals and levels into the Prometheus
//! recorder when scraped and renders the histograms itself. Here: the
//! recorder and the process-wide series; one pool's are in [`pool_stats`].

pub mod catalog;
mod cells;
mod periodic;
mod pool_stats;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use crate::tls::{HandshakeFailure, Side};
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::Duration;

use metrics::{counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

pub use cells::{record_histograms, Histogram, Level, Total, LATENCY_BUCKETS};
pub use periodic::{by_database, stats_loop, Averages, Period};
pub use pool_stats::{
    error_sent, pinned, statement_lost, statement_replanned, PoolLevels, PoolStats, Snapshot,
};

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// A label value as Prometheus' text format writes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A series no scrape has touched for this long is dropped from /metrics.
/// Every scrape touches the series of every live pool and every process
/// series first, so only the series of pools that are gone expire: a
/// client trying made-up database names leaves nothing behind.
const SERIES_IDLE: Duration = Duration::from_secs(1);

/// Install the process-wide Prometheus recorder (once; later calls reuse it).
pub fn recorder() -> &'static PrometheusHandle {
    RECORDER.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .idle_timeout(
                MetricKindMask::COUNTER | MetricKindMask::GAUGE,
                Some(SERIES_IDLE),
            )
            .build_recorder();
        let handle = recorder.handle();
        // A recorder installed earlier (by an embedding program) keeps working;
        // our handle then renders only what reaches ours.
        if metrics::set_global_recorder(recorder).is_ok() {
            catalog::describe_all();
            for reason in LoginFailure::ALL {
                PROCESS_EVENTS.start_at_zero(
                    "pgmux_client_login_failures_total",
                    ("reason", reason.label().to_string()),
                );
            }
            for result in ["ok", "error"] {
                PROCESS_EVENTS.start_at_zero("pgmux_reloads_total", ("result", result.to_string()));
            }
            touch_process_series();
        }
        handle
    })
}

/// Counts of things that happen (errors by class, pins by reason, login
/// failures…), by (metric, label, value): counted here and set in the
/// recorder at scrape time like every other total, so that a series the
/// recorder drops as idle comes back with its full value (see
/// [`SERIES_IDLE`]). Events are rare; the lock is never on a hot path.
#[derive(Default)]
pub struct EventCounters(Mutex<HashMap<(&'static str, &'static str, String), u64>>);

impl EventCounters {
    /// Add one to `name{label=value}`.
    fn increment(&self, name: &'static str, (label, value): (&'static str, String)) {
        *lock(&self.0).entry((name, label, value)).or_insert(0) += 1;
    }

    /// Show `name{label=value}` from the start, at 0 (a dashboard then
    /// reads 0, not "no data").
    fn start_at_zero(&self, name: &'static str, (label, value): (&'static str, String)) {
        lock(&self.0).entry((name, label, value)).or_insert(0);
    }

    /// Set every counter in the recorder, with `base` labels first.
    fn publish(&self, base: &[(&'static str, String)]) {
        for ((name, label, value), count) in lock(&self.0).iter() {
            let mut labels = base.to_vec();
            labels.push((label, value.clone()));
            counter!(*name, &labels).absolute(*count);
        }
    }
}

/// The process-wide event counters (login failures, reloads).
static PROCESS_EVENTS: LazyLock<EventCounters> = LazyLock::new(EventCounters::default);
static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

/// Set the process-wide series from their sources (before each render).
pub fn touch_process_series() {
    gauge!("pgmux_shutting_down").set(if SHUTTING_DOWN.load(Ordering::Relaxed) {
        1.0
    } else {
        0.0
    });
    gauge!("pgmux_client_connections").set(client_connections_open() as f64);
    PROCESS_EVENTS.publish(&[]);
    publish_tls();
    counter!("pgmux_failovers_total").absolute(FAILOVERS.load(Ordering::Relaxed));
    counter!("pgmux_cancel_forwarded_total").absolute(CANCELS_FORWARDED.load(Ordering::Relaxed));
}

/// Times a pool found its primary moved (a write refused as read-only).
static FAILOVERS: AtomicU64 = AtomicU64::new(0);

pub fn failover() {
    FAILOVERS.fetch_add(1, Ordering::Relaxed);
}

/// CancelRequests passed on to the peer that gave out their key.
static CANCELS_FORWARDED: AtomicU64 = AtomicU64::new(0);

pub fn cancel_forwarded() {
    CANCELS_FORWARDED.fetch_add(1, Ordering::Relaxed);
}

/// TLS handshakes ended, by side; and failed ones by side and reason.
static TLS_HANDSHAKES: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
static TLS_FAILURES: [[AtomicU64; 5]; 2] = [const { [const { AtomicU64::new(0) }; 5] }; 2];

/// A TLS handshake with a client or a server ended (`Err`: it failed).
pub fn tls_handshake(side: Side, outcome: Result<(), HandshakeFailure>) {
    let s = side as usize;
    match outcome {
        Ok(()) => TLS_HANDSHAKES[s].fetch_add(1, Ordering::Relaxed),
        Err(reason) => TLS_FAILURES[s][reason as usize].fetch_add(1, Ordering::Relaxed),
    };
}

fn publish_tls() {
    for side in [Side::Client, Side::Server] {
        let s = side as usize;
        counter!("pgmux_tls_handshakes_total", "side" => side.label())
            .absolute(TLS_HANDSHAKES[s].load(Ordering::Relaxed));
        for reason in HandshakeFailure::ALL {
            counter!("pgmux_tls_handshake_errors_total", "side" => side.label(), "reason" => reason.label())
                .absolute(TLS_FAILURES[s][reason as usize].load(Ordering::Relaxed));
        }
    }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Lifetime,
    Idle,
    Error,
    /// The client vanished mid-transaction and the server could not be cleaned.
    Dirty,
    /// RECONNECT, KILL, or a reload that moved the database.
    Reconnect,
    /// It failed `server_check_query` after being idle.
    CheckFailed,
}

impl CloseReason {
    pub(crate) const ALL: [CloseReason; 6] = [
        CloseReason::Lifetime,
        CloseReason::Idle,
        CloseReason::Error,
        CloseReason::Dirty,
        CloseReason::Reconnect,
        CloseReason::CheckFailed,
    ];

    fn label(self) -> &'static str {
        match self {
            CloseReason::Lifetime => "lifetime",
            CloseReason::Idle => "idle",
            CloseReason::Error => "error",
            CloseReason::Dirty => "client_vanished_mid_transaction",
            CloseReason::Reconnect => "reconnect",
            CloseReason::CheckFailed => "check_failed",
        }
    }
}

/// Why a client's login was refused (a label of bounded cardinality).
#[derive(Debug, Clone, Copy)]
pub enum LoginFailure {
    Auth,
    UnknownDatabase,
    Disabled,
    Timeout,
    TooManyClients,
    TooManyPools,
    ServerUnavailable,
    Protocol,
    ShuttingDown,
}

impl LoginFailure {
    const ALL: [LoginFailure; 9] = [
        LoginFailure::Auth,
        LoginFailure::UnknownDatabase,
        LoginFailure::Disabled,
        LoginFailure::Timeout,
        LoginFailure::TooManyClients,
        LoginFailure::TooManyPools,
        LoginFailure::ServerUnavailable,
        LoginFailure::Protocol,
        LoginFailure::ShuttingDown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            LoginFailure::Auth => "auth_failed",
            LoginFailure::UnknownDatabase => "unknown_database",
            LoginFailure::Disabled => "database_disabled",
            LoginFailure::Timeout => "login_timeout",
            LoginFailure::TooManyClients => "too_many_clients",
            LoginFailure::TooManyPools => "too_many_pools",
            LoginFailure::ServerUnavailable => "server_unavailable",
            LoginFailure::Protocol => "protocol_violation",
            LoginFailure::ShuttingDown => "shutting_down",
        }
    }
}

pub fn login_failed(reason: LoginFailure) {
    PROCESS_EVENTS.increment(
        "pgmux_client_login_failures_total",
        ("reason", reason.label().to_string()),
    );
}

pub fn reloaded(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    PROCESS_EVENTS.increment("pgmux_reloads_total", ("result", result.to_string()));
}

pub fn set_shutting_down() {
    SHUTTING_DOWN.store(true, Ordering::Relaxed);
    gauge!("pgmux_shutting_down").set(1.0);
}

static CLIENT_CONNECTIONS: AtomicI64 = AtomicI64::new(0);

/// A client connection opened (`+1`) or closed (`-1`). Only an atomic add:
/// the gauge is set from it when /metrics is scraped.
pub fn client_connection(delta: i64) {
    CLIENT_CONNECTIONS.fetch_add(delta, Ordering::Relaxed);
}

/// Client connections open, logged in or not.
pub fn client_connections_open() -> u64 {
    CLIENT_CONNECTIONS.load(Ordering::Relaxed).max(0) as u64
}

/// Lock a mutex whose data stays consistent even if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
