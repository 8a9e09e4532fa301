//! The last of a login: the greeting a logged-in client gets in one write,
//! or the fatal error a refused one gets before the close.

use bytes::{Bytes, BytesMut};
use pgmux_wire::reply::{self, Severity};
use tokio::io::AsyncWriteExt;

use crate::io::Stream as TcpStream;

// Sizes of the greeting's fixed messages, tag and length included.
const AUTH_OK_LEN: usize = 9;
const BACKEND_KEY_DATA_LEN: usize = 13;
const READY_FOR_QUERY_LEN: usize = 6;

/// AuthenticationOk, every parameter the server reports with the client's
/// own values (`statuses`, from [`parameter_statuses`]), the cancel key and
/// ReadyForQuery, in one write.
pub fn greeting(out: &mut BytesMut, statuses: &[u8], pid: u32, key: u32) {
    out.reserve(AUTH_OK_LEN + statuses.len() + BACKEND_KEY_DATA_LEN + READY_FOR_QUERY_LEN);
    reply::auth_ok(out);
    out.extend_from_slice(statuses);
    reply::backend_key_data(out, pid, key);
    reply::ready_for_query(out, b'I');
}

/// The ParameterStatus messages of a greeting: each setting `reported`
/// names, with the value `params` gives it. The same for every client that
/// logs in alike, so a pool keeps them with what such a login came to.
pub fn parameter_statuses(
    params: &crate::params::ParamMap,
    reported: &crate::params::ParamMap,
) -> Bytes {
    let size: usize = params
        .reported_values(reported)
        .map(|(name, value)| 5 + name.len() + 1 + value.len() + 1)
        .sum();
    let mut out = BytesMut::with_capacity(size);
    for (name, value) in params.reported_values(reported) {
        reply::parameter_status(&mut out, name, value);
    }
    out.freeze()
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
        greeting(&mut out, &parameter_statuses(&client, &reported), 7, 9);
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
