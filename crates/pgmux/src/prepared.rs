//! Named prepared statements in transaction mode.
//!
//! A client's statement names mean nothing on the next server it borrows,
//! so pgmux gives every distinct statement (query text + parameter types) a
//! pool-wide server-side name, remembers which servers already have it, and
//! rewrites the client's Parse/Bind/Describe/Close to match: a Parse the
//! server already has is answered by pgmux itself; a Bind on a server that
//! lacks the statement is preceded by a Parse pgmux injects and whose reply
//! it swallows. Servers keep at most `MAX_PER_SERVER`, least recently used
//! evicted with a Close.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use pgmux_wire::frame::write_message;

/// Statements a single server keeps prepared before evicting.
pub const MAX_PER_SERVER: usize = 1000;
/// Distinct statements a pool remembers before starting its map afresh.
const MAX_PER_POOL: usize = 50_000;

/// One distinct statement.
#[derive(Debug)]
pub struct Statement {
    pub id: u64,
    /// Its name on every server.
    pub server_name: String,
    /// The Parse body after the statement name: query, parameter types.
    pub definition: Bytes,
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
    map: Mutex<HashMap<Bytes, Arc<Statement>>>,
    next_id: AtomicU64,
}

impl StatementCache {
    pub fn intern(&self, definition: &[u8]) -> Arc<Statement> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get(definition) {
            return s.clone();
        }
        if map.len() >= MAX_PER_POOL {
            // Clients still hold their Arcs; an evicted definition simply
            // gets a new id (and server name) the next time it is parsed.
            map.clear();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let definition = Bytes::copy_from_slice(definition);
        let s = Arc::new(Statement {
            id,
            server_name: format!("pgmux_{id}"),
            definition: definition.clone(),
        });
        map.insert(definition, s.clone());
        s
    }
}

/// The statements one server has prepared, with a use stamp for LRU.
#[derive(Default)]
pub struct ServerStatements {
    have: HashMap<u64, (u64, String)>,
    clock: u64,
}

impl ServerStatements {
    pub fn contains(&mut self, id: u64) -> bool {
        self.clock += 1;
        match self.have.get_mut(&id) {
            Some(entry) => {
                entry.0 = self.clock;
                true
            }
            None => false,
        }
    }

    /// Record `s` as prepared; returns the server name of a statement to
    /// close first when the server is full.
    pub fn add(&mut self, s: &Statement) -> Option<String> {
        self.clock += 1;
        let evict = if self.have.len() >= MAX_PER_SERVER {
            let victim = self
                .have
                .iter()
                .min_by_key(|(_, (stamp, _))| *stamp)
                .map(|(id, _)| *id);
            victim
                .and_then(|id| self.have.remove(&id))
                .map(|(_, name)| name)
        } else {
            None
        };
        self.have.insert(s.id, (self.clock, s.server_name.clone()));
        evict
    }

    /// The server did not, after all, prepare `id` (its Parse failed or
    /// was skipped after an error).
    pub fn forget(&mut self, id: u64) {
        self.have.remove(&id);
    }

    pub fn clear(&mut self) {
        self.have.clear();
    }
}

/// True for the CommandComplete tags of statements that drop every prepared
/// statement of a session.
pub fn forgets_statements(command_tag: &[u8]) -> bool {
    command_tag.starts_with(b"DISCARD ALL\0") || command_tag.starts_with(b"DEALLOCATE ALL\0")
}

/// A client's own statement names.
#[derive(Default)]
pub struct ClientStatements {
    names: HashMap<Box<[u8]>, Arc<Statement>>,
}

impl ClientStatements {
    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.names.get(name)
    }
    pub fn insert(&mut self, name: &[u8], s: Arc<Statement>) {
        self.names.insert(name.into(), s);
    }
    pub fn remove(&mut self, name: &[u8]) {
        self.names.remove(name);
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
        let all: Vec<_> = (0..=MAX_PER_SERVER)
            .map(|i| cache.intern(format!("select {i}\0\0\0").as_bytes()))
            .collect();
        for s in &all[..MAX_PER_SERVER] {
            assert_eq!(server.add(s), None);
        }
        assert!(server.contains(all[0].id)); // used again: not the victim
        assert_eq!(
            server.add(&all[MAX_PER_SERVER]),
            Some(all[1].server_name.clone())
        );
        assert!(!server.contains(all[1].id));
        assert!(server.contains(all[0].id));
    }
}
