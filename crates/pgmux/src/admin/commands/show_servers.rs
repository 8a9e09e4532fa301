//! SHOW SERVERS: every open server connection of every pool.

use super::connections;
use crate::admin::command::{ready, Command, Ctx, Running};

pub struct ShowServers;

impl Command for ShowServers {
    fn name(&self) -> &'static str {
        "SHOW SERVERS"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, _: Option<&'a str>) -> Running<'a> {
        let mut rows = connections::rows();
        for pool in ctx.pools.all() {
            let generation = pool.generation();
            let mut servers = pool.servers();
            servers.sort_by_key(|s| s.id);
            for server in servers {
                let close_needed = server.generation < generation;
                connections::row(&mut rows, "S", &pool, &server, close_needed);
            }
        }
        ready(Ok(rows.finish()))
    }
}
