//! Counters and histograms kept per worker and summed when read: a
//! transaction updates only its own worker's cache lines, so workers never
//! fight over a pool's counters (see [`crate::workers`]). Reads (SHOW,
//! /metrics, the stats line) add the cells up.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::pool::idle::here;
use crate::workers;

/// One cache line, so neighbouring cells of different workers do not share.
#[repr(align(64))]
#[derive(Default)]
struct Line<T>(T);

fn cells<T: Default>() -> Box<[Line<T>]> {
    (0..=workers::configured())
        .map(|_| Line::default())
        .collect()
}

fn mine<T>(cells: &[Line<T>]) -> &T {
    &cells[here() % cells.len()].0
}

/// A count that only grows.
pub struct Total(Box<[Line<AtomicU64>]>);

impl Default for Total {
    fn default() -> Total {
        Total(cells())
    }
}

impl Total {
    pub fn add(&self, n: u64) {
        mine(&self.0).fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }
}

/// A level that goes up and down (clients connected, servers lent...): a
/// worker may take down what another put up, so a cell may go negative;
/// the sum does not.
pub struct Level(Box<[Line<AtomicI64>]>);

impl Default for Level {
    fn default() -> Level {
        Level(cells())
    }
}

impl Level {
    pub fn inc(&self) {
        mine(&self.0).fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        mine(&self.0).fetch_sub(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        let sum: i64 = self.0.iter().map(|c| c.0.load(Ordering::Relaxed)).sum();
        sum.max(0) as u64
    }
}

/// Upper bounds (seconds) of the latency histograms' buckets.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// The same bounds in nanoseconds, for the recording side.
const BOUNDS_NS: [u64; 18] = {
    let mut ns = [0u64; 18];
    let mut i = 0;
    while i < 18 {
        ns[i] = (LATENCY_BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    ns
};

/// Histograms are recorded only when something can read them (a metrics
/// endpoint is configured).
static RECORDING: AtomicBool = AtomicBool::new(true);

pub fn record_histograms(on: bool) {
    RECORDING.store(on, Ordering::Relaxed);
}

/// One worker's share of a histogram: a count per bucket (the last is
/// +Inf) and the sum of the samples in nanoseconds.
#[derive(Default)]
struct Buckets {
    counts: [AtomicU64; 19],
    sum_ns: AtomicU64,
}

/// A latency histogram with [`LATENCY_BUCKETS`].
pub struct Histogram(Box<[Line<Buckets>]>);

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram(cells())
    }
}

/// A histogram read out: cumulative counts per bound (+Inf last), the sum
/// in seconds and the count.
pub struct HistogramSnapshot {
    pub cumulative: [u64; 19],
    pub sum_seconds: f64,
    pub count: u64,
}

impl Histogram {
    pub fn record(&self, took: Duration) {
        if !RECORDING.load(Ordering::Relaxed) {
            return;
        }
        let ns = took.as_nanos().min(u64::MAX as u128) as u64;
        // Counted from the smallest bucket: most samples (a checkout that
        // waited nothing, a query of a millisecond) land in the first few.
        let bucket = BOUNDS_NS
            .iter()
            .position(|&bound| ns <= bound)
            .unwrap_or(BOUNDS_NS.len());
        let mine = mine(&self.0);
        mine.counts[bucket].fetch_add(1, Ordering::Relaxed);
        if ns > 0 {
            mine.sum_ns.fetch_add(ns, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut per_bucket = [0u64; 19];
        let mut sum_ns = 0u64;
        for cell in self.0.iter() {
            for (total, count) in per_bucket.iter_mut().zip(&cell.0.counts) {
                *total += count.load(Ordering::Relaxed);
            }
            sum_ns = sum_ns.wrapping_add(cell.0.sum_ns.load(Ordering::Relaxed));
        }
        let mut cumulative = [0u64; 19];
        let mut running = 0;
        for (c, n) in cumulative.iter_mut().zip(per_bucket) {
            running += n;
            *c = running;
        }
        HistogramSnapshot {
            cumulative,
            sum_seconds: sum_ns as f64 / 1e9,
            count: running,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::default();
        h.record(Duration::from_micros(100)); // on the 0.0001 bound: inclusive
        h.record(Duration::from_micros(101));
        h.record(Duration::from_secs(61));
        let s = h.snapshot();
        assert_eq!(s.cumulative[0], 1);
        assert_eq!(s.cumulative[1], 2);
        assert_eq!(s.cumulative[17], 2);
        assert_eq!(s.cumulative[18], 3, "+Inf");
        assert_eq!(s.count, 3);
        assert!((s.sum_seconds - 61.000201).abs() < 1e-9);
    }

    #[test]
    fn levels_sum_across_workers() {
        let l = Level::default();
        l.inc();
        l.inc();
        l.dec();
        assert_eq!(l.get(), 1);
        let t = Total::default();
        t.add(5);
        t.add(7);
        assert_eq!(t.get(), 12);
    }
}
