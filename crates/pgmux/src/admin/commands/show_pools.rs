//! SHOW POOLS: one row per (database, user) pool, PgBouncer 1.18's columns.

use pgmux_wire::reply::ColumnType::{Int4, Text};

use crate::admin::command::{num, ready, Command, Ctx, Rows, Running};
use crate::config::PoolMode;

pub struct ShowPools;

impl Command for ShowPools {
    fn name(&self) -> &'static str {
        "SHOW POOLS"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, _: Option<&'a str>) -> Running<'a> {
        let mut rows = Rows::new(&[
            ("database", Text),
            ("user", Text),
            ("cl_active", Int4),
            ("cl_waiting", Int4),
            ("cl_active_cancel_req", Int4),
            ("cl_waiting_cancel_req", Int4),
            ("sv_active", Int4),
            ("sv_active_cancel", Int4),
            ("sv_being_canceled", Int4),
            ("sv_idle", Int4),
            ("sv_used", Int4),
            ("sv_tested", Int4),
            ("sv_login", Int4),
            ("maxwait", Int4),
            ("maxwait_us", Int4),
            ("pool_mode", Text),
        ]);
        for pool in ctx.pools.all() {
            let st = &pool.stats;
            let levels = pool.levels();
            let wait_us = levels.max_wait.as_micros();
            // PgBouncer counts a logged-in client without a request as
            // active ("linked or idle"); /metrics splits the two.
            let cl_active = st.clients_active.get() + st.clients_idle();
            let mode = match pool.mode {
                PoolMode::Transaction => "transaction",
                PoolMode::Session => "session",
            };
            let cells = [
                num(cl_active),
                num(st.clients_waiting.get()),
                num(0),
                num(0),
                num(st.servers_active.get()),
                num(0),
                num(0),
                num(levels.servers_idle),
                num(levels.servers_used),
                num(st.servers_tested.get()),
                num(st.servers_login.get()),
                num(wait_us / 1_000_000),
                num(wait_us % 1_000_000),
            ];
            let mut row: Vec<Option<&str>> = vec![Some(&pool.database), Some(&pool.user)];
            row.extend(cells.iter().map(|c| Some(c.as_str())));
            row.push(Some(mode));
            rows.row(&row);
        }
        ready(Ok(rows.finish()))
    }
}
