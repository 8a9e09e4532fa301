//! The relay: the one loop that lends a logged-in client servers.
//!
//! Idle, a client holds only its socket. When it has sent a complete request
//! (or enough bytes that it must be streaming), a server is checked out, set
//! to the client's parameters, and bytes flow both ways untouched. The scan
//! only counts: each Query/Sync/FunctionCall owes one ReadyForQuery. In
//! transaction mode the server goes back when all are answered and the last
//! said idle (`I`); on `T`/`E` the client stays linked.

use bytes::BytesMut;
use pgmux_wire::backend;
use pgmux_wire::frame::FrameError;
use pgmux_wire::scan::{Event, Scanner};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{refuse, ClientError, Session, Shared};
use crate::cancel::send_cancel;
use crate::config::PoolMode;
use crate::params::set_statements;
use crate::pool::Checkout;
use crate::server::ServerError;
use crate::stats::CloseReason;

/// First read buffer for a client with something to say.
const CLIENT_BUFFER: usize = 16 * 1024;
/// A request bigger than this streams to a server before it is complete.
const STREAM_AFTER: usize = 64 * 1024;
/// How long cleaning a server after a vanished client may take.
const CLEANUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A client linked to a server.
struct Link {
    checkout: Checkout,
    /// ReadyForQuery messages still owed for requests already forwarded.
    owed: u32,
    /// The last transaction status the server reported.
    status: u8,
    /// The server is waiting for the client's COPY data.
    copy_in: bool,
    /// The client sent Terminate: finish what is owed, then leave.
    terminating: bool,
}

enum Outcome {
    /// All requests answered; the server is clean and may go back.
    Done,
    /// The client closed its socket or broke the protocol while linked.
    ClientLeft(Option<ClientError>),
    /// The server failed; the client must be told and closed.
    ServerFailed(ServerError),
}

/// What a scan of client bytes found.
#[derive(Default)]
struct ClientScan {
    owed: u32,
    ends_request: bool,
    copy_ended: bool,
    /// Offset of a Terminate message's header in the scanned slice; negative
    /// when the header started in an earlier slice.
    terminate_at: Option<isize>,
}

fn scan_client(scan: &mut Scanner, data: &[u8]) -> Result<ClientScan, ClientError> {
    let mut found = ClientScan::default();
    scan.feed(
        data,
        |_| false,
        |event| {
            if let Event::Start { tag, body_at, .. } = event {
                if found.terminate_at.is_some() {
                    return;
                }
                match tag {
                    b'Q' | b'S' | b'F' => found.owed += 1,
                    b'c' | b'f' => found.copy_ended = true,
                    b'X' => found.terminate_at = Some(body_at as isize - 5),
                    _ => {}
                }
                found.ends_request = matches!(tag, b'Q' | b'S' | b'F' | b'H' | b'c' | b'f' | b'X');
            }
        },
    )
    .map_err(protocol_error)?;
    found.ends_request &= scan.at_boundary() || found.terminate_at.is_some();
    Ok(found)
}

fn protocol_error(e: FrameError) -> ClientError {
    ClientError::fatal("08P01", format!("invalid message from client: {e}"))
}

pub async fn run(mut stream: TcpStream, mut session: Session, shared: &Shared) {
    let pool = session.pool.clone();
    pool.stats.clients.inc();
    let result = relay(&mut stream, &mut session).await;
    pool.stats.clients.dec();
    if let Err(ClientError::Fatal { code, message }) = result {
        tracing::info!(user = %session.user, database = %session.database, %code, %message, "closing client");
        refuse(&mut stream, &code, &message).await;
    }
    let _ = shared;
}

