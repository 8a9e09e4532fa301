//! Logging a client in, within `client_login_timeout`: from its startup
//! packet into a pool (joined in session or transaction mode) or the admin
//! console, or refused with the reason. The wire steps (startup packet,
//! password exchange, greeting) are in [`handshake`].

mod greeting;
mod handshake;

use std::sync::Arc;

use bytes::BytesMut;

use crate::io::Stream as TcpStream;

use super::state::align;
use super::{ClientError, Session, Shared};
use crate::admin::{self, AdminSession, Role};
use crate::cancel::Cancels;
use crate::config::PoolMode;
use crate::conninfo::{next_id, ConnInfo, State};
use crate::params::ParamMap;
use crate::stats::{self, LoginFailure};
use crate::tls::{HandshakeFailure, Side};

pub use greeting::refuse;

/// A client past its login: into a pool, or into the admin console.
pub enum LoggedIn {
    Pool(Session),
    Admin(AdminSession),
}

/// A logged-in client's connection, where it goes, and what it has
/// already sent past its login (almost always nothing).
pub(super) type Opened = (TcpStream, LoggedIn, BytesMut);

/// Log the client in within `client_login_timeout`, or tell it why not.
pub(super) async fn open_session(stream: TcpStream, shared: &Shared) -> Option<Opened> {
    let peer = stream.peer_addr().ok();
    let login_timeout = shared.pools.config().client_login_timeout();
    // TLS replaces the stream during the login: it lives in a slot.
    let mut slot = Some(stream);
    // What the client sends during login, read ahead as it comes.
    let mut inbox = BytesMut::new();
    let opened = {
        // Pinned here and lent to the timeout: moved into it, the login
        // would take room twice in this future (kept through every login).
        let login = std::pin::pin!(log_in(&mut slot, shared, peer, &mut inbox));
        crate::io::timeout(login_timeout, login).await
    };
    let mut stream = slot?;
    let (code, message) = match opened {
        Ok(Ok(Some(session))) => {
            // An idle client holds no buffer: an empty inbox is let go.
            let pending = match inbox.is_empty() {
                true => BytesMut::new(),
                false => inbox,
            };
            return Some((stream, session, pending));
        }
        Ok(Ok(None)) | Ok(Err(ClientError::Gone)) => return None,
        Ok(Err(ClientError::Fatal { code, message })) => {
            stats::login_failed(failure_reason(&code));
            (code, message)
        }
        Err(_) => {
            stats::login_failed(LoginFailure::Timeout);
            if stream.tls().is_some_and(|t| t.is_handshaking()) {
                // Stalled in the TLS handshake: a TLS failure too, and
                // nothing can be said to a client whose TLS is not up.
                stats::tls_handshake(Side::Client, Err(HandshakeFailure::Timeout));
                tracing::info!(
                    ?peer,
                    "TLS handshake with a client not completed within client_login_timeout"
                );
                return None;
            }
            let message =
                format!("client_login_timeout: login not completed within {login_timeout:?}");
            ("08P01".to_string(), message)
        }
    };
    tracing::info!(?peer, %code, %message, "login refused");
    refuse(&mut stream, &code, &message).await;
    None
}

/// A CancelRequest: acted on here if the key is one of this instance's,
/// or passed once to the peer that gave it out.
async fn cancel(shared: &Shared, pid: u32, key: u32) {
    let config = shared.pools.config();
    let owner = crate::peering::owner(pid);
    if config.peer_id == 0 || owner == config.peer_id {
        return shared.cancels.cancel(pid, key).await;
    }
    if !crate::peering::may_forward(key) {
        tracing::warn!(
            pid,
            owner,
            "cancel request forwarded to the wrong peer ignored"
        );
        return;
    }
    let Some(peer) = config.peer(owner) else {
        tracing::warn!(
            pid,
            owner,
            "cancel request for a peer not in [peers] ignored"
        );
        return;
    };
    match crate::peering::forward(&peer.host, peer.port, config.dns_max_ttl(), pid, key).await {
        Ok(()) => stats::cancel_forwarded(),
        Err(e) => {
            tracing::warn!(owner, host = %peer.host, port = peer.port, error = %e, "could not forward a cancel request to its peer")
        }
    }
}

