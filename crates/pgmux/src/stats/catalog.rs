//! Every series pgmux exports, with its HELP text: the one list that
//! /metrics describes and the README documents (a test keeps them in step).

use metrics::{describe_counter, describe_gauge, Unit};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

const fn m(name: &'static str, kind: Kind, help: &'static str) -> Metric {
    Metric { name, kind, help }
}

use Kind::{Counter, Gauge, Histogram};

/// Pool series carry `database`, `user` and `pool_mode` labels; the rest
/// say which labels they have.
pub const METRICS: &[Metric] = &[
    m("pgmux_clients_active", Gauge, "Clients linked to a server right now (PgBouncer's cl_active minus idle clients)."),
    m("pgmux_clients_waiting", Gauge, "Clients that sent a request and wait for a server (cl_waiting)."),
    m("pgmux_clients_idle", Gauge, "Logged-in clients holding no server and asking for none."),
    m("pgmux_servers_active", Gauge, "Server connections lent to a client (sv_active)."),
    m("pgmux_servers_idle", Gauge, "Idle server connections last used within the past second (sv_idle)."),
    m("pgmux_servers_used", Gauge, "Idle server connections unused for over a second (sv_used); every idle server is probed for liveness before reuse."),
    m("pgmux_servers_login", Gauge, "Server connections being opened and logged in (sv_login)."),
    m("pgmux_servers_tested", Gauge, "Server connections being cleaned after a client left mid-transaction or ran the reset query (sv_tested)."),
    m("pgmux_clients_pinned", Gauge, "Transaction mode: clients keeping their server for session state pgmux cannot carry (LISTEN, advisory locks, temp tables, WITH HOLD cursors, SQL PREPARE)."),
    m("pgmux_max_wait_seconds", Gauge, "How long the longest-waiting client of the pool has waited (maxwait)."),
    m("pgmux_pool_size", Gauge, "Configured maximum of server connections for the pool."),
    m("pgmux_paused", Gauge, "1 while the pool's database is paused (PAUSE, or KILL until RESUME), else 0."),
    m("pgmux_transactions_total", Counter, "Transactions completed through the pool (ReadyForQuery back to idle)."),
    m("pgmux_queries_total", Counter, "Queries completed through the pool (ReadyForQuery messages)."),
    m("pgmux_received_bytes_total", Counter, "Bytes received from clients."),
    m("pgmux_sent_bytes_total", Counter, "Bytes sent to clients."),
    m("pgmux_server_assignments_total", Counter, "Times a server connection was lent to a client."),
    m("pgmux_client_logins_total", Counter, "Clients that logged in successfully."),
    m("pgmux_server_connects_total", Counter, "Server connections opened and logged in."),
    m("pgmux_server_connect_failures_total", Counter, "Attempts to open a server connection that failed."),
    m("pgmux_server_closed_total", Counter, "Server connections closed, by `reason`: lifetime, idle, error, client_vanished_mid_transaction, reconnect, check_failed."),
    m("pgmux_errors_total", Counter, "ErrorResponses sent to clients, by SQLSTATE `class` (first two characters)."),
    m("pgmux_session_checks_total", Counter, "Transaction mode: times pgmux read a client's session state (settings, pins) back from its server after a transaction that hinted at it; each costs one round trip."),
    m("pgmux_client_pins_total", Counter, "Times a client became pinned to its server, by `reason`: advisory_lock, listen, temp_table, with_hold_cursor, sql_prepare, session_authorization, untracked_setting."),
    m("pgmux_statements_lost_total", Counter, "Prepared statements pgmux manages that a server no longer had (26000: deallocated behind pgmux's back); pgmux prepares them again, and `retried` says whether it also re-sent the request itself."),
    m("pgmux_statement_replans_total", Counter, "Prepared statements a schema change made stale on a server (0A000) and that pgmux prepares afresh; `retried` says whether pgmux also re-sent the request itself."),
    m("pgmux_client_wait_seconds", Histogram, "Time a client waited for a server connection, per request (0 when one was free)."),
    m("pgmux_transaction_duration_seconds", Histogram, "Time from a transaction's first request reaching a server to its ReadyForQuery back to idle."),
    m("pgmux_query_duration_seconds", Histogram, "Time from a request reaching a server to the server owing it nothing more (one sample per round trip; a pipeline is one)."),
    m("pgmux_server_connect_seconds", Histogram, "Time to open and log in a server connection."),
    m("pgmux_client_login_failures_total", Counter, "Client logins refused, by `reason` (no database or user labels, so strangers cannot grow the series)."),
    m("pgmux_client_connections", Gauge, "Client connections open, logged in or not (no labels)."),
    m("pgmux_reloads_total", Counter, "Configuration reloads (SIGHUP or RELOAD), by `result`: ok or error."),
    m("pgmux_replica_banned", Gauge, "1 while a listed server that failed a connection attempt is tried last (replica_ban_time), by `host`."),
    m("pgmux_server_role", Gauge, "1 for the role a listed server had at its last login (primary, standby, read-only), by `host` and `role`; known where target_session_attrs asks."),
    m("pgmux_failovers_total", Counter, "Times a pool that wants a writable server (target_session_attrs read-write or primary) had a write refused as read-only (25006) and replaced its servers (no labels)."),
    m("pgmux_cancel_forwarded_total", Counter, "CancelRequests passed on to the peered pgmux that gave out their key (peer_id, [peers]; no labels)."),
    m("pgmux_tls_handshakes_total", Counter, "TLS handshakes completed, by `side`: client (pgmux serving TLS) or server (pgmux connecting to PostgreSQL)."),
    m("pgmux_tls_handshake_errors_total", Counter, "TLS handshakes that failed, by `side` and `reason`: certificate, protocol, closed, timeout or other."),
    m("pgmux_shutting_down", Gauge, "1 once a shutdown has begun (no labels)."),
];

/// Give every series its HELP line (and unit) in the recorder.
/// The histograms' HELP and TYPE lines and every pool's series, in
/// Prometheus' text format.
pub fn render_histograms(pools: &[std::sync::Arc<crate::pool::Pool>], out: &mut String) {
    for metric in METRICS.iter().filter(|m| m.kind == Histogram) {
        out.push_str(&format!("# HELP {} {}\n", metric.name, metric.help));
        out.push_str(&format!("# TYPE {} histogram\n", metric.name));
        for pool in pools {
            pool.stats.render_histogram(metric.name, out);
        }
        out.push('\n');
    }
}

pub fn describe_all() {
    for metric in METRICS {
        let unit = if metric.name.ends_with("_seconds") {
            Some(Unit::Seconds)
        } else if metric.name.ends_with("_bytes_total") {
            Some(Unit::Bytes)
        } else {
            None
        };
        match (metric.kind, unit) {
            (Counter, Some(u)) => describe_counter!(metric.name, u, metric.help),
            (Counter, None) => describe_counter!(metric.name, metric.help),
            (Gauge, Some(u)) => describe_gauge!(metric.name, u, metric.help),
            (Gauge, None) => describe_gauge!(metric.name, metric.help),
            // Rendered by pgmux itself (see `render_histograms`).
            (Histogram, _) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's metrics table documents every series, by exact name.
    #[test]
    fn the_readme_documents_every_metric() {
        let readme = include_str!("../../../../README.md");
        for metric in METRICS {
            assert!(
                readme.contains(&format!("`{}`", metric.name)),
                "README.md does not document {}",
                metric.name
            );
        }
    }
}