async fn relay(stream: &mut TcpStream, s: &mut Session) -> Result<(), ClientError> {
    let settings = s.pool.settings.clone();
    let mut client_scan = Scanner::new(settings.max_message);
    let mut cbuf = BytesMut::new();
    loop {
        // Idle: gather a request. The buffer exists only while bytes do.
        let mut owed = 0;
        let mut terminating = false;
        loop {
            stream.readable().await.map_err(ClientError::io)?;
            if cbuf.capacity() == 0 {
                cbuf.reserve(CLIENT_BUFFER);
            }
            let start = cbuf.len();
            match stream.try_read_buf(&mut cbuf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return Ok(()),
            }
            s.pool
                .stats
                .bytes_received
                .increment((cbuf.len() - start) as u64);
            let found = scan_client(&mut client_scan, &cbuf[start..])?;
            owed += found.owed;
            if let Some(at) = found.terminate_at {
                cbuf.truncate((start as isize + at).max(0) as usize);
                terminating = true;
            }
            if terminating || found.ends_request || cbuf.len() >= STREAM_AFTER {
                break;
            }
        }
        if cbuf.is_empty() && terminating {
            return Ok(());
        }

        let checkout = s.pool.checkout().await?;
        let mut link = Link {
            checkout,
            owed,
            status: b'I',
            copy_in: false,
            terminating,
        };
        if let Err(e) = align_parameters(s, &mut link.checkout).await {
            link.checkout.discard(CloseReason::Error);
            return Err(e);
        }
        s.cancel.link(link.checkout.server().cancel_target());
        s.pool.stats.clients_active.inc();
        let outcome = match link.checkout.server_mut().stream.write_all(&cbuf).await {
            Ok(()) => {
                cbuf.clear();
                relay_linked(stream, s, &mut link, &mut client_scan, &mut cbuf).await
            }
            Err(_) => Outcome::ServerFailed(ServerError::Closed),
        };
        s.pool.stats.clients_active.dec();
        s.cancel.unlink();
        match outcome {
            Outcome::Done if settings.mode == PoolMode::Transaction && !link.terminating => {
                link.checkout.checkin();
                // Idle again: give the buffer back.
                cbuf = BytesMut::new();
            }
            Outcome::Done => {
                release_after_client(link, s).await;
                return Ok(());
            }
            Outcome::ClientLeft(err) => {
                release_after_client(link, s).await;
                return err.map_or(Ok(()), Err);
            }
            Outcome::ServerFailed(e) => {
                link.checkout.discard(CloseReason::Error);
                tracing::warn!(user = %s.user, database = %s.database, error = %e, "server connection failed");
                return Err(ClientError::fatal(
                    e.sqlstate(),
                    format!("server connection lost: {e}"),
                ));
            }
        }
    }
}

/// Bytes flow both ways until the link's work is done.
async fn relay_linked(
    stream: &mut TcpStream,
    s: &mut Session,
    link: &mut Link,
    client_scan: &mut Scanner,
    cbuf: &mut BytesMut,
) -> Outcome {
    let transaction_mode = s.pool.settings.mode == PoolMode::Transaction;
    loop {
        let server = link.checkout.server_mut();
        tokio::select! {
            ready = stream.readable(), if !link.terminating => {
                if ready.is_err() {
                    return Outcome::ClientLeft(None);
                }
                if cbuf.capacity() == 0 {
                    cbuf.reserve(CLIENT_BUFFER);
                }
                match stream.try_read_buf(cbuf) {
                    Ok(0) => return Outcome::ClientLeft(None),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => return Outcome::ClientLeft(None),
                }
                s.pool.stats.bytes_received.increment(cbuf.len() as u64);
                let found = match scan_client(client_scan, cbuf) {
                    Ok(f) => f,
                    Err(e) => return Outcome::ClientLeft(Some(e)),
                };
                link.owed += found.owed;
                if found.copy_ended {
                    link.copy_in = false;
                }
                if let Some(at) = found.terminate_at {
                    if at < 0 {
                        // Part of the Terminate header already went to the
                        // server: it cannot be trusted any more.
                        return Outcome::ClientLeft(None);
                    }
                    cbuf.truncate(at as usize);
                    link.terminating = true;
                }
                if server.stream.write_all(cbuf).await.is_err() {
                    return Outcome::ServerFailed(ServerError::Closed);
                }
                cbuf.clear();
                if link.terminating && link.owed == 0 {
                    return Outcome::Done;
                }
            }
            ready = server.stream.readable() => {
                if ready.is_err() {
                    return Outcome::ServerFailed(ServerError::Closed);
                }
                match server.stream.try_read_buf(&mut server.buf) {
                    Ok(0) => return Outcome::ServerFailed(ServerError::Closed),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Outcome::ServerFailed(ServerError::Protocol(e.to_string())),
                }
                if let Err(e) = scan_server(s, link) {
                    return Outcome::ServerFailed(ServerError::Protocol(e.to_string()));
                }
                let server = link.checkout.server_mut();
                let sent = server.buf.len() as u64;
                let written = stream.write_all(&server.buf).await;
                server.buf.clear();
                if written.is_err() {
                    return Outcome::ClientLeft(None);
                }
                s.pool.stats.bytes_sent.increment(sent);
                let answered = link.owed == 0 && server.scan.at_boundary() && !link.copy_in;
                if answered && (link.terminating || (transaction_mode && link.status == b'I' && client_scan.at_boundary())) {
                    return Outcome::Done;
                }
            }
        }
    }
}

