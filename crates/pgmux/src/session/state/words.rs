//! One pass over a statement's text that tells which of the words pgmux
//! looks for appear in it (ASCII case-insensitive, anywhere: a "may"). The
//! precise checks (session-state hints, DEALLOCATE, DROP DATABASE, reserved
//! names) run only when their word is there, so the text of an ordinary
//! query is read once, not once per check.

/// Which words a text contains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Words(u16);

impl Words {
    pub const ADVISORY: u16 = 1 << 0;
    pub const TEMP: u16 = 1 << 1;
    pub const SET_CONFIG: u16 = 1 << 2;
    /// `set` anywhere (a session-level SET may start a statement).
    pub const SET: u16 = 1 << 3;
    /// `--` or `/*`: a comment may hide the start of a statement.
    pub const COMMENT: u16 = 1 << 4;
    pub const DEALLOCATE: u16 = 1 << 5;
    pub const DISCARD: u16 = 1 << 6;
    pub const DROP: u16 = 1 << 7;
    pub const PREPARE: u16 = 1 << 8;
    pub const EXECUTE: u16 = 1 << 9;
    /// The prefix of pgmux's reserved statement names.
    pub const PGMUX: u16 = 1 << 10;

    /// The words of `sql`.
    ///
    /// Every query passes through here, so the scan is two table lookups
    /// per byte: a position is compared with a word only when its byte and
    /// the next can begin that word (in typical SQL, a few positions).
    pub fn of(sql: &[u8]) -> Words {
        let mut found = 0;
        // The patterns the previous byte can begin.
        let mut begun = 0;
        for (i, &b) in sql.iter().enumerate() {
            let mut candidates = begun & SECOND[usize::from(b)];
            begun = FIRST[usize::from(b)];
            while candidates != 0 {
                let (word, bits) = PATTERNS[candidates.trailing_zeros() as usize];
                candidates &= candidates - 1;
                if starts(&sql[i - 1..], word) {
                    found |= bits;
                }
            }
        }
        Words(found)
    }

    /// Whether any of `words` (bits) appears.
    pub fn any(self, words: u16) -> bool {
        self.0 & words != 0
    }
}

/// The patterns looked for (letters in lower case, matched in any case),
/// and the words each one shows.
const PATTERNS: [(&[u8], u16); 12] = [
    (b"advisory", Words::ADVISORY),
    (b"temp", Words::TEMP),
    (b"set", Words::SET),
    (b"set_config", Words::SET | Words::SET_CONFIG),
    (b"deallocate", Words::DEALLOCATE),
    (b"discard", Words::DISCARD),
    (b"drop", Words::DROP),
    (b"pgmux_", Words::PGMUX),
    (b"prepare", Words::PREPARE),
    (b"execute", Words::EXECUTE),
    (b"--", Words::COMMENT),
    (b"/*", Words::COMMENT),
];

/// For each byte, the patterns (bit `i` for `PATTERNS[i]`) whose first /
/// second byte it can be.
static FIRST: [u16; 256] = byte_table(0);
static SECOND: [u16; 256] = byte_table(1);

const fn byte_table(at: usize) -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < PATTERNS.len() {
        let b = PATTERNS[i].0[at];
        table[b as usize] |= 1 << i;
        table[b.to_ascii_uppercase() as usize] |= 1 << i;
        i += 1;
    }
    table
}

fn starts(s: &[u8], word: &[u8]) -> bool {
    s.len() >= word.len() && s[..word.len()].eq_ignore_ascii_case(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_word_in_any_case() {
        let w = Words::of(b"SELECT pg_Advisory_lock(1); CREATE TEMP TABLE t(); Set x = 1");
        assert!(w.any(Words::ADVISORY) && w.any(Words::TEMP) && w.any(Words::SET));
        assert!(!w.any(Words::SET_CONFIG | Words::DROP | Words::PGMUX | Words::COMMENT));
        let w = Words::of(b"/* c */ select set_config('a', 'b', false) -- x");
        assert!(w.any(Words::SET_CONFIG) && w.any(Words::COMMENT));
        let w =
            Words::of(b"DEALLOCATE pgmux_1; DISCARD ALL; drop database d; prepare p; EXECUTE p");
        for bit in [
            Words::DEALLOCATE,
            Words::DISCARD,
            Words::DROP,
            Words::PGMUX,
            Words::PREPARE,
            Words::EXECUTE,
        ] {
            assert!(w.any(bit), "{bit:#x}");
        }
        assert_eq!(
            Words::of(b"SELECT abalance FROM pgbench_accounts WHERE aid = 1"),
            Words::default()
        );
    }

    /// The table-driven scan finds what a plain search for each word finds,
    /// at the start, the end and the middle of texts in mixed case.
    #[test]
    fn agrees_with_a_plain_search() {
        fn plain(sql: &[u8]) -> u16 {
            PATTERNS
                .iter()
                .filter(|(word, _)| (0..sql.len()).any(|i| starts(&sql[i..], word)))
                .fold(0, |found, (_, bits)| found | bits)
        }
        let fillers: [&[u8]; 5] = [b"", b"x", b"SELECT 1; ", b"s-/ se pg_ d", b"\xff\x00a"];
        for (word, _) in PATTERNS {
            let mixed: Vec<u8> = word
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    if i % 2 == 0 {
                        b.to_ascii_uppercase()
                    } else {
                        *b
                    }
                })
                .collect();
            let cut = &mixed[..mixed.len() - 1];
            for before in fillers {
                for after in fillers {
                    for middle in [&mixed[..], cut] {
                        let sql = [before, middle, after].concat();
                        assert_eq!(
                            Words::of(&sql).0,
                            plain(&sql),
                            "{:?}",
                            String::from_utf8_lossy(&sql)
                        );
                    }
                }
            }
        }
    }
}
