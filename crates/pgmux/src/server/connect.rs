//! Opening a server connection for a target that may list several servers:
//! each is tried in turn (or, with `load_balance_hosts = random`, the one
//! holding fewest of the pool's servers first, ties in a random order),
//! each attempt within `server_connect_timeout`, and a server
//! that logs in is kept only if its role fits `target_session_attrs`, as
//! libpq does. A server that answered with an error (a wrong password, no
//! such database) ends the search: another host would say the same.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pgmux_wire::backend::data_row;

use super::{Login, Server, ServerError};
use crate::config::{Endpoint, LoadBalance, Role, SessionAttrs, Target};

/// How many of a pool's servers are open on each listed server. Each
/// carries one request at a time, so a balanced count is a balanced load
/// of outstanding requests when the pool is busy (which is when it opens
/// servers).
pub type OpenPerHost = HashMap<Endpoint, usize>;
use crate::conninfo::{ConnInfo, State};

/// How servers are reached: the settings a connection attempt follows.
#[derive(Debug, Clone, Copy)]
pub struct Reach {
    /// Each attempt's limit (`server_connect_timeout`).
    pub timeout: Duration,
    pub tcp: crate::io::TcpOptions,
    /// How long a server that failed an attempt is tried last.
    pub ban_time: Duration,
    /// Bytes of received WAL a standby may still have to replay (0: no
    /// limit).
    pub max_lag: u64,
    /// How long a host name's addresses are used before asking again.
    pub dns_ttl: Duration,
}

impl Server {
    /// Connect and log in to a server of `target` that fits its
    /// `target_session_attrs`.
    pub async fn connect(
        target: &Target,
        login: &Login,
        open_per_host: &OpenPerHost,
        reach: Reach,
        max_message: usize,
        generation: u64,
    ) -> Result<Server, ServerError> {
        let Reach {
            timeout,
            tcp,
            ban_time: ban,
            max_lag,
            dns_ttl,
        } = reach;
        let mut order: Vec<_> = target.hosts.iter().collect();
        if target.load_balance == LoadBalance::Random {
            shuffle(&mut order);
            // Stable: hosts holding as many keep their random order.
            order.sort_by_key(|e| open_per_host.get(*e).copied().unwrap_or(0));
        }
        // Only lists are kept in the book: a lone server is always tried.
        let book = target
            .book
            .as_deref()
            .filter(|_| target.hosts.len() > 1 || target.session_attrs != SessionAttrs::Any);
        let order = match book {
            Some(book) => book.unbanned_first(order),
            None => order,
        };
        let mut last_error = None;
        let mut unfit = Vec::new();
        for &wanted in target.session_attrs.passes() {
            for endpoint in &order {
                let attempt = crate::io::timeout(
                    timeout,
                    Server::connect_to(endpoint, target, login, tcp, dns_ttl, max_message),
                )
                .await;
                let mut server = match attempt {
                    Ok(Ok(server)) => server,
                    Ok(Err(e @ ServerError::Backend(_))) => return Err(e),
                    Ok(Err(e)) => {
                        if let Some(book) = book {
                            book.failed(endpoint, ban);
                        }
                        last_error = Some(e);
                        continue;
                    }
                    Err(_) => {
                        if let Some(book) = book {
                            book.failed(endpoint, ban);
                        }
                        last_error = Some(ServerError::Timeout(timeout));
                        continue;
                    }
                };
                if wanted == SessionAttrs::Any && target.session_attrs == SessionAttrs::Any {
                    if let Some(book) = book {
                        book.answered(endpoint, server.reported_role());
                    }
                    return Ok(server.opened(generation));
                }
                let role = server.role_now().await?;
                if let Some(book) = book {
                    book.answered(endpoint, Some(role));
                }
                let behind = match role.in_recovery && max_lag > 0 {
                    true => server.replay_lag().await?,
                    false => 0,
                };
                let too_far = max_lag > 0 && behind > max_lag;
                if wanted.accepts(role) && !too_far {
                    server.role = Some(role);
                    return Ok(server.opened(generation));
                }
                unfit.push(if too_far {
                    format!("{endpoint} is a standby {behind} bytes of WAL behind (replica_max_lag {max_lag})")
                } else {
                    format!("{endpoint} is a {}", role.name())
                });
                server.close().await;
            }
        }
        Err(match last_error {
            Some(e) if unfit.is_empty() => e,
            last => ServerError::NoFit {
                hosts: target
                    .hosts
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                attrs: target.session_attrs.name(),
                found: unfit
                    .into_iter()
                    .chain(last.map(|e| e.to_string()))
                    .collect::<Vec<_>>()
                    .join("; "),
            },
        })
    }

    /// The role the server reported at login (`in_hot_standby` and
    /// `default_transaction_read_only`, PostgreSQL 14 and later).
    pub fn reported_role(&self) -> Option<Role> {
        let on = |v: Option<&str>| v.map(|v| v == "on");
        let in_recovery = on(self.params.get("in_hot_standby"))?;
        let read_only = on(self.params.get("default_transaction_read_only"))?;
        Some(Role {
            in_recovery,
            read_only: in_recovery || read_only,
        })
    }

    /// The facts SHOW SERVERS tells, once logged in.
    fn opened(mut self, generation: u64) -> Server {
        let mut info = ConnInfo::new(self.id, State::Idle);
        info.addr = Some(self.addr).into();
        info.local = self.stream.local_addr().ok().into();
        info.remote_pid = self.backend_pid;
        info.generation = generation;
        if let Some(tls) = self.stream.tls() {
            info.tls = crate::conninfo::tls_code(&tls.describe());
        }
        self.info = Arc::new(info);
        self
    }

    /// Primary or standby, writable or not: from what PostgreSQL 14 and
    /// later report at login (`in_hot_standby`,
    /// `default_transaction_read_only`), else asked, as libpq does.
    async fn role_now(&mut self) -> Result<Role, ServerError> {
        if let Some(role) = self.reported_role() {
            return Ok(role);
        }
        let mut notices = bytes::BytesMut::new();
        let rows = self
            .query_rows(
                "SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.current_setting('transaction_read_only')",
                &mut notices,
            )
            .await?;
        let row = rows
            .first()
            .and_then(|r| data_row(r))
            .ok_or_else(|| ServerError::Protocol("no answer to the role query".into()))?;
        let in_recovery = row.first().copied().flatten() == Some(b"t".as_slice());
        let read_only = row.get(1).copied().flatten() == Some(b"on".as_slice());
        Ok(Role {
            in_recovery,
            read_only: in_recovery || read_only,
        })
    }
}

impl Server {
    /// Bytes of WAL this standby has received and not yet replayed.
    pub(crate) async fn replay_lag(&mut self) -> Result<u64, ServerError> {
        let mut notices = bytes::BytesMut::new();
        let rows = self
            .query_rows(
                "SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_last_wal_receive_lsn(), pg_catalog.pg_last_wal_replay_lsn())::bigint",
                &mut notices,
            )
            .await?;
        let lag = rows
            .first()
            .and_then(|r| data_row(r))
            .and_then(|row| row.first().copied().flatten())
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
            .unwrap_or(0);
        Ok(lag.max(0) as u64)
    }
}

/// Fisher-Yates, per connection.
fn shuffle<T>(items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = rand::random_range(0..=i);
        items.swap(i, j);
    }
}
