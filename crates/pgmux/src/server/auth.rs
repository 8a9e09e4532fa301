//! Answering a server's authentication request at login: cleartext, MD5
//! or SCRAM-SHA-256, as the server asks.

use bytes::{BufMut, BytesMut};
use pgmux_wire::auth::{SCRAM_SHA_256, SCRAM_SHA_256_PLUS};
use pgmux_wire::frame::{write_message, Frame};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::AsyncWriteExt;

use super::{Login, Server, ServerError};

impl Server {
    pub(super) async fn authenticate(
        &mut self,
        frame: &Frame,
        login: &Login,
        scram: &mut Option<ScramSha256>,
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
    scram: &mut Option<ScramSha256>,
    out: &mut BytesMut,
) -> Result<(), ServerError> {
    let code = i32::from_be_bytes(
        body.get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| ServerError::Protocol("short authentication request".into()))?,
    );
    let data = &body[4..];
    let password = || {
        login
            .password
            .as_deref()
            .ok_or_else(|| ServerError::NoPassword(login.user.clone()))
    };
    match code {
        0 => {}
        3 => password_message(out, password()?.as_bytes()),
        5 => {
            let salt: [u8; 4] = data
                .try_into()
                .map_err(|_| ServerError::Protocol("bad MD5 salt".into()))?;
            let hashed = postgres_protocol::authentication::md5_hash(
                login.user.as_bytes(),
                password()?.as_bytes(),
                salt,
            );
            password_message(out, hashed.as_bytes());
        }
        10 => {
            let offers = |name: &str| data.split(|&b| b == 0).any(|m| m == name.as_bytes());
            // Bind to the TLS session when the server offers it: a man in
            // the middle with another certificate then cannot relay the
            // exchange. Over TLS without binding, "y" tells the server we
            // could have, so a stripped PLUS offer is detected.
            let (mechanism, binding) = match tls {
                Some(Some(data)) if offers(SCRAM_SHA_256_PLUS) => (
                    SCRAM_SHA_256_PLUS,
                    ChannelBinding::tls_server_end_point(data),
                ),
                Some(Some(_)) => (SCRAM_SHA_256, ChannelBinding::unrequested()),
                _ => (SCRAM_SHA_256, ChannelBinding::unsupported()),
            };
            if !offers(mechanism) {
                return Err(ServerError::UnsupportedAuth(code));
            }
            let client = ScramSha256::new(password()?.as_bytes(), binding);
            write_message(out, b'p', |b| {
                b.put_slice(mechanism.as_bytes());
                b.put_u8(0);
                b.put_i32(client.message().len() as i32);
                b.put_slice(client.message());
            });
            *scram = Some(client);
        }
        11 => {
            let client = scram
                .as_mut()
                .ok_or_else(|| ServerError::Protocol("SASL continue without a start".into()))?;
            client
                .update(data)
                .map_err(|e| ServerError::Protocol(e.to_string()))?;
            sasl_response(out, client.message());
        }
        12 => {
            let mut client = scram
                .take()
                .ok_or_else(|| ServerError::Protocol("SASL final without a start".into()))?;
            client.finish(data).map_err(|e| {
                ServerError::Protocol(format!("server's SCRAM signature did not verify: {e}"))
            })?;
        }
        other => return Err(ServerError::UnsupportedAuth(other)),
    }
    Ok(())
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
            password: Some("secret".into()),
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
