//! The client's bytes on their way to its server, for the linked loop
//! ([`super::linked`]): the client flow's pass over them, statement names
//! rewritten, a request kept for a replay, `DROP DATABASE` eased past
//! pgmux's own idle servers, and a send that never waits on the server.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;

use super::Outcome;
use crate::io::Stream as TcpStream;
use crate::server::{Server, ServerError};
use crate::session::flow::client_flow::{ClientBatch, ClientFlow, Statements};
use crate::session::flow::retry::{Retry, REPLAY_LIMIT};
use crate::session::{ClientError, Session};

/// The client's bytes through its flow and on to the server. Usually one
/// pass; another when a reply pgmux owed itself settled what later bytes
/// were waiting for (see `Expect::statements_unsettled`).
#[allow(clippy::too_many_arguments)]
pub(super) async fn forward_client_bytes(
    stream: &mut TcpStream,
    s: &mut Session,
    server: &mut Server,
    flow: &mut ClientFlow,
    cbuf: &mut BytesMut,
    terminating: &mut bool,
    replay: &mut Replay,
    to_server: &mut BytesMut,
) -> Result<(), Outcome> {
    // One function with its loop inside, not a loop over an `async fn`
    // pass: each nested future keeps its own copy of the arguments, and
    // this one is part of every request's allocation.
    loop {
        // A block: what the pass keeps ends before the write of pgmux's
        // own replies below waits (this future is in every request's
        // allocation, and a smaller one comes from the allocator's cache).
        {
            let pinned = !s.pins().is_empty();
            let statements = s.pool.manages_statements.then(|| Statements {
                cache: &s.pool.statements,
                client: &mut s.statements,
                server: &mut server.prepared,
                capacity: s
                    .pool
                    .max_prepared
                    .load(std::sync::atomic::Ordering::Relaxed),
                client_budget: s
                    .pool
                    .max_client_prepared
                    .load(std::sync::atomic::Ordering::Relaxed),
                pinned,
                server_status: server.flow.status,
            });
            let idle_before = server.expect.is_empty();
            let batch = flow
                .process(cbuf, &mut server.expect, statements)
                .map_err(|e| {
                    Outcome::ClientLeft(Some(ClientError::fatal(e.sqlstate(), e.to_string())))
                })?;
            if idle_before && !server.expect.is_empty() {
                server.timing.request_sent(server.flow.status);
            }

            server.flow.watch.merge(&batch.watch);
            // A DROP DATABASE first (see `ease_database_drop`); the batch
            // goes into the boxed future and back, so this future does not
            // keep it across the wait.
            let (batch, retry) = if batch.dropped_database.is_some() {
                Box::pin(ease_database_drop(stream, s, server, batch, idle_before)).await?
            } else {
                let retry = batch.retry;
                (batch, retry)
            };
            // A lone prepared execution outside a transaction can be sent
            // again if its statement turns out missing or stale: keep its
            // bytes until the reply (split off, not copied).
            let replayable = retry != Retry::Never
                && !replay.used
                && idle_before
                && server.flow.status == b'I'
                && batch.consumed <= REPLAY_LIMIT;
            server.flow.retry_armed = if replayable { retry } else { Retry::Never };
            replay.drops = batch.dropped_database.clone().filter(|_| replayable);
            let sent = send_to_server(&server.stream, batch.output(cbuf), to_server);
            sent.map_err(|_| Outcome::ServerFailed(ServerError::Closed))?;
            if replayable {
                replay.kept = Some(cbuf.split_to(batch.consumed).freeze());
            } else {
                cbuf.advance(batch.consumed);
            }
            if batch.copy_ended {
                server.flow.copy_in = false;
            }
            if batch.terminate {
                *terminating = true;
                cbuf.clear();
            }
        }
        // Replies pgmux owes that nothing from the server precedes; not while
        // a server message is half passed on (a notification, say): the
        // server flow sends them once it ends.
        let mut due = BytesMut::new();
        if server.flow.at_boundary() {
            server.flow.due_synths(&mut server.expect, &mut due);
        }
        if due.is_empty() {
            return Ok(());
        }
        stream
            .write_all(&due)
            .await
            .map_err(|_| Outcome::ClientLeft(None))?;
        if cbuf.is_empty() || *terminating || !to_server.is_empty() {
            return Ok(());
        }
    }
}

/// A DROP DATABASE goes as it is. pgmux's own idle servers to that
/// database would block it: they are closed first when the drop would
/// otherwise pass (see `may_drop_database`), and as a second line, if
/// PostgreSQL refuses it only for them, they are closed and the drop is
/// sent once more. A refused drop costs nobody else anything.
async fn ease_database_drop(
    stream: &mut TcpStream,
    s: &Session,
    server: &mut Server,
    batch: ClientBatch,
    idle_before: bool,
) -> Result<(ClientBatch, Retry), Outcome> {
    if let Some(db) = &batch.dropped_database {
        if idle_before && s.pools.idle_to(db) > 0 && may_drop_database(stream, server, db).await? {
            s.pools.close_idle_to(db);
        }
    }
    Ok((batch, Retry::IfDatabaseInUse))
}

/// Send `bytes` to the server as far as its socket takes them now; the
/// rest waits in `to_server` for the linked loop, which goes on reading
/// the server and keeping time meanwhile. (A write that waited here would
/// stop both: a server that stops reading, or sends results as it is sent
/// a long pipeline, would hold the client past every deadline.)
fn send_to_server(
    server: &TcpStream,
    mut bytes: &[u8],
    to_server: &mut BytesMut,
) -> std::io::Result<()> {
    while !bytes.is_empty() {
        match server.try_write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    to_server.extend_from_slice(bytes);
    Ok(())
}

/// Whether a `DROP DATABASE` of `db` would pass PostgreSQL's checks but for
/// the sessions using it: the database exists, is not the one the client
/// is connected to, and the client's role may drop it (owner, a member of
/// the owner role, or superuser). Asked on the client's own server, which
/// owes nothing, before the drop is sent.
async fn may_drop_database(
    stream: &mut TcpStream,
    server: &mut Server,
    db: &str,
) -> Result<bool, Outcome> {
    let sql = format!(
        "select 1 from pg_catalog.pg_database where datname = {} \
         and datname <> pg_catalog.current_database() \
         and pg_catalog.pg_has_role(datdba, 'USAGE')",
        pgmux_wire::reply::quote_literal(db)
    );
    let mut passed = BytesMut::new();
    let may = match server.query_rows(&sql, &mut passed).await {
        Ok(rows) => !rows.is_empty(),
        // The client's transaction is failed, or the like: let the server
        // answer the drop itself.
        Err(ServerError::Backend(_)) => false,
        Err(e) => return Err(Outcome::ServerFailed(e)),
    };
    // Notifications that came meanwhile are the client's.
    if !passed.is_empty() {
        stream
            .write_all(&passed)
            .await
            .map_err(|_| Outcome::ClientLeft(None))?;
    }
    Ok(may)
}

/// A request kept until its reply, in case it must be sent again.
#[derive(Default)]
pub(super) struct Replay {
    /// The request's bytes, while its reply is awaited.
    pub(super) kept: Option<Bytes>,
    /// To send again now.
    pub(super) due: Option<Bytes>,
    /// This request was sent again already: a second failure passes through.
    pub(super) used: bool,
    /// The database the kept request drops.
    pub(super) drops: Option<String>,
}
