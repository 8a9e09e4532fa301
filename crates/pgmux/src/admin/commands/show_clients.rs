//! SHOW CLIENTS: every logged-in client of every pool.

use super::connections;
use crate::admin::command::{ready, Command, Ctx, Running};

pub struct ShowClients;

impl Command for ShowClients {
    fn name(&self) -> &'static str {
        "SHOW CLIENTS"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, _: Option<&'a str>) -> Running<'a> {
        let mut rows = connections::rows();
        for pool in ctx.pools.all() {
            let mut clients = pool.clients();
            clients.sort_by_key(|c| c.id);
            for client in clients {
                connections::row(&mut rows, "C", &pool, &client, false);
            }
        }
        ready(Ok(rows.finish()))
    }
}
