//! SHOW HELP: the command list, as a NOTICE (as PgBouncer sends it).

use bytes::BytesMut;
use pgmux_wire::reply;

use crate::admin::command::{ready, Command, Ctx, Running};

pub struct ShowHelp;

const USAGE: &str = "
\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION|LISTS
\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES
\tRELOAD
\tPAUSE [<db>]
\tRESUME [<db>]
\tDISABLE <db>
\tENABLE <db>
\tRECONNECT [<db>]
\tKILL <db>
\tSHUTDOWN
\tWAIT_CLOSE [<db>]";

impl Command for ShowHelp {
    fn name(&self) -> &'static str {
        "SHOW HELP"
    }

    fn run<'a>(&'a self, _: &'a Ctx, _: Option<&'a str>) -> Running<'a> {
        let mut out = BytesMut::new();
        reply::notice(&mut out, "Console usage", USAGE);
        reply::command_complete(&mut out, "SHOW");
        ready(Ok(out))
    }
}
