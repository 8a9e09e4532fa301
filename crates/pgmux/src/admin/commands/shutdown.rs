//! SHUTDOWN: the graceful shutdown SIGTERM starts (stop accepting, let
//! transactions finish up to shutdown_timeout, then 57P01). Unlike
//! PgBouncer, which exits at once, the caller gets its tag first.

use crate::admin::command::{ready, tag, Command, Ctx, Running};

pub struct Shutdown;

impl Command for Shutdown {
    fn name(&self) -> &'static str {
        "SHUTDOWN"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, _: Option<&'a str>) -> Running<'a> {
        tracing::info!("SHUTDOWN asked for at the admin console");
        ctx.pools.lifecycle.request_shutdown();
        ready(Ok(tag("SHUTDOWN")))
    }
}
