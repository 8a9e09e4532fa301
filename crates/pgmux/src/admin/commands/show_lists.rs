//! SHOW LISTS: counts of pgmux's objects, under PgBouncer's twelve names
//! (the DNS ones are always 0: pgmux resolves through the system).

use pgmux_wire::reply::ColumnType::{Int4, Text};

use crate::admin::command::{num, ready, Command, Ctx, Rows, Running};
use crate::stats;

pub struct ShowLists;

impl Command for ShowLists {
    fn name(&self) -> &'static str {
        "SHOW LISTS"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, _: Option<&'a str>) -> Running<'a> {
        let pools = ctx.pools.all();
        let config = ctx.pools.config();
        let connections = stats::client_connections_open();
        let logged_in: u64 = pools.iter().map(|p| p.stats.clients.get()).sum();
        let open_servers: u64 = pools.iter().map(|p| u64::from(p.open_servers())).sum();
        let capacity: u64 = pools.iter().map(|p| u64::from(p.size())).sum();
        let items = [
            ("databases", ctx.pools.database_names().len() as u64),
            ("users", ctx.pools.user_names().len() as u64),
            ("pools", pools.len() as u64),
            (
                "free_clients",
                u64::from(config.max_client_conn).saturating_sub(connections),
            ),
            ("used_clients", logged_in),
            ("login_clients", connections.saturating_sub(logged_in)),
            ("free_servers", capacity.saturating_sub(open_servers)),
            ("used_servers", open_servers),
            ("dns_names", 0),
            ("dns_zones", 0),
            ("dns_queries", 0),
            ("dns_pending", 0),
        ];
        let mut rows = Rows::new(&[("list", Text), ("items", Int4)]);
        for (name, count) in items {
            rows.row(&[Some(name), Some(&num(count))]);
        }
        ready(Ok(rows.finish()))
    }
}
