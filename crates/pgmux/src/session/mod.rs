//! The client side of pgmux: one task per client connection, from the
//! startup packet to the last byte. [`login`] gets the client in; [`relay`]
//! is the one state machine that lends it servers.

mod align;
mod buffers;
mod client_flow;
mod ddl;
mod expect;
mod login;
#[cfg(test)]
mod pg_model;
mod pinned;
pub mod pinning;
#[cfg(test)]
mod protocol_props;
mod relay;
mod release;
mod rewrite;
mod server_flow;
mod splice;
#[cfg(test)]
mod tests;
mod words;

pub use ddl::{dropped_database, may_forget_statements};
pub use expect::Expect;
pub use server_flow::ServerFlow;

use std::sync::Arc;

use crate::io::Stream as TcpStream;
use bytes::BytesMut;
use pgmux_wire::auth::{ScramVerifier, Secret};

use crate::admin::{self, AdminSession, Role};
use crate::cancel::Cancels;
use crate::config::PoolMode;
use crate::conninfo::{next_id, ConnInfo, State};
use crate::params::ParamMap;
use crate::pool::{CheckoutError, Pools};
use crate::stats::{self, LoginFailure};

pub use login::refuse;

/// What every session shares.
pub struct Shared {
    pub pools: Arc<Pools>,
    pub cancels: Arc<Cancels>,
    /// Stands in for an unknown user's verifier so the exchange looks alike.
    pub decoy: ScramVerifier,
}

impl Shared {
    pub fn new(pools: Arc<Pools>) -> Shared {
        let decoy = Secret::Plain(format!("{:x}", rand::random::<u128>()))
            .scram_verifier()
            .expect("plaintext secrets always yield a verifier");
        Shared {
            pools,
            cancels: Arc::new(Cancels::default()),
            decoy,
        }
    }
}

/// Why a client's session ends.
#[derive(Debug)]
pub enum ClientError {
    /// Tell the client (FATAL with this SQLSTATE), then close.
    Fatal { code: String, message: String },
    /// The client went away; nobody to tell.
    Gone,
}

impl ClientError {
    pub fn fatal(code: &str, message: String) -> ClientError {
        ClientError::Fatal {
            code: code.to_string(),
            message,
        }
    }
    fn io(_: std::io::Error) -> ClientError {
        ClientError::Gone
    }
}

impl From<CheckoutError> for ClientError {
    fn from(e: CheckoutError) -> Self {
        match &e {
            CheckoutError::WaitTimeout(_) => ClientError::fatal("08P01", e.to_string()),
            CheckoutError::Server(s) => ClientError::fatal(s.sqlstate(), s.to_string()),
        }
    }
}

/// Serve one client connection to the end.
///
/// Every idle client keeps this future, so it is kept small (see the size
/// test below): the login is boxed (large, and done with early), and this
/// is a plain fn returning an `async move` block because an `async fn`
/// would store its arguments again beside the futures it awaits. `slot` is
/// the client's place under `max_client_conn`, held to the end.
#[allow(clippy::manual_async_fn)] // deliberate: see the doc comment
pub fn serve(
    stream: TcpStream,
    shared: Arc<Shared>,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let _slot = slot;
        let _open = ClientCount::new();
        let Some((stream, logged_in)) = Box::pin(open_session(stream, &shared)).await else {
            return;
        };
        let session = match logged_in {
            LoggedIn::Pool(session) => session,
            LoggedIn::Admin(admin) => {
                Box::pin(admin::run(stream, admin, shared)).await;
                return;
            }
        };
        drop(shared);
        relay::run(stream, session).await;
    }
}

/// Keeps `pgmux_client_connections` while a client's task lives.
struct ClientCount;

impl ClientCount {
    fn new() -> ClientCount {
        stats::client_connection(1);
        ClientCount
    }
}

impl Drop for ClientCount {
    fn drop(&mut self) {
        stats::client_connection(-1);
    }
}

/// A client past its login: into a pool, or into the admin console.
pub enum LoggedIn {
    Pool(Session),
    Admin(AdminSession),
}

/// Log the client in within `client_login_timeout`, or tell it why not.
async fn open_session(mut stream: TcpStream, shared: &Shared) -> Option<(TcpStream, LoggedIn)> {
    let peer = stream.peer_addr().ok();
    let span = tracing::info_span!("client", id = tracing::field::Empty, peer = ?peer);
    let login_timeout = shared.pools.config().client_login_timeout();
    let opened = crate::io::timeout(login_timeout, log_in(&mut stream, shared, &span)).await;
    let (code, message) = match opened {
        Ok(Ok(Some(session))) => return Some((stream, session)),
        Ok(Ok(None)) | Ok(Err(ClientError::Gone)) => return None,
        Ok(Err(ClientError::Fatal { code, message })) => {
            stats::login_failed(failure_reason(&code));
            (code, message)
        }
        Err(_) => {
            stats::login_failed(LoginFailure::Timeout);
            let message =
                format!("client_login_timeout: login not completed within {login_timeout:?}");
            ("08P01".to_string(), message)
        }
    };
    tracing::info!(parent: &span, %code, %message, "login refused");
    refuse(&mut stream, &code, &message).await;
    None
}

