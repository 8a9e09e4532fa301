//! Random client streams for the protocol property ([`super::protocol_props`]):
//! the steps a client may take and their encoding, and the replies as
//! compared, straight from the model ([`direct`]) or through pgmux.

use bytes::BytesMut;
use pgmux_wire::frame::{peek_header, write_message, HEADER_LEN};
use proptest::prelude::*;

use super::pg_model::{PgModel, Sql};

const STATEMENT_NAMES: [&str; 3] = ["", "s1", "s2"];
const PORTAL_NAMES: [&str; 2] = ["", "p1"];

/// One thing a client sends.
#[derive(Debug, Clone)]
pub(super) enum Step {
    Parse {
        name: usize,
        sql: usize,
    },
    Bind {
        portal: usize,
        name: usize,
    },
    Describe {
        statement: bool,
        name: usize,
    },
    Execute {
        portal: usize,
        max_rows: u32,
    },
    Close {
        statement: bool,
        name: usize,
    },
    Sync,
    Flush,
    Query {
        sql: usize,
    },
    Deallocate {
        name: usize,
    },
    FunctionCall,
    /// COPY data rows, then CopyDone (or CopyFail).
    CopyData {
        rows: u8,
        fail: bool,
    },
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn sql_text(i: usize) -> &'static str {
    Sql::ALL[i % Sql::ALL.len()].1
}

impl Step {
    fn encode(&self, out: &mut BytesMut) {
        let mut body = Vec::new();
        let tag = match *self {
            Step::Parse { name, sql } => {
                cstr(&mut body, STATEMENT_NAMES[name]);
                cstr(&mut body, sql_text(sql));
                body.extend_from_slice(&0i16.to_be_bytes());
                b'P'
            }
            Step::Bind { portal, name } => {
                cstr(&mut body, PORTAL_NAMES[portal]);
                cstr(&mut body, STATEMENT_NAMES[name]);
                body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
                b'B'
            }
            Step::Describe { statement, name } => {
                if statement {
                    body.push(b'S');
                    cstr(&mut body, STATEMENT_NAMES[name]);
                } else {
                    body.push(b'P');
                    cstr(&mut body, PORTAL_NAMES[name % 2]);
                }
                b'D'
            }
            Step::Execute { portal, max_rows } => {
                cstr(&mut body, PORTAL_NAMES[portal]);
                body.extend_from_slice(&max_rows.to_be_bytes());
                b'E'
            }
            Step::Close { statement, name } => {
                if statement {
                    body.push(b'S');
                    cstr(&mut body, STATEMENT_NAMES[name]);
                } else {
                    body.push(b'P');
                    cstr(&mut body, PORTAL_NAMES[name % 2]);
                }
                b'C'
            }
            Step::Sync => b'S',
            Step::Flush => b'H',
            Step::Query { sql } => {
                cstr(&mut body, sql_text(sql));
                b'Q'
            }
            Step::Deallocate { name } => {
                let name = STATEMENT_NAMES[1 + name % 2];
                cstr(&mut body, &format!("{}{name}", Sql::Deallocate.text()));
                b'Q'
            }
            Step::FunctionCall => {
                body.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
                b'F'
            }
            Step::CopyData { rows, fail } => {
                for _ in 0..rows {
                    write_message(out, b'd', |b| b.extend_from_slice(b"row\n"));
                }
                if fail {
                    write_message(out, b'f', |b| b.extend_from_slice(b"no\0"));
                } else {
                    write_message(out, b'c', |_| {});
                }
                return;
            }
        };
        write_message(out, tag, |b| b.extend_from_slice(&body));
    }
}

pub(super) fn step() -> impl Strategy<Value = Step> {
    let sql = 0..Sql::ALL.len();
    prop_oneof![
        4 => (0..3usize, sql.clone()).prop_map(|(name, sql)| Step::Parse { name, sql }),
        3 => (0..2usize, 0..3usize).prop_map(|(portal, name)| Step::Bind { portal, name }),
        2 => (any::<bool>(), 0..3usize).prop_map(|(statement, name)| Step::Describe { statement, name }),
        3 => (0..2usize, prop_oneof![Just(0u32), Just(2u32)])
            .prop_map(|(portal, max_rows)| Step::Execute { portal, max_rows }),
        1 => (any::<bool>(), 0..3usize).prop_map(|(statement, name)| Step::Close { statement, name }),
        4 => Just(Step::Sync),
        1 => Just(Step::Flush),
        2 => sql.prop_map(|sql| Step::Query { sql }),
        1 => (0..2usize).prop_map(|name| Step::Deallocate { name }),
        1 => Just(Step::FunctionCall),
        2 => (0..3u8, any::<bool>()).prop_map(|(rows, fail)| Step::CopyData { rows, fail }),
    ]
}

/// How bytes move: `(true, n)` hands pgmux up to n more bytes from the
/// client, `(false, n)` up to n more from the server.
pub(super) fn moves() -> impl Strategy<Value = Vec<(bool, usize)>> {
    proptest::collection::vec((any::<bool>(), 1..64usize), 0..120)
}

/// One reply, as compared: its tag, and its SQLSTATE or its body.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Reply {
    Error(String),
    Other(char, Vec<u8>),
}

/// The replies in `bytes`, without the model's chatter (notices and other
/// sessions' notifications, which appear at random), and how much chatter
/// there was.
pub(super) fn replies(bytes: &[u8]) -> (Vec<Reply>, usize) {
    let mut out = Vec::new();
    let mut chatter = 0;
    let mut pos = 0;
    while let Ok(Some((tag, len))) = peek_header(&bytes[pos..], usize::MAX) {
        let body = &bytes[pos + HEADER_LEN..pos + HEADER_LEN + len];
        if PgModel::is_chatter(tag, body) {
            chatter += 1;
            pos += HEADER_LEN + len;
            continue;
        }
        out.push(if tag == b'E' {
            Reply::Error(
                pgmux_wire::backend::error_field(body, b'C')
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .unwrap_or_default(),
            )
        } else {
            Reply::Other(tag as char, body.to_vec())
        });
        pos += HEADER_LEN + len;
    }
    assert_eq!(pos, bytes.len(), "a torn message at the end");
    (out, chatter)
}

/// The client's stream. A client sends nothing but COPY data while the
/// server reads COPY data (libpq refuses to), so a step that starts a COPY
/// is followed by its data where the steps do not say so already.
pub(super) fn encode(steps: &[Step]) -> Vec<u8> {
    let mut out = BytesMut::new();
    let mut pg = PgModel::new(7, 0);
    for (i, s) in steps.iter().enumerate() {
        let start = out.len();
        s.encode(&mut out);
        pg.feed(&out[start..]);
        let data_follows = matches!(steps.get(i + 1), Some(Step::CopyData { .. }));
        if pg.copying() && !data_follows {
            let start = out.len();
            Step::CopyData {
                rows: 1,
                fail: false,
            }
            .encode(&mut out);
            pg.feed(&out[start..]);
        }
    }
    out.to_vec()
}

/// What a direct connection answers.
pub(super) fn direct(stream: &[u8], noise: u64) -> Vec<u8> {
    let mut pg = PgModel::new(7, noise);
    pg.feed(stream);
    pg.out.to_vec()
}
