//! Named prepared statements in transaction mode.
//!
//! A client's statement names mean nothing on the next server it borrows,
//! so pgmux gives every distinct statement (query text + parameter types) a
//! pool-wide server-side name, remembers which servers already have it, and
//! rewrites the client's Parse/Bind/Describe/Close to match: a Parse the
//! server already has is answered by pgmux itself; a Bind on a server that
//! lacks the statement is preceded by a Parse pgmux injects and whose reply
//! it swallows. Servers keep at most `max_prepared_statements`, least
//! recently used evicted with a Close.
//!
//! A statement a schema change broke on a server (0A000, "cached plan must
//! not change result type") is closed there and retired from the pool's map,
//! so the client's next Parse of the same text truly prepares afresh instead
//! of landing on the stale copy again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use pgmux_wire::frame::write_message;

use crate::session::state::watch::Watch;

/// Distinct statements a pool remembers before starting its map afresh,
/// and the statement text it holds at most: clients keep the statements
/// they hold (each within `max_client_prepared_bytes`), only the pool's
/// index of them starts over.
const MAX_PER_POOL: usize = 50_000;
const MAX_TEXT_PER_POOL: usize = 32 << 20;

/// The name statement `id` has on every server.
pub fn server_name(id: u64) -> String {
    format!("pgmux_{id}")
}

/// One distinct statement.
#[derive(Debug)]
pub struct Statement {
    pub id: u64,
    /// Its name on every server.
    pub server_name: String,
    /// The Parse body after the statement name: query, parameter types.
    pub definition: Bytes,
    /// What its text may leave in the session (searched once, here; see
    /// [`crate::session::state::watch`]).
    pub watch: Watch,
    /// Its text may drop every prepared statement (`DEALLOCATE ALL`,
    /// `DISCARD ALL`).
    pub may_forget_all: bool,
    /// The database its text drops (`DROP DATABASE`), if any.
    pub drops_database: Option<String>,
}

impl Statement {
    /// A Parse message that creates this statement under its server name.
    pub fn parse_message(&self, out: &mut BytesMut) {
        write_message(out, b'P', |b| {
            b.put_slice(self.server_name.as_bytes());
            b.put_u8(0);
            b.put_slice(&self.definition);
        });
    }

    pub fn close_message(server_name: &str, out: &mut BytesMut) {
        write_message(out, b'C', |b| {
            b.put_u8(b'S');
            b.put_slice(server_name.as_bytes());
            b.put_u8(0);
        });
    }
}

/// The pool-wide map from statement definition to [`Statement`]; touched
/// only when a client sends a named Parse.
#[derive(Default)]
pub struct StatementCache {
    map: Mutex<Interned>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct Interned {
    by_definition: HashMap<Bytes, Arc<Statement>>,
    /// The definitions' length in all.
    text: usize,
}

impl Interned {
    fn clear(&mut self) {
        self.by_definition.clear();
        self.text = 0;
    }
}

impl StatementCache {
    pub fn intern(&self, definition: &[u8]) -> Arc<Statement> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.by_definition.get(definition) {
            return s.clone();
        }
        if map.by_definition.len() >= MAX_PER_POOL
            || map.text + definition.len() > MAX_TEXT_PER_POOL
        {
            // Clients still hold their Arcs; an evicted definition simply
            // gets a new id (and server name) the next time it is parsed.
            map.clear();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let definition = Bytes::copy_from_slice(definition);
        let watch = Watch::of_text(&definition);
        let s = Arc::new(Statement {
            id,
            server_name: server_name(id),
            may_forget_all: crate::session::may_forget_statements(&definition),
            drops_database: crate::session::dropped_database(
                definition.split(|&b| b == 0).next().unwrap_or_default(),
            ),
            definition: definition.clone(),
            watch,
        });
        map.text += definition.len();
        map.by_definition.insert(definition, s.clone());
        s
    }

    /// Forget `s` (a schema change broke it): the next Parse of its text
    /// gets a new statement and server name. Clients that still hold `s`
    /// keep using it until a server tells them it is stale, as they would
    /// on a direct connection.
    pub fn retire(&self, id: u64) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut freed = 0;
        map.by_definition.retain(|definition, s| {
            let keep = s.id != id;
            if !keep {
                freed += definition.len();
            }
            keep
        });
        map.text -= freed;
    }

    /// Forget every statement: a schema change (DDL) may give the same
    /// text other parameter or result types, which a Parse on a direct
    /// connection would see. Clients keep the statements they hold, as
    /// they would keep theirs on a direct connection.
    pub fn retire_all(&self) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// The statements one server has prepared, with a use stamp for LRU.
#[derive(Default)]
pub struct ServerStatements {
    have: HashMap<u64, u64>,
    clock: u64,
    /// Statements to Close before they are prepared again (stale ones, or
    /// ones whose Close an error made the server skip).
    to_close: Vec<u64>,
}

impl ServerStatements {
    pub fn contains(&mut self, id: u64) -> bool {
        self.clock += 1;
        match self.have.get_mut(&id) {
            Some(stamp) => {
                *stamp = self.clock;
                true
            }
            None => false,
        }
    }

