//! From the first byte to the checked password: the startup packet (with
//! TLS and the encryption requests) and the password exchange. The
//! greeting that follows is in [`super::greeting`].

use crate::io::Stream as TcpStream;
use bytes::{Buf, BytesMut};
use pgmux_wire::auth::{AuthError, ScramExchange, Secret, SCRAM_SHA_256, SCRAM_SHA_256_PLUS};
use pgmux_wire::frame::{read_cstr, take_frame};
use pgmux_wire::reply;
use pgmux_wire::startup::{parse_startup, startup_body_len, StartupError, StartupRequest};
use tokio::io::AsyncWriteExt;

use std::net::SocketAddr;

use crate::config::AuthType;
use crate::pool::Pools;
use crate::server::Credential;
use crate::session::ClientError;
use crate::stats;
use crate::tls::{HandshakeFailure, Side, TlsSetup};

/// Password messages are small; anything bigger during login is hostile.
const MAX_LOGIN_MESSAGE: usize = 10_000;

/// What the first packet asked for.
pub enum Opening {
    Startup(Vec<(String, String)>),
    Cancel { pid: u32, key: u32 },
}

/// Read the startup packet, answering SSLRequest as `client_tls_sslmode`
/// says (and running the TLS handshake, which replaces the stream in
/// `slot`) and GSSENCRequest with `N`. PostgreSQL 17's direct TLS (a
/// ClientHello first, with ALPN `postgresql`) is taken too.
///
/// What the client sent is read into `inbox`, as much as has come in one
/// receive (a startup packet takes one), and what is left after the
/// startup packet stays there for the password exchange.
pub async fn read_opening(
    slot: &mut Option<TcpStream>,
    tls: &TlsSetup,
    peer: Option<SocketAddr>,
    inbox: &mut BytesMut,
) -> Result<Opening, ClientError> {
    let mut encrypted = false;
    // A client may ask for SSL and then GSSENC before its startup packet.
    for _ in 0..3 {
        let stream = slot.as_mut().ok_or(ClientError::Gone)?;
        while inbox.len() < 4 {
            receive(stream, inbox).await?;
        }
        let head = [inbox[0], inbox[1], inbox[2], inbox[3]];
        if head[0] == TLS_HANDSHAKE_RECORD && !encrypted {
            // No startup packet is that long: a TLS ClientHello.
            if !tls.serves_clients() {
                tracing::info!(
                    ?peer,
                    "direct TLS from a client, and client_tls_sslmode is \"disable\""
                );
                return Err(ClientError::Gone);
            }
            let received = inbox.split();
            start_tls(slot, tls, &received, peer).await?;
            let direct_alpn = slot.as_ref().and_then(|s| s.tls()).and_then(|t| t.alpn());
            if direct_alpn.as_deref() != Some(crate::tls::ALPN_POSTGRESQL) {
                return Err(ClientError::fatal(
                    "08P01",
                    "direct TLS without the ALPN protocol \"postgresql\"".into(),
                ));
            }
            encrypted = true;
            continue;
        }
        let len = startup_body_len(i32::from_be_bytes(head)).map_err(startup_error)?;
        while inbox.len() < 4 + len {
            receive(stream, inbox).await?;
        }
        let packet = inbox.split_to(4 + len);
        match parse_startup(&packet[4..]).map_err(startup_error)? {
            StartupRequest::Ssl if encrypted => {
                return Err(ClientError::fatal(
                    "08P01",
                    "SSLRequest on a connection that is already encrypted".into(),
                ))
            }
            // Bytes sent after an SSLRequest, before the handshake, are
            // plaintext that must not pass for encrypted (as PostgreSQL
            // refuses them since CVE-2021-23214).
            StartupRequest::Ssl if !inbox.is_empty() => {
                return Err(ClientError::fatal(
                    "08P01",
                    "received unencrypted data after the SSLRequest".into(),
                ))
            }
            StartupRequest::Ssl if tls.serves_clients() => {
                stream.write_all(b"S").await.map_err(ClientError::io)?;
                start_tls(slot, tls, &[], peer).await?;
                encrypted = true;
            }
            StartupRequest::Ssl => stream.write_all(b"N").await.map_err(ClientError::io)?,
            StartupRequest::GssEnc => stream.write_all(b"N").await.map_err(ClientError::io)?,
            // A cancel is taken however it comes: libpq before 17 sends
            // it in plaintext whatever its sslmode.
            StartupRequest::Cancel { pid, key } => return Ok(Opening::Cancel { pid, key }),
            StartupRequest::Startup { minor, mut params } => {
                if !encrypted && tls.client_mode.requires_tls() {
                    return Err(ClientError::fatal(
                        "28000",
                        format!(
                            "client_tls_sslmode is \"{}\": pgmux accepts only TLS connections (connect with sslmode=require or stronger)",
                            tls.client_mode.name()
                        ),
                    ));
                }
                if minor > 0 || params.iter().any(|(k, _)| k.starts_with("_pq_.")) {
                    let unsupported: Vec<String> = params
                        .iter()
                        .filter(|(k, _)| k.starts_with("_pq_."))
                        .map(|(k, _)| k.clone())
                        .collect();
                    params.retain(|(k, _)| !k.starts_with("_pq_."));
                    let names: Vec<&str> = unsupported.iter().map(String::as_str).collect();
                    let mut out = BytesMut::new();
                    reply::negotiate_protocol_version(&mut out, &names);
                    stream.write_all(&out).await.map_err(ClientError::io)?;
                }
                return Ok(Opening::Startup(params));
            }
        }
    }
    Err(ClientError::fatal(
        "08P01",
        "too many encryption requests before the startup packet".into(),
    ))
}

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Serve TLS on the client's connection: the stream in `slot` becomes a
/// TLS stream (`received`: bytes of the ClientHello already read).
async fn start_tls(
    slot: &mut Option<TcpStream>,
    setup: &TlsSetup,
    received: &[u8],
    peer: Option<SocketAddr>,
) -> Result<(), ClientError> {
    let plain = slot.take().ok_or(ClientError::Gone)?;
    let stream = match setup.accept(plain, received) {
        Ok(tls) => TcpStream::Tls(Box::new(tls)),
        Err(plain) => {
            slot.replace(plain);
            return Err(ClientError::Gone);
        }
    };
    let Some(session) = slot.insert(stream).tls() else {
        return Err(ClientError::Gone);
    };
    let done = session.handshake().await;
    stats::tls_handshake(
        Side::Client,
        done.as_ref().map(|_| ()).map_err(HandshakeFailure::of),
    );
    if let Err(e) = done {
        // Nothing can be said to a client that does not speak our TLS.
        tracing::info!(?peer, error = %e, "TLS handshake with a client failed");
        return Err(ClientError::Gone);
    }
    Ok(())
}

