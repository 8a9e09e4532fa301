//! A model of a PostgreSQL backend's reply rules, for tests: which messages
//! it answers, in what order, what it skips after an error, how COPY IN
//! ignores Sync, how transaction status moves. Statement texts are a small
//! vocabulary of behaviours ([`Sql`]) rather than SQL. The model answers
//! whatever bytes it is fed, so a test can feed it a client's stream
//! directly (what a direct connection sees) or through pgmux's flows.
//!
//! Here the backend's state and the messages it answers; statement texts
//! and what running them does are in [`sql`].

mod sql;

use std::collections::HashMap;

use bytes::BytesMut;
use pgmux_wire::frame::{peek_header, write_message, HEADER_LEN};

pub use sql::Sql;

/// The pid of the other session whose notifications arrive at random.
const FOREIGN_PID: u32 = 424242;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    /// No explicit transaction block.
    None,
    Open,
    /// An explicit block after an error: only `commit` is accepted.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Copying {
    /// From a simple Query: ReadyForQuery follows the COPY's end.
    Simple,
    /// From Execute: the Sync that follows ends it.
    Extended,
}

#[derive(Debug, Clone)]
struct Portal {
    sql: Sql,
    rows_left: u32,
    started: bool,
}

pub struct PgModel {
    pub pid: u32,
    statements: HashMap<Vec<u8>, Sql>,
    portals: HashMap<Vec<u8>, Portal>,
    ignore_till_sync: bool,
    copying: Option<Copying>,
    copied: u32,
    block: Block,
    /// Notifications of this transaction, sent at its commit.
    notify_at_commit: u32,
    report_at_ready: bool,
    terminated: bool,
    /// Bytes fed but not yet a whole message.
    pending: Vec<u8>,
    /// Replies, in order.
    pub out: BytesMut,
    /// The last message sent was ReadyForQuery and nothing was fed since
    /// that awaits a reply.
    quiet: bool,
    /// Decides where notices and other sessions' notifications appear.
    noise: u64,
    /// Notices and other sessions' notifications sent.
    pub chatter: usize,
}

impl PgModel {
    /// `noise`: a seed for where notices and foreign notifications appear
    /// (0: none).
    pub fn new(pid: u32, noise: u64) -> PgModel {
        PgModel {
            pid,
            statements: HashMap::new(),
            portals: HashMap::new(),
            ignore_till_sync: false,
            copying: None,
            copied: 0,
            block: Block::None,
            notify_at_commit: 0,
            report_at_ready: false,
            terminated: false,
            pending: Vec::new(),
            out: BytesMut::new(),
            quiet: true,
            noise,
            chatter: 0,
        }
    }

    /// The server has answered everything and waits for a new request
    /// (nothing unsynced, no COPY, no error awaiting its Sync).
    pub fn idle(&self) -> bool {
        self.quiet && self.copying.is_none() && !self.ignore_till_sync
    }

    /// In COPY IN: the server reads COPY data.
    pub fn copying(&self) -> bool {
        self.copying.is_some()
    }

