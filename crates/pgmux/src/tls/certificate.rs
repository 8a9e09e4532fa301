//! The two things pgmux reads from a certificate, by walking its DER (no
//! parser is needed for two fields):
//!
//! - SCRAM channel binding data, `tls-server-end-point` (RFC 5929): the
//!   hash of the server's certificate, taken with the hash function of the
//!   certificate's own signature algorithm (SHA-256 where that is MD5 or
//!   SHA-1). Both ends compute it, so a man in the middle with another
//!   certificate cannot relay the SCRAM exchange;
//! - the subject's CommonName, the user a client certificate logs in as
//!   (`auth_type = cert`).

use sha2::{Digest, Sha256, Sha384, Sha512};

/// The binding data of a DER certificate, or `None` for a signature
/// algorithm that names no hash (Ed25519, RSASSA-PSS), which PostgreSQL
/// cannot bind to either.
pub fn server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    let hash = match signature_algorithm(cert)? {
        SHA384_WITH_RSA | ECDSA_WITH_SHA384 => Sha384::digest(cert).to_vec(),
        SHA512_WITH_RSA | ECDSA_WITH_SHA512 => Sha512::digest(cert).to_vec(),
        MD5_WITH_RSA | SHA1_WITH_RSA | SHA256_WITH_RSA | ECDSA_WITH_SHA1 | ECDSA_WITH_SHA256 => {
            Sha256::digest(cert).to_vec()
        }
        _ => return None,
    };
    Some(hash)
}

// The DER bytes of the algorithm identifiers' OIDs.
const MD5_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04];
const SHA1_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05];
const SHA256_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
const SHA384_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
const SHA512_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
const ECDSA_WITH_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
const ECDSA_WITH_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const ECDSA_WITH_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
const ECDSA_WITH_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];

/// The subject's first CommonName, if it is text.
pub fn common_name(cert: &[u8]) -> Option<String> {
    let (certificate, _) = element(cert, SEQUENCE)?;
    let (tbs, _) = element(certificate, SEQUENCE)?;
    // TBSCertificate: [0] version (optional), serialNumber, signature,
    // issuer, validity, subject, ...
    let mut rest = tbs;
    if let Some((_, after)) = element(rest, VERSION) {
        rest = after;
    }
    for tag in [INTEGER, SEQUENCE, SEQUENCE, SEQUENCE] {
        rest = element(rest, tag)?.1;
    }
    let (mut names, _) = element(rest, SEQUENCE)?;
    // Name: SEQUENCE OF SET OF SEQUENCE { type OID, value }.
    while !names.is_empty() {
        let (set, after) = element(names, SET)?;
        names = after;
        let mut attributes = set;
        while !attributes.is_empty() {
            let (attribute, after) = element(attributes, SEQUENCE)?;
            attributes = after;
            let (oid, value) = element(attribute, OBJECT_IDENTIFIER)?;
            if oid != COMMON_NAME {
                continue;
            }
            let (tag, text, _) = any_element(value)?;
            return match tag {
                UTF8_STRING | PRINTABLE_STRING | IA5_STRING | TELETEX_STRING => {
                    String::from_utf8(text.to_vec()).ok()
                }
                _ => None,
            };
        }
    }
    None
}

