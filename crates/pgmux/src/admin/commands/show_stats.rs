//! SHOW STATS: per database, totals since start and the last stats
//! period's averages (times in microseconds).

use pgmux_wire::reply::ColumnType::{Numeric, Text};

use crate::admin::command::{num, ready, Command, Ctx, Rows, Running};
use crate::stats::by_database;

pub struct ShowStats;

impl Command for ShowStats {
    fn name(&self) -> &'static str {
        "SHOW STATS"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, _: Option<&'a str>) -> Running<'a> {
        let mut rows = Rows::new(&[
            ("database", Text),
            ("total_xact_count", Numeric),
            ("total_query_count", Numeric),
            ("total_received", Numeric),
            ("total_sent", Numeric),
            ("total_xact_time", Numeric),
            ("total_query_time", Numeric),
            ("total_wait_time", Numeric),
            ("avg_xact_count", Numeric),
            ("avg_query_count", Numeric),
            ("avg_recv", Numeric),
            ("avg_sent", Numeric),
            ("avg_xact_time", Numeric),
            ("avg_query_time", Numeric),
            ("avg_wait_time", Numeric),
            // Gone from PgBouncer since 1.8, but Debian's exporter (1.7)
            // still reads it and fails without it: the query count.
            ("total_requests", Numeric),
        ]);
        for (database, (t, a)) in by_database(&ctx.pools) {
            let cells = [
                t.xacts, t.queries, t.received, t.sent, t.xact_us, t.query_us, t.wait_us, a.xacts,
                a.queries, a.received, a.sent, a.xact_us, a.query_us, a.wait_us, t.queries,
            ]
            .map(num);
            let mut row: Vec<Option<&str>> = vec![Some(&database)];
            row.extend(cells.iter().map(|c| Some(c.as_str())));
            rows.row(&row);
        }
        ready(Ok(rows.finish()))
    }
}
