//! A client's own statement names in transaction mode, bound to the
//! pool's shared statements and held within the client's byte budget.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::Statement;

/// A client's own statement names. Each binding of a name gets a number,
/// so a Parse that fails or is skipped undoes exactly its own binding, and
/// a Close or DEALLOCATE that an error skips is undone too: a closed
/// binding is kept aside until nothing owed can skip it any more.
/// (The numbers come from one process-wide counter: a field here would
/// grow every idle client's task.)
///
/// The names a client holds cost memory pgmux cannot hand back to it, so
/// they are held within a byte budget (`max_client_prepared_bytes`): past
/// it, the least recently used names are forgotten, as if the client had
/// closed them, and a later use of one gets the 26000 "does not exist"
/// PostgreSQL gives for a closed name. Drivers keep far fewer statements
/// than that (psycopg and asyncpg 100, JDBC 256); a client that prepares
/// without end is bounded instead of growing pgmux.
#[derive(Default)]
pub struct ClientStatements {
    /// Boxed, and made on the first named Parse: most idle clients never
    /// prepare a statement, and every idle client keeps this.
    inner: Option<Box<ClientNames>>,
}

/// What one name costs against the budget beyond its name and text: the
/// map entry, the binding, and the pool's `Statement` record it keeps alive.
pub const CLIENT_NAME_OVERHEAD: usize = 160;

#[derive(Default)]
struct ClientNames {
    names: HashMap<Box<[u8]>, Binding>,
    /// Bindings closed while replies that could undo the close are owed.
    closed: Vec<(Box<[u8]>, Binding)>,
    /// What `names` costs, by [`Binding::cost`].
    bytes: usize,
    /// Use stamps for forgetting the least recently used.
    clock: u64,
}

struct Binding {
    statement: Arc<Statement>,
    number: u64,
    used: u64,
}

impl Binding {
    fn cost(name: &[u8], statement: &Statement) -> usize {
        name.len() + statement.definition.len() + CLIENT_NAME_OVERHEAD
    }
}

static BINDINGS: AtomicU64 = AtomicU64::new(1);

impl ClientStatements {
    /// The statement bound to `name`, without counting it as a use.
    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.inner.as_ref()?.names.get(name).map(|b| &b.statement)
    }

    /// The statement bound to `name`, for a Bind or Describe: a use that
    /// keeps it from being forgotten first.
    pub fn use_statement(&mut self, name: &[u8]) -> Option<&Arc<Statement>> {
        let inner = self.inner.as_deref_mut()?;
        inner.clock += 1;
        let binding = inner.names.get_mut(name)?;
        binding.used = inner.clock;
        Some(&binding.statement)
    }

    /// Bind `name` to `s`, forgetting the least recently used names if the
    /// client now holds more than `budget` bytes; returns the binding's
    /// number.
    pub fn insert(&mut self, name: &[u8], s: Arc<Statement>, budget: usize) -> u64 {
        let number = BINDINGS.fetch_add(1, Ordering::Relaxed);
        let inner = self.inner.get_or_insert_with(Default::default);
        inner.clock += 1;
        inner.bytes += Binding::cost(name, &s);
        let binding = Binding {
            statement: s,
            number,
            used: inner.clock,
        };
        if let Some(old) = inner.names.insert(name.into(), binding) {
            inner.bytes -= Binding::cost(name, &old.statement);
        }
        if inner.bytes > budget {
            inner.forget_least_used(budget);
        }
        number
    }

    /// Undo binding number `binding` (its Parse failed or was skipped).
    pub fn unbind(&mut self, binding: u64) {
        if let Some(inner) = self.inner.as_mut() {
            let mut freed = 0;
            inner.names.retain(|name, b| {
                let keep = b.number != binding;
                if !keep {
                    freed += Binding::cost(name, &b.statement);
                }
                keep
            });
            inner.bytes -= freed;
        }
    }

    /// Close `name`; returns the binding closed, kept aside for
    /// [`ClientStatements::reopen`].
    pub fn close(&mut self, name: &[u8]) -> Option<u64> {
        let inner = self.inner.as_mut()?;
        let (name, binding) = inner.names.remove_entry(name)?;
        inner.bytes -= Binding::cost(&name, &binding.statement);
        let number = binding.number;
        inner.closed.push((name, binding));
        Some(number)
    }

    /// Undo the close of `binding` (an error made the server skip it).
    pub fn reopen(&mut self, binding: u64) {
        let Some(inner) = self.inner.as_mut() else {
            return;
        };
        if let Some(i) = inner.closed.iter().position(|(_, b)| b.number == binding) {
            let (name, binding) = inner.closed.swap_remove(i);
            inner.bytes += Binding::cost(&name, &binding.statement);
            inner.names.insert(name, binding);
        }
    }

    /// Nothing owed can undo a close any more.
    pub fn settle(&mut self) {
        if let Some(inner) = self.inner.as_mut() {
            inner.closed.clear();
        }
    }

    pub fn clear(&mut self) {
        self.inner = None;
    }

    /// Names held, and what they cost against the budget.
    pub fn held(&self) -> (usize, usize) {
        self.inner
            .as_ref()
            .map_or((0, 0), |inner| (inner.names.len(), inner.bytes))
    }
}

