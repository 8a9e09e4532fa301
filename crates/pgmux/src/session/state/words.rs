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
    pub fn of(sql: &[u8]) -> Words {
        let mut found = 0;
        for (i, b) in sql.iter().enumerate() {
            let rest = &sql[i..];
            // Letters fold to lower case; '-' and '/' stay as they are.
            found |= match b | 0x20 {
                b'a' if starts(rest, b"advisory") => Words::ADVISORY,
                b't' if starts(rest, b"temp") => Words::TEMP,
                b's' if starts(rest, b"set") => {
                    Words::SET
                        | if starts(rest, b"set_config") {
                            Words::SET_CONFIG
                        } else {
                            0
                        }
                }
                b'd' if starts(rest, b"deallocate") => Words::DEALLOCATE,
                b'd' if starts(rest, b"discard") => Words::DISCARD,
                b'd' if starts(rest, b"drop") => Words::DROP,
                b'p' if starts(rest, b"pgmux_") => Words::PGMUX,
                b'p' if starts(rest, b"prepare") => Words::PREPARE,
                b'e' if starts(rest, b"execute") => Words::EXECUTE,
                b'-' if rest.starts_with(b"--") => Words::COMMENT,
                b'/' if rest.starts_with(b"/*") => Words::COMMENT,
                _ => 0,
            };
        }
        Words(found)
    }

    /// Whether any of `words` (bits) appears.
    pub fn any(self, words: u16) -> bool {
        self.0 & words != 0
    }
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
}
