//! SHOW STATS_TOTALS: per database, totals since start.

use pgmux_wire::reply::ColumnType::{Numeric, Text};

use crate::admin::command::{num, ready, Command, Ctx, Rows, Running};
use crate::stats::by_database;

pub struct ShowStatsTotals;

/// The columns STATS_TOTALS and STATS_AVERAGES share.
pub const COLUMNS: &[(&str, pgmux_wire::reply::ColumnType)] = &[
    ("database", Text),
    ("xact_count", Numeric),
    ("query_count", Numeric),
    ("bytes_received", Numeric),
    ("bytes_sent", Numeric),
    ("xact_time", Numeric),
    ("query_time", Numeric),
    ("wait_time", Numeric),
];

impl Command for ShowStatsTotals {
    fn name(&self) -> &'static str {
        "SHOW STATS_TOTALS"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, _: Option<&'a str>) -> Running<'a> {
        let mut rows = Rows::new(COLUMNS);
        for (database, (t, _)) in by_database(&ctx.pools) {
            let cells = [
                t.xacts, t.queries, t.received, t.sent, t.xact_us, t.query_us, t.wait_us,
            ]
            .map(num);
            let mut row: Vec<Option<&str>> = vec![Some(&database)];
            row.extend(cells.iter().map(|c| Some(c.as_str())));
            rows.row(&row);
        }
        ready(Ok(rows.finish()))
    }
}
