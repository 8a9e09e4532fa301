//! A client linked to a server: bytes flow both ways through the two flows
//! until the link's work is done, the deadlines and the stop signal running
//! throughout. The client's side of the way is [`super::to_server`]; the
//! server's replies, with a request sent again when its statement turned
//! out missing or stale, are here.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::io::Stream as TcpStream;
use bytes::{Buf, BytesMut};
use tokio::io::AsyncReadExt;

use super::deadlines::{write_to_client, QueryClock};
use super::to_server::{forward_client_bytes, Replay};
use super::{Outcome, STREAM_AFTER};
use crate::config::PoolMode;
use crate::io::buffers::{self, CLIENT_BUFFER};
use crate::lifecycle::Stop;
use crate::pool::Checkout;
use crate::server::{Server, ServerError};
use crate::session::flow::client_flow::ClientFlow;
use crate::session::flow::server_flow::Observers;
use crate::session::{ClientError, Session};
use crate::stats::{self, PoolStats};

/// Read what the client has into `buf` (allocating it on first need).
/// `Ok(false)` means the client closed its side.
async fn read_client(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    stats: &PoolStats,
) -> Result<bool, ClientError> {
    if buf.capacity() == 0 {
        *buf = buffers::take();
    } else if buf.capacity() - buf.len() < 1024 {
        buf.reserve(CLIENT_BUFFER);
    }
    match stream.read_buf(buf).await {
        Ok(0) => Ok(false),
        Ok(n) => {
            stats.received.add(n as u64);
            Ok(true)
        }
        Err(_) => Err(ClientError::Gone),
    }
}

