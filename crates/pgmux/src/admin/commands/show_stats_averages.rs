//! SHOW STATS_AVERAGES: per database, the last stats period's rates (per
//! second) and mean times (microseconds).

use crate::admin::command::{num, ready, Command, Ctx, Rows, Running};
use crate::stats::by_database;

use super::show_stats_totals::COLUMNS;

pub struct ShowStatsAverages;

impl Command for ShowStatsAverages {
    fn name(&self) -> &'static str {
        "SHOW STATS_AVERAGES"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, _: Option<&'a str>) -> Running<'a> {
        let mut rows = Rows::new(COLUMNS);
        for (database, (_, a)) in by_database(&ctx.pools) {
            let cells = [
                a.xacts, a.queries, a.received, a.sent, a.xact_us, a.query_us, a.wait_us,
            ]
            .map(num);
            let mut row: Vec<Option<&str>> = vec![Some(&database)];
            row.extend(cells.iter().map(|c| Some(c.as_str())));
            rows.row(&row);
        }
        ready(Ok(rows.finish()))
    }
}
