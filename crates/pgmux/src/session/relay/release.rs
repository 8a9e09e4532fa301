//! Giving a server back after its client is gone (or done, in session
//! mode): finish or cancel what is in flight, roll back, reset what the
//! client left, and return the server only if it is clean.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::pin_tracking::set_pins;
use crate::cancel::send_cancel;
use crate::config::PoolMode;
use crate::conninfo::State;
use crate::pool::Checkout;
use crate::server::{Server, ServerError};
use crate::session::flow::expect::Pending;
use crate::session::flow::rewrite::raise;
use crate::session::flow::server_flow::Observers;
use crate::session::state::pins::Pins;
use crate::session::Session;
use crate::stats::CloseReason;

/// How long cleaning a server after a vanished client may take.
const CLEANUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How the client left its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Leaving {
    /// It said Terminate (or its session-mode session ended): what it asked
    /// for runs to the end, as on a direct connection.
    Politely,
    /// It vanished, or pgmux is closing it: what it asked for is cancelled.
    Abruptly,
}

/// The client is gone (or done, in session mode): make the server clean
/// enough for someone else, or close it.
pub(super) async fn release_after_client(
    mut checkout: Checkout,
    s: &mut Session,
    leaving: Leaving,
) {
    let server = checkout.server_mut();
    let dirty = !server.expect.is_empty()
        || !server.flow.at_ready
        || server.flow.status != b'I'
        || server.flow.copy_in;
    let session_mode = s.pool.mode == PoolMode::Session;
    // A hinted transaction that was never inspected may have left state.
    let watch = std::mem::take(&mut server.flow.watch);
    let state_left = !s.pins().is_empty() || watch.calls_for_look();
    set_pins(s, Pins::default());
    if !dirty && !session_mode && !state_left {
        checkout.checkin();
        return;
    }
    let mut reset = s.pool.settings().reset_query;
    if state_left && reset.is_empty() {
        // Session state must never reach the next client.
        reset = "DISCARD ALL".to_string();
    }
    s.pool.stats.servers_tested.inc();
    server.info.set_state(State::Tested);
    let clean = async {
        let mut out = BytesMut::new();
        // Requests of the client's that the server is still working on,
        // nobody left to read their results.
        let cancel =
            leaving == Leaving::Abruptly && server.expect.ready_owed() > 0 && !server.flow.copy_in;
        if server.flow.copy_in {
            // The server waits for COPY data: fail the COPY.
            pgmux_wire::frame::write_message(&mut out, b'f', |b| {
                b.extend_from_slice(b"client disconnected\0")
            });
            server.expect.push(Pending::CopyEnd);
        }
        if server.expect.open_tail() || (server.expect.is_empty() && !server.flow.at_ready) {
            // Messages not closed by a Sync (a pipeline cut short): a bare
            // Sync would commit what they did, so make the server fail
            // first, which rolls the implicit transaction back and skips
            // the rest up to the Sync.
            if !server.expect.skipping() {
                raise(
                    "08006",
                    "pgmux: the client disconnected in the middle of a pipeline",
                    &mut server.expect,
                    &mut out,
                );
            }
            pgmux_wire::frame::write_message(&mut out, b'S', |_| {});
            server.expect.push(Pending::Sync);
        }
        if !out.is_empty() {
            server
                .stream
                .write_all(&out)
                .await
                .map_err(|_| ServerError::Closed)?;
        }
        if cancel {
            send_cancel(server.cancel_target()).await;
        }
        if !server.expect.is_empty() {
            drain(server).await?;
        }
        let mut status = server.flow.status;
        if status != b'I' {
            status = server.run("ROLLBACK").await?;
        }
        if !reset.is_empty() {
            status = server.run(&reset).await?;
            // The reset may have undone settings the server never reports;
            // forget them (reported ones come back as ParameterStatus).
            server.params.retain(|name| s.pool.reports(name));
        }
        Ok::<u8, ServerError>(status)
    };
    let cleaned = crate::io::timeout(CLEANUP_TIMEOUT, clean).await;
    s.pool.stats.servers_tested.dec();
    match cleaned {
        Ok(Ok(b'I')) => checkout.checkin(),
        _ => checkout.discard(CloseReason::Dirty),
    }
}

/// Read and drop what the server still owes (the flow may stand mid-message).
async fn drain(server: &mut Server) -> Result<(), ServerError> {
    let mut ignored = BytesMut::new();
    loop {
        // Replies pgmux owes itself count too (a canned DEALLOCATE).
        server.flow.due_synths(&mut server.expect, &mut ignored);
        if server.expect.ready_owed() == 0 {
            break;
        }
        if server
            .stream
            .read_buf(&mut server.buf)
            .await
            .map_err(|_| ServerError::Closed)?
            == 0
        {
            return Err(ServerError::Closed);
        }
        let mut observers = Observers {
            server_params: &mut server.params,
            client_params: None,
            statements: &mut server.prepared,
            client_statements: None,
            cache: None,
            own_pid: None,
        };
        let batch = server
            .flow
            .process(&server.buf, &mut server.expect, &mut observers)
            .map_err(|e| ServerError::Protocol(e.to_string()))?;
        server.buf.advance(batch.consumed);
    }
    if !server.expect.is_empty() || !server.buf.is_empty() || !server.flow.at_boundary() {
        return Err(ServerError::Protocol(
            "server still owes replies after ReadyForQuery".into(),
        ));
    }
    Ok(())
}
