//! Cancel requests across pgmux instances, PgBouncer's peering (`peer_id`,
//! `[peers.N]`). Behind a load balancer or a Kubernetes Service, a
//! client's CancelRequest opens a new connection that may land on any
//! instance. Each instance writes its peer id into the BackendKeyData it
//! gives clients, so whichever instance receives a cancel knows whose
//! client it is and forwards it there, at most once more.
//!
//! The 8 bytes a client is given, when `peer_id` is set:
//!
//! - pid: a zero sign bit, the peer id (14 bits), 17 random bits;
//! - key: hops left (2 bits: 1 as issued, 0 once forwarded), 30 random bits.
//!
//! 47 random bits in all, against the 63 of an instance without peering
//! (a random positive pid and a random key).

use std::time::Duration;

use pgmux_wire::startup::cancel_packet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest peer id (14 bits), as PgBouncer's.
pub const MAX_PEER_ID: u16 = 16383;

const PEER_SHIFT: u32 = 17;
const PID_RANDOM: u32 = (1 << PEER_SHIFT) - 1;
const HOPS_SHIFT: u32 = 30;
const KEY_RANDOM: u32 = (1 << HOPS_SHIFT) - 1;

/// How long a forwarded cancel may take to be delivered.
const FORWARD_DEADLINE: Duration = Duration::from_secs(5);

/// A fresh (pid, key) for a client of the instance with `peer_id` (0: no
/// peering).
pub fn new_cancel_key(peer_id: u16) -> (u32, u32) {
    loop {
        let (pid, key) = if peer_id == 0 {
            // Stay in the positive i32 range, as PostgreSQL's pids do.
            (rand::random::<u32>() & 0x7fff_ffff, rand::random::<u32>())
        } else {
            (
                (u32::from(peer_id) << PEER_SHIFT) | (rand::random::<u32>() & PID_RANDOM),
                (1 << HOPS_SHIFT) | (rand::random::<u32>() & KEY_RANDOM),
            )
        };
        if pid != 0 {
            return (pid, key);
        }
    }
}

/// The instance a pid was given out by (0: one without peering).
pub fn owner(pid: u32) -> u16 {
    ((pid >> PEER_SHIFT) & u32::from(MAX_PEER_ID)) as u16
}

/// What of a key is compared: under peering, its hop count is not part of
/// the secret.
pub fn comparable(key: u32, peering: bool) -> u32 {
    if peering {
        key & KEY_RANDOM
    } else {
        key
    }
}

/// A cancel that may still be forwarded (it has not been already).
pub fn may_forward(key: u32) -> bool {
    key >> HOPS_SHIFT > 0
}

/// Pass a cancel on to the peer at `host:port`, as forwarded (no hops
/// left), and wait until that peer closed the connection (it has acted on
/// it), within [`FORWARD_DEADLINE`].
pub async fn forward(
    host: &str,
    port: u16,
    dns_ttl: std::time::Duration,
    pid: u32,
    key: u32,
) -> std::io::Result<()> {
    let send = async {
        let mut stream = crate::server::connect_any(host, port, dns_ttl).await?;
        stream
            .write_all(&cancel_packet(pid, key & KEY_RANDOM))
            .await?;
        let mut rest = [0u8; 64];
        while stream.read(&mut rest).await? > 0 {}
        Ok(())
    };
    crate::io::timeout(FORWARD_DEADLINE, send)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_their_owner_and_one_hop() {
        for peer in [1, 2, 700, MAX_PEER_ID] {
            let (pid, key) = new_cancel_key(peer);
            assert_eq!(owner(pid), peer);
            assert!(pid <= i32::MAX as u32, "a positive pid");
            assert!(may_forward(key));
            let forwarded = key & KEY_RANDOM;
            assert!(!may_forward(forwarded));
            assert_eq!(comparable(forwarded, true), comparable(key, true));
        }
        let (pid, _) = new_cancel_key(0);
        assert!(pid > 0 && pid <= i32::MAX as u32);
    }
}
