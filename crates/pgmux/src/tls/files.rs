//! What the TLS settings name, read: PEM certificates, keys and CA
//! bundles (each error names the key and the file), the system's roots,
//! and the protocol versions.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use crate::config::ConfigError;

/// `client_tls_protocols` / `server_tls_protocols`, PgBouncer's syntax:
/// `secure` (the default) and `all` mean TLS 1.2 and 1.3, or a list of
/// `tlsv1.2` / `tlsv1.3`. Older versions are not offered by rustls.
pub(super) fn protocols(
    key: &str,
    value: &str,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, ConfigError> {
    let mut out = Vec::new();
    for word in value.split([',', ' ', ':']).filter(|w| !w.is_empty()) {
        match word.to_ascii_lowercase().as_str() {
            "secure" | "all" | "normal" => {
                out.extend([&rustls::version::TLS13, &rustls::version::TLS12])
            }
            "tlsv1.3" => out.push(&rustls::version::TLS13),
            "tlsv1.2" => out.push(&rustls::version::TLS12),
            "tlsv1.0" | "tlsv1.1" | "legacy" => {
                return Err(ConfigError::new(format!(
                    "{key}: {word} is not supported (TLS 1.2 and 1.3 only)"
                )))
            }
            _ => {
                return Err(ConfigError::new(format!(
                    "{key}: expected secure, all, tlsv1.2 or tlsv1.3, got {word:?}"
                )))
            }
        }
    }
    if out.is_empty() {
        out.extend([&rustls::version::TLS13, &rustls::version::TLS12]);
    }
    out.dedup_by_key(|v| v.version);
    Ok(out)
}

fn read(key: &str, file: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(file).map_err(|e| ConfigError::new(format!("{key}: cannot read {file}: {e}")))
}

pub(super) fn certificates(
    key: &str,
    file: &str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read(key, file)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::new(format!("{key}: {file}: not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(ConfigError::new(format!(
            "{key}: {file} holds no PEM certificate"
        )));
    }
    Ok(certs)
}

pub(super) fn private_key(key: &str, file: &str) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let pem = read(key, file)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| ConfigError::new(format!("{key}: {file}: no PEM private key: {e}")))
}

pub(super) fn roots(key: &str, file: &str) -> Result<RootCertStore, ConfigError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(key, file)? {
        store
            .add(cert)
            .map_err(|e| ConfigError::new(format!("{key}: {file}: {e}")))?;
    }
    Ok(store)
}

/// The operating system's trusted roots, loaded only when a mode needs
/// them (an empty or missing store is then an error).
pub(super) fn system_roots(needed: bool) -> Result<Option<RootCertStore>, ConfigError> {
    if !needed {
        return Ok(None);
    }
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(ConfigError::new(
            "server_tls_ca_file: server_tls_sslmode verifies certificates, no file is given and the system has no trusted roots".into(),
        ));
    }
    Ok(Some(store))
}
