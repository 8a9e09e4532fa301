//! What an administrator switches for whole databases (PAUSE, RESUME,
//! DISABLE, ENABLE, KILL) and for the whole process (a drain, a stop): kept
//! by name across pools, so a pool created later starts in the same state.

use std::collections::BTreeSet;

use super::{lock, Pools};
use crate::lifecycle::Stop;

/// Databases an administrator has paused or disabled, by client-facing name.
#[derive(Default)]
pub(super) struct Switches {
    pub(super) paused_all: bool,
    pub(super) paused: BTreeSet<String>,
    pub(super) disabled: BTreeSet<String>,
}

impl Pools {
    pub fn pause(&self, database: Option<&str>) {
        {
            let mut sw = lock(&self.switches);
            match database {
                Some(db) => {
                    sw.paused.insert(db.to_string());
                }
                None => sw.paused_all = true,
            }
        }
        for pool in self.of(database) {
            pool.pause();
        }
    }

    pub fn resume(&self, database: Option<&str>) {
        {
            let mut sw = lock(&self.switches);
            match database {
                Some(db) => {
                    sw.paused.remove(db);
                }
                None => {
                    sw.paused_all = false;
                    sw.paused.clear();
                }
            }
        }
        for pool in self.of(database) {
            if !self.is_paused(&pool.database) {
                pool.resume();
            }
        }
    }

    pub fn is_paused(&self, database: &str) -> bool {
        let sw = lock(&self.switches);
        sw.paused_all || sw.paused.contains(database)
    }

    pub fn set_disabled(&self, database: &str, disabled: bool) {
        let mut sw = lock(&self.switches);
        if disabled {
            sw.disabled.insert(database.to_string());
        } else {
            sw.disabled.remove(database);
        }
    }

    pub fn is_disabled(&self, database: &str) -> bool {
        lock(&self.switches).disabled.contains(database)
    }

    /// KILL: cut off every client and server of `database`, and leave it
    /// paused (PgBouncer's semantics: new clients wait for RESUME).
    pub fn kill(&self, database: &str) {
        self.pause(Some(database));
        for pool in self.of(Some(database)) {
            pool.kill();
        }
    }

    /// Begin a drain: accept no one, and ask every client to leave at its
    /// next moment without an open transaction.
    pub fn begin_drain(&self) {
        self.lifecycle.begin_drain();
        for pool in self.all() {
            pool.stop_clients(Stop::AfterTransaction);
        }
    }

    /// Close every client now.
    pub fn stop_now(&self) {
        self.lifecycle.stop_now();
        for pool in self.all() {
            pool.stop_clients(Stop::Now);
        }
    }
}
