//! The protocol flows: pure state machines, no sockets, that the relay
//! drives with whatever bytes it has read. [`client_flow`] takes the
//! client's messages (rewriting statement names in transaction mode with
//! [`rewrite`]), [`server_flow`] the server's replies (reading inside some
//! with [`replies`]); [`expect`] is the account between them of every reply
//! still owed. [`retry`] says when a request may be sent again, and
//! [`splice`] builds an edited byte run from the input.

pub(crate) mod client_flow;
pub(crate) mod expect;
pub(super) mod replies;
pub(crate) mod retry;
pub(super) mod rewrite;
pub(crate) mod server_flow;
mod splice;
