//! One pool's statistics ([`PoolStats`]): its totals, levels and latency
//! histograms, the recorder handles they are copied into at scrape time,
//! the [`Snapshot`] SHOW STATS reads, and the counters labelled by pool
//! (errors, pins, statements replanned or lost).

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use metrics::{counter, gauge};

use super::{
    escape, recorder, CloseReason, EventCounters, Histogram, Level, Period, Total, LATENCY_BUCKETS,
};

/// Count an ErrorResponse sent to a client by its SQLSTATE class.
pub fn error_sent(pool: &PoolStats, class: [u8; 2]) {
    let class = if class.iter().all(u8::is_ascii_alphanumeric) {
        String::from_utf8_lossy(&class).into_owned()
    } else {
        "??".to_string()
    };
    pool.event("pgmux_errors_total", ("class", class));
}

/// A client became pinned to its server, for `reason` (a [`Pin`] label).
///
/// [`Pin`]: crate::session::state::pins::Pin
pub fn pinned(pool: &PoolStats, reason: &'static str) {
    pool.event("pgmux_client_pins_total", ("reason", reason.to_string()));
}

/// A managed statement was stale on a server (0A000) and is prepared
/// afresh; `retried` when pgmux also sent the request again itself.
pub fn statement_replanned(pool: &PoolStats, retried: bool) {
    pool.event(
        "pgmux_statement_replans_total",
        ("retried", yes_no(retried)),
    );
}

/// A statement pgmux manages was missing on a server (26000: deallocated
/// behind pgmux's back); `retried` when pgmux re-sent the request itself.
pub fn statement_lost(pool: &PoolStats, retried: bool) {
    pool.event("pgmux_statements_lost_total", ("retried", yes_no(retried)));
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

/// The counters PgBouncer's SHOW STATS reports, at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub xacts: u64,
    pub queries: u64,
    pub received: u64,
    pub sent: u64,
    pub xact_us: u64,
    pub query_us: u64,
    pub wait_us: u64,
    pub assignments: u64,
}

impl Snapshot {
    pub fn minus(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            xacts: self.xacts.saturating_sub(earlier.xacts),
            queries: self.queries.saturating_sub(earlier.queries),
            received: self.received.saturating_sub(earlier.received),
            sent: self.sent.saturating_sub(earlier.sent),
            xact_us: self.xact_us.saturating_sub(earlier.xact_us),
            query_us: self.query_us.saturating_sub(earlier.query_us),
            wait_us: self.wait_us.saturating_sub(earlier.wait_us),
            assignments: self.assignments.saturating_sub(earlier.assignments),
        }
    }

    pub fn plus(&self, other: &Snapshot) -> Snapshot {
        Snapshot {
            xacts: self.xacts + other.xacts,
            queries: self.queries + other.queries,
            received: self.received + other.received,
            sent: self.sent + other.sent,
            xact_us: self.xact_us + other.xact_us,
            query_us: self.query_us + other.query_us,
            wait_us: self.wait_us + other.wait_us,
            assignments: self.assignments + other.assignments,
        }
    }
}

struct Labels {
    database: String,
    user: String,
    mode: &'static str,
}

pub struct PoolStats {
    labels: Labels,
    /// Logged-in clients of the pool.
    pub clients: Level,
    pub clients_active: Level,
    pub clients_waiting: Level,
    pub servers_active: Level,
    pub servers_login: Level,
    pub servers_tested: Level,
    /// Clients holding on to their server for session state (transaction mode).
    pub clients_pinned: Level,
    /// Session state read back from a server after a hinted transaction.
    pub session_checks: Total,
    pub xacts: Total,
    pub queries: Total,
    pub received: Total,
    pub sent: Total,
    pub xact_us: Total,
    pub query_us: Total,
    pub wait_us: Total,
    pub assignments: Total,
    pub logins: Total,
    pub connects: Total,
    pub connect_failures: Total,
    closed: [Total; CloseReason::ALL.len()],
    wait_seconds: Histogram,
    xact_seconds: Histogram,
    query_seconds: Histogram,
    connect_seconds: Histogram,
    /// The pool's counters bumped at events (errors, pins, statements).
    events: EventCounters,
    /// The totals at the start of the current stats period, and what the
    /// last full period added (SHOW STATS_AVERAGES and the stats log line).
    pub(crate) period: Mutex<Period>,
}

/// The pool's levels only it knows, handed in at scrape time.
pub struct PoolLevels {
    pub servers_idle: u64,
    pub servers_used: u64,
    pub max_wait: Duration,
    pub pool_size: u32,
    pub paused: bool,
}

