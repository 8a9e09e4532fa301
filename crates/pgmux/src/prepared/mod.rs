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

mod client_names;
pub use client_names::{ClientStatements, CLIENT_NAME_OVERHEAD};

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
