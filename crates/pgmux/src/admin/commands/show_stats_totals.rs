//! SHOW STATS_TOTALS: per database, totals since start.

use bytes::BytesMut;
use pgmux_wire::reply::ColumnType::{Numeric, Text};

use crate::admin::command::{num, ready, Command, Ctx, Rows, Running};
use crate::stats::{by_database, Averages, Snapshot};

pub struct ShowStatsTotals;

/// One row per database with the seven values `pick` chooses, under the
/// columns STATS_TOTALS and STATS_AVERAGES share.
pub fn per_database(ctx: &Ctx, pick: fn(&Snapshot, &Averages) -> [u64; 7]) -> BytesMut {
    let mut rows = Rows::new(&[
        ("database", Text),
        ("xact_count", Numeric),
        ("query_count", Numeric),
        ("bytes_received", Numeric),
        ("bytes_sent", Numeric),
        ("xact_time", Numeric),
        ("query_time", Numeric),
        ("wait_time", Numeric),
    ]);
    for (database, (totals, averages)) in by_database(&ctx.pools) {
        let cells = pick(&totals, &averages).map(num);
        let mut row: Vec<Option<&str>> = vec![Some(&database)];
        row.extend(cells.iter().map(|c| Some(c.as_str())));
        rows.row(&row);
    }
    rows.finish()
}

impl Command for ShowStatsTotals {
    fn name(&self) -> &'static str {
        "SHOW STATS_TOTALS"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, _: Option<&'a str>) -> Running<'a> {
        ready(Ok(per_database(ctx, |t, _| {
            [
                t.xacts, t.queries, t.received, t.sent, t.xact_us, t.query_us, t.wait_us,
            ]
        })))
    }
}
