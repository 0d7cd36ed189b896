//! permessage-deflate (RFC 7692) beside the uncompressed path, on the same
//! bytes: chat-like JSON messages of 64 B, 256 B, 1 KiB and 4 KiB, and one
//! 1 MiB text.
//!
//! Rows per group (`deflate/<workload>`), throughput in uncompressed
//! payload bytes, so plain and compressed rows compare directly:
//! - `encode/plain`, `encode/takeover`, `encode/no_takeover`: a server
//!   `Connection` sends every message (`send_text`, output taken), without
//!   deflate, with it and context takeover, with it and
//!   `server_no_context_takeover`;
//! - `decode/plain`, `decode/takeover`, `decode/no_takeover`: a client
//!   `Connection` receives those bytes and hands out every message
//!   (`next_event_ref`), inflating where they are compressed.
//!
//! Every iteration starts from fresh connections (a context-takeover
//! stream only decodes from its start). Before timing, every row is
//! checked to give back the exact messages, and the compression ratio
//! (payload bytes / bytes on the wire, headers included) is printed.
//! Then the memory one connection holds between messages is measured with
//! a counting global allocator (this bench is its own binary).
//!
//! Times are the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall
//! time: on a shared machine that is what a message costs, whoever else
//! holds the core.
//!
//! Run: `cargo bench -p benches --bench deflate` (about two minutes), then
//! `benches/scripts/deflate_table.py` for the tables.

use benches::Rng;
use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use wsproto::deflate::DeflateParams;
use wsproto::{Config, Connection, EventRef, Role};

// ---- a counting allocator, for memory per connection -------------------

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
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
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grew(new_size);
        let p = System.realloc(ptr, layout, new_size);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        p
    }
}

#[global_allocator]
static A: Counting = Counting;

// ---- CPU time, not wall time ---------------------------------------------

/// Times with the thread's CPU clock (`CLOCK_THREAD_CPUTIME_ID`): on a
/// shared, loaded machine the wall clock also counts the time other tasks
/// held the core; CPU time is what the work cost.
struct ThreadCpu;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant
    // every Linux supports.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for ThreadCpu {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

/// Nanoseconds of CPU, bytes per CPU second.
struct CpuFormatter;

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (div, unit) = if typical < 1e3 {
            (1.0, "ns cpu")
        } else if typical < 1e6 {
            (1e3, "µs cpu")
        } else {
            (1e6, "ms cpu")
        };
        values.iter_mut().for_each(|v| *v /= div);
        unit
    }
    fn scale_throughputs(&self, _: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let n = match t {
            Throughput::Bytes(n) | Throughput::BytesDecimal(n) | Throughput::Elements(n) => {
                *n as f64
            }
        };
        values.iter_mut().for_each(|v| *v = n / *v); // per ns = GB/s
        "GB/s cpu"
    }
    fn scale_for_machines(&self, _: &mut [f64]) -> &'static str {
        "ns"
    }
}

// ---- workloads -------------------------------------------------------------

/// Words for chat text: common English words and a few chat tokens, drawn
/// with a skew (earlier words more often), as chat is.
const WORDS: &[&str] = &[
    "the", "to", "and", "a", "I", "you", "it", "is", "that", "of", "in", "for", "on", "this",
    "with", "we", "be", "have", "are", "not", "just", "so", "but", "can", "do", "what", "was",
    "if", "at", "about", "me", "my", "all", "like", "will", "get", "there", "know", "think", "yes",
    "no", "ok", "lol", "thanks", "hey", "good", "time", "now", "today", "tomorrow", "meeting",
    "deploy", "server", "build", "release", "review", "merge", "branch", "test", "issue", "fixed",
    "broken", "again", "please", "sorry", "maybe", "later", "morning", "coffee", "lunch",
    "weekend", "really", "great", "nice", "sure", "right", "here", "see", "look", "go", "going",
    "back", "new", "one", "two", "three", "people", "room", "chat", "message", "send", "read",
    "write", "question", "answer", "idea", "plan", "done", "ready", "wait", "still", "already",
    "because", "should", "would", "could", "need", "want", "make",
];

