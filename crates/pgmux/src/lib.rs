#![cfg_attr(test, allow(clippy::unwrap_used))]
//! pgmux: a transaction-pooling PostgreSQL proxy. See the README for the map
//! of where each concern lives.

pub mod admin;
pub mod app;
pub mod cancel;
pub mod config;
pub mod conninfo;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod http;
pub mod io;
pub mod lifecycle;
pub mod listener;
pub mod params;
pub mod peering;
pub mod pool;
pub mod prepared;
pub mod reload;
pub mod server;
pub mod session;
pub mod stats;
pub mod tls;
pub mod workers;
