#![cfg_attr(test, allow(clippy::unwrap_used))]
//! pgmux: a transaction-pooling PostgreSQL proxy. See the README for the map
//! of where each concern lives.

pub mod app;
pub mod cancel;
pub mod config;
pub mod http;
pub mod listener;
pub mod params;
pub mod pool;
pub mod prepared;
pub mod server;
pub mod session;
pub mod stats;
