//! SHOW DATABASES: each database clients can name, where it really lives,
//! and its limits and switches. `database` is the server-side name; `host`
//! the configured list, and `primary` (after PgBouncer's columns) the one
//! found writable: by an open server of the database, else by the last
//! login to each listed host.

use pgmux_wire::reply::ColumnType::{Int4, Text};

use crate::admin::command::{num, ready, Command, Ctx, Rows, Running};

pub struct ShowDatabases;

impl Command for ShowDatabases {
    fn name(&self) -> &'static str {
        "SHOW DATABASES"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, _: Option<&'a str>) -> Running<'a> {
        let pools = &ctx.pools;
        let config = pools.config();
        let mut rows = Rows::new(&[
            ("name", Text),
            ("host", Text),
            ("port", Int4),
            ("database", Text),
            ("force_user", Text),
            ("pool_size", Int4),
            ("min_pool_size", Int4),
            ("reserve_pool", Int4),
            ("pool_mode", Text),
            ("max_connections", Int4),
            ("current_connections", Int4),
            ("paused", Int4),
            ("disabled", Int4),
            ("primary", Text),
        ]);
        for name in pools.database_names() {
            let of_db = pools.of(Some(&name));
            // A database dropped from the config by a reload still shows
            // while its pools serve clients.
            let Some(target) = config
                .target(&name)
                .or_else(|| of_db.first().map(|p| p.target()))
            else {
                continue;
            };
            let size = of_db
                .first()
                .map(|p| p.size())
                .unwrap_or_else(|| config.pool_size_for(&name));
            let current: u32 = of_db.iter().map(|p| p.open_servers()).sum();
            let hosts = target.hosts_text();
            let primary = of_db
                .iter()
                .flat_map(|p| p.servers())
                .find(|s| s.role.is_some_and(|r| r.is_primary()))
                .map(|s| s.host.to_string())
                .or_else(|| {
                    let book = of_db.first()?.target().book?;
                    book.primary_among(&target.hosts).map(ToString::to_string)
                });
            let cells = [
                num(target.hosts.first().map_or(0, |e| e.port)),
                target.dbname.clone(),
                num(size),
                num(config.min_pool_size.min(size)),
                num(0),
                num(config.max_db_connections),
                num(current),
                num(u8::from(pools.is_paused(&name))),
                num(u8::from(pools.is_disabled(&name))),
            ];
            rows.row(&[
                Some(&name),
                Some(&hosts),
                Some(&cells[0]),
                Some(&cells[1]),
                None,
                Some(&cells[2]),
                Some(&cells[3]),
                Some(&cells[4]),
                // Set per database in PgBouncer; pgmux has one mode: NULL.
                None,
                Some(&cells[5]),
                Some(&cells[6]),
                Some(&cells[7]),
                Some(&cells[8]),
                primary.as_deref(),
            ]);
        }
        ready(Ok(rows.finish()))
    }
}
