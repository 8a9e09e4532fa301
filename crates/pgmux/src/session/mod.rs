//! The client side of pgmux: one task per client connection ([`task`]),
//! from the startup packet to the last byte. [`login`] gets the client in;
//! [`relay`] waits for its requests and lends it servers, driving the
//! protocol state machines of [`flow`]; [`state`] follows what a client leaves on a server
//! (settings, pins). Tests of the flows, and the PostgreSQL model they run
//! against, are in `tests/`.

pub(crate) mod flow;
mod login;
mod relay;
pub mod state;
mod task;
#[cfg(test)]
mod tests;

pub use flow::expect::Expect;
pub use flow::server_flow::ServerFlow;
pub use login::refuse;
pub use state::ddl::{dropped_database, may_forget_statements};
pub use task::ClientTask;

use std::sync::Arc;

use crate::cancel::Cancels;
use crate::conninfo::ConnInfo;
use crate::params::ParamMap;
use crate::pool::{CheckoutError, Pools};

/// What every session shares.
pub struct Shared {
    pub pools: Arc<Pools>,
    pub cancels: Arc<Cancels>,
    /// The address every client reaches pgmux at, when the listener names
    /// one: SHOW CLIENTS then needs no `getsockname` per login. (Behind a
    /// wildcard listener a client may arrive at any of the host's
    /// addresses, so its socket is asked.)
    pub local_addr: Option<std::net::SocketAddr>,
}

impl Shared {
    pub fn new(pools: Arc<Pools>) -> Shared {
        let peer_id = pools.config().peer_id;
        Shared {
            pools,
            cancels: Arc::new(Cancels::new(peer_id)),
            local_addr: None,
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

/// Everything the relay needs about a logged-in client.
pub struct Session {
    pub pool: Arc<crate::pool::Pool>,
    pub params: ParamMap,
    pub cancel: crate::cancel::CancelKey,
    /// The client's named statements (transaction mode rewrites them).
    pub statements: crate::prepared::ClientStatements,
    pub pools: Arc<Pools>,
    /// What SHOW CLIENTS tells of this client (its id files the logs);
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
