//! The model's statement vocabulary ([`Sql`]) and what running each
//! statement does to the model: its replies, and the transaction and COPY
//! state it leaves.

use super::{Block, Copying, PgModel};

/// What a statement text does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sql {
    /// One row.
    One,
    /// Three rows (a row limit of 2 suspends the portal once).
    Three,
    /// No result columns (`Describe` answers NoData).
    NoData,
    /// A syntax error at Parse.
    Bad,
    /// Parses; fails when executed (division by zero).
    Boom,
    Begin,
    Commit,
    /// `COPY ... FROM STDIN`.
    CopyIn,
    /// `COPY ... TO STDOUT`: two rows of data.
    CopyOut,
    /// A session `SET`: reports a parameter at the next ReadyForQuery.
    Set,
    /// `NOTIFY`: a notification from this backend, delivered at commit.
    Notify,
    /// `DEALLOCATE ALL`.
    DeallocateAll,
    /// `DEALLOCATE <name>` (the name follows the text).
    Deallocate,
    /// A `DO` block that raises this SQLSTATE (what pgmux injects to have
    /// the server raise an error in the client's name).
    Raise([u8; 5]),
}

impl Sql {
    pub const ALL: [(Sql, &'static str); 12] = [
        (Sql::One, "one"),
        (Sql::Three, "three"),
        (Sql::NoData, "nodata"),
        (Sql::Bad, "bad"),
        (Sql::Boom, "boom"),
        (Sql::Begin, "begin"),
        (Sql::Commit, "commit"),
        (Sql::CopyIn, "copyin"),
        (Sql::CopyOut, "copyout"),
        (Sql::Set, "set"),
        (Sql::Notify, "notify"),
        (Sql::DeallocateAll, "deallocate all"),
    ];

    pub fn text(self) -> &'static str {
        Sql::ALL
            .iter()
            .find(|(s, _)| *s == self)
            .map_or("deallocate ", |(_, t)| t)
    }

    /// The behaviour of a text; `None` for text the model does not know.
    pub(super) fn of(text: &[u8]) -> Option<(Sql, &[u8])> {
        if text.starts_with(b"DO ") {
            let at = text.windows(12).position(|w| w == b"ERRCODE = ''")?;
            let code = text.get(at + 12..at + 17)?.try_into().ok()?;
            return Some((Sql::Raise(code), &b""[..]));
        }
        if let Some(name) = text.strip_prefix(b"deallocate ") {
            if name != b"all" {
                return Some((Sql::Deallocate, name));
            }
        }
        Sql::ALL
            .iter()
            .find(|(_, t)| t.as_bytes() == text)
            .map(|(s, _)| (*s, &b""[..]))
    }

    pub(super) fn has_rows(self) -> bool {
        matches!(self, Sql::One | Sql::Three)
    }

    pub(super) fn ends_transaction(self) -> bool {
        matches!(self, Sql::Commit)
    }
}

impl PgModel {
    /// Run one statement's effect; Err after an error was sent.
    pub(super) fn run(&mut self, sql: Sql, arg: &[u8]) -> Result<(), ()> {
        if self.block == Block::Failed && !sql.ends_transaction() {
            self.error("25P02");
            return Err(());
        }
        match sql {
            Sql::One | Sql::Three => {
                for _ in 0..if sql == Sql::One { 1 } else { 3 } {
                    self.send(b'D', b"\0\x01\0\0\0\x011");
                }
                self.send(b'C', b"SELECT 1\0");
            }
            Sql::NoData => self.send(b'C', b"DO\0"),
            Sql::Bad => {
                self.error("42601");
                return Err(());
            }
            Sql::Boom => {
                self.error("22012");
                return Err(());
            }
            Sql::Begin => {
                if self.block == Block::None {
                    self.block = Block::Open;
                }
                self.send(b'C', b"BEGIN\0");
            }
            Sql::Commit => {
                let failed = self.block == Block::Failed;
                self.block = Block::None;
                self.commit();
                self.send(b'C', if failed { b"ROLLBACK\0" } else { b"COMMIT\0" });
            }
            Sql::CopyIn => {
                self.send(b'G', b"\0\0\0");
                self.copying = Some(Copying::Simple);
            }
            Sql::CopyOut => {
                self.send(b'H', b"\0\0\0");
                self.send(b'd', b"a\n");
                self.send(b'd', b"b\n");
                self.send(b'c', b"");
                self.send(b'C', b"COPY 2\0");
            }
            Sql::Set => {
                self.report_at_ready = true;
                self.send(b'C', b"SET\0");
            }
            Sql::Notify => {
                self.notify_at_commit += 1;
                self.send(b'C', b"NOTIFY\0");
            }
            Sql::DeallocateAll => {
                self.statements.retain(|name, _| name.is_empty());
                self.send(b'C', b"DEALLOCATE ALL\0");
            }
            Sql::Raise(code) => {
                self.error(std::str::from_utf8(&code).unwrap_or("XX000"));
                return Err(());
            }
            Sql::Deallocate => {
                if self.statements.remove(arg).is_none() {
                    self.error("26000");
                    return Err(());
                }
                self.send(b'C', b"DEALLOCATE\0");
            }
        }
        Ok(())
    }

    /// A simple Query: statements separated by `;`, each run in turn until
    /// one fails; COPY IN waits for the client's data before going on.
    pub(super) fn query(&mut self, text: &[u8]) {
        let statements: Vec<&[u8]> = text.split(|&b| b == b';').collect();
        if text.is_empty() {
            self.send(b'I', b"");
            return self.ready();
        }
        for statement in statements {
            let Some((sql, arg)) = Sql::of(statement) else {
                self.error("42601");
                break;
            };
            if self.run(sql, arg).is_err() {
                break;
            }
            if self.copying.is_some() {
                // The rest of a multi-statement COPY query is not modelled.
                return;
            }
        }
        self.ready();
    }
}
