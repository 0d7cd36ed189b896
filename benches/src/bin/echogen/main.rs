//! Echo load generator for issue 15's async echo benchmark
//! (`benches/scripts/echo.sh`): `--conns N` WebSocket clients on wsproto's
//! sans-IO `Connection`, one level-triggered epoll loop, each client keeping
//! `--inflight K` messages sent and not yet echoed, closed loop (a message
//! goes out when an echo comes back).
//!
//! ```text
//! echogen [--addr 127.0.0.1:9001] [--conns N] [--size BYTES] [--kind text|binary]
//!         [--inflight K] [--warmup S] [--secs S] [--server-pid PID]
//!         [--label NAME] [--key NAME]
//! ```
//!
//! Every echo is checked, content and order: message `s` of client `c` is
//! payload `(c + s) mod 61` of a pool of 61 distinct payloads of `--size`
//! bytes (printable ASCII for text, pseudo-random bytes for binary), and the
//! echo must be that payload, of that kind, in that place. A lost, repeated,
//! reordered or altered echo is a mismatch; at the end every client must
//! have all its echoes back. Any mismatch, loss or early close makes the run
//! fail (exit 1), after its `RESULT` line.
//!
//! Client frames are masked (RFC 6455 §5.3) with keys from
//! `MaskKeys::Seeded` (one seed per client): a new key per frame at the cost
//! of a few multiplications, not a CSPRNG draw. Fine for a benchmark against
//! our own servers; a browser-facing client must keep `MaskKeys::Random`.
//!
//! Phases: connect and handshake every client (blocking, one at a time),
//! send `K` messages on each, `--warmup` s, then the measured `--secs` s
//! window: msg/s = echoes received in the window ÷ its length; server CPU
//! per message = the server's utime + stime (`/proc/PID/stat`, all threads)
//! over the window ÷ those echoes. Then no new messages; every outstanding
//! echo must arrive within 5 s; then each client sends a Close and waits
//! (up to 3 s in all) for the server's, so the server closes TCP first.
//!
//! The generator's own CPU over the window (`gen_cpu_pct`) is in the
//! `RESULT` line; above 90% of its core the run says `flagged=1`: the
//! generator may have been the bottleneck.

#[allow(dead_code)] // shared with loadgen, which uses more of it
#[path = "../loadgen/sys.rs"]
mod sys;

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use wsproto::handshake::{ClientRequest, ParsedResponse};
use wsproto::{CloseCode, Config, Connection, EventRef, MaskKeys, Role};

/// Above this share of its core the generator's numbers are not trusted.
const GEN_CPU_FLAG_PCT: f64 = 90.0;
/// Distinct payloads; a prime above any sensible `--inflight`, so a lost or
/// reordered echo never lines up with the payload expected in its place.
const POOL: usize = 61;
/// Bytes one read may bring.
const READ_BUF: usize = 256 << 10;

#[derive(Debug, Clone)]
struct Opts {
    addr: SocketAddrV4,
    conns: usize,
    size: usize,
    text: bool,
    inflight: u64,
    warmup: f64,
    secs: f64,
    pid: Option<u32>,
    label: String,
    key: String,
}

fn main() {
    let o = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("echogen: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = sys::raise_nofile() {
        eprintln!("echogen: warning: cannot raise the open-file limit: {e}");
    }
    match run(&o) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("echogen: {e}");
            std::process::exit(1);
        }
    }
}

