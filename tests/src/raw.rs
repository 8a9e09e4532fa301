//! A bare-bones protocol client for tests that need exact bytes on the wire
//! (pipelines, hostile input). Logs in only where pgmux uses `trust`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
}

/// One backend message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// The SQLSTATE of an ErrorResponse.
    pub fn sqlstate(&self) -> Option<String> {
        self.field(b'C')
    }
    pub fn field(&self, kind: u8) -> Option<String> {
        let mut s = &self.body[..];
        while let Some((&k, rest)) = s.split_first() {
            if k == 0 {
                break;
            }
            let end = rest.iter().position(|&b| b == 0)?;
            if k == kind {
                return Some(String::from_utf8_lossy(&rest[..end]).into_owned());
            }
            s = &rest[end + 1..];
        }
        None
    }
}

/// The ErrorResponse among `msgs` (panics, listing them, if there is none).
pub fn error_in(msgs: &[Msg]) -> &Msg {
    msgs.iter()
        .find(|m| m.tag == b'E')
        .unwrap_or_else(|| panic!("no ErrorResponse in {msgs:?}"))
}

pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

pub fn query(sql: &str) -> Vec<u8> {
    message(b'Q', &[sql.as_bytes(), b"\0"].concat())
}

/// Parse (unnamed) + Bind (no params) + Execute, without Sync.
pub fn extended(sql: &str) -> Vec<u8> {
    let mut out = message(b'P', &[b"\0", sql.as_bytes(), b"\0\0\0"].concat());
    out.extend(message(b'B', b"\0\0\0\0\0\0\0\0"));
    out.extend(message(b'E', b"\0\0\0\0\0"));
    out
}

/// Parse of statement `name` (no parameter types).
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    message(b'P', format!("{name}\0{sql}\0\0\0").as_bytes())
}

/// Bind of the unnamed portal to `statement`, without parameters.
pub fn bind(statement: &str) -> Vec<u8> {
    message(b'B', format!("\0{statement}\0\0\0\0\0\0\0").as_bytes())
}

/// Execute the unnamed portal, all rows.
pub fn execute() -> Vec<u8> {
    message(b'E', b"\0\0\0\0\0")
}

pub fn describe_portal() -> Vec<u8> {
    message(b'D', b"P\0")
}

pub fn close_statement(name: &str) -> Vec<u8> {
    message(b'C', format!("S{name}\0").as_bytes())
}

/// The tags of `msgs`, as a string ("2DCZ").
/// The ParameterStatus values among `msgs`, by name.
pub fn parameters(msgs: &[Msg]) -> std::collections::BTreeMap<String, String> {
    msgs.iter()
        .filter(|m| m.tag == b'S')
        .map(|m| {
            let mut parts = m.body.split(|&b| b == 0);
            let name = String::from_utf8_lossy(parts.next().unwrap()).into_owned();
            let value = String::from_utf8_lossy(parts.next().unwrap()).into_owned();
            (name, value)
        })
        .collect()
}

/// The (pid, key) of the BackendKeyData among `msgs`.
pub fn key_data(msgs: &[Msg]) -> (u32, u32) {
    let k = msgs
        .iter()
        .find(|m| m.tag == b'K')
        .expect("no BackendKeyData");
    (
        u32::from_be_bytes(k.body[..4].try_into().unwrap()),
        u32::from_be_bytes(k.body[4..8].try_into().unwrap()),
    )
}

/// A CancelRequest for (pid, key).
pub fn cancel_request(pid: u32, key: u32) -> Vec<u8> {
    let mut out = 16u32.to_be_bytes().to_vec();
    out.extend_from_slice(&80_877_102u32.to_be_bytes());
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(&key.to_be_bytes());
    out
}

pub fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

/// The ErrorResponse among `msgs`: (SQLSTATE, message). It must carry no
/// context: an error pgmux had the server raise must read as PostgreSQL's own.
pub fn error_of(msgs: &[Msg]) -> (String, String) {
    let e = msgs
        .iter()
        .find(|m| m.tag == b'E')
        .unwrap_or_else(|| panic!("no error in {:?}", tags(msgs)));
    assert_eq!(e.field(b'W'), None, "an error with a context: {e:?}");
    (e.sqlstate().unwrap(), e.field(b'M').unwrap())
}

