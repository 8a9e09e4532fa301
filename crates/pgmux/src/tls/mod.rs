//! TLS on both sides, with rustls (ring provider), driven by pgmux's own
//! buffers ([`stream`]) so a TLS connection is just another [`crate::io::Stream`]
//! to the relay, on either I/O backend.
//!
//! [`TlsSetup`] is what the configuration's `client_tls_*` and `server_tls_*`
//! keys build: certificate files are read when the configuration is loaded
//! or reloaded, never per connection, and a reload that cannot read them
//! keeps the running setup.

mod certificate;
mod files;
mod stream;
mod verify;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError, TlsIdentity};

pub use certificate::{common_name, server_end_point};
use files::{certificates, private_key, protocols, roots, system_roots};
pub use stream::TlsStream;

/// libpq's `sslmode` values, as PgBouncer takes them for both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Plaintext is refused.
    pub fn requires_tls(self) -> bool {
        self >= SslMode::Require
    }
}

/// ALPN name of the PostgreSQL protocol (PostgreSQL 17's direct TLS
/// requires it; earlier servers ignore it).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// The built TLS configuration of both sides.
pub struct TlsSetup {
    pub client_mode: SslMode,
    /// How clients are served TLS; `None` when `client_tls_sslmode` is
    /// `disable`.
    acceptor: Option<Arc<ServerConfig>>,
    /// The channel binding data of the certificate clients are served.
    acceptor_end_point: Option<EndPoint>,
    pub server_mode: SslMode,
    /// Toward servers, by the client certificate pgmux presents (the
    /// general one, or a database's own; `None`: none).
    connectors: HashMap<Option<TlsIdentity>, Connectors>,
    /// Changes when what shapes server connections changes (the files'
    /// contents, the protocols): servers opened under another are replaced.
    pub server_fingerprint: u64,
}

impl fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSetup")
            .field("client_mode", &self.client_mode)
            .field("server_mode", &self.server_mode)
            .finish_non_exhaustive()
    }
}

impl TlsSetup {
    /// Read the certificate files the configuration names and build both
    /// sides; an error names the key and the file.
    pub fn load(config: &Config) -> Result<TlsSetup, ConfigError> {
        let (acceptor, acceptor_end_point) = match config.client_tls_sslmode {
            SslMode::Disable => (None, None),
            mode => {
                let (built, end_point) = acceptor(config, mode)?;
                (Some(Arc::new(built)), end_point)
            }
        };
        let versions = protocols("server_tls_protocols", &config.server_tls_protocols)?;
        if config.server_tls_cert_file.is_empty() != config.server_tls_key_file.is_empty() {
            return Err(ConfigError::new(
                "server_tls_cert_file and server_tls_key_file: give both or neither".into(),
            ));
        }
        let verifiers = |key: &str, roots: RootCertStore| {
            let full = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| ConfigError::new(format!("{key}: {e}")))?;
            let chain_only: Arc<dyn ServerCertVerifier> = Arc::new(verify::ChainOnly(full.clone()));
            Ok::<VerifierPair, ConfigError>((chain_only, full))
        };
        // The system's roots are read only if some server is verified
        // without a CA file of its own.
        let verifies_by_system = config.server_tls_ca_file.is_empty()
            && (config.server_tls_sslmode >= SslMode::VerifyCa
                || config.databases.values().any(|db| {
                    db.server_tls_ca_file.is_none()
                        && db
                            .server_tls_sslmode
                            .is_some_and(|m| m >= SslMode::VerifyCa)
                }));
        let general_roots = match config.server_tls_ca_file.as_str() {
            "" => system_roots(verifies_by_system)?,
            file => Some(roots("server_tls_ca_file", file)?),
        };
        let general = match general_roots {
            None => None,
            Some(roots) => Some(verifiers("server_tls_ca_file", roots)?),
        };
        let mut by_file = HashMap::new();
        for (name, db) in &config.databases {
            if let Some(file) = db.server_tls_ca_file.as_deref() {
                if !by_file.contains_key(file) {
                    let key = format!("databases.{name}.server_tls_ca_file");
                    by_file.insert(file.to_string(), verifiers(&key, roots(&key, file)?)?);
                }
            }
        }
        // Each client certificate in use, with the keys that name it.
        let mut identities = vec![(config.server_tls_identity(), "server_tls".to_string())];
        for (name, db) in &config.databases {
            if let (Some(cert), Some(key)) = (&db.server_tls_cert_file, &db.server_tls_key_file) {
                let identity = Some((cert.clone(), key.clone()));
                if !identities.iter().any(|(known, _)| *known == identity) {
                    identities.push((identity, format!("databases.{name}.server_tls")));
                }
            }
        }
        let mut connectors = HashMap::new();
        for (identity, keys) in identities {
            let set = Connectors::build(
                &versions,
                identity.as_ref(),
                &keys,
                general.as_ref(),
                &by_file,
            )?;
            connectors.insert(identity, set);
        }
        Ok(TlsSetup {
            client_mode: config.client_tls_sslmode,
            acceptor,
            acceptor_end_point,
            server_mode: config.server_tls_sslmode,
            connectors,
            server_fingerprint: server_fingerprint(config),
        })
    }

    /// Neither side speaks TLS (unit tests and tools).
    pub fn disabled() -> TlsSetup {
        let connector = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verify::SignatureOnly::new(provider())))
            .with_no_client_auth();
        let none = Connectors {
            unverified: Arc::new(connector),
            verified: None,
            verified_by_file: HashMap::new(),
        };
        TlsSetup {
            client_mode: SslMode::Disable,
            acceptor: None,
            acceptor_end_point: None,
            server_mode: SslMode::Disable,
            connectors: HashMap::from([(None, none)]),
            server_fingerprint: 0,
        }
    }

    /// The server side of a TLS session with a client over `plain`, if
    /// TLS is offered (`received`: bytes of the ClientHello already read).
    pub fn accept(
        &self,
        plain: crate::io::Stream,
        received: &[u8],
    ) -> Result<TlsStream, crate::io::Stream> {
        let Some(conn) = self
            .acceptor
            .as_ref()
            .and_then(|config| rustls::ServerConnection::new(config.clone()).ok())
        else {
            return Err(plain);
        };
        Ok(TlsStream::new(plain, conn, received)
            .with_own_end_point(self.acceptor_end_point.clone()))
    }

    /// TLS is offered to clients.
    pub fn serves_clients(&self) -> bool {
        self.acceptor.is_some()
    }

    /// The client side of a TLS session with the server at `host`, as
    /// `mode` asks, checked against `ca_file` if the database names one,
    /// presenting `identity` (the database's client certificate or the
    /// general one).
    pub fn connect(
        &self,
        mode: SslMode,
        host: &str,
        ca_file: Option<&str>,
        identity: Option<&TlsIdentity>,
    ) -> Result<rustls::ClientConnection, String> {
        let set = self.connectors.get(&identity.cloned()).ok_or(
            "this client certificate is not in the loaded TLS setup (a reload is under way)",
        )?;
        let verified = match ca_file {
            Some(file) => set.verified_by_file.get(file),
            None => set.verified.as_ref(),
        };
        let config = match (mode, verified) {
            (SslMode::VerifyCa, Some((chain_only, _))) => chain_only,
            (SslMode::VerifyFull, Some((_, full))) => full,
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(
                    "no CA certificates to verify the server with (server_tls_ca_file)".into(),
                )
            }
            _ => &set.unverified,
        };
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host:?} is not a host name TLS can check: {e}"))?;
        rustls::ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())
    }
}

