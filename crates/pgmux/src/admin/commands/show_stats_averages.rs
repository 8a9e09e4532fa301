//! SHOW STATS_AVERAGES: per database, the last stats period's rates (per
//! second) and mean times (microseconds).

use super::show_stats_totals::per_database;
use crate::admin::command::{ready, Command, Ctx, Running};

pub struct ShowStatsAverages;

impl Command for ShowStatsAverages {
    fn name(&self) -> &'static str {
        "SHOW STATS_AVERAGES"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, _: Option<&'a str>) -> Running<'a> {
        ready(Ok(per_database(ctx, |_, a| {
            [
                a.xacts, a.queries, a.received, a.sent, a.xact_us, a.query_us, a.wait_us,
            ]
        })))
    }
}
