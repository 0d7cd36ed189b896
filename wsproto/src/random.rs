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