/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, ... }`:
/// the OID of `signatureAlgorithm`.
fn signature_algorithm(cert: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = element(cert, SEQUENCE)?;
    let (_tbs, rest) = element(certificate, SEQUENCE)?;
    let (algorithm, _) = element(rest, SEQUENCE)?;
    let (oid, _) = element(algorithm, OBJECT_IDENTIFIER)?;
    Some(oid)
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const OBJECT_IDENTIFIER: u8 = 0x06;
const VERSION: u8 = 0xa0;
const UTF8_STRING: u8 = 0x0c;
const PRINTABLE_STRING: u8 = 0x13;
const TELETEX_STRING: u8 = 0x14;
const IA5_STRING: u8 = 0x16;
/// 2.5.4.3, id-at-commonName.
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// One DER element of type `tag` at the start of `input`: its contents and
/// what follows it.
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match any_element(input)? {
        (t, contents, rest) if t == tag => Some((contents, rest)),
        _ => None,
    }
}

/// The DER element at the start of `input`: tag, contents, what follows.
fn any_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&len, mut rest) = rest.split_first()?;
    let len = if len < 0x80 {
        usize::from(len)
    } else {
        let count = usize::from(len & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (digits, after) = rest.split_at(count);
        rest = after;
        digits
            .iter()
            .fold(0usize, |n, &d| (n << 8) | usize::from(d))
    };
    (rest.len() >= len).then(|| {
        let (contents, after) = rest.split_at(len);
        (tag, contents, after)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate skeleton: SEQUENCE { SEQUENCE {tbs}, SEQUENCE { OID } }.
    fn skeleton(oid: &[u8], tbs_len: usize) -> Vec<u8> {
        fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
            let mut out = vec![tag];
            if body.len() < 0x80 {
                out.push(body.len() as u8);
            } else {
                out.push(0x82);
                out.extend_from_slice(&(body.len() as u16).to_be_bytes());
            }
            out.extend_from_slice(body);
            out
        }
        let tbs = tlv(SEQUENCE, &vec![0u8; tbs_len]);
        let alg = tlv(SEQUENCE, &tlv(OBJECT_IDENTIFIER, oid));
        tlv(SEQUENCE, &[tbs, alg, vec![0x03, 0x01, 0x00]].concat())
    }

    /// `openssl req -x509 ... -subj "/O=pgmux tests/CN=report_user"`
    /// (ECDSA P-256, SHA-256).
    const REPORT_USER: &str = "-----BEGIN CERTIFICATE-----
MIIBrDCCAVOgAwIBAgIUec1YObKut5T9x83EgsZTGNwySPwwCgYIKoZIzj0EAwIw
LDEUMBIGA1UECgwLcGdtdXggdGVzdHMxFDASBgNVBAMMC3JlcG9ydF91c2VyMB4X
DTI2MTIwNTE0MTIzNFoXDTM2MTIwMjE0MTIzNFowLDEUMBIGA1UECgwLcGdtdXgg
dGVzdHMxFDASBgNVBAMMC3JlcG9ydF91c2VyMFkwEwYHKoZIzj0CAQYIKoZIzj0D
AQcDQgAEdX2mIiSnAsi2RYt9fWkh0PHiIAOofcY4JeoI47PZMXlrwWl8yeMlhBwZ
e/v+8CMlVZxzSPSRvArp7erjQItE/aNTMFEwHQYDVR0OBBYEFGoKWuAGknRGShrc
V9Kyd5ELlHxsMB8GA1UdIwQYMBaAFGoKWuAGknRGShrcV9Kyd5ELlHxsMA8GA1Ud
EwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDRwAwRAIgH+M+GH1OiWmT9R+Q4NyGdS+E
C8ecfqtpkjToFzeSyRMCIDkxpUte6CGwNaRTDi9r9fNbJ0ODaPZ7cPGSWIjl+7/o
-----END CERTIFICATE-----";

    fn der(pem: &str) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn a_real_certificate_gives_its_common_name_and_binding() {
        let cert = der(REPORT_USER);
        assert_eq!(common_name(&cert).as_deref(), Some("report_user"));
        assert_eq!(
            server_end_point(&cert),
            Some(Sha256::digest(&cert).to_vec())
        );
        assert_eq!(common_name(&cert[..cert.len() / 2]), None);
    }

    #[test]
    fn the_hash_follows_the_signature_algorithm() {
        let ecdsa256 = skeleton(ECDSA_WITH_SHA256, 300);
        assert_eq!(server_end_point(&ecdsa256).unwrap().len(), 32);
        assert_eq!(
            server_end_point(&skeleton(SHA384_WITH_RSA, 10))
                .unwrap()
                .len(),
            48
        );
        assert_eq!(
            server_end_point(&skeleton(ECDSA_WITH_SHA512, 10))
                .unwrap()
                .len(),
            64
        );
        // MD5 and SHA-1 signatures are bound with SHA-256 (RFC 5929 4.1).
        let sha1 = skeleton(SHA1_WITH_RSA, 10);
        assert_eq!(
            server_end_point(&sha1),
            Some(Sha256::digest(&sha1).to_vec())
        );
        // Ed25519 names no hash.
        assert_eq!(server_end_point(&skeleton(&[0x2b, 0x65, 0x70], 10)), None);
        // Truncated or not DER at all.
        assert_eq!(server_end_point(&ecdsa256[..40]), None);
        assert_eq!(server_end_point(b"not a certificate"), None);
    }
}
