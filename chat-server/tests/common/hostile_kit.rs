//! The kit of `tests/hostile.rs`: the server as a child process (so its RSS
//! and thread count can be read from `/proc/<pid>/status` and it can be
//! killed whatever happens), a hand-rolled WebSocket client over a raw
//! `TcpStream` (so a test can send any byte sequence, malformed on purpose),
//! and the healthy pair whose latency every scenario measures.
//!
//! Only std and serde_json: the client framing is written out here rather
//! than borrowed from wsproto so a change in the library under test cannot
//! change what the attacker sends.

use serde_json::Value;
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The server under test: this build's binary, or `HOSTILE_SERVER_BIN`
/// (e.g. a release build, to tell a debug-build cost from a real one).
fn server_bin() -> String {
    std::env::var("HOSTILE_SERVER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_chat-server").to_owned())
}

/// Prints one measurement line; `cargo test -- --nocapture` shows them.
macro_rules! note {
    ($($arg:tt)*) => { eprintln!("hostile: {}", format_args!($($arg)*)) };
}

/// The process-wide time origin for latency probes (sender and receiver
/// live in this process, so one monotonic clock serves both ends).
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

// ---------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------

/// A chat-server child process; killed on drop, also when a test panics.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
    /// What the server wrote to stderr after its address (the first 100
    /// lines).
    stderr: Arc<Mutex<Vec<String>>>,
    /// Run-queue waits of the server's long-lived threads: (when, thread,
    /// how long it was runnable but not running since the last sample).
    waits: Arc<Mutex<Vec<(Instant, u32, Duration)>>>,
    stop_waits: Arc<AtomicBool>,
}

