//! SHOW VERSION.

use pgmux_wire::reply::ColumnType::Text;

use crate::admin::command::{ready, Command, Ctx, Rows, Running};

pub struct ShowVersion;

/// Names the PgBouncer console release pgmux's output follows, for tools
/// that pick columns by version.
pub const VERSION: &str = concat!(
    "pgmux ",
    env!("CARGO_PKG_VERSION"),
    " (PgBouncer 1.18.0 compatible console)"
);

impl Command for ShowVersion {
    fn name(&self) -> &'static str {
        "SHOW VERSION"
    }

    fn run<'a>(&'a self, _: &'a Ctx, _: Option<&'a str>) -> Running<'a> {
        let mut rows = Rows::new(&[("version", Text)]);
        rows.row(&[Some(VERSION)]);
        ready(Ok(rows.finish()))
    }
}
