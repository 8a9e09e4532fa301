//! SHOW CONFIG: every general setting, its value, its default, and
//! whether RELOAD can change it. Secrets never appear (they are masked
//! when the configuration is serialized).

use pgmux_wire::reply::ColumnType::Text;

use crate::admin::command::{ready, AdminError, Command, Ctx, Rows, Running};
use crate::config::{self, Config};

pub struct ShowConfig;

impl Command for ShowConfig {
    fn name(&self) -> &'static str {
        "SHOW CONFIG"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, _: Option<&'a str>) -> Running<'a> {
        ready(show(&ctx.pools.config()))
    }
}

fn show(current: &Config) -> Result<bytes::BytesMut, AdminError> {
    let defaults = config::load(None, &Default::default())
        .map_err(|e| AdminError(format!("cannot compute defaults: {e}")))?;
    let flat = |c: &Config| -> Result<toml::Table, AdminError> {
        toml::Table::try_from(c).map_err(|e| AdminError(format!("cannot list settings: {e}")))
    };
    let (values, defaults) = (flat(current)?, flat(&defaults)?);
    let restart_only = Config::RESTART_ONLY;
    let mut rows = Rows::new(&[
        ("key", Text),
        ("value", Text),
        ("default", Text),
        ("changeable", Text),
    ]);
    for (key, value) in &values {
        if value.is_table() {
            continue; // [databases] and [users]: SHOW DATABASES / SHOW USERS
        }
        let mut value = text(value);
        if key == "io_backend" {
            // What was asked for, and what runs: `auto (io_uring)`.
            if let Some(running) = crate::workers::backend_in_use() {
                value = format!("{value} ({})", running.name());
            }
        }
        let default = defaults.get(key).map(text);
        let changeable = if restart_only.contains(&key.as_str()) || key == "profile" {
            "no"
        } else {
            "yes"
        };
        rows.row(&[
            Some(key),
            Some(&value),
            default.as_deref(),
            Some(changeable),
        ]);
    }
    Ok(rows.finish())
}

fn text(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}
