//! PAUSE [db]: let transactions in flight finish, hold new ones, then close
//! the idle servers. Replies once no server of the database is lent out.

use crate::admin::command::{known_database, tag, Arg, Command, Ctx, Running};
use crate::stats::CloseReason;

use super::settle;

pub struct Pause;

impl Command for Pause {
    fn name(&self) -> &'static str {
        "PAUSE"
    }

    fn arg(&self) -> Arg {
        Arg::OptionalDatabase
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, database: Option<&'a str>) -> Running<'a> {
        Box::pin(async move {
            if let Some(db) = database {
                known_database(&ctx.pools, db)?;
            }
            ctx.pools.pause(database);
            settle(|| {
                ctx.pools
                    .of(database)
                    .iter()
                    .all(|p| p.stats.servers_active.get() == 0)
            })
            .await;
            for pool in ctx.pools.of(database) {
                pool.close_idle(CloseReason::Reconnect);
            }
            Ok(tag("PAUSE"))
        })
    }
}
