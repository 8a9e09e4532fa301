//! Logging in to PostgreSQL with SCRAM-SHA-256 from keys rather than a
//! password: the ClientKey pgmux recovered from a client's own SCRAM
//! exchange and the ServerKey of the user's verifier (auth_query's SCRAM
//! pass-through). postgres-protocol's client needs the password itself.
//!
//! The proof needs only ClientKey and StoredKey (= H(ClientKey)), and the
//! server's signature is checked with ServerKey, so the salt and iteration
//! count the server sends are not used: they are the verifier's own.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::auth::{ct_eq, hmac};

/// How the exchange relates to the TLS session under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// No TLS: nothing to bind to (`n`).
    None,
    /// TLS, but the server offered no binding (`y`: a server that did
    /// offer it and had the offer stripped will refuse).
    Unused,
    /// SCRAM-SHA-256-PLUS with this `tls-server-end-point` data (`p=`).
    TlsServerEndPoint(Vec<u8>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramClientError {
    #[error("malformed SCRAM message from the server")]
    Malformed,
    #[error("the server's nonce does not extend ours")]
    Nonce,
    #[error("the server refused the proof: {0}")]
    Refused(String),
    #[error("the server's signature does not verify")]
    Signature,
    #[error("SCRAM message out of order")]
    Order,
}

/// One SCRAM-SHA-256 login from keys; [`ScramKeysClient::message`] is what
/// to send after each step.
pub struct ScramKeysClient {
    client_key: [u8; 32],
    server_key: [u8; 32],
    /// `c=` of the final message: GS2 header, then any binding data.
    cbind_input: Vec<u8>,
    client_first_bare: String,
    nonce: String,
    message: Vec<u8>,
    /// Set once the proof is sent: what the server's signature covers.
    auth_message: Option<String>,
}

impl ScramKeysClient {
    pub fn new(client_key: [u8; 32], server_key: [u8; 32], binding: Binding) -> ScramKeysClient {
        let nonce = B64.encode(rand::random::<[u8; 18]>());
        let (header, data) = match binding {
            Binding::None => ("n,,", Vec::new()),
            Binding::Unused => ("y,,", Vec::new()),
            Binding::TlsServerEndPoint(data) => ("p=tls-server-end-point,,", data),
        };
        // The user name is PostgreSQL's from the startup packet: SCRAM's
        // own is left empty, as libpq does.
        let client_first_bare = format!("n=,r={nonce}");
        let mut cbind_input = header.as_bytes().to_vec();
        cbind_input.extend_from_slice(&data);
        ScramKeysClient {
            client_key,
            server_key,
            message: format!("{header}{client_first_bare}").into_bytes(),
            cbind_input,
            client_first_bare,
            nonce,
            auth_message: None,
        }
    }

    /// The message to send now.
    pub fn message(&self) -> &[u8] {
        &self.message
    }

    /// Take the server-first message; the client-final one is then ready.
    pub fn update(&mut self, server_first: &[u8]) -> Result<(), ScramClientError> {
        if self.auth_message.is_some() {
            return Err(ScramClientError::Order);
        }
        let text = std::str::from_utf8(server_first).map_err(|_| ScramClientError::Malformed)?;
        let nonce = text
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .ok_or(ScramClientError::Malformed)?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramClientError::Nonce);
        }
        let without_proof = format!("c={},r={nonce}", B64.encode(&self.cbind_input));
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let stored_key: [u8; 32] = Sha256::digest(self.client_key).into();
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let mut proof = self.client_key;
        proof.iter_mut().zip(signature).for_each(|(p, s)| *p ^= s);
        self.message = format!("{without_proof},p={}", B64.encode(proof)).into_bytes();
        self.auth_message = Some(auth_message);
        Ok(())
    }

    /// Check the server-final message: the server knew the ServerKey.
    pub fn finish(self, server_final: &[u8]) -> Result<(), ScramClientError> {
        let auth_message = self.auth_message.ok_or(ScramClientError::Order)?;
        let text = std::str::from_utf8(server_final).map_err(|_| ScramClientError::Malformed)?;
        if let Some(error) = text.strip_prefix("e=") {
            return Err(ScramClientError::Refused(error.to_string()));
        }
        let signature = text
            .strip_prefix("v=")
            .and_then(|v| B64.decode(v.split(',').next()?).ok())
            .ok_or(ScramClientError::Malformed)?;
        if !ct_eq(&signature, &hmac(&self.server_key, auth_message.as_bytes())) {
            return Err(ScramClientError::Signature);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{ScramExchange, Secret, SCRAM_SHA_256, SCRAM_SHA_256_PLUS};
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// Keys recovered from one client's login (pgmux's server side) log in
    /// again (pgmux's server side standing in for PostgreSQL), with and
    /// without channel binding; a wrong key does not.
    #[test]
    fn recovered_keys_log_in_again() {
        let verifier = Secret::Plain("pw".into()).scram_verifier().unwrap();
        let mut client = ScramSha256::new(b"pw", ChannelBinding::unsupported());
        let (exchange, first) =
            ScramExchange::start(verifier.clone(), SCRAM_SHA_256, client.message(), None).unwrap();
        client.update(first.as_bytes()).unwrap();
        let (_, client_key) = exchange.finish_with_client_key(client.message()).unwrap();
        let server_key = verifier.server_key();

        let login = |key: [u8; 32], binding: Binding, mechanism, server_binding: Option<&[u8]>| {
            let mut keys = ScramKeysClient::new(key, server_key, binding);
            let (exchange, first) =
                ScramExchange::start(verifier.clone(), mechanism, keys.message(), server_binding)
                    .map_err(|e| e.to_string())?;
            keys.update(first.as_bytes()).map_err(|e| e.to_string())?;
            let last = exchange.finish(keys.message()).map_err(|e| e.to_string())?;
            keys.finish(last.as_bytes()).map_err(|e| e.to_string())
        };
        assert_eq!(
            login(client_key, Binding::None, SCRAM_SHA_256, None),
            Ok(())
        );
        let bound = Binding::TlsServerEndPoint(b"hash".to_vec());
        assert_eq!(
            login(client_key, bound, SCRAM_SHA_256_PLUS, Some(b"hash")),
            Ok(())
        );
        let mut wrong = client_key;
        wrong[0] ^= 1;
        assert!(login(wrong, Binding::None, SCRAM_SHA_256, None).is_err());
    }

    #[test]
    fn a_forged_server_signature_is_refused() {
        let mut keys = ScramKeysClient::new([1; 32], [2; 32], Binding::None);
        let nonce = std::str::from_utf8(keys.message())
            .unwrap()
            .rsplit("r=")
            .next()
            .unwrap()
            .to_string();
        keys.update(format!("r={nonce}xyz,s=c2FsdA==,i=4096").as_bytes())
            .unwrap();
        assert_eq!(
            keys.finish(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Err(ScramClientError::Signature)
        );
    }
}
