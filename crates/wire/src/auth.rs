//! Checking a client's password, server side: SCRAM-SHA-256 (RFC 5802/7677)
//! and SCRAM-SHA-256-PLUS (channel binding `tls-server-end-point`, RFC
//! 5929), MD5 and cleartext, against a stored [`Secret`]. Every comparison
//! of secret material is constant-time.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("malformed SASL message")]
    Malformed,
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("channel binding negotiation failed: {0}")]
    BindingMismatch(&'static str),
    #[error("password does not match")]
    WrongPassword,
}

/// A user's stored secret, as written in proxy.toml or a userlist.txt line.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Plain(String),
    /// `md5` followed by 32 hex digits of md5(password || username).
    Md5(String),
    Scram(ScramVerifier),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Secret::Plain(_) => "Secret::Plain(***)",
            Secret::Md5(_) => "Secret::Md5(***)",
            Secret::Scram(_) => "Secret::Scram(***)",
        })
    }
}

impl Secret {
    /// Classify a stored secret the way PgBouncer's auth_file does.
    pub fn parse(text: &str) -> Secret {
        if let Some(v) = ScramVerifier::parse(text) {
            return Secret::Scram(v);
        }
        let is_md5 = text.len() == 35
            && text.starts_with("md5")
            && text[3..].bytes().all(|b| b.is_ascii_hexdigit());
        if is_md5 {
            Secret::Md5(text.to_ascii_lowercase())
        } else {
            Secret::Plain(text.to_string())
        }
    }

    /// The plaintext, when known (needed to log in to the backend).
    pub fn plaintext(&self) -> Option<&str> {
        match self {
            Secret::Plain(p) => Some(p),
            _ => None,
        }
    }

    /// A SCRAM verifier for this secret: stored ones as they are, plaintext
    /// ones derived once (with a fresh salt). MD5 secrets cannot do SCRAM.
    pub fn scram_verifier(&self) -> Option<ScramVerifier> {
        match self {
            Secret::Scram(v) => Some(v.clone()),
            Secret::Plain(p) => {
                ScramVerifier::parse(&postgres_protocol::password::scram_sha_256(p.as_bytes()))
            }
            Secret::Md5(_) => None,
        }
    }

    /// Check a cleartext password sent by the client.
    pub fn check_plain(&self, user: &str, password: &str) -> bool {
        match self {
            Secret::Plain(p) => ct_eq(p.as_bytes(), password.as_bytes()),
            Secret::Md5(m) => ct_eq(m.as_bytes(), md5_secret(user, password).as_bytes()),
            Secret::Scram(v) => {
                let salted = salted_password(password.as_bytes(), &v.salt, v.iterations);
                let stored = Sha256::digest(hmac(&salted, b"Client Key"));
                ct_eq(&stored, &v.stored_key)
            }
        }
    }

    /// Check the reply to an MD5 challenge with `salt`. SCRAM secrets can't.
    pub fn check_md5(&self, user: &str, salt: [u8; 4], response: &str) -> bool {
        let stored = match self {
            Secret::Plain(p) => md5_secret(user, p),
            Secret::Md5(m) => m.clone(),
            Secret::Scram(_) => return false,
        };
        let expected = md5_salted(&stored.as_bytes()[3..], salt);
        ct_eq(expected.as_bytes(), response.as_bytes())
    }
}

/// Constant-time equality of two byte strings (length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The `md5...` secret PostgreSQL stores: md5(password || username).
pub fn md5_secret(user: &str, password: &str) -> String {
    format!("md5{}", md5_hex(&[password.as_bytes(), user.as_bytes()]))
}

/// The answer to PostgreSQL's MD5 challenge from a stored `md5…` hash
/// (what pg_shadow keeps): no password needed.
pub fn md5_response_from_hash(stored: &str, salt: [u8; 4]) -> Option<String> {
    let inner = stored.strip_prefix("md5").filter(|h| h.len() == 32)?;
    Some(md5_salted(inner.as_bytes(), salt))
}

fn md5_salted(inner_hex: &[u8], salt: [u8; 4]) -> String {
    format!("md5{}", md5_hex(&[inner_hex, &salt]))
}

