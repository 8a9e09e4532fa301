//! Messages pgmux writes itself. The typed ones come from `pgwire`'s message
//! structs; each encoder appends to a caller's buffer so replies batch into
//! one socket write.

use bytes::BytesMut;
use pgwire::error::ErrorInfo;
use pgwire::messages::data::{DataRow, FieldDescription, RowDescription};
use pgwire::messages::response::{
    CommandComplete, ErrorResponse, NoticeResponse, ReadyForQuery, TransactionStatus,
};
use pgwire::messages::startup::{Authentication, BackendKeyData, SecretKey};
use pgwire::messages::Message;

use crate::frame::write_message;

/// Longest message text pgmux puts in an ErrorResponse it writes.
const MAX_ERROR_TEXT: usize = 4000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

fn encode(msg: impl Message, out: &mut BytesMut) {
    // Only fails for messages over pgwire's size caps; everything encoded here
    // is bounded far below them (see MAX_ERROR_TEXT).
    let encoded = msg.encode(out);
    debug_assert!(encoded.is_ok(), "pgwire refused a bounded message");
}

fn clip(text: &str) -> String {
    if text.len() <= MAX_ERROR_TEXT {
        return text.to_string();
    }
    let mut end = MAX_ERROR_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// An ErrorResponse with severity, SQLSTATE and message.
pub fn error(out: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    let info = ErrorInfo::new(severity.as_str().into(), clip(code), clip(message));
    encode(ErrorResponse::from(info), out);
}

pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    let status = match status {
        b'T' => TransactionStatus::Transaction,
        b'E' => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    encode(ReadyForQuery::new(status), out);
}

/// Written by hand: pgwire's `ParameterStatus` owns two `String`s, and a
/// login greeting carries one of these per reported setting.
pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    write_message(out, b'S', |out| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&[0]);
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(&[0]);
    });
}

pub fn backend_key_data(out: &mut BytesMut, pid: u32, key: u32) {
    encode(
        BackendKeyData::new(pid as i32, SecretKey::I32(key as i32)),
        out,
    );
}

pub fn auth_ok(out: &mut BytesMut) {
    encode(Authentication::Ok, out);
}

pub fn auth_cleartext(out: &mut BytesMut) {
    encode(Authentication::CleartextPassword, out);
}

pub fn auth_md5(out: &mut BytesMut, salt: [u8; 4]) {
    encode(Authentication::MD5Password(salt.to_vec()), out);
}

// The SASL messages are written by hand: pgwire's forms own a `Vec` or
// `Bytes` of what is already in hand, and every SCRAM login sends all three.

/// AuthenticationSASL (code 10): the mechanisms offered, each NUL-ended,
/// then an empty one.
pub fn auth_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    write_message(out, b'R', |out| {
        out.extend_from_slice(&10i32.to_be_bytes());
        for mechanism in mechanisms {
            out.extend_from_slice(mechanism.as_bytes());
            out.extend_from_slice(&[0]);
        }
        out.extend_from_slice(&[0]);
    });
}

/// AuthenticationSASLContinue (code 11) with the server-first message.
pub fn auth_sasl_continue(out: &mut BytesMut, data: &[u8]) {
    sasl_data(out, 11, data);
}

/// AuthenticationSASLFinal (code 12) with the server-final message.
pub fn auth_sasl_final(out: &mut BytesMut, data: &[u8]) {
    sasl_data(out, 12, data);
}

fn sasl_data(out: &mut BytesMut, code: i32, data: &[u8]) {
    write_message(out, b'R', |out| {
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(data);
    });
}

/// Column types of the result sets pgmux writes (its admin console).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Int4,
    Int8,
    Numeric,
}

impl ColumnType {
    fn oid_and_size(self) -> (u32, i16) {
        match self {
            ColumnType::Text => (25, -1),
            ColumnType::Int4 => (23, 4),
            ColumnType::Int8 => (20, 8),
            ColumnType::Numeric => (1700, -1),
        }
    }
}

/// RowDescription for text-format columns of no table.
pub fn row_description(out: &mut BytesMut, columns: &[(&str, ColumnType)]) {
    let fields = columns
        .iter()
        .map(|(name, ty)| {
            let (oid, size) = ty.oid_and_size();
            FieldDescription::new(name.to_string(), 0, 0, oid, size, -1, 0)
        })
        .collect();
    encode(RowDescription::new(fields), out);
}