impl Server {
    /// Starts the binary on a free port with `--quiet` and `args`.
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(server_bin())
            .args(["--addr", "127.0.0.1:0", "--quiet", "--ephemeral"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chat-server");
        let pid = child.id();
        let mut lines = BufReader::new(child.stderr.take().expect("stderr piped")).lines();
        let mut addr = None;
        for _ in 0..100 {
            let Some(Ok(line)) = lines.next() else { break };
            if let Some(rest) = line.strip_prefix("chat: listening on http://") {
                addr = rest.trim_end_matches('/').parse().ok();
                break;
            }
        }
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chat-server {args:?} did not print its address");
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        // With --quiet it must not log per connection (issue 10 item 7), so
        // whatever it says is kept for `Verdict::quiet` and passed on.
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                eprintln!("chat-server[{pid}]: {line}");
                let mut k = keep.lock().unwrap_or_else(|e| e.into_inner());
                if k.len() < 100 {
                    k.push(line);
                }
            }
        });
        let waits = Arc::new(Mutex::new(Vec::new()));
        let stop_waits = Arc::new(AtomicBool::new(false));
        sample_waits(pid, Arc::clone(&waits), Arc::clone(&stop_waits));
        Self {
            child,
            addr,
            pid,
            stderr,
            waits,
            stop_waits,
        }
    }

    /// The longest a server thread waited for a CPU within any 100 ms that
    /// overlaps `windows` (from `/proc/<pid>/task/<tid>/schedstat`).
    pub fn worst_wait(&self, windows: &[(Instant, Instant)]) -> Duration {
        let waits = self.waits.lock().unwrap_or_else(|e| e.into_inner());
        let span = Duration::from_millis(100);
        let mut worst = Duration::ZERO;
        for (i, (t, tid, _)) in waits.iter().enumerate() {
            if !windows.iter().any(|(a, b)| *a <= *t + span && *t <= *b) {
                continue;
            }
            let sum: Duration = waits[i..]
                .iter()
                .take_while(|(u, _, _)| *u <= *t + span)
                .filter(|(_, id, _)| id == tid)
                .map(|(_, _, w)| *w)
                .sum();
            worst = worst.max(sum);
        }
        worst
    }

    /// `VmRSS` in KiB (0 once the process is gone).
    pub fn rss_kib(&self) -> u64 {
        status_field(self.pid, "VmRSS:")
    }

    /// `Threads` of the server process.
    pub fn threads(&self) -> u64 {
        status_field(self.pid, "Threads:")
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Samples RSS and threads every 20 ms until the returned watch stops.
    pub fn watch(&self) -> Watch {
        Watch::start(self.pid)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_waits.store(true, Ordering::Release);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Samples, every 20 ms, how long each of the server's first 16 threads
/// (the long-lived ones: acceptor, reactors, flusher) waited on a run
/// queue, and records every wait over 2 ms.
fn sample_waits(pid: u32, waits: Arc<Mutex<Vec<(Instant, u32, Duration)>>>, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut last: HashMap<u32, u64> = HashMap::new();
        let mut tids: Vec<u32> = Vec::new();
        let mut listed = Instant::now() - Duration::from_secs(10);
        while !stop.load(Ordering::Acquire) {
            if listed.elapsed() >= Duration::from_secs(1) {
                listed = Instant::now();
                let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                    return;
                };
                tids = dir
                    .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect();
                tids.sort_unstable();
                tids.truncate(16);
            }
            let now = Instant::now();
            for &tid in &tids {
                let Ok(st) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))
                else {
                    continue;
                };
                let Some(wait) = st
                    .split_whitespace()
                    .nth(1)
                    .and_then(|w| w.parse::<u64>().ok())
                else {
                    continue;
                };
                if let Some(prev) = last.insert(tid, wait) {
                    let d = Duration::from_nanos(wait.saturating_sub(prev));
                    if d > Duration::from_millis(2) {
                        let mut w = waits.lock().unwrap_or_else(|e| e.into_inner());
                        if w.len() < 100_000 {
                            w.push((now, tid, d));
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}

fn status_field(pid: u32, field: &str) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Peak RSS and thread count of a process, sampled on a thread.
pub struct Watch {
    peak_rss: Arc<AtomicU64>,
    peak_threads: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Watch {
    fn start(pid: u32) -> Self {
        let peak_rss = Arc::new(AtomicU64::new(0));
        let peak_threads = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, t, s) = (
            Arc::clone(&peak_rss),
            Arc::clone(&peak_threads),
            Arc::clone(&stop),
        );
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Acquire) {
                r.fetch_max(status_field(pid, "VmRSS:"), Ordering::AcqRel);
                t.fetch_max(status_field(pid, "Threads:"), Ordering::AcqRel);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self {
            peak_rss,
            peak_threads,
            stop,
            handle: Some(handle),
        }
    }

    /// Peak RSS so far, KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.peak_rss.load(Ordering::Acquire)
    }

    /// The peak RSS cell, for a thread that must react to it.
    pub fn shared_peak(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.peak_rss)
    }

    /// Peak thread count so far.
    pub fn peak_threads(&self) -> u64 {
        self.peak_threads.load(Ordering::Acquire)
    }

    /// Stops sampling; returns (peak RSS KiB, peak threads).
    pub fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        (self.peak_rss_kib(), self.peak_threads())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

// ---------------------------------------------------------------------------
// Client framing (RFC 6455 §5.2): client frames are always masked (§5.3)
// ---------------------------------------------------------------------------

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// One client frame: masked, FIN as given, no RSV bits.
pub fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let b0 = if fin { 0x80 } else { 0 } | (opcode & 0x0f);
    frame_with(b0, true, payload)
}

/// A frame with a raw first byte (FIN, RSV, opcode) and a choice of masking.
pub fn frame_with(b0: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(b0);
    let m = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A masked text frame.
pub fn text(s: &str) -> Vec<u8> {
    frame(OP_TEXT, true, s.as_bytes())
}

/// A masked Close frame with `code` and `reason`.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    frame(OP_CLOSE, true, &p)
}

/// The upgrade request of a non-browser client (no `Origin`).
pub fn upgrade_request() -> String {
    "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .to_owned()
}

/// A frame from the server.
#[derive(Debug, Clone)]
pub struct Frame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The JSON of a text frame.
    pub fn json(&self) -> Option<Value> {
        (self.opcode == OP_TEXT)
            .then(|| serde_json::from_slice(&self.payload).ok())
            .flatten()
    }

    /// (code, reason) of a Close frame.
    pub fn close(&self) -> Option<(u16, String)> {
        if self.opcode != OP_CLOSE {
            return None;
        }
        if self.payload.len() < 2 {
            return Some((1005, String::new()));
        }
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        Some((
            code,
            String::from_utf8_lossy(&self.payload[2..]).into_owned(),
        ))
    }
}

/// Parses one server frame from `buf`: (frame, bytes used), or None when
/// more bytes are needed. A server frame must not be masked, but a test
/// client should still read one if it is.
fn parse_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (opcode, b1) = (buf[0] & 0x0f, buf[1]);
    let mut at = 2;
    let mut len = u64::from(b1 & 0x7f);
    if len == 126 {
        let b = buf.get(2..4)?;
        len = u64::from(u16::from_be_bytes([b[0], b[1]]));
        at = 4;
    } else if len == 127 {
        let b = buf.get(2..10)?;
        len = u64::from_be_bytes(b.try_into().ok()?);
        at = 10;
    }
    assert!(len <= 64 << 20, "server sent a frame claiming {len} bytes");
    let key = if b1 & 0x80 != 0 {
        let k: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(k)
    } else {
        None
    };
    let end = at + len as usize;
    let mut payload = buf.get(at..end)?.to_vec();
    if let Some(k) = key {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= k[i % 4];
        }
    }
    Some((Frame { opcode, payload }, end))
}

