//! The last of a login: the greeting a logged-in client gets in one write,
//! or the fatal error a refused one gets before the close.

use bytes::BytesMut;
use pgmux_wire::reply::{self, Severity};
use tokio::io::AsyncWriteExt;

use crate::io::Stream as TcpStream;

// Sizes of the greeting's fixed messages, tag and length included.
const AUTH_OK_LEN: usize = 9;
const BACKEND_KEY_DATA_LEN: usize = 13;
const READY_FOR_QUERY_LEN: usize = 6;

/// AuthenticationOk, every parameter the server reports (with the client's
/// own values), the cancel key and ReadyForQuery, in one write.
pub fn greeting(
    out: &mut BytesMut,
    params: &crate::params::ParamMap,
    reported: &crate::params::ParamMap,
    pid: u32,
    key: u32,
) {
    // Room for the whole greeting at once (about 400 bytes with
    // PostgreSQL 15's reported settings), not message by message.
    let statuses: usize = params
        .reported_values(reported)
        .map(|(name, value)| 5 + name.len() + 1 + value.len() + 1)
        .sum();
    out.reserve(AUTH_OK_LEN + statuses + BACKEND_KEY_DATA_LEN + READY_FOR_QUERY_LEN);
    reply::auth_ok(out);
    for (name, value) in params.reported_values(reported) {
        reply::parameter_status(out, name, value);
    }
    reply::backend_key_data(out, pid, key);
    reply::ready_for_query(out, b'I');
}

/// Send a fatal error and close.
pub async fn refuse(stream: &mut TcpStream, code: &str, message: &str) {
    let mut out = BytesMut::new();
    reply::error(&mut out, Severity::Fatal, code, message);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParamMap;
    use pgmux_wire::frame::take_frame;

    #[test]
    fn greeting_reports_the_clients_values_in_one_buffer() {
        let mut reported = ParamMap::default();
        reported.set("DateStyle", "ISO, MDY");
        reported.set("client_encoding", "UTF8");
        reported.set("application_name", "");
        let mut client = reported.clone();
        client.set("application_name", "booktrader");
        let mut out = BytesMut::new();
        greeting(&mut out, &client, &reported, 7, 9);
        let reserved = out.capacity();
        let mut frames = Vec::new();
        while let Some(f) = take_frame(&mut out, 1 << 16).unwrap() {
            frames.push(f);
        }
        let tags: Vec<u8> = frames.iter().map(|f| f.tag).collect();
        assert_eq!(tags, b"RSSSKZ");
        let statuses: Vec<&[u8]> = frames[1..4].iter().map(|f| &f.body[..]).collect();
        assert!(statuses.contains(&&b"application_name\0booktrader\0"[..]));
        assert!(statuses.contains(&&b"DateStyle\0ISO, MDY\0"[..]));
        let written: usize = frames.iter().map(|f| 5 + f.body.len()).sum();
        assert!(reserved >= written, "{reserved} reserved for {written}");
    }
}