fn server_fingerprint(config: &Config) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    config.server_tls_protocols.hash(&mut h);
    let per_database = config.databases.values().flat_map(|db| {
        [
            &db.server_tls_ca_file,
            &db.server_tls_cert_file,
            &db.server_tls_key_file,
        ]
        .into_iter()
        .flatten()
    });
    for file in [
        &config.server_tls_ca_file,
        &config.server_tls_cert_file,
        &config.server_tls_key_file,
    ]
    .into_iter()
    .chain(per_database)
    {
        file.hash(&mut h);
        std::fs::read(file).unwrap_or_default().hash(&mut h);
    }
    h.finish()
}

/// ring rather than aws-lc-rs: a third of the build time, no C toolchain
/// beyond cc. rustls 0.23.48 marks it deprecated because ring has no
/// post-quantum key exchange; connections get X25519 and the NIST curves.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Toward servers, checked by a set of CAs: the chain only (`verify-ca`),
/// and chain and host name (`verify-full`).
type Verified = (Arc<ClientConfig>, Arc<ClientConfig>);

/// The checks behind [`Verified`], shared by every client certificate.
type VerifierPair = (Arc<dyn ServerCertVerifier>, Arc<dyn ServerCertVerifier>);

/// Toward servers, presenting one client certificate (or none): no
/// certificate check (`allow`, `prefer`, `require`), and checked by the
/// general CA (`None` when it is not needed and not given) or by a
/// database's own CA file.
struct Connectors {
    unverified: Arc<ClientConfig>,
    verified: Option<Verified>,
    verified_by_file: HashMap<String, Verified>,
}