/// How a read ended without a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The server closed TCP (FIN).
    Eof,
    /// The server reset TCP (RST), or another socket error.
    Reset,
    /// Nothing within the deadline.
    Timeout,
}

/// What a hostile client finally got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A Close frame.
    Close(u16, String),
    /// TCP ended with no Close frame.
    Dropped(End),
    /// Nothing yet (a failure for every scenario).
    Nothing,
}

impl Answer {
    pub fn code(&self) -> Option<u16> {
        match self {
            Answer::Close(c, _) => Some(*c),
            _ => None,
        }
    }
}

/// A WebSocket client over a raw socket: it can send anything.
pub struct Ws {
    pub stream: TcpStream,
    rbuf: Vec<u8>,
    /// Frames read and skipped by `expect_close` / `next_json`.
    pub skipped: usize,
}

impl Ws {
    /// Connects and completes the handshake (anything the server sent
    /// after the 101 head is kept).
    pub fn connect(addr: SocketAddr) -> Self {
        Self::try_connect(addr, Duration::from_secs(10)).expect("websocket handshake")
    }

    pub fn try_connect(addr: SocketAddr, wait: Duration) -> io::Result<Self> {
        let mut ws = Self::tcp(addr, wait)?;
        ws.stream.write_all(upgrade_request().as_bytes())?;
        ws.read_upgrade(Instant::now() + wait)?;
        Ok(ws)
    }