fn parse_opts() -> Result<Opts, String> {
    let mut o = Opts {
        addr: "127.0.0.1:9001".parse().expect("a valid address"),
        conns: 100,
        size: 20,
        text: true,
        inflight: 8,
        warmup: 1.0,
        secs: 4.0,
        pid: None,
        label: "server".into(),
        key: "echo".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let v = args.next().ok_or(format!("{flag} needs a value"))?;
        let bad = || format!("{flag}: bad value {v:?}");
        match flag.as_str() {
            "--addr" => o.addr = v.parse().map_err(|_| bad())?,
            "--conns" => o.conns = v.parse().map_err(|_| bad())?,
            "--size" => o.size = v.parse().map_err(|_| bad())?,
            "--kind" => {
                o.text = match v.as_str() {
                    "text" => true,
                    "binary" => false,
                    _ => return Err(bad()),
                }
            }
            "--inflight" => o.inflight = v.parse().map_err(|_| bad())?,
            "--warmup" => o.warmup = v.parse().map_err(|_| bad())?,
            "--secs" => o.secs = v.parse().map_err(|_| bad())?,
            "--server-pid" => o.pid = Some(v.parse().map_err(|_| bad())?),
            "--label" => o.label = v.clone(),
            "--key" => o.key = v.clone(),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if o.conns == 0 || o.size == 0 || o.inflight == 0 || o.inflight >= POOL as u64 {
        return Err(format!(
            "need --conns, --size >= 1 and 1 <= --inflight < {POOL}"
        ));
    }
    if o.secs <= 0.0 || o.warmup < 0.0 {
        return Err("need --secs > 0 and --warmup >= 0".into());
    }
    Ok(o)
}

/// The payloads, all distinct (the first two bytes hold the index).
fn pool(size: usize, text: bool) -> Vec<Vec<u8>> {
    let mut rng = benches::Rng(0x5DEE_CE66_D1CE_5EED ^ size as u64);
    (0..POOL)
        .map(|i| {
            let mut p: Vec<u8> = (0..size)
                .map(|_| {
                    let r = rng.next();
                    if text {
                        b' ' + (r % 95) as u8
                    } else {
                        r as u8
                    }
                })
                .collect();
            // Base-95 digits of the index, printable either way.
            p[0] = b' ' + (i % 95) as u8;
            if size > 1 {
                p[1] = b' ' + (i / 95) as u8;
            }
            p
        })
        .collect()
}

struct Client {
    stream: TcpStream,
    ws: Connection,
    sent: u64,
    received: u64,
    /// Waiting for the socket to take the rest of the output (EPOLLOUT on).
    blocked: bool,
    /// Ended: a Close or EOF came (expected only after ours was sent).
    done: bool,
    /// Our Close was queued.
    closing: bool,
}

struct Gen {
    o: Opts,
    ep: sys::Epoll,
    clients: Vec<Client>,
    pool: Vec<Vec<u8>>,
    /// The same payloads as `&str`, for text.
    texts: Vec<String>,
    buf: Vec<u8>,
    events: Vec<libc::epoll_event>,
    /// Send new messages as echoes come back.
    sending: bool,
    /// Echoes received (verified) since the start; the window is a difference.
    echoes: u64,
    mismatches: u64,
    /// Clients that ended before their Close was sent, and how.
    early_ends: Vec<String>,
    /// Reads that returned data.
    reads: u64,
}

impl Gen {
    fn connect(o: &Opts) -> io::Result<Self> {
        let pool = pool(o.size, o.text);
        let texts = if o.text {
            pool.iter()
                .map(|p| String::from_utf8(p.clone()).expect("printable ASCII"))
                .collect()
        } else {
            Vec::new()
        };
        let ep = sys::Epoll::new()?;
        let mut clients = Vec::with_capacity(o.conns);
        for i in 0..o.conns {
            let (stream, ws) = handshake(o.addr, i)
                .map_err(|e| io::Error::new(e.kind(), format!("client {i}: {e}")))?;
            ep.add(stream.as_raw_fd(), sys::IN, i as u64)?;
            clients.push(Client {
                stream,
                ws,
                sent: 0,
                received: 0,
                blocked: false,
                done: false,
                closing: false,
            });
        }
        Ok(Self {
            o: o.clone(),
            ep,
            clients,
            pool,
            texts,
            buf: vec![0; READ_BUF],
            events: vec![sys::event(); 1024],
            sending: true,
            echoes: 0,
            mismatches: 0,
            early_ends: Vec::new(),
            reads: 0,
        })
    }

    /// Tops client `i` up to `--inflight` messages in flight.
    #[inline]
    fn top_up(&mut self, i: usize) {
        let c = &mut self.clients[i];
        while self.sending && c.sent - c.received < self.o.inflight {
            let at = (i + c.sent as usize) % POOL;
            let r = if self.o.text {
                c.ws.send_text(&self.texts[at])
            } else {
                c.ws.send_binary(&self.pool[at])
            };
            if r.is_err() {
                break;
            }
            c.sent += 1;
        }
    }

    /// Writes what client `i` owes; the rest waits for EPOLLOUT.
    fn flush(&mut self, i: usize) {
        let c = &mut self.clients[i];
        while !c.ws.pending_output().is_empty() {
            match c.stream.write(c.ws.pending_output()) {
                Ok(n) => c.ws.consume_output(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.end(i, format!("write: {}", e.kind()));
                    return;
                }
            }
        }
        let c = &mut self.clients[i];
        let want_out = !c.ws.pending_output().is_empty();
        if want_out != c.blocked {
            c.blocked = want_out;
            let ev = if want_out {
                sys::IN | sys::OUT
            } else {
                sys::IN
            };
            let _ = self.ep.modify(c.stream.as_raw_fd(), ev, i as u64);
        }
    }

    fn end(&mut self, i: usize, why: String) {
        let c = &mut self.clients[i];
        if c.done {
            return;
        }
        c.done = true;
        let _ = self.ep.delete(c.stream.as_raw_fd());
        // Before our Close was sent, an end is a failure.
        if !c.closing {
            self.early_ends.push(format!("client {i}: {why}"));
        }
    }

    fn poll(&mut self, timeout_ms: i32) {
        let n = self.ep.wait(&mut self.events, timeout_ms);
        for k in 0..n {
            let i = sys::event_token(&self.events[k]) as usize;
            self.on_ready(i);
        }
    }

    fn on_ready(&mut self, i: usize) {
        if self.clients[i].done {
            return;
        }
        // One read per wake-up (more only while reads fill the buffer):
        // level-triggered, so what is left comes back on the next wait.
        loop {
            let c = &mut self.clients[i];
            match c.stream.read(&mut self.buf) {
                Ok(0) => {
                    c.ws.receive_eof();
                    break;
                }
                Ok(n) => {
                    c.ws.receive(&self.buf[..n]);
                    self.reads += 1;
                    if n < self.buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    c.ws.receive_eof();
                    break;
                }
            }
        }
        let text = self.o.text;
        let mut end = None;
        let c = &mut self.clients[i];
        loop {
            let (got_text, data) = match c.ws.next_event_ref() {
                Ok(Some(EventRef::Text(t))) => (true, t.as_bytes()),
                Ok(Some(EventRef::Binary(b))) => (false, b),
                Ok(Some(EventRef::Close(f))) => {
                    end = Some(format!("close {}", f.code.as_u16()));
                    break;
                }
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(e) => {
                    end = Some(format!("protocol: {e}"));
                    break;
                }
            };
            let want = &self.pool[(i + c.received as usize) % POOL];
            if c.received >= c.sent || got_text != text || data != want.as_slice() {
                self.mismatches += 1;
                if self.mismatches <= 5 {
                    eprintln!(
                        "echogen: client {i} echo {}: got {} bytes ({}), expected {} bytes ({}){}",
                        c.received,
                        data.len(),
                        if got_text { "text" } else { "binary" },
                        want.len(),
                        if text { "text" } else { "binary" },
                        if c.received >= c.sent {
                            ", more echoes than messages"
                        } else {
                            ""
                        }
                    );
                }
            }
            c.received += 1;
            self.echoes += 1;
        }
        self.top_up(i);
        self.flush(i);
        if let Some(why) = end {
            self.end(i, why);
        }
    }

    fn outstanding(&self) -> u64 {
        self.clients
            .iter()
            .filter(|c| !c.done)
            .map(|c| c.sent - c.received)
            .sum()
    }
}

/// Connects client `i` and completes its opening handshake (blocking, 5 s
/// deadline per read); returns the socket, non-blocking, and the connection
/// (with any bytes that came after the 101).
fn handshake(addr: SocketAddrV4, i: usize) -> io::Result<(TcpStream, Connection)> {
    let mut stream = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let req =
        ClientRequest::new(&addr.ip().to_string(), addr.port(), "/").map_err(io::Error::other)?;
    stream.write_all(&req.to_bytes())?;
    let config = Config::default().mask_keys(MaskKeys::Seeded(0x9E37_79B9 ^ i as u64));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during the handshake",
            ));
        }
        head.extend_from_slice(&buf[..n]);
        match req.parse_response(&head, &config) {
            Ok(ParsedResponse::NeedMore) => {}
            Ok(ParsedResponse::Complete(_, end)) => {
                let mut ws = Connection::new(Role::Client, config);
                ws.receive(&head[end..]);
                stream.set_read_timeout(None)?;
                stream.set_nonblocking(true)?;
                return Ok((stream, ws));
            }
            Err(e) => return Err(io::Error::other(format!("handshake: {e}"))),
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Runs the benchmark; returns whether every echo came back right.
fn run(o: &Opts) -> io::Result<bool> {
    let pid = o.pid.map(|p| p.to_string());
    let server = || pid.as_deref().and_then(sys::proc_sample);
    let server_wait = || pid.as_deref().and_then(sys::run_queue_wait);
    println!(
        "{} vs {} ({}): {} connections, {} B {}, {} in flight each, warm-up {} s, window {} s",
        o.key,
        o.label,
        o.addr,
        o.conns,
        o.size,
        if o.text { "text" } else { "binary" },
        o.inflight,
        o.warmup,
        o.secs
    );
    let t0 = Instant::now();
    let mut g = Gen::connect(o)?;
    let connect_secs = secs(t0.elapsed());
    for i in 0..o.conns {
        g.top_up(i);
        g.flush(i);
    }
    let warm_end = Instant::now() + Duration::from_secs_f64(o.warmup);
    while Instant::now() < warm_end {
        g.poll(10);
    }

    // The measured window.
    let gen0 = sys::proc_sample("self");
    let srv0 = server();
    let wait0 = (sys::run_queue_wait("self"), server_wait());
    let (echoes0, reads0) = (g.echoes, g.reads);
    let start = Instant::now();
    let window = Duration::from_secs_f64(o.secs);
    while start.elapsed() < window {
        g.poll(10);
    }
    let elapsed = secs(start.elapsed());
    let srv1 = server();
    let gen1 = sys::proc_sample("self");
    let wait1 = (sys::run_queue_wait("self"), server_wait());
    let in_window = g.echoes - echoes0;
    let reads = g.reads - reads0;

    // Drain: every outstanding echo must come back.
    g.sending = false;
    let drain_end = Instant::now() + Duration::from_secs(5);
    while g.outstanding() > 0 && Instant::now() < drain_end {
        g.poll(10);
    }
    let lost = g.outstanding();
    let sent: u64 = g.clients.iter().map(|c| c.sent).sum();

    // Close: ours, then the server's (it closes TCP first, RFC 6455 §7.1.1).
    for i in 0..g.clients.len() {
        let c = &mut g.clients[i];
        c.closing = true;
        if !c.done && c.ws.close(CloseCode::NORMAL, "").is_ok() {
            g.flush(i);
        }
    }
    let close_end = Instant::now() + Duration::from_secs(3);
    while g.clients.iter().any(|c| !c.done) && Instant::now() < close_end {
        g.poll(10);
    }
    let unclosed = g.clients.iter().filter(|c| !c.done).count();

    // Report.
    let msg_s = in_window as f64 / elapsed;
    println!(
        "connected in {connect_secs:.2} s; {in_window} echoes in {elapsed:.2} s: {msg_s:.0} msg/s, {:.2} echoes per read; sent {sent} in all, {} mismatched, {lost} lost, {} ended early, {unclosed} not closed within 3 s",
        in_window as f64 / reads.max(1) as f64,
        g.mismatches,
        g.early_ends.len()
    );
    for e in g.early_ends.iter().take(5) {
        println!("ended early: {e}");
    }
    let mut r = String::new();
    let _ = write!(
        r,
        "RESULT server={} conns={} size={} kind={} inflight={} echoes={in_window} msg_s={msg_s:.0} echoes_per_read={:.2} window_s={elapsed:.2} sent={sent} bad={} lost={lost} early_ends={} unclosed={unclosed}",
        o.label,
        o.conns,
        o.size,
        if o.text { "text" } else { "binary" },
        o.inflight,
        in_window as f64 / reads.max(1) as f64,
        g.mismatches,
        g.early_ends.len()
    );
    if let (Some(a), Some(b)) = (srv0, srv1) {
        let cpu = secs(b.cpu().saturating_sub(a.cpu()));
        let kernel = secs(b.sys.saturating_sub(a.sys));
        let us = cpu * 1e6 / in_window.max(1) as f64;
        println!(
            "server CPU {cpu:.3} s over {elapsed:.2} s ({:.0}% of a core, {:.0}% of it kernel), {us:.3} us per message; RSS {} KiB",
            100.0 * cpu / elapsed,
            100.0 * kernel / cpu.max(1e-9),
            b.rss_kib
        );
        let _ = write!(
            r,
            " srv_cpu_pct={:.0} srv_kernel_pct={:.0} srv_us_per_msg={us:.3} srv_rss_kib={}",
            100.0 * cpu / elapsed,
            100.0 * kernel / cpu.max(1e-9),
            b.rss_kib
        );
    }
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
        let cpu = secs(b.cpu().saturating_sub(a.cpu()));
        let pct = 100.0 * cpu / elapsed;
        let flagged = pct > GEN_CPU_FLAG_PCT;
        println!(
            "generator CPU {pct:.0}% of its core over the window ({:.0}% of it kernel), waited for it {gen_wait:.0}%{}",
            100.0 * secs(b.sys.saturating_sub(a.sys)) / cpu.max(1e-9),
            if flagged {
                ": FLAGGED, the generator may be the bottleneck; not a result"
            } else if pct + gen_wait > GEN_CPU_FLAG_PCT {
                ": near its limit (busy + waiting > 90%)"
            } else {
                ""
            }
        );
        let _ = write!(
            r,
            " gen_cpu_pct={pct:.0} gen_wait_pct={gen_wait:.0} gen_us_per_msg={:.3} flagged={}",
            cpu * 1e6 / in_window.max(1) as f64,
            u8::from(flagged)
        );
    }
    println!("{r}");
    let ok = g.mismatches == 0 && lost == 0 && g.early_ends.is_empty();
    if !ok {
        eprintln!("echogen: FAILED: echoes did not all come back right");
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use wsproto::{blocking, Event, Message};

    /// A one-connection echo server that spoils the echo as `spoil` says:
    /// given the message number and the message, what to send back.
    fn server(spoil: fn(u64, Message) -> Vec<Message>) -> SocketAddrV4 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(addr) = l.local_addr().unwrap() else {
            unreachable!()
        };
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let Ok((mut ws, _)) = blocking::accept_with(s, Config::default(), &[]) else {
                return;
            };
            let mut n = 0;
            loop {
                let m: Message = match ws.read() {
                    Ok(Event::Text(t)) => t.into(),
                    Ok(Event::Binary(b)) => b.into(),
                    Ok(Event::Close(_)) | Err(_) => return,
                    Ok(_) => continue,
                };
                for m in spoil(n, m) {
                    if ws.send(m).is_err() {
                        return;
                    }
                }
                n += 1;
            }
        });
        addr
    }

    fn opts(addr: SocketAddrV4) -> Opts {
        Opts {
            addr,
            conns: 1,
            size: 20,
            text: true,
            inflight: 4,
            warmup: 0.0,
            secs: 0.3,
            pid: None,
            label: "test".into(),
            key: "test".into(),
        }
    }

    #[test]
    fn a_faithful_echo_passes() {
        assert!(run(&opts(server(|_, m| vec![m]))).unwrap());
    }

    #[test]
    fn a_swapped_pair_of_echoes_fails() {
        // Holds message 10 back and sends it after message 11.
        fn swap(n: u64, m: Message) -> Vec<Message> {
            thread_local!(static HELD: std::cell::RefCell<Option<Message>> = const { std::cell::RefCell::new(None) });
            HELD.with(|h| match n {
                10 => {
                    *h.borrow_mut() = Some(m);
                    vec![]
                }
                11 => vec![m, h.borrow_mut().take().unwrap()],
                _ => vec![m],
            })
        }
        assert!(!run(&opts(server(swap))).unwrap());
    }

    #[test]
    fn an_altered_echo_fails() {
        assert!(!run(&opts(server(|n, m| match (n, m) {
            (7, Message::Text(_)) => vec![Message::Text("x".repeat(20).into())],
            (_, m) => vec![m],
        })))
        .unwrap());
    }

    #[test]
    fn binary_for_text_fails() {
        assert!(!run(&opts(server(|n, m| match (n, m) {
            (3, Message::Text(t)) => vec![Message::Binary(wsproto::Bytes::copy_from_slice(
                t.as_bytes()
            ))],
            (_, m) => vec![m],
        })))
        .unwrap());
    }

    #[test]
    fn pool_payloads_are_distinct_and_text_is_ascii() {
        for size in [1, 2, 5, 20, 1024] {
            for text in [true, false] {
                let p = pool(size, text);
                assert_eq!(p.len(), POOL);
                for (i, a) in p.iter().enumerate() {
                    assert_eq!(a.len(), size);
                    if text {
                        assert!(a.iter().all(|b| (b' '..=b'~').contains(b)));
                    }
                    assert!(p[..i].iter().all(|b| b != a), "size {size}: {i} repeats");
                }
            }
        }
    }
}
