//! Answering a server's authentication request at login: cleartext, MD5
//! or SCRAM-SHA-256, as the server asks.

use bytes::{BufMut, BytesMut};
use pgmux_wire::auth::{md5_response_from_hash, SCRAM_SHA_256, SCRAM_SHA_256_PLUS};
use pgmux_wire::frame::{write_message, Frame};
use pgmux_wire::scram_client::{Binding, ScramKeysClient};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::AsyncWriteExt;

use super::{Credential, Login, Server, ServerError};

/// A SCRAM login in progress: from a password (postgres-protocol's
/// client) or from keys (auth_query's pass-through).
pub enum ScramClient {
    Password(ScramSha256),
    Keys(ScramKeysClient),
}

impl ScramClient {
    fn message(&self) -> &[u8] {
        match self {
            ScramClient::Password(c) => c.message(),
            ScramClient::Keys(c) => c.message(),
        }
    }

    fn update(&mut self, data: &[u8]) -> Result<(), String> {
        match self {
            ScramClient::Password(c) => c.update(data).map_err(|e| e.to_string()),
            ScramClient::Keys(c) => c.update(data).map_err(|e| e.to_string()),
        }
    }

    fn finish(self, data: &[u8]) -> Result<(), String> {
        match self {
            ScramClient::Password(mut c) => c.finish(data).map_err(|e| e.to_string()),
            ScramClient::Keys(c) => c.finish(data).map_err(|e| e.to_string()),
        }
    }
}

impl Server {
    pub(super) async fn authenticate(
        &mut self,
        frame: &Frame,
        login: &Login,
        scram: &mut Option<ScramClient>,
    ) -> Result<(), ServerError> {
        let mut out = BytesMut::new();
        let binding = self.stream.tls().map(|t| t.server_end_point());
        answer_request(&frame.body, login, binding, scram, &mut out)?;
        if out.is_empty() {
            return Ok(());
        }
        self.stream.write_all(&out).await.map_err(ServerError::io)
    }
}

/// Answer one authentication request (an `R` message's body) into `out`,
/// which stays empty when there is nothing to send (authentication ok, or
/// the server's SCRAM signature checked). Pure, so the fuzzer drives the
/// very code a login runs (`fuzzing::auth`).
///
/// `tls`: `None` for a plaintext connection; over TLS, the channel binding
/// data of the server's certificate (`None` inside when it names no hash).
pub(crate) fn answer_request(
    body: &[u8],
    login: &Login,
    tls: Option<Option<Vec<u8>>>,
    scram: &mut Option<ScramClient>,
    out: &mut BytesMut,
) -> Result<(), ServerError> {
    let code = i32::from_be_bytes(
        body.get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| ServerError::Protocol("short authentication request".into()))?,
    );
    let data = &body[4..];
    let no_password = || ServerError::NoPassword(login.user.clone());
    match (code, &login.credential) {
        (0, _) => {}
        (3, Credential::Password(password)) => password_message(out, password.as_bytes()),
        (5, credential) => {
            let salt: [u8; 4] = data
                .try_into()
                .map_err(|_| ServerError::Protocol("bad MD5 salt".into()))?;
            let answer = match credential {
                Credential::Password(password) => postgres_protocol::authentication::md5_hash(
                    login.user.as_bytes(),
                    password.as_bytes(),
                    salt,
                ),
                Credential::Md5Hash(hash) => {
                    md5_response_from_hash(hash, salt).ok_or_else(no_password)?
                }
                Credential::ScramKeys { .. } => failing_md5_answer(),
                Credential::None => return Err(no_password()),
            };
            password_message(out, answer.as_bytes());
        }
        (10, credential) => {
            let offers = |name: &str| data.split(|&b| b == 0).any(|m| m == name.as_bytes());
            // Bind to the TLS session when the server offers it: a man in
            // the middle with another certificate then cannot relay the
            // exchange. Over TLS without binding, "y" tells the server we
            // could have, so a stripped PLUS offer is detected.
            let plus = matches!(tls, Some(Some(_))) && offers(SCRAM_SHA_256_PLUS);
            let mechanism = if plus {
                SCRAM_SHA_256_PLUS
            } else {
                SCRAM_SHA_256
            };
            if !offers(mechanism) {
                return Err(ServerError::UnsupportedAuth(code));
            }
            let client = match credential {
                Credential::Password(password) => {
                    let binding = match tls {
                        Some(Some(data)) if plus => ChannelBinding::tls_server_end_point(data),
                        Some(Some(_)) => ChannelBinding::unrequested(),
                        _ => ChannelBinding::unsupported(),
                    };
                    ScramClient::Password(ScramSha256::new(password.as_bytes(), binding))
                }
                Credential::ScramKeys {
                    client_key,
                    server_key,
                } => {
                    let binding = match tls {
                        Some(Some(data)) if plus => Binding::TlsServerEndPoint(data),
                        Some(Some(_)) => Binding::Unused,
                        _ => Binding::None,
                    };
                    ScramClient::Keys(ScramKeysClient::new(*client_key, *server_key, binding))
                }
                // A hash cannot answer SCRAM: a proof from keys that are
                // no one's does, and the server refuses it in its own words.
                Credential::Md5Hash(_) => ScramClient::Keys(ScramKeysClient::new(
                    rand::random(),
                    rand::random(),
                    Binding::None,
                )),
                Credential::None => return Err(no_password()),
            };
            write_message(out, b'p', |b| {
                b.put_slice(mechanism.as_bytes());
                b.put_u8(0);
                b.put_i32(client.message().len() as i32);
                b.put_slice(client.message());
            });
            *scram = Some(client);
        }
        (11, _) => {
            let client = scram
                .as_mut()
                .ok_or_else(|| ServerError::Protocol("SASL continue without a start".into()))?;
            client.update(data).map_err(ServerError::Protocol)?;
            sasl_response(out, client.message());
        }
        (12, _) => {
            let client = scram
                .take()
                .ok_or_else(|| ServerError::Protocol("SASL final without a start".into()))?;
            client.finish(data).map_err(|e| {
                ServerError::Protocol(format!("server's SCRAM signature did not verify: {e}"))
            })?;
        }
        // A password PostgreSQL would take in cleartext is one pgmux does
        // not have; for a user it learned by auth_query, an empty answer
        // lets the server refuse in its own words.
        (3, Credential::ScramKeys { .. } | Credential::Md5Hash(_)) => password_message(out, b""),
        (3, _) => return Err(no_password()),
        (other, _) => return Err(ServerError::UnsupportedAuth(other)),
    }
    Ok(())
}