    /// A TCP connection with no handshake yet.
    pub fn tcp(addr: SocketAddr, wait: Duration) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, wait)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(Self {
            stream,
            rbuf: Vec::new(),
            skipped: 0,
        })
    }

    /// Reads the response head; fails unless it is a 101.
    pub fn read_upgrade(&mut self, deadline: Instant) -> io::Result<()> {
        let head = self.read_http_head(deadline)?;
        if head.starts_with("HTTP/1.1 101") {
            Ok(())
        } else {
            Err(io::Error::other(format!("not upgraded: {head:?}")))
        }
    }

    /// Reads an HTTP response head (kept bytes after it stay buffered).
    pub fn read_http_head(&mut self, deadline: Instant) -> io::Result<String> {
        loop {
            if let Some(i) = self.rbuf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.rbuf[..i]).into_owned();
                self.rbuf.drain(..i + 4);
                return Ok(head);
            }
            match self.fill(deadline) {
                Ok(()) => {}
                Err(End::Timeout) => return Err(io::ErrorKind::TimedOut.into()),
                Err(_) => return Err(io::ErrorKind::UnexpectedEof.into()),
            }
        }
    }

    /// Reads more bytes into the buffer, waiting at most until `deadline`.
    fn fill(&mut self, deadline: Instant) -> Result<(), End> {
        let mut chunk = [0u8; 64 << 10];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(End::Timeout);
            }
            let _ = self
                .stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))));
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(End::Eof),
                Ok(n) => {
                    self.rbuf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Err(End::Reset),
            }
        }
    }

    /// Reads `n` bytes at most (a slow reader's sip); returns the count.
    pub fn sip(&mut self, n: usize, wait: Duration) -> Result<usize, End> {
        let mut chunk = vec![0u8; n];
        let _ = self.stream.set_read_timeout(Some(wait));
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(End::Eof),
            Ok(k) => {
                self.rbuf.extend_from_slice(&chunk[..k]);
                Ok(k)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(0)
            }
            Err(_) => Err(End::Reset),
        }
    }

    /// The next complete frame already buffered, if any.
    pub fn buffered_frame(&mut self) -> Option<Frame> {
        let (f, used) = parse_frame(&self.rbuf)?;
        self.rbuf.drain(..used);
        Some(f)
    }

    /// The next frame, waiting at most until `deadline`.
    pub fn next_frame(&mut self, deadline: Instant) -> Result<Frame, End> {
        loop {
            if let Some(f) = self.buffered_frame() {
                return Ok(f);
            }
            self.fill(deadline)?;
        }
    }

    /// The next text frame as JSON (control frames skipped; a Ping is not
    /// answered), or how the connection ended.
    pub fn next_json(&mut self, deadline: Instant) -> Result<Value, Answer> {
        loop {
            match self.next_frame(deadline) {
                Ok(f) => {
                    if let Some(v) = f.json() {
                        return Ok(v);
                    }
                    if let Some((c, r)) = f.close() {
                        return Err(Answer::Close(c, r));
                    }
                    self.skipped += 1;
                }
                Err(End::Timeout) => return Err(Answer::Nothing),
                Err(e) => return Err(Answer::Dropped(e)),
            }
        }
    }

    /// Reads (skipping everything else) until a Close frame or the end of
    /// TCP, at most until `deadline`.
    pub fn expect_close(&mut self, deadline: Instant) -> Answer {
        loop {
            match self.next_frame(deadline) {
                Ok(f) => match f.close() {
                    Some((c, r)) => return Answer::Close(c, r),
                    None => self.skipped += 1,
                },
                Err(End::Timeout) => return Answer::Nothing,
                Err(e) => return Answer::Dropped(e),
            }
        }
    }

    /// After a Close: true when TCP ends (FIN or RST) before `deadline`.
    pub fn expect_eof(&mut self, deadline: Instant) -> bool {
        loop {
            match self.next_frame(deadline) {
                Ok(_) => self.skipped += 1,
                Err(End::Timeout) => return false,
                Err(_) => return true,
            }
        }
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn send_json(&mut self, v: &Value) -> io::Result<()> {
        self.send(&text(&v.to_string()))
    }

    /// Connects, joins as `nick` and returns the welcome.
    pub fn join(addr: SocketAddr, nick: &str) -> (Self, Value) {
        let mut ws = Self::connect(addr);
        ws.send_json(&serde_json::json!({"type": "join", "nick": nick}))
            .expect("send join");
        let w = ws
            .next_json(Instant::now() + Duration::from_secs(10))
            .unwrap_or_else(|a| panic!("{nick}: no welcome: {a:?}"));
        assert_eq!(w["type"], "welcome", "{nick}: {w}");
        (ws, w)
    }
}