fn startup_error(e: StartupError) -> ClientError {
    let code = match e {
        StartupError::UnsupportedProtocol { .. } => "0A000",
        _ => "08P01",
    };
    ClientError::fatal(code, e.to_string())
}

/// A client's password checked: what is still owed to it before
/// AuthenticationOk (SCRAM's final message, sent by the caller in one
/// write with the greeting), and what its login proved that lets pgmux log
/// in to servers as that user where the configuration holds no password
/// (a user looked up with auth_query, or kept as a verifier or MD5 hash).
pub struct Authenticated {
    pub out: BytesMut,
    pub learned: Option<Credential>,
}

/// Run the password exchange `auth_type` calls for, against the user's
/// configured secret or, failing that, the one auth_query finds in
/// `database`. Unknown users get the same exchange against a decoy, and
/// the same 28P01 as a wrong password.
pub async fn authenticate(
    stream: &mut TcpStream,
    pools: &Pools,
    user: &str,
    database: &str,
    inbox: &mut BytesMut,
) -> Result<Authenticated, ClientError> {
    let auth_type = pools.config().auth_type;
    let nothing_owed = || Authenticated {
        out: BytesMut::new(),
        learned: None,
    };
    match auth_type {
        AuthType::Trust => return Ok(nothing_owed()),
        AuthType::Cert => return certificate_login(stream, user).map(|()| nothing_owed()),
        _ => {}
    }
    let (secret, looked_up) = match pools.secret(user) {
        Some(secret) => (Some(secret), false),
        // Console users are always configured ones.
        None if crate::admin::is_console(database) => (None, false),
        // Boxed: its server round trip would otherwise make every login's
        // future (kept through each login) several kilobytes bigger.
        None => (Box::pin(pools.look_up_secret(user, database)).await, true),
    };
    let checked = check_password(stream, pools, user, auth_type, secret.as_ref(), inbox).await;
    if looked_up && secret.is_some() && checked.is_err() {
        // Perhaps the password changed since the lookup.
        pools.forget_looked_up(user);
    }
    checked
}

