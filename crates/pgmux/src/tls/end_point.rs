//! SCRAM channel binding data, `tls-server-end-point` (RFC 5929): the
//! hash of the server's certificate, taken with the hash function of the
//! certificate's own signature algorithm (SHA-256 where that is MD5 or
//! SHA-1). Both ends compute it, so a man in the middle with another
//! certificate cannot relay the SCRAM exchange.

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

/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, ... }`:
/// the OID of `signatureAlgorithm`, found by walking the DER (no parser
/// is needed for one field).
fn signature_algorithm(cert: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = element(cert, SEQUENCE)?;
    let (_tbs, rest) = element(certificate, SEQUENCE)?;
    let (algorithm, _) = element(rest, SEQUENCE)?;
    let (oid, _) = element(algorithm, OBJECT_IDENTIFIER)?;
    Some(oid)
}

const SEQUENCE: u8 = 0x30;
const OBJECT_IDENTIFIER: u8 = 0x06;

/// One DER element of type `tag` at the start of `input`: its contents and
/// what follows it.
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
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
    (rest.len() >= len).then(|| rest.split_at(len))
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