// ---------------------------------------------------------------------------
// The healthy pair
// ---------------------------------------------------------------------------

/// Latencies and notices seen by one healthy client.
#[derive(Debug, Default)]
struct Seen {
    /// seq -> latency, for probes from the healthy sender.
    probes: HashMap<u64, Duration>,
    /// `left` notices: nick and when it arrived.
    lefts: Vec<(String, Instant)>,
    /// How the connection ended, if it did.
    ended: Option<String>,
}

/// A healthy sender and receiver in the room. The sender posts probes
/// whose text carries the send time; both read everything (the sender's
/// copy is its ack), so a run of N probes gives 2N latency samples.
pub struct Healthy {
    pub sender_nick: String,
    pub receiver_nick: String,
    writer: Arc<Mutex<TcpStream>>,
    seen: [Arc<Mutex<Seen>>; 2],
    stop: Arc<AtomicBool>,
    readers: Vec<JoinHandle<()>>,
    sent: u64,
    /// When probes were in flight: (first sent, last due + 500 ms).
    windows: Vec<(Instant, Instant)>,
    /// Stalls of this test process itself: (when, how long), over 5 ms.
    stalls: Arc<Mutex<Vec<(Instant, Duration)>>>,
}

/// What a probe run measured.
#[derive(Debug)]
pub struct ProbeReport {
    /// The longest the test process itself could not run while probing.
    pub worst_stall: Duration,
    pub sent: u64,
    pub received: usize,
    pub acked: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// A scenario's failures, collected so one run reports all of them.
pub struct Verdict {
    scenario: &'static str,
    failures: Vec<String>,
}

impl Verdict {
    pub fn new(scenario: &'static str) -> Self {
        Self {
            scenario,
            failures: Vec::new(),
        }
    }

    /// Records a failure.
    pub fn fail(&mut self, what: String) {
        self.failures.push(what);
    }

    /// Records a failure unless `ok`.
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(what());
        }
    }

    /// Every probe reached both healthy clients with p99 under the bound,
    /// and neither was disconnected.
    pub fn healthy(&mut self, h: &Healthy, server: &Server) {
        let r = h.report(Duration::from_secs(5));
        let server_wait = server.worst_wait(&h.windows);
        let sc = self.scenario;
        note!(
            "{sc}: healthy probes sent {} received {} acked {} p50 {:?} p99 {:?} max {:?} (test process stalled up to {:?})",
            r.sent,
            r.received,
            r.acked,
            r.p50,
            r.p99,
            r.max,
            r.worst_stall
        );
        self.check(
            r.received as u64 == r.sent && r.acked as u64 == r.sent,
            || format!("the healthy pair missed messages: {r:?}"),
        );
        let bound = p99_bound();
        // A p99 over the bound counts against the server unless the machine
        // was overloaded while probing: this process itself kept off the
        // CPU, or a server thread runnable but waiting for one, for half the
        // bound or more (time a server spends *running* always counts).
        // Even then, 10x the bound is a failure.
        note!(
            "{sc}: server threads waited for a CPU up to {server_wait:?} per 100 ms while probing"
        );
        let overloaded = r.worst_stall >= bound / 2 || server_wait >= bound / 2;
        if r.p99 >= bound && overloaded && r.p99 < bound * 10 {
            note!(
                "{sc}: p99 {:?} over {bound:?} NOT counted: the machine was overloaded (test process stalled {:?}, a server thread waited {server_wait:?} for a CPU)",
                r.p99,
                r.worst_stall
            );
        } else {
            self.check(r.p99 < bound, || {
                format!("healthy p99 {:?} over {bound:?}: {r:?}", r.p99)
            });
        }
        for (who, s) in [&h.sender_nick, &h.receiver_nick].iter().zip(&h.seen) {
            let ended = s.lock().unwrap_or_else(|e| e.into_inner()).ended.clone();
            self.check(ended.is_none(), || {
                format!("healthy {who} was disconnected: {ended:?}")
            });
        }
    }

    /// The server, run with `--quiet`, logged nothing per connection (and
    /// did not panic).
    pub fn quiet(&mut self, server: &Server) {
        // Let the reader thread catch up with the last lines.
        std::thread::sleep(Duration::from_millis(50));
        let lines = server
            .stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        note!(
            "{}: server stderr under --quiet: {} lines",
            self.scenario,
            lines.len()
        );
        self.check(lines.is_empty(), || {
            format!(
                "--quiet server wrote {} lines to stderr, first: {:?}",
                lines.len(),
                &lines[..lines.len().min(3)]
            )
        });
    }

    /// The server's peak RSS stayed under `bound_kib`.
    pub fn rss(&mut self, peak_kib: u64, bound_kib: u64) {
        note!(
            "{}: server peak RSS {} (bound {})",
            self.scenario,
            mib(peak_kib),
            mib(bound_kib)
        );
        self.check(peak_kib < bound_kib, || {
            format!(
                "server RSS peaked at {}, over {}",
                mib(peak_kib),
                mib(bound_kib)
            )
        });
    }

    /// Panics with every failure recorded.
    pub fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{}: {} failure(s):\n  {}",
            self.scenario,
            self.failures.len(),
            self.failures.join("\n  ")
        );
    }
}

