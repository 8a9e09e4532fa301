//! Whether a request may be sent again as it is (its statement turned out
//! missing or stale on the server): the client flow counts the message
//! kinds of each batch ([`Shape`]) and answers with a [`Retry`].

/// Requests bigger than this are not kept for a replay (the relay keeps a
/// copy of each until its reply).
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// When a request may be sent again as it is, its reply held back: it is
/// one execution of one prepared statement (Bind, Execute, Sync, what libpq
/// sends per execution) and nothing of it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Retry {
    #[default]
    Never,
    /// If the server lacks its statement (26000): prepared again, the same
    /// result.
    IfMissing,
    /// Also if a schema change made its statement stale (0A000): only with
    /// a Describe, which tells the client the new shape of the rows.
    IfMissingOrStale,
    /// A `DROP DATABASE` refused because the database is in use (55006):
    /// held back, so that if pgmux's own idle servers are all that use it,
    /// they are closed and the drop sent again.
    IfDatabaseInUse,
}

/// Counts the message kinds of a batch to tell whether it is replayable.
#[derive(Default)]
pub(super) struct Shape {
    binds: u32,
    describes: u32,
    syncs: u32,
    others: u32,
    ends_with_sync: bool,
    /// Messages that end a request (Sync, Query, FunctionCall).
    ends: u32,
    /// The last message ended a request.
    ends_a_request: bool,
}

impl Shape {
    pub(super) fn note(&mut self, tag: u8) {
        match tag {
            b'B' => self.binds += 1,
            b'D' => self.describes += 1,
            b'S' => self.syncs += 1,
            b'E' | b'H' => {}
            _ => self.others += 1,
        }
        self.ends_with_sync = tag == b'S';
        self.ends_a_request = matches!(tag, b'S' | b'Q' | b'F');
        self.ends += u32::from(self.ends_a_request);
    }

    /// The batch is one whole request (and nothing after it).
    pub(super) fn one_request(&self) -> bool {
        self.ends == 1 && self.ends_a_request
    }

    pub(super) fn retry(&self) -> Retry {
        let one_execution =
            self.binds == 1 && self.syncs == 1 && self.others == 0 && self.ends_with_sync;
        match (one_execution, self.describes) {
            (false, _) => Retry::Never,
            (true, 0) => Retry::IfMissing,
            (true, _) => Retry::IfMissingOrStale,
        }
    }
}
