//! Query cancellation. Each client gets pgmux's own random secret key, and a
//! pid: a random one in transaction mode, its server's real one in session
//! mode (so two clients may share a pid: a session-mode client's server pid
//! can equal another client's random one). A CancelRequest is checked in
//! constant time against every client with its pid and forwarded, on a
//! fresh connection, to whichever server that client is linked to.
//!
//! A cancel must land on the request it was meant for: a client's server
//! goes back to the pool only once every cancel forwarded for that client
//! has been delivered (PostgreSQL closes the cancel connection after it
//! signalled the backend), so a late signal cannot reach the next
//! client's statement on that server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgmux_wire::auth::ct_eq;
use pgmux_wire::startup::cancel_packet;
use tokio::io::AsyncWriteExt;

/// The server a client is currently linked to.
#[derive(Debug, Clone, Copy)]
pub struct CancelTarget {
    pub addr: SocketAddr,
    pub pid: u32,
    pub key: u32,
}

struct Slot {
    key: u32,
    /// Cancels forwarded for this client and not yet delivered.
    in_flight: AtomicU32,
    target: Mutex<Option<CancelTarget>>,
}

/// The clients by pid. A pid is almost always one client's alone, so the
/// first client with a pid costs one map entry and no list; only clients
/// that share one (session mode: a server's pid can equal another client's
/// random pid) go on a list.
#[derive(Default)]
struct Registry {
    first: HashMap<u32, Arc<Slot>>,
    more: HashMap<u32, Vec<Arc<Slot>>>,
}

impl Registry {
    fn with_pid(&self, pid: u32) -> impl Iterator<Item = &Arc<Slot>> {
        let more = self.more.get(&pid).map(Vec::as_slice).unwrap_or_default();
        self.first.get(&pid).into_iter().chain(more)
    }

    fn insert(&mut self, pid: u32, slot: Arc<Slot>) {
        match self.first.entry(pid) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(slot);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.more.entry(pid).or_default().push(slot);
            }
        }
    }

    fn remove(&mut self, pid: u32, slot: &Arc<Slot>) {
        if self.first.get(&pid).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            self.first.remove(&pid);
            if let Some(list) = self.more.get_mut(&pid) {
                if let Some(next) = list.pop() {
                    self.first.insert(pid, next);
                }
                if list.is_empty() {
                    self.more.remove(&pid);
                }
            }
        } else if let Some(list) = self.more.get_mut(&pid) {
            list.retain(|s| !Arc::ptr_eq(s, slot));
            if list.is_empty() {
                self.more.remove(&pid);
            }
        }
    }
}

#[derive(Default)]
pub struct Cancels {
    slots: Mutex<Registry>,
    /// Raised whenever a forwarded cancel was delivered (rare: one for
    /// all clients, each waiter checks its own count).
    delivered: tokio::sync::Notify,
    /// This instance's peer id, written into every key (0: no peering).
    peer_id: u16,
}

/// Counts a cancel in flight for a slot; done when dropped, whether the
/// forwarding finished or was abandoned.
struct InFlight<'a> {
    slot: &'a Slot,
    cancels: &'a Cancels,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.slot.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.cancels.delivered.notify_waiters();
    }
}

/// A client's registration; unregisters on drop.
pub struct CancelKey {
    pub pid: u32,
    pub key: u32,
    slot: Arc<Slot>,
    cancels: Arc<Cancels>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cancels {
    /// The cancel keys of an instance with `peer_id` (0: no peering; see
    /// [`crate::peering`]).
    pub fn new(peer_id: u16) -> Cancels {
        Cancels {
            peer_id,
            ..Cancels::default()
        }
    }

    /// Register a client under a random pid no other client has.
    pub fn register(self: &Arc<Self>) -> CancelKey {
        let mut slots = lock(&self.slots);
        let (pid, key) = loop {
            let (pid, key) = crate::peering::new_cancel_key(self.peer_id);
            if !slots.first.contains_key(&pid) {
                break (pid, key);
            }
        };
        self.insert(&mut slots, pid, key)
    }

    /// Register a session-mode client, under its server's own pid when
    /// the pid need not carry a peer id.
    pub fn register_as(self: &Arc<Self>, pid: u32) -> CancelKey {
        if self.peer_id != 0 {
            return self.register();
        }
        let mut slots = lock(&self.slots);
        self.insert(&mut slots, pid, rand::random())
    }

    fn insert(self: &Arc<Self>, slots: &mut Registry, pid: u32, key: u32) -> CancelKey {
        let slot = Arc::new(Slot {
            key,
            in_flight: AtomicU32::new(0),
            target: Mutex::new(None),
        });
        slots.insert(pid, slot.clone());
        CancelKey {
            pid,
            key,
            slot,
            cancels: self.clone(),
        }
    }

    /// Forward a CancelRequest if (pid, key) match a linked client.
    pub async fn cancel(&self, pid: u32, key: u32) {
        let slot = {
            let slots = lock(&self.slots);
            // Every candidate is compared, so the time taken tells nothing
            // of which (if any) matched.
            let mut found = None;
            let mut candidates = 0;
            let peering = self.peer_id != 0;
            let key = crate::peering::comparable(key, peering);
            for slot in slots.with_pid(pid) {
                candidates += 1;
                let mine = crate::peering::comparable(slot.key, peering);
                if ct_eq(&mine.to_be_bytes(), &key.to_be_bytes()) {
                    found = Some(slot.clone());
                }
            }
            if found.is_none() && candidates > 0 {
                tracing::warn!(pid, "cancel request with a wrong key ignored");
            }
            found
        };
        let Some(slot) = slot else { return };
        self.forward(&slot).await;
    }

    /// Forward a cancel to the server `slot`'s client is linked to, if any.
    async fn forward(&self, slot: &Slot) {
        // Counted under the same lock that unlinking takes: a client that
        // unlinks after this sees the count.
        let target = {
            let target = lock(&slot.target);
            if target.is_some() {
                slot.in_flight.fetch_add(1, Ordering::AcqRel);
            }
            *target
        };
        let Some(target) = target else { return };
        let _in_flight = InFlight {
            slot,
            cancels: self,
        };
        send_cancel(target).await;
    }
}

/// Ask the server to cancel whatever `target` is running.
///
/// Returns once PostgreSQL has closed the connection, which it does after
/// it signalled the backend: a client waiting for its cancel connection to
/// close (asyncpg does) then knows the cancel has landed, and cannot have
/// it land on its next statement instead.
pub async fn send_cancel(target: CancelTarget) {
    let send = async {
        let mut stream = crate::io::connect(target.addr).await?;
        stream
            .write_all(&cancel_packet(target.pid, target.key))
            .await?;
        let mut rest = [0u8; 64];
        while tokio::io::AsyncReadExt::read(&mut stream, &mut rest).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    let result = crate::io::timeout(Duration::from_secs(5), send).await;
    if let Err(e) = result.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())) {
        tracing::warn!(error = %e, "could not forward a cancel request");
    }
}