const NICKS: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "mallory",
];
const ROOMS: &[&str] = &["lobby", "dev", "random", "ops"];

/// Chat text of exactly `len` bytes (ASCII) from the skewed word list.
fn words(rng: &mut Rng, len: usize) -> String {
    let mut s = String::with_capacity(len + 16);
    while s.len() < len {
        // Skew: the minimum of two draws favours the front of the list.
        let a = rng.next() as usize % WORDS.len();
        let b = rng.next() as usize % WORDS.len();
        if !s.is_empty() {
            s.push(if rng.next().is_multiple_of(12) {
                ','
            } else {
                ' '
            });
            if s.ends_with(',') {
                s.push(' ');
            }
        }
        s.push_str(WORDS[a.min(b)]);
    }
    s.truncate(len);
    s
}

/// One chat line as the chat server sends it, exactly `size` bytes: the
/// fullest envelope that leaves at least a quarter of it for the text (a
/// 64-byte line has room only for a short one).
fn chat_message(rng: &mut Rng, seq: u64, size: usize) -> String {
    let room = ROOMS[rng.next() as usize % ROOMS.len()];
    let from = NICKS[rng.next() as usize % NICKS.len()];
    let heads = [
        format!(r#"{{"type":"message","room":"{room}","from":"{from}","id":{seq},"text":""#),
        format!(r#"{{"type":"message","from":"{from}","text":""#),
        r#"{"text":""#.to_string(),
    ];
    let tail = r#""}"#;
    let head = heads
        .iter()
        .find(|h| h.len() + tail.len() + size / 4 <= size)
        .unwrap_or(&heads[2]);
    let text = words(rng, size.saturating_sub(head.len() + tail.len()));
    format!("{head}{text}{tail}")
}

struct Load {
    name: String,
    messages: Vec<String>,
}

fn workloads() -> Vec<Load> {
    let mut out = Vec::new();
    for size in [64, 256, 1024, 4096] {
        let mut rng = Rng(size as u64 * 7 + 3);
        // About 1 MiB of messages per iteration (at least 256 of them).
        let n = ((1 << 20) / size).max(256);
        let messages = (0..n as u64)
            .map(|i| chat_message(&mut rng, 1000 + i, size))
            .collect();
        out.push(Load {
            name: format!("chat_json/{size}"),
            messages,
        });
    }
    let mut rng = Rng(1 << 20);
    let mut text = String::new();
    while text.len() < 1 << 20 {
        let line = rng.next() as usize % 60 + 20;
        text.push_str(&words(&mut rng, line));
        text.push_str(".\n");
    }
    text.truncate(1 << 20);
    out.push(Load {
        name: "text/1048576".into(),
        messages: vec![text],
    });
    out
}

// ---- the rows --------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    Takeover,
    NoTakeover,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Plain, Mode::Takeover, Mode::NoTakeover];

    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Takeover => "takeover",
            Mode::NoTakeover => "no_takeover",
        }
    }

    /// The agreed parameters (the same on both sides): level 6, 15-bit
    /// windows, the library's default thresholds.
    fn params(self) -> Option<DeflateParams> {
        let nct = self == Mode::NoTakeover;
        (self != Mode::Plain).then(|| DeflateParams {
            send_no_context_takeover: nct,
            recv_no_context_takeover: nct,
            ..DeflateParams::default()
        })
    }

    fn conn(self, role: Role) -> Connection {
        let config = Config::default().max_message_size(4 << 20);
        let mut c = Connection::new(role, config);
        if let Some(p) = self.params() {
            c.enable_deflate(p);
        }
        c
    }
}

/// A server sends every message; the wire bytes.
fn encode(mode: Mode, msgs: &[String], out: &mut Vec<u8>) {
    out.clear();
    let mut s = mode.conn(Role::Server);
    for m in msgs {
        s.send_text(m).expect("an open connection");
        out.extend_from_slice(s.pending_output());
        let n = s.pending_output().len();
        s.consume_output(n);
    }
}

