//! The client side of pgmux: one task per client connection, from the
//! startup packet to the last byte. [`login`] gets the client in; [`relay`]
//! is the one loop that lends it servers, driving the protocol state
//! machines of [`flow`]; [`state`] follows what a client leaves on a server
//! (settings, pins). Tests of the flows, and the PostgreSQL model they run
//! against, are in `tests/`.

mod flow;
mod login;
mod relay;
pub mod state;
#[cfg(test)]
mod tests;

pub use flow::expect::Expect;
pub use flow::server_flow::ServerFlow;
pub use login::refuse;
pub use state::ddl::{dropped_database, may_forget_statements};

use std::sync::Arc;

use crate::io::Stream as TcpStream;
use pgmux_wire::auth::{ScramVerifier, Secret};

use crate::admin;
use crate::cancel::Cancels;
use crate::conninfo::ConnInfo;
use crate::params::ParamMap;
use crate::pool::{CheckoutError, Pools};
use crate::stats;

/// What every session shares.
pub struct Shared {
    pub pools: Arc<Pools>,
    pub cancels: Arc<Cancels>,
    /// Stands in for an unknown user's verifier so the exchange looks alike.
    pub decoy: ScramVerifier,
}

impl Shared {
    pub fn new(pools: Arc<Pools>) -> Shared {
        let decoy = Secret::Plain(format!("{:x}", rand::random::<u128>()))
            .scram_verifier()
            .expect("plaintext secrets always yield a verifier");
        Shared {
            pools,
            cancels: Arc::new(Cancels::default()),
            decoy,
        }
    }
}

/// Why a client's session ends.
#[derive(Debug)]
pub enum ClientError {
    /// Tell the client (FATAL with this SQLSTATE), then close.
    Fatal { code: String, message: String },
    /// The client went away; nobody to tell.
    Gone,
}

impl ClientError {
    pub fn fatal(code: &str, message: String) -> ClientError {
        ClientError::Fatal {
            code: code.to_string(),
            message,
        }
    }
    fn io(_: std::io::Error) -> ClientError {
        ClientError::Gone
    }
}

impl From<CheckoutError> for ClientError {
    fn from(e: CheckoutError) -> Self {
        match &e {
            CheckoutError::WaitTimeout(_) => ClientError::fatal("08P01", e.to_string()),
            CheckoutError::Server(s) => ClientError::fatal(s.sqlstate(), s.to_string()),
        }
    }
}

/// Serve one client connection to the end.
///
/// Every idle client keeps this future, so it is kept small (see the size
/// test below): the login is boxed (large, and done with early), and this
/// is a plain fn returning an `async move` block because an `async fn`
/// would store its arguments again beside the futures it awaits. `slot` is
/// the client's place under `max_client_conn`, held to the end.
#[allow(clippy::manual_async_fn)] // deliberate: see the doc comment
pub fn serve(
    stream: TcpStream,
    shared: Arc<Shared>,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let _slot = slot;
        let _open = ClientCount::new();
        let Some((stream, logged_in)) = Box::pin(login::open_session(stream, &shared)).await else {
            return;
        };
        let session = match logged_in {
            login::LoggedIn::Pool(session) => session,
            login::LoggedIn::Admin(admin) => {
                Box::pin(admin::run(stream, admin, shared)).await;
                return;
            }
        };
        drop(shared);
        relay::run(stream, session).await;
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

/// Everything the relay needs about a logged-in client.
pub struct Session {
    pub pool: Arc<crate::pool::Pool>,
    pub params: ParamMap,
    pub cancel: crate::cancel::CancelKey,
    /// The client's named statements (transaction mode rewrites them).
    pub statements: crate::prepared::ClientStatements,
    pub pools: Arc<Pools>,
    /// What SHOW CLIENTS tells of this client; its span files the logs;
    /// its stop signal says when to leave.
    pub info: Arc<ConnInfo>,
    /// The server this client keeps between requests: in session mode from
    /// login to the end; in transaction mode while it holds session state
    /// there (what state: `info`'s pins).
    pub kept: Option<Box<crate::pool::Checkout>>,
}

impl Session {
    /// The session state pinning this client to its server.
    pub fn pins(&self) -> state::pins::Pins {
        state::pins::Pins::from_bits(self.info.pin_bits())
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// Every idle client keeps its session future alive: keep it small (big,
    /// rare steps are boxed), so thousands of idle clients cost little.
    #[tokio::test]
    async fn the_session_task_stays_small() {
        let cfg = crate::config::load(None, &Default::default()).unwrap();
        let secrets = Arc::new(cfg.user_secrets().unwrap());
        let shared = Arc::new(Shared::new(Arc::new(Pools::new(Arc::new(cfg), secrets))));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let stream = TcpStream::Tokio(stream);
        let slot = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        let future = serve(stream, shared, slot);
        let size = std::mem::size_of_val(&future);
        println!("session future: {size} bytes");
        assert!(size <= 576, "the session future grew to {size} bytes");
    }
}
