//! Entry points for the `cargo fuzz` targets in `tests/fuzz/` (compiled
//! only with the `fuzzing` feature, so nothing here is part of pgmux's
//! build or API otherwise).
//!
//! Each function takes the fuzzer's bytes, drives one piece of pgmux that
//! reads untrusted input with them, and asserts what must hold whatever the
//! input: besides not panicking (which includes the overflow checks and
//! `debug_assert!`s a fuzz build keeps), the bounds and round trips listed
//! on each. A failed assertion is a finding: it panics, and libFuzzer keeps
//! the input. The targets live here rather than in the fuzz crate because
//! most of what they drive is private to pgmux; this module reaches it from
//! inside without widening the public API.
//!
//! - [`wire`]: the frame reader and the startup packet parser.
//! - [`auth`]: SCRAM-SHA-256 and MD5, pgmux as the server checking a client
//!   and as the client logging in to PostgreSQL.
//! - [`admin`]: the admin console's command parser.
//! - [`sql`]: the statement-text scanners (session state, DDL, DEALLOCATE).
//! - [`flows`]: the client and server protocol flows, linked as the relay
//!   links them, fed arbitrary message sequences.

pub mod admin;
pub mod auth;
pub mod flows;
pub mod sql;
pub mod wire;

/// Reads the fuzzer's bytes as a little script: every read succeeds, with
/// zeros (or an empty slice) once the input runs out, so no input is
/// rejected and every prefix of an input means the same steps.
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(crate) fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub(crate) fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A length-prefixed piece: one byte of length, or `0xff` then two.
    pub(crate) fn piece(&mut self) -> &'a [u8] {
        let n = match self.byte() {
            0xff => usize::from(self.u16()),
            n => usize::from(n),
        };
        self.take(n)
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}