impl Connectors {
    /// `keys` names the settings of `identity` in errors
    /// (`server_tls` or `databases.NAME.server_tls`).
    fn build(
        versions: &[&'static rustls::SupportedProtocolVersion],
        identity: Option<&TlsIdentity>,
        keys: &str,
        general: Option<&VerifierPair>,
        by_file: &HashMap<String, VerifierPair>,
    ) -> Result<Connectors, ConfigError> {
        let client_auth = match identity {
            None => None,
            Some((cert, key)) => Some((
                certificates(&format!("{keys}_cert_file"), cert)?,
                private_key(&format!("{keys}_key_file"), key)?,
            )),
        };
        let build = |verifier: Arc<dyn ServerCertVerifier>| {
            let builder = ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(versions)
                .map_err(|e| ConfigError::new(format!("server_tls_protocols: {e}")))?
                .dangerous()
                .with_custom_certificate_verifier(verifier);
            let mut built = match &client_auth {
                None => builder.with_no_client_auth(),
                Some((certs, key)) => builder
                    .with_client_auth_cert(certs.clone(), key.clone_key())
                    .map_err(|e| ConfigError::new(format!("{keys}_key_file: {e}")))?,
            };
            built.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
            // PostgreSQL keeps no sessions to resume.
            built.resumption = rustls::client::Resumption::disabled();
            Ok::<_, ConfigError>(Arc::new(built))
        };
        let pair = |(chain_only, full): &VerifierPair| {
            Ok::<Verified, ConfigError>((build(chain_only.clone())?, build(full.clone())?))
        };
        let mut verified_by_file = HashMap::new();
        for (file, verifiers) in by_file {
            verified_by_file.insert(file.clone(), pair(verifiers)?);
        }
        Ok(Connectors {
            unverified: build(Arc::new(verify::SignatureOnly::new(provider())))?,
            verified: general.map(pair).transpose()?,
            verified_by_file,
        })
    }
}

/// Channel binding data of a certificate (see [`server_end_point`]).
type EndPoint = Arc<[u8]>;

fn acceptor(
    config: &Config,
    mode: SslMode,
) -> Result<(ServerConfig, Option<EndPoint>), ConfigError> {
    let versions = protocols("client_tls_protocols", &config.client_tls_protocols)?;
    let need = |key: &str, value: &str| {
        if value.is_empty() {
            Err(ConfigError::new(format!(
                "{key}: client_tls_sslmode = \"{}\" needs a certificate and key to serve TLS",
                mode.name()
            )))
        } else {
            Ok(())
        }
    };
    need("client_tls_cert_file", &config.client_tls_cert_file)?;
    need("client_tls_key_file", &config.client_tls_key_file)?;
    let certs = certificates("client_tls_cert_file", &config.client_tls_cert_file)?;
    let key = private_key("client_tls_key_file", &config.client_tls_key_file)?;
    let end_point = certs
        .first()
        .and_then(|c| server_end_point(c))
        .map(Arc::from);
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions)
        .map_err(|e| ConfigError::new(format!("client_tls_protocols: {e}")))?;
    let builder = match (mode, config.client_tls_ca_file.as_str()) {
        (SslMode::VerifyCa | SslMode::VerifyFull, "") => {
            return Err(ConfigError::new(format!(
                "client_tls_ca_file: client_tls_sslmode = \"{}\" checks client certificates and needs the CA that signs them",
                mode.name()
            )))
        }
        (SslMode::VerifyCa | SslMode::VerifyFull, file) => {
            let roots = Arc::new(roots("client_tls_ca_file", file)?);
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                    .build()
                    .map_err(|e| ConfigError::new(format!("client_tls_ca_file: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut built = builder.with_single_cert(certs, key).map_err(|e| {
        ConfigError::new(format!(
            "client_tls_key_file: {} does not go with client_tls_cert_file: {e}",
            config.client_tls_key_file
        ))
    })?;
    built.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    // Drivers do not resume sessions; tickets would only cost a message
    // and memory per connection.
    built.send_tls13_tickets = 0;
    built.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok((built, end_point))
}

/// Why a TLS handshake failed: a label of bounded cardinality, never the
/// peer's own text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    Certificate,
    Protocol,
    Closed,
    Timeout,
    Other,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 5] = [
        HandshakeFailure::Certificate,
        HandshakeFailure::Protocol,
        HandshakeFailure::Closed,
        HandshakeFailure::Timeout,
        HandshakeFailure::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::Certificate => "certificate",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Other => "other",
        }
    }

    /// Classify a handshake's I/O error (rustls' errors arrive inside one).
    pub fn of(error: &std::io::Error) -> HandshakeFailure {
        use std::io::ErrorKind;
        if let Some(tls) = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            return match tls {
                rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::InvalidCertRevocationList(_) => HandshakeFailure::Certificate,
                rustls::Error::AlertReceived(
                    rustls::AlertDescription::BadCertificate
                    | rustls::AlertDescription::UnsupportedCertificate
                    | rustls::AlertDescription::CertificateRevoked
                    | rustls::AlertDescription::CertificateExpired
                    | rustls::AlertDescription::CertificateUnknown
                    | rustls::AlertDescription::CertificateRequired
                    | rustls::AlertDescription::UnknownCA,
                ) => HandshakeFailure::Certificate,
                _ => HandshakeFailure::Protocol,
            };
        }
        match error.kind() {
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => {
                HandshakeFailure::Closed
            }
            ErrorKind::TimedOut => HandshakeFailure::Timeout,
            ErrorKind::InvalidData => HandshakeFailure::Protocol,
            _ => HandshakeFailure::Other,
        }
    }
}

/// Which end of a TLS session pgmux is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// pgmux serves TLS to a client.
    Client,
    /// pgmux is the TLS client of a server.
    Server,
}

impl Side {
    pub fn label(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}