async fn check_password(
    stream: &mut TcpStream,
    pools: &Pools,
    user: &str,
    auth_type: AuthType,
    secret: Option<&Secret>,
    buf: &mut BytesMut,
) -> Result<Authenticated, ClientError> {
    let wrong = || {
        ClientError::fatal(
            "28P01",
            format!("password authentication failed for user \"{user}\""),
        )
    };
    let done = |learned| Authenticated {
        out: BytesMut::new(),
        learned,
    };
    // Room for the biggest of the exchange's messages (server-first).
    let mut out = BytesMut::with_capacity(256);
    // Like PostgreSQL, a stored MD5 hash forces MD5 and a SCRAM verifier
    // forces SCRAM, whatever the configured method.
    let method = match (auth_type, secret) {
        (AuthType::Plain, _) => AuthType::Plain,
        (_, Some(Secret::Md5(_))) => AuthType::Md5,
        (_, Some(Secret::Scram(_))) => AuthType::ScramSha256,
        (m, _) => m,
    };
    match method {
        AuthType::Plain => {
            reply::auth_cleartext(&mut out);
            stream.write_all(&out).await.map_err(ClientError::io)?;
            let body = read_password_message(stream, buf).await?;
            let mut s = &body[..];
            let password = read_cstr(&mut s).ok_or_else(malformed)?;
            let password = std::str::from_utf8(password).map_err(|_| malformed())?;
            match secret {
                Some(secret) if secret.check_plain(user, password) => {
                    let learned = secret
                        .plaintext()
                        .is_none()
                        .then(|| Credential::Password(password.to_string()));
                    Ok(done(learned))
                }
                _ => Err(wrong()),
            }
        }
        AuthType::Md5 => {
            let salt: [u8; 4] = rand::random();
            reply::auth_md5(&mut out, salt);
            stream.write_all(&out).await.map_err(ClientError::io)?;
            let body = read_password_message(stream, buf).await?;
            let mut s = &body[..];
            let response = read_cstr(&mut s).ok_or_else(malformed)?;
            let response = std::str::from_utf8(response).map_err(|_| malformed())?;
            match secret {
                Some(secret) if secret.check_md5(user, salt, response) => {
                    let learned = match secret {
                        Secret::Md5(hash) => Some(Credential::Md5Hash(hash.clone())),
                        _ => None,
                    };
                    Ok(done(learned))
                }
                _ => Err(wrong()),
            }
        }
        AuthType::ScramSha256 | AuthType::Trust | AuthType::Cert => {
            // An unknown user still gets a full exchange against a decoy
            // verifier (its salt a function of the name, as a real one's
            // is fixed), so the reply does not reveal which users exist.
            let (verifier, real, kept_as_verifier) = match secret {
                Some(Secret::Scram(v)) => (v.clone(), true, true),
                Some(_) => match pools.scram_verifier(user) {
                    Some(v) => (v, true, false),
                    None => (pools.decoy(user), false, false),
                },
                None => (pools.decoy(user), false, false),
            };
            let server_key = verifier.server_key();
            // Over TLS, SCRAM-SHA-256-PLUS binds the exchange to this
            // session, so libpq's channel_binding=require works through
            // pgmux.
            let binding = stream.tls().and_then(|t| t.server_end_point());
            let mechanisms: &[&str] = match binding {
                Some(_) => &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256],
                None => &[SCRAM_SHA_256],
            };
            reply::auth_sasl(&mut out, mechanisms);
            stream.write_all(&out).await.map_err(ClientError::io)?;
            let body = read_password_message(stream, buf).await?;
            let (mechanism, client_first) = sasl_initial_response(&body)?;
            let (exchange, server_first) =
                ScramExchange::start(verifier, mechanism, client_first, binding.as_deref())
                    .map_err(|e| sasl_error(e, user))?;
            out.clear();
            reply::auth_sasl_continue(&mut out, server_first.as_bytes());
            stream.write_all(&out).await.map_err(ClientError::io)?;
            let body = read_password_message(stream, buf).await?;
            let (server_final, client_key) = exchange
                .finish_with_client_key(&body)
                .map_err(|e| sasl_error(e, user))?;
            if !real {
                return Err(wrong());
            }
            out.clear();
            reply::auth_sasl_final(&mut out, server_final.as_bytes());
            // A verifier is all pgmux has: the client's proof yields the
            // ClientKey, which with the ServerKey logs in to PostgreSQL.
            let learned = kept_as_verifier.then_some(Credential::ScramKeys {
                client_key,
                server_key,
            });
            Ok(Authenticated { out, learned })
        }
    }
}

