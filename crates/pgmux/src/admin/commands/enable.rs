//! ENABLE db: accept logins to a database DISABLE closed.

use crate::admin::command::{known_database, ready, tag, Arg, Command, Ctx, Running};

pub struct Enable;

impl Command for Enable {
    fn name(&self) -> &'static str {
        "ENABLE"
    }

    fn arg(&self) -> Arg {
        Arg::Database
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, database: Option<&'a str>) -> Running<'a> {
        let db = database.unwrap_or_default();
        ready(known_database(&ctx.pools, db).map(|()| {
            ctx.pools.set_disabled(db, false);
            tag("ENABLE")
        }))
    }
}
