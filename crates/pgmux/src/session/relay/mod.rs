//! The relay: the one loop that lends a logged-in client servers.
//!
//! Idle, a client holds only its socket. When it has sent a complete request
//! (or enough bytes that it must be streaming), a server is checked out, set
//! to the client's parameters, and bytes flow both ways through the two
//! flows ([`ClientFlow`], [`ServerFlow`]), which account every reply owed.
//! In transaction mode the server goes back once nothing is owed and the
//! last ReadyForQuery said idle (`I`); on `T`/`E` the client stays linked.
//!
//! Here: the idle wait and lending a server for each request. While linked,
//! bytes move in [`linked`]; [`pin_tracking`] looks at the session after a
//! hinted transaction and keeps a pinned client's server; [`release`] gives
//! a server back when its client leaves; [`buffers`] are the client read
//! buffers; [`deadlines`] are the linked loop's query and write deadlines.

mod deadlines;
mod linked;
mod pin_tracking;
mod release;
mod to_server;

use std::future::Future;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::io::Stream as TcpStream;
use bytes::BytesMut;

use self::linked::relay_linked;
use self::pin_tracking::{inspect_session, pass_server_news, set_pins};
use self::release::{release_after_client, Leaving};
use super::flow::client_flow::ClientFlow;
use super::state::align::{align, client_error};
use super::state::pins::Pins;
use super::{refuse, ClientError, Session};
use crate::config::PoolMode;
use crate::conninfo::{micros_at, State};
use crate::io::buffers::{self, CLIENT_BUFFER};
use crate::lifecycle::Stop;
use crate::pool::Checkout;
use crate::server::ServerError;
use crate::stats::CloseReason;

/// A request bigger than this streams to a server before it is complete.
const STREAM_AFTER: usize = 64 * 1024;

pub(super) enum Outcome {
    /// Nothing is owed and the server may go back (or the client said
    /// Terminate and everything it asked for was answered).
    Done,
    /// The client closed its socket, or broke the protocol, while linked.
    ClientLeft(Option<ClientError>),
    /// The server failed; the client must be told and closed.
    ServerFailed(ServerError),
    /// The pool was killed, or the shutdown timeout ran out.
    Aborted,
}

/// A logged-in client between requests: everything an idle client holds
/// (its task, [`crate::session::task`], adds only a tag).
pub(in crate::session) struct Client {
    stream: TcpStream,
    session: Session,
    flow: ClientFlow,
    /// What the client has sent of its next request; no buffer while empty.
    cbuf: BytesMut,
}

/// What ended an idle wait.
pub(in crate::session) enum Idle {
    /// A request to serve ([`serve_next`]).
    Request,
    /// The server a pinned client keeps has something to say ([`pass_news`]).
    ServerNews,
    /// The client said Terminate or closed its socket.
    Left,
}

/// The client back from a turn, and whether its session goes on.
pub(in crate::session) type Turn = (Client, Result<bool, ClientError>);

impl Client {
    /// `pending`: what the client sent past its login, if anything.
    pub(in crate::session) fn new(
        stream: TcpStream,
        session: Session,
        pending: BytesMut,
    ) -> Client {
        session.pool.stats.clients.inc();
        let transaction_mode = session.pool.mode == PoolMode::Transaction;
        Client {
            flow: ClientFlow::new(session.pool.max_message, transaction_mode),
            stream,
            session,
            cbuf: pending,
        }
    }

    /// Read until a whole request is in (or enough that it must stream),
    /// the client leaves, a pinned client's server speaks, or the session's
    /// stop signal is raised. Written as a poll, not an `async fn`, so the
    /// wait stores nothing in the idle client's task: the wakers live in the
    /// sockets' and the stop signal's own slots.
    pub(in crate::session) fn poll_idle(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Idle, ClientError>> {
        let (stream, s, cbuf) = (&self.stream, &self.session, &mut self.cbuf);
        let mut must_wait = cbuf.is_empty();
        loop {
            if !cbuf.is_empty() {
                if cbuf[0] == b'X' {
                    return Poll::Ready(Ok(Idle::Left));
                }
                let state = self.flow.request_state(cbuf).map_err(|e| {
                    ClientError::fatal("08P01", format!("invalid message from client: {e}"))
                })?;
                if state.complete || cbuf.len() >= STREAM_AFTER {
                    return Poll::Ready(Ok(Idle::Request));
                }
            } else {
                // Hold no buffer while waiting: it goes back to the worker.
                buffers::give(std::mem::take(cbuf));
                must_wait = true;
            }
            if must_wait {
                if s.info.stop.poll(cx) != Stop::No {
                    return Poll::Ready(Err(closing(s)));
                }
                match stream.poll_read_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(ClientError::Gone)),
                    Poll::Pending => {
                        let pinned = s.kept.as_ref().map(|c| &c.server().stream);
                        return match pinned.map(|server| server.poll_read_ready(cx)) {
                            // An error shows up on the read that follows.
                            Some(Poll::Ready(_)) => Poll::Ready(Ok(Idle::ServerNews)),
                            _ => Poll::Pending,
                        };
                    }
                }
            }
            // Non-blocking: readiness can be stale (left over from the
            // login's reads). WouldBlock clears it and we wait again.
            if cbuf.capacity() == 0 {
                *cbuf = buffers::take();
            } else if cbuf.capacity() - cbuf.len() < 1024 {
                cbuf.reserve(CLIENT_BUFFER);
            }
            match stream.try_read_buf(cbuf) {
                Ok(0) => return Poll::Ready(Ok(Idle::Left)),
                Ok(n) => {
                    s.pool.stats.received.add(n as u64);
                    must_wait = false;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => must_wait = true,
                Err(_) => return Poll::Ready(Err(ClientError::Gone)),
            }
        }
    }
}

