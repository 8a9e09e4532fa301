//! The first packet of a connection: untagged, length-prefixed.

use crate::frame::read_cstr;

/// Longest startup packet accepted (PostgreSQL's own MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_LEN: usize = 10_000;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
const PROTOCOL_3_0: u32 = 196_608;

#[derive(Debug, PartialEq, Eq)]
pub enum StartupRequest {
    Ssl,
    GssEnc,
    Cancel {
        pid: u32,
        key: u32,
    },
    Startup {
        /// The minor protocol version the client asked for (3.x).
        minor: u16,
        params: Vec<(String, String)>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartupError {
    #[error("invalid startup packet length {0}")]
    BadLength(i64),
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid startup packet layout")]
    Malformed,
    #[error("startup parameters must be valid UTF-8")]
    NotUtf8,
}

/// Check the length word of a startup packet and return the body length.
pub fn startup_body_len(raw: i32) -> Result<usize, StartupError> {
    if !(8..=MAX_STARTUP_LEN as i32).contains(&raw) {
        return Err(StartupError::BadLength(raw.into()));
    }
    Ok(raw as usize - 4)
}

/// Parse a startup packet body (everything after the length word).
pub fn parse_startup(body: &[u8]) -> Result<StartupRequest, StartupError> {
    let code = u32::from_be_bytes(
        body.get(..4)
            .ok_or(StartupError::Malformed)?
            .try_into()
            .map_err(|_| StartupError::Malformed)?,
    );
    let rest = &body[4..];
    match code {
        SSL_REQUEST if rest.is_empty() => Ok(StartupRequest::Ssl),
        GSSENC_REQUEST if rest.is_empty() => Ok(StartupRequest::GssEnc),
        CANCEL_REQUEST if rest.len() == 8 => Ok(StartupRequest::Cancel {
            pid: u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]),
            key: u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]),
        }),
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => Err(StartupError::Malformed),
        _ => {
            let major = (code >> 16) as u16;
            let minor = code as u16;
            if major != (PROTOCOL_3_0 >> 16) as u16 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            Ok(StartupRequest::Startup {
                minor,
                params: parse_params(rest)?,
            })
        }
    }
}

fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    loop {
        let name = read_cstr(&mut rest).ok_or(StartupError::Malformed)?;
        if name.is_empty() {
            break;
        }
        let value = read_cstr(&mut rest).ok_or(StartupError::Malformed)?;
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| StartupError::NotUtf8);
        params.push((text(name)?, text(value)?));
    }
    if !rest.is_empty() {
        return Err(StartupError::Malformed);
    }
    Ok(params)
}

/// Build a startup packet (used towards the backend and by tests).
pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut out = vec![0, 0, 0, 0];
    out.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
    for (k, v) in params {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out.push(0);
    let len = out.len() as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// Build a CancelRequest packet.
pub fn cancel_packet(pid: u32, key: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&16u32.to_be_bytes());
    out[4..8].copy_from_slice(&CANCEL_REQUEST.to_be_bytes());
    out[8..12].copy_from_slice(&pid.to_be_bytes());
    out[12..].copy_from_slice(&key.to_be_bytes());
    out
}

/// Split the `options` startup parameter (`-c name=value --name=value ...`)
/// into settings. Backslash escapes a space, as libpq documents.
pub fn parse_options(options: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next()
        } else {
            w.strip_prefix("--")
                .or_else(|| w.strip_prefix("-c"))
                .map(str::to_string)
        };
        if let Some((k, v)) = setting.as_deref().and_then(|s| s.split_once('=')) {
            out.push((k.replace('-', "_"), v.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_startup_packet() {
        let pkt = startup_packet(&[("user", "alice"), ("database", "shop")]);
        let len = startup_body_len(i32::from_be_bytes(pkt[..4].try_into().unwrap())).unwrap();
        assert_eq!(len, pkt.len() - 4);
        let req = parse_startup(&pkt[4..]).unwrap();
        assert_eq!(
            req,
            StartupRequest::Startup {
                minor: 0,
                params: vec![
                    ("user".into(), "alice".into()),
                    ("database".into(), "shop".into())
                ]
            }
        );
    }

    #[test]
    fn parses_special_requests() {
        assert_eq!(
            parse_startup(&SSL_REQUEST.to_be_bytes()).unwrap(),
            StartupRequest::Ssl
        );
        assert_eq!(
            parse_startup(&GSSENC_REQUEST.to_be_bytes()).unwrap(),
            StartupRequest::GssEnc
        );
        let c = cancel_packet(7, 9);
        assert_eq!(
            parse_startup(&c[4..]).unwrap(),
            StartupRequest::Cancel { pid: 7, key: 9 }
        );
    }

    #[test]
    fn rejects_bad_packets() {
        assert!(startup_body_len(i32::MAX).is_err());
        assert!(startup_body_len(-1).is_err());
        assert!(startup_body_len(4).is_err());
        assert_eq!(
            parse_startup(&[0, 2, 0, 0, 0]),
            Err(StartupError::UnsupportedProtocol { major: 2, minor: 0 })
        );
        assert_eq!(
            parse_startup(b"\0\x03\0\0user\0"),
            Err(StartupError::Malformed)
        );
        assert_eq!(
            parse_startup(b"\0\x03\0\0user\0x\0\0junk"),
            Err(StartupError::Malformed)
        );
        assert_eq!(
            parse_startup(b"GET / HTTP/1.1\r\n"),
            Err(StartupError::UnsupportedProtocol {
                major: 0x4745,
                minor: 0x5420
            })
        );
    }

    #[test]
    fn splits_options() {
        assert_eq!(
            parse_options("-c search_path=a\\ b --statement-timeout=5 -cwork_mem=64MB"),
            vec![
                ("search_path".into(), "a b".into()),
                ("statement_timeout".into(), "5".into()),
                ("work_mem".into(), "64MB".into())
            ]
        );
    }
}
