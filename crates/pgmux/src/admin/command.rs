//! The shape every console command has: a name, who may run it, what
//! argument it takes, and a body that writes its reply.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::BytesMut;
use pgmux_wire::reply::{self, ColumnType};

use crate::pool::Pools;

/// Who is at the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `admin_users`: every command.
    Admin,
    /// `stats_users`: SHOW commands only.
    Stats,
}

/// What a command accepts after its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    Nothing,
    OptionalDatabase,
    Database,
}

/// A console error: SQLSTATE 08P01 like PgBouncer's, with its message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AdminError(pub String);

/// What a command runs with.
pub struct Ctx {
    pub pools: Arc<Pools>,
}

pub type Running<'a> = Pin<Box<dyn Future<Output = Result<BytesMut, AdminError>> + Send + 'a>>;

pub trait Command: Sync {
    /// The words that name it, upper case: "SHOW POOLS", "PAUSE".
    fn name(&self) -> &'static str;
    /// SHOW commands are open to stats users; the rest need an admin.
    fn admin_only(&self) -> bool {
        !self.name().starts_with("SHOW")
    }
    fn arg(&self) -> Arg {
        Arg::Nothing
    }
    /// Write the reply (rows or tag, without ReadyForQuery).
    fn run<'a>(&'a self, ctx: &'a Ctx, database: Option<&'a str>) -> Running<'a>;
}

/// A result set under construction, in PgBouncer's text format.
pub struct Rows {
    out: BytesMut,
    width: usize,
}

impl Rows {
    pub fn new(columns: &[(&str, ColumnType)]) -> Rows {
        let mut out = BytesMut::new();
        reply::row_description(&mut out, columns);
        Rows {
            out,
            width: columns.len(),
        }
    }

    pub fn row(&mut self, values: &[Option<&str>]) {
        debug_assert_eq!(values.len(), self.width, "a row must fill every column");
        reply::data_row(&mut self.out, values);
    }

    /// Every SHOW completes with the bare tag `SHOW`, as PgBouncer's do.
    pub fn finish(mut self) -> BytesMut {
        reply::command_complete(&mut self.out, "SHOW");
        self.out
    }
}

/// A reply that is only a command tag.
pub fn tag(name: &str) -> BytesMut {
    let mut out = BytesMut::new();
    reply::command_complete(&mut out, name);
    out
}

/// Box a synchronous reply as a running command.
pub fn ready<'a>(reply: Result<BytesMut, AdminError>) -> Running<'a> {
    Box::pin(std::future::ready(reply))
}

/// Text of a number, for a DataRow.
pub fn num(n: impl std::fmt::Display) -> String {
    n.to_string()
}

/// The database argument must name a database pgmux knows.
pub fn known_database(pools: &Pools, database: &str) -> Result<(), AdminError> {
    if pools.database_names().contains(database) {
        Ok(())
    } else {
        Err(AdminError(format!("no such database: {database}")))
    }
}