/// The p99 bound (DESIGN/issue: 50 ms); `HOSTILE_P99_MS` raises it on a
/// machine known to be overloaded.
pub fn p99_bound() -> Duration {
    let ms = std::env::var("HOSTILE_P99_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    Duration::from_millis(ms)
}

impl Healthy {
    /// Joins `hs-<tag>` (sender) and `hr-<tag>` (receiver).
    pub fn join(addr: SocketAddr, tag: &str) -> Self {
        let sender_nick = format!("hs-{tag}");
        let receiver_nick = format!("hr-{tag}");
        let (s, _) = Ws::join(addr, &sender_nick);
        let (r, _) = Ws::join(addr, &receiver_nick);
        let writer = Arc::new(Mutex::new(s.stream.try_clone().expect("clone")));
        let r_writer = Arc::new(Mutex::new(r.stream.try_clone().expect("clone")));
        let stop = Arc::new(AtomicBool::new(false));
        let seen = [Arc::default(), Arc::default()];
        let stalls = Arc::new(Mutex::new(Vec::new()));
        let mut readers = vec![canary(Arc::clone(&stop), Arc::clone(&stalls))];
        let reader_threads =
            [(s, &writer), (r, &r_writer)]
                .into_iter()
                .zip(&seen)
                .map(|((ws, w), seen)| {
                    let (w, seen, stop) = (Arc::clone(w), Arc::clone(seen), Arc::clone(&stop));
                    let from = sender_nick.clone();
                    std::thread::spawn(move || read_loop(ws, &w, &seen, &stop, &from))
                });
        readers.extend(reader_threads);
        Self {
            sender_nick,
            receiver_nick,
            writer,
            seen,
            stop,
            readers,
            sent: 0,
            windows: Vec::new(),
            stalls,
        }
    }

    /// Posts `n` probes, one every `every` (absolute schedule), on a thread.
    pub fn probe(&mut self, n: u64, every: Duration) -> JoinHandle<()> {
        let w = Arc::clone(&self.writer);
        let now = Instant::now();
        self.windows
            .push((now, now + every * n as u32 + Duration::from_millis(500)));
        let first = self.sent;
        self.sent += n;
        std::thread::spawn(move || {
            let start = Instant::now();
            for i in 0..n {
                let at = start + every * i as u32;
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                let micros = epoch().elapsed().as_micros();
                let msg = serde_json::json!({
                    "type": "message",
                    "text": format!("probe {} {micros}", first + i),
                });
                let bytes = text(&msg.to_string());
                let mut s = w.lock().unwrap_or_else(|e| e.into_inner());
                if s.write_all(&bytes).is_err() {
                    return;
                }
            }
        })
    }

    /// The standard load: 50 probes at 20/s.
    pub fn probe_standard(&mut self) -> JoinHandle<()> {
        self.probe(50, Duration::from_millis(50))
    }

    /// Waits (at most `wait`) for every probe sent so far to arrive at both
    /// ends, then reports.
    pub fn report(&self, wait: Duration) -> ProbeReport {
        let deadline = Instant::now() + wait;
        loop {
            let done = self.seen.iter().all(|s| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                s.probes.len() as u64 >= self.sent || s.ended.is_some()
            });
            if done || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut all = Vec::new();
        let counts: Vec<usize> = self
            .seen
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                all.extend(s.probes.values().copied());
                s.probes.len()
            })
            .collect();
        all.sort();
        let pick = |q: f64| {
            if all.is_empty() {
                return Duration::MAX;
            }
            // Nearest rank.
            let rank = ((q * all.len() as f64).ceil() as usize).clamp(1, all.len());
            all[rank - 1]
        };
        let worst_stall = self
            .stalls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(t, _)| self.windows.iter().any(|(a, b)| a <= t && t <= b))
            .map(|(_, d)| *d)
            .max()
            .unwrap_or_default();
        ProbeReport {
            worst_stall,
            sent: self.sent,
            acked: counts[0],
            received: counts[1],
            p50: pick(0.50),
            p99: pick(0.99),
            max: all.last().copied().unwrap_or(Duration::MAX),
        }
    }

    /// When the receiver saw `left` for `nick`, if it did.
    pub fn left_at(&self, nick: &str) -> Option<Instant> {
        let s = self.seen[1].lock().unwrap_or_else(|e| e.into_inner());
        s.lefts.iter().find(|(n, _)| n == nick).map(|(_, t)| *t)
    }

    /// Waits until the receiver has seen `left` for every nick in `nicks`.
    pub fn wait_lefts(&self, nicks: &[String], deadline: Instant) -> Vec<Option<Instant>> {
        loop {
            let got: Vec<Option<Instant>> = nicks.iter().map(|n| self.left_at(n)).collect();
            if got.iter().all(Option::is_some) || Instant::now() >= deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Healthy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

/// A thread that sleeps 2 ms at a time and records each oversleep past
/// 5 ms: when this process cannot run, neither can the latency it measures,
/// so a probe delayed during such a stall says the machine is overloaded,
/// not that the server is slow.
fn canary(stop: Arc<AtomicBool>, stalls: Arc<Mutex<Vec<(Instant, Duration)>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let tick = Duration::from_millis(2);
        while !stop.load(Ordering::Acquire) {
            let t = Instant::now();
            std::thread::sleep(tick);
            let over = t.elapsed().saturating_sub(tick);
            if over > Duration::from_millis(5) {
                let mut s = stalls.lock().unwrap_or_else(|e| e.into_inner());
                if s.len() < 10_000 {
                    s.push((t, over));
                }
            }
        }
    })
}

