//! What the server still owes the client, in order. Every client message
//! that draws a reply pushes an entry; every server reply pops or passes.
//! Entries marked `swallow` are replies to messages pgmux injected; `Synth`
//! entries are replies pgmux owes for messages it answered itself. Pure: no
//! sockets, so every protocol corner is unit-tested here.

use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// `id`: the statement this Parse creates on the server, if named.
    Parse {
        swallow: bool,
        id: Option<u64>,
    },
    /// `id`: the managed statement bound, if any (for 0A000 recovery).
    Bind {
        id: Option<u64>,
    },
    /// `id`: the managed statement described, if any.
    Describe {
        id: Option<u64>,
    },
    Execute,
    /// `injected`: the statement pgmux closes itself (eviction, stale).
    Close {
        swallow: bool,
        injected: Option<u64>,
    },
    Sync,
    Query,
    FunctionCall,
    /// A reply (ParseComplete, CloseComplete) pgmux sends itself when it
    /// reaches the front.
    Synth(u8),
    /// pgmux answers a `DEALLOCATE name` Query itself: CommandComplete
    /// and ReadyForQuery with the transaction status at that point.
    Deallocated,
    /// The Bind and Execute of a statement pgmux injected to make the
    /// server raise an error in the client's name (42P05, 26000): the
    /// BindComplete is dropped, the error forwarded, and the server then
    /// aborts and skips to Sync exactly as for its own error.
    Raise,
    /// The client ended COPY data here (CopyDone or CopyFail). Draws no
    /// reply; marks how far Syncs sent during COPY reach.
    CopyEnd,
    /// Follows a client's named Parse: the client's name (by its binding
    /// number) exists only if that Parse is not failed or skipped. Draws no
    /// reply.
    NameBound(u64),
}

impl Pending {
    fn ends_with_ready(self) -> bool {
        matches!(
            self,
            Pending::Sync | Pending::Query | Pending::FunctionCall | Pending::Deallocated
        )
    }
}

/// A reply pgmux writes itself, due now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canned {
    /// A message with an empty body (ParseComplete, CloseComplete).
    Empty(u8),
    /// CommandComplete `DEALLOCATE`, then ReadyForQuery.
    Deallocated,
}

/// What an error undid: statements a server did not prepare after all,
/// client names whose Parse failed or was skipped, and statements whose
/// injected Close was skipped.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Undone {
    pub statements: Vec<u64>,
    pub names: Vec<u64>,
    pub closes: Vec<u64>,
}

/// What to do with one server message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    Drop,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("server reply {got:?} does not match the request it should answer ({expected:?})")]
pub struct Desync {
    pub got: char,
    pub expected: Option<Pending>,
}

#[derive(Debug, Default)]
pub struct Expect {
    queue: VecDeque<Pending>,
    ready_owed: u32,
    /// The server is in COPY IN and the client has not ended its data:
    /// PostgreSQL ignores Sync (and Flush) meanwhile, so they owe nothing.
    in_copy: bool,
}

impl Expect {
    pub fn push(&mut self, p: Pending) {
        match p {
            Pending::Sync if self.in_copy => return,
            Pending::CopyEnd if self.in_copy => {
                self.in_copy = false;
                return;
            }
            _ => {}
        }
        if p.ends_with_ready() {
            self.ready_owed += 1;
        }
        self.queue.push_back(p);
    }

    fn skip_markers(&mut self) {
        while matches!(
            self.queue.front(),
            Some(Pending::CopyEnd | Pending::NameBound(_))
        ) {
            self.queue.pop_front();
        }
    }

