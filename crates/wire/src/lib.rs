#![cfg_attr(test, allow(clippy::unwrap_used))]
//! The PostgreSQL v3 wire protocol as pgmux needs it: nothing here knows about
//! sockets, pools or configuration, so every piece is pure and unit-tested.
//!
//! - [`frame`]: message headers, length checks, whole-message extraction.
//! - [`startup`]: the untagged first packet (startup, SSL, GSSENC, cancel).
//! - [`reply`]: the messages pgmux writes itself.
//! - [`backend`]: typed views of the few server messages pgmux reads.
//! - [`auth`]: checking a client's password (SCRAM-SHA-256, MD5, cleartext).
//! - [`scram_client`]: logging in to PostgreSQL from SCRAM keys, not a password.

pub mod auth;
pub mod backend;
pub mod frame;
pub mod reply;
pub mod scram_client;
pub mod startup;

pub use frame::{Frame, FrameError};
