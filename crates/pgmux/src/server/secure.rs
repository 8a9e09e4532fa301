//! TLS toward a server: the SSLRequest, its one-byte answer, and the
//! handshake, as `server_tls_sslmode` says.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ServerError;
use crate::config::{SslMode, Target};
use crate::io::Stream as TcpStream;
use crate::tls::{HandshakeFailure, Side};

/// PostgreSQL's SSLRequest: length 8, code 1234.5679.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Ask for TLS as `server_tls_sslmode` says, and run the handshake if the
/// server agrees. Never plaintext under `require` or stronger.
pub(super) async fn secure(
    mut stream: TcpStream,
    target: &Target,
    host: &str,
    where_: &str,
) -> Result<TcpStream, ServerError> {
    let mode = target.tls_mode;
    let Some(setup) = target.tls.as_ref() else {
        return Ok(stream);
    };
    if matches!(mode, SslMode::Disable | SslMode::Allow) {
        return Ok(stream);
    }
    let refused = |reason: String| ServerError::Tls {
        addr: where_.to_string(),
        reason,
    };
    stream
        .write_all(&SSL_REQUEST)
        .await
        .map_err(ServerError::io)?;
    // Exactly one byte: anything the server sent after it (in plaintext)
    // is read as TLS and fails the handshake, as libpq makes it.
    let mut answer = [0u8; 1];
    stream
        .read_exact(&mut answer)
        .await
        .map_err(ServerError::io)?;
    match answer[0] {
        b'S' => {}
        b'N' if mode.requires_tls() => {
            return Err(refused(format!(
                "the server does not accept TLS, and server_tls_sslmode is \"{}\"",
                mode.name()
            )))
        }
        b'N' => return Ok(stream),
        other => {
            return Err(ServerError::Protocol(format!(
                "unexpected answer {other:#04x} to the TLS request"
            )))
        }
    }
    let conn = setup
        .connect(
            mode,
            host,
            target.tls_ca_file.as_deref(),
            target.tls_identity.as_ref(),
        )
        .map_err(refused)?;
    let tls = crate::tls::TlsStream::new(stream, conn, &[]);
    let done = tls.handshake().await;
    crate::stats::tls_handshake(
        Side::Server,
        done.as_ref().map(|_| ()).map_err(HandshakeFailure::of),
    );
    done.map_err(|e| refused(e.to_string()))?;
    Ok(TcpStream::Tls(Box::new(tls)))
}
