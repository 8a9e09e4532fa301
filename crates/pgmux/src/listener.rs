//! Accepting clients: caps them at `max_client_conn` and starts each one's
//! session on a worker, until a shutdown begins.
//!
//! With `so_reuseport` every worker has a listener of its own on the port
//! and the kernel spreads connections among them; otherwise one listener,
//! on worker 0, hands connections to the workers in turn (which costs the
//! receiving worker a wake-up, and moving the socket between reactors).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};

use crate::io::{uring, Stream};
use crate::session::{self, Shared};
use crate::stats::{self, LoginFailure};

/// A connection handed to a worker by the one that accepted it.
pub type Handoff = std::net::TcpStream;

/// What accepting needs on every worker.
pub struct Acceptor {
    pub shared: Arc<Shared>,
    /// `max_client_conn` places, shared by all workers.
    pub slots: Arc<Semaphore>,
    /// Where connections are handed to each worker.
    pub inboxes: Vec<mpsc::UnboundedSender<Handoff>>,
}

/// Run worker `index`: accept on `listener` if it has one (handing
/// connections to other workers when it is the only listener), and serve
/// connections handed to it, until a drain begins.
pub async fn run_worker(
    index: usize,
    acceptor: Arc<Acceptor>,
    listener: Option<std::net::TcpListener>,
    hand_out: bool,
    mut inbox: mpsc::UnboundedReceiver<Handoff>,
) {
    let listener = match listener.map(Listening::new).transpose() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the client listener");
            None
        }
    };
    let lifecycle = acceptor.shared.pools.lifecycle.clone();
    let still_accepting = lifecycle.accepting.token();
    let mut next = index;
    loop {
        tokio::select! {
            accepted = accept(listener.as_ref()) => match accepted {
                Ok(stream) => {
                    let target = if hand_out { next } else { index };
                    next += 1;
                    send_to(&acceptor, index, target, stream);
                }
                Err(e) => {
                    // Out of file descriptors or similar: back off briefly
                    // rather than spin; existing clients keep being served.
                    tracing::error!(error = %e, "accept failed");
                    crate::io::sleep(Duration::from_millis(50)).await;
                }
            },
            handed = inbox.recv() => match handed {
                Some(stream) => admit_std(stream, &acceptor),
                None => break,
            },
            _ = lifecycle.drain_started() => break,
        }
    }
    // Connections the kernel queued before we stopped would be reset when
    // the socket closes: take them, so they log in and are told why they
    // are closed (57P01) rather than refused.
    if let Some(listener) = listener {
        for stream in listener.accepted_already() {
            admit_std(stream, &acceptor);
        }
        if let Ok(std_listener) = listener.into_std() {
            let _ = std_listener.set_nonblocking(true);
            while let Ok((stream, _)) = std_listener.accept() {
                admit_std(stream, &acceptor);
            }
            // Stop listening now rather than when the last reference goes:
            // a ring's accept keeps the socket alive until the kernel tears
            // the ring down, after the process exits, and meanwhile the
            // kernel would keep queueing a shared port's connections here
            // only to reset them. shutdown() leaves the SO_REUSEPORT group
            // at once and ends that accept.
            let _ = socket2::SockRef::from(&std_listener).shutdown(std::net::Shutdown::Read);
        }
        tracing::info!(worker = index, "stopped accepting new clients");
    }
    // Connections handed over meanwhile are served too.
    while let Ok(stream) = inbox.try_recv() {
        admit_std(stream, &acceptor);
    }
    drop(still_accepting);
}

/// A listening socket on this worker's backend.
enum Listening {
    Tokio(tokio::net::TcpListener),
    Uring(uring::Listener),
}

impl Listening {
    fn new(listener: std::net::TcpListener) -> std::io::Result<Listening> {
        listener.set_nonblocking(true)?;
        if uring::active() {
            uring::Listener::from_std(listener).map(Listening::Uring)
        } else {
            tokio::net::TcpListener::from_std(listener).map(Listening::Tokio)
        }
    }

    /// Connections the ring accepted that no one has taken yet.
    fn accepted_already(&self) -> Vec<std::net::TcpStream> {
        match self {
            Listening::Tokio(_) => Vec::new(),
            Listening::Uring(l) => l.take_ready(),
        }
    }

    fn into_std(self) -> std::io::Result<std::net::TcpListener> {
        match self {
            Listening::Tokio(l) => l.into_std(),
            Listening::Uring(l) => l.into_std(),
        }
    }
}

/// The next connection on `listener` (never, without one).
async fn accept(listener: Option<&Listening>) -> std::io::Result<Stream> {
    match listener {
        Some(Listening::Tokio(l)) => l.accept().await.map(|(s, _)| Stream::Tokio(s)),
        Some(Listening::Uring(l)) => l.accept().await.map(Stream::Uring),
        None => std::future::pending().await,
    }
}

fn send_to(acceptor: &Acceptor, me: usize, target: usize, stream: Stream) {
    let target = target % acceptor.inboxes.len().max(1);
    if target == me {
        return admit(stream, acceptor);
    }
    // Out of this worker's reactor, into the target's.
    let std = match stream {
        Stream::Tokio(s) => s.into_std(),
        Stream::Uring(s) => s.into_std(),
        // Accepted sockets are plain; TLS starts after the hand-over.
        Stream::Tls(_) => Err(std::io::Error::other("a TLS session cannot change workers")),
    };
    let moved = std.map(|s| acceptor.inboxes[target].send(s));
    match moved {
        Ok(Ok(())) => {}
        // That worker is gone (shutting down): serve it here.
        Ok(Err(back)) => admit_std(back.0, acceptor),
        Err(e) => tracing::warn!(error = %e, "cannot hand a client connection over"),
    }
}

/// Start a session for a connection handed to this worker.
fn admit_std(stream: std::net::TcpStream, acceptor: &Acceptor) {
    match Stream::from_std(stream) {
        Ok(s) => admit(s, acceptor),
        Err(e) => tracing::warn!(error = %e, "cannot register a client connection"),
    }
}

/// Start a session for `stream` on this worker.
fn admit(stream: Stream, acceptor: &Acceptor) {
    let shared = &acceptor.shared;
    let tracker = &shared.pools.lifecycle.sessions;
    match acceptor.slots.clone().try_acquire_owned() {
        Ok(slot) => {
            crate::io::spawn(tracker.track_future(session::ClientTask::new(
                stream,
                shared.clone(),
                slot,
            )));
        }
        Err(_) => {
            stats::login_failed(LoginFailure::TooManyClients);
            let mut stream = stream;
            crate::io::spawn(tracker.track_future(async move {
                session::refuse(
                    &mut stream,
                    "53300",
                    "sorry, too many clients already (max_client_conn)",
                )
                .await;
            }));
        }
    }
}