/// The transaction status of the ReadyForQuery that ends `msgs`.
pub fn status(msgs: &[Msg]) -> u8 {
    msgs.last().filter(|m| m.tag == b'Z').unwrap().body[0]
}

pub fn sync() -> Vec<u8> {
    message(b'S', b"")
}

pub fn flush() -> Vec<u8> {
    message(b'H', b"")
}

pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_u32(196_608);
    for (k, v) in params {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
        }
    }

    /// Connect and log in (pgmux must use `trust`); returns after ReadyForQuery.
    pub async fn login(addr: SocketAddr, user: &str, database: &str) -> Raw {
        Raw::login_with(addr, &[("user", user), ("database", database)], None)
            .await
            .0
    }

    /// Log in with these startup parameters, answering an MD5 password
    /// request with `password` if one comes; returns the greeting's
    /// messages (parameters, BackendKeyData) up to ReadyForQuery, or the
    /// error that refused the login.
    pub async fn login_with(
        addr: SocketAddr,
        params: &[(&str, &str)],
        password: Option<&str>,
    ) -> (Raw, Vec<Msg>) {
        let mut raw = Raw::connect(addr).await;
        raw.send(&startup_packet(params)).await;
        let mut greeting = Vec::new();
        while let Some(m) = raw.next().await {
            match m.tag {
                b'R' if m.body[..4] == [0, 0, 0, 5] => {
                    let user = params.iter().find(|(k, _)| *k == "user").unwrap().1;
                    let salt: [u8; 4] = m.body[4..8].try_into().unwrap();
                    let hash = postgres_protocol::authentication::md5_hash(
                        user.as_bytes(),
                        password
                            .expect("MD5 asked for, no password given")
                            .as_bytes(),
                        salt,
                    );
                    raw.send(&message(b'p', &[hash.as_bytes(), b"\0"].concat()))
                        .await;
                }
                b'R' => assert_eq!(m.body[..4], [0, 0, 0, 0], "unexpected auth request"),
                b'E' => {
                    greeting.push(m);
                    return (raw, greeting);
                }
                b'Z' => {
                    greeting.push(m);
                    return (raw, greeting);
                }
                _ => greeting.push(m),
            }
        }
        panic!("connection closed during login: {greeting:?}");
    }

    /// The first DataRow's first column of a simple query, as text.
    pub async fn scalar(&mut self, sql: &str) -> String {
        let replies = self.exchange(&query(sql)).await;
        let row = replies
            .iter()
            .find(|m| m.tag == b'D')
            .unwrap_or_else(|| panic!("no row for {sql}: {replies:?}"));
        let len = i32::from_be_bytes(row.body[2..6].try_into().unwrap()) as usize;
        String::from_utf8_lossy(&row.body[6..6 + len]).into_owned()
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next message, or None at end of stream. Panics after 30 s.
    pub async fn next(&mut self) -> Option<Msg> {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    self.buf.advance(5);
                    let body = self.buf.split_to(len - 4).to_vec();
                    return Some(Msg { tag, body });
                }
            }
            let n =
                tokio::time::timeout(Duration::from_secs(30), self.stream.read_buf(&mut self.buf))
                    .await
                    .expect("no reply from pgmux within 30 s")
                    .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    /// Send `bytes`, then read up to and including the next ReadyForQuery.
    pub async fn exchange(&mut self, bytes: &[u8]) -> Vec<Msg> {
        self.send(bytes).await;
        self.until_ready().await
    }

    /// Messages up to and including the next ReadyForQuery.
    pub async fn until_ready(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        while let Some(m) = self.next().await {
            let done = m.tag == b'Z';
            out.push(m);
            if done {
                return out;
            }
        }
        panic!("connection closed before ReadyForQuery: {out:?}");
    }

    /// Everything until the server closes the connection.
    pub async fn until_closed(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        while let Some(m) = self.next().await {
            out.push(m);
        }
        out
    }
}