pub(crate) fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with one output block ("Hi" in RFC 5802).
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut mac =
        <HmacSha256 as Mac>::new_from_slice(password).expect("HMAC takes keys of any length");
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = mac.finalize().into_bytes().into();
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        out.iter_mut().zip(u.iter()).for_each(|(o, x)| *o ^= x);
    }
    out
}

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl ScramVerifier {
    /// A verifier for a user who does not exist, the same for the same
    /// `user` and `key` every time (salt and iteration count as a real
    /// one's), so that asking twice cannot tell a stranger which users are
    /// real: the salt a client is shown is a function of its name alone.
    pub fn decoy(key: &[u8], user: &str) -> ScramVerifier {
        let derive = |label: &[u8]| {
            let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key");
            mac.update(label);
            mac.update(user.as_bytes());
            <[u8; 32]>::from(mac.finalize().into_bytes())
        };
        ScramVerifier {
            iterations: 4096,
            salt: derive(b"salt\0")[..16].to_vec(),
            stored_key: derive(b"stored\0"),
            server_key: derive(b"server\0"),
        }
    }

    /// The key PostgreSQL checks a server signature with, which pgmux
    /// needs to log in as the user it belongs to (with a recovered
    /// ClientKey; see [`ScramExchange::finish_with_client_key`]).
    pub fn server_key(&self) -> [u8; 32] {
        self.server_key
    }

    pub fn parse(text: &str) -> Option<ScramVerifier> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iter, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(ScramVerifier {
            iterations: iter.parse().ok().filter(|&i| i > 0)?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }
}

/// The SASL mechanism names.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// The only channel binding type PostgreSQL defines.
const TLS_SERVER_END_POINT: &str = "tls-server-end-point";

/// One SCRAM-SHA-256 exchange, after the client-first message.
pub struct ScramExchange {
    verifier: ScramVerifier,
    /// What the client-final message's `c=` must carry: the GS2 header,
    /// then the channel binding data if the client bound to the channel.
    cbind_input: Vec<u8>,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ScramExchange {
    /// Read the client-first message sent under `mechanism`; return the
    /// exchange and the server-first message to send. `binding` is the
    /// `tls-server-end-point` data of the TLS session the exchange runs in,
    /// when the server offered SCRAM-SHA-256-PLUS (`None`: it offered only
    /// SCRAM-SHA-256).
    pub fn start(
        verifier: ScramVerifier,
        mechanism: &str,
        client_first: &[u8],
        binding: Option<&[u8]>,
    ) -> Result<(ScramExchange, String), AuthError> {
        let text = std::str::from_utf8(client_first).map_err(|_| AuthError::Malformed)?;
        let mut parts = text.splitn(3, ',');
        let cbind = parts.next().ok_or(AuthError::Malformed)?;
        let authzid = parts.next().ok_or(AuthError::Malformed)?;
        let bare = parts.next().ok_or(AuthError::Malformed)?;
        let plus = match mechanism {
            SCRAM_SHA_256 => false,
            SCRAM_SHA_256_PLUS if binding.is_some() => true,
            _ => return Err(AuthError::ChannelBinding),
        };
        let bound = match (cbind, plus) {
            ("n", false) => None,
            // The client could bind but believes the server cannot: a
            // downgrade, if the server did offer binding (RFC 5802 6).
            ("y", false) if binding.is_some() => {
                return Err(AuthError::BindingMismatch(
                    "the client was offered SCRAM-SHA-256-PLUS but says the server does not support channel binding",
                ))
            }
            ("y", false) => None,
            (c, true) if c.strip_prefix("p=") == Some(TLS_SERVER_END_POINT) => binding,
            (c, true) if c.starts_with("p=") => {
                return Err(AuthError::BindingMismatch(
                    "only tls-server-end-point is supported",
                ))
            }
            (_, true) => {
                return Err(AuthError::BindingMismatch(
                    "SCRAM-SHA-256-PLUS chosen without binding to the channel",
                ))
            }
            (c, false) if c.starts_with("p=") => {
                return Err(AuthError::BindingMismatch(
                    "channel binding asked for under SCRAM-SHA-256 (it needs SCRAM-SHA-256-PLUS)",
                ))
            }
            _ => return Err(AuthError::Malformed),
        };
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b','))
            .ok_or(AuthError::Malformed)?;
        let server_nonce: [u8; 18] = rand::random();
        // Built by hand rather than with format!: every login makes these.
        let mut nonce = String::with_capacity(client_nonce.len() + 24);
        nonce.push_str(client_nonce);
        B64.encode_string(server_nonce, &mut nonce);
        let mut server_first = String::with_capacity(nonce.len() + 48);
        server_first.push_str("r=");
        server_first.push_str(&nonce);
        server_first.push_str(",s=");
        B64.encode_string(&verifier.salt, &mut server_first);
        server_first.push_str(",i=");
        server_first.push_str(&verifier.iterations.to_string());
        let bound = bound.unwrap_or_default();
        let mut cbind_input = Vec::with_capacity(cbind.len() + authzid.len() + 2 + bound.len());
        for part in [cbind.as_bytes(), b",", authzid.as_bytes(), b",", bound] {
            cbind_input.extend_from_slice(part);
        }
        let exchange = ScramExchange {
            cbind_input,
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            nonce,
            verifier,
        };
        Ok((exchange, server_first))
    }

    /// Check the client-final message; return the server-final message.
    pub fn finish(self, client_final: &[u8]) -> Result<String, AuthError> {
        self.finish_with_client_key(client_final)
            .map(|(server_final, _)| server_final)
    }

    /// As [`ScramExchange::finish`], and also the client's ClientKey,
    /// recovered from its proof (ClientProof XOR ClientSignature). With the
    /// verifier's ServerKey it logs in to PostgreSQL as that user: no
    /// plaintext password is ever needed (SCRAM pass-through).
    pub fn finish_with_client_key(
        self,
        client_final: &[u8],
    ) -> Result<(String, [u8; 32]), AuthError> {
        let text = std::str::from_utf8(client_final).map_err(|_| AuthError::Malformed)?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or(AuthError::Malformed)?;
        let mut cbind = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(v) = attr.strip_prefix("c=") {
                cbind = Some(v);
            } else if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            }
        }
        let cbind = B64
            .decode(cbind.ok_or(AuthError::Malformed)?)
            .map_err(|_| AuthError::Malformed)?;
        if nonce != Some(self.nonce.as_str()) {
            return Err(AuthError::Malformed);
        }
        if !ct_eq(&cbind, &self.cbind_input) {
            return Err(AuthError::BindingMismatch(
                "the channel binding data does not match this TLS session",
            ));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .map_err(|_| AuthError::Malformed)?
            .try_into()
            .map_err(|_| AuthError::Malformed)?;
        let mut auth_message = String::with_capacity(
            self.client_first_bare.len() + self.server_first.len() + without_proof.len() + 2,
        );
        for part in [
            &self.client_first_bare,
            ",",
            &self.server_first,
            ",",
            without_proof,
        ] {
            auth_message.push_str(part);
        }
        let signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let mut client_key = proof;
        client_key
            .iter_mut()
            .zip(signature.iter())
            .for_each(|(k, s)| *k ^= s);
        if !ct_eq(&Sha256::digest(client_key), &self.verifier.stored_key) {
            return Err(AuthError::WrongPassword);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        let mut server_final = String::with_capacity(2 + 44);
        server_final.push_str("v=");
        B64.encode_string(server_signature, &mut server_final);
        Ok((server_final, client_key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// Drive our server side with postgres-protocol's client side.
    fn scram_login(stored_password: &str, typed_password: &str) -> Result<(), AuthError> {
        let verifier = Secret::Plain(stored_password.into())
            .scram_verifier()
            .unwrap();
        let mut client = ScramSha256::new(typed_password.as_bytes(), ChannelBinding::unsupported());
        let (exchange, server_first) =
            ScramExchange::start(verifier, SCRAM_SHA_256, client.message(), None)?;
        client.update(server_first.as_bytes()).unwrap();
        let server_final = exchange.finish(client.message())?;
        client
            .finish(server_final.as_bytes())
            .map_err(|_| AuthError::Malformed)
    }

    #[test]
    fn scram_accepts_the_right_password_and_the_client_verifies_us() {
        assert_eq!(scram_login("s3cret", "s3cret"), Ok(()));
    }

    #[test]
    fn scram_rejects_a_wrong_password() {
        assert_eq!(
            scram_login("s3cret", "guess"),
            Err(AuthError::WrongPassword)
        );
    }

    #[test]
    fn scram_rejects_channel_binding_and_garbage() {
        let v = Secret::Plain("x".into()).scram_verifier().unwrap();
        assert!(matches!(
            ScramExchange::start(
                v.clone(),
                SCRAM_SHA_256,
                b"p=tls-server-end-point,,n=,r=abc",
                None
            ),
            Err(AuthError::BindingMismatch(_))
        ));
        assert!(matches!(
            ScramExchange::start(
                v.clone(),
                SCRAM_SHA_256_PLUS,
                b"p=tls-server-end-point,,n=,r=abc",
                None
            ),
            Err(AuthError::ChannelBinding)
        ));
        assert!(matches!(
            ScramExchange::start(v.clone(), SCRAM_SHA_256, b"garbage", None),
            Err(AuthError::Malformed)
        ));
        let (ex, _) = ScramExchange::start(v, SCRAM_SHA_256, b"n,,n=,r=abc", None).unwrap();
        assert_eq!(
            ex.finish(b"c=biws,r=wrong,p=AAAA").err(),
            Some(AuthError::Malformed)
        );
    }

    /// SCRAM-SHA-256-PLUS against postgres-protocol's client: the same
    /// binding data logs in, other data (another TLS session) does not, and
    /// a client that could bind but was told it cannot is a downgrade.
    #[test]
    fn scram_plus_binds_to_the_tls_session() {
        let verifier = Secret::Plain("pw".into()).scram_verifier().unwrap();
        let login = |client_sees: &[u8], server_has: &[u8]| {
            let binding = ChannelBinding::tls_server_end_point(client_sees.to_vec());
            let mut client = ScramSha256::new(b"pw", binding);
            let (exchange, first) = ScramExchange::start(
                verifier.clone(),
                SCRAM_SHA_256_PLUS,
                client.message(),
                Some(server_has),
            )?;
            client.update(first.as_bytes()).unwrap();
            exchange.finish(client.message()).map(|_| ())
        };
        assert_eq!(login(b"certificate hash", b"certificate hash"), Ok(()));
        assert!(matches!(
            login(b"another session", b"certificate hash"),
            Err(AuthError::BindingMismatch(_))
        ));
        let client = ScramSha256::new(b"pw", ChannelBinding::unrequested());
        let downgrade =
            ScramExchange::start(verifier, SCRAM_SHA_256, client.message(), Some(b"hash"));
        assert!(matches!(downgrade, Err(AuthError::BindingMismatch(_))));
    }

    /// The ClientKey recovered from a proof is the one the password
    /// derives, and a decoy is stable per name and differs between names.
    #[test]
    fn client_key_is_recovered_and_decoys_are_stable() {
        let verifier = Secret::Plain("pw".into()).scram_verifier().unwrap();
        let mut client = ScramSha256::new(b"pw", ChannelBinding::unsupported());
        let (exchange, first) =
            ScramExchange::start(verifier.clone(), SCRAM_SHA_256, client.message(), None).unwrap();
        client.update(first.as_bytes()).unwrap();
        let (_, client_key) = exchange.finish_with_client_key(client.message()).unwrap();
        let salted = salted_password(b"pw", &verifier.salt, verifier.iterations);
        assert_eq!(client_key, hmac(&salted, b"Client Key"));
        let (a, b) = (
            ScramVerifier::decoy(b"k", "ghost"),
            ScramVerifier::decoy(b"k", "ghost"),
        );
        assert!(a == b);
        assert!(a.salt != ScramVerifier::decoy(b"k", "other").salt);
    }

    #[test]
    fn md5_challenge_matches_libpq() {
        let salt = [1, 2, 3, 4];
        let response = postgres_protocol::authentication::md5_hash(b"bob", b"pw", salt);
        assert_eq!(
            md5_response_from_hash(&md5_secret("bob", "pw"), salt).as_deref(),
            Some(response.as_str())
        );
        assert!(Secret::Plain("pw".into()).check_md5("bob", salt, &response));
        assert!(Secret::Md5(md5_secret("bob", "pw")).check_md5("bob", salt, &response));
        assert!(!Secret::Plain("other".into()).check_md5("bob", salt, &response));
    }

    #[test]
    fn cleartext_against_every_secret_kind() {
        let scram = Secret::Plain("pw".into()).scram_verifier().unwrap();
        for s in [
            Secret::Plain("pw".into()),
            Secret::Md5(md5_secret("bob", "pw")),
            Secret::Scram(scram),
        ] {
            assert!(s.check_plain("bob", "pw"), "{s:?}");
            assert!(!s.check_plain("bob", "pX"), "{s:?}");
        }
    }

    #[test]
    fn classifies_userlist_secrets() {
        assert!(matches!(
            Secret::parse("md5b1946ac92492d2347c6235b4d2611184"),
            Secret::Md5(_)
        ));
        assert!(matches!(
            Secret::parse(&postgres_protocol::password::scram_sha_256(b"p")),
            Secret::Scram(_)
        ));
        assert_eq!(Secret::parse("hello").plaintext(), Some("hello"));
        assert_eq!(
            format!("{:?}", Secret::parse("hello")),
            "Secret::Plain(***)"
        );
    }
}
