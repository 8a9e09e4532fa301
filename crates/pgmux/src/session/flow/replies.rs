//! What the server flow reads inside server messages: command tags that
//! change the schema or end a failed block, a NotificationResponse's sender
//! pid, and what an ErrorResponse says about a DROP DATABASE or a managed
//! statement. Kept apart from the flow itself, which only dispatches on them.

use pgmux_wire::backend;
use pgmux_wire::frame::{peek_header, HEADER_LEN};

use super::expect::Expect;

/// The error PostgreSQL gives when a prepared statement's result shape
/// changed under it (after `ALTER TABLE`, say).
const STALE_PLAN: &[u8] = b"cached plan must not change result type";

/// A command that may change what a statement's text means (DDL).
pub(super) fn changes_schema(command_tag: &[u8]) -> bool {
    [&b"CREATE "[..], b"ALTER ", b"DROP "]
        .iter()
        .any(|t| command_tag.starts_with(t))
}

/// The tag of a command that reads or writes rows (`SELECT 1`, `INSERT 0
/// 1`...): the most common by far, and none of the tags the server flow
/// looks for (session state, schema changes, a transaction's end).
pub(super) fn counts_rows(command_tag: &[u8]) -> bool {
    [
        &b"SELECT "[..],
        b"INSERT ",
        b"UPDATE ",
        b"DELETE ",
        b"FETCH ",
        b"MERGE ",
    ]
    .iter()
    .any(|t| command_tag.starts_with(t))
}

/// A command that ends a failed transaction block (COMMIT in one answers
/// ROLLBACK; ROLLBACK TO SAVEPOINT answers ROLLBACK too).
pub(super) fn ends_failed_block(command_tag: &[u8]) -> bool {
    [&b"ROLLBACK"[..], b"COMMIT", b"PREPARE TRANSACTION"]
        .iter()
        .any(|t| command_tag.starts_with(t))
}

/// The pid to put in a NotificationResponse `body` whose sender is
/// `server_pid` (the client's own NOTIFY): the one the client was given.
pub(super) fn swapped_pid(body: &[u8], (server_pid, client_pid): (u32, u32)) -> Option<[u8; 4]> {
    let sender = u32::from_be_bytes(body.get(..4)?.try_into().ok()?);
    (sender == server_pid).then(|| client_pid.to_be_bytes())
}

/// Give notifications the server sent for the client's own NOTIFY the
/// client's pid, in place, in a buffer of whole messages.
pub fn swap_notification_pids(messages: &mut [u8], pids: (u32, u32)) {
    let mut pos = 0;
    while let Ok(Some((tag, len))) = peek_header(&messages[pos..], usize::MAX) {
        let body = pos + HEADER_LEN;
        let end = body + len;
        if end > messages.len() {
            break;
        }
        if tag == b'A' {
            if let Some(pid) = swapped_pid(&messages[body..end], pids) {
                messages[body..body + 4].copy_from_slice(&pid);
            }
        }
        pos = end;
    }
}

/// How many other sessions an ErrorResponse says keep a DROP DATABASE
/// from running (55006, "There are 2 other sessions using the database."),
/// when that is all that stops it. None for anything else: the current
/// database, prepared transactions, or no count given.
pub(super) fn other_sessions(body: &[u8]) -> Option<u32> {
    if backend::error_field(body, b'C') != Some(b"55006") {
        return None;
    }
    let detail = backend::error_field(body, b'D')?;
    // Prepared transactions hold it too, and closing servers frees none.
    if detail
        .windows(8)
        .any(|w| w.eq_ignore_ascii_case(b"prepared"))
    {
        return None;
    }
    let digits: Vec<u8> = detail
        .iter()
        .skip_while(|b| !b.is_ascii_digit())
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    let others = std::str::from_utf8(&digits).ok()?.parse::<u32>().ok()?;
    (others > 0).then_some(others)
}

/// What an ErrorResponse says went wrong with a managed statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Trouble {
    /// A schema change made it stale (0A000).
    Stale,
    /// The server does not have it (26000).
    Missing,
}

/// The managed statement an ErrorResponse is about, and what it says.
pub(super) fn statement_trouble(body: &[u8], expect: &mut Expect) -> Option<(u64, Trouble)> {
    let trouble = match backend::error_field(body, b'C')? {
        b"0A000" if backend::error_field(body, b'M').is_some_and(|m| m.starts_with(STALE_PLAN)) => {
            Trouble::Stale
        }
        b"26000" => Trouble::Missing,
        _ => return None,
    };
    Some((expect.statement_at_front()?, trouble))
}
