//! The frame reader and the startup packet parser: the first code to see
//! a client's (or a server's) bytes.

use bytes::BytesMut;
use pgmux_wire::frame::{peek_header, read_cstr, take_frame, FrameError, HEADER_LEN};
use pgmux_wire::startup::{
    cancel_packet, parse_options, parse_startup, startup_body_len, startup_packet, StartupError,
    StartupRequest, MAX_STARTUP_LEN,
};

use super::Input;

/// The frame reader, fed the input in fuzzer-chosen pieces under a
/// fuzzer-chosen size cap, as the relay and the login read sockets.
///
/// Asserts: no frame is longer than the cap allows; the frames taken,
/// re-encoded, are exactly the bytes consumed, and the buffer keeps exactly
/// the rest; an error is the one the header calls for; and waiting for a
/// message never reserves more than the cap (plus the usual doubling), so a
/// hostile length word cannot make pgmux allocate.
pub fn frame(data: &[u8]) {
    let mut input = Input::new(data);
    // Caps from the smallest possible (a bare header) to 64 KiB: the
    // arithmetic is the same as at the 1 GiB default.
    let max = usize::from(input.u16()).max(4);
    let chunk = usize::from(input.byte()).max(1);
    let stream = input.rest();
    let mut buf = BytesMut::new();
    let mut rebuilt = Vec::with_capacity(stream.len());
    let mut fed = 0;
    while fed < stream.len() || !buf.is_empty() {
        let end = (fed + chunk).min(stream.len());
        buf.extend_from_slice(&stream[fed..end]);
        let got_more = end > fed;
        fed = end;
        loop {
            let header = peek_header(&buf, max);
            match take_frame(&mut buf, max) {
                Ok(Some(frame)) => {
                    assert!(frame.body.len() + 4 <= max, "frame over the cap");
                    assert_eq!(header, Ok(Some((frame.tag, frame.body.len()))));
                    let mut body = &frame.body[..];
                    while let Some(s) = read_cstr(&mut body) {
                        assert!(!s.contains(&0));
                    }
                    rebuilt.push(frame.tag);
                    rebuilt.extend_from_slice(&(frame.body.len() as u32 + 4).to_be_bytes());
                    rebuilt.extend_from_slice(&frame.body);
                }
                Ok(None) => {
                    // Either the header or the body is still short.
                    if let Ok(Some((_, len))) = header {
                        assert!(buf.len() < HEADER_LEN + len);
                    }
                    // Reserved for the message under way, never beyond it.
                    let bound = 2 * (max + HEADER_LEN) + 2 * stream.len() + 64;
                    assert!(buf.capacity() <= bound, "{} > {bound}", buf.capacity());
                    break;
                }
                Err(e) => {
                    let raw = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
                    match e {
                        FrameError::BadLength(n) => assert!(n == i64::from(raw) && raw < 4),
                        FrameError::TooLarge { len, max: m } => {
                            assert!(m == max && len > max && raw >= 4)
                        }
                    }
                    assert_eq!(header, Err(e));
                    return;
                }
            }
        }
        if !got_more {
            break;
        }
    }
    assert_eq!(rebuilt.len() + buf.len(), stream.len());
    assert_eq!(&rebuilt[..], &stream[..rebuilt.len()]);
    assert_eq!(&buf[..], &stream[rebuilt.len()..]);
}

/// The startup packet as the login reads it: the length word checked, then
/// the body parsed, its `options` parameter split.
///
/// Asserts: an accepted packet re-encodes to the bytes it came from
/// (parameters, cancel keys, the special requests), so nothing is lost or
/// invented in parsing; the length check holds PostgreSQL's bounds; option
/// names never keep a `-`.
pub fn startup(data: &[u8]) {
    let Some((word, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let raw = i32::from_be_bytes(*word);
    let body = match startup_body_len(raw) {
        Ok(len) => {
            assert!((4..=MAX_STARTUP_LEN - 4).contains(&len));
            // The login reads exactly this much; a short input is a client
            // still sending.
            match rest.get(..len) {
                Some(body) => body,
                None => return,
            }
        }
        Err(StartupError::BadLength(n)) => {
            assert!(n < 8 || n > MAX_STARTUP_LEN as i64);
            // Parse the bytes anyway: the parser must not trust the word.
            rest
        }
        Err(e) => panic!("startup_body_len gave {e:?}"),
    };
    match parse_startup(body) {
        Ok(StartupRequest::Ssl) => assert_eq!(body, 80_877_103u32.to_be_bytes()),
        Ok(StartupRequest::GssEnc) => assert_eq!(body, 80_877_104u32.to_be_bytes()),
        Ok(StartupRequest::Cancel { pid, key }) => {
            assert_eq!(&cancel_packet(pid, key)[4..], body);
        }
        Ok(StartupRequest::Startup { minor, params }) => {
            assert_eq!(body[..2], [0, 3]);
            assert_eq!(body[2..4], minor.to_be_bytes());
            let pairs: Vec<(&str, &str)> = params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let again = startup_packet(&pairs);
            assert_eq!(&again[8..], &body[4..], "parameters re-encode as sent");
            for (name, value) in &params {
                assert!(!name.is_empty() && !name.contains('\0') && !value.contains('\0'));
                if name == "options" {
                    for (k, _) in parse_options(value) {
                        assert!(!k.contains('-'));
                    }
                }
            }
        }
        Err(StartupError::BadLength(_)) => panic!("parse_startup does not check lengths"),
        Err(_) => {}
    }
    // Any text may arrive as `options`.
    if let Ok(text) = std::str::from_utf8(body) {
        for (k, _) in parse_options(text) {
            assert!(!k.contains('-'));
        }
    }
}
