//! The relay's side of pinning (see [`crate::session::state::pins`] for
//! what pins): looking at the session after a hinted transaction, keeping
//! the pin accounting, and passing on what a pinned server says while its
//! client is idle.

use crate::io::Stream as TcpStream;
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::linked::forward_server_bytes;
use super::to_server::Replay;
use super::Outcome;
use crate::pool::Checkout;
use crate::server::ServerError;
use crate::session::flow::replies::swap_notification_pids;
use crate::session::state::pins::{inspect_sql, Inspection, Pin, Pins};
use crate::session::state::watch::Watch;
use crate::session::{ClientError, Session};
use crate::stats::{self, CloseReason};

/// After a transaction that may have left session state: ask the server
/// what is there. Settings follow the client; state that cannot move pins it.
pub(super) async fn inspect_session(
    stream: &mut TcpStream,
    s: &mut Session,
    checkout: &mut Checkout,
    watch: &Watch,
) -> Result<(), ClientError> {
    s.pool.stats.session_checks.add(1);
    let server = checkout.server_mut();
    // Custom settings show in no catalog view: ask for the ones the client
    // named now, and for those it already carries (or they would be lost).
    let mut custom = watch.custom_names().to_vec();
    for (name, _) in s.params.iter() {
        if name.contains('.') && !custom.iter().any(|c| c.eq_ignore_ascii_case(name)) {
            custom.push(name.to_string());
        }
    }
    let mut passed = BytesMut::new();
    let rows = server
        .query_rows(&inspect_sql(&custom), &mut passed)
        .await
        .map_err(|e| {
            ClientError::fatal(
                e.sqlstate(),
                format!("could not check the session state left on the server: {e}"),
            )
        })?;
    // Notifications that arrived meanwhile are the client's; so is what
    // the server sent after the inspection's reply (already read, so the
    // socket will not say so again).
    if !passed.is_empty() {
        swap_notification_pids(&mut passed, (server.backend_pid, s.cancel.pid));
        stream
            .write_all(&passed)
            .await
            .map_err(|_| ClientError::Gone)?;
    }
    if !server.buf.is_empty() {
        server.timing.next_turn();
        forward_server_bytes(stream, s, server, &mut Replay::default())
            .await
            .map_err(|_| ClientError::Gone)?;
    }
    let found = Inspection::from_rows(rows.iter().map(|r| &r[..]));
    let pool = &s.pool;
    let set_here = |name: &str| {
        found
            .settings
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    let mut params = s.params.clone();
    params.retain(|name| pool.reports(name) || set_here(name));
    for (name, value) in &found.settings {
        if !pool.reports(name) {
            params.set(name, value);
        }
    }
    s.params = pool.intern_params(params);
    server.params = s.params.clone();
    // A custom setting pgmux could not name may be on this server; only
    // DISCARD ALL is known to clear it.
    let mut pins = found.pins;
    let untracked_before = s.pins().contains(Pin::UntrackedSetting);
    if watch.untracked_setting() || (untracked_before && !watch.discarded_all()) {
        pins.insert(Pin::UntrackedSetting);
    }
    set_pins(s, pins);
    Ok(())
}

/// Record the client's pins, keeping the gauge and the pin counters true.
pub(super) fn set_pins(s: &Session, pins: Pins) {
    let stats = &s.pool.stats;
    let before = s.pins();
    match (before.is_empty(), pins.is_empty()) {
        (true, false) => stats.clients_pinned.inc(),
        (false, true) => stats.clients_pinned.dec(),
        _ => {}
    }
    for pin in pins.iter().filter(|p| !before.contains(*p)) {
        stats::pinned(stats, pin.label());
    }
    if pins.is_empty() != before.is_empty() {
        let client = s.info.id;
        if pins.is_empty() {
            tracing::debug!(client, "client unpinned from its server");
        } else {
            let reasons: Vec<&str> = pins.iter().map(|p| p.label()).collect();
            tracing::debug!(client, ?reasons, "client pinned to its server");
        }
    }
    s.info.set_pin_bits(pins.bits());
}

/// Pass on what a pinned client's server says while the client is idle
/// (LISTEN notifications, notices, a FATAL before it goes away).
pub(super) async fn pass_server_news(
    stream: &mut TcpStream,
    s: &mut Session,
) -> Result<(), ClientError> {
    let Some(mut pinned) = s.kept.take() else {
        return Ok(());
    };
    let server = pinned.server_mut();
    let read = match server.stream.try_read_buf(&mut server.buf) {
        Ok(0) => Err(ServerError::Closed),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            s.kept = Some(pinned);
            return Ok(());
        }
        Err(e) => Err(ServerError::io(e)),
    };
    let forwarded = match read {
        Ok(()) => {
            server.timing.next_turn();
            forward_server_bytes(stream, s, server, &mut Replay::default()).await
        }
        Err(e) => Err(Outcome::ServerFailed(e)),
    };
    match forwarded {
        Ok(()) => {
            s.kept = Some(pinned);
            Ok(())
        }
        Err(Outcome::ServerFailed(e)) => {
            set_pins(s, Pins::default());
            let told = pinned.server().flow.fatal_passed;
            pinned.discard(CloseReason::Error);
            if told {
                // The server's own FATAL reached the client.
                return Err(ClientError::Gone);
            }
            Err(ClientError::fatal(
                e.sqlstate(),
                format!("server connection lost while the client was pinned to it: {e}"),
            ))
        }
        Err(_) => {
            s.kept = Some(pinned);
            Err(ClientError::Gone)
        }
    }
}
