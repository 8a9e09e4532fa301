//! One backend connection: connect and log in, then the few things the proxy
//! asks of it outside plain forwarding (internal queries, health, identity).
//! Answering the server's authentication request is in [`auth`]; request
//! and transaction start times, in [`timing`].

pub(crate) mod auth;
mod connect;
mod dns;
mod secure;
pub use connect::{OpenPerHost, Reach};
pub mod hosts;
mod timing;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::io::Stream as TcpStream;
use bytes::{BufMut, BytesMut};
use pgmux_wire::backend::{self, ErrorFields};
use pgmux_wire::frame::{take_frame, write_message, Frame};
use pgmux_wire::reply;
use pgmux_wire::startup::startup_packet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cancel::CancelTarget;
use crate::config::{Endpoint, Role, Target};
use crate::conninfo::{next_id, ConnInfo, State};
use crate::params::ParamMap;
use crate::prepared::{forgets_statements, ServerStatements};
use crate::session::{Expect, ServerFlow};

pub use timing::Timing;

/// Idle this long, a server is probed with a real syscall before reuse.
const PEEK_AFTER_IDLE: Duration = Duration::from_millis(1);

/// Size of a server's read buffer; it lives as long as the connection.
const SERVER_BUFFER: usize = 64 * 1024;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ServerError {
    #[error("could not connect to server {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("could not connect to server: timed out after {0:?}")]
    Timeout(Duration),
    #[error("{}", .0.message)]
    Backend(ErrorFields),
    #[error("server asked for a password for user \"{0}\", and pgmux has no plaintext password for that user")]
    NoPassword(String),
    #[error("could not connect to server {addr} with TLS: {reason}")]
    Tls { addr: String, reason: String },
    #[error("server authentication method {0} is not supported")]
    UnsupportedAuth(i32),
    #[error("server protocol violation: {0}")]
    Protocol(String),
    #[error("server closed the connection unexpectedly")]
    Closed,
    #[error("server connection failed: {0}")]
    Lost(String),
    #[error("no server of {hosts} fits target_session_attrs = \"{attrs}\" ({found})")]
    NoFit {
        hosts: String,
        attrs: &'static str,
        found: String,
    },
    #[error("max_db_connections: all {0} server connections to this database are busy")]
    DatabaseFull(u32),
    #[error("query_timeout: the request ran longer than {0:?}, and its cancel did not end it within cancel_wait_timeout ({1:?}); the server connection was closed")]
    QueryTimeout(Duration, Duration),
}

impl ServerError {
    /// The SQLSTATE a client is given for this failure.
    pub fn sqlstate(&self) -> &str {
        match self {
            ServerError::Backend(e) if !e.code.is_empty() => &e.code,
            ServerError::Connect { .. }
            | ServerError::Tls { .. }
            | ServerError::Timeout(_)
            | ServerError::NoFit { .. } => "08001",
            ServerError::NoPassword(_) => "28000",
            ServerError::UnsupportedAuth(_) => "28000",
            ServerError::Protocol(_) => "08P01",
            ServerError::DatabaseFull(_) => "53300",
            ServerError::QueryTimeout(..) => "57014",
            ServerError::Backend(_) | ServerError::Closed | ServerError::Lost(_) => "08006",
        }
    }

    pub fn io(e: std::io::Error) -> ServerError {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ServerError::Closed
        } else {
            ServerError::Lost(e.to_string())
        }
    }
}

/// Who pgmux logs in as, and with what.
#[derive(Clone)]
pub struct Login {
    pub user: String,
    pub credential: Credential,
}

/// What pgmux proves a user's identity to PostgreSQL with. Never logged.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// Nothing: only a server that trusts pgmux (or a client
    /// certificate) lets it in.
    None,
    /// A plaintext password (proxy.toml, auth_file, DB_PASSWORD).
    Password(String),
    /// An `md5…` hash as pg_shadow keeps it: answers MD5, not SCRAM.
    Md5Hash(String),
    /// SCRAM-SHA-256 keys: the ClientKey recovered from a client's own
    /// login and the ServerKey of the user's verifier (auth_query).
    ScramKeys {
        client_key: [u8; 32],
        server_key: [u8; 32],
    },
}

