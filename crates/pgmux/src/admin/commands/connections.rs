//! The row SHOW CLIENTS and SHOW SERVERS share (PgBouncer's columns, the
//! same for both; SHOW SERVERS adds the listed host and its role).

use pgmux_wire::reply::ColumnType::{Int4, Text};

use crate::admin::command::{num, Rows};
use crate::conninfo::{format_timestamp, now_micros, tls_name, ConnInfo};
use crate::pool::Pool;

pub fn rows() -> Rows {
    Rows::new(COLUMNS)
}

/// SHOW SERVERS: the shared columns, then `host` (the listed server the
/// connection reached, as configured) and `role` (primary, standby or
/// read-only, as the server said; NULL when it did not).
pub fn server_rows() -> Rows {
    let mut columns = COLUMNS.to_vec();
    columns.extend([("host", Text), ("role", Text)]);
    Rows::new(&columns)
}

const COLUMNS: &[(&str, pgmux_wire::reply::ColumnType)] = &[
    ("type", Text),
    ("user", Text),
    ("database", Text),
    ("state", Text),
    ("addr", Text),
    ("port", Int4),
    ("local_addr", Text),
    ("local_port", Int4),
    ("connect_time", Text),
    ("request_time", Text),
    ("wait", Int4),
    ("wait_us", Int4),
    ("close_needed", Int4),
    ("ptr", Text),
    ("link", Text),
    ("remote_pid", Int4),
    ("tls", Text),
    ("application_name", Text),
];

/// One connection of `pool`; `kind` is `C` or `S`. `ptr` and `link` are
/// connection ids in PgBouncer's `0x…` form.
pub fn row(rows: &mut Rows, kind: &str, pool: &Pool, c: &ConnInfo, close_needed: bool) {
    row_with(rows, kind, pool, c, close_needed, &[]);
}

/// [`row`] with cells for extra columns after the shared ones.
pub fn row_with(
    rows: &mut Rows,
    kind: &str,
    pool: &Pool,
    c: &ConnInfo,
    close_needed: bool,
    extra: &[Option<&str>],
) {
    let waited = c.waited_us(now_micros());
    let ip = |a: Option<std::net::SocketAddr>| a.map(|a| a.ip().to_string()).unwrap_or_default();
    let port = |a: Option<std::net::SocketAddr>| num(a.map(|a| a.port()).unwrap_or(0));
    let linked = c.linked();
    let cells = [
        c.state().name().to_string(),
        ip(c.addr.get()),
        port(c.addr.get()),
        ip(c.local.get()),
        port(c.local.get()),
        format_timestamp(c.connected_us),
        format_timestamp(c.request_us()),
        num(waited / 1_000_000),
        num(waited % 1_000_000),
        num(u8::from(close_needed)),
        format!("{:#x}", c.id),
        if linked == 0 {
            String::new()
        } else {
            format!("{linked:#x}")
        },
        num(c.remote_pid),
        tls_name(c.tls).to_string(),
        c.application_name.to_string(),
    ];
    let mut values: Vec<Option<&str>> = vec![Some(kind), Some(&pool.user), Some(&pool.database)];
    values.extend(cells.iter().map(|s| Some(s.as_str())));
    values.extend_from_slice(extra);
    rows.row(&values);
}
