//! WAIT_CLOSE [db]: reply once every server that RECONNECT (or a reload
//! that moved the database) marked has closed.

use crate::admin::command::{known_database, tag, Arg, Command, Ctx, Running};

use super::settle;

pub struct WaitClose;

impl Command for WaitClose {
    fn name(&self) -> &'static str {
        "WAIT_CLOSE"
    }

    fn arg(&self) -> Arg {
        Arg::OptionalDatabase
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, database: Option<&'a str>) -> Running<'a> {
        Box::pin(async move {
            if let Some(db) = database {
                known_database(&ctx.pools, db)?;
            }
            settle(|| {
                ctx.pools
                    .of(database)
                    .iter()
                    .all(|p| p.stale_servers() == 0)
            })
            .await;
            Ok(tag("WAIT_CLOSE"))
        })
    }
}
