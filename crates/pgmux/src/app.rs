//! Start-up order and the shutdown sequence, in one place: check limits,
//! load users, bind the listeners, start the tasks; on a signal, drain and
//! stop. [`App`] is what tests and `main` hold.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError};
use crate::pool::Pools;
use crate::reload::ConfigSource;
use crate::session::Shared;
use crate::stats::CloseReason;
use crate::workers::{self, Workers};
use crate::{http, listener, reload, stats};

/// Descriptors per pgmux needs besides one per client: servers, the
/// listeners, log files and a margin.
const RESERVED_FDS: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("max_client_conn = {clients} needs about {needed} open files, but the limit is {limit}; raise `ulimit -n` (hard limit) or lower max_client_conn")]
    FileLimit {
        clients: u32,
        needed: u64,
        limit: u64,
    },
}

pub struct App {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub pools: Arc<Pools>,
    tasks: Vec<JoinHandle<()>>,
    workers: Workers,
}

impl App {
    /// Bind and start serving. Must be called inside a tokio runtime.
    pub async fn start(config: Config) -> Result<App, StartError> {
        App::start_with(config, None).await
    }

    /// Start, remembering where the configuration came from so SIGHUP and
    /// RELOAD can read it again.
    pub async fn start_with(
        config: Config,
        source: Option<ConfigSource>,
    ) -> Result<App, StartError> {
        config.validate()?;
        check_file_limit(&config)?;
        stats::recorder();
        // Latency histograms are recorded only when /metrics can read them.
        stats::record_histograms(config.metrics()?.is_some());
        let secrets = Arc::new(config.user_secrets()?);
        let tls = Arc::new(crate::tls::TlsSetup::load(&config)?);
        let listen = config.listen()?;
        let metrics = config.metrics()?;
        let max_clients = config.max_client_conn;
        let backlog = config.listen_backlog;
        let reuse_port = config.so_reuseport;
        let pools = Arc::new(Pools::new(Arc::new(config), secrets, tls));
        if let Some(source) = source {
            pools.set_source(source);
        }
        let mut shared = Shared::new(pools.clone());

        // Port 0 is never shared: with SO_REUSEPORT the kernel may hand two
        // processes the same ephemeral port.
        let tcp = pools.config().tcp_options();
        let bind = |addr: SocketAddr, backlog: u32| {
            listen_on(addr, backlog, reuse_port && addr.port() != 0, &tcp)
                .map_err(|source| StartError::Bind { addr, source })
        };
        let worker_count = workers::count(pools.config().worker_threads);
        let client_listener = bind(listen, backlog)?;
        let addr = client_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: listen,
                source,
            })?;
        // With so_reuseport each worker listens for itself; otherwise the
        // one listener hands connections to the workers in turn.
        let mut listeners = vec![Some(client_listener.into_std().map_err(|source| {
            StartError::Bind {
                addr: listen,
                source,
            }
        })?)];
        let own_listeners = reuse_port && addr.port() != 0 && worker_count > 1;
        for _ in 1..worker_count {
            listeners.push(if own_listeners {
                Some(
                    bind(addr, backlog)?
                        .into_std()
                        .map_err(|source| StartError::Bind { addr, source })?,
                )
            } else {
                None
            });
        }
        let (inboxes, receivers): (Vec<_>, Vec<_>) = (0..worker_count)
            .map(|_| tokio::sync::mpsc::unbounded_channel())
            .unzip();
        shared.local_addr = Some(addr).filter(|a| !a.ip().is_unspecified());
        let acceptor = Arc::new(listener::Acceptor {
            shared: Arc::new(shared),
            slots: Arc::new(tokio::sync::Semaphore::new(max_clients as usize)),
            inboxes,
        });
        let hand_out = !own_listeners && worker_count > 1;
        let mains: Vec<workers::WorkerMain> = listeners
            .into_iter()
            .zip(receivers)
            .enumerate()
            .map(|(index, (listener, inbox))| {
                let acceptor = acceptor.clone();
                let main: workers::WorkerMain = Box::new(move || {
                    Box::pin(listener::run_worker(
                        index, acceptor, listener, hand_out, inbox,
                    ))
                });
                main
            })
            .collect();
        let backend = workers::backend(pools.config().io_backend);
        let workers = Workers::start(mains, backend).map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(stats::upkeep()));
        tasks.push(tokio::spawn(stats::stats_loop(pools.clone())));
        tasks.push(tokio::spawn(drop_unused_pools(pools.clone())));
        let mut metrics_addr = None;
        if let Some(m) = metrics {
            let l = bind(m, 128)?;
            metrics_addr = Some(
                l.local_addr()
                    .map_err(|source| StartError::Bind { addr: m, source })?,
            );
            tasks.push(tokio::spawn(http::serve(l, pools.clone())));
        }
        tracing::info!(%addr, metrics = ?metrics_addr, workers = worker_count, io_backend = backend.name(), "pgmux is listening");
        Ok(App {
            addr,
            metrics_addr,
            pools,
            tasks,
            workers,
        })
    }

    /// Serve until the process is asked to stop. SIGHUP reloads the
    /// configuration; SIGTERM or SIGINT (or the console's SHUTDOWN) drains
    /// gracefully; a second SIGTERM/SIGINT stops at once.
    pub async fn run_until_signal(self) {
        let (Ok(mut hangup), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stopping");
            return self.stop();
        };
        let lifecycle = self.pools.lifecycle.clone();
        loop {
            tokio::select! {
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    let _ = reload::reload(&self.pools);
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = lifecycle.shutdown_requested() => break,
            }
        }
        let second_signal = async {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        tokio::select! {
            _ = self.shutdown() => {}
            _ = second_signal => {
                tracing::warn!("second signal: stopping at once");
            }
        }
    }

    /// The graceful shutdown: stop accepting (the listening socket closes,
    /// so with `so_reuseport` a successor takes every new connection),
    /// close idle clients, let transactions in flight finish for up to
    /// `shutdown_timeout`, then close whoever is left with FATAL 57P01.
    /// /metrics answers throughout.
    pub async fn shutdown(self) {
        let lifecycle = self.pools.lifecycle.clone();
        let timeout = self.pools.config().shutdown_timeout();
        stats::set_shutting_down();
        tracing::info!(?timeout, "shutting down: draining clients");
        self.pools.begin_drain();
        // Every worker first closes its listening socket and admits what
        // was queued on it; only then is the set of sessions complete.
        lifecycle.accepting.close();
        let _ = tokio::time::timeout(timeout, lifecycle.accepting.wait()).await;
        lifecycle.sessions.close();
        if tokio::time::timeout(timeout, lifecycle.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                clients = lifecycle.sessions.len(),
                "shutdown_timeout reached: closing the remaining clients"
            );
            self.pools.stop_now();
            // They are told at once; this only bounds a peer that will not
            // take the message.
            let _ = tokio::time::timeout(Duration::from_secs(5), lifecycle.sessions.wait()).await;
        }
        self.pools.stop_now();
        for pool in self.pools.all() {
            pool.close_idle(CloseReason::Reconnect);
        }
        tracing::info!("shutdown complete");
        for t in &self.tasks {
            t.abort();
        }
        // Wait for the workers, so their sockets and rings are closed
        // before the process is gone.
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || workers.join()).await;
    }

    /// Stop accepting and serving (tests use this between cases).
    pub fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.workers.stop();
    }
}

