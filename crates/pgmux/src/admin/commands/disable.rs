//! DISABLE db: refuse new client logins to the database (55000); clients
//! already in keep going.

use crate::admin::command::{known_database, ready, tag, Arg, Command, Ctx, Running};

pub struct Disable;

impl Command for Disable {
    fn name(&self) -> &'static str {
        "DISABLE"
    }

    fn arg(&self) -> Arg {
        Arg::Database
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, database: Option<&'a str>) -> Running<'a> {
        let db = database.unwrap_or_default();
        ready(known_database(&ctx.pools, db).map(|()| {
            ctx.pools.set_disabled(db, true);
            tag("DISABLE")
        }))
    }
}
