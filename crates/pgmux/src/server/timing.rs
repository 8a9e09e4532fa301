//! When the request in flight and the open transaction began, for the
//! query and transaction duration histograms; and the time of the relay's
//! current turn, read once however many of these a turn records.

use std::time::Instant;

use crate::stats::PoolStats;

/// Start times for the query and transaction duration histograms.
#[derive(Debug, Default)]
pub struct Timing {
    request: Option<Instant>,
    transaction: Option<Instant>,
    /// The time of this turn of the relay (one wake-up), read on first
    /// need: a request sent, its reply passed on and the server given back
    /// in one turn share one clock read, as PgBouncer's loop shares its
    /// cached time.
    turn: Option<Instant>,
}

impl Timing {
    /// When the open transaction began (its first request went out).
    pub fn transaction_started(&self) -> Option<Instant> {
        self.transaction
    }

    /// A new turn of the relay begins (it woke up): the time is read again
    /// when next needed.
    pub fn next_turn(&mut self) {
        self.turn = None;
    }

    /// A turn begins at `now`, a time its caller has just read.
    pub fn turn_at(&mut self, now: Instant) {
        self.turn = Some(now);
    }

    /// The time of this turn.
    pub fn now(&mut self) -> Instant {
        *self.turn.get_or_insert_with(Instant::now)
    }

    /// A request went to a server that owed nothing; `status` is the
    /// transaction status it last reported (`I`: this starts a transaction).
    pub fn request_sent(&mut self, status: u8) {
        let now = self.now();
        self.request = Some(now);
        if status == b'I' && self.transaction.is_none() {
            self.transaction = Some(now);
        }
    }

    /// ReadyForQuery arrived: record what it ended. `transactions_done`
    /// is how many idle ReadyForQuery came; pipelined transactions that end
    /// together share the elapsed time, so the histogram's count matches
    /// pgmux_transactions_total and its sum the time spent.
    pub fn replied(&mut self, stats: &PoolStats, request_done: bool, transactions_done: u32) {
        if !request_done && transactions_done == 0 {
            return;
        }
        let now = self.now();
        if request_done {
            if let Some(started) = self.request.take() {
                stats.query_done(now.saturating_duration_since(started));
            }
        }
        if transactions_done > 0 {
            if let Some(started) = self.transaction.take() {
                let each = now.saturating_duration_since(started) / transactions_done;
                for _ in 0..transactions_done {
                    stats.transaction_done(each);
                }
            }
            if !request_done {
                // The client pipelined more behind it: the next transaction
                // starts as this one ends.
                self.transaction = Some(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// One clock reading per turn: what a turn records shares it, and the
    /// next turn reads the clock again.
    #[test]
    fn a_turn_reads_the_clock_once() {
        let start = Instant::now();
        let mut timing = Timing::default();
        timing.turn_at(start);
        timing.request_sent(b'I');
        assert_eq!(timing.now(), start);
        assert_eq!(timing.transaction_started(), Some(start));
        // A turn that began earlier keeps its time until the relay wakes
        // up again.
        let earlier = start
            .checked_sub(Duration::from_millis(10))
            .expect("the machine has been up for 10 ms");
        timing.turn_at(earlier);
        assert_eq!(timing.now(), earlier);
        timing.next_turn();
        assert!(timing.now() >= start, "a new turn reads the clock");
    }
}
