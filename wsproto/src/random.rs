//! Entropy for masking keys and handshake keys.

/// Fills `buf` from the operating system's CSPRNG.
///
/// If the OS source fails (it practically never does), falls back to a
/// SHA-1 of the clock, a counter and the stack address: weaker, but masking
/// keys only need to be unpredictable to a script in the browser, and a
/// panic would be worse.
pub(crate) fn fill(buf: &mut [u8]) {
    if getrandom::getrandom(buf).is_ok() {
        return;
    }
    use sha1::{Digest, Sha1};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    for chunk in buf.chunks_mut(20) {
        let mut h = Sha1::new();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        h.update(now.to_le_bytes());
        h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        h.update((chunk.as_ptr() as usize).to_le_bytes());
        let digest = h.finalize();
        chunk.copy_from_slice(&digest[..chunk.len()]);
    }
}

/// A ChaCha keystream (RFC 8439's block function) keyed once from the OS
/// CSPRNG: masking keys for one client connection.
///
/// RFC 6455 §5.3 (and §10.3) asks for keys a script cannot predict, drawn
/// from a strong source of entropy. The OS source per key, even fetched
/// 1,024 keys per call, cost ~20 ns per key on the machine the benches ran
/// on (the kernel's generator runs per byte), more than the rest of a
/// 16-byte frame; a ChaCha block yields 16 keys for ~0.1 µs.
/// 12 rounds, as `rand`'s `StdRng`: ChaCha's best known attacks reach 7.
#[derive(Debug)]
pub(crate) struct KeyStream {
    /// Key (words 4..12) and nonce (13..16) of the ChaCha state; word 12
    /// is the block counter.
    state: [u32; 16],
    block: [u8; 64],
    pos: usize,
}

/// Double rounds per block (12 rounds).
const DOUBLE_ROUNDS: usize = 6;

impl KeyStream {
    /// A stream keyed from the OS CSPRNG.
    pub(crate) fn new() -> Self {
        let mut seed = [0u8; 48];
        fill(&mut seed);
        let mut state = [0u32; 16];
        // "expand 32-byte k" (RFC 8439 §2.3).
        state[..4].copy_from_slice(&[0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574]);
        for (w, b) in state[4..16].iter_mut().zip(seed.chunks_exact(4)) {
            *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        state[12] = 0;
        Self {
            state,
            block: [0; 64],
            pos: 64,
        }
    }

    /// The next 4-byte masking key.
    #[inline]
    pub(crate) fn next_key(&mut self) -> [u8; 4] {
        if self.pos == self.block.len() {
            self.refill();
        }
        let k = &self.block[self.pos..self.pos + 4];
        self.pos += 4;
        [k[0], k[1], k[2], k[3]]
    }

    #[cold]
    fn refill(&mut self) {
        self.block = chacha_block(&self.state, DOUBLE_ROUNDS);
        // 2^32 blocks (256 GiB of keys) before the counter wraps; past
        // that, a fresh key from the OS rather than a repeated stream.
        self.state[12] = self.state[12].wrapping_add(1);
        if self.state[12] == 0 {
            *self = Self::new();
            self.block = chacha_block(&self.state, DOUBLE_ROUNDS);
            self.state[12] = 1;
        }
        self.pos = 0;
    }
}

/// The ChaCha block function (RFC 8439 §2.3) with `double_rounds` × 2
/// rounds: the serialized sum of the state and its permutation.
fn chacha_block(input: &[u32; 16], double_rounds: usize) -> [u8; 64] {
    #[inline(always)]
    fn quarter(x: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize) {
        x[a] = x[a].wrapping_add(x[b]);
        x[d] = (x[d] ^ x[a]).rotate_left(16);
        x[c] = x[c].wrapping_add(x[d]);
        x[b] = (x[b] ^ x[c]).rotate_left(12);
        x[a] = x[a].wrapping_add(x[b]);
        x[d] = (x[d] ^ x[a]).rotate_left(8);
        x[c] = x[c].wrapping_add(x[d]);
        x[b] = (x[b] ^ x[c]).rotate_left(7);
    }
    let mut x = *input;
    for _ in 0..double_rounds {
        quarter(&mut x, 0, 4, 8, 12);
        quarter(&mut x, 1, 5, 9, 13);
        quarter(&mut x, 2, 6, 10, 14);
        quarter(&mut x, 3, 7, 11, 15);
        quarter(&mut x, 0, 5, 10, 15);
        quarter(&mut x, 1, 6, 11, 12);
        quarter(&mut x, 2, 7, 8, 13);
        quarter(&mut x, 3, 4, 9, 14);
    }
    let mut out = [0u8; 64];
    for ((o, w), i) in out.chunks_exact_mut(4).zip(x).zip(input) {
        o.copy_from_slice(&w.wrapping_add(*i).to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8439 §2.3.2's test vector (20 rounds), for the block function.
    #[test]
    fn chacha20_block_rfc8439() {
        let mut state = [0u32; 16];
        state[..4].copy_from_slice(&[0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574]);
        for (i, w) in state[4..12].iter_mut().enumerate() {
            let b = (4 * i) as u8;
            *w = u32::from_le_bytes([b, b + 1, b + 2, b + 3]);
        }
        state[12] = 1;
        state[13] = 0x0900_0000;
        state[14] = 0x4a00_0000;
        state[15] = 0;
        let out = chacha_block(&state, 10);
        let want = "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e\
                    d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e";
        let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, want);
    }

    /// Two streams never agree, and one never repeats a key over a few
    /// blocks (a smoke test of the keying and the counter).
    #[test]
    fn keys_vary() {
        let mut a = KeyStream::new();
        let mut b = KeyStream::new();
        let ka: Vec<[u8; 4]> = (0..256).map(|_| a.next_key()).collect();
        let kb: Vec<[u8; 4]> = (0..256).map(|_| b.next_key()).collect();
        assert_ne!(ka, kb);
        let distinct: std::collections::HashSet<_> = ka.iter().collect();
        assert!(distinct.len() > 250, "{} distinct of 256", distinct.len());
    }
}
