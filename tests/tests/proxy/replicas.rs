//! Read replicas (issue 13, item 3): a read-only database entry over two
//! standbys of a harness-made primary. Its servers spread over both (the
//! listed server holding fewest of the pool's servers is tried first), a
//! standby that stops is passed over, and it is used again once its ban
//! (`replica_ban_time`) is over.

use std::time::Duration;

use pgmux::app::App;
use pgmux::config::{DatabaseConfig, LoadBalance, SessionAttrs, SslMode};
use pgmux_tests::replication::{on_pair, started};
use pgmux_tests::*;

/// Four transactions through `app_ro`, each held open while the next
/// starts (so each takes a server of its own): the port of the standby
/// each ran on.
async fn four_transactions(app: &App) -> Vec<u16> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..4 {
        let c = connect(app.addr, "app_ro").await;
        c.batch_execute("begin").await.unwrap();
        let port = scalar_i32(&c, "select inet_server_port()").await;
        ports.push(u16::try_from(port).unwrap());
        held.push(c);
    }
    for c in &held {
        c.batch_execute("commit").await.unwrap();
    }
    ports.sort_unstable();
    ports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_entry_balances_over_its_standbys_and_passes_a_stopped_one_over() {
    let pair = started("replicas", true).await;
    let (s1, s2) = (pair.standby.port, pair.second.as_ref().unwrap().port);
    let app = start_pgmux(move |c| {
        c.databases.insert(
            "app_ro".into(),
            DatabaseConfig {
                host: Some(format!("127.0.0.1:{s1},127.0.0.1:{s2}")),
                dbname: Some("app".into()),
                target_session_attrs: Some(SessionAttrs::Standby),
                load_balance_hosts: Some(LoadBalance::Random),
                ..Default::default()
            },
        );
        c.pool_size = 4;
        c.replica_ban_time = 1.0;
        c.server_connect_timeout = 3.0;
        c.server_tls_sslmode = SslMode::Disable;
        with_console_users(c);
    })
    .await;
    let mut both = vec![s1, s1, s2, s2];
    both.sort_unstable();
    assert_eq!(four_transactions(&app).await, both, "two servers on each");

    // The second standby stops; after RECONNECT every server is replaced,
    // and none of the new ones can be on it.
    on_pair(&pair, |p| p.stop_node(p.second.as_ref().unwrap())).await;
    let admin = console(app.addr).await;
    admin.simple_query("RECONNECT app_ro").await.unwrap();
    assert_eq!(four_transactions(&app).await, vec![s1; 4]);
    let servers = show(&admin, "SHOW SERVERS").await.unwrap();
    let second = format!("127.0.0.1:{s2}");
    assert!(
        servers
            .rows_where("database", "app_ro")
            .iter()
            .all(|r| servers.get(r, "host") != second && servers.get(r, "role") == "standby"),
        "{:?}",
        servers.rows
    );
    let banned = metric(
        app.metrics_addr.unwrap(),
        "pgmux_replica_banned",
        &[("host", &second)],
    )
    .await;
    assert_eq!(banned, 1.0, "the stopped standby is held back");

    // Back up: once its ban is over, new servers go to it again (it holds
    // fewest of the pool's servers).
    on_pair(&pair, |p| p.start_node(p.second.as_ref().unwrap())).await;
    let back = eventually(Duration::from_secs(30), || async {
        admin.simple_query("RECONNECT app_ro").await.unwrap();
        four_transactions(&app).await.contains(&s2)
    })
    .await;
    assert!(back, "the restarted standby serves again");
}