/// The metric label for a refused login, from the SQLSTATE it was given.
fn failure_reason(code: &str) -> LoginFailure {
    match code {
        "28P01" | "28000" => LoginFailure::Auth,
        "3D000" => LoginFailure::UnknownDatabase,
        "55000" => LoginFailure::Disabled,
        "57P01" | "57P03" => LoginFailure::ShuttingDown,
        "53300" => LoginFailure::TooManyClients,
        "08P01" | "0A000" => LoginFailure::Protocol,
        _ => LoginFailure::ServerUnavailable,
    }
}

/// Everything the relay needs about a logged-in client.
pub struct Session {
    pub pool: Arc<crate::pool::Pool>,
    pub params: ParamMap,
    pub cancel: crate::cancel::CancelKey,
    /// The client's named statements (transaction mode rewrites them).
    pub statements: crate::prepared::ClientStatements,
    pub pools: Arc<Pools>,
    /// What SHOW CLIENTS tells of this client; its span files the logs;
    /// its stop signal says when to leave.
    pub info: Arc<ConnInfo>,
    /// The server this client keeps between requests: in session mode from
    /// login to the end; in transaction mode while it holds session state
    /// there (what state: `info`'s pins).
    pub kept: Option<Box<crate::pool::Checkout>>,
}

impl Session {
    /// The session state pinning this client to its server.
    pub fn pins(&self) -> pinning::Pins {
        pinning::Pins::from_bits(self.info.pin_bits())
    }
}

async fn log_in(
    stream: &mut TcpStream,
    shared: &Shared,
    span: &tracing::Span,
) -> Result<Option<LoggedIn>, ClientError> {
    let params = match login::read_opening(stream).await? {
        login::Opening::Cancel { pid, key } => {
            shared.cancels.cancel(pid, key).await;
            return Ok(None);
        }
        login::Opening::Startup(params) => params,
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
        login::authenticate(stream, pools, &shared.decoy, &user).await?;
        let role = Role::of(&pools.config(), &user).ok_or_else(|| {
            ClientError::fatal(
                "28000",
                format!("user \"{user}\" is not allowed into the pgmux admin console (admin_users, stats_users)"),
            )
        })?;
        let mut out = BytesMut::new();
        admin::greeting(&mut out);
        tokio::io::AsyncWriteExt::write_all(stream, &out)
            .await
            .map_err(ClientError::io)?;
        tracing::info!(parent: span, %user, %database, ?role, "admin console login");
        return Ok(Some(LoggedIn::Admin(AdminSession { user, role })));
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
    login::authenticate(stream, pools, &shared.decoy, &user).await?;
    let pool = pools.get(&database, &user).map_err(unknown)?;
    let joined = match pool.mode {
        PoolMode::Session => Box::pin(join_session_pool(&pool, &params, &shared.cancels)).await,
        PoolMode::Transaction => join_transaction_pool(&pool, &params, &shared.cancels).await,
    };
    let (client_params, cancel, kept) = match joined {
        Ok(joined) => joined,
        Err(e) => {
            pools.forget_if_unused(&pool);
            return Err(e);
        }
    };
    let mut out = BytesMut::new();
    login::greeting(
        &mut out,
        &client_params,
        &pool.reported(),
        cancel.pid,
        cancel.key,
    );
    tokio::io::AsyncWriteExt::write_all(stream, &out)
        .await
        .map_err(ClientError::io)?;
    let id = next_id();
    span.record("id", id);
    let mut info = ConnInfo::new(id, State::Idle, span.clone());
    info.addr = stream.peer_addr().ok();
    info.local = stream.local_addr().ok();
    info.remote_pid = cancel.pid;
    info.application_name = client_params
        .get("application_name")
        .unwrap_or_default()
        .to_string();
    let info = Arc::new(info);
    pools.register_client(&pool, info.clone());
    pool.stats.logins.add(1);
    if pools.config().log_connections {
        tracing::info!(parent: span, %user, %database, "client logged in");
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

/// The client's settings, cancel key and (session mode) server, once it
/// has joined its pool.
type Joined = (
    ParamMap,
    crate::cancel::CancelKey,
    Option<Box<crate::pool::Checkout>>,
);

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
    let mut params = ParamMap::for_client(&defaults, startup);
    align::spell_like_server(pool, &defaults, &mut params).await?;
    Ok((pool.intern_params(params), cancels.register(), None))
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
    Ok((params, cancel, Some(Box::new(checkout))))
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
mod size_tests {
    use super::*;

    /// Every idle client keeps its session future alive: keep it small (big,
    /// rare steps are boxed), so thousands of idle clients cost little.
    #[tokio::test]
    async fn the_session_task_stays_small() {
        let cfg = crate::config::load(None, &Default::default()).unwrap();
        let secrets = Arc::new(cfg.user_secrets().unwrap());
        let shared = Arc::new(Shared::new(Arc::new(Pools::new(Arc::new(cfg), secrets))));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let stream = TcpStream::Tokio(stream);
        let slot = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        let future = serve(stream, shared, slot);
        let size = std::mem::size_of_val(&future);
        println!("session future: {size} bytes");
        assert!(size <= 576, "the session future grew to {size} bytes");
    }
}
