//! Query cancellation through pgmux's own keys.

use std::time::Duration;

use pgmux_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_query_is_cancelled_and_the_server_is_reused() {
    let db = fresh_database("cancel_sleep").await;
    let app = start_pgmux(|c| c.pool_size = 1).await;
    let c = connect(app.addr, &db).await;
    let pid = scalar_i32(&c, "select pg_backend_pid()").await;
    let token = c.cancel_token();
    let sleeper = tokio::spawn(async move {
        let r = c.simple_query("select pg_sleep(30)").await;
        (c, r)
    });
    // Cancel once the query is really running on the server.
    let admin = cluster().admin().await;
    let running = eventually(Duration::from_secs(10), || async {
        let n: i64 = admin.query_one("select count(*) from pg_stat_activity where pid = $1 and query like '%pg_sleep(30)%' and state = 'active'", &[&pid]).await.unwrap().get(0);
        n == 1
    })
    .await;
    assert!(running);
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (c, result) = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("cancelled well before 30 s")
        .unwrap();
    assert_eq!(sqlstate(result), "57014");
    assert_eq!(
        scalar_i32(&c, "select pg_backend_pid()").await,
        pid,
        "same server, still usable"
    );
    let other = connect(app.addr, &db).await;
    assert_eq!(scalar_i32(&other, "select 2").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_with_the_wrong_key_does_nothing() {
    let db = fresh_database("cancel_wrong").await;
    let app = start_pgmux(|_| {}).await;
    let c = connect(app.addr, &db).await;
    c.batch_execute("select 1").await.unwrap();
    // Every pid pgmux could have given, with a key that is wrong for it.
    let mut raw = pgmux_tests::raw::Raw::connect(app.addr).await;
    let mut pkt = vec![0, 0, 0, 16];
    pkt.extend_from_slice(&80_877_102u32.to_be_bytes());
    pkt.extend_from_slice(&1u32.to_be_bytes());
    pkt.extend_from_slice(&2u32.to_be_bytes());
    raw.send(&pkt).await;
    assert!(
        raw.until_closed().await.is_empty(),
        "a cancel request gets no reply"
    );
    assert_eq!(scalar_i32(&c, "select 4").await, 4);
}

/// Three peered pgmux processes (issue 13, `peer_id` and `[peers]`): a cancel
/// that reaches an instance not holding the query (as behind a load
/// balancer) is forwarded to the one that is, and the query ends with
/// 57014; a forged key or the key of a client that has left cancels
/// nothing, wherever it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_the_wrong_peer_is_forwarded() {
    use pgmux::config::{AuthType, PeerConfig, PoolMode};
    use pgmux_tests::process::Proc;
    use pgmux_tests::raw::{self, Raw};
    let db = fresh_database("cancel_peers").await;
    let ports = [(); 3].map(|()| pgmux_tests::process::free_port());
    let peered = |id: u16, mode: PoolMode| {
        move |c: &mut pgmux::config::Config| {
            c.listen_addr = format!("127.0.0.1:{}", ports[usize::from(id) - 1]);
            c.auth_type = AuthType::Trust;
            c.pool_mode = mode;
            c.peer_id = id;
            for (i, port) in ports.iter().enumerate() {
                let peer = PeerConfig {
                    host: "localhost".into(),
                    port: *port,
                };
                c.peers.insert((i + 1).to_string(), peer);
            }
        }
    };
    // Three processes, each with its own proxy.toml, as in production.
    let peers: String = ports
        .iter()
        .enumerate()
        .map(|(i, port)| format!("[peers.{}]\nhost = \"localhost\"\nport = {port}\n", i + 1))
        .collect();
    let instance = |id: usize| {
        let listen = format!("127.0.0.1:{}", ports[id - 1]);
        let extra = format!("auth_type = \"trust\"\npeer_id = {id}\n{peers}");
        pgmux_tests::process::config_text(&listen, &extra)
    };
    let a = Proc::start("peer-a", &instance(1), &[]).await;
    let b = Proc::start("peer-b", &instance(2), &[]).await;
    let c = Proc::start("peer-c", &instance(3), &[]).await;

    let log_in = || async {
        let (client, greeting) =
            Raw::login_with(a.addr, &[("user", APP_USER), ("database", &db)], None).await;
        let key_data = greeting
            .iter()
            .find(|m| m.tag == b'K')
            .expect("BackendKeyData");
        let pid = u32::from_be_bytes(key_data.body[..4].try_into().unwrap());
        let key = u32::from_be_bytes(key_data.body[4..8].try_into().unwrap());
        (client, pid, key)
    };
    let admin = cluster().admin().await;
    let sleeping = || async {
        let n: i64 = admin
            .query_one(
                "select count(*) from pg_stat_activity where datname = $1 and query like '%pg_sleep(30)%' and state = 'active'",
                &[&db],
            )
            .await
            .unwrap()
            .get(0);
        n == 1
    };
    // A cancel request to `to`; it has been acted on (or dropped) when the
    // connection closes, the forwarding peer having waited for the owner.
    let send_cancel = |to: std::net::SocketAddr, pid: u32, key: u32| async move {
        let mut cancel = Raw::connect(to).await;
        let mut packet = vec![0, 0, 0, 16];
        packet.extend_from_slice(&80_877_102u32.to_be_bytes());
        packet.extend_from_slice(&pid.to_be_bytes());
        packet.extend_from_slice(&key.to_be_bytes());
        cancel.send(&packet).await;
        assert!(
            cancel.until_closed().await.is_empty(),
            "no reply to a cancel"
        );
    };

    let (mut client, pid, key) = log_in().await;
    assert_eq!(pgmux::peering::owner(pid), 1, "the pid names the instance");
    // A client that logged in and left: its key is stale.
    let (gone, stale_pid, stale_key) = log_in().await;
    drop(gone);
    for to in [b.addr, c.addr] {
        client.send(&raw::query("select pg_sleep(30)")).await;
        assert!(eventually(Duration::from_secs(10), sleeping).await);
        // Forged (the right pid, a wrong key) and stale keys: nothing.
        send_cancel(to, pid, key ^ 0x5a5a).await;
        send_cancel(to, stale_pid, stale_key).await;
        assert!(
            sleeping().await,
            "a forged or stale key cancelled the query"
        );
        // The real key, to an instance that gave out no such key.
        send_cancel(to, pid, key).await;
        let answer = tokio::time::timeout(Duration::from_secs(10), client.until_ready())
            .await
            .expect("cancelled well before 30 s");
        assert_eq!(raw::error_in(&answer).sqlstate().as_deref(), Some("57014"));
        assert_eq!(client.scalar("select 5").await, "5");
    }
    for peer in [&b, &c] {
        // Each forwarded the three it got.
        let forwarded = metric(peer.metrics, "pgmux_cancel_forwarded_total", &[]).await;
        assert_eq!(forwarded, 3.0);
    }

    // Session mode under peering: the pid is the instance's, not the
    // server's, so it can carry the peer id.
    let (_, greeting) = Raw::login_with(
        start_pgmux(|c| {
            peered(2, PoolMode::Session)(c);
            c.listen_addr = "127.0.0.1:0".into();
        })
        .await
        .addr,
        &[("user", APP_USER), ("database", &db)],
        None,
    )
    .await;
    let key_data = greeting
        .iter()
        .find(|m| m.tag == b'K')
        .expect("BackendKeyData");
    let pid = u32::from_be_bytes(key_data.body[..4].try_into().unwrap());
    assert_eq!(pgmux::peering::owner(pid), 2);
}