/// Count ReadyForQuery, follow ParameterStatus and COPY IN in what the
/// server just sent (already in `server.buf`).
fn scan_server(s: &mut Session, link: &mut Link) -> Result<(), FrameError> {
    let server = link.checkout.server_mut();
    let crate::server::Server {
        scan, buf, params, ..
    } = server;
    let stats = &s.pool.stats;
    let client_params = &mut s.params;
    let (owed, status, copy_in) = (&mut link.owed, &mut link.status, &mut link.copy_in);
    scan.feed(
        buf,
        |tag| matches!(tag, b'Z' | b'S'),
        |event| match event {
            Event::Start { tag: b'G', .. } => *copy_in = true,
            Event::Whole { tag: b'Z', body } => {
                *owed = owed.saturating_sub(1);
                *copy_in = false;
                if let Some(st) = backend::ready_status(body) {
                    *status = st;
                    stats.queries.increment(1);
                    if st == b'I' {
                        stats.transactions.increment(1);
                    }
                }
            }
            Event::Whole { tag: b'S', body } => {
                if let Some((name, value)) = backend::parameter_status(body) {
                    params.set(&name, &value);
                    client_params.set(&name, &value);
                }
            }
            _ => {}
        },
    )
}

/// Bring the server's settings in line with the client's before its request.
async fn align_parameters(s: &mut Session, checkout: &mut Checkout) -> Result<(), ClientError> {
    let server = checkout.server_mut();
    let differences = s.params.differences(&server.params);
    if differences.is_empty() {
        return Ok(());
    }
    let sql = set_statements(&differences);
    let names: Vec<String> = differences.iter().map(|(n, _)| n.to_string()).collect();
    let wanted: Vec<(String, String)> = differences
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    match server.run(&sql).await {
        Ok(_) => {
            for (name, value) in &wanted {
                match server.params.get(name) {
                    // A reported setting: the server's spelling is canonical
                    // ("utf8" reads back as "UTF8"); the client adopts it so
                    // the next comparison matches.
                    Some(canonical) => {
                        let canonical = canonical.to_string();
                        s.params.set(name, &canonical);
                    }
                    // Not reported: remember what was set.
                    None => server.params.set(name, value),
                }
            }
            Ok(())
        }
        Err(ServerError::Backend(e)) => Err(ClientError::fatal(
            &e.code,
            format!(
                "could not apply the client's settings ({}) on a server: {}",
                names.join(", "),
                e.message
            ),
        )),
        Err(e) => Err(ClientError::fatal(
            e.sqlstate(),
            format!("server connection lost: {e}"),
        )),
    }
}

/// The client is gone (or done, in session mode): make the server clean
/// enough for someone else, or close it.
async fn release_after_client(mut link: Link, s: &Session) {
    let dirty = link.owed > 0 || link.status != b'I' || link.copy_in;
    let session_mode = s.pool.settings.mode == PoolMode::Session;
    if !dirty && !session_mode {
        link.checkout.checkin();
        return;
    }
    let reset = s.pool.settings.reset_query.clone();
    let server = link.checkout.server_mut();
    let clean = async {
        if link.copy_in {
            let mut out = BytesMut::new();
            pgmux_wire::frame::write_message(&mut out, b'f', |b| {
                b.extend_from_slice(b"client disconnected\0")
            });
            server
                .stream
                .write_all(&out)
                .await
                .map_err(|_| ServerError::Closed)?;
        }
        if link.owed > 0 {
            send_cancel(server.cancel_target()).await;
            drain(server, link.owed).await?;
        }
        let mut status = link.status;
        if link.owed > 0 || status != b'I' {
            status = server.run("ROLLBACK").await?;
        }
        if !reset.is_empty() {
            status = server.run(&reset).await?;
        }
        Ok::<u8, ServerError>(status)
    };
    match tokio::time::timeout(CLEANUP_TIMEOUT, clean).await {
        Ok(Ok(b'I')) => link.checkout.checkin(),
        _ => link.checkout.discard(CloseReason::Dirty),
    }
}

/// Skip the rest of what the server owes (the scanner may stand mid-message).
async fn drain(server: &mut crate::server::Server, mut owed: u32) -> Result<(), ServerError> {
    use tokio::io::AsyncReadExt;
    while owed > 0 {
        server.buf.clear();
        if server
            .stream
            .read_buf(&mut server.buf)
            .await
            .map_err(|_| ServerError::Closed)?
            == 0
        {
            return Err(ServerError::Closed);
        }
        let crate::server::Server {
            scan, buf, params, ..
        } = &mut *server;
        scan.feed(
            buf,
            |t| matches!(t, b'Z' | b'S'),
            |e| match e {
                Event::Whole { tag: b'Z', .. } => owed = owed.saturating_sub(1),
                Event::Whole { tag: b'S', body } => {
                    if let Some((n, v)) = backend::parameter_status(body) {
                        params.set(&n, &v);
                    }
                }
                _ => {}
            },
        )
        .map_err(|e| ServerError::Protocol(e.to_string()))?;
    }
    server.buf.clear();
    Ok(())
}