/// Serve the request [`Client::poll_idle`] found. (An `async` block, not
/// an `async fn`: the block keeps the client where it captured it, where an
/// `async fn` would keep its argument and a copy, and this future is
/// allocated for every request.)
#[allow(clippy::manual_async_fn)] // the point: see above
pub(in crate::session) fn serve_next(mut c: Client) -> impl Future<Output = Turn> + Send {
    async move {
        let transaction_mode = c.session.pool.mode == PoolMode::Transaction;
        let result = serve_request(
            &mut c.stream,
            &mut c.session,
            &mut c.flow,
            &mut c.cbuf,
            transaction_mode,
        )
        .await;
        (c, result)
    }
}

/// Pass on what a pinned client's server said while the client was idle.
pub(in crate::session) async fn pass_news(mut c: Client) -> Turn {
    let result = pass_server_news(&mut c.stream, &mut c.session).await;
    (c, result.map(|()| true))
}

/// The session is over: give back what the client holds, and tell it why
/// if pgmux is the one closing it.
pub(in crate::session) async fn finish(c: Client, result: Result<(), ClientError>) {
    let Client {
        mut stream,
        mut session,
        ..
    } = c;
    match session.kept.take() {
        Some(pinned) => release_after_client(*pinned, &mut session, Leaving::Politely).await,
        // A pinned server that failed was discarded on the way out:
        // the pin gauge still counts this client.
        None => set_pins(&session, Pins::default()),
    }
    session.pool.stats.clients.dec();
    session.pool.forget_client(session.info.id);
    let (client, peer) = (session.info.id, session.info.addr.get());
    match result {
        Err(ClientError::Fatal { code, message }) => {
            tracing::info!(client, ?peer, user = %session.pool.user, database = %session.pool.database, %code, %message, "closing client");
            refuse(&mut stream, &code, &message).await;
        }
        _ if session.pools.config().log_disconnections => {
            tracing::info!(client, ?peer, user = %session.pool.user, database = %session.pool.database, "client disconnected");
        }
        _ => {}
    }
}

/// Why pgmux closes a client it would otherwise keep serving.
fn closing(s: &Session) -> ClientError {
    if s.info.idle_timed_out() {
        // As PostgreSQL's idle_session_timeout.
        ClientError::fatal(
            "57P05",
            "terminating connection due to idle-session timeout (client_idle_timeout)".into(),
        )
    } else if s.pools.lifecycle.draining() {
        ClientError::fatal(
            "57P01",
            "terminating connection: the pgmux proxy is shutting down".into(),
        )
    } else {
        ClientError::fatal(
            "57P01",
            format!(
                "terminating connection: database \"{}\" was killed by an administrator (KILL)",
                s.pool.database
            ),
        )
    }
}

