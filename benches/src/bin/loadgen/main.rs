//! Load generator for chat-server and the Node `ws` anchor
//! (`benches/node-anchor/`): one process, many WebSocket clients on wsproto's
//! sans-IO `Connection`, one level-triggered epoll loop. Run it pinned to a
//! core of its own; `benches/scripts/load.sh` runs every scenario against
//! both servers and prints them side by side.
//!
//! ```text
//! loadgen fanout|saturation|storm|idle|slow [--addr 127.0.0.1:8080[,ADDR...]]
//!         [--server-pid PID[,PID...]] [--label NAME] [--clients N] [--senders N]
//!         [--rate MSG_PER_S] [--window N] [--size BYTES] [--secs S]
//!         [--ramp CONN_PER_S] [--outstanding N] [--sources N]
//!         [--join-wait S] [--after-ramp S] [--settle S] [--drain S] [--slow N]
//!         [--deflate]
//! ```
//!
//! | scenario | default load |
//! |---|---|
//! | `fanout` | 100 clients, clients 0-9 send 1000 msg/s in all, 64 B, 5 s |
//! | `saturation` | 101 clients, client 0 keeps `--window 64` messages in flight (sent, not yet received by every client), 5 s |
//! | `storm` | 10,000 clients connect and join at `--ramp 2000`/s; from 1 s after the ramp, client 0 sends 2 msg/s for 5 s |
//! | `idle` | 10,000 clients join and stay (server RSS per connection); then 1 msg/s to all for 10 s |
//! | `slow` | 20 clients, the last never reads after its welcome; 1000 msg/s of 4 KiB |
//!
//! Every message sent in the measured window carries `<send ns> <sender>
//! <sender's seq>`; each client checks that it gets every sender's sequence
//! in order, so `lost = sent × recipients − received` counts each message
//! at each recipient (recipients: every client but the `--slow` ones, joined
//! or not). Latency is send to receive on one clock, late deliveries (after
//! the window, before `--drain` runs out) included.
//!
//! The last line is `RESULT key=value ...` for the bench script. The
//! generator's own CPU over the window (`gen_cpu_pct`, from
//! `/proc/self/stat`) is in it; above 90% of its core the run says
//! `flagged=1`: the generator may have been the bottleneck.
//!
//! Message text is chat-like (words, not one repeated byte), so that with
//! `--deflate` it compresses about as real chat does. `--deflate`: every
//! client offers permessage-deflate with `client_no_context_takeover`
//! (RFC 7692 §7.1.1.2), enables what the server answers, and inflates
//! what it receives; the `RESULT` line says `deflate=1` and how many
//! clients agreed (`deflate_clients`).
//!
//! Several servers (the nodes of a cluster): `--addr A,B,...` gives client
//! `i` the address `i mod N` (round-robin, so senders are spread too), and
//! `--server-pid P,Q,...` sums their CPU and run-queue waits (the RSS
//! figures are the sum too).
//!
//! Ports: one source address gives about 28k ephemeral ports toward one
//! server port; above 20,000 clients (or with `--sources N`) clients bind to
//! 127.0.0.1, 127.0.0.2, ... in turn (all of 127/8 is loopback on Linux).

mod hist;
mod sys;

use hist::Hist;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use wsproto::deflate::DeflateConfig;
use wsproto::handshake::{ClientRequest, ParsedResponse};
use wsproto::{Config, Connection, EventRef, HandshakeError, Role};

/// Above this share of its core the generator's numbers are not trusted.
const GEN_CPU_FLAG_PCT: f64 = 90.0;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    Fanout,
    Saturation,
    Storm,
    Idle,
    Slow,
}

struct Opts {
    scenario: Scenario,
    name: String,
    /// Client `i` connects to `addrs[i % addrs.len()]`.
    addrs: Vec<SocketAddrV4>,
    /// The servers' pids: CPU and waits are summed over them.
    pids: Vec<u32>,
    label: String,
    clients: usize,
    senders: usize,
    /// Messages per second in all (paced); 0 with a `window`.
    rate: f64,
    /// Messages in flight (saturation); 0 = paced by `rate`.
    window: u64,
    size: usize,
    secs: f64,
    /// Connections started per second; 0 = as fast as `outstanding` allows.
    ramp: f64,
    /// Most connections between connect and welcome at once (when `ramp` is 0).
    outstanding: usize,
    sources: usize,
    join_wait: f64,
    after_ramp: f64,
    settle: f64,
    drain: f64,
    slow: usize,
    /// Offer permessage-deflate.
    deflate: bool,
}

