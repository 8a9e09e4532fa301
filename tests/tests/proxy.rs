//! End-to-end: real clients through pgmux to a real PostgreSQL.
#![allow(clippy::unwrap_used)]

mod proxy {
    pub mod auth;
    pub mod auth_query;
    pub mod basics;
    pub mod cancel;
    pub mod console;
    pub mod console_columns;
    pub mod edges;
    pub mod failover;
    pub mod faults;
    pub mod hostile;
    pub mod isolation;
    pub mod lifecycle;
    pub mod observability;
    pub mod outage;
    pub mod pooling;
    pub mod prepared_statements;
    pub mod prometheus;
    pub mod protocol;
    pub mod python;
    pub mod replicas;
    pub mod session_state;
    pub mod timeouts;
    pub mod tls;
    pub mod tls_servers;
}