/// The metric label for a refused login, from the SQLSTATE it was given.
fn failure_reason(code: &str) -> LoginFailure {
    match code {
        "28P01" | "28000" => LoginFailure::Auth,
        "3D000" => LoginFailure::UnknownDatabase,
        "55000" => LoginFailure::Disabled,
        "57P01" | "57P03" => LoginFailure::ShuttingDown,
        "53300" => LoginFailure::TooManyClients,
        "53400" => LoginFailure::TooManyPools,
        "08P01" | "0A000" => LoginFailure::Protocol,
        _ => LoginFailure::ServerUnavailable,
    }
}

async fn log_in(
    slot: &mut Option<TcpStream>,
    shared: &Shared,
    peer: Option<std::net::SocketAddr>,
    inbox: &mut BytesMut,
) -> Result<Option<LoggedIn>, ClientError> {
    let opening = handshake::read_opening(slot, &shared.pools.tls(), peer, inbox).await?;
    let stream = slot.as_mut().ok_or(ClientError::Gone)?;
    let params = match opening {
        handshake::Opening::Cancel { pid, key } => {
            // Boxed: a cancel forwarded to a peer carries a connection of
            // its own, which every login's future would otherwise make room for.
            Box::pin(cancel(shared, pid, key)).await;
            return Ok(None);
        }
        handshake::Opening::Startup(params) => params,
    };
    let get = |k: &str| {
        params
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())
    };
    let user = get("user").filter(|u| !u.is_empty()).ok_or_else(|| {
        ClientError::fatal(
            "28000",
            "no PostgreSQL user name specified in startup packet".into(),
        )
    })?;
    let database = get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    if params
        .iter()
        .any(|(k, v)| k == "replication" && v != "false" && v != "0")
    {
        return Err(ClientError::fatal(
            "08P01",
            format!("user \"{user}\": replication connections are not supported by pgmux"),
        ));
    }
    let pools = &shared.pools;
    // A connection accepted before a drain began still logs in (it was
    // not refused); it is then closed like any idle client, with 57P01.
    if admin::is_console(&database) {
        // Boxed, so the console's own exchange does not add to every
        // pool login's future.
        return Box::pin(console_login(stream, pools, user, database, peer, inbox)).await;
    }
    let unknown = |e: crate::pool::UnknownDatabase| ClientError::fatal("3D000", e.to_string());
    pools.check_database(&database).map_err(unknown)?;
    if pools.is_disabled(&database) {
        return Err(ClientError::fatal(
            "55000",
            format!("database \"{database}\" is disabled by an administrator (DISABLE)"),
        ));
    }
    // Authenticate before any pool exists for this (database, user): a
    // stranger trying random names must not make pgmux allocate for them.
    // Boxed, as is joining the pool below: the compiler gives each awaited
    // step its own room in this future, and it is kept for every login in
    // progress (a thousand clients connecting at once hold a thousand).
    let authenticated = Box::pin(handshake::authenticate(
        stream, pools, &user, &database, inbox,
    ))
    .await?;
    let mut out = authenticated.out;
    let pool = pools
        .get(&database, &user)
        .map_err(|e| ClientError::fatal(e.sqlstate(), e.to_string()))?;
    if let Some(credential) = authenticated.learned {
        pool.adopt_credential(credential);
    }
    let joined = match pool.mode {
        PoolMode::Session => Box::pin(join_session_pool(&pool, &params, &shared.cancels)).await,
        PoolMode::Transaction => {
            Box::pin(join_transaction_pool(&pool, &params, &shared.cancels)).await
        }
    };
    let (client_params, statuses, cancel, kept) = match joined {
        Ok(joined) => joined,
        Err(e) => {
            pools.forget_if_unused(&pool);
            return Err(e);
        }
    };
    greeting::greeting(&mut out, &statuses, cancel.pid, cancel.key);
    tokio::io::AsyncWriteExt::write_all(stream, &out)
        .await
        .map_err(ClientError::io)?;
    let id = next_id();
    let mut info = ConnInfo::new(id, State::Idle);
    info.addr = peer.into();
    info.local = shared
        .local_addr
        .or_else(|| stream.local_addr().ok())
        .into();
    info.remote_pid = cancel.pid;
    if let Some(tls) = stream.tls() {
        info.tls = crate::conninfo::tls_code(&tls.describe());
    }
    info.application_name = client_params
        .get("application_name")
        .unwrap_or_default()
        .into();
    let info = Arc::new(info);
    pools.register_client(&pool, info.clone());
    pool.stats.logins.add(1);
    if pools.config().log_connections {
        tracing::info!(client = id, ?peer, %user, %database, "client logged in");
    }
    Ok(Some(LoggedIn::Pool(Session {
        pool,
        params: client_params,
        cancel,
        statements: Default::default(),
        pools: shared.pools.clone(),
        info,
        kept,
    })))
}