/// Lend the client a server for its request; `Ok(false)` when the session
/// is over (Terminate, or the client left while linked).
async fn serve_request(
    stream: &mut TcpStream,
    s: &mut Session,
    flow: &mut ClientFlow,
    cbuf: &mut BytesMut,
    transaction_mode: bool,
) -> Result<bool, ClientError> {
    // One clock read for the request's records, the checkout and the
    // server's first turn.
    let now = Instant::now();
    let now_us = micros_at(now);
    s.info.requested(now_us);
    let mut checkout = match s.kept.take() {
        Some(mut pinned) => {
            pinned.server_mut().timing.turn_at(now);
            *pinned
        }
        None => {
            s.info.start_waiting(now_us);
            tokio::select! {
                // In order: no random draw per request.
                biased;
                checkout = s.pool.checkout_at(now) => checkout?,
                _ = s.info.stop.reached(Stop::Now) => return Err(closing(s)),
            }
        }
    };
    let server_info = &checkout.server().info;
    server_info.requested(now_us);
    server_info.link(s.info.id);
    s.info.link(server_info.id);
    s.info.set_state(State::Active);
    // Usually the client and server share one settings map (a pointer
    // compare); the (large, boxed) alignment runs only when they differ.
    if !s.params.shares_with(&checkout.server().params) {
        if s.params.differs_from(&checkout.server().params) {
            if let Err(e) = Box::pin(align(&mut s.params, &s.pool, checkout.server_mut())).await {
                // The server may hold a pinned client's state: closed, not reused.
                checkout.discard(CloseReason::Error);
                return Err(client_error(e));
            }
            // The alignment waited for the server: the request starts now.
            checkout.server_mut().timing.next_turn();
        } else {
            checkout.server_mut().params = s.params.clone();
        }
    }
    s.cancel.link(checkout.server().cancel_target());
    s.pool.stats.clients_active.inc();
    let mut terminating = false;
    let outcome = relay_linked(stream, s, &mut checkout, flow, cbuf, &mut terminating).await;
    s.pool.stats.clients_active.dec();
    s.cancel.unlink().await;
    // Idle from now: the time is read only where client_idle_timeout needs
    // it (0: unknown, which its sweep fills in).
    let idle_from = match s.pool.client_idle_timeout.get() {
        Some(_) => micros_at(checkout.server_mut().timing.now()),
        None => 0,
    };
    s.info.idle_from(idle_from);
    s.info.link(0);
    // Part of a server message already went to the client (rows stream
    // as they arrive): an ErrorResponse now would land inside it, and the
    // client would read pgmux's bytes as the rest of a row. The client is
    // closed without a word instead, as when a direct connection breaks.
    let mid_message = !checkout.server().flow.at_boundary();
    let result = end_request(stream, s, checkout, outcome, transaction_mode, terminating).await;
    match result {
        Err(ClientError::Fatal { .. }) if mid_message => Err(ClientError::Gone),
        other => other,
    }
}

/// What becomes of the server and the client once a request's link ended
/// with `outcome`.
async fn end_request(
    stream: &mut TcpStream,
    s: &mut Session,
    mut checkout: Checkout,
    outcome: Outcome,
    transaction_mode: bool,
    terminating: bool,
) -> Result<bool, ClientError> {
    match outcome {
        Outcome::Done if transaction_mode && !terminating => {
            let watch = std::mem::take(&mut checkout.server_mut().flow.watch);
            if watch.calls_for_look() {
                if let Err(e) = Box::pin(inspect_session(stream, s, &mut checkout, &watch)).await {
                    set_pins(s, Pins::default());
                    checkout.discard(CloseReason::Error);
                    return Err(e);
                }
                checkout.server_mut().timing.next_turn();
            }
            if s.pins().is_empty() {
                checkout.checkin_in_turn();
            } else {
                // Kept while its client idles: the next turn reads the time.
                checkout.server_mut().timing.next_turn();
                s.kept = Some(Box::new(checkout));
            }
            if s.info.stop.get() != Stop::No {
                // Draining (or killed): the transaction is done; so is the client.
                return Err(closing(s));
            }
            Ok(true)
        }
        Outcome::Done => {
            Box::pin(release_after_client(checkout, s, Leaving::Politely)).await;
            Ok(false)
        }
        Outcome::ClientLeft(err) => {
            Box::pin(release_after_client(checkout, s, Leaving::Abruptly)).await;
            err.map_or(Ok(false), Err)
        }
        Outcome::Aborted => {
            Box::pin(release_after_client(checkout, s, Leaving::Abruptly)).await;
            Err(closing(s))
        }
        Outcome::ServerFailed(e) => {
            // The server's own FATAL (pg_terminate_backend, a shutdown)
            // reached the client: close as a direct connection would.
            let told = checkout.server().flow.fatal_passed;
            checkout.discard(CloseReason::Error);
            tracing::warn!(client = s.info.id, peer = ?s.info.addr.get(), user = %s.pool.user, database = %s.pool.database, error = %e, "server connection failed");
            if told {
                return Err(ClientError::Gone);
            }
            Err(ClientError::fatal(
                e.sqlstate(),
                format!("server connection lost: {e}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<F: FnOnce(A) -> R, A, R>(_: F) -> usize {
        std::mem::size_of::<R>()
    }

    /// Every request is served in a future allocated for it; glibc's
    /// per-thread cache serves blocks up to 1,032 bytes with a few
    /// instructions, bigger ones take its general path (about 10x the
    /// cost). The future was 1,760 bytes before its nested futures stopped
    /// keeping their arguments twice and their batches across writes.
    #[test]
    fn a_request_future_stays_in_the_allocators_cache() {
        let size = future_size(serve_next);
        println!("serve_next: {size} bytes");
        assert!(size <= 1024, "a request's future grew to {size} bytes");
    }
}
