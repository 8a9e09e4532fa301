//! The server goes away and comes back: clients get errors, not hangs, and
//! service resumes within about the login retry, with no dead connection
//! handed out.

use std::net::SocketAddr;
use std::time::Duration;

use pgmux_tests::raw::{self, Raw};
use pgmux_tests::relay::Relay;
use pgmux_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_gives_errors_then_service_resumes() {
    let db = fresh_database("outage_restart").await;
    let other_db = fresh_database("outage_first_client").await;
    let relay = Relay::start(SocketAddr::from(([127, 0, 0, 1], cluster().port))).await;
    let app = start_pgmux(|c| {
        c.server_port = relay.addr.port();
        c.server_login_retry = 0.5;
        c.auth_type = pgmux::config::AuthType::Trust;
    })
    .await;
    let mut before = Raw::login(app.addr, APP_USER, &db).await;
    before.send(&raw::query("select 1")).await;
    assert!(before.until_ready().await.iter().any(|m| m.tag == b'D'));

    relay.down().await;
    // pgmux peeks at a pooled server before lending it only once it has
    // been idle for a millisecond (PEEK_AFTER_IDLE: a server used moments
    // ago is trusted to the reactor's view, which may not have seen a close
    // yet). Let that much time pass, so the case under test is the one
    // pgmux promises to catch; this waits for no event.
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The pooled server is dead and must not be handed out; the reconnect is
    // refused, and the client hears so at once (the exact bytes: a FATAL
    // 08001 naming the refusal, then the close).
    before.send(&raw::query("select 1")).await;
    let msgs = tokio::time::timeout(Duration::from_secs(30), before.until_closed())
        .await
        .expect("no hang");
    let err = msgs
        .iter()
        .find(|m| m.tag == b'E')
        .expect("an ErrorResponse");
    assert_eq!(err.sqlstate().as_deref(), Some("08001"));
    assert!(err.field(b'M').unwrap().contains("refused"), "{msgs:?}");
    // The first client of a pool that never reached the server: same.
    let first = tokio::time::timeout(
        Duration::from_secs(30),
        try_connect(&dsn(app.addr, &other_db)),
    )
    .await
    .expect("no hang");
    let Err(err) = first else {
        panic!("refused while the server is down")
    };
    assert_eq!(err.code().map(|c| c.code()), Some("08001"), "{err}");

    relay.up().await;
    let back = eventually(Duration::from_secs(10), || async {
        match try_connect(&dsn(app.addr, &db)).await {
            Ok(c) => c.simple_query("select 1").await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    assert!(back, "service did not resume after the server came back");
    let c = connect(app.addr, &other_db).await;
    assert_eq!(scalar_i32(&c, "select 2").await, 2);
}