impl PoolStats {
    /// Add one to this pool's `name{label=value}`.
    fn event(&self, name: &'static str, label: (&'static str, String)) {
        self.events.increment(name, label);
    }

    pub fn new(database: &str, user: &str, mode: &'static str) -> PoolStats {
        recorder();
        PoolStats {
            labels: Labels {
                database: database.to_string(),
                user: user.to_string(),
                mode,
            },
            clients: Level::default(),
            clients_active: Level::default(),
            clients_waiting: Level::default(),
            servers_active: Level::default(),
            servers_login: Level::default(),
            servers_tested: Level::default(),
            clients_pinned: Level::default(),
            session_checks: Total::default(),
            xacts: Total::default(),
            queries: Total::default(),
            received: Total::default(),
            sent: Total::default(),
            xact_us: Total::default(),
            query_us: Total::default(),
            wait_us: Total::default(),
            assignments: Total::default(),
            logins: Total::default(),
            connects: Total::default(),
            connect_failures: Total::default(),
            closed: Default::default(),
            wait_seconds: Histogram::default(),
            xact_seconds: Histogram::default(),
            query_seconds: Histogram::default(),
            connect_seconds: Histogram::default(),
            period: Mutex::new(Period::default()),
            events: EventCounters::default(),
        }
    }

    pub fn closed(&self, reason: CloseReason) {
        self.closed[reason as usize].add(1);
    }

    pub fn closed_count(&self, reason: CloseReason) -> u64 {
        self.closed[reason as usize].get()
    }

    pub fn waited(&self, wait: Duration) {
        // Most checkouts find a server at once: nothing to add.
        if !wait.is_zero() {
            self.wait_us.add(wait.as_micros() as u64);
        }
        self.wait_seconds.record(wait);
    }

    pub fn query_done(&self, took: Duration) {
        self.query_us.add(took.as_micros() as u64);
        self.query_seconds.record(took);
    }

    pub fn transaction_done(&self, took: Duration) {
        self.xact_us.add(took.as_micros() as u64);
        self.xact_seconds.record(took);
    }

    pub fn connected(&self, took: Duration) {
        self.connects.add(1);
        self.connect_seconds.record(took);
    }

    /// Clients logged in and holding no server, nor waiting for one.
    pub fn clients_idle(&self) -> u64 {
        self.clients
            .get()
            .saturating_sub(self.clients_active.get() + self.clients_waiting.get())
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            xacts: self.xacts.get(),
            queries: self.queries.get(),
            received: self.received.get(),
            sent: self.sent.get(),
            xact_us: self.xact_us.get(),
            query_us: self.query_us.get(),
            wait_us: self.wait_us.get(),
            assignments: self.assignments.get(),
        }
    }

    /// The histogram named `name` (a `_seconds` series of the catalog).
    fn histogram(&self, name: &str) -> Option<&Histogram> {
        Some(match name {
            "pgmux_client_wait_seconds" => &self.wait_seconds,
            "pgmux_transaction_duration_seconds" => &self.xact_seconds,
            "pgmux_query_duration_seconds" => &self.query_seconds,
            "pgmux_server_connect_seconds" => &self.connect_seconds,
            _ => return None,
        })
    }

    /// Append this pool's series of histogram `name` in Prometheus' text
    /// format.
    pub fn render_histogram(&self, name: &str, out: &mut String) {
        let Some(h) = self.histogram(name) else {
            return;
        };
        let s = h.snapshot();
        let labels = format!(
            "database=\"{}\",user=\"{}\",pool_mode=\"{}\"",
            escape(&self.labels.database),
            escape(&self.labels.user),
            self.labels.mode
        );
        for (bound, count) in LATENCY_BUCKETS.iter().zip(&s.cumulative) {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", s.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", s.sum_seconds);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", s.count);
    }

    /// Copy levels and totals into the recorder just before a scrape.
    /// Set this pool's series in the recorder from its cells (at scrape
    /// time). Looked up by name here rather than held: a series the
    /// recorder dropped as idle comes back with its full value.
    pub fn publish(&self, levels: &PoolLevels) {
        let l = [
            ("database", self.labels.database.clone()),
            ("user", self.labels.user.clone()),
            ("pool_mode", self.labels.mode.to_string()),
        ];
        let gauges = [
            ("pgmux_clients_active", self.clients_active.get() as f64),
            ("pgmux_clients_waiting", self.clients_waiting.get() as f64),
            ("pgmux_clients_idle", self.clients_idle() as f64),
            ("pgmux_servers_active", self.servers_active.get() as f64),
            ("pgmux_servers_idle", levels.servers_idle as f64),
            ("pgmux_servers_used", levels.servers_used as f64),
            ("pgmux_servers_login", self.servers_login.get() as f64),
            ("pgmux_servers_tested", self.servers_tested.get() as f64),
            ("pgmux_clients_pinned", self.clients_pinned.get() as f64),
            ("pgmux_max_wait_seconds", levels.max_wait.as_secs_f64()),
            ("pgmux_pool_size", f64::from(levels.pool_size)),
            ("pgmux_paused", if levels.paused { 1.0 } else { 0.0 }),
        ];
        for (name, value) in gauges {
            gauge!(name, &l).set(value);
        }
        let counters = [
            ("pgmux_transactions_total", self.xacts.get()),
            ("pgmux_queries_total", self.queries.get()),
            ("pgmux_received_bytes_total", self.received.get()),
            ("pgmux_sent_bytes_total", self.sent.get()),
            ("pgmux_server_assignments_total", self.assignments.get()),
            ("pgmux_client_logins_total", self.logins.get()),
            ("pgmux_server_connects_total", self.connects.get()),
            (
                "pgmux_server_connect_failures_total",
                self.connect_failures.get(),
            ),
            ("pgmux_session_checks_total", self.session_checks.get()),
        ];
        for (name, value) in counters {
            counter!(name, &l).absolute(value);
        }
        for reason in CloseReason::ALL {
            let mut labels = l.to_vec();
            labels.push(("reason", reason.label().to_string()));
            counter!("pgmux_server_closed_total", &labels).absolute(self.closed_count(reason));
        }
        self.events.publish(&l);
    }
}
