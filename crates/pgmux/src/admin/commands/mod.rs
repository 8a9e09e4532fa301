//! One file per console command; [`ALL`] is the table the console looks
//! commands up in.

mod connections;
mod disable;
mod enable;
mod kill;
mod pause;
mod reconnect;
mod reload;
mod resume;
mod show_clients;
mod show_config;
mod show_databases;
mod show_help;
mod show_lists;
mod show_pools;
mod show_servers;
mod show_stats;
mod show_stats_averages;
mod show_stats_totals;
mod show_users;
mod show_version;
mod shutdown;
mod wait_close;

use std::time::Duration;

use super::command::Command;

pub use show_version::VERSION;

pub static ALL: &[&dyn Command] = &[
    &show_help::ShowHelp,
    &show_pools::ShowPools,
    &show_stats::ShowStats,
    &show_stats_totals::ShowStatsTotals,
    &show_stats_averages::ShowStatsAverages,
    &show_servers::ShowServers,
    &show_clients::ShowClients,
    &show_databases::ShowDatabases,
    &show_users::ShowUsers,
    &show_config::ShowConfig,
    &show_lists::ShowLists,
    &show_version::ShowVersion,
    &pause::Pause,
    &resume::Resume,
    &reconnect::Reconnect,
    &kill::Kill,
    &reload::Reload,
    &shutdown::Shutdown,
    &wait_close::WaitClose,
    &disable::Disable,
    &enable::Enable,
];

/// Wait until `done` holds. Servers come back from clients' transactions
/// in their own time; there is no single event for "all of them", so the
/// console looks again every few milliseconds (only while an operator's
/// PAUSE or WAIT_CLOSE is pending).
async fn settle(mut done: impl FnMut() -> bool) {
    while !done() {
        crate::io::sleep(Duration::from_millis(10)).await;
    }
}
