//! Finding message boundaries in a byte stream that is forwarded as-is.
//!
//! The proxy reads whatever the socket has, writes it on in one piece, and
//! only needs to know *which* messages went by: how many Syncs a client sent,
//! whether the server's ReadyForQuery said idle, what a ParameterStatus set.
//! [`Scanner`] walks the headers across read boundaries (a header or body may
//! be split anywhere) and copies out only the bodies the caller asks for and
//! only while they are small; everything else is skipped by count.

use crate::frame::{body_len, FrameError, HEADER_LEN};

/// Bodies larger than this are never captured (ParameterStatus, ReadyForQuery
/// and the like are tiny; a larger one of those would itself be suspicious).
pub const MAX_CAPTURE: usize = 64 * 1024;

/// What the scanner saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A message header went by; `len` is the body length and `body_at` the
    /// offset in the fed slice where the body starts (so the header began at
    /// `body_at - 5`, or in an earlier slice when that is negative).
    Start { tag: u8, len: usize, body_at: usize },
    /// A captured message is complete.
    Whole { tag: u8, body: &'a [u8] },
}

#[derive(Debug)]
enum State {
    Header {
        have: usize,
        hdr: [u8; HEADER_LEN],
    },
    Body {
        tag: u8,
        remaining: usize,
        capture: bool,
    },
}

#[derive(Debug)]
pub struct Scanner {
    max: usize,
    state: State,
    captured: Vec<u8>,
}

impl Scanner {
    pub fn new(max_message_size: usize) -> Self {
        Scanner {
            max: max_message_size,
            state: State::Header {
                have: 0,
                hdr: [0; HEADER_LEN],
            },
            captured: Vec::new(),
        }
    }

    /// True when the bytes fed so far end exactly on a message boundary.
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Header { have: 0, .. })
    }

    /// Scan `data`, reporting each header and each captured body.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        capture: impl Fn(u8) -> bool,
        mut on: impl FnMut(Event<'_>),
    ) -> Result<(), FrameError> {
        let total = data.len();
        while !data.is_empty() {
            match &mut self.state {
                State::Header { have, hdr } => {
                    let take = (HEADER_LEN - *have).min(data.len());
                    hdr[*have..*have + take].copy_from_slice(&data[..take]);
                    *have += take;
                    data = &data[take..];
                    if *have < HEADER_LEN {
                        break;
                    }
                    let tag = hdr[0];
                    let len = body_len(
                        i32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]),
                        self.max,
                    )?;
                    on(Event::Start {
                        tag,
                        len,
                        body_at: total - data.len(),
                    });
                    let capture = len <= MAX_CAPTURE && capture(tag);
                    self.captured.clear();
                    self.state = State::Body {
                        tag,
                        remaining: len,
                        capture,
                    };
                }
                State::Body {
                    remaining, capture, ..
                } => {
                    let take = (*remaining).min(data.len());
                    if *capture {
                        self.captured.extend_from_slice(&data[..take]);
                    }
                    *remaining -= take;
                    data = &data[take..];
                }
            }
            if let State::Body {
                tag,
                remaining: 0,
                capture,
            } = self.state
            {
                if capture {
                    on(Event::Whole {
                        tag,
                        body: &self.captured,
                    });
                }
                self.state = State::Header {
                    have: 0,
                    hdr: [0; HEADER_LEN],
                };
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::write_message;
    use bytes::BytesMut;
    use proptest::prelude::*;

    fn stream() -> Vec<u8> {
        let mut b = BytesMut::new();
        write_message(&mut b, b'P', |b| b.extend_from_slice(b"\0select 1\0\0\0"));
        write_message(&mut b, b'S', |_| {});
        write_message(&mut b, b'Z', |b| b.extend_from_slice(b"I"));
        write_message(&mut b, b'D', |b| b.extend_from_slice(&[7u8; 300]));
        write_message(&mut b, b'Z', |b| b.extend_from_slice(b"T"));
        b.to_vec()
    }

    fn scan_in_pieces(data: &[u8], cuts: &[usize]) -> (Vec<u8>, Vec<Vec<u8>>, bool) {
        let mut s = Scanner::new(1 << 20);
        let mut tags = Vec::new();
        let mut zs = Vec::new();
        let mut at = 0;
        for &c in cuts.iter().chain(std::iter::once(&data.len())) {
            let c = c.clamp(at, data.len());
            s.feed(
                &data[at..c],
                |t| t == b'Z',
                |e| match e {
                    Event::Start { tag, .. } => tags.push(tag),
                    Event::Whole { body, .. } => zs.push(body.to_vec()),
                },
            )
            .unwrap();
            at = c;
        }
        (tags, zs, s.at_boundary())
    }

    #[test]
    fn finds_every_message_in_one_piece() {
        let (tags, zs, done) = scan_in_pieces(&stream(), &[]);
        assert_eq!(tags, b"PSZDZ");
        assert_eq!(zs, vec![b"I".to_vec(), b"T".to_vec()]);
        assert!(done);
    }

    #[test]
    fn stops_mid_message_off_boundary() {
        let data = stream();
        let (tags, _, done) = scan_in_pieces(&data[..data.len() - 1], &[]);
        assert_eq!(tags, b"PSZDZ");
        assert!(!done);
    }

    #[test]
    fn rejects_a_bad_length() {
        let mut s = Scanner::new(1000);
        let err = s
            .feed(&[b'Q', 0xff, 0xff, 0xff, 0xff], |_| false, |_| {})
            .unwrap_err();
        assert_eq!(err, FrameError::BadLength(-1));
        let mut s = Scanner::new(1000);
        let err = s
            .feed(&[b'Q', 0, 0, 0x10, 0], |_| false, |_| {})
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_result(mut cuts in proptest::collection::vec(0usize..400, 0..12)) {
            cuts.sort();
            let data = stream();
            prop_assert_eq!(scan_in_pieces(&data, &cuts), scan_in_pieces(&data, &[]));
        }
    }
}