/// A client receives `wire` and hands every message to `sink`.
fn decode(mode: Mode, wire: &[u8], mut sink: impl FnMut(&str)) {
    let mut c = mode.conn(Role::Client);
    for chunk in wire.chunks(64 << 10) {
        c.receive(chunk);
        while let Some(ev) = c.next_event_ref().expect("valid frames") {
            match ev {
                EventRef::Text(t) => sink(t),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

fn rows(c: &mut Criterion<ThreadCpu>) {
    for load in workloads() {
        let total: usize = load.messages.iter().map(String::len).sum();
        let mut wires = Vec::new();
        for mode in Mode::ALL {
            let mut wire = Vec::new();
            encode(mode, &load.messages, &mut wire);
            let mut i = 0;
            decode(mode, &wire, |t| {
                assert_eq!(t, load.messages[i], "{} {}", load.name, mode.name());
                i += 1;
            });
            assert_eq!(i, load.messages.len());
            println!(
                "ratio deflate/{}/{}: {:.2} ({} payload bytes, {} on the wire, {} messages)",
                load.name,
                mode.name(),
                total as f64 / wire.len() as f64,
                total,
                wire.len(),
                load.messages.len()
            );
            wires.push(wire);
        }
        let mut group = c.benchmark_group(format!("deflate/{}", load.name));
        group
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_millis(1500))
            .sample_size(10)
            .throughput(Throughput::Bytes(total as u64));
        let mut out = Vec::with_capacity(total + total / 8 + 64);
        for mode in Mode::ALL {
            group.bench_function(format!("encode/{}", mode.name()), |b| {
                b.iter(|| encode(mode, &load.messages, black_box(&mut out)))
            });
        }
        for (mode, wire) in Mode::ALL.into_iter().zip(&wires) {
            group.bench_function(format!("decode/{}", mode.name()), |b| {
                b.iter(|| {
                    decode(mode, wire, |t| {
                        black_box(t);
                    })
                })
            });
        }
        group.finish();
    }
}

/// Memory one server connection holds between messages, after receiving
/// one compressed 1 KiB message and sending one, then `shrink_buffers` (as
/// chat-server does for idle connections): the live bytes the counting
/// allocator sees, the peer's own work done outside the window. The peak
/// is the most held while the two messages went through.
fn memory(_: &mut Criterion<ThreadCpu>) {
    let mut rng = Rng(42);
    let text = chat_message(&mut rng, 1, 1024);
    let cases: [(&str, Mode, u8); 5] = [
        ("plain", Mode::Plain, 15),
        ("takeover, 15-bit windows", Mode::Takeover, 15),
        ("takeover, 9-bit windows", Mode::Takeover, 9),
        ("no_takeover, 15-bit windows", Mode::NoTakeover, 15),
        ("no_takeover, 9-bit windows", Mode::NoTakeover, 9),
    ];
    for (name, mode, bits) in cases {
        let params = mode.params().map(|p| DeflateParams {
            send_window_bits: bits,
            recv_window_bits: bits,
            ..p
        });
        let conn = |role| {
            let mut c = Connection::new(role, Config::default());
            if let Some(p) = &params {
                c.enable_deflate(p.clone());
            }
            c
        };
        let mut peer = conn(Role::Client);
        peer.send_text(&text).expect("open");
        let from_peer = peer.take_output();
        let base = LIVE.load(Ordering::SeqCst);
        PEAK.store(base, Ordering::SeqCst);
        let mut s = conn(Role::Server);
        s.receive(&from_peer);
        let got = s.next_event().expect("valid").expect("a message");
        drop(got);
        s.send_text(&text).expect("open");
        drop(s.take_output());
        s.shrink_buffers();
        let held = LIVE.load(Ordering::SeqCst) - base;
        let peak = PEAK.load(Ordering::SeqCst) - base;
        println!(
            "memory per connection, {name}: {held} bytes held between messages, {peak} bytes peak"
        );
        drop(s);
    }
}

criterion_group! {
    name = deflate;
    config = Criterion::default().without_plots().with_measurement(ThreadCpu);
    targets = memory, rows
}
criterion_main!(deflate);