impl CancelKey {
    /// Cancel, in this client's name, what its server runs now (pgmux's own
    /// `query_timeout`). Counted as a client's cancel is, so the server goes
    /// back to the pool only once the cancel was delivered.
    pub fn cancel_linked(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (slot, cancels) = (self.slot.clone(), self.cancels.clone());
        async move { cancels.forward(&slot).await }
    }

    pub fn link(&self, target: CancelTarget) {
        *lock(&self.slot.target) = Some(target);
    }
    /// The client is done with its server: no cancel is forwarded to it
    /// from now on, and this returns once those already forwarded have
    /// been delivered (at once, unless a cancel raced the end of the
    /// client's request).
    pub async fn unlink(&self) {
        *lock(&self.slot.target) = None;
        while self.slot.in_flight.load(Ordering::Acquire) > 0 {
            let delivered = self.cancels.delivered.notified();
            tokio::pin!(delivered);
            delivered.as_mut().enable();
            if self.slot.in_flight.load(Ordering::Acquire) == 0 {
                break;
            }
            delivered.await;
        }
    }
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        lock(&self.cancels.slots).remove(self.pid, &self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_may_share_a_pid_and_each_keeps_its_own_key() {
        let cancels = Arc::new(Cancels::default());
        let random = cancels.register();
        let shared = cancels.register_as(random.pid);
        assert_eq!(shared.pid, random.pid);
        let third = cancels.register_as(random.pid);
        assert_eq!(lock(&cancels.slots).with_pid(random.pid).count(), 3);
        let pid = random.pid;
        drop(random);
        let keys = |c: &Cancels| -> Vec<u32> {
            let mut k: Vec<u32> = lock(&c.slots).with_pid(pid).map(|s| s.key).collect();
            k.sort_unstable();
            k
        };
        let mut left = vec![shared.key, third.key];
        left.sort_unstable();
        assert_eq!(
            keys(&cancels),
            left,
            "the first client's leaving keeps the others"
        );
        drop(third);
        assert_eq!(keys(&cancels), vec![shared.key]);
        drop(shared);
        let registry = lock(&cancels.slots);
        assert!(registry.first.is_empty() && registry.more.is_empty());
    }

    /// The server's end of a cancel connection is a bare listener here: it
    /// reads the CancelRequest and closes only when told, which is when
    /// PostgreSQL would have signalled the backend.
    #[tokio::test]
    async fn a_server_goes_back_only_after_its_clients_cancel_was_delivered() {
        use futures_util::FutureExt;
        use tokio::io::AsyncReadExt;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cancels = Arc::new(Cancels::default());
        let key = cancels.register();
        key.link(CancelTarget {
            addr: listener.local_addr().unwrap(),
            pid: 4242,
            key: 7,
        });
        let forwarding = tokio::spawn({
            let cancels = cancels.clone();
            let (pid, secret) = (key.pid, key.key);
            async move { cancels.cancel(pid, secret).await }
        });
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 16];
        conn.read_exact(&mut request).await.unwrap();
        assert_eq!(request, cancel_packet(4242, 7)[..]);

        let mut unlinking = Box::pin(key.unlink());
        assert!(
            unlinking.as_mut().now_or_never().is_none(),
            "the server stays the client's while its cancel is undelivered"
        );
        drop(conn);
        unlinking.await;
        forwarding.await.unwrap();
        assert_eq!(key.slot.in_flight.load(Ordering::Acquire), 0);
        // Unlinked: a cancel now reaches nobody and waits for nothing.
        cancels.cancel(key.pid, key.key).await;
        key.unlink().await;
    }
}
