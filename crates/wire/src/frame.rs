//! Message framing: a one-byte tag, a four-byte big-endian length that counts
//! itself, then the body.

use bytes::{Buf, Bytes, BytesMut};

/// Tag byte plus length word.
pub const HEADER_LEN: usize = 5;

/// PostgreSQL's own ceiling for a single message (`PQ_LARGE_MESSAGE_LIMIT`
/// is 1 GiB - 1); pgmux uses it as the default `max_message_size`.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 0x3fff_ffff;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {0}")]
    BadLength(i64),
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
}

/// Validate a raw length word (which includes its own four bytes) against
/// `max` and return the body length. Checked before anything is reserved, so
/// a hostile length can never make pgmux allocate.
pub fn body_len(raw: i32, max: usize) -> Result<usize, FrameError> {
    if raw < 4 {
        return Err(FrameError::BadLength(raw.into()));
    }
    let len = raw as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len - 4)
}

/// The tag and checked body length of the message starting at `buf[0]`, or
/// `None` while fewer than five bytes are in.
pub fn peek_header(buf: &[u8], max: usize) -> Result<Option<(u8, usize)>, FrameError> {
    match buf {
        [tag, a, b, c, d, ..] => Ok(Some((
            *tag,
            body_len(i32::from_be_bytes([*a, *b, *c, *d]), max)?,
        ))),
        _ => Ok(None),
    }
}

/// One whole message. `body` shares the read buffer's allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

/// Take one complete tagged message off the front of `buf`, or `None` if it
/// has not fully arrived yet. On `None`, `buf` has been grown to fit the rest
/// of the message so the next read fills it without reallocating twice.
pub fn take_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
    let Some((tag, body)) = peek_header(buf, max)? else {
        return Ok(None);
    };
    let total = HEADER_LEN + body;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let body = buf.split_to(body).freeze();
    Ok(Some(Frame { tag, body }))
}

/// Append a tagged message built by `body` to `out`, patching the length.
pub fn write_message(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.extend_from_slice(&[tag, 0, 0, 0, 0]);
    let start = out.len() - 4;
    body(out);
    let len = (out.len() - start) as i32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Read a NUL-terminated string off the front of `body`.
pub fn read_cstr<'a>(body: &mut &'a [u8]) -> Option<&'a [u8]> {
    let end = body.iter().position(|&b| b == 0)?;
    let s = &body[..end];
    *body = &body[end + 1..];
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn rejects_short_and_negative_lengths() {
        assert_eq!(body_len(3, 100), Err(FrameError::BadLength(3)));
        assert_eq!(body_len(-5, 100), Err(FrameError::BadLength(-5)));
        assert_eq!(
            body_len(i32::MIN, 100),
            Err(FrameError::BadLength(i32::MIN as i64))
        );
    }

    #[test]
    fn rejects_lengths_over_the_cap_without_reserving() {
        let mut buf = BytesMut::new();
        buf.put_u8(b'Q');
        buf.put_i32(i32::MAX);
        let err = take_frame(&mut buf, 1 << 20).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
        assert!(buf.capacity() < 1 << 20);
    }

    #[test]
    fn waits_for_the_whole_message_then_splits_it() {
        let mut buf = BytesMut::new();
        write_message(&mut buf, b'Q', |b| b.extend_from_slice(b"select 1\0"));
        let whole = buf.clone();
        let mut partial = BytesMut::from(&whole[..7]);
        assert_eq!(take_frame(&mut partial, 1000).unwrap(), None);
        partial.extend_from_slice(&whole[7..]);
        partial.extend_from_slice(b"Z");
        let f = take_frame(&mut partial, 1000).unwrap().unwrap();
        assert_eq!(f.tag, b'Q');
        assert_eq!(&f.body[..], b"select 1\0");
        assert_eq!(&partial[..], b"Z");
    }

    #[test]
    fn reads_c_strings() {
        let mut s: &[u8] = b"ab\0cd\0";
        assert_eq!(read_cstr(&mut s), Some(&b"ab"[..]));
        assert_eq!(read_cstr(&mut s), Some(&b"cd"[..]));
        assert_eq!(read_cstr(&mut s), None);
    }
}