/// The client's settings, the ParameterStatus messages its greeting
/// carries, its cancel key and (session mode) server, once it has joined
/// its pool.
type Joined = (
    ParamMap,
    bytes::Bytes,
    crate::cancel::CancelKey,
    Option<Box<crate::pool::Checkout>>,
);

/// A login to the admin console (`pgbouncer` or `pgmux`): the user's
/// password, then its role there.
async fn console_login(
    stream: &mut TcpStream,
    pools: &crate::pool::Pools,
    user: String,
    database: String,
    peer: Option<std::net::SocketAddr>,
    inbox: &mut BytesMut,
) -> Result<Option<LoggedIn>, ClientError> {
    let mut out = handshake::authenticate(stream, pools, &user, &database, inbox)
        .await?
        .out;
    let role = Role::of(&pools.config(), &user).ok_or_else(|| {
        ClientError::fatal(
            "28000",
            format!("user \"{user}\" is not allowed into the pgmux admin console (admin_users, stats_users)"),
        )
    })?;
    admin::greeting(&mut out);
    tokio::io::AsyncWriteExt::write_all(stream, &out)
        .await
        .map_err(ClientError::io)?;
    tracing::info!(?peer, %user, %database, ?role, "admin console login");
    Ok(Some(LoggedIn::Admin(AdminSession { user, role })))
}

/// Transaction mode: a made-up pid, and the client's settings as the
/// servers spell them.
async fn join_transaction_pool(
    pool: &Arc<crate::pool::Pool>,
    startup: &[(String, String)],
    cancels: &Arc<Cancels>,
) -> Result<Joined, ClientError> {
    let defaults = pool
        .server_defaults()
        .await
        .map_err(|e| with_user(e.into(), &pool.user))?;
    if let Some((params, statuses)) = pool.login_seen(startup, &defaults) {
        return Ok((params, statuses, cancels.register(), None));
    }
    let mut params = ParamMap::for_client(&defaults, startup);
    align::spell_like_server(pool, &defaults, &mut params).await?;
    let params = pool.intern_params(params);
    let statuses = greeting::parameter_statuses(&params, &defaults);
    pool.remember_login(startup, &defaults, &params, &statuses);
    Ok((params, statuses, cancels.register(), None))
}

/// Session mode: the client keeps one server from login to the end, so it
/// is told that server's real pid (with pgmux's own key, so cancels still
/// come through pgmux and are checked) and its settings as that server
/// reports them.
async fn join_session_pool(
    pool: &Arc<crate::pool::Pool>,
    startup: &[(String, String)],
    cancels: &Arc<Cancels>,
) -> Result<Joined, ClientError> {
    let mut checkout = pool
        .checkout()
        .await
        .map_err(|e| with_user(e.into(), &pool.user))?;
    let mut params = ParamMap::for_client(&pool.reported(), startup);
    if let Err(e) = align::align(&mut params, pool, checkout.server_mut()).await {
        return Err(align::failed(checkout, e));
    }
    let params = pool.intern_params(params);
    checkout.server_mut().params = params.clone();
    let cancel = cancels.register_as(checkout.server().backend_pid);
    let statuses = greeting::parameter_statuses(&params, &pool.reported());
    Ok((params, statuses, cancel, Some(Box::new(checkout))))
}

/// Prefix a server-side login failure with the user it happened for.
fn with_user(e: ClientError, user: &str) -> ClientError {
    match e {
        ClientError::Fatal { code, message } if !message.contains(user) => ClientError::Fatal {
            code,
            message: format!("{message} (user \"{user}\")"),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every login in progress holds this future (a thousand clients
    /// connecting at once hold a thousand, and the heap keeps that peak):
    /// it was 6.4 KB when the login sat in it twice and every rare path
    /// had room in it. A size, not a time: it fails only when a change
    /// makes every login bigger.
    #[tokio::test]
    async fn a_login_in_progress_stays_small() {
        let config = crate::config::load(None, &Default::default()).unwrap();
        let pools = crate::pool::Pools::new(
            Arc::new(config),
            Arc::default(),
            Arc::new(crate::tls::TlsSetup::disabled()),
        );
        let shared = Shared::new(Arc::new(pools));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let login = open_session(TcpStream::from_std(accepted).unwrap(), &shared);
        let size = std::mem::size_of_val(&login);
        assert!(size <= 1536, "a login in progress holds {size} bytes");
    }
}
