//! SHOW SERVERS: every open server connection of every pool, with the
//! listed host it is on and its role.

use super::connections;
use crate::admin::command::{ready, Command, Ctx, Running};

pub struct ShowServers;

impl Command for ShowServers {
    fn name(&self) -> &'static str {
        "SHOW SERVERS"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, _: Option<&'a str>) -> Running<'a> {
        let mut rows = connections::server_rows();
        for pool in ctx.pools.all() {
            let generation = pool.generation();
            let mut servers = pool.servers();
            servers.sort_by_key(|s| s.info.id);
            for server in servers {
                let close_needed = server.info.generation < generation;
                let host = server.host.to_string();
                let role = server.role.map(|r| r.name());
                let extra = [Some(host.as_str()), role];
                connections::row_with(&mut rows, "S", &pool, &server.info, close_needed, &extra);
            }
        }
        ready(Ok(rows.finish()))
    }
}
