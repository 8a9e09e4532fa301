//! The linked loop's deadlines that need more than a sleep:
//! `query_timeout` (cancel the request, then give its server up) and
//! `client_write_timeout` (give up a client that stopped reading).

use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::io::AsyncWriteExt;

use super::Outcome;
use crate::io::Stream as TcpStream;
use crate::server::ServerError;
use crate::session::Session;

/// `query_timeout` for the request in flight: when it went out, and when
/// pgmux cancelled it.
#[derive(Default)]
pub(super) struct QueryClock {
    started: Option<Instant>,
    cancelled: Option<Instant>,
}

impl QueryClock {
    /// The time left before the request is cancelled, or, once it was,
    /// before its server is given up.
    pub(super) fn left(&mut self, limit: Duration, cancel_wait: Option<Duration>) -> Duration {
        let now = Instant::now();
        let deadline = match self.cancelled {
            Some(at) => at + cancel_wait.unwrap_or_default(),
            None => *self.started.get_or_insert(now) + limit,
        };
        deadline.saturating_duration_since(now)
    }

    /// The time ran out: cancel the request (the client then gets
    /// PostgreSQL's 57014 and keeps its connection), or, if it was
    /// cancelled already and still runs, give the server up.
    pub(super) fn ran_out(&mut self, s: &Session) -> Option<ServerError> {
        let limit = s.pool.query_timeout.get().unwrap_or_default();
        let wait = s.pool.cancel_wait_timeout.get().unwrap_or_default();
        if self.cancelled.is_some() {
            return Some(ServerError::QueryTimeout(limit, wait));
        }
        tracing::info!(client = s.info.id, user = %s.pool.user, database = %s.pool.database, ?limit, "query_timeout: cancelling the request");
        self.cancelled = Some(Instant::now());
        crate::io::spawn(s.cancel.cancel_linked());
        None
    }
}

/// Write `bytes` to the client. With `client_write_timeout` set, a client
/// that takes no byte for that long (it stopped reading its result) is
/// given up, so its server goes back instead of waiting for it forever. No
/// timer is armed while the socket takes the bytes at once.
pub(super) async fn write_to_client(
    stream: &mut TcpStream,
    mut bytes: &[u8],
    limit: Option<Duration>,
) -> Result<(), Outcome> {
    let gone = |_| Outcome::ClientLeft(None);
    let Some(limit) = limit else {
        return stream.write_all(bytes).await.map_err(gone);
    };
    while !bytes.is_empty() {
        let n = match stream.write(bytes).now_or_never() {
            Some(written) => written.map_err(gone)?,
            // Boxed: the timer's room would otherwise be in every
            // request's future, used or not.
            None => match Box::pin(crate::io::timeout(limit, stream.write(bytes))).await {
                Ok(written) => written.map_err(gone)?,
                Err(_) => {
                    // It would not read a FATAL either: cut it off.
                    tracing::info!(
                        ?limit,
                        "client_write_timeout: closing a client that stopped reading its result"
                    );
                    stream.abort();
                    return Err(Outcome::ClientLeft(None));
                }
            },
        };
        if n == 0 {
            return Err(Outcome::ClientLeft(None));
        }
        bytes = &bytes[n..];
    }
    Ok(())
}