fn read_loop(
    mut ws: Ws,
    writer: &Mutex<TcpStream>,
    seen: &Mutex<Seen>,
    stop: &AtomicBool,
    from: &str,
) {
    while !stop.load(Ordering::Acquire) {
        let f = match ws.next_frame(Instant::now() + Duration::from_millis(100)) {
            Ok(f) => f,
            Err(End::Timeout) => continue,
            Err(e) => {
                seen.lock().unwrap_or_else(|e| e.into_inner()).ended = Some(format!("{e:?}"));
                return;
            }
        };
        let now = Instant::now();
        match f.opcode {
            OP_PING => {
                let pong = frame(OP_PONG, true, &f.payload);
                let _ = writer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write_all(&pong);
            }
            OP_CLOSE => {
                seen.lock().unwrap_or_else(|e| e.into_inner()).ended =
                    Some(format!("close {:?}", f.close()));
                return;
            }
            _ => {}
        }
        // Probes and presence notices are small; skipping the parse of
        // bulk traffic keeps this (debug-built) client from adding its own
        // latency to what it measures.
        if f.payload.len() > 1024 {
            continue;
        }
        let Some(v) = f.json() else { continue };
        let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
        match v["type"].as_str() {
            Some("message") if v["from"] == from => {
                let text = v["text"].as_str().unwrap_or_default();
                let mut parts = text.split(' ').skip(1);
                let seq = parts.next().and_then(|p| p.parse::<u64>().ok());
                let micros = parts.next().and_then(|p| p.parse::<u64>().ok());
                if let (Some(seq), Some(micros)) = (seq, micros) {
                    let sent = Duration::from_micros(micros);
                    let lat = now.duration_since(epoch()).saturating_sub(sent);
                    s.probes.insert(seq, lat);
                }
            }
            Some("left") => {
                if let Some(n) = v["nick"].as_str() {
                    s.lefts.push((n.to_owned(), now));
                }
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Small tools
// ---------------------------------------------------------------------------

/// xorshift64*: deterministic bytes for garbage.
pub fn garbage(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Mebibytes, for messages.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Writes `batch` over and over until `until`, `stop()` or a socket error,
/// resuming a partial write where it stopped so the stream stays
/// frame-aligned. Returns the bytes written and when the socket failed.
pub fn flood(
    stream: &mut TcpStream,
    batch: &[u8],
    until: Instant,
    stop: &dyn Fn() -> bool,
) -> (u64, Option<Instant>) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let (mut off, mut total) = (0usize, 0u64);
    while Instant::now() < until && !stop() {
        match stream.write(&batch[off..]) {
            Ok(0) => return (total, Some(Instant::now())),
            Ok(n) => {
                total += n as u64;
                off = (off + n) % batch.len();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return (total, Some(Instant::now())),
        }
    }
    (total, None)
}

/// A joined client posting `text` every `every` and reading (discarding)
/// everything, so it is busy but never slow.
pub struct Spammer {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Spammer {
    /// Posts a room message of `text_` every `every`.
    pub fn start(addr: SocketAddr, nick: &str, text_: &str, every: Duration) -> Self {
        let msg = serde_json::json!({"type": "message", "text": text_});
        Self::sending(addr, nick, &msg, every)
    }

    /// Sends the request `msg` every `every`.
    pub fn sending(addr: SocketAddr, nick: &str, msg: &Value, every: Duration) -> Self {
        let (mut ws, _) = Ws::join(addr, nick);
        let mut w = ws.stream.try_clone().expect("clone");
        let stop = Arc::new(AtomicBool::new(false));
        let msg = text(&msg.to_string());
        let s1 = Arc::clone(&stop);
        let writer = std::thread::spawn(move || {
            let start = Instant::now();
            let mut i = 0u32;
            while !s1.load(Ordering::Acquire) {
                if w.write_all(&msg).is_err() {
                    return;
                }
                i += 1;
                std::thread::sleep((start + every * i).saturating_duration_since(Instant::now()));
            }
        });
        let s2 = Arc::clone(&stop);
        let reader = std::thread::spawn(move || {
            while !s2.load(Ordering::Acquire) {
                match ws.next_frame(Instant::now() + Duration::from_millis(100)) {
                    Ok(_) | Err(End::Timeout) => {}
                    Err(_) => return,
                }
            }
        });
        Self {
            stop,
            handles: vec![writer, reader],
        }
    }
}

impl Drop for Spammer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