/// A listening socket with our own backlog: a burst of reconnecting clients
/// (a deploy, a lifetime expiry) should queue, not have SYNs dropped at the
/// 128 that tokio's own `bind` uses.
fn listen_on(
    addr: SocketAddr,
    backlog: u32,
    reuse_port: bool,
    tcp: &crate::io::TcpOptions,
) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        // Another pgmux may hold the port too (a restart that overlaps).
        socket.set_reuse_port(true)?;
    }
    // Accepted sockets inherit TCP_NODELAY from the listener (Linux), so
    // no login pays a setsockopt. Without it a reply written in two parts
    // (SCRAM's final message, then AuthenticationOk) waits for the
    // client's delayed ACK: 40 ms per login.
    socket.set_tcp_nodelay(true)?;
    // Keepalive and the user timeout are inherited too: taken at start, so
    // a reload changes them for new server connections only.
    tcp.apply(socket2::SockRef::from(&socket))?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    TcpListener::from_std(socket.into())
}

/// Raise the open-file soft limit to the hard limit, then check it can
/// carry `max_client_conn`.
fn check_file_limit(config: &Config) -> Result<(), StartError> {
    let limit = raise_nofile_limit();
    let needed = config.max_client_conn as u64 + config.pool_size as u64 + RESERVED_FDS;
    match limit {
        Some(limit) if limit < needed => Err(StartError::FileLimit {
            clients: config.max_client_conn,
            needed,
            limit,
        }),
        _ => Ok(()),
    }
}

/// The open-file soft limit after raising it as far as the hard limit
/// allows (`None` if it cannot be read).
fn raise_nofile_limit() -> Option<u64> {
    let (soft, hard) = rlimit::Resource::NOFILE.get().ok()?;
    if soft < hard && rlimit::Resource::NOFILE.set(hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

/// Once a second, drop the pools of wildcard databases that have had no
/// client for `autodb_idle_timeout` (see [`Pools::drop_unused_autodb`]).
async fn drop_unused_pools(pools: Arc<Pools>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        pools.drop_unused_autodb(std::time::Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_clients_have_nagle_off_without_a_setsockopt_each() {
        let tcp = crate::io::TcpOptions {
            keepalive: true,
            idle: 42,
            interval: 7,
            count: 3,
            user_timeout_ms: 9000,
        };
        let listener = listen_on("127.0.0.1:0".parse().unwrap(), 16, false, &tcp).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
        // And the keepalive settings, so a vanished client is noticed.
        let socket = socket2::SockRef::from(&accepted);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap().as_secs(), 42);
        assert_eq!(socket.tcp_keepalive_interval().unwrap().as_secs(), 7);
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 3);
        assert_eq!(
            socket.tcp_user_timeout().unwrap().map(|t| t.as_millis()),
            Some(9000)
        );
    }
}