    /// Feed bytes from the client; replies go to `out`.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        let mut pos = 0;
        while let Ok(Some((tag, len))) = peek_header(&self.pending[pos..], usize::MAX) {
            let end = pos + HEADER_LEN + len;
            if end > self.pending.len() {
                break;
            }
            let body = self.pending[pos + HEADER_LEN..end].to_vec();
            pos = end;
            if !self.terminated {
                self.message(tag, &body);
            }
        }
        self.pending.drain(..pos);
    }

    fn roll(&mut self) -> u64 {
        // xorshift: cheap, deterministic per seed.
        let mut x = self.noise;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.noise = x;
        x
    }

    /// Maybe a notice or another session's notification: they may come
    /// before any reply.
    fn chatter(&mut self) {
        if self.noise == 0 {
            return;
        }
        match self.roll() % 8 {
            0 => self.send(b'N', b"SNOTICE\0C00000\0Mchatter\0\0"),
            1 => {
                let mut body = FOREIGN_PID.to_be_bytes().to_vec();
                body.extend_from_slice(b"elsewhere\0payload\0");
                self.send(b'A', &body);
            }
            _ => return,
        }
        self.chatter += 1;
    }

    /// A message of [`PgModel::chatter`]'s.
    pub fn is_chatter(tag: u8, body: &[u8]) -> bool {
        match tag {
            b'N' => body.ends_with(b"Mchatter\0\0"),
            b'A' => body.starts_with(&FOREIGN_PID.to_be_bytes()),
            _ => false,
        }
    }

    fn send(&mut self, tag: u8, body: &[u8]) {
        write_message(&mut self.out, tag, |b| b.extend_from_slice(body));
    }

    fn error(&mut self, code: &str) {
        let body = format!("SERROR\0C{code}\0Mmodel error {code}\0\0");
        self.send(b'E', body.as_bytes());
        if self.block == Block::Open {
            self.block = Block::Failed;
        }
        self.notify_at_commit = 0;
        self.copying = None;
    }

    fn status(&self) -> u8 {
        match self.block {
            Block::None => b'I',
            Block::Open => b'T',
            Block::Failed => b'E',
        }
    }

    fn ready(&mut self) {
        if self.block == Block::None {
            self.commit();
        }
        if self.report_at_ready {
            self.report_at_ready = false;
            self.send(b'S', b"TimeZone\0Mars\0");
        }
        let status = self.status();
        self.send(b'Z', &[status]);
        self.quiet = true;
    }

    fn commit(&mut self) {
        for _ in 0..std::mem::take(&mut self.notify_at_commit) {
            let mut body = self.pid.to_be_bytes().to_vec();
            body.extend_from_slice(b"chan\0mine\0");
            self.send(b'A', &body);
        }
        // Unnamed and named portals live as long as their transaction.
        if self.block == Block::None {
            self.portals.clear();
        }
    }

    fn message(&mut self, tag: u8, body: &[u8]) {
        if let Some(copying) = self.copying {
            match tag {
                b'd' => self.copied += 1,
                b'c' => {
                    self.copying = None;
                    let tag = format!("COPY {}\0", std::mem::take(&mut self.copied));
                    self.send(b'C', tag.as_bytes());
                    if copying == Copying::Simple {
                        self.ready();
                    }
                }
                b'f' => {
                    self.copied = 0;
                    self.error("57014");
                    if copying == Copying::Simple {
                        self.ready();
                    } else {
                        self.ignore_till_sync = true;
                    }
                }
                // Ignored during COPY IN.
                b'H' | b'S' => {}
                _ => {
                    self.error("08P01");
                    if copying == Copying::Simple {
                        self.ready();
                    } else {
                        self.ignore_till_sync = true;
                    }
                }
            }
            return;
        }
        if self.ignore_till_sync && tag != b'S' {
            if tag == b'X' {
                self.terminated = true;
            }
            return;
        }
        if !matches!(tag, b'H' | b'd' | b'c' | b'f') {
            self.quiet = false;
        }
        self.chatter();
        match tag {
            b'P' => self.parse(body),
            b'B' => self.bind(body),
            b'D' => self.describe(body),
            b'E' => self.execute(body),
            b'C' => {
                let (kind, name) = (body[0], cstr(&body[1..]).0);
                if kind == b'S' {
                    self.statements.remove(name);
                } else {
                    self.portals.remove(name);
                }
                self.send(b'3', b"");
            }
            b'S' => {
                self.ignore_till_sync = false;
                self.ready();
            }
            b'H' => {}
            b'Q' => self.query(cstr(body).0),
            b'F' => {
                if self.block == Block::Failed {
                    self.error("25P02");
                } else {
                    self.send(b'V', &(-1i32).to_be_bytes());
                }
                self.ready();
            }
            // Outside COPY: accepted and ignored.
            b'd' | b'c' | b'f' => {}
            b'X' => self.terminated = true,
            _ => {
                self.error("08P01");
                self.ignore_till_sync = true;
            }
        }
    }

    /// An extended-protocol error: skip to Sync.
    fn fail(&mut self, code: &str) {
        self.error(code);
        self.ignore_till_sync = true;
    }

    fn parse(&mut self, body: &[u8]) {
        let (name, rest) = cstr(body);
        let text = cstr(rest).0;
        let Some((sql, _)) = Sql::of(text) else {
            return self.fail("42601");
        };
        if sql == Sql::Bad {
            return self.fail("42601");
        }
        if self.block == Block::Failed && !sql.ends_transaction() {
            return self.fail("25P02");
        }
        if !name.is_empty() && self.statements.contains_key(name) {
            return self.fail("42P05");
        }
        self.statements.insert(name.to_vec(), sql);
        self.send(b'1', b"");
    }

    fn bind(&mut self, body: &[u8]) {
        let (portal, rest) = cstr(body);
        let name = cstr(rest).0;
        let Some(&sql) = self.statements.get(name) else {
            return self.fail("26000");
        };
        if self.block == Block::Failed && !sql.ends_transaction() {
            return self.fail("25P02");
        }
        let rows_left = if sql == Sql::Three { 3 } else { 1 };
        self.portals.insert(
            portal.to_vec(),
            Portal {
                sql,
                rows_left,
                started: false,
            },
        );
        self.send(b'2', b"");
    }

    fn describe(&mut self, body: &[u8]) {
        let (kind, name) = (body[0], cstr(&body[1..]).0);
        let sql = if kind == b'S' {
            let Some(&sql) = self.statements.get(name) else {
                return self.fail("26000");
            };
            if self.block == Block::Failed && sql.has_rows() {
                return self.fail("25P02");
            }
            self.send(b't', &0i16.to_be_bytes());
            sql
        } else {
            let Some(portal) = self.portals.get(name) else {
                return self.fail("34000");
            };
            if self.block == Block::Failed && portal.sql.has_rows() {
                return self.fail("25P02");
            }
            portal.sql
        };
        if sql.has_rows() {
            self.send(
                b'T',
                b"\0\x01x\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
            );
        } else {
            self.send(b'n', b"");
        }
    }

    fn execute(&mut self, body: &[u8]) {
        let (portal_name, rest) = cstr(body);
        let max_rows = u32::from_be_bytes(rest[..4].try_into().unwrap_or([0; 4]));
        let Some(mut portal) = self.portals.get(portal_name).cloned() else {
            return self.fail("34000");
        };
        if self.block == Block::Failed && !portal.sql.ends_transaction() {
            return self.fail("25P02");
        }
        if portal.sql.has_rows() {
            let mut sent = 0;
            while portal.rows_left > 0 && (max_rows == 0 || sent < max_rows) {
                self.send(b'D', b"\0\x01\0\0\0\x011");
                portal.rows_left -= 1;
                sent += 1;
            }
            if portal.rows_left > 0 {
                self.send(b's', b"");
                portal.started = true;
                self.portals.insert(portal_name.to_vec(), portal);
                return;
            }
            self.send(b'C', b"SELECT 1\0");
            self.portals.insert(portal_name.to_vec(), portal);
            return;
        }
        if portal.started {
            return self.send(b'C', b"SELECT 0\0");
        }
        portal.started = true;
        let sql = portal.sql;
        self.portals.insert(portal_name.to_vec(), portal);
        if self.run(sql, b"").is_err() {
            self.ignore_till_sync = true;
        }
        if sql == Sql::CopyIn && self.copying.is_some() {
            self.copying = Some(Copying::Extended);
        }
    }
}

