//! Typed views of the few server messages pgmux reads. Views borrow the
//! message body; the original bytes are what get forwarded.

use crate::frame::read_cstr;

/// The fields of an ErrorResponse or NoticeResponse that pgmux uses.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

impl ErrorFields {
    pub fn parse(mut body: &[u8]) -> ErrorFields {
        let mut out = ErrorFields::default();
        while let Some((&kind, rest)) = body.split_first() {
            if kind == 0 {
                break;
            }
            body = rest;
            let Some(value) = read_cstr(&mut body) else {
                break;
            };
            let value = String::from_utf8_lossy(value).into_owned();
            match kind {
                b'V' => out.severity = value,
                b'S' if out.severity.is_empty() => out.severity = value,
                b'C' => out.code = value,
                b'M' => out.message = value,
                _ => {}
            }
        }
        out
    }
}

/// The SQLSTATE class (first two characters) of an ErrorResponse body.
pub fn sqlstate_class(body: &[u8]) -> Option<[u8; 2]> {
    match error_field(body, b'C')? {
        [a, b, ..] => Some([*a, *b]),
        _ => None,
    }
}

/// One field (`C` code, `M` message, ...) of an ErrorResponse or
/// NoticeResponse body.
pub fn error_field(mut body: &[u8], wanted: u8) -> Option<&[u8]> {
    while let Some((&kind, rest)) = body.split_first() {
        if kind == 0 {
            return None;
        }
        body = rest;
        let value = read_cstr(&mut body)?;
        if kind == wanted {
            return Some(value);
        }
    }
    None
}

/// The fields of an ErrorResponse or NoticeResponse body, in order.
pub fn error_fields(mut body: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (&kind, rest) = body.split_first()?;
        if kind == 0 {
            return None;
        }
        body = rest;
        Some((kind, read_cstr(&mut body)?))
    })
}

/// A DataRow body: each column's bytes, `None` for NULL.
pub fn data_row(body: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    let count = u16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    let mut rest = &body[2..];
    let mut out = Vec::with_capacity(count.into());
    for _ in 0..count {
        let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        rest = &rest[4..];
        if len < 0 {
            out.push(None);
        } else {
            let len = len as usize;
            out.push(Some(rest.get(..len)?));
            rest = &rest[len..];
        }
    }
    Some(out)
}

/// A ParameterStatus body: name and value.
pub fn parameter_status(mut body: &[u8]) -> Option<(String, String)> {
    let name = read_cstr(&mut body)?;
    let value = read_cstr(&mut body)?;
    Some((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

/// A BackendKeyData body: process id and secret key.
pub fn backend_key_data(body: &[u8]) -> Option<(u32, u32)> {
    let pid = u32::from_be_bytes(body.get(..4)?.try_into().ok()?);
    let key = u32::from_be_bytes(body.get(4..8)?.try_into().ok()?);
    Some((pid, key))
}

/// A ReadyForQuery body: the transaction status byte (`I`, `T` or `E`).
pub fn ready_status(body: &[u8]) -> Option<u8> {
    match body {
        [s @ (b'I' | b'T' | b'E')] => Some(*s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_data_rows_and_error_fields() {
        let row = b"\x00\x03\x00\x00\x00\x02ab\xff\xff\xff\xff\x00\x00\x00\x00";
        assert_eq!(
            data_row(row),
            Some(vec![Some(&b"ab"[..]), None, Some(&b""[..])])
        );
        assert_eq!(data_row(b"\x00\x01\x00\x00\x00\x09ab"), None);
        assert_eq!(data_row(b"\x00"), None);
        let err = b"SERROR\0C0A000\0Mcached plan must not change result type\0\0";
        assert_eq!(error_field(err, b'C'), Some(&b"0A000"[..]));
        assert_eq!(sqlstate_class(err), Some(*b"0A"));
        assert_eq!(error_field(err, b'D'), None);
        let kinds: Vec<u8> = error_fields(err).map(|(k, _)| k).collect();
        assert_eq!(kinds, b"SCM");
    }

    #[test]
    fn parses_parameter_status_and_key_data() {
        assert_eq!(
            parameter_status(b"TimeZone\0UTC\0"),
            Some(("TimeZone".into(), "UTC".into()))
        );
        assert_eq!(parameter_status(b"TimeZone"), None);
        assert_eq!(backend_key_data(&[0, 0, 0, 7, 0, 0, 1, 0]), Some((7, 256)));
        assert_eq!(backend_key_data(&[0, 0, 0]), None);
        assert_eq!(ready_status(b"E"), Some(b'E'));
        assert_eq!(ready_status(b"X"), None);
    }

    #[test]
    fn parses_error_fields() {
        let e = ErrorFields::parse(b"SFATAL\0VFATAL\0C3D000\0Mdatabase \"x\" does not exist\0\0");
        assert_eq!(e.code, "3D000");
        assert_eq!(e.severity, "FATAL");
        assert_eq!(e.message, "database \"x\" does not exist");
    }
}

#[cfg(test)]
mod class_tests {
    use super::*;

    #[test]
    fn the_sqlstate_class_is_read_from_the_code_field() {
        let body = b"SERROR\0VERROR\0C42P01\0Mrelation does not exist\0\0";
        assert_eq!(sqlstate_class(body), Some(*b"42"));
        assert_eq!(sqlstate_class(b"SERROR\0Mno code\0\0"), None);
        assert_eq!(sqlstate_class(b"C4"), None);
    }
}