/// Bytes flow both ways until the link's work is done. (One `async fn`
/// with its loop inside: each nested `async fn` keeps its own copy of its
/// arguments, and this future is allocated for every request.)
pub(super) async fn relay_linked(
    stream: &mut TcpStream,
    s: &mut Session,
    checkout: &mut Checkout,
    flow: &mut ClientFlow,
    cbuf: &mut BytesMut,
    terminating: &mut bool,
) -> Outcome {
    // What the client sent that the server has not taken yet.
    let mut to_server = BytesMut::new();
    let transaction_mode = s.pool.mode == PoolMode::Transaction;
    let mut replay = Replay::default();
    let mut query_clock = QueryClock::default();
    // The first turn's time was read when the server was lent.
    let mut woke = false;
    let outcome = 'link: loop {
        let server = checkout.server_mut();
        if woke {
            server.timing.next_turn();
        }
        woke = true;
        // What the server has not taken yet goes before anything more of
        // the client's (and no more is read from the client meanwhile).
        if !cbuf.is_empty() && !*terminating && to_server.is_empty() {
            let forwarded = forward_client_bytes(
                stream,
                s,
                server,
                flow,
                cbuf,
                terminating,
                &mut replay,
                &mut to_server,
            );
            if let Err(outcome) = forwarded.await {
                break 'link outcome;
            }
        }
        let answered = to_server.is_empty()
            && server.expect.is_empty()
            && server.flow.at_ready
            && server.flow.at_boundary()
            && flow.at_boundary();
        // A big message the client flow holds whole (a named Parse, a
        // simple Query) is still arriving: stay linked and read it, or the
        // idle loop would hand it straight back here without reading.
        let gathering = !*terminating && cbuf.len() >= STREAM_AFTER;
        // A client with an unnamed statement parsed and not yet bound keeps
        // its server: the statement exists only there.
        let may_release =
            transaction_mode && server.flow.status == b'I' && !flow.awaits_unnamed_bind();
        if answered && !gathering && (*terminating || may_release) {
            break 'link Outcome::Done;
        }
        if *terminating && !finishes_alone(server) {
            // The client said goodbye mid-COPY or mid-pipeline: the server
            // waits for data or a Sync that will never come. Releasing it
            // ends that (and rolls back whatever was not synced).
            break 'link Outcome::Done;
        }
        // Idle inside a transaction (everything answered, the server not
        // idle): the client holds a server it is not using. Timed only
        // when idle_transaction_timeout is set.
        let idle_limit = if answered && !*terminating && server.flow.status != b'I' {
            s.pool.idle_transaction_timeout.get()
        } else {
            None
        };
        // An open transaction is timed only when transaction_timeout is set.
        let transaction_limit = s.pool.transaction_timeout.get().and_then(|limit| {
            let started = server.timing.transaction_started()?;
            Some((started + limit).saturating_duration_since(Instant::now()))
        });
        // A request in flight (the server owes replies) is timed only when
        // query_timeout is set.
        let query_limit = match s.pool.query_timeout.get() {
            Some(limit) if !server.expect.is_empty() => {
                Some(query_clock.left(limit, s.pool.cancel_wait_timeout.get()))
            }
            _ => {
                query_clock = QueryClock::default();
                None
            }
        };
        // The nearest limit; on a tie the first listed (as the select's
        // order had it when each limit was its own branch).
        let deadline = [
            query_limit.map(|left| (left, Limit::Query)),
            transaction_limit.map(|left| (left, Limit::Transaction)),
            idle_limit.map(|left| (left, Limit::IdleTransaction)),
        ]
        .into_iter()
        .flatten()
        .min_by_key(|(left, _)| *left);
        tokio::select! {
            // In order, without a random draw per poll: the stop signal
            // first, then the server, then the client. The server's
            // replies go before more of the client's requests: a client
            // that sends without pause must not keep pgmux from reading
            // what the server answers (an error it would then skip by),
            // which would leave every request it sent meanwhile owed.
            biased;
            _ = s.info.stop.reached(Stop::Now) => break 'link Outcome::Aborted,
            // Readiness, not a read future: the server is read while a
            // write to it waits (below), so that a server sending results
            // while it is sent more never waits on pgmux, nor pgmux on it.
            ready = poll_fn(|cx| server.stream.poll_read_ready(cx)) => {
                if let Err(e) = ready {
                    break 'link Outcome::ServerFailed(ServerError::io(e));
                }
                if server.buf.capacity() - server.buf.len() < 1024 {
                    server.buf.reserve(SERVER_READ);
                }
                match server.stream.try_read_buf(&mut server.buf) {
                    Ok(0) => break 'link Outcome::ServerFailed(ServerError::Closed),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => break 'link Outcome::ServerFailed(ServerError::io(e)),
                }
                let owed = server.expect.ready_owed();
                if let Err(outcome) = forward_server_bytes(stream, s, server, &mut replay).await {
                    break 'link outcome;
                }
                if server.expect.ready_owed() < owed {
                    // A request of a pipeline was answered: query_timeout
                    // times each one, not the pipeline.
                    query_clock = QueryClock::default();
                }
                if let Some(again) = replay.due.take() {
                    // The held-back request goes out again, ahead of
                    // anything the client sent since.
                    let mut joined = BytesMut::with_capacity(again.len() + cbuf.len());
                    joined.extend_from_slice(&again);
                    joined.extend_from_slice(cbuf);
                    *cbuf = joined;
                }
            }
            // The rest of what the client sent, as the server takes it; the
            // deadlines and the stop signal above and below still run.
            ready = poll_fn(|cx| server.stream.poll_write_ready(cx)), if !to_server.is_empty() => {
                let written = ready.and_then(|()| server.stream.try_write(&to_server));
                match written {
                    Ok(n) => to_server.advance(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break 'link Outcome::ServerFailed(ServerError::Closed),
                }
            }
            // Not while MAX_OWED replies are owed: the server's replies
            // (or its error) shorten the list first, so it stays bounded.
            read = read_client(stream, cbuf, &s.pool.stats), if !*terminating && to_server.is_empty() && server.expect.len() < MAX_OWED => match read {
                Ok(true) => {}
                Ok(false) => break 'link Outcome::ClientLeft(None),
                Err(_) => break 'link Outcome::ClientLeft(None),
            },
            // One timer for the three limits, set to the nearest: each
            // timer in a select holds its room in this future, and this
            // future is allocated for every request.
            () = Timer::maybe(deadline.map(|(left, _)| left)), if deadline.is_some() => {
                match deadline.map(|(_, limit)| limit) {
                    Some(Limit::Query) => {
                        if let Some(e) = query_clock.ran_out(s) {
                            break 'link Outcome::ServerFailed(e);
                        }
                    }
                    // As PostgreSQL 17's transaction_timeout: the client is
                    // closed; what its server runs is cancelled and rolled back.
                    Some(Limit::Transaction) => break 'link Outcome::ClientLeft(Some(ClientError::fatal(
                        "25P04",
                        "terminating connection due to transaction timeout (transaction_timeout)".into(),
                    ))),
                    // As PostgreSQL's idle_in_transaction_session_timeout: the
                    // client is closed; its server is rolled back and reused.
                    Some(Limit::IdleTransaction) => break 'link Outcome::ClientLeft(Some(ClientError::fatal(
                        "25P03",
                        "terminating connection due to idle-in-transaction timeout (idle_transaction_timeout)".into(),
                    ))),
                    None => {}
                }
            }
        }
    };
    if !to_server.is_empty() {
        // The link ended with the client's bytes half delivered (the
        // server stopped reading): the server may hold part of a message,
        // so it can only be closed, which also rolls its work back.
        checkout.server().stream.abort();
    }
    outcome
}

/// The timer of a linked client's nearest limit, boxed (allocated only
/// while a limit runs): its room is in every request's future otherwise.
struct Timer(Option<Pin<Box<crate::io::Sleep>>>);

impl Timer {
    fn maybe(left: Option<Duration>) -> Timer {
        Timer(left.map(|left| Box::pin(crate::io::sleep(left))))
    }
}