/// An MD5 answer that matches nothing. Sent where pgmux holds SCRAM keys
/// and the server asks for MD5 (an expired role, whose password
/// PostgreSQL no longer uses, is asked so under `password_encryption =
/// md5`): the server then refuses with its own 28P01, as it would a
/// direct client.
fn failing_md5_answer() -> String {
    format!("md5{}", "0".repeat(32))
}

/// PasswordMessage: a C string (cleartext or MD5 answer).
fn password_message(out: &mut BytesMut, data: &[u8]) {
    write_message(out, b'p', |b| {
        b.put_slice(data);
        b.put_u8(0);
    });
}

/// SASLResponse: raw bytes under the same tag.
fn sasl_response(out: &mut BytesMut, data: &[u8]) {
    write_message(out, b'p', |b| b.put_slice(data));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SASLInitialResponse pgmux sends for an AuthenticationSASL that
    /// offers `mechanisms`: its mechanism and GS2 header.
    fn first_message(mechanisms: &[&str], tls: Option<Option<Vec<u8>>>) -> (String, String) {
        let mut body = 10i32.to_be_bytes().to_vec();
        for m in mechanisms {
            body.extend_from_slice(m.as_bytes());
            body.push(0);
        }
        body.push(0);
        let login = Login {
            user: "app".into(),
            credential: Credential::Password("secret".into()),
        };
        let (mut scram, mut out) = (None, BytesMut::new());
        answer_request(&body, &login, tls, &mut scram, &mut out).unwrap();
        let frame = pgmux_wire::frame::take_frame(&mut out, 1 << 20)
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&frame.body).into_owned();
        let (mechanism, rest) = text.split_once('\0').unwrap();
        let gs2: String = rest[4..]
            .splitn(3, ',')
            .take(2)
            .collect::<Vec<_>>()
            .join(",");
        (mechanism.to_string(), gs2)
    }

    #[test]
    fn binds_to_the_tls_session_when_the_server_offers_it() {
        let both = [SCRAM_SHA_256_PLUS, SCRAM_SHA_256];
        let hash = Some(Some(vec![7u8; 32]));
        assert_eq!(
            first_message(&both, hash.clone()),
            (SCRAM_SHA_256_PLUS.into(), "p=tls-server-end-point,".into())
        );
        // Over TLS, a server that offers no binding is told we could have.
        assert_eq!(
            first_message(&[SCRAM_SHA_256], hash),
            (SCRAM_SHA_256.into(), "y,".into())
        );
        // In plaintext there is nothing to bind to.
        assert_eq!(
            first_message(&both, None),
            (SCRAM_SHA_256.into(), "n,".into())
        );
        // A certificate whose signature names no hash: no binding either.
        assert_eq!(
            first_message(&both, Some(None)),
            (SCRAM_SHA_256.into(), "n,".into())
        );
    }
}
