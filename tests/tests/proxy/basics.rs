use pgmux_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries() {
    let db = fresh_database("basics_queries").await;
    let app = start_pgmux(|_| {}).await;
    let c = connect(app.addr, &db).await;
    let rows = c.simple_query("select 1; select 'two'").await.unwrap();
    let values: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(values, vec!["1", "two"]);
    let row = c
        .query_one("select $1::int + 1, $2::text", &[&41i32, &"x"])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, String>(1), "x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_keeps_the_connection_usable() {
    let db = fresh_database("basics_error").await;
    let app = start_pgmux(|_| {}).await;
    let c = connect(app.addr, &db).await;
    assert_eq!(sqlstate(c.simple_query("select 1/0").await), "22012");
    assert_eq!(
        sqlstate(c.query("select * from no_such_table", &[]).await),
        "42P01"
    );
    c.batch_execute("begin").await.unwrap();
    assert!(c.simple_query("select 1/0").await.is_err());
    assert_eq!(sqlstate(c.simple_query("select 1").await), "25P02");
    c.batch_execute("rollback").await.unwrap();
    let row = c.query_one("select 7", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);
}
