//! Payload masking (RFC 6455 §5.3).
//!
//! The same XOR both masks and unmasks. [`apply_mask`] works word-wise and can
//! resume at any byte offset into the payload, so a frame that arrives in
//! pieces can be unmasked piece by piece as it comes in.

use std::mem::MaybeUninit;

/// XORs `buf` in place with the 4-byte masking `key`, starting at byte
/// `offset` of the frame payload (`offset` is the number of payload bytes
/// already processed; only `offset % 4` matters).
///
/// ```
/// use wsproto::mask::apply_mask;
/// let key = [1, 2, 3, 4];
/// let mut data = *b"hello world";
/// // Unmasking in two pieces gives the same result as in one.
/// let (a, b) = data.split_at_mut(5);
/// apply_mask(a, key, 0);
/// apply_mask(b, key, 5);
/// apply_mask(&mut data, key, 0);
/// assert_eq!(&data, b"hello world");
/// ```
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotate_key(key, offset);
    apply_mask_aligned(buf, key);
}

/// Rotates `key` so that byte 0 of the result masks payload byte `offset`.
#[inline]
fn rotate_key(key: [u8; 4], offset: usize) -> [u8; 4] {
    let k = u32::from_le_bytes(key);
    // Rotating right by 8 bits per skipped byte moves key[offset % 4] to the front.
    k.rotate_right(8 * (offset % 4) as u32).to_le_bytes()
}

