//! RECONNECT [db]: close idle servers now and lent ones when they come
//! back, so the next transactions run on fresh connections.

use crate::admin::command::{known_database, ready, tag, Arg, Command, Ctx, Running};

pub struct Reconnect;

impl Command for Reconnect {
    fn name(&self) -> &'static str {
        "RECONNECT"
    }

    fn arg(&self) -> Arg {
        Arg::OptionalDatabase
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, database: Option<&'a str>) -> Running<'a> {
        let checked = database.map_or(Ok(()), |db| known_database(&ctx.pools, db));
        ready(checked.map(|()| {
            for pool in ctx.pools.of(database) {
                pool.reconnect();
            }
            tag("RECONNECT")
        }))
    }
}
