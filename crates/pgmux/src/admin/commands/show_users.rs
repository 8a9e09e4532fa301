//! SHOW USERS: users pgmux knows (configured, or with a pool).

use std::collections::BTreeSet;

use pgmux_wire::reply::ColumnType::Text;

use crate::admin::command::{ready, Command, Ctx, Rows, Running};

pub struct ShowUsers;

impl Command for ShowUsers {
    fn name(&self) -> &'static str {
        "SHOW USERS"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, _: Option<&'a str>) -> Running<'a> {
        let mut names: BTreeSet<String> = ctx.pools.user_names();
        names.extend(ctx.pools.all().iter().map(|p| p.user.clone()));
        let mut rows = Rows::new(&[("name", Text), ("pool_mode", Text)]);
        for name in &names {
            // pool_mode is per user in PgBouncer; pgmux has none: NULL.
            rows.row(&[Some(name), None]);
        }
        ready(Ok(rows.finish()))
    }
}
