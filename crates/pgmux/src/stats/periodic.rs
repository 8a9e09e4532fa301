//! Every `stats_period`: what each pool did in the period just ended (for
//! SHOW STATS_AVERAGES and the avg_ columns of SHOW STATS), and one log line
//! per database, as PgBouncer writes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::Snapshot;
use crate::pool::Pools;

/// One pool's position in the stats period.
#[derive(Debug, Clone, Copy)]
pub struct Period {
    started: Instant,
    at_start: Snapshot,
    /// What the last full period added, and how long it lasted.
    last: Snapshot,
    last_secs: f64,
}

impl Default for Period {
    fn default() -> Self {
        Period {
            started: Instant::now(),
            at_start: Snapshot::default(),
            last: Snapshot::default(),
            last_secs: 0.0,
        }
    }
}

/// Per-second rates and per-event means over a period, PgBouncer's units:
/// counts and bytes per second, times in microseconds per event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Averages {
    pub xacts: u64,
    pub queries: u64,
    pub received: u64,
    pub sent: u64,
    pub xact_us: u64,
    pub query_us: u64,
    pub wait_us: u64,
}

impl Averages {
    pub fn of(delta: &Snapshot, secs: f64) -> Averages {
        let rate = |n: u64| {
            if secs > 0.0 {
                (n as f64 / secs) as u64
            } else {
                0
            }
        };
        let mean = |total: u64, n: u64| total.checked_div(n).unwrap_or(0);
        Averages {
            xacts: rate(delta.xacts),
            queries: rate(delta.queries),
            received: rate(delta.received),
            sent: rate(delta.sent),
            xact_us: mean(delta.xact_us, delta.xacts),
            query_us: mean(delta.query_us, delta.queries),
            wait_us: mean(delta.wait_us, delta.assignments),
        }
    }
}

/// Per database (PgBouncer's grouping): totals, and the last period's
/// averages.
pub fn by_database(pools: &Pools) -> BTreeMap<String, (Snapshot, Averages)> {
    let mut sums: BTreeMap<String, (Snapshot, Snapshot, f64)> = BTreeMap::new();
    for pool in pools.all() {
        let totals = pool.stats.snapshot();
        let period = *super::lock(&pool.stats.period);
        let entry = sums.entry(pool.database.clone()).or_default();
        entry.0 = entry.0.plus(&totals);
        entry.1 = entry.1.plus(&period.last);
        entry.2 = entry.2.max(period.last_secs);
    }
    sums.into_iter()
        .map(|(db, (totals, last, secs))| (db, (totals, Averages::of(&last, secs))))
        .collect()
}

/// Close a period for every pool, then log one line per database.
pub async fn stats_loop(pools: Arc<Pools>) {
    loop {
        let period = pools.config().stats_period();
        tokio::time::sleep(period).await;
        let now = Instant::now();
        for pool in pools.all() {
            let totals = pool.stats.snapshot();
            let mut p = super::lock(&pool.stats.period);
            p.last = totals.minus(&p.at_start);
            p.last_secs = now.duration_since(p.started).as_secs_f64();
            p.at_start = totals;
            p.started = now;
        }
        if pools.config().log_stats {
            for (database, (_, avg)) in by_database(&pools) {
                tracing::info!(
                    target: "pgmux::stats",
                    %database,
                    "stats: {} xacts/s, {} queries/s, in {} B/s, out {} B/s, xact {} us, query {} us, wait {} us",
                    avg.xacts, avg.queries, avg.received, avg.sent, avg.xact_us, avg.query_us, avg.wait_us
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_are_rates_and_means_in_pgbouncer_units() {
        let delta = Snapshot {
            xacts: 20,
            queries: 40,
            received: 1000,
            sent: 5000,
            xact_us: 2000,
            query_us: 800,
            wait_us: 300,
            assignments: 30,
        };
        let avg = Averages::of(&delta, 10.0);
        assert_eq!(
            avg,
            Averages {
                xacts: 2,
                queries: 4,
                received: 100,
                sent: 500,
                xact_us: 100,
                query_us: 20,
                wait_us: 10,
            }
        );
        assert_eq!(Averages::of(&Snapshot::default(), 0.0), Averages::default());
    }
}
