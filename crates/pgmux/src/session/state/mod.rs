//! Session state: what a client leaves on its server beyond a transaction,
//! and how pgmux follows it. [`watch`] notes, as messages pass, when a
//! transaction may have left some; [`pins`] is the state that keeps a
//! client on its server and the query that finds it; [`align`] brings a
//! server's settings in line with its client's. [`words`] and [`ddl`] read
//! statement texts (once per statement) for what the others look for.

pub(super) mod align;
pub(crate) mod ddl;
pub mod pins;
pub mod watch;
pub(crate) mod words;
