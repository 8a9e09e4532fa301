//! A client connection's task, from the startup packet to the last byte.
//!
//! Written as a hand-made future rather than an `async` block because most
//! clients are idle most of the time, and an idle client's task is all it
//! costs: an `async` block nesting login, relay and teardown kept every
//! phase's locals (and the compiler's padding between them) in each idle
//! client, about 500 bytes. Here an idle client is its [`Client`] and a tag;
//! each busier phase lives in a box made for it and freed when it ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::OwnedSemaphorePermit;

use super::login::{self, LoggedIn};
use super::relay::{self, Client, Idle, Turn};
use super::Shared;
use crate::admin;
use crate::io::Stream as TcpStream;
use crate::stats;

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the login phase hands on.
type Opened = (Option<login::Opened>, Arc<Shared>);

enum Phase {
    LoggingIn(Boxed<Opened>),
    /// Waiting for the client's next request: no box, no buffer.
    Idle(Client),
    /// A request (or a pinned server's news) is being served.
    Busy(Boxed<Turn>),
    /// Closing, or an admin console session.
    Ending(Boxed<()>),
    Done,
}

/// Serves one client connection to the end. `_slot` is the client's place
/// under `max_client_conn`, held to the end.
pub struct ClientTask {
    phase: Phase,
    _slot: OwnedSemaphorePermit,
    _open: ClientCount,
}

impl ClientTask {
    pub fn new(stream: TcpStream, shared: Arc<Shared>, slot: OwnedSemaphorePermit) -> ClientTask {
        let login = Box::pin(async move {
            let opened = login::open_session(stream, &shared).await;
            (opened, shared)
        });
        ClientTask {
            phase: Phase::LoggingIn(login),
            _slot: slot,
            _open: ClientCount::new(),
        }
    }
}

impl Future for ClientTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let phase = &mut self.get_mut().phase;
        loop {
            let next = match phase {
                Phase::LoggingIn(login) => match std::task::ready!(login.as_mut().poll(cx)) {
                    (None, _) => Phase::Done,
                    (Some((stream, LoggedIn::Pool(session), pending)), _) => {
                        Phase::Idle(Client::new(stream, session, pending))
                    }
                    (Some((stream, LoggedIn::Admin(admin), pending)), shared) => {
                        Phase::Ending(Box::pin(admin::run(stream, admin, shared, pending)))
                    }
                },
                Phase::Idle(client) => {
                    let idle = std::task::ready!(client.poll_idle(cx));
                    let Phase::Idle(client) = std::mem::replace(phase, Phase::Done) else {
                        unreachable!("matched as idle above")
                    };
                    match idle {
                        Ok(Idle::Request) => Phase::Busy(Box::pin(relay::serve_next(client))),
                        Ok(Idle::ServerNews) => Phase::Busy(Box::pin(relay::pass_news(client))),
                        Ok(Idle::Left) => Phase::Ending(Box::pin(relay::finish(client, Ok(())))),
                        Err(e) => Phase::Ending(Box::pin(relay::finish(client, Err(e)))),
                    }
                }
                Phase::Busy(turn) => match std::task::ready!(turn.as_mut().poll(cx)) {
                    (client, Ok(true)) => Phase::Idle(client),
                    (client, Ok(false)) => Phase::Ending(Box::pin(relay::finish(client, Ok(())))),
                    (client, Err(e)) => Phase::Ending(Box::pin(relay::finish(client, Err(e)))),
                },
                Phase::Ending(end) => {
                    std::task::ready!(end.as_mut().poll(cx));
                    Phase::Done
                }
                Phase::Done => return Poll::Ready(()),
            };
            *phase = next;
        }
    }
}

/// Keeps `pgmux_client_connections` while a client's task lives.
struct ClientCount;

impl ClientCount {
    fn new() -> ClientCount {
        stats::client_connection(1);
        ClientCount
    }
}

impl Drop for ClientCount {
    fn drop(&mut self) {
        stats::client_connection(-1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Pools;

    /// Every idle client keeps its task alive: keep it small, so that
    /// thousands of idle clients cost little.
    #[tokio::test]
    async fn an_idle_client_task_stays_small() {
        let cfg = crate::config::load(None, &Default::default()).unwrap();
        let secrets = Arc::new(cfg.user_secrets().unwrap());
        let shared = Arc::new(Shared::new(Arc::new(Pools::new(
            Arc::new(cfg),
            secrets,
            Arc::new(crate::tls::TlsSetup::disabled()),
        ))));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let slot = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        let task = ClientTask::new(TcpStream::Tokio(stream), shared, slot);
        let size = std::mem::size_of_val(&task);
        println!(
            "client task: {size} bytes, of which the idle client {} bytes",
            std::mem::size_of::<Client>()
        );
        assert!(size <= 256, "the client task grew to {size} bytes");
    }
}