    /// The server entered COPY IN: Syncs the client sent after the COPY
    /// started and before its data ended are ignored by the server.
    fn copy_started(&mut self) {
        let mut i = 1;
        while i < self.queue.len() {
            match self.queue[i] {
                Pending::CopyEnd => {
                    self.queue.remove(i);
                    return;
                }
                Pending::Sync => {
                    self.queue.remove(i);
                    self.ready_owed -= 1;
                }
                _ => i += 1,
            }
        }
        self.in_copy = true;
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// ReadyForQuery messages still owed.
    pub fn ready_owed(&self) -> u32 {
        self.ready_owed
    }

    /// The next reply pgmux must send itself, if it is due now.
    pub fn take_synth(&mut self) -> Option<Canned> {
        self.skip_markers();
        let canned = match self.queue.front() {
            Some(Pending::Synth(tag)) => Canned::Empty(*tag),
            Some(Pending::Deallocated) => {
                self.ready_owed -= 1;
                Canned::Deallocated
            }
            _ => return None,
        };
        self.queue.pop_front();
        Some(canned)
    }

    /// The managed statement the reply due next is about (a Bind or a
    /// statement Describe), for an error that names no statement itself.
    pub fn statement_at_front(&mut self) -> Option<u64> {
        self.skip_markers();
        match self.queue.front() {
            Some(Pending::Bind { id } | Pending::Describe { id }) => *id,
            _ => None,
        }
    }

    /// The reply due next is the error pgmux made the server raise.
    pub fn raise_at_front(&mut self) -> bool {
        self.skip_markers();
        self.queue.front() == Some(&Pending::Raise)
    }

    /// Account for one server message (any due `Synth` taken first).
    /// What a failed or skipped Parse leaves undone goes to `undone`.
    pub fn on_reply(&mut self, tag: u8, undone: &mut Undone) -> Result<Verdict, Desync> {
        self.skip_markers();
        let front = self.queue.front().copied();
        let desync = || Desync {
            got: tag as char,
            expected: front,
        };
        let verdict = match tag {
            // Asynchronous or informational: they belong to no request.
            b'N' | b'S' | b'A' => Verdict::Forward,
            b'E' => {
                if !front.is_some_and(|p| matches!(p, Pending::Query | Pending::FunctionCall)) {
                    // The server skips everything up to the next Sync, a
                    // Query or FunctionCall sent before it included.
                    while let Some(p) = self.queue.front().copied() {
                        if p == Pending::Sync {
                            break;
                        }
                        match p {
                            Pending::Parse { id: Some(id), .. } => undone.statements.push(id),
                            Pending::NameBound(binding) => undone.names.push(binding),
                            Pending::Close {
                                injected: Some(id), ..
                            } => undone.closes.push(id),
                            _ => {}
                        }
                        if p.ends_with_ready() {
                            self.ready_owed -= 1;
                        }
                        self.queue.pop_front();
                    }
                }
                Verdict::Forward
            }
            b'Z' => match front {
                Some(p) if p.ends_with_ready() => {
                    self.queue.pop_front();
                    self.ready_owed -= 1;
                    // Whatever COPY there was is over.
                    self.in_copy = false;
                    Verdict::Forward
                }
                _ => return Err(desync()),
            },
            // ParseComplete, BindComplete, CloseComplete answer exactly the
            // message at the front; replies to injected ones are dropped.
            b'2' if front == Some(Pending::Raise) => Verdict::Drop,
            b'1' | b'2' | b'3' => {
                let swallow = match (tag, front) {
                    (b'1', Some(Pending::Parse { swallow, .. }))
                    | (b'3', Some(Pending::Close { swallow, .. })) => swallow,
                    (b'2', Some(Pending::Bind { .. })) => false,
                    _ => return Err(desync()),
                };
                self.queue.pop_front();
                if swallow {
                    Verdict::Drop
                } else {
                    Verdict::Forward
                }
            }
            b'T' | b'n' => {
                if matches!(front, Some(Pending::Describe { .. })) {
                    self.queue.pop_front();
                }
                Verdict::Forward
            }
            b'G' => {
                self.copy_started();
                Verdict::Forward
            }
            b'C' | b'I' | b's' => match front {
                Some(Pending::Execute) => {
                    self.queue.pop_front();
                    Verdict::Forward
                }
                // The injected raise did not raise (it always does).
                Some(Pending::Raise) => {
                    self.queue.pop_front();
                    Verdict::Drop
                }
                _ => Verdict::Forward,
            },
            _ => Verdict::Forward,
        };
        Ok(verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay(e: &mut Expect, tags: &[u8]) -> Vec<(u8, Verdict)> {
        let mut gone = Undone::default();
        tags.iter()
            .map(|&t| (t, e.on_reply(t, &mut gone).unwrap()))
            .collect()
    }

    #[test]
    fn an_extended_batch_is_answered_in_order() {
        let mut e = Expect::default();
        for p in [
            Pending::Parse {
                swallow: false,
                id: None,
            },
            Pending::Bind { id: None },
            Pending::Describe { id: None },
            Pending::Execute,
            Pending::Sync,
        ] {
            e.push(p);
        }
        assert_eq!(e.ready_owed(), 1);
        let out = replay(&mut e, b"12TDDCZ");
        assert!(out.iter().all(|(_, v)| *v == Verdict::Forward));
        assert!(e.is_empty());
        assert_eq!(e.ready_owed(), 0);
    }

    #[test]
    fn injected_parse_replies_are_swallowed_and_synths_come_due() {
        let mut e = Expect::default();
        e.push(Pending::Synth(b'1'));
        e.push(Pending::Parse {
            swallow: true,
            id: Some(7),
        });
        e.push(Pending::Bind { id: None });
        e.push(Pending::Execute);
        e.push(Pending::Sync);
        assert_eq!(e.take_synth(), Some(Canned::Empty(b'1')));
        assert_eq!(e.take_synth(), None);
        let out = replay(&mut e, b"12CZ");
        assert_eq!(out[0], (b'1', Verdict::Drop));
        assert!(out[1..].iter().all(|(_, v)| *v == Verdict::Forward));
    }

    #[test]
    fn an_error_skips_to_sync_and_unprepares_skipped_parses() {
        let mut e = Expect::default();
        e.push(Pending::Parse {
            swallow: true,
            id: Some(1),
        });
        e.push(Pending::Bind { id: None });
        e.push(Pending::Synth(b'1'));
        e.push(Pending::Parse {
            swallow: false,
            id: Some(2),
        });
        e.push(Pending::Sync);
        e.push(Pending::Query);
        let mut gone = Undone::default();
        assert_eq!(e.on_reply(b'E', &mut gone), Ok(Verdict::Forward));
        assert_eq!(gone.statements, vec![1, 2]);
        assert_eq!(
            e.take_synth(),
            None,
            "a skipped Parse gets no ParseComplete"
        );
        assert_eq!(replay(&mut e, b"ZTDCZ").len(), 5);
        assert!(e.is_empty());
    }

    #[test]
    fn a_name_exists_only_if_its_parse_was_not_failed_or_skipped() {
        let mut e = Expect::default();
        // Parse a (answered by pgmux), Parse b (sent), Bind, Sync.
        e.push(Pending::Synth(b'1'));
        e.push(Pending::NameBound(1));
        e.push(Pending::Parse {
            swallow: false,
            id: Some(5),
        });
        e.push(Pending::NameBound(2));
        e.push(Pending::Bind { id: Some(5) });
        e.push(Pending::Sync);
        assert_eq!(e.take_synth(), Some(Canned::Empty(b'1')));
        let mut undone = Undone::default();
        // b's Parse fails: b's name goes, a's stays.
        assert_eq!(e.on_reply(b'E', &mut undone), Ok(Verdict::Forward));
        assert_eq!(
            undone,
            Undone {
                statements: vec![5],
                names: vec![2],
                closes: vec![],
            }
        );
        replay(&mut e, b"Z");
        assert!(e.is_empty());
    }

    #[test]
    fn an_error_skips_queries_before_the_sync_and_restores_skipped_closes() {
        // Bind, Execute (fails), an injected Close, a Query sent without a
        // Sync first, then Sync: PostgreSQL ignores everything to the Sync.
        let mut e = Expect::default();
        for p in [
            Pending::Bind { id: None },
            Pending::Execute,
            Pending::Close {
                swallow: true,
                injected: Some(4),
            },
            Pending::Query,
            Pending::Sync,
        ] {
            e.push(p);
        }
        assert_eq!(e.ready_owed(), 2);
        let mut undone = Undone::default();
        e.on_reply(b'2', &mut undone).unwrap();
        e.on_reply(b'E', &mut undone).unwrap();
        assert_eq!(undone.closes, vec![4]);
        assert_eq!(e.ready_owed(), 1);
        replay(&mut e, b"Z");
        assert!(e.is_empty());
    }

    #[test]
    fn errors_inside_a_simple_query_wait_for_its_ready() {
        let mut e = Expect::default();
        e.push(Pending::Query);
        replay(&mut e, b"TDCE");
        assert_eq!(e.ready_owed(), 1);
        replay(&mut e, b"Z");
        assert!(e.is_empty());
    }

    #[test]
    fn syncs_sent_during_copy_in_owe_nothing() {
        // Bind, Execute(COPY FROM STDIN), Sync, data..., CopyDone, Sync:
        // PostgreSQL ignores the first Sync while it reads COPY data.
        let mut e = Expect::default();
        for p in [Pending::Bind { id: None }, Pending::Execute, Pending::Sync] {
            e.push(p);
        }
        replay(&mut e, b"2G");
        assert_eq!(e.ready_owed(), 0);
        e.push(Pending::Sync); // sent mid-copy: ignored too
        e.push(Pending::CopyEnd);
        e.push(Pending::Sync);
        assert_eq!(e.ready_owed(), 1);
        replay(&mut e, b"CZ");
        assert!(e.is_empty());
        // The client may end its data before the server's CopyInResponse.
        let mut e = Expect::default();
        for p in [
            Pending::Bind { id: None },
            Pending::Execute,
            Pending::Sync,
            Pending::CopyEnd,
            Pending::Sync,
        ] {
            e.push(p);
        }
        replay(&mut e, b"2GCZ");
        assert!(e.is_empty());
    }

    #[test]
    fn a_canned_deallocate_owes_its_ready_and_comes_due_in_order() {
        let mut e = Expect::default();
        e.push(Pending::Query);
        e.push(Pending::Deallocated);
        assert_eq!(e.ready_owed(), 2);
        assert_eq!(e.take_synth(), None, "the earlier query is answered first");
        replay(&mut e, b"CZ");
        assert_eq!(e.take_synth(), Some(Canned::Deallocated));
        assert!(e.is_empty());
        assert_eq!(e.ready_owed(), 0);
    }

    #[test]
    fn an_injected_raise_stands_for_the_clients_message_and_skips_to_sync() {
        // Parse(DO raise) + Bind + Execute injected for a client's Parse,
        // then the client's own Bind, Execute, Sync.
        let mut e = Expect::default();
        for p in [
            Pending::Parse {
                swallow: true,
                id: None,
            },
            Pending::Raise,
            Pending::Bind { id: Some(3) },
            Pending::Execute,
            Pending::Sync,
        ] {
            e.push(p);
        }
        let mut gone = Undone::default();
        assert_eq!(e.on_reply(b'1', &mut gone), Ok(Verdict::Drop));
        assert_eq!(e.on_reply(b'2', &mut gone), Ok(Verdict::Drop));
        assert!(e.raise_at_front());
        assert_eq!(e.on_reply(b'E', &mut gone), Ok(Verdict::Forward));
        assert_eq!(replay(&mut e, b"Z").len(), 1);
        assert!(e.is_empty());
    }

    #[test]
    fn the_statement_behind_a_failing_bind_is_known() {
        let mut e = Expect::default();
        e.push(Pending::Bind { id: Some(9) });
        e.push(Pending::Describe { id: None });
        e.push(Pending::Sync);
        assert_eq!(e.statement_at_front(), Some(9));
        let mut gone = Undone::default();
        e.on_reply(b'E', &mut gone).unwrap();
        assert_eq!(e.statement_at_front(), None);
    }

    #[test]
    fn a_reply_nobody_asked_for_is_a_desync() {
        let mut e = Expect::default();
        e.push(Pending::Bind { id: None });
        let mut gone = Undone::default();
        assert!(e.on_reply(b'1', &mut gone).is_err());
        assert!(Expect::default().on_reply(b'Z', &mut gone).is_err());
    }
}
