//! A pool's idle servers, one list per worker (see [`crate::workers`]): a
//! server is registered with the reactor of the worker that last used it,
//! and a checkout takes from its own worker's list first, so a transaction
//! stays on one thread. Only when its own list is empty does a worker take
//! another's server, moving it into its own reactor once. Each list has its
//! own lock, which only a stealing worker or the housekeeping ever contends.

use std::sync::Mutex;

use super::lock;
use crate::server::Server;
use crate::workers;

/// The list of this thread: worker `n` is list `n + 1`, the control plane
/// (and any thread that is not a worker) list 0.
pub fn here() -> usize {
    workers::current().map_or(0, |w| w + 1)
}

/// Servers stay boxed: they move between the lists and a client's
/// checkout as one pointer.
#[allow(clippy::vec_box)]
type List = Mutex<Vec<Box<Server>>>;

pub struct IdleLists {
    lists: Vec<List>,
}

impl Default for IdleLists {
    fn default() -> IdleLists {
        let lists = (0..=workers::configured())
            .map(|_| Mutex::default())
            .collect();
        IdleLists { lists }
    }
}

impl IdleLists {
    fn list(&self, home: usize) -> &List {
        &self.lists[home % self.lists.len()]
    }

    /// Put a server back on its home's list.
    pub fn push(&self, server: Box<Server>) {
        lock(self.list(server.home)).push(server);
    }

    /// The most recently used idle server of this thread's list, if any.
    pub fn pop_here(&self) -> Option<Box<Server>> {
        lock(self.list(here())).pop()
    }

    /// An idle server of another list (the most recently used of the first
    /// list that has one): it must be moved to this thread's reactor.
    pub fn pop_elsewhere(&self) -> Option<Box<Server>> {
        let me = here() % self.lists.len();
        (0..self.lists.len())
            .filter(|&i| i != me)
            .find_map(|i| lock(&self.lists[i]).pop())
    }

    /// Take the servers `pick` chooses out of every list.
    pub fn take_where(&self, mut pick: impl FnMut(&Server) -> bool) -> Vec<Box<Server>> {
        let mut taken = Vec::new();
        for list in &self.lists {
            let mut list = lock(list);
            let mut i = 0;
            while i < list.len() {
                if pick(&list[i]) {
                    taken.push(list.remove(i));
                } else {
                    i += 1;
                }
            }
        }
        taken
    }

    /// The least recently used idle server of all, taken.
    pub fn take_oldest(&self) -> Option<Box<Server>> {
        let mut best: Option<(usize, std::time::Instant)> = None;
        for (i, list) in self.lists.iter().enumerate() {
            if let Some(first) = lock(list).first() {
                if best.is_none_or(|(_, at)| first.last_used < at) {
                    best = Some((i, first.last_used));
                }
            }
        }
        let (i, _) = best?;
        let mut list = lock(&self.lists[i]);
        (!list.is_empty()).then(|| list.remove(0))
    }

    pub fn len(&self) -> usize {
        self.lists.iter().map(|l| lock(l).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.lists.iter().all(|l| lock(l).is_empty())
    }

    /// Call `see` on every idle server.
    pub fn each(&self, mut see: impl FnMut(&Server)) {
        for list in &self.lists {
            for server in lock(list).iter() {
                see(server);
            }
        }
    }
}
