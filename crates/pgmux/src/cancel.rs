//! Query cancellation. Each client gets pgmux's own random (pid, key); a
//! CancelRequest carrying them is checked in constant time and forwarded, on
//! a fresh connection, to whichever server that client is linked to.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgmux_wire::auth::ct_eq;
use pgmux_wire::startup::cancel_packet;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The server a client is currently linked to.
#[derive(Debug, Clone, Copy)]
pub struct CancelTarget {
    pub addr: SocketAddr,
    pub pid: u32,
    pub key: u32,
}

struct Slot {
    key: u32,
    target: Mutex<Option<CancelTarget>>,
}

#[derive(Default)]
pub struct Cancels {
    slots: Mutex<HashMap<u32, Arc<Slot>>>,
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
    pub fn register(self: &Arc<Self>) -> CancelKey {
        let key: u32 = rand::random();
        let slot = Arc::new(Slot {
            key,
            target: Mutex::new(None),
        });
        let mut slots = lock(&self.slots);
        let pid = loop {
            // Stay in the positive i32 range, as PostgreSQL's pids do.
            let pid = rand::random::<u32>() & 0x7fff_ffff;
            if pid != 0 && !slots.contains_key(&pid) {
                break pid;
            }
        };
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
        let slot = lock(&self.slots).get(&pid).cloned();
        let Some(slot) = slot else { return };
        if !ct_eq(&slot.key.to_be_bytes(), &key.to_be_bytes()) {
            tracing::warn!(pid, "cancel request with a wrong key ignored");
            return;
        }
        let Some(target) = *lock(&slot.target) else {
            return;
        };
        send_cancel(target).await;
    }
}

/// Ask the server to cancel whatever `target` is running.
pub async fn send_cancel(target: CancelTarget) {
    let send = async {
        let mut stream = TcpStream::connect(target.addr).await?;
        stream
            .write_all(&cancel_packet(target.pid, target.key))
            .await?;
        stream.shutdown().await
    };
    let result = tokio::time::timeout(Duration::from_secs(5), send).await;
    if let Err(e) = result.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())) {
        tracing::warn!(error = %e, "could not forward a cancel request");
    }
}

impl CancelKey {
    pub fn link(&self, target: CancelTarget) {
        *lock(&self.slot.target) = Some(target);
    }
    pub fn unlink(&self) {
        *lock(&self.slot.target) = None;
    }
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        lock(&self.cancels.slots).remove(&self.pid);
    }
}
