//! End-to-end: real clients through pgmux to a real PostgreSQL.
#![allow(clippy::unwrap_used)]

mod proxy {
    pub mod basics;
    pub mod protocol;
    pub mod python;
}
