//! Start-up order in one place: check limits, load users, bind the
//! listeners, start the tasks. [`App`] is what tests and `main` hold.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError};
use crate::pool::Pools;
use crate::session::Shared;
use crate::{http, listener, stats};

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
}

impl App {
    /// Bind and start serving. Must be called inside a tokio runtime.
    pub async fn start(config: Config) -> Result<App, StartError> {
        config.validate()?;
        check_file_limit(&config)?;
        stats::recorder();
        let secrets = Arc::new(config.user_secrets()?);
        let listen = config.listen()?;
        let metrics = config.metrics()?;
        let max_clients = config.max_client_conn;
        let backlog = config.listen_backlog;
        let pools = Arc::new(Pools::new(Arc::new(config), secrets));
        let shared = Arc::new(Shared::new(pools.clone()));

        let bind = |addr: SocketAddr, backlog: u32| {
            listen_on(addr, backlog).map_err(|source| StartError::Bind { addr, source })
        };
        let client_listener = bind(listen, backlog)?;
        let addr = client_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: listen,
                source,
            })?;
        let mut tasks = vec![tokio::spawn(listener::accept_loop(
            client_listener,
            shared,
            max_clients,
        ))];
        tasks.push(tokio::spawn(stats::upkeep()));
        let mut metrics_addr = None;
        if let Some(m) = metrics {
            let l = bind(m, 128)?;
            metrics_addr = Some(
                l.local_addr()
                    .map_err(|source| StartError::Bind { addr: m, source })?,
            );
            tasks.push(tokio::spawn(http::serve(l, pools.clone())));
        }
        tracing::info!(%addr, metrics = ?metrics_addr, "pgmux is listening");
        Ok(App {
            addr,
            metrics_addr,
            pools,
            tasks,
        })
    }

    /// Serve until the process is asked to stop (SIGINT or SIGTERM).
    pub async fn run_until_signal(self) {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminated => {}
        }
        tracing::info!("shutting down");
        self.stop();
    }

    /// Stop accepting and serving (tests use this between cases).
    pub fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A listening socket with our own backlog: a burst of reconnecting clients
/// (a deploy, a lifetime expiry) should queue, not have SYNs dropped at the
/// 128 that tokio's own `bind` uses.
fn listen_on(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
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

#[allow(unsafe_code)]
fn raise_nofile_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    Some(lim.rlim_cur)
}
