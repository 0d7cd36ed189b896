//! Incremental UTF-8 validation (RFC 6455 §8.1).
//!
//! A text message may arrive in many frames and each frame in many reads, and
//! a code point may be split anywhere. [`Utf8Validator`] carries the bytes of a
//! partial code point from one chunk to the next and fails as soon as a byte
//! arrives that cannot continue valid UTF-8, rather than at the end of the
//! message (Autobahn 6.4.x checks exactly this "fail fast" behaviour).

/// The bytes seen so far cannot be the start of valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid UTF-8 at byte {offset} of the text")]
pub struct Utf8Error {
    /// Offset of the first invalid byte, counted from the start of the text.
    pub offset: u64,
}

/// Validates UTF-8 fed in arbitrary chunks.
///
/// ```
/// use wsproto::utf8::Utf8Validator;
/// let text = "añ€😀".as_bytes();
/// let mut v = Utf8Validator::new();
/// for b in text {
///     v.feed(std::slice::from_ref(b)).unwrap(); // even one byte at a time
/// }
/// v.finish().unwrap();
///
/// let mut bad = Utf8Validator::new();
/// assert!(bad.feed(&[0xED, 0xA0]).is_err()); // a surrogate fails at its 2nd byte
/// ```
#[derive(Debug, Clone, Default)]
pub struct Utf8Validator {
    /// Bytes of an incomplete code point at the end of the last chunk.
    partial: [u8; 4],
    partial_len: u8,
    /// Bytes accepted so far (for error offsets).
    seen: u64,
}

impl Utf8Validator {
    /// A validator at the start of a text.
    pub const fn new() -> Self {
        Self {
            partial: [0; 4],
            partial_len: 0,
            seen: 0,
        }
    }

    /// Validates the next chunk of the text.
    ///
    /// # Errors
    ///
    /// [`Utf8Error`] as soon as the bytes so far cannot be a prefix of valid
    /// UTF-8. An incomplete code point at the end of the chunk is not an error:
    /// it is completed by the next chunk (or rejected by [`finish`](Self::finish)).
    pub fn feed(&mut self, mut input: &[u8]) -> Result<(), Utf8Error> {
        if self.partial_len > 0 {
            input = self.complete_partial(input)?;
            if self.partial_len > 0 {
                return Ok(()); // still incomplete, and input is used up
            }
        }
        match validate_prefix(input) {
            Ok(()) => {
                self.seen += input.len() as u64;
                Ok(())
            }
            Err(Incomplete::At(valid)) => {
                let tail = &input[valid..];
                self.partial[..tail.len()].copy_from_slice(tail);
                self.partial_len = tail.len() as u8;
                self.seen += valid as u64;
                Ok(())
            }
            Err(Incomplete::Invalid(valid)) => Err(Utf8Error {
                offset: self.seen + valid as u64,
            }),
        }
    }

    /// Checks that the text ended on a code point boundary, and resets the
    /// validator for the next text.
    ///
    /// # Errors
    ///
    /// [`Utf8Error`] if the text ended inside a code point.
    pub fn finish(&mut self) -> Result<(), Utf8Error> {
        let result = if self.partial_len == 0 {
            Ok(())
        } else {
            Err(Utf8Error { offset: self.seen })
        };
        *self = Self::new();
        result
    }

    /// True if the validator is between code points.
    pub fn is_boundary(&self) -> bool {
        self.partial_len == 0
    }

    /// Counts `n` bytes that are known to be ASCII (checked while they were
    /// copied) as accepted, without reading them again. Only between code
    /// points: after an incomplete one, an ASCII byte is an error, which
    /// [`feed`](Self::feed) must report.
    #[inline]
    pub(crate) fn skip_ascii(&mut self, n: usize) {
        debug_assert!(self.is_boundary());
        self.seen += n as u64;
    }

    /// Feeds bytes into the carried partial code point; returns what is left.
    fn complete_partial<'a>(&mut self, input: &'a [u8]) -> Result<&'a [u8], Utf8Error> {
        let have = usize::from(self.partial_len);
        let width = char_width(self.partial[0]);
        let take = (width - have).min(input.len());
        let mut buf = self.partial;
        buf[have..have + take].copy_from_slice(&input[..take]);
        match validate_prefix(&buf[..have + take]) {
            Ok(()) => {
                self.seen += width as u64;
                self.partial_len = 0;
                Ok(&input[take..])
            }
            Err(Incomplete::At(0)) => {
                self.partial = buf;
                self.partial_len = (have + take) as u8;
                Ok(&input[take..])
            }
            Err(_) => Err(Utf8Error { offset: self.seen }),
        }
    }
}

enum Incomplete {
    /// Valid up to this index, then an incomplete (but so far valid) code point.
    At(usize),
    /// Valid up to this index, then an invalid byte sequence.
    Invalid(usize),
}

/// Validates `input`, allowing it to end inside a code point.
#[inline]
fn validate_prefix(input: &[u8]) -> Result<(), Incomplete> {
    // Short chunks: our word-wise ASCII scan settles most of them without
    // the validator's setup cost. Longer ones go straight to simdutf8, whose
    // SIMD paths (picked at run time) beat the word-wise scan on ASCII by
    // ~15% and std's validator on 3-byte text by ~4.7x (benches/README.md).
    let ascii = if input.len() < SHORT_CHUNK {
        ascii_prefix_len(input)
    } else {
        0
    };
    if ascii == input.len() {
        // Small all-ASCII messages end here: handing simdutf8 an empty
        // tail still cost a call into std's validator per message.
        return Ok(());
    }
    // `compat` reports where the valid prefix ends and whether the tail is
    // merely incomplete, exactly as `std::str::from_utf8` does.
    match simdutf8::compat::from_utf8(&input[ascii..]) {
        Ok(_) => Ok(()),
        Err(e) => {
            let valid = ascii + e.valid_up_to();
            match e.error_len() {
                None => Err(Incomplete::At(valid)),
                Some(_) => Err(Incomplete::Invalid(valid)),
            }
        }
    }
}

