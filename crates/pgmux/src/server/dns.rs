//! Host names of servers (and peers), resolved at most every `dns_max_ttl`
//! seconds. A managed database whose endpoint moves in DNS on failover
//! (RDS, Aurora, CloudNativePG's services) is followed within that time,
//! and a pool opening many servers at once does not send a lookup for
//! each. An address that refuses a connection drops its name's entry, so
//! the next attempt asks again at once.
//!
//! The lookup itself is the system's (`getaddrinfo`, honouring
//! /etc/hosts and nsswitch), run off the worker thread: it can take
//! seconds, and a worker serves many clients.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Names kept at most; past this the cache starts over (a configuration
/// names a handful of hosts; the bound only matters against a flood of
/// wildcard databases with distinct hosts, which cannot happen today).
const MAX_NAMES: usize = 1024;

struct Resolved {
    addrs: Vec<SocketAddr>,
    at: Instant,
}

type Cache = Mutex<HashMap<(String, u16), Resolved>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Cache::default)
}

fn lock(cache: &Cache) -> std::sync::MutexGuard<'_, HashMap<(String, u16), Resolved>> {
    cache.lock().unwrap_or_else(|p| p.into_inner())
}

/// The addresses of `host:port`: an address literal as it is, a name from
/// a lookup at most `max_ttl` old (`max_ttl` zero: a fresh lookup).
pub async fn resolve(host: &str, port: u16, max_ttl: Duration) -> std::io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![(ip, port).into()]);
    }
    let key = (host.to_string(), port);
    if let Some(found) = lock(cache()).get(&key) {
        if found.at.elapsed() < max_ttl {
            return Ok(found.addrs.clone());
        }
    }
    let addrs = look_up(format!("{host}:{port}")).await?;
    if !max_ttl.is_zero() {
        let mut cache = lock(cache());
        if cache.len() >= MAX_NAMES {
            cache.clear();
        }
        let at = Instant::now();
        let addrs = addrs.clone();
        cache.insert(key, Resolved { addrs, at });
    }
    Ok(addrs)
}

/// Forget what `host:port` resolved to (one of its addresses failed).
pub fn forget(host: &str, port: u16) {
    lock(cache()).remove(&(host.to_string(), port));
}

async fn look_up(name: String) -> std::io::Result<Vec<SocketAddr>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("pgmux-resolve".into())
        .spawn(move || {
            use std::net::ToSocketAddrs;
            let _ = tx.send(name.to_socket_addrs().map(Iterator::collect));
        })?;
    rx.await
        .map_err(|_| std::io::Error::other("name lookup failed"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_is_looked_up_again_only_after_max_ttl() {
        let ttl = Duration::from_secs(60);
        let first = resolve("localhost", 5432, ttl).await.unwrap();
        assert!(first
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 5432));
        // Planted as if the name had moved: within the ttl the cache answers.
        let moved: SocketAddr = "127.0.0.9:5432".parse().unwrap();
        lock(cache()).insert(
            ("localhost".into(), 5432),
            Resolved {
                addrs: vec![moved],
                at: Instant::now(),
            },
        );
        assert_eq!(resolve("localhost", 5432, ttl).await.unwrap(), [moved]);
        // A zero ttl always asks the system again.
        let fresh = resolve("localhost", 5432, Duration::ZERO).await.unwrap();
        assert!(!fresh.contains(&moved));
        // Forgotten: asked again.
        forget("localhost", 5432);
        assert!(!resolve("localhost", 5432, ttl)
            .await
            .unwrap()
            .contains(&moved));
    }

    #[tokio::test]
    async fn an_address_literal_needs_no_lookup() {
        let addrs = resolve("::1", 6432, Duration::ZERO).await.unwrap();
        assert_eq!(addrs, ["[::1]:6432".parse::<SocketAddr>().unwrap()]);
    }
}