impl ClientNames {
    /// Forget the least recently used names until at most three quarters
    /// of `budget` is held (so a client that keeps preparing pays for this
    /// sort once per many Parses, not on each), keeping the newest name
    /// whatever its size.
    fn forget_least_used(&mut self, budget: usize) {
        let target = budget - budget / 4;
        let mut by_use: Vec<(u64, usize)> = self
            .names
            .iter()
            .map(|(name, b)| (b.used, Binding::cost(name, &b.statement)))
            .collect();
        by_use.sort_unstable_by_key(|&(used, _)| used);
        let newest = by_use.pop();
        let mut held = self.bytes;
        let mut forget_up_to = None;
        for &(used, cost) in &by_use {
            if held <= target {
                break;
            }
            held -= cost;
            forget_up_to = Some(used);
        }
        let Some(cutoff) = forget_up_to else {
            return;
        };
        let before = self.names.len();
        self.names.retain(|_, b| b.used > cutoff);
        self.bytes = held;
        debug_assert!(newest.is_none_or(|(used, _)| used > cutoff));
        tracing::debug!(
            forgotten = before - self.names.len(),
            kept = self.names.len(),
            "a client's prepared statements passed max_client_prepared_bytes; the least recently used were forgotten"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::{StatementCache, MAX_PER_POOL, MAX_TEXT_PER_POOL};
    use super::*;

    /// Issue 12: a client that prepares 1,000,000 distinct statements and
    /// never closes one holds at most its budget, and so does the pool's
    /// index of them; the names it used last stay.
    #[test]
    fn a_client_preparing_without_end_stays_within_its_budget() {
        let cache = StatementCache::default();
        let mut client = ClientStatements::default();
        let budget = 256 << 10;
        let mut most = 0;
        for i in 0..1_000_000u32 {
            let definition = format!("select {i} as n\0\0\0");
            let name = format!("s{i}");
            client.insert(name.as_bytes(), cache.intern(definition.as_bytes()), budget);
            if i % 3 == 0 {
                // A statement used all along is never the one forgotten.
                assert!(client.use_statement(b"s0").is_some(), "after {i}");
            }
            most = most.max(client.held().1);
        }
        assert!(most <= budget, "held {most} bytes");
        let (names, bytes) = client.held();
        assert!(bytes > budget / 2, "{bytes}");
        assert!(names > 1000 && names < 2000, "{names} names");
        assert!(client.get(b"s999999").is_some());
        assert!(client.get(b"s1").is_none());
        let text = cache.map.lock().unwrap().text;
        assert!(text <= MAX_TEXT_PER_POOL);
        assert!(cache.map.lock().unwrap().by_definition.len() <= MAX_PER_POOL);
    }

    #[test]
    fn closing_and_reopening_keep_the_count_of_bytes() {
        let cache = StatementCache::default();
        let mut client = ClientStatements::default();
        let a = client.insert(b"a", cache.intern(b"select 1\0\0\0"), 1 << 20);
        let one = client.held().1;
        assert_eq!(one, 1 + 11 + CLIENT_NAME_OVERHEAD);
        client.insert(b"b", cache.intern(b"select 22\0\0\0"), 1 << 20);
        let closed = client.close(b"a").unwrap();
        assert_eq!(closed, a);
        assert_eq!(client.held(), (1, 1 + 12 + CLIENT_NAME_OVERHEAD));
        client.reopen(closed);
        assert_eq!(client.held().1, one + 1 + 12 + CLIENT_NAME_OVERHEAD);
        client.unbind(a);
        assert_eq!(client.held(), (1, 1 + 12 + CLIENT_NAME_OVERHEAD));
        // A statement bigger than the whole budget is still kept, alone.
        let big = format!("select '{}'\0\0\0", "x".repeat(5000));
        client.insert(b"big", cache.intern(big.as_bytes()), 1000);
        assert_eq!(client.held().0, 1);
        assert!(client.get(b"big").is_some());
    }
}