impl Credential {
    /// The credential an `auth_file`/`[users]` secret gives: only a
    /// plaintext password logs in to a server by itself.
    pub fn from_secret(secret: Option<&pgmux_wire::auth::Secret>) -> Credential {
        match secret.and_then(|s| s.plaintext()) {
            Some(password) => Credential::Password(password.to_string()),
            None => Credential::None,
        }
    }
}

pub struct Server {
    pub stream: TcpStream,
    /// The idle list (the worker's reactor) this server is registered with
    /// (see [`crate::pool::idle`]).
    pub home: usize,
    /// Read buffer, reused for the connection's life.
    pub buf: BytesMut,
    /// Settings as this server has them (reported, or set by pgmux).
    pub params: ParamMap,
    pub id: u64,
    /// What SHOW SERVERS tells of this connection.
    pub info: Arc<ConnInfo>,
    pub addr: SocketAddr,
    pub backend_pid: u32,
    pub backend_key: u32,
    pub created: Instant,
    pub last_used: Instant,
    /// When this server is due to be replaced (lifetime with jitter).
    pub expires: Option<Instant>,
    /// Where the relay stands in what this server sends.
    pub flow: ServerFlow,
    /// Replies owed for what has been sent to this server.
    pub expect: Expect,
    /// Named statements prepared on this server (transaction mode).
    pub prepared: ServerStatements,
    /// This server's share of `max_db_connections`, freed when it closes.
    pub db_slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// When the request in flight and the open transaction began.
    pub timing: Timing,
    /// Primary or standby, when `target_session_attrs` asked.
    pub role: Option<Role>,
    /// The listed server this connection reached.
    pub endpoint: Endpoint,
    max_message: usize,
}

impl Server {
    /// Open a connection to `endpoint` and log in (no timeout: the caller
    /// times each attempt; see [`connect`]).
    async fn connect_to(
        endpoint: &Endpoint,
        target: &Target,
        login: &Login,
        tcp: crate::io::TcpOptions,
        dns_ttl: Duration,
        max_message: usize,
    ) -> Result<Server, ServerError> {
        let where_ = endpoint.to_string();
        let connect_err = |e: std::io::Error| ServerError::Connect {
            addr: where_.clone(),
            reason: e.to_string(),
        };
        let stream = connect_any(&endpoint.host, endpoint.port, dns_ttl)
            .await
            .map_err(connect_err)?;
        stream.set_nodelay(true).map_err(connect_err)?;
        tcp.apply(stream.socket()).map_err(connect_err)?;
        let addr = stream.peer_addr().map_err(connect_err)?;
        let stream = secure::secure(stream, target, &endpoint.host, &where_).await?;
        let now = Instant::now();
        let id = next_id();
        let mut server = Server {
            stream,
            home: crate::pool::idle::here(),
            buf: BytesMut::with_capacity(SERVER_BUFFER),
            params: ParamMap::default(),
            id,
            info: Arc::new(ConnInfo::new(id, State::Login)),
            addr,
            backend_pid: 0,
            backend_key: 0,
            created: now,
            last_used: now,
            expires: None,
            flow: ServerFlow::new(max_message),
            expect: Expect::default(),
            prepared: ServerStatements::default(),
            db_slot: None,
            timing: Timing::default(),
            role: None,
            endpoint: endpoint.clone(),
            max_message,
        };
        server.login(&target.dbname, login).await?;
        Ok(server)
    }

