//! When a pool's servers last answered, so that `/readyz` can vouch for a
//! PostgreSQL that served moments ago instead of making it fork a backend
//! for every probe.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// What the milliseconds count from.
static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds from [`START`] to `at`, never 0 (0: never).
fn millis(at: Instant) -> u64 {
    at.saturating_duration_since(*START).as_millis() as u64 + 1
}

/// The last time a server of the pool logged in or ended a transaction
/// cleanly.
#[derive(Default)]
pub struct LastAnswer(AtomicU64);

impl LastAnswer {
    pub fn record(&self, now: Instant) {
        let ms = millis(now);
        // Stored at most once a second: every checkin calls this, and a
        // store per transaction would move the cache line between workers.
        let last = self.0.load(Ordering::Relaxed);
        if last == 0 || ms >= last + 1000 {
            self.0.store(ms, Ordering::Relaxed);
        }
    }

    /// A server answered no longer than `age` ago (give or take a second).
    pub fn within(&self, age: Duration, now: Instant) -> bool {
        match self.0.load(Ordering::Relaxed) {
            0 => false,
            at => millis(now).saturating_sub(at) <= age.as_millis() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_vouches_for_its_age_and_no_longer() {
        let last = LastAnswer::default();
        let now = Instant::now();
        assert!(
            !last.within(Duration::from_secs(3600), now),
            "never answered"
        );
        last.record(now);
        assert!(last.within(Duration::from_secs(30), now));
        let later = now + Duration::from_secs(31);
        assert!(!last.within(Duration::from_secs(30), later));
        assert!(last.within(Duration::from_secs(60), later));
        last.record(later);
        assert!(last.within(Duration::from_secs(30), later));
    }
}
