//! What pgmux knows of each server of a host list, across pools: when it
//! last failed a connection attempt (it is then tried last for
//! `replica_ban_time`, so a dead primary or standby does not cost every
//! new connection a timeout), and the role it had at its last login. Only
//! servers of configured lists (of two or more, or with
//! `target_session_attrs`) are entered, so the book stays small; its
//! entries are /metrics' `pgmux_replica_banned{host}` and
//! `pgmux_server_role{host,role}`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{Endpoint, Role};

#[derive(Default, Debug)]
struct HostState {
    banned_until: Option<Instant>,
    role: Option<Role>,
}

/// One pgmux's book of listed servers.
#[derive(Default, Debug)]
pub struct HostBook(Mutex<HashMap<Endpoint, HostState>>);

impl HostBook {
    fn hosts(&self) -> std::sync::MutexGuard<'_, HashMap<Endpoint, HostState>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `order` with the banned hosts moved to the end (in their order): they
    /// are tried only when every other one failed.
    pub fn unbanned_first<'a>(&self, order: Vec<&'a Endpoint>) -> Vec<&'a Endpoint> {
        if order.len() < 2 {
            return order;
        }
        let now = Instant::now();
        let map = self.hosts();
        let banned = |e: &Endpoint| {
            map.get(e)
                .and_then(|s| s.banned_until)
                .is_some_and(|until| until > now)
        };
        let (mut free, held): (Vec<_>, Vec<_>) = order.into_iter().partition(|e| !banned(e));
        free.extend(held);
        free
    }

    /// A connection attempt to `host` failed (refused, timed out, TLS).
    pub fn failed(&self, host: &Endpoint, ban: Duration) {
        let mut map = self.hosts();
        let state = map.entry(host.clone()).or_default();
        // What it was is no longer known (a stopped primary is no primary).
        state.role = None;
        if !ban.is_zero() {
            state.banned_until = Some(Instant::now() + ban);
        }
    }

    /// `host` logged a server in; `role` when it was asked.
    pub fn answered(&self, host: &Endpoint, role: Option<Role>) {
        let mut map = self.hosts();
        let state = map.entry(host.clone()).or_default();
        state.banned_until = None;
        if role.is_some() {
            state.role = role;
        }
    }

    /// The first of `hosts` whose last login found a primary.
    pub fn primary_among<'a>(&self, hosts: &'a [Endpoint]) -> Option<&'a Endpoint> {
        let map = self.hosts();
        hosts.iter().find(|h| {
            map.get(*h)
                .and_then(|s| s.role)
                .is_some_and(|r| r.is_primary())
        })
    }

    /// Set the hosts' series (before each render of /metrics).
    pub fn publish(&self) {
        let now = Instant::now();
        for (host, state) in self.hosts().iter() {
            let name = host.to_string();
            let banned = state.banned_until.is_some_and(|until| until > now);
            metrics::gauge!("pgmux_replica_banned", "host" => name.clone())
                .set(f64::from(u8::from(banned)));
            for r in ["primary", "standby", "read-only"] {
                let is = state.role.is_some_and(|role| role.name() == r);
                metrics::gauge!("pgmux_server_role", "host" => name.clone(), "role" => r)
                    .set(f64::from(u8::from(is)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_host_is_tried_last_until_it_answers() {
        let a = Endpoint {
            host: "hosts-test-a".into(),
            port: 1,
        };
        let b = Endpoint {
            host: "hosts-test-b".into(),
            port: 2,
        };
        let c = Endpoint {
            host: "hosts-test-c".into(),
            port: 3,
        };
        let book = HostBook::default();
        book.failed(&a, Duration::from_secs(60));
        let order = book.unbanned_first(vec![&a, &b, &c]);
        assert_eq!(order, [&b, &c, &a]);
        book.answered(&a, None);
        assert_eq!(book.unbanned_first(vec![&a, &b, &c]), [&a, &b, &c]);
        book.failed(&b, Duration::ZERO);
        assert_eq!(
            book.unbanned_first(vec![&a, &b, &c]),
            [&a, &b, &c],
            "a zero ban is none"
        );
    }

    #[test]
    fn the_primary_is_the_first_host_last_found_writable() {
        let hosts = [
            Endpoint {
                host: "hosts-test-p".into(),
                port: 1,
            },
            Endpoint {
                host: "hosts-test-s".into(),
                port: 2,
            },
        ];
        let (primary, standby) = (Role::PRIMARY, Role::STANDBY);
        let book = HostBook::default();
        assert_eq!(book.primary_among(&hosts), None);
        book.answered(&hosts[0], Some(primary));
        book.answered(&hosts[1], Some(standby));
        assert_eq!(book.primary_among(&hosts), Some(&hosts[0]));
        // The primary stops; the standby is promoted.
        book.failed(&hosts[0], Duration::ZERO);
        assert_eq!(book.primary_among(&hosts), None);
        book.answered(&hosts[1], Some(primary));
        assert_eq!(book.primary_among(&hosts), Some(&hosts[1]));
    }
}
