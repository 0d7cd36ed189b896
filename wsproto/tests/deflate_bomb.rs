//! Zip bombs: a small compressed frame that inflates far past
//! `max_message_size` is closed with 1009 having cost at most the limit.
//! (Its own test binary: it counts every allocation.)
#![cfg(feature = "deflate")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use wsproto::deflate::DeflateParams;
use wsproto::frame::{FrameHeader, MAX_HEADER_LEN};
use wsproto::{Config, Connection, Opcode, ProtocolError, Role};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The counters are global to the process: one measuring test at a time.
/// (Each test had a lock of its own, so a bomb's buffers growing on
/// another thread could land in the per-connection figure: 16 KiB more,
/// now and then, in CI.)
fn alone() -> std::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::SeqCst) + n;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

// SAFETY: every call is forwarded to `System` unchanged; the counters only
// observe sizes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as if the old block lived until the new one is made,
        // the worst case of a moving realloc.
        grew(new_size);
        let p = System.realloc(ptr, layout, new_size);
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        p
    }
}

#[global_allocator]
static A: Counting = Counting;

/// LSB-first bit writer for a deflate stream (RFC 1951 §3.1.1).
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u64, bits: u32) {
        self.acc |= value << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }
    /// A fixed-Huffman code, which goes out most significant bit first.
    fn code(&mut self, code: u64, bits: u32) {
        let mut rev = 0;
        for i in 0..bits {
            rev |= ((code >> i) & 1) << (bits - 1 - i);
        }
        self.put(rev, bits);
    }
}

/// A compressed message of `matches * 258 + 1` zero bytes: one fixed-
/// Huffman block of a literal 0 and `matches` copies of (length 258,
/// distance 1), the densest deflate there is (~1030:1), then the empty
/// stored block header that RFC 7692 §7.2.1 leaves when it strips
/// `00 00 ff ff`.
fn bomb(matches: usize) -> Vec<u8> {
    let mut b = Bits {
        out: Vec::new(),
        acc: 0,
        n: 0,
    };
    b.put(0b010, 3); // BFINAL 0, BTYPE 01 (fixed Huffman)
    b.code(0x30, 8); // literal 0
    for _ in 0..matches {
        b.code(0xC5, 8); // length code 285: 258
        b.code(0, 5); // distance code 0: 1
    }
    b.code(0, 7); // end of block
    b.put(0, 3); // stored block header, BFINAL 0
    if b.n > 0 {
        b.put(0, 8 - b.n);
    }
    b.out
}

fn masked_frame(payload: &[u8]) -> Vec<u8> {
    let key = [1, 2, 3, 4];
    let h = FrameHeader {
        fin: true,
        rsv: 0b100,
        opcode: Opcode::Binary,
        mask: Some(key),
        payload_len: payload.len() as u64,
    };
    let mut head = [0; MAX_HEADER_LEN];
    let n = h.encode(&mut head);
    let mut out = head[..n].to_vec();
    let start = out.len();
    out.extend_from_slice(payload);
    wsproto::mask::apply_mask(&mut out[start..], key, 0);
    out
}

/// Returns the extra peak memory `next_event` took, and checks the 1009.
fn detonate(matches: usize, limit: usize) -> usize {
    let _guard = alone();
    let wire = masked_frame(&bomb(matches));
    let mut s = Connection::new(Role::Server, Config::default().max_message_size(limit));
    s.enable_deflate(DeflateParams::default());
    s.receive(&wire);
    drop(wire);
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let t = Instant::now();
    let err = s.next_event().unwrap_err();
    let took = t.elapsed();
    let extra = PEAK.load(Ordering::SeqCst) - base;
    assert!(
        matches!(err, ProtocolError::MessageTooLarge { max, .. } if max == limit),
        "{err:?}"
    );
    let out = s.take_output();
    assert_eq!(&out[..4], &[0x88, out[1], 0x03, 0xf1], "close 1009 queued");
    eprintln!(
        "bomb of {} compressed bytes ({} inflated), limit {limit}: peak +{extra} bytes, closed in {took:?}",
        matches * 13 / 8,
        matches * 258 + 1
    );
    extra
}

#[test]
fn one_kib_frame_inflating_to_160_kib_with_a_64_kib_limit() {
    let limit = 64 << 10;
    let extra = detonate(630, limit); // ~1 KiB compressed
    assert!(extra <= limit + limit / 2 + (96 << 10), "peak +{extra}");
}

#[test]
fn frame_inflating_to_1_gib_costs_at_most_the_limit() {
    let limit = 8 << 20;
    let extra = detonate(4 << 20, limit); // 6.5 MiB compressed (fixed Huffman: 158:1), 1 GiB inflated
                                          // The output buffer is never more than the limit plus one byte (how
                                          // inflating tells "more" from "all"); while it last doubled, a moving
                                          // realloc held the half-size one too (counted here as if it always
                                          // moves); then the inflater: its state and a 32 KiB window.
    assert!(extra <= limit + limit / 2 + (96 << 10), "peak +{extra}");
}

/// What a connection holds for compression between messages, both
/// directions used once: with context takeover (the compressor and
/// decompressor with their windows) and without (nothing once
/// `shrink_buffers` runs, as a server does for idle connections).
#[test]
fn memory_per_connection_with_and_without_context_takeover() {
    let _guard = alone();
    let text = r#"{"type":"message","room":"lobby","text":"hello"}"#.repeat(20);
    let mut held = Vec::new();
    for (bits, nct) in [(15, false), (15, true), (9, false)] {
        let params = DeflateParams {
            send_window_bits: bits,
            recv_window_bits: bits,
            send_no_context_takeover: nct,
            recv_no_context_takeover: nct,
            ..DeflateParams::default()
        };
        let mut peer = Connection::new(Role::Client, Config::default());
        peer.enable_deflate(params.clone());
        peer.send_text(&text).unwrap();
        let from_peer = peer.take_output();
        // The least of three: the test harness's own threads may allocate
        // meanwhile (never free: that only adds).
        let bytes = (0..3)
            .map(|_| {
                let base = LIVE.load(Ordering::SeqCst);
                let mut s = Connection::new(Role::Server, Config::default());
                s.enable_deflate(params.clone());
                s.receive(&from_peer);
                assert!(s.next_event().unwrap().is_some());
                s.send_text(&text).unwrap();
                drop(s.take_output());
                s.shrink_buffers();
                LIVE.load(Ordering::SeqCst).saturating_sub(base)
            })
            .min()
            .unwrap_or(usize::MAX);
        eprintln!("window {bits}, no context takeover {nct}: {bytes} bytes held between messages");
        held.push(bytes);
    }
    assert!(held[1] < 4096, "{held:?}");
    assert!(held[0] > held[2] && held[0] < 512 << 10, "{held:?}");
}
