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
        let body = &frame.body[..];
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
        let mut out = BytesMut::new();
        match code {
            0 => return Ok(()),
            3 => password_message(&mut out, password()?.as_bytes()),
            5 => {
                let salt: [u8; 4] = data
                    .try_into()
                    .map_err(|_| ServerError::Protocol("bad MD5 salt".into()))?;
                let hashed = postgres_protocol::authentication::md5_hash(
                    login.user.as_bytes(),
                    password()?.as_bytes(),
                    salt,
                );
                password_message(&mut out, hashed.as_bytes());
            }
            10 => {
                let offers_scram = data.split(|&b| b == 0).any(|m| m == b"SCRAM-SHA-256");
                if !offers_scram {
                    return Err(ServerError::UnsupportedAuth(code));
                }
                let client =
                    ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                write_message(&mut out, b'p', |b| {
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
                sasl_response(&mut out, client.message());
            }
            12 => {
                let mut client = scram
                    .take()
                    .ok_or_else(|| ServerError::Protocol("SASL final without a start".into()))?;
                client.finish(data).map_err(|e| {
                    ServerError::Protocol(format!("server's SCRAM signature did not verify: {e}"))
                })?;
                return Ok(());
            }
            other => return Err(ServerError::UnsupportedAuth(other)),
        }
        self.stream.write_all(&out).await.map_err(ServerError::io)
    }
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