    async fn login(&mut self, dbname: &str, login: &Login) -> Result<(), ServerError> {
        let packet = startup_packet(&[("user", &login.user), ("database", dbname)]);
        self.stream
            .write_all(&packet)
            .await
            .map_err(ServerError::io)?;
        let mut scram: Option<auth::ScramClient> = None;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'R' => self.authenticate(&frame, login, &mut scram).await?,
                b'S' => self.record_parameter(&frame.body),
                b'K' => {
                    let (pid, key) = backend::backend_key_data(&frame.body)
                        .ok_or_else(|| ServerError::Protocol("short BackendKeyData".into()))?;
                    self.backend_pid = pid;
                    self.backend_key = key;
                }
                b'Z' => return Ok(()),
                b'E' => return Err(ServerError::Backend(ErrorFields::parse(&frame.body))),
                b'N' | b'v' => {}
                t => {
                    return Err(ServerError::Protocol(format!(
                        "unexpected message {:?} during login",
                        t as char
                    )))
                }
            }
        }
    }

    fn record_parameter(&mut self, body: &[u8]) {
        if let Some((name, value)) = backend::parameter_status(body) {
            self.params.set(&name, &value);
        }
    }

    /// Read one whole message (control paths only; the relay never does this).
    async fn read_frame(&mut self) -> Result<Frame, ServerError> {
        loop {
            if let Some(frame) = take_frame(&mut self.buf, self.max_message)
                .map_err(|e| ServerError::Protocol(e.to_string()))?
            {
                return Ok(frame);
            }
            if self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(ServerError::io)?
                == 0
            {
                return Err(ServerError::Closed);
            }
        }
    }

    /// Run statements pgmux itself needs (SET, ROLLBACK, DISCARD ALL),
    /// swallowing the replies. Returns the final transaction status, or the
    /// first error the server reported (after draining to ReadyForQuery).
    pub async fn run(&mut self, sql: &str) -> Result<u8, ServerError> {
        let mut out = BytesMut::new();
        reply::query(&mut out, sql);
        self.stream.write_all(&out).await.map_err(ServerError::io)?;
        self.drain_until_ready(1).await
    }

    /// Read and drop replies until `count` ReadyForQuery messages arrived.
    pub async fn drain_until_ready(&mut self, count: usize) -> Result<u8, ServerError> {
        self.read_replies(count, None).await
    }

    /// Run one query of pgmux's own and return its DataRow bodies. The
    /// notifications and notices the server sends meanwhile (a LISTENing
    /// client's, queued during its transaction) are appended to `passed`,
    /// whole, for the client.
    pub async fn query_rows(
        &mut self,
        sql: &str,
        passed: &mut BytesMut,
    ) -> Result<Vec<bytes::Bytes>, ServerError> {
        let mut out = BytesMut::new();
        reply::query(&mut out, sql);
        self.stream.write_all(&out).await.map_err(ServerError::io)?;
        let mut rows = Vec::new();
        self.read_replies(1, Some((&mut rows, passed))).await?;
        Ok(rows)
    }

    /// Run one query of pgmux's own with text parameters, by the extended
    /// protocol (the values never become part of the SQL), and return its
    /// DataRow bodies.
    pub async fn query_params(
        &mut self,
        sql: &str,
        params: &[&str],
    ) -> Result<Vec<bytes::Bytes>, ServerError> {
        use postgres_protocol::message::frontend;
        use postgres_protocol::IsNull;
        let mut out = BytesMut::new();
        let bad = |e: &dyn std::fmt::Display| ServerError::Protocol(e.to_string());
        frontend::parse("", sql, std::iter::empty(), &mut out).map_err(|e| bad(&e))?;
        frontend::bind(
            "",
            "",
            std::iter::once(0i16),
            params.iter(),
            |value, buf| {
                buf.put_slice(value.as_bytes());
                Ok(IsNull::No)
            },
            std::iter::once(0i16),
            &mut out,
        )
        .map_err(|e| match e {
            frontend::BindError::Conversion(e) => bad(&e),
            frontend::BindError::Serialization(e) => bad(&e),
        })?;
        frontend::execute("", 0, &mut out).map_err(|e| bad(&e))?;
        frontend::sync(&mut out);
        self.stream.write_all(&out).await.map_err(ServerError::io)?;
        let (mut rows, mut passed) = (Vec::new(), BytesMut::new());
        self.read_replies(1, Some((&mut rows, &mut passed))).await?;
        Ok(rows)
    }

    async fn read_replies(
        &mut self,
        mut count: usize,
        mut collect: Option<(&mut Vec<bytes::Bytes>, &mut BytesMut)>,
    ) -> Result<u8, ServerError> {
        let mut first_error = None;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'S' => self.record_parameter(&frame.body),
                b'E' if first_error.is_none() => {
                    first_error = Some(ErrorFields::parse(&frame.body))
                }
                b'D' => {
                    if let Some((rows, _)) = collect.as_mut() {
                        rows.push(frame.body);
                    }
                }
                b'A' | b'N' => {
                    if let Some((_, passed)) = collect.as_mut() {
                        write_message(passed, frame.tag, |b| b.put_slice(&frame.body));
                    }
                }
                b'C' if forgets_statements(&frame.body) => self.prepared.clear(),
                b'Z' => {
                    count = count.saturating_sub(1);
                    if count == 0 {
                        let status = backend::ready_status(&frame.body)
                            .ok_or_else(|| ServerError::Protocol("bad ReadyForQuery".into()))?;
                        return match first_error {
                            Some(e) => Err(ServerError::Backend(e)),
                            None => Ok(status),
                        };
                    }
                }
                _ => {}
            }
        }
    }

    /// True when nothing has arrived on an idle connection: a closed socket
    /// or an unexpected message (PostgreSQL's FATAL before a termination)
    /// means the server must not be handed out.
    ///
    /// A server that has been idle (`idle`) a while gets a real non-blocking peek
    /// (a syscall). One reused within moments is checked against the
    /// reactor's readiness only, which costs nothing: on a busy pool that
    /// saves a syscall per transaction, and the only case it can miss is a
    /// server killed within the last millisecond before the reactor
    /// has seen its close.
    pub fn is_healthy(&self, idle: Duration) -> bool {
        self.check_health(idle >= PEEK_AFTER_IDLE)
    }

    /// How long the server has been idle at `now`.
    pub fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_used)
    }

    /// [`Server::is_healthy`], with a real peek or the reactor's readiness.
    pub fn check_health(&self, peek: bool) -> bool {
        self.stream.quiet(peek)
    }

    /// Move this server into the reactor of the thread calling (from the
    /// worker that last used it): two `epoll_ctl` calls, once per move.
    pub fn rehome(self: Box<Self>) -> std::io::Result<Box<Self>> {
        let mut server = *self;
        server.stream = server.stream.rehome()?;
        server.home = crate::pool::idle::here();
        Ok(Box::new(server))
    }

    pub fn cancel_target(&self) -> CancelTarget {
        CancelTarget {
            addr: self.addr,
            pid: self.backend_pid,
            key: self.backend_key,
        }
    }

    /// Send Terminate and drop the connection (over TLS, with the
    /// session's close_notify, which also pushes out what rustls holds).
    pub async fn close(mut self) {
        let _ = crate::io::timeout(Duration::from_secs(1), async {
            self.stream.write_all(b"X\0\0\0\x04").await?;
            if self.stream.tls().is_some() {
                self.stream.shutdown().await?;
            }
            Ok::<(), std::io::Error>(())
        })
        .await;
    }
}

/// Connect to `host:port`, trying each address it resolves to (see
/// [`dns`]: a name is looked up at most every `dns_ttl`, and looked up
/// again at once when none of its addresses answers).
pub(crate) async fn connect_any(
    host: &str,
    port: u16,
    dns_ttl: Duration,
) -> std::io::Result<TcpStream> {
    let addrs = dns::resolve(host, port, dns_ttl).await?;
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match crate::io::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    dns::forget(host, port);
    Err(last)
}