impl Future for Timer {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.0.as_mut() {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

/// The limits that time a linked client.
#[derive(Clone, Copy)]
enum Limit {
    Query,
    Transaction,
    IdleTransaction,
}

/// Room made in the server's read buffer when it has less than 1 KiB left.
const SERVER_READ: usize = 16 * 1024;

/// Entries of the expected-reply queue (about 24 bytes each) past which
/// pgmux reads no more from the client until the server's replies have
/// shortened it: flow control, not an error, so a pipeline of any length
/// works, and the queue of a client that sends without pause stays bounded
/// (by this and one read's worth of messages).
const MAX_OWED: usize = 1 << 18;

/// Whether the server will answer everything it was sent without another
/// word from the client: not in COPY IN, and every message it was sent is
/// closed by a Sync (or is a simple Query or FunctionCall).
fn finishes_alone(server: &Server) -> bool {
    !server.flow.copy_in
        && !server.expect.open_tail()
        && (server.expect.ready_owed() > 0 || server.flow.at_ready)
}

/// The server's bytes (in its read buffer) through its flow and on to the
/// client.
pub(super) async fn forward_server_bytes(
    stream: &mut TcpStream,
    s: &mut Session,
    server: &mut Server,
    replay: &mut Replay,
) -> Result<(), Outcome> {
    // The flow's pass is a plain function: what it keeps is gone before
    // the write waits, and this future (in every request's allocation)
    // holds only what the write needs.
    let (edited, consumed) = pass_server_bytes(s, server, replay)?;
    let limit = s.pool.client_write_timeout.get();
    let written = match &edited {
        Some(edited) => write_to_client(stream, edited, limit).await,
        None => write_to_client(stream, &server.buf[..consumed], limit).await,
    };
    server.buf.advance(consumed);
    written
}

/// The server's bytes through its flow, counted: what goes to the client
/// (edited bytes, or `None` for the first `consumed` bytes of the read
/// buffer as they are) and how many bytes of the buffer that passes.
fn pass_server_bytes(
    s: &mut Session,
    server: &mut Server,
    replay: &mut Replay,
) -> Result<(Option<BytesMut>, usize), Outcome> {
    let mut observers = Observers {
        server_params: &mut server.params,
        client_params: Some(&mut s.params),
        statements: &mut server.prepared,
        client_statements: Some(&mut s.statements),
        cache: Some(&s.pool.statements),
        own_pid: (server.backend_pid != s.cancel.pid).then_some((server.backend_pid, s.cancel.pid)),
    };
    let mut batch = server
        .flow
        .process(&server.buf, &mut server.expect, &mut observers)
        .map_err(|e| Outcome::ServerFailed(ServerError::Protocol(e.to_string())))?;
    let stats = &s.pool.stats;
    for _ in 0..batch.stale_passed {
        stats::statement_replanned(stats, false);
    }
    for _ in 0..batch.stale_retried {
        stats::statement_replanned(stats, true);
    }
    for _ in 0..batch.missing_passed {
        stats::statement_lost(stats, false);
    }
    for _ in 0..batch.missing_retried {
        stats::statement_lost(stats, true);
    }
    let mut passed_held = None;
    if batch.retry {
        let in_use_by = batch.database_in_use_by.unwrap_or(0);
        let ours = replay.drops.as_deref().map_or(0, |db| s.pools.idle_to(db));
        if batch.database_in_use_by.is_none() || in_use_by <= ours {
            if let Some(database) = &replay.drops {
                s.pools.close_idle_to(database);
            }
            replay.due = replay.kept.take();
            replay.used = true;
        } else {
            // Someone else uses the database: the refusal stands.
            replay.kept = None;
            passed_held = batch.held.take();
        }
    } else if server.expect.is_empty() {
        replay.kept = None;
    }
    // Count before the client can see the reply, so a client that reads
    // its result and then looks at the stats finds itself counted.
    stats.sent.add(batch.consumed as u64);
    if batch.ready > 0 {
        stats.queries.add(batch.ready.into());
        stats.xacts.add(batch.ready_idle.into());
        server
            .timing
            .replied(stats, server.expect.is_empty(), batch.ready_idle);
    }
    for class in &batch.errors {
        stats::error_sent(stats, *class);
    }
    if batch.read_only_refused {
        s.pool.refused_write(server);
    }
    let edited = match (batch.edited.take(), passed_held) {
        (Some(edited), Some(held)) => {
            // The refused drop's error and ReadyForQuery, held back to
            // decide, go on after all.
            stats::error_sent(stats, *b"55");
            stats.queries.add(1);
            stats.xacts.add(1);
            let mut out = BytesMut::with_capacity(edited.len() + held.len());
            out.extend_from_slice(&edited);
            out.extend_from_slice(&held);
            Some(out)
        }
        (edited, _) => edited,
    };
    Ok((edited, batch.consumed))
}