fn apply_mask_aligned(buf: &mut [u8], key: [u8; 4]) {
    // Work on 8-byte words: the body of the loop compiles to a single XOR per
    // word (and is auto-vectorised), which is what makes unmasking cheap.
    let key32 = u32::from_le_bytes(key);
    let key64 = (u64::from(key32) << 32) | u64::from(key32);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes([
            chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
        ]);
        chunk.copy_from_slice(&(word ^ key64.to_le()).to_le_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// Copies `src` into `dst` while masking it: the fused form used when encoding
/// a client frame, so the payload is read once. `dst` and `src` must have the
/// same length. `offset` is as in [`apply_mask`].
///
/// # Panics
///
/// Panics if `dst.len() != src.len()` (a caller bug, never peer input).
pub fn copy_masked(dst: &mut [u8], src: &[u8], key: [u8; 4], offset: usize) {
    assert_eq!(dst.len(), src.len(), "copy_masked: length mismatch");
    let key = rotate_key(key, offset);
    let key32 = u32::from_le_bytes(key);
    let key64 = (u64::from(key32) << 32) | u64::from(key32);
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (dc, sc) in (&mut d).zip(&mut s) {
        let word = u64::from_le_bytes([sc[0], sc[1], sc[2], sc[3], sc[4], sc[5], sc[6], sc[7]]);
        dc.copy_from_slice(&(word ^ key64.to_le()).to_le_bytes());
    }
    for (i, (db, sb)) in d.into_remainder().iter_mut().zip(s.remainder()).enumerate() {
        *db = sb ^ key[i % 4];
    }
}

/// As [`copy_masked`], into memory that may not be initialized yet: the
/// spare capacity of an output buffer, so the payload is written once
/// (no zero-fill pass before the masked copy).
///
/// # Panics
///
/// Panics if `dst.len() != src.len()` (a caller bug, never peer input).
#[inline]
pub(crate) fn copy_masked_uninit(
    dst: &mut [MaybeUninit<u8>],
    src: &[u8],
    key: [u8; 4],
    offset: usize,
) {
    copy_masked_uninit_impl::<false>(dst, src, key, offset);
}

/// As [`copy_masked_uninit`], and says whether every byte written (the
/// unmasked bytes, when unmasking) is ASCII: the check rides along in the
/// copy loop (one OR per word), so a text payload that is all ASCII is
/// known to be valid UTF-8 without a second pass over it.
#[inline]
pub(crate) fn copy_masked_uninit_ascii(
    dst: &mut [MaybeUninit<u8>],
    src: &[u8],
    key: [u8; 4],
    offset: usize,
) -> bool {
    copy_masked_uninit_impl::<true>(dst, src, key, offset) & HIGH_BITS == 0
}

/// The high bit of every byte of a word.
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// Bytes copied, then checked for ASCII, at a time (well within L1).
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
const ASCII_BLOCK: usize = 4096;

/// The copy loop; with `TRACK`, also the OR of every word written (its
/// high bits say whether a non-ASCII byte went by).
#[inline(always)]
fn copy_masked_uninit_impl<const TRACK: bool>(
    dst: &mut [MaybeUninit<u8>],
    src: &[u8],
    key: [u8; 4],
    offset: usize,
) -> u64 {
    assert_eq!(dst.len(), src.len(), "copy_masked_uninit: length mismatch");
    let key = rotate_key(key, offset);
    let key32 = u32::from_le_bytes(key);
    let key64 = (u64::from(key32) << 32) | u64::from(key32);
    #[cfg(target_arch = "x86_64")]
    if src.len() >= WIDE && std::arch::is_x86_feature_detected!("avx2") {
        // Out of line, so the small frames' path stays as it was.
        return copy_masked_wide::<TRACK>(dst, src, key, key64);
    }
    #[cfg(target_arch = "x86_64")]
    if TRACK {
        // One pass: SSE2 (x86-64's baseline) copies, unmasks and ORs 64
        // bytes at a time; the check costs no memory traffic of its own.
        // Over 4 MiB in 16 KiB pieces (a standalone loop, one core): 44
        // GB/s, as fast as the plain unmasking copy, where the blocked
        // copy-then-`is_ascii` below ran at 28-31 GB/s.
        let n = src.len() / 64 * 64;
        let ascii = copy_masked_ascii_sse2(&mut dst[..n], &src[..n], key64);
        // `n` is a multiple of 4: the key's phase carries on.
        let tail = copy_masked_words::<true>(&mut dst[n..], &src[n..], key, key64);
        return if ascii { tail } else { HIGH_BITS };
    }
    #[cfg(not(target_arch = "x86_64"))]
    if TRACK {
        // In blocks that stay in L1: the copy (vectorized), then the ASCII
        // check of what it wrote, read back from L1. In the copy loop
        // itself the OR chain kept it from vectorizing: per 16 KiB text
        // frame it cost more than the whole copy (perf, criterion).
        // A block is a multiple of 4 bytes, so the key's phase carries on.
        let mut seen = 0u64;
        for (d, s) in dst.chunks_mut(ASCII_BLOCK).zip(src.chunks(ASCII_BLOCK)) {
            copy_masked_words::<false>(d, s, key, key64);
            // SAFETY: `copy_masked_words` wrote every byte of `d` (it has
            // `s`'s length), so all of it is initialized; `MaybeUninit<u8>`
            // has `u8`'s layout. Covered by the proptests below (which
            // compare every byte written).
            #[allow(unsafe_code)]
            let written = unsafe { &*(d as *const [MaybeUninit<u8>] as *const [u8]) };
            if !written.is_ascii() {
                seen = HIGH_BITS;
            }
        }
        return seen;
    }
    copy_masked_words::<false>(dst, src, key, key64)
}

/// Copies `src` (a multiple of 64 bytes long) into `dst` (as long) while
/// XORing it with `key64` (the rotated key twice), 16 bytes to a register;
/// true if every byte written is ASCII (the OR of them all has no high
/// bit set).
#[cfg(target_arch = "x86_64")]
#[inline]
fn copy_masked_ascii_sse2(dst: &mut [MaybeUninit<u8>], src: &[u8], key64: u64) -> bool {
    use std::arch::x86_64::{
        __m128i, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi64x,
        _mm_setzero_si128, _mm_storeu_si128, _mm_xor_si128,
    };
    assert!(dst.len() == src.len() && src.len() % 64 == 0);
    let (s, d) = (
        src.as_ptr().cast::<__m128i>(),
        dst.as_mut_ptr().cast::<__m128i>(),
    );
    // SAFETY: SSE2 is part of the x86_64 baseline, so these intrinsics are
    // always available. Block `i` reads `src[64 * i..64 * (i + 1)]` and
    // writes the same range of `dst`, both in bounds (`i < len / 64`, the
    // lengths are equal and multiples of 64, checked above); the unaligned
    // load/store forms have no alignment requirement, and writing a
    // `MaybeUninit<u8>` is always allowed. Covered by the proptests below
    // (every byte written compared, every verdict against `is_ascii`).
    #[allow(unsafe_code)]
    unsafe {
        let k = _mm_set1_epi64x(key64 as i64);
        let mut seen = _mm_setzero_si128();
        for i in 0..src.len() / 64 {
            let (s, d) = (s.add(4 * i), d.add(4 * i));
            let a = _mm_xor_si128(_mm_loadu_si128(s), k);
            let b = _mm_xor_si128(_mm_loadu_si128(s.add(1)), k);
            let c = _mm_xor_si128(_mm_loadu_si128(s.add(2)), k);
            let e = _mm_xor_si128(_mm_loadu_si128(s.add(3)), k);
            _mm_storeu_si128(d, a);
            _mm_storeu_si128(d.add(1), b);
            _mm_storeu_si128(d.add(2), c);
            _mm_storeu_si128(d.add(3), e);
            seen = _mm_or_si128(seen, _mm_or_si128(_mm_or_si128(a, b), _mm_or_si128(c, e)));
        }
        // The high bit of every byte: all clear means all ASCII.
        _mm_movemask_epi8(seen) == 0
    }
}

/// Bytes from which [`copy_masked_avx2`] is worth its dispatch (and the
/// multiple of which it copies).
#[cfg(target_arch = "x86_64")]
const WIDE: usize = 128;

/// [`copy_masked_uninit_impl`] from [`WIDE`] bytes on a CPU with AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(never)]
fn copy_masked_wide<const TRACK: bool>(
    dst: &mut [MaybeUninit<u8>],
    src: &[u8],
    key: [u8; 4],
    key64: u64,
) -> u64 {
    let n = src.len() / WIDE * WIDE;
    debug_assert!(std::arch::is_x86_feature_detected!("avx2"));
    // SAFETY: every caller checked that the CPU has AVX2.
    #[allow(unsafe_code)]
    let seen = unsafe { copy_masked_avx2::<TRACK>(&mut dst[..n], &src[..n], key64) };
    // `n` is a multiple of 4: the key's phase carries on.
    let tail = copy_masked_words::<TRACK>(&mut dst[n..], &src[n..], key, key64);
    if seen {
        HIGH_BITS
    } else {
        tail
    }
}

/// Copies `src` (a multiple of [`WIDE`] bytes long) into `dst` (as long)
/// while XORing it with `key64` (the rotated key twice), 32 bytes to a
/// register; with `TRACK`, true if some byte written is not ASCII. Half
/// the instructions per byte of the SSE2 loops: with them ASCII text
/// decoded at 41 GB/s at 16 KiB (0.65-0.8x the plain unmasking copy),
/// with this at 56.
///
/// # Safety
///
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
#[allow(unsafe_code)]
unsafe fn copy_masked_avx2<const TRACK: bool>(
    dst: &mut [MaybeUninit<u8>],
    src: &[u8],
    key64: u64,
) -> bool {
    use std::arch::x86_64::{
        __m256i, _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_or_si256, _mm256_set1_epi64x,
        _mm256_setzero_si256, _mm256_storeu_si256, _mm256_xor_si256,
    };
    assert!(dst.len() == src.len() && src.len() % WIDE == 0);
    let (s, d) = (
        src.as_ptr().cast::<__m256i>(),
        dst.as_mut_ptr().cast::<__m256i>(),
    );
    // SAFETY: the caller checked AVX2. Block `i` reads `src[128 * i..128 *
    // (i + 1)]` and writes the same range of `dst`, both in bounds (`i <
    // len / 128`, equal lengths, multiples of 128, checked above);
    // unaligned loads/stores, and writing `MaybeUninit<u8>` is always
    // allowed. Covered by the proptests below, whose lengths reach past
    // 256 bytes (every byte compared, every verdict against `is_ascii`).
    unsafe {
        let k = _mm256_set1_epi64x(key64 as i64);
        let mut seen = _mm256_setzero_si256();
        for i in 0..src.len() / WIDE {
            let (s, d) = (s.add(4 * i), d.add(4 * i));
            let a = _mm256_xor_si256(_mm256_loadu_si256(s), k);
            let b = _mm256_xor_si256(_mm256_loadu_si256(s.add(1)), k);
            let c = _mm256_xor_si256(_mm256_loadu_si256(s.add(2)), k);
            let e = _mm256_xor_si256(_mm256_loadu_si256(s.add(3)), k);
            _mm256_storeu_si256(d, a);
            _mm256_storeu_si256(d.add(1), b);
            _mm256_storeu_si256(d.add(2), c);
            _mm256_storeu_si256(d.add(3), e);
            if TRACK {
                seen = _mm256_or_si256(
                    seen,
                    _mm256_or_si256(_mm256_or_si256(a, b), _mm256_or_si256(c, e)),
                );
            }
        }
        // The high bit of every byte: any set means not all ASCII.
        TRACK && _mm256_movemask_epi8(seen) != 0
    }
}

/// The word-wise loop of [`copy_masked_uninit_impl`], `key` (and `key64`,
/// the key twice) already rotated to the first byte of `src`.
#[inline(always)]
fn copy_masked_words<const TRACK: bool>(
    dst: &mut [MaybeUninit<u8>],
    src: &[u8],
    key: [u8; 4],
    key64: u64,
) -> u64 {
    let mut seen = 0u64;
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (dc, sc) in (&mut d).zip(&mut s) {
        let word = u64::from_le_bytes([sc[0], sc[1], sc[2], sc[3], sc[4], sc[5], sc[6], sc[7]]);
        let word = word ^ key64.to_le();
        if TRACK {
            seen |= word;
        }
        for (o, b) in dc.iter_mut().zip(word.to_le_bytes()) {
            o.write(b);
        }
    }
    for (i, (db, sb)) in d.into_remainder().iter_mut().zip(s.remainder()).enumerate() {
        let b = sb ^ key[i % 4];
        if TRACK {
            seen |= u64::from(b);
        }
        db.write(b);
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scalar(buf: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[(offset + i) % 4];
        }
    }

    #[test]
    fn rfc_example_hello() {
        // RFC 6455 §5.7: a masked "Hello" with key 37 fa 21 3d.
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut masked = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut masked, key, 0);
        assert_eq!(&masked, b"Hello");
    }

    #[test]
    fn ascii_copy_spans_blocks() {
        // Several `ASCII_BLOCK`s, every start phase of the key, and one
        // non-ASCII byte in the last block only.
        let key = [0x37, 0xfa, 0x21, 0x3d];
        for offset in 0..4 {
            let mut plain: Vec<u8> = (0..3 * ASCII_BLOCK + 77)
                .map(|i| (i % 95 + 32) as u8)
                .collect();
            let mut masked = plain.clone();
            scalar(&mut masked, key, offset);
            let mut out = vec![MaybeUninit::<u8>::uninit(); plain.len()];
            assert!(copy_masked_uninit_ascii(&mut out, &masked, key, offset));
            let out: Vec<u8> = out
                .iter()
                .map(|b| {
                    // SAFETY: copy_masked_uninit_ascii wrote every byte (same length).
                    #[allow(unsafe_code)]
                    unsafe {
                        b.assume_init()
                    }
                })
                .collect();
            assert_eq!(out, plain);
            let last = plain.len() - 3;
            plain[last] = 0xC3;
            let mut masked = plain.clone();
            scalar(&mut masked, key, offset);
            let mut out = vec![MaybeUninit::<u8>::uninit(); plain.len()];
            assert!(!copy_masked_uninit_ascii(&mut out, &masked, key, offset));
        }
    }

    /// Around and past [`WIDE`] (the AVX2 loop where the CPU has it), every
    /// key phase, with one non-ASCII byte in each position class: every
    /// byte written and every verdict checked.
    #[test]
    fn wide_copies_match_the_scalar_mask() {
        let key = [0x9d, 0x21, 0xe4, 0x07];
        let read = |out: &[MaybeUninit<u8>]| -> Vec<u8> {
            // SAFETY: the copy wrote every byte of `out` (same length as
            // its source), so each is initialized.
            #[allow(unsafe_code)]
            out.iter().map(|b| unsafe { b.assume_init() }).collect()
        };
        for len in [127, 128, 129, 255, 256, 257, 383, 1000] {
            for offset in 0..4 {
                for high in std::iter::once(None).chain((0..len).step_by(29).map(Some)) {
                    let mut plain: Vec<u8> = (0..len).map(|i| (i * 7 % 128) as u8).collect();
                    if let Some(at) = high {
                        plain[at] = 0x80 | (at as u8);
                    }
                    let mut masked = plain.clone();
                    scalar(&mut masked, key, offset);
                    let mut out = vec![MaybeUninit::<u8>::uninit(); len];
                    let ascii = copy_masked_uninit_ascii(&mut out, &masked, key, offset);
                    assert_eq!(read(&out), plain, "{len} {offset} {high:?}");
                    assert_eq!(ascii, high.is_none(), "{len} {offset} {high:?}");
                    let mut out = vec![MaybeUninit::<u8>::uninit(); len];
                    copy_masked_uninit(&mut out, &masked, key, offset);
                    assert_eq!(read(&out), plain, "{len} {offset} {high:?}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn word_wise_equals_scalar(data in proptest::collection::vec(any::<u8>(), 0..300),
                                   key in any::<[u8; 4]>(), offset in 0usize..64) {
            let mut a = data.clone();
            let mut b = data.clone();
            apply_mask(&mut a, key, offset);
            scalar(&mut b, key, offset);
            prop_assert_eq!(&a, &b);
            let mut c = vec![0; data.len()];
            copy_masked(&mut c, &data, key, offset);
            prop_assert_eq!(&c, &b);
            let mut u = vec![MaybeUninit::<u8>::uninit(); data.len()];
            copy_masked_uninit(&mut u, &data, key, offset);
            let u: Vec<u8> = u.iter().map(|b| {
                // SAFETY: copy_masked_uninit wrote every byte (same length).
                #[allow(unsafe_code)]
                unsafe { b.assume_init() }
            }).collect();
            prop_assert_eq!(&u, &b);
            let mut u = vec![MaybeUninit::<u8>::uninit(); data.len()];
            let ascii = copy_masked_uninit_ascii(&mut u, &data, key, offset);
            let u: Vec<u8> = u.iter().map(|b| {
                // SAFETY: copy_masked_uninit_ascii wrote every byte (same length).
                #[allow(unsafe_code)]
                unsafe { b.assume_init() }
            }).collect();
            prop_assert_eq!(&u, &b);
            prop_assert_eq!(ascii, b.is_ascii());
        }

        /// Unmasking text: the ASCII verdict is exact, whether the one
        /// non-ASCII byte (if any) falls in a word or in the tail.
        #[test]
        fn ascii_verdict_exact(plain in proptest::collection::vec(0u8..0x80, 0..300),
                               high in proptest::option::of((any::<usize>(), 0x80u8..=0xFF)),
                               key in any::<[u8; 4]>(), offset in 0usize..64) {
            let mut plain = plain;
            if let (Some((at, b)), false) = (high, plain.is_empty()) {
                let at = at % plain.len();
                plain[at] = b;
            }
            let mut masked = plain.clone();
            scalar(&mut masked, key, offset);
            let mut u = vec![MaybeUninit::<u8>::uninit(); plain.len()];
            let ascii = copy_masked_uninit_ascii(&mut u, &masked, key, offset);
            prop_assert_eq!(ascii, plain.is_ascii());
        }

        #[test]
        fn resumable_at_any_split(data in proptest::collection::vec(any::<u8>(), 0..300),
                                  key in any::<[u8; 4]>(), split in 0usize..300) {
            let split = split.min(data.len());
            let mut a = data.clone();
            let (x, y) = a.split_at_mut(split);
            apply_mask(x, key, 0);
            apply_mask(y, key, split);
            let mut b = data.clone();
            scalar(&mut b, key, 0);
            prop_assert_eq!(a, b);
        }
    }
}
