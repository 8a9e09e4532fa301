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
pub fn sqlstate_class(mut body: &[u8]) -> Option<[u8; 2]> {
    while let Some((&kind, rest)) = body.split_first() {
        if kind == 0 {
            return None;
        }
        body = rest;
        let value = read_cstr(&mut body)?;
        if kind == b'C' {
            return match value {
                [a, b, ..] => Some([*a, *b]),
                _ => None,
            };
        }
    }
    None
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
