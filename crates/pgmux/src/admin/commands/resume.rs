//! RESUME [db]: undo PAUSE (and the pause KILL leaves behind).

use crate::admin::command::{known_database, ready, tag, AdminError, Arg, Command, Ctx, Running};

pub struct Resume;

impl Command for Resume {
    fn name(&self) -> &'static str {
        "RESUME"
    }

    fn arg(&self) -> Arg {
        Arg::OptionalDatabase
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, database: Option<&'a str>) -> Running<'a> {
        let pools = &ctx.pools;
        let result = match database {
            Some(db) => known_database(pools, db).and_then(|()| {
                if pools.is_paused(db) {
                    Ok(())
                } else {
                    Err(AdminError(format!("database {db} is not paused")))
                }
            }),
            None if pools.any_paused() => Ok(()),
            None => Err(AdminError("pooler is not paused".into())),
        };
        ready(result.map(|()| {
            pools.resume(database);
            tag("RESUME")
        }))
    }
}