/// DataRow of text values; `None` is SQL NULL.
pub fn data_row(out: &mut BytesMut, values: &[Option<&str>]) {
    let mut data = BytesMut::new();
    for value in values {
        match value {
            Some(v) => {
                data.extend_from_slice(&(v.len() as i32).to_be_bytes());
                data.extend_from_slice(v.as_bytes());
            }
            None => data.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    encode(DataRow::new(data, values.len() as i16), out);
}

/// An ErrorResponse carrying only the fields of `body` (another
/// ErrorResponse's) whose kind `keep` accepts.
pub fn error_with_fields_of(out: &mut BytesMut, body: &[u8], keep: impl Fn(u8) -> bool) {
    write_message(out, b'E', |b| {
        for (kind, value) in crate::backend::error_fields(body).filter(|(k, _)| keep(*k)) {
            b.extend_from_slice(&[kind]);
            b.extend_from_slice(value);
            b.extend_from_slice(&[0]);
        }
        b.extend_from_slice(&[0]);
    });
}

pub fn command_complete(out: &mut BytesMut, tag: &str) {
    encode(CommandComplete::new(tag.to_string()), out);
}

/// A NoticeResponse with a message and a detail.
pub fn notice(out: &mut BytesMut, message: &str, detail: &str) {
    let fields = vec![
        (b'S', "NOTICE".to_string()),
        (b'C', "00000".to_string()),
        (b'M', clip(message)),
        (b'D', clip(detail)),
    ];
    encode(NoticeResponse::new(fields), out);
}

/// NegotiateProtocolVersion: "I speak 3.0, and none of your `_pq_.` options".
pub fn negotiate_protocol_version(out: &mut BytesMut, unsupported: &[&str]) {
    write_message(out, b'v', |b| {
        b.extend_from_slice(&0i32.to_be_bytes());
        b.extend_from_slice(&(unsupported.len() as i32).to_be_bytes());
        for name in unsupported {
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&[0]);
        }
    });
}

/// A simple-protocol Query message (frontend), for statements pgmux sends.
pub fn query(out: &mut BytesMut, sql: &str) {
    write_message(out, b'Q', |b| {
        b.extend_from_slice(sql.as_bytes());
        b.extend_from_slice(&[0]);
    });
}

/// Quote an SQL identifier: wrap in double quotes, double any inside.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quote an SQL string literal so it reads the same whatever
/// `standard_conforming_strings` says: quotes are doubled and, when a
/// backslash is present, the escape-string form with doubled backslashes.
pub fn quote_literal(value: &str) -> String {
    let body = value.replace('\'', "''");
    if body.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ErrorFields;
    use crate::frame::take_frame;

    #[test]
    fn error_round_trips_through_the_parser() {
        let mut out = BytesMut::new();
        error(
            &mut out,
            Severity::Fatal,
            "28P01",
            "password authentication failed for user \"bob\"",
        );
        let f = take_frame(&mut out, 1 << 20).unwrap().unwrap();
        assert_eq!(f.tag, b'E');
        let e = ErrorFields::parse(&f.body);
        assert_eq!(e.severity, "FATAL");
        assert_eq!(e.code, "28P01");
        assert!(e.message.contains("bob"));
    }

    #[test]
    fn parameter_status_is_what_pgwire_encodes() {
        let mut ours = BytesMut::new();
        parameter_status(&mut ours, "DateStyle", "ISO, MDY");
        let mut theirs = BytesMut::new();
        pgwire::messages::startup::ParameterStatus::new("DateStyle".into(), "ISO, MDY".into())
            .encode(&mut theirs)
            .unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn sasl_messages_are_what_pgwire_encodes() {
        let pgwire = |msg: Authentication| {
            let mut out = BytesMut::new();
            msg.encode(&mut out).unwrap();
            out
        };
        let mut ours = BytesMut::new();
        auth_sasl(&mut ours, &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
        assert_eq!(
            ours,
            pgwire(Authentication::SASL(vec![
                "SCRAM-SHA-256-PLUS".into(),
                "SCRAM-SHA-256".into()
            ]))
        );
        let mut ours = BytesMut::new();
        auth_sasl_continue(&mut ours, b"r=abc,s=salt,i=4096");
        assert_eq!(
            ours,
            pgwire(Authentication::SASLContinue(
                b"r=abc,s=salt,i=4096".to_vec().into()
            ))
        );
        let mut ours = BytesMut::new();
        auth_sasl_final(&mut ours, b"v=signature");
        assert_eq!(
            ours,
            pgwire(Authentication::SASLFinal(b"v=signature".to_vec().into()))
        );
    }

    #[test]
    fn long_error_text_is_clipped() {
        let mut out = BytesMut::new();
        error(&mut out, Severity::Error, "XX000", &"é".repeat(10_000));
        assert!(out.len() < 2 * MAX_ERROR_TEXT);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("Time\"Zone"), "\"Time\"\"Zone\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\'b"), "E'a\\\\''b'");
    }

    #[test]
    fn ready_for_query_bytes() {
        let mut out = BytesMut::new();
        ready_for_query(&mut out, b'T');
        assert_eq!(&out[..], b"Z\0\0\0\x05T");
    }
}