fn main() {
    let opts = match parse_opts(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    match sys::raise_nofile() {
        Ok(n) if (n as usize) < opts.clients + 64 => eprintln!(
            "loadgen: warning: open-file limit {n} is below {} clients; raise the hard limit (ulimit -Hn)",
            opts.clients
        ),
        Ok(_) => {}
        Err(e) => eprintln!("loadgen: warning: cannot raise the open-file limit: {e}"),
    }
    if let Err(e) = run(&opts) {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}

fn parse_opts(mut args: impl Iterator<Item = String>) -> Result<Opts, String> {
    let name = args
        .next()
        .ok_or("usage: loadgen fanout|saturation|storm|idle|slow [options]")?;
    let scenario = match name.as_str() {
        "fanout" => Scenario::Fanout,
        "saturation" => Scenario::Saturation,
        "storm" => Scenario::Storm,
        "idle" => Scenario::Idle,
        "slow" => Scenario::Slow,
        _ => return Err(format!("unknown scenario {name:?}")),
    };
    let mut o = Opts {
        scenario,
        name,
        addrs: vec![SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080)],
        pids: Vec::new(),
        label: "server".into(),
        clients: 100,
        senders: 10,
        rate: 1000.0,
        window: 0,
        size: 64,
        secs: 5.0,
        ramp: 0.0,
        outstanding: 1000,
        sources: 0,
        join_wait: 60.0,
        after_ramp: 1.0,
        settle: 1.0,
        drain: 5.0,
        slow: 0,
        deflate: false,
    };
    match scenario {
        Scenario::Fanout => {}
        Scenario::Saturation => (o.clients, o.senders, o.rate, o.window) = (101, 1, 0.0, 64),
        Scenario::Storm => (o.clients, o.senders, o.rate, o.ramp) = (10_000, 1, 2.0, 2000.0),
        Scenario::Idle => {
            (o.clients, o.senders, o.rate, o.secs, o.settle) = (10_000, 1, 1.0, 10.0, 2.0)
        }
        Scenario::Slow => (o.clients, o.senders, o.size, o.slow) = (20, 1, 4096, 1),
    }
    while let Some(flag) = args.next() {
        if flag == "--deflate" {
            o.deflate = true;
            continue;
        }
        let v = args.next().ok_or(format!("{flag} needs a value"))?;
        let bad = || format!("{flag}: bad value {v:?}");
        match flag.as_str() {
            "--addr" => {
                o.addrs = v
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .map_err(|_| bad())?
            }
            "--server-pid" => {
                o.pids = v
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .map_err(|_| bad())?
            }
            "--label" => o.label = v.clone(),
            "--clients" => o.clients = v.parse().map_err(|_| bad())?,
            "--senders" => o.senders = v.parse().map_err(|_| bad())?,
            "--rate" => o.rate = v.parse().map_err(|_| bad())?,
            "--window" => o.window = v.parse().map_err(|_| bad())?,
            "--size" => o.size = v.parse().map_err(|_| bad())?,
            "--secs" => o.secs = v.parse().map_err(|_| bad())?,
            "--ramp" => o.ramp = v.parse().map_err(|_| bad())?,
            "--outstanding" => o.outstanding = v.parse().map_err(|_| bad())?,
            "--sources" => o.sources = v.parse().map_err(|_| bad())?,
            "--join-wait" => o.join_wait = v.parse().map_err(|_| bad())?,
            "--after-ramp" => o.after_ramp = v.parse().map_err(|_| bad())?,
            "--settle" => o.settle = v.parse().map_err(|_| bad())?,
            "--drain" => o.drain = v.parse().map_err(|_| bad())?,
            "--slow" => o.slow = v.parse().map_err(|_| bad())?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if o.clients == 0 || o.senders == 0 || o.senders + o.slow > o.clients {
        return Err("need 1 <= --senders and --senders + --slow <= --clients".into());
    }
    if o.window == 0 && o.rate <= 0.0 {
        return Err("need --rate > 0 or --window > 0".into());
    }
    if o.sources == 0 {
        o.sources = o.clients.div_ceil(20_000);
    }
    if o.sources > 250 {
        return Err("--sources: at most 250 (127.0.0.1-127.0.0.250)".into());
    }
    o.outstanding = o.outstanding.max(1);
    Ok(o)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the TCP connect to finish (writable).
    Connecting,
    /// Request sent, reading the 101.
    Handshake,
    Open,
    Dead,
}

struct Handshake {
    req: ClientRequest,
    head: Vec<u8>,
}

struct Client {
    stream: Option<TcpStream>,
    phase: Phase,
    hs: Option<Box<Handshake>>,
    conn: Option<Box<Connection>>,
    welcomed: bool,
    /// False for a `--slow` client once it was welcomed: it is out of epoll.
    reads: bool,
}

/// What the clients saw, summed.
struct Tally {
    epoch: Instant,
    senders: usize,
    hist: Hist,
    /// False once the results are taken (the slow clients' backlog is not counted).
    counting: bool,
    /// Text messages of any kind received (progress, for waits).
    texts: u64,
    /// Messages of this run received (each sender's sequence, in order).
    received: u64,
    /// Of those, received while the window was open.
    in_window: u64,
    /// Reads that returned data on open connections while the window was
    /// open: deliveries per read show how much the server sends at once.
    reads_in_window: u64,
    window_open: bool,
    /// Sequence numbers skipped (counted as they are found; `lost` is the total).
    gaps: u64,
    /// Messages that came again or out of order (not counted as received).
    reordered: u64,
    /// `message` texts not in the generator's format.
    stray: u64,
    errors: u64,
    connected: usize,
    welcomed: usize,
    dead: usize,
    /// Of the `dead`, those that had been welcomed.
    dead_welcomed: usize,
    /// How connections ended: `close 1008`, `http 503`, `connect: ...`.
    ends: BTreeMap<String, u64>,
}

impl Tally {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Handles one text message for a client whose expected next sequence
    /// number per sender is `next`.
    #[inline]
    fn on_text(&mut self, t: &[u8], now_ns: u64, next: &mut [u32], welcomed: &mut bool) {
        self.texts += 1;
        let kind = top_type(t);
        if kind == b"message" {
            if !self.counting {
                return;
            }
            if let Some(p) = find(t, br#""text":""#) {
                match parse_head(&t[p + 8..]) {
                    Some((ns, s, seq)) if s < self.senders => {
                        let want = next[s];
                        if seq < want {
                            self.reordered += 1;
                            return;
                        }
                        self.gaps += u64::from(seq - want);
                        next[s] = seq + 1;
                        self.received += 1;
                        if self.window_open {
                            self.in_window += 1;
                        }
                        self.hist.record(now_ns.saturating_sub(ns) / 1000);
                    }
                    _ => self.stray += 1,
                }
                return;
            }
        }
        if kind == b"welcome" {
            if !*welcomed {
                *welcomed = true;
                self.welcomed += 1;
            }
        } else if kind == b"error" {
            self.errors += 1;
            if self.errors <= 5 {
                eprintln!("loadgen: server error: {}", String::from_utf8_lossy(t));
            }
        }
    }

    fn end(&mut self, why: String) {
        *self.ends.entry(why).or_default() += 1;
    }
}

/// The value of the top-level `"type"` of a server message, without parsing
/// the JSON: the first key when the object starts with it (Node keeps
/// insertion order), else the last `"type":"` in the text (serde_json sorts
/// keys, so a nested one, e.g. in a welcome's history, comes before it and
/// none after: only `users`, a list of nicks, sorts after `type`).
#[inline]
fn top_type(t: &[u8]) -> &[u8] {
    const KEY: &[u8] = br#""type":""#;
    let at = if t.starts_with(br#"{"type":""#) {
        1
    } else {
        match rfind(t, KEY) {
            Some(i) => i,
            None => return b"",
        }
    };
    let rest = &t[at + KEY.len()..];
    let end = rest.iter().position(|&b| b == b'"').unwrap_or(0);
    &rest[..end]
}

/// The last position of `needle` in `hay`.
#[inline]
fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = needle[0];
    let mut to = hay.len().checked_sub(needle.len())? + 1;
    while to > 0 {
        let i = hay[..to].iter().rposition(|&b| b == first)?;
        if &hay[i..i + needle.len()] == needle {
            return Some(i);
        }
        to = i;
    }
    None
}

/// The first position of `needle` in `hay`.
#[inline]
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = needle[0];
    let mut from = 0;
    while from + needle.len() <= hay.len() {
        let i = from
            + hay[from..=hay.len() - needle.len()]
                .iter()
                .position(|&b| b == first)?;
        if &hay[i..i + needle.len()] == needle {
            return Some(i);
        }
        from = i + 1;
    }
    None
}

/// `<ns> <sender> <seq> ` at the start of a text.
#[inline]
fn parse_head(b: &[u8]) -> Option<(u64, usize, u32)> {
    let mut it = b.iter();
    let mut num = || -> Option<u64> {
        let mut v: u64 = 0;
        let mut digits = 0;
        for &c in it.by_ref() {
            if c == b' ' {
                break;
            }
            if !c.is_ascii_digit() || digits == 19 {
                return None;
            }
            v = v * 10 + u64::from(c - b'0');
            digits += 1;
        }
        (digits > 0).then_some(v)
    };
    let ns = num()?;
    let s = num()? as usize;
    let seq = u32::try_from(num()?).ok()?;
    Some((ns, s, seq))
}

struct Gen {
    addrs: Vec<SocketAddrV4>,
    sources: usize,
    ep: sys::Epoll,
    clients: Vec<Client>,
    /// `next[i * senders + s]`: the sequence number client `i` expects from sender `s`.
    next: Vec<u32>,
    tally: Tally,
    buf: Vec<u8>,
    events: Vec<libc::epoll_event>,
    /// Clients whose output did not all fit in the socket.
    unflushed: Vec<usize>,
    /// Give idle connections' buffers back (many clients).
    shrink: bool,
    text: String,
    /// Chat-like filler words; a message's padding is a slice of it.
    pad: String,
    started: usize,
    deflate: bool,
    /// Clients whose handshake agreed permessage-deflate.
    deflate_clients: usize,
}

impl Gen {
    fn new(o: &Opts) -> io::Result<Self> {
        Ok(Self {
            addrs: o.addrs.clone(),
            sources: o.sources,
            ep: sys::Epoll::new()?,
            clients: Vec::with_capacity(o.clients),
            next: vec![0; o.clients * o.senders],
            tally: Tally {
                epoch: Instant::now(),
                senders: o.senders,
                hist: Hist::new(),
                texts: 0,
                counting: true,
                received: 0,
                in_window: 0,
                reads_in_window: 0,
                window_open: false,
                gaps: 0,
                reordered: 0,
                stray: 0,
                errors: 0,
                connected: 0,
                welcomed: 0,
                dead: 0,
                dead_welcomed: 0,
                ends: BTreeMap::new(),
            },
            buf: vec![0; 256 << 10],
            events: vec![sys::event(); 4096],
            unflushed: Vec::new(),
            shrink: o.clients >= 1000,
            text: String::with_capacity(o.size + 64),
            pad: filler(o.size + 4096),
            started: 0,
            deflate: o.deflate,
            deflate_clients: 0,
        })
    }

    /// The server client `i` connects to: round-robin over `--addr`.
    fn addr_of(&self, i: usize) -> SocketAddrV4 {
        self.addrs[i % self.addrs.len()]
    }

    /// Clients that were welcomed or ended (or both).
    fn settled(&self) -> usize {
        self.tally.welcomed + self.tally.dead - self.tally.dead_welcomed
    }

    /// Clients between connect and welcome.
    fn in_progress(&self) -> usize {
        self.started.saturating_sub(self.settled())
    }

    fn start_connect(&mut self) {
        let i = self.clients.len();
        self.started += 1;
        let src =
            (self.sources > 1).then(|| Ipv4Addr::new(127, 0, 0, 1 + (i % self.sources) as u8));
        let mut c = Client {
            stream: None,
            phase: Phase::Dead,
            hs: None,
            conn: None,
            welcomed: false,
            reads: true,
        };
        let addr = self.addr_of(i);
        match sys::connect_nonblocking(src, addr).and_then(|s| {
            self.ep.add(s.as_raw_fd(), sys::OUT, i as u64)?;
            Ok(s)
        }) {
            Ok(s) => {
                c.stream = Some(s);
                c.phase = Phase::Connecting;
            }
            Err(e) => {
                self.tally.dead += 1;
                self.tally.end(format!("connect: {e}"));
            }
        }
        self.clients.push(c);
    }

    fn poll(&mut self, timeout_ms: i32) {
        let n = self.ep.wait(&mut self.events, timeout_ms);
        for k in 0..n {
            let token = sys::event_token(&self.events[k]);
            self.on_ready(token as usize);
        }
        if !self.unflushed.is_empty() {
            let list = std::mem::take(&mut self.unflushed);
            for i in list {
                self.flush(i);
            }
        }
    }

    fn kill(&mut self, i: usize, why: String) {
        let c = &mut self.clients[i];
        if c.phase == Phase::Dead {
            return;
        }
        c.phase = Phase::Dead;
        if c.welcomed {
            self.tally.dead_welcomed += 1;
        }
        c.stream = None; // closing the fd takes it out of epoll
        c.hs = None;
        c.conn = None;
        self.tally.dead += 1;
        self.tally.end(why);
    }

    fn on_ready(&mut self, i: usize) {
        match self.clients[i].phase {
            Phase::Connecting => self.on_connected(i),
            Phase::Handshake => self.on_handshake(i),
            Phase::Open => self.pump(i),
            Phase::Dead => {}
        }
    }

    fn on_connected(&mut self, i: usize) {
        let addr = self.addr_of(i);
        let c = &mut self.clients[i];
        let Some(stream) = c.stream.as_mut() else {
            return;
        };
        let res = match stream.take_error() {
            Ok(None) => (|| {
                stream.set_nodelay(true)?;
                let mut req = ClientRequest::new(&addr.ip().to_string(), addr.port(), "/ws")
                    .map_err(io::Error::other)?;
                if self.deflate {
                    // What a lean client offers: it resets its compressor
                    // per message (client_no_context_takeover).
                    req = req.deflate(DeflateConfig::default().no_context_takeover(true));
                }
                // A ~200-byte request into an empty socket buffer is written whole.
                stream.write_all(&req.to_bytes())?;
                self.ep.modify(stream.as_raw_fd(), sys::IN, i as u64)?;
                Ok(req)
            })(),
            Ok(Some(e)) | Err(e) => Err(e),
        };
        match res {
            Ok(req) => {
                c.hs = Some(Box::new(Handshake {
                    req,
                    head: Vec::new(),
                }));
                c.phase = Phase::Handshake;
            }
            Err(e) => self.kill(i, format!("connect: {}", e.kind())),
        }
    }

    fn on_handshake(&mut self, i: usize) {
        let c = &mut self.clients[i];
        let (Some(stream), Some(hs)) = (c.stream.as_mut(), c.hs.as_mut()) else {
            return;
        };
        match stream.read(&mut self.buf) {
            Ok(0) => return self.kill(i, "closed in handshake".into()),
            Ok(n) => hs.head.extend_from_slice(&self.buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => return self.kill(i, format!("handshake: {}", e.kind())),
        }
        match hs.req.parse_response(&hs.head, &Config::default()) {
            Ok(ParsedResponse::NeedMore) => {}
            Ok(ParsedResponse::Complete(resp, end)) => {
                let mut conn = Box::new(Connection::new(Role::Client, Config::default()));
                if let Some(params) = resp.deflate {
                    conn.enable_deflate(params);
                    self.deflate_clients += 1;
                }
                conn.receive(&hs.head[end..]);
                // A unique nick per client, whatever the run.
                if let Err(e) = conn.send_text(&format!(r#"{{"type":"join","nick":"u{i}"}}"#)) {
                    return self.kill(i, format!("join: {e}"));
                }
                c.hs = None;
                c.conn = Some(conn);
                c.phase = Phase::Open;
                self.tally.connected += 1;
                self.flush(i);
                self.handle_events(i);
            }
            Err(HandshakeError::Status { status, .. }) => self.kill(i, format!("http {status}")),
            Err(e) => self.kill(i, format!("handshake: {e}")),
        }
    }

    /// Reads what client `i` has (one read, more only while they fill the
    /// buffer) and handles the messages.
    fn pump(&mut self, i: usize) {
        let c = &mut self.clients[i];
        let (Some(stream), Some(conn)) = (c.stream.as_mut(), c.conn.as_mut()) else {
            return;
        };
        loop {
            match stream.read(&mut self.buf) {
                Ok(0) => {
                    conn.receive_eof();
                    break;
                }
                Ok(n) => {
                    conn.receive(&self.buf[..n]);
                    if self.tally.window_open {
                        self.tally.reads_in_window += 1;
                    }
                    if n < self.buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    conn.receive_eof();
                    break;
                }
            }
        }
        self.handle_events(i);
    }

    fn handle_events(&mut self, i: usize) {
        let senders = self.tally.senders;
        let now = self.tally.now_ns();
        let c = &mut self.clients[i];
        let Some(conn) = c.conn.as_mut() else {
            return;
        };
        let next = &mut self.next[i * senders..(i + 1) * senders];
        let mut end = None;
        loop {
            match conn.next_event_ref() {
                Ok(Some(EventRef::Text(t))) => {
                    self.tally.on_text(t.as_bytes(), now, next, &mut c.welcomed)
                }
                Ok(Some(EventRef::Close(f))) => {
                    end = Some(format!("close {}", f.code.as_u16()));
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    end = Some(format!("protocol: {e}"));
                    break;
                }
            }
        }
        if self.shrink {
            conn.shrink_buffers();
        }
        let pending = !conn.pending_output().is_empty();
        if pending {
            self.flush(i);
        }
        if let Some(why) = end {
            self.kill(i, why);
        }
    }

    /// Writes what client `i` owes; what does not fit is retried next poll.
    fn flush(&mut self, i: usize) {
        let c = &mut self.clients[i];
        let (Some(stream), Some(conn)) = (c.stream.as_mut(), c.conn.as_mut()) else {
            return;
        };
        while !conn.pending_output().is_empty() {
            match stream.write(conn.pending_output()) {
                Ok(n) => conn.consume_output(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.unflushed.push(i);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return, // the read side sees the end
            }
        }
    }

    /// Sends sender `s`'s message number `seq`; false if `s` is not open.
    fn send(&mut self, s: usize, seq: u32, size: usize) -> bool {
        let now = self.tally.now_ns();
        let Some(conn) = self.clients[s].conn.as_mut() else {
            return false;
        };
        self.text.clear();
        let _ = write!(self.text, r#"{{"type":"message","text":"{now} {s} {seq} "#);
        let head = self.text.len() - r#"{"type":"message","text":""#.len();
        // Digits, letters and spaces need no JSON escaping: the text is
        // `size` bytes. The filler starts at a different word each time.
        let n = size.saturating_sub(head);
        let at = (seq as usize * 61 + s * 17) % (self.pad.len() - n).max(1);
        let at = self.pad[..at].rfind(' ').map_or(0, |k| k + 1);
        self.text.push_str(&self.pad[at..at + n]);
        self.text.push_str("\"}");
        if conn.send_text(&self.text).is_err() {
            return false;
        }
        self.flush(s);
        true
    }

    /// Messages every live recipient has (the least, over them, of the sum of
    /// what each got from every sender).
    fn fully_delivered(&self, recipients: usize) -> u64 {
        let s = self.tally.senders;
        (0..recipients)
            .filter(|&i| self.clients[i].phase == Phase::Open)
            .map(|i| {
                self.next[i * s..(i + 1) * s]
                    .iter()
                    .map(|&n| u64::from(n))
                    .sum()
            })
            .min()
            .unwrap_or(0)
    }
}

/// `len` bytes of chat-like text: lowercase words and spaces (no JSON
/// escaping needed), skewed toward common words, as chat compresses.
fn filler(len: usize) -> String {
    const WORDS: &[&str] = &[
        "the", "to", "and", "a", "you", "it", "is", "that", "of", "in", "for", "on", "this",
        "with", "we", "be", "have", "are", "not", "just", "so", "but", "can", "do", "what", "was",
        "if", "at", "about", "me", "my", "all", "like", "will", "get", "there", "know", "think",
        "yes", "no", "ok", "lol", "thanks", "hey", "good", "time", "now", "today", "tomorrow",
        "meeting", "deploy", "server", "build", "release", "review", "merge", "branch", "test",
        "issue", "fixed", "broken", "again", "please", "sorry", "maybe", "later", "morning",
        "coffee", "lunch", "weekend", "really", "great", "nice", "sure", "right", "here", "see",
    ];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as usize
    };
    let mut s = String::with_capacity(len + 16);
    while s.len() < len {
        let w = WORDS[(next() % WORDS.len()).min(next() % WORDS.len())];
        s.push_str(w);
        s.push(' ');
    }
    s.truncate(len);
    s
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn run(o: &Opts) -> io::Result<()> {
    let pids: Vec<String> = o.pids.iter().map(u32::to_string).collect();
    // Summed over the servers (all of them, or nothing).
    let server = || {
        (!pids.is_empty()).then_some(())?;
        pids.iter().try_fold(sys::ProcSample::default(), |acc, p| {
            let s = sys::proc_sample(p)?;
            Some(sys::ProcSample {
                rss_kib: acc.rss_kib + s.rss_kib,
                user: acc.user + s.user,
                sys: acc.sys + s.sys,
            })
        })
    };
    let server_wait = || {
        (!pids.is_empty()).then_some(())?;
        pids.iter()
            .try_fold(Duration::ZERO, |acc, p| Some(acc + sys::run_queue_wait(p)?))
    };
    let addrs: Vec<String> = o.addrs.iter().map(ToString::to_string).collect();
    let base = server();
    println!(
        "{} vs {} ({}): {} clients ({} never read), {} senders, {}, {} B, {} s, ramp {}, {} source address(es)",
        o.name,
        o.label,
        addrs.join(","),
        o.clients,
        o.slow,
        o.senders,
        if o.window > 0 {
            format!("{} in flight", o.window)
        } else {
            format!("{} msg/s", o.rate)
        },
        o.size,
        o.secs,
        if o.ramp > 0.0 {
            format!("{}/s", o.ramp)
        } else {
            format!("as fast as handshakes finish, {} at once", o.outstanding)
        },
        o.sources
    );
    let gen_start = sys::proc_sample("self");
    let gen_wait_start = sys::run_queue_wait("self");
    let mut g = Gen::new(o)?;
    let recipients = o.clients - o.slow;

    // Connect and join.
    let t0 = Instant::now();
    let join_deadline = t0 + Duration::from_secs_f64(o.join_wait);
    while g.started < o.clients {
        let allowed = if o.ramp > 0.0 {
            ((secs(t0.elapsed()) * o.ramp) as usize + 1).min(o.clients)
        } else {
            o.clients
        };
        while g.started < allowed && (o.ramp > 0.0 || g.in_progress() < o.outstanding) {
            g.start_connect();
        }
        g.poll(1);
        if Instant::now() > join_deadline {
            break;
        }
    }
    let ramp_secs = secs(t0.elapsed());
    let ramp_end = Instant::now();
    let everyone = |g: &Gen| g.settled() >= o.clients;
    if o.scenario == Scenario::Storm {
        let go = ramp_end + Duration::from_secs_f64(o.after_ramp);
        while Instant::now() < go || (!g.clients[0].welcomed && Instant::now() < join_deadline) {
            g.poll(5);
        }
    } else {
        while !everyone(&g) && Instant::now() < join_deadline {
            g.poll(5);
        }
    }
    let joined_secs = secs(t0.elapsed());
    let gen_joined = sys::proc_sample("self");
    let gen_join_pct = match (gen_start, gen_joined) {
        (Some(a), Some(b)) => 100.0 * secs(b.cpu().saturating_sub(a.cpu())) / joined_secs.max(1e-9),
        _ => 0.0,
    };
    let gen_join_wait = match (gen_wait_start, sys::run_queue_wait("self")) {
        (Some(a), Some(b)) => 100.0 * secs(b.saturating_sub(a)) / joined_secs.max(1e-9),
        _ => 0.0,
    };
    println!(
        "ramp {:.2} s; {} connected, {} welcomed, {} ended after {:.2} s (generator CPU {:.0}%, waited for its core {:.0}%)",
        ramp_secs, g.tally.connected, g.tally.welcomed, g.tally.dead, joined_secs, gen_join_pct, gen_join_wait
    );
    // Slow clients stop reading once welcomed.
    for i in recipients..o.clients {
        let c = &mut g.clients[i];
        if let Some(s) = &c.stream {
            let _ = g.ep.delete(s.as_raw_fd());
        }
        c.reads = false;
    }
    if o.scenario != Scenario::Storm {
        // At least `settle` s, then until nothing arrived for 1 s (presence
        // notices still in flight would count in the RSS), at most 60 s more.
        let settle = Instant::now() + Duration::from_secs_f64(o.settle);
        let cap = settle + Duration::from_secs(60);
        let (mut last, mut quiet_since) = (g.tally.texts, Instant::now());
        while Instant::now() < settle
            || (quiet_since.elapsed() < Duration::from_secs(1) && Instant::now() < cap)
        {
            g.poll(10);
            if g.tally.texts != last {
                (last, quiet_since) = (g.tally.texts, Instant::now());
            }
        }
    }
    let held = server();

    // The measured window.
    let gen0 = sys::proc_sample("self");
    let srv0 = server();
    let wait0 = (sys::run_queue_wait("self"), server_wait());
    let start = Instant::now();
    g.tally.window_open = true;
    let mut sent: u64 = 0;
    let mut sent_by = vec![0u32; o.senders];
    let mut unsent: u64 = 0;
    let window = Duration::from_secs_f64(o.secs);
    let mut stalled_since = Instant::now();
    let mut last_full = 0;
    while start.elapsed() < window {
        let mut timeout = 1;
        if o.window > 0 {
            let full = g.fully_delivered(recipients);
            if full != last_full {
                (last_full, stalled_since) = (full, Instant::now());
            }
            while sent < full + o.window {
                let s = (sent % o.senders as u64) as usize;
                if !g.send(s, sent_by[s], o.size) {
                    break;
                }
                sent_by[s] += 1;
                sent += 1;
            }
            if stalled_since.elapsed() > Duration::from_secs(2) {
                eprintln!("loadgen: no progress for 2 s; stopping the window");
                break;
            }
        } else {
            let due = (secs(start.elapsed()) * o.rate) as u64;
            while sent + unsent < due {
                let s = ((sent + unsent) % o.senders as u64) as usize;
                if g.send(s, sent_by[s], o.size) {
                    sent_by[s] += 1;
                    sent += 1;
                } else {
                    unsent += 1;
                }
            }
            let next_at = (sent + unsent + 1) as f64 / o.rate;
            timeout = ((next_at - secs(start.elapsed())) * 1000.0)
                .ceil()
                .clamp(0.0, 10.0) as i32;
        }
        g.poll(timeout);
    }
    let elapsed = secs(start.elapsed());
    g.tally.window_open = false;
    let srv1 = server();
    let gen1 = sys::proc_sample("self");
    let wait1 = (sys::run_queue_wait("self"), server_wait());

    // Drain what is in flight: until everything arrived, or no text at all
    // (presence included) for `drain` s, at most 6 × `drain` s.
    let expected = sent * recipients as u64;
    let mut last = g.tally.texts;
    let mut quiet_since = Instant::now();
    let drain_cap = Instant::now() + Duration::from_secs_f64(o.drain * 6.0);
    while g.tally.received < expected
        && quiet_since.elapsed() < Duration::from_secs_f64(o.drain)
        && Instant::now() < drain_cap
    {
        g.poll(10);
        if g.tally.texts != last {
            (last, quiet_since) = (g.tally.texts, Instant::now());
        }
    }
    let drained = secs(start.elapsed()) - elapsed;

    // Slow clients: read what they were sent, see how they were closed.
    g.tally.counting = false;
    if o.slow > 0 {
        for i in recipients..o.clients {
            if let Some(s) = &g.clients[i].stream {
                let _ = g.ep.add(s.as_raw_fd(), sys::IN, i as u64);
            }
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10)
            && g.clients[recipients..]
                .iter()
                .any(|c| c.phase == Phase::Open)
        {
            g.poll(10);
        }
    }

    // Report.
    let t = &g.tally;
    let lost = expected.saturating_sub(t.received);
    let deliv_s = t.in_window as f64 / elapsed;
    let per_read = t.in_window as f64 / t.reads_in_window.max(1) as f64;
    let h = &t.hist;
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "sent {sent} in {elapsed:.2} s ({unsent} not sent: sender gone) to {recipients} recipients; drained {drained:.2} s more"
    );
    println!(
        "received {} of {expected}: lost {lost} (sequence gaps seen {}, duplicates/out of order {}, stray {}), {:.0} deliveries/s in the window, {:.2} per read",
        t.received, t.gaps, t.reordered, t.stray, deliv_s, per_read
    );
    println!(
        "latency ms: p50 {:.3}, p99 {:.3}, p99.9 {:.3}, max {:.3} ({} samples)",
        ms(h.quantile(0.5)),
        ms(h.quantile(0.99)),
        ms(h.quantile(0.999)),
        ms(h.max()),
        h.count()
    );
    let ends: Vec<String> = t.ends.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    println!(
        "connections ended: {}; error replies: {}",
        if ends.is_empty() {
            "none".into()
        } else {
            ends.join(", ")
        },
        t.errors
    );
    let mut r = String::new();
    let _ = write!(
        r,
        "RESULT scenario={} server={} clients={} connected={} welcomed={} ended={} sent={sent} expected={expected} received={} lost={lost} deliv_s={deliv_s:.0} deliv_per_read={per_read:.2} p50_ms={:.3} p99_ms={:.3} max_ms={:.3} ramp_s={ramp_secs:.2} joined_s={joined_secs:.2} gen_join_pct={gen_join_pct:.0} gen_join_wait_pct={gen_join_wait:.0} window_s={elapsed:.2}",
        o.name, o.label, o.clients, t.connected, t.welcomed, t.dead, t.received,
        ms(h.quantile(0.5)), ms(h.quantile(0.99)), ms(h.max())
    );
    let _ = write!(
        r,
        " deflate={} deflate_clients={}",
        u8::from(o.deflate),
        g.deflate_clients
    );
    let closes: Vec<String> = t
        .ends
        .iter()
        .map(|(k, v)| format!("{}:{v}", k.replace(' ', "_").replace(',', ";")))
        .collect();
    let _ = write!(
        r,
        " ends={}",
        if closes.is_empty() {
            "-".into()
        } else {
            closes.join(",")
        }
    );
    if let (Some(a), Some(b)) = (srv0, srv1) {
        let cpu = secs(b.cpu().saturating_sub(a.cpu()));
        let sys_t = secs(b.sys.saturating_sub(a.sys));
        println!(
            "server CPU {:.3} s over {elapsed:.2} s ({:.0}% of a core, {:.0}% of it kernel), {:.2} us per delivery; RSS {} KiB",
            cpu,
            100.0 * cpu / elapsed,
            100.0 * sys_t / cpu.max(1e-9),
            cpu * 1e6 / t.in_window.max(1) as f64,
            b.rss_kib
        );
        let _ = write!(
            r,
            " srv_cpu_pct={:.0} srv_kernel_pct={:.0} srv_us_per_deliv={:.3} srv_rss_kib={}",
            100.0 * cpu / elapsed,
            100.0 * sys_t / cpu.max(1e-9),
            cpu * 1e6 / t.in_window.max(1) as f64,
            b.rss_kib
        );
    }
    if let (Some(a), Some(b)) = (base, held) {
        let per = (b.rss_kib as f64 - a.rss_kib as f64) / t.welcomed.max(1) as f64;
        println!(
            "server RSS {} KiB before, {} KiB with {} clients held: {per:.2} KiB per connection",
            a.rss_kib, b.rss_kib, t.welcomed
        );
        let _ = write!(r, " rss_per_conn_kib={per:.2}");
    }
    // Run-queue waits: on a shared machine another task may hold the core
    // of the server or the generator; a starved generator delays sends and reads.
    let waited = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) => Some(100.0 * secs(b.saturating_sub(a)) / elapsed),
        _ => None,
    };
    let gen_wait = waited(wait0.0, wait1.0).unwrap_or(0.0);
    if let Some(w) = waited(wait0.1, wait1.1) {
        println!("server threads waited for a core {w:.0}% of the window (other tasks on it)");
        let _ = write!(r, " srv_wait_pct={w:.0}");
    }
    if let (Some(a), Some(b)) = (gen0, gen1) {
        let pct = 100.0 * secs(b.cpu().saturating_sub(a.cpu())) / elapsed;
        let flagged = pct > GEN_CPU_FLAG_PCT;
        // Busy or ready to run but kept off its core by another task: what
        // it wanted. Near 100% it was close to its limit, even if others
        // took part of its core.
        let near = !flagged && pct + gen_wait > GEN_CPU_FLAG_PCT;
        println!(
            "generator CPU {pct:.0}% of its core over the window, waited for it {gen_wait:.0}%{}",
            if flagged {
                ": FLAGGED, the generator may be the bottleneck; not a result"
            } else if near {
                ": near its limit (busy + waiting > 90%)"
            } else {
                ""
            }
        );
        let kernel = 100.0 * secs(b.sys.saturating_sub(a.sys))
            / secs(b.cpu().saturating_sub(a.cpu())).max(1e-9);
        let _ = write!(
            r,
            " gen_cpu_pct={pct:.0} gen_kernel_pct={kernel:.0} gen_wait_pct={gen_wait:.0} flagged={}",
            u8::from(flagged)
        );
    }
    println!("{r}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_parses_the_head_in_either_key_order() {
        // serde_json sorts keys (chat-server); Node keeps insertion order.
        for m in [
            r#"{"from":"u1","id":7,"text":"123456 3 42 xxxx","ts":1,"type":"message"}"#,
            r#"{"type":"message","id":7,"ts":1,"from":"u1","text":"123456 3 42 xxxx"}"#,
        ] {
            let b = m.as_bytes();
            let p = find(b, br#""text":""#).unwrap();
            assert_eq!(top_type(b), b"message");
            assert_eq!(parse_head(&b[p + 8..]), Some((123_456, 3, 42)));
        }
        // A welcome whose history holds messages is a welcome.
        let w = r#"{"history":[{"from":"a","id":1,"text":"1 0 0 x","ts":1,"type":"message"}],"nick":"u","token":"t","type":"welcome","users":["u"]}"#;
        assert_eq!(top_type(w.as_bytes()), b"welcome");
        assert_eq!(
            top_type(br#"{"type":"welcome","history":[{"type":"message"}]}"#),
            b"welcome"
        );
        assert_eq!(top_type(b"{}"), b"");
        assert_eq!(rfind(b"abab", b"ab"), Some(2));
        assert_eq!(rfind(b"a", b"ab"), None);
        assert_eq!(parse_head(b"12 x 3 "), None);
        assert_eq!(find(b"aab", b"ab"), Some(1));
        assert_eq!(find(b"a", b"ab"), None);
    }

    #[test]
    fn several_servers_split_the_clients_round_robin() {
        let args = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        let o = parse_opts(
            args("fanout --addr 127.0.0.1:1,127.0.0.1:2 --server-pid 10,11").into_iter(),
        )
        .unwrap();
        assert_eq!(o.pids, [10, 11]);
        let g = Gen::new(&o).unwrap();
        let port = |i: usize| g.addr_of(i).port();
        assert_eq!((0..4).map(port).collect::<Vec<_>>(), [1, 2, 1, 2]);
        assert!(parse_opts(args("fanout --addr 127.0.0.1:1,nope").into_iter()).is_err());
    }

    #[test]
    fn counts_gaps_and_duplicates_per_sender() {
        let mut t = Tally {
            epoch: Instant::now(),
            senders: 2,
            hist: Hist::new(),
            texts: 0,
            counting: true,
            received: 0,
            in_window: 0,
            reads_in_window: 0,
            window_open: true,
            gaps: 0,
            reordered: 0,
            stray: 0,
            errors: 0,
            connected: 0,
            welcomed: 0,
            dead: 0,
            dead_welcomed: 0,
            ends: BTreeMap::new(),
        };
        let mut next = [0u32; 2];
        let mut w = false;
        let msg = |s: usize, seq: u32| {
            format!(r#"{{"type":"message","id":1,"ts":1,"from":"u","text":"1000 {s} {seq} x"}}"#)
        };
        for (s, seq) in [(0, 0), (1, 0), (0, 1), (0, 3), (0, 2), (1, 1)] {
            t.on_text(msg(s, seq).as_bytes(), 2_000_000, &mut next, &mut w);
        }
        assert_eq!((t.received, t.gaps, t.reordered), (5, 1, 1));
        assert_eq!(next, [4, 2]);
        t.on_text(br#"{"type":"welcome","nick":"u"}"#, 0, &mut next, &mut w);
        assert!(w && t.welcomed == 1);
    }
}
