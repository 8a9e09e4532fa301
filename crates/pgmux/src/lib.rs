//! pgmux: a transaction-pooling PostgreSQL proxy.
pub mod config;