/// Below this many bytes a chunk is scanned word-wise before validation.
const SHORT_CHUNK: usize = 64;

/// Length of the leading run of ASCII bytes: the whole input if it is all
/// ASCII, otherwise a prefix of it (rounded down to whole words).
#[inline]
fn ascii_prefix_len(input: &[u8]) -> usize {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let word = |w: &[u8]| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
    let mut n = 0;
    for chunk in input.chunks_exact(16) {
        if (word(&chunk[..8]) | word(&chunk[8..])) & HIGH != 0 {
            return n;
        }
        n += 16;
    }
    let rest = &input[n..];
    if rest.len() >= 8 {
        if word(rest) & HIGH != 0 {
            return n;
        }
        n += 8;
    }
    if input[n..].is_ascii() {
        input.len()
    } else {
        n
    }
}

/// Width of the code point a lead byte starts (1 for bytes that cannot lead,
/// so that validation reports them as invalid).
fn char_width(lead: u8) -> usize {
    match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunked(data: &[u8], cuts: &[usize]) -> Result<(), Utf8Error> {
        let mut v = Utf8Validator::new();
        let mut start = 0;
        for &c in cuts {
            let c = c.min(data.len()).max(start);
            v.feed(&data[start..c])?;
            start = c;
        }
        v.feed(&data[start..])?;
        v.finish()
    }

    #[test]
    fn rejects_fast_inside_a_code_point() {
        // Autobahn 6.4.x: the error must come at the byte that makes it invalid.
        let mut v = Utf8Validator::new();
        v.feed("κόσμε".as_bytes()).unwrap();
        assert_eq!(v.feed(&[0xF4]), Ok(()));
        assert!(v.feed(&[0x90]).is_err(), "F4 90 is beyond U+10FFFF");
    }

    #[test]
    fn surrogates_overlongs_and_truncation() {
        for bad in [
            &[0xED, 0xA0, 0x80][..],
            &[0xC0, 0x80],
            &[0xE0, 0x80, 0x80],
            &[0xF8, 0x88, 0x80, 0x80, 0x80],
            &[0xFF],
            &[0x80],
        ] {
            assert!(chunked(bad, &[]).is_err(), "{bad:x?}");
            assert!(chunked(bad, &[1]).is_err(), "{bad:x?} split");
        }
        assert!(chunked(&[0xE2, 0x82], &[]).is_err(), "truncated at the end");
        assert_eq!(chunked("€".as_bytes(), &[1, 2]), Ok(()));
    }

    #[test]
    fn error_offset_counts_from_text_start() {
        let mut v = Utf8Validator::new();
        v.feed(b"abc").unwrap();
        assert_eq!(v.feed(b"de\xFF"), Err(Utf8Error { offset: 5 }));
    }

    proptest! {
        #[test]
        fn ascii_prefix_is_ascii_and_whole_only_for_ascii(
            mut data in proptest::collection::vec(0u8..0x80, 0..80),
            high in proptest::option::of((any::<prop::sample::Index>(), 0x80u8..=0xFF)),
        ) {
            if let (Some((at, byte)), false) = (high, data.is_empty()) {
                let i = at.index(data.len());
                data[i] = byte;
            }
            let n = ascii_prefix_len(&data);
            prop_assert!(data[..n].is_ascii());
            prop_assert_eq!(n == data.len(), data.is_ascii());
        }

        #[test]
        fn agrees_with_std_under_any_split(data in proptest::collection::vec(any::<u8>(), 0..64),
                                           mut cuts in proptest::collection::vec(0usize..64, 0..8)) {
            cuts.sort_unstable();
            prop_assert_eq!(chunked(&data, &cuts).is_ok(), std::str::from_utf8(&data).is_ok());
        }

        #[test]
        fn long_chunks_agree_with_std(s in "\\PC{0,300}", bad in any::<u8>(),
                                      at in any::<proptest::sample::Index>(),
                                      cut in any::<proptest::sample::Index>()) {
            // Chunks past SHORT_CHUNK take the SIMD path: the verdict and the
            // error offset must match std's, whole or split anywhere.
            let mut data = s.into_bytes();
            let i = at.index(data.len() + 1);
            data.insert(i, bad);
            let expected = std::str::from_utf8(&data).map(|_| ()).map_err(|e| e.valid_up_to());
            let mut v = Utf8Validator::new();
            let whole = v.feed(&data).and_then(|()| v.finish());
            let c = cut.index(data.len() + 1);
            let split = chunked(&data, &[c]);
            match expected {
                Ok(()) => {
                    prop_assert_eq!(whole, Ok(()));
                    prop_assert_eq!(split, Ok(()));
                }
                Err(valid) => {
                    // Fail-fast: the error names the first byte that cannot
                    // continue valid UTF-8, which is at or after std's
                    // valid_up_to (std points at the start of the bad sequence).
                    let off = whole.expect_err("invalid").offset as usize;
                    prop_assert!(off >= valid && off <= data.len(), "{} vs {}", off, valid);
                    prop_assert!(split.is_err());
                }
            }
        }

        #[test]
        fn valid_text_any_split(s in "\\PC{0,40}", mut cuts in proptest::collection::vec(0usize..160, 0..8)) {
            cuts.sort_unstable();
            prop_assert_eq!(chunked(s.as_bytes(), &cuts), Ok(()));
        }
    }
}
