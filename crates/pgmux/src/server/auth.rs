//! Answering a server's authentication request at login: cleartext, MD5
//! or SCRAM-SHA-256, as the server asks.

use bytes::{BufMut, BytesMut};
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
        answer_request(&frame.body, login, scram, &mut out)?;
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
pub(crate) fn answer_request(
    body: &[u8],
    login: &Login,
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
            let offers_scram = data.split(|&b| b == 0).any(|m| m == b"SCRAM-SHA-256");
            if !offers_scram {
                return Err(ServerError::UnsupportedAuth(code));
            }
            let client = ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
            write_message(out, b'p', |b| {
                b.put_slice(b"SCRAM-SHA-256\0");
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