    /// Record `s` as prepared; returns the id of a statement to close first
    /// when the server is full.
    pub fn add(&mut self, s: &Statement, capacity: usize) -> Option<u64> {
        self.clock += 1;
        let evict = if self.have.len() >= capacity.max(1) {
            let victim = self
                .have
                .iter()
                .min_by_key(|(_, stamp)| **stamp)
                .map(|(id, _)| *id);
            victim.filter(|id| self.have.remove(id).is_some())
        } else {
            None
        };
        self.have.insert(s.id, self.clock);
        evict
    }

    /// The server did not, after all, prepare `id` (its Parse failed or
    /// was skipped after an error).
    pub fn forget(&mut self, id: u64) {
        self.have.remove(&id);
    }

    /// The server's copy of `id` is stale: close it before it is used again.
    pub fn invalidate(&mut self, id: u64) {
        if self.have.remove(&id).is_some() {
            self.to_close.push(id);
        }
    }

    /// A Close of `id` was skipped (an error came first): the server still
    /// has it, and pgmux no longer counts it; close it again later.
    pub fn close_later(&mut self, id: u64) {
        if !self.have.contains_key(&id) && !self.to_close.contains(&id) {
            self.to_close.push(id);
        }
    }

    /// Statements to Close on the server first.
    pub fn take_closing(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.to_close)
    }

    pub fn has_closing(&self) -> bool {
        !self.to_close.is_empty()
    }

    pub fn len(&self) -> usize {
        self.have.len()
    }

    pub fn is_empty(&self) -> bool {
        self.have.is_empty()
    }

    /// The server dropped every prepared statement (DISCARD ALL, DEALLOCATE ALL).
    pub fn clear(&mut self) {
        self.have.clear();
        self.to_close.clear();
    }
}

/// True for the CommandComplete tags of statements that drop every prepared
/// statement of a session.
pub fn forgets_statements(command_tag: &[u8]) -> bool {
    command_tag.starts_with(b"DISCARD ALL\0") || command_tag.starts_with(b"DEALLOCATE ALL\0")
}

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
    use super::*;

    #[test]
    fn same_definition_same_statement() {
        let cache = StatementCache::default();
        let a = cache.intern(b"select 1\0\0\0");
        let b = cache.intern(b"select 1\0\0\0");
        let c = cache.intern(b"select 2\0\0\0");
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_ne!(a.server_name, c.server_name);
    }

    #[test]
    fn servers_evict_the_least_recently_used() {
        let cache = StatementCache::default();
        let mut server = ServerStatements::default();
        let cap = 200;
        let all: Vec<_> = (0..=cap)
            .map(|i| cache.intern(format!("select {i}\0\0\0").as_bytes()))
            .collect();
        for s in &all[..cap] {
            assert_eq!(server.add(s, cap), None);
        }
        assert_eq!(server.len(), cap);
        assert!(server.contains(all[0].id)); // used again: not the victim
        assert_eq!(server.add(&all[cap], cap), Some(all[1].id));
        assert!(!server.contains(all[1].id));
        assert!(server.contains(all[0].id));
        assert_eq!(server.len(), cap);
    }

    #[test]
    fn a_stale_statement_is_closed_and_its_text_prepared_afresh() {
        let cache = StatementCache::default();
        let mut server = ServerStatements::default();
        let old = cache.intern(b"select * from t\0\0\0");
        server.add(&old, 10);
        server.invalidate(old.id);
        cache.retire(old.id);
        assert!(!server.contains(old.id));
        assert_eq!(server.take_closing(), vec![old.id]);
        assert!(server.take_closing().is_empty());
        let new = cache.intern(b"select * from t\0\0\0");
        assert_ne!(new.server_name, old.server_name);
        // Invalidating what the server does not have closes nothing.
        server.invalidate(old.id);
        assert!(!server.has_closing());
    }

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

    #[test]
    fn text_hints_mark_statements() {
        let cache = StatementCache::default();
        let lock = cache.intern(b"select pg_advisory_lock($1)\0\0\0");
        assert!(lock.watch.calls_for_look());
        let mut set = cache.intern(b"set search_path = a\0\0\0").watch.clone();
        set.note_tag(b"SET\0");
        assert!(set.calls_for_look(), "a session-level SET, once confirmed");
        let plain = cache.intern(b"select abalance from a where aid = $1\0\0\0");
        assert_eq!(plain.watch, Watch::default());
    }
}
