//! Building an outgoing byte run from an incoming one with a few edits.
//! Without edits nothing is copied: the caller forwards the input slice.

use bytes::BytesMut;

pub struct Splice {
    out: Option<BytesMut>,
    /// Input before this offset is already accounted for in `out`.
    copied: usize,
}

impl Splice {
    pub fn new() -> Splice {
        Splice {
            out: None,
            copied: 0,
        }
    }

    /// Replace `input[start..end]` with `with` (empty `with` deletes; an
    /// empty range inserts).
    pub fn replace(&mut self, input: &[u8], start: usize, end: usize, with: &[u8]) {
        let out = self
            .out
            .get_or_insert_with(|| BytesMut::with_capacity(input.len() + with.len() + 64));
        out.extend_from_slice(&input[self.copied..start]);
        out.extend_from_slice(with);
        self.copied = end;
    }

    /// The bytes to send for `input[..end]`: the edited copy, or `None`
    /// meaning "send `input[..end]` as it is".
    pub fn finish(self, input: &[u8], end: usize) -> Option<BytesMut> {
        let mut out = self.out?;
        out.extend_from_slice(&input[self.copied..end]);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untouched_input_is_not_copied() {
        assert_eq!(Splice::new().finish(b"abc", 3), None);
    }

    #[test]
    fn edits_apply_in_order() {
        let input = b"0123456789";
        let mut s = Splice::new();
        s.replace(input, 2, 4, b"xx");
        s.replace(input, 6, 6, b"+");
        s.replace(input, 7, 9, b"");
        assert_eq!(&s.finish(input, 10).unwrap()[..], b"01xx45+69");
    }
}
