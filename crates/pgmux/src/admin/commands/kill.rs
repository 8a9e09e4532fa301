//! KILL db: close every client (FATAL 57P01) and server of the database at
//! once; it stays paused until RESUME, as in PgBouncer.

use crate::admin::command::{known_database, ready, tag, Arg, Command, Ctx, Running};

pub struct Kill;

impl Command for Kill {
    fn name(&self) -> &'static str {
        "KILL"
    }

    fn arg(&self) -> Arg {
        Arg::Database
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, database: Option<&'a str>) -> Running<'a> {
        let db = database.unwrap_or_default();
        ready(known_database(&ctx.pools, db).map(|()| {
            tracing::warn!(database = %db, "KILL: closing every client and server of the database");
            ctx.pools.kill(db);
            tag("KILL")
        }))
    }
}
