//! TLS for the tests: certificates made with the `openssl` tool when the
//! cluster starts (a test CA, a server certificate for `localhost` only, a
//! client certificate for the app user, and a second CA with a server and
//! a client certificate of its own), and tokio-postgres over rustls with
//! a chosen CA, client certificate and host-name check.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// The files of a certificate and its key.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Certs {
    pub dir: PathBuf,
    pub ca: PathBuf,
    /// `CN=localhost`, subjectAltName `DNS:localhost` only: a client that
    /// checks host names accepts it for `localhost`, not for 127.0.0.1.
    pub server: Pair,
    /// `CN=app`, for client-certificate login.
    pub client: Pair,
    /// Another CA, and a server and client certificate it signed.
    pub other_ca: PathBuf,
    pub other_server: Pair,
    pub other_client: Pair,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().unwrap_or_else(|e| {
        panic!("cannot run openssl ({e}): the TLS tests make their certificates with it; install it with `apt-get install openssl`")
    });
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

impl Certs {
    /// Make every certificate under `dir`.
    pub fn generate(dir: &Path) -> Certs {
        std::fs::create_dir_all(dir).unwrap();
        let ca = |name: &str| {
            let (cert, key) = (
                dir.join(format!("{name}.crt")),
                dir.join(format!("{name}.key")),
            );
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                s(&key),
                "-out",
                s(&cert),
                "-days",
                "30",
                "-subj",
                &format!("/CN=pgmux test {name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            Pair { cert, key }
        };
        let signed = |name: &str, by: &Pair, subject: &str, ext: &str| {
            let (cert, key) = (
                dir.join(format!("{name}.crt")),
                dir.join(format!("{name}.key")),
            );
            let csr = dir.join(format!("{name}.csr"));
            let ext_file = dir.join(format!("{name}.ext"));
            std::fs::write(&ext_file, ext).unwrap();
            openssl(&[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                s(&key),
                "-out",
                s(&csr),
                "-subj",
                subject,
            ]);
            openssl(&[
                "x509",
                "-req",
                "-in",
                s(&csr),
                "-CA",
                s(&by.cert),
                "-CAkey",
                s(&by.key),
                "-CAcreateserial",
                "-out",
                s(&cert),
                "-days",
                "30",
                "-extfile",
                s(&ext_file),
            ]);
            Pair { cert, key }
        };
        let server_ext = "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n";
        let client_ext = "extendedKeyUsage=clientAuth\n";
        let main = ca("ca");
        let other = ca("other-ca");
        Certs {
            dir: dir.to_path_buf(),
            server: signed("server", &main, "/CN=localhost", server_ext),
            client: signed("client", &main, "/CN=app", client_ext),
            other_server: signed("other-server", &other, "/CN=localhost", server_ext),
            other_client: signed("other-client", &other, "/CN=app", client_ext),
            ca: main.cert,
            other_ca: other.cert,
        }
    }
}

/// How a test client checks the server.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
}

fn roots(ca: &Path) -> rustls::RootCertStore {
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        store.add(cert.unwrap()).unwrap();
    }
    store
}

#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ClientTls {
    /// Check the chain against `ca` and the host name (libpq's
    /// verify-full), presenting `client` if given.
    pub fn verify_full(ca: &Path, client: Option<&Pair>) -> ClientTls {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(ca));
        let config = match client {
            None => builder.with_no_client_auth(),
            Some(pair) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(&pair.cert)
                        .unwrap()
                        .map(Result::unwrap)
                        .collect(),
                    PrivateKeyDer::from_pem_file(&pair.key).unwrap(),
                )
                .unwrap(),
        };
        ClientTls {
            config: Arc::new(config),
        }
    }

    /// The rustls configuration, to drive by hand (direct TLS).
    pub fn config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut config = (*self.config).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// tokio-postgres over TLS: `dsn` should say `sslmode=require`.
pub async fn connect(
    dsn: &str,
    tls: &ClientTls,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(dsn, tls.clone()).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

impl<S> MakeTlsConnect<S> for ClientTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Tls<S>;
    type TlsConnect = Connect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<Connect> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Connect {
            config: self.config.clone(),
            name,
        })
    }
}

pub struct Connect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Tls<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Tls<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move { Ok(Tls(connector.connect(self.name, stream).await?)) })
    }
}

/// A TLS connection tokio-postgres drives.
pub struct Tls<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for Tls<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Tls<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Tls<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// psql with `conninfo`, running `sql`: its stdout, or its stderr on
/// failure.
pub async fn psql(conninfo: &str, sql: &str) -> Result<String, String> {
    let out = tokio::process::Command::new(crate::cluster().tool("psql"))
        .args([
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            conninfo,
            "-c",
            sql,
        ])
        .env("PGPASSWORD", crate::APP_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "20")
        .output()
        .await
        .expect("psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}