/// `auth_type = cert`: the client's certificate, already checked against
/// `client_tls_ca_file` in the handshake, logs it in as its CommonName
/// (PostgreSQL's `cert` method without a user map).
fn certificate_login(stream: &TcpStream, user: &str) -> Result<(), ClientError> {
    let refused = |why: &str| {
        ClientError::fatal(
            "28000",
            format!("certificate authentication failed for user \"{user}\": {why}"),
        )
    };
    let cert = stream
        .tls()
        .and_then(|t| t.peer_certificate())
        .ok_or_else(|| refused("no client certificate (auth_type = cert needs TLS with one)"))?;
    match crate::tls::common_name(&cert) {
        Some(name) if name == user => Ok(()),
        Some(_) => Err(refused("the certificate's CommonName is another user's")),
        None => Err(refused("the certificate has no CommonName")),
    }
}

fn malformed() -> ClientError {
    ClientError::fatal("08P01", "malformed password message".into())
}

fn sasl_error(e: AuthError, user: &str) -> ClientError {
    match e {
        AuthError::WrongPassword => ClientError::fatal(
            "28P01",
            format!("password authentication failed for user \"{user}\""),
        ),
        AuthError::ChannelBinding => ClientError::fatal(
            "28000",
            "channel binding (SCRAM-SHA-256-PLUS) needs a TLS connection to pgmux".into(),
        ),
        AuthError::BindingMismatch(why) => {
            ClientError::fatal("28000", format!("SCRAM channel binding failed: {why}"))
        }
        AuthError::Malformed => ClientError::fatal("08P01", "malformed SCRAM message".into()),
    }
}

/// SASLInitialResponse: mechanism name, then a length-prefixed payload.
fn sasl_initial_response(body: &[u8]) -> Result<(&str, &[u8]), ClientError> {
    let mut s = body;
    let mechanism = match read_cstr(&mut s).ok_or_else(malformed)? {
        b"SCRAM-SHA-256" => SCRAM_SHA_256,
        b"SCRAM-SHA-256-PLUS" => SCRAM_SHA_256_PLUS,
        _ => {
            return Err(ClientError::fatal(
                "28000",
                "pgmux offers only SCRAM-SHA-256 and, over TLS, SCRAM-SHA-256-PLUS".into(),
            ))
        }
    };
    if s.len() < 4 {
        return Err(malformed());
    }
    let len = s.get_i32();
    if len < 0 || len as usize != s.len() {
        return Err(malformed());
    }
    Ok((mechanism, s))
}

/// Read what the client has sent into `inbox`, waiting for it if nothing
/// has come: one receive, of whatever has arrived. A short read makes the
/// stream forget its readiness ([`TcpStream::try_read_buf`]), so the next
/// wait sleeps in the poller instead of trying a receive that can only
/// say EAGAIN (the client sends its next message only after pgmux's
/// reply).
async fn receive(stream: &TcpStream, inbox: &mut BytesMut) -> Result<(), ClientError> {
    inbox.reserve(LOGIN_READ);
    loop {
        match stream.try_read_buf(inbox) {
            Ok(0) => return Err(ClientError::Gone),
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::future::poll_fn(|cx| stream.poll_read_ready(cx))
                    .await
                    .map_err(ClientError::io)?;
            }
            Err(e) => return Err(ClientError::io(e)),
        }
    }
}

/// Room for one receive during login: a whole startup packet or SCRAM
/// message as clients send them (a bigger one takes more receives).
const LOGIN_READ: usize = 512;

async fn read_password_message(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<bytes::Bytes, ClientError> {
    loop {
        match take_frame(buf, MAX_LOGIN_MESSAGE) {
            Ok(Some(frame)) if frame.tag == b'p' => return Ok(frame.body),
            Ok(Some(frame)) => {
                return Err(ClientError::fatal(
                    "08P01",
                    format!("expected a password message, got {:?}", frame.tag as char),
                ));
            }
            Ok(None) => {}
            Err(e) => return Err(ClientError::fatal("08P01", e.to_string())),
        }
        receive(stream, buf).await?;
    }
}
