//! RELOAD: re-read proxy.toml, as SIGHUP does. A bad
//! configuration is refused and the running one kept.

use crate::admin::command::{ready, tag, AdminError, Command, Ctx, Running};

pub struct Reload;

impl Command for Reload {
    fn name(&self) -> &'static str {
        "RELOAD"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, _: Option<&'a str>) -> Running<'a> {
        ready(
            crate::reload::reload(&ctx.pools)
                .map(|()| tag("RELOAD"))
                .map_err(|e| AdminError(format!("RELOAD failed, configuration unchanged: {e}"))),
        )
    }
}
