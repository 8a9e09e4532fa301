//! `max_db_connections`: a cap on server connections to one database across
//! all of its users' pools. A slot is held by each open server. When every
//! slot is taken, idle servers of sibling pools are closed to make room, so
//! a pool that went quiet cannot starve a busy one.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::{lock, Pool};
use crate::server::ServerError;

pub struct DbLimit {
    max: u32,
    slots: Arc<Semaphore>,
    pools: Mutex<Vec<Weak<Pool>>>,
    /// Signalled when a server goes idle somewhere: a waiter may evict it.
    pub(super) idle_appeared: Notify,
}

impl DbLimit {
    pub fn new(max: u32) -> Arc<DbLimit> {
        Arc::new(DbLimit {
            max,
            slots: Arc::new(Semaphore::new(max as usize)),
            pools: Mutex::new(Vec::new()),
            idle_appeared: Notify::new(),
        })
    }

    pub fn register(&self, pool: &Arc<Pool>) {
        let mut pools = lock(&self.pools);
        pools.retain(|p| p.strong_count() > 0);
        pools.push(Arc::downgrade(pool));
    }

    /// A slot for one more server, waiting at most `wait`.
    pub async fn acquire(
        &self,
        wait: Option<Duration>,
    ) -> Result<OwnedSemaphorePermit, ServerError> {
        let get = async {
            loop {
                if let Ok(slot) = self.slots.clone().try_acquire_owned() {
                    return slot;
                }
                let appeared = self.idle_appeared.notified();
                self.evict_one_idle();
                tokio::select! {
                    slot = self.slots.clone().acquire_owned() => {
                        return slot.expect("the slot semaphore is never closed");
                    }
                    _ = appeared => {}
                }
            }
        };
        match wait {
            Some(limit) => crate::io::timeout(limit, get)
                .await
                .map_err(|_| ServerError::DatabaseFull(self.max)),
            None => Ok(get.await),
        }
    }

    fn evict_one_idle(&self) {
        let pools: Vec<Arc<Pool>> = lock(&self.pools).iter().filter_map(Weak::upgrade).collect();
        for pool in pools {
            if pool.evict_one_idle() {
                return;
            }
        }
    }
}
