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