fn cstr(s: &[u8]) -> (&[u8], &[u8]) {
    match s.iter().position(|&b| b == 0) {
        Some(end) => (&s[..end], &s[end + 1..]),
        None => (s, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
        let mut b = BytesMut::new();
        write_message(&mut b, tag, |m| m.extend_from_slice(body));
        out.extend_from_slice(&b);
    }

    fn tags(out: &[u8]) -> String {
        let mut pos = 0;
        let mut tags = String::new();
        while let Ok(Some((tag, len))) = peek_header(&out[pos..], usize::MAX) {
            tags.push(tag as char);
            pos += HEADER_LEN + len;
        }
        tags
    }

    #[test]
    fn an_error_skips_to_sync_and_copy_ignores_sync() {
        let mut c = Vec::new();
        msg(&mut c, b'P', b"\0bad\0\0\0");
        msg(&mut c, b'B', b"\0\0\0\0\0\0\0\0");
        msg(&mut c, b'E', b"\0\0\0\0\0");
        msg(&mut c, b'S', b"");
        msg(&mut c, b'P', b"\0copyin\0\0\0");
        msg(&mut c, b'B', b"\0\0\0\0\0\0\0\0");
        msg(&mut c, b'E', b"\0\0\0\0\0");
        msg(&mut c, b'S', b"");
        msg(&mut c, b'd', b"x");
        msg(&mut c, b'c', b"");
        msg(&mut c, b'S', b"");
        let mut pg = PgModel::new(1, 0);
        pg.feed(&c);
        assert_eq!(tags(&pg.out), "EZ12GCZ");
        assert!(pg.idle());
    }

    #[test]
    fn a_row_limit_suspends_and_transactions_report_status() {
        let mut c = Vec::new();
        msg(&mut c, b'Q', b"begin\0");
        msg(&mut c, b'P', b"s\0three\0\0\0");
        msg(&mut c, b'B', b"p\0s\0\0\0\0\0\0\0");
        msg(&mut c, b'E', b"p\0\0\0\0\x02");
        msg(&mut c, b'E', b"p\0\0\0\0\x02");
        msg(&mut c, b'S', b"");
        msg(&mut c, b'Q', b"boom\0");
        msg(&mut c, b'Q', b"commit\0");
        let mut pg = PgModel::new(1, 0);
        pg.feed(&c);
        assert_eq!(tags(&pg.out), "CZ12DDsDCZEZCZ");
        let statuses: Vec<u8> = pg
            .out
            .windows(6)
            .filter(|w| w[0] == b'Z' && w[1..5] == [0, 0, 0, 5])
            .map(|w| w[5])
            .collect();
        assert_eq!(statuses, b"TTEI");
    }
}
