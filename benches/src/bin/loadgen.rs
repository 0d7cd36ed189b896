//! Load generator for chat-server: one process, many WebSocket clients on
//! wsproto's sans-IO `Connection`, one epoll loop (run it pinned to a core).
//!
//! ```text
//! loadgen fanout|idle|slow [--addr 127.0.0.1:8080] [--server-pid PID]
//!         [--clients N] [--senders N] [--rate MSG_PER_S] [--size BYTES] [--secs S]
//!         [--slow N]   (the last N clients never read; `slow` defaults to 1)
//! ```
//!
//! - `fanout`: 100 clients, 10 of them senders, 1000 msg/s in total, 64 B.
//! - `idle`: 10,000 clients join and stay; then 2 msg/s fanned out to all.
//! - `slow`: 20 clients, one never reads; the others get 1000 msg/s of 4 KiB.
//!
//! Reports deliveries/s, p50/p99/max latency (send to receive, same clock),
//! lost messages, and the server's RSS and CPU time from `/proc/PID`.
//! The server must allow the senders' rate (`--rate-burst`/`--rate-per-sec`).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use wsproto::handshake::{ClientRequest, ParsedResponse};
use wsproto::{Config, Connection, Event, Role};

struct Opts {
    scenario: String,
    addr: SocketAddr,
    pid: Option<u32>,
    clients: usize,
    senders: usize,
    rate: f64,
    size: usize,
    secs: f64,
    /// Clients (the last ones) that never read.
    slow: usize,
}

struct Client {
    stream: TcpStream,
    conn: Connection,
    welcomed: bool,
    received: u64,
    closed_with: Option<u16>,
    reads: bool,
}

struct Stats {
    latencies_us: Vec<u32>,
    deliveries: u64,
    measuring: bool,
    errors: u64,
}

fn main() {
    let opts = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    raise_nofile();
    if let Err(e) = run(&opts) {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}

fn parse_opts() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let scenario = args
        .next()
        .ok_or("usage: loadgen fanout|idle|slow [options]")?;
    let (clients, senders, rate, size, secs) = match scenario.as_str() {
        "fanout" => (100, 10, 1000.0, 64, 10.0),
        "idle" => (10_000, 1, 2.0, 64, 10.0),
        "slow" => (20, 1, 1000.0, 4096, 10.0),
        _ => return Err(format!("unknown scenario {scenario:?}")),
    };
    let mut o = Opts {
        scenario,
        addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
        pid: None,
        clients,
        senders,
        rate,
        size,
        secs,
        slow: 0,
    };
    o.slow = usize::from(o.scenario == "slow");
    while let Some(flag) = args.next() {
        let v = args.next().ok_or(format!("{flag} needs a value"))?;
        let bad = format!("{flag}: bad value {v:?}");
        match flag.as_str() {
            "--addr" => o.addr = v.parse().map_err(|_| format!("bad --addr {v}"))?,
            "--server-pid" => o.pid = Some(v.parse().map_err(|_| bad.clone())?),
            "--clients" => o.clients = v.parse().map_err(|_| bad.clone())?,
            "--senders" => o.senders = v.parse().map_err(|_| bad.clone())?,
            "--rate" => o.rate = v.parse().map_err(|_| bad.clone())?,
            "--size" => o.size = v.parse().map_err(|_| bad.clone())?,
            "--slow" => o.slow = v.parse().map_err(|_| bad.clone())?,
            "--secs" => o.secs = v.parse().map_err(|_| bad.clone())?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(o)
}

fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer; then raising the soft limit to the hard one.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                eprintln!("loadgen: cannot raise the open-file limit");
            }
        }
    }
}

/// RSS in KiB and CPU time (user + system) of `pid`.
fn proc_sample(pid: Option<u32>) -> Option<(u64, Duration)> {
    let pid = pid?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some((rss, Duration::from_micros(ticks * 1_000_000 / hz)))
}

fn connect(addr: SocketAddr) -> io::Result<(TcpStream, Connection)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let req =
        ClientRequest::new(&addr.ip().to_string(), addr.port(), "/ws").map_err(io::Error::other)?;
    stream.write_all(&req.to_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::other("server closed during the handshake"));
        }
        buf.extend_from_slice(&chunk[..n]);
        match req.parse_response(&buf, &Config::default()) {
            Ok(ParsedResponse::Complete(_, end)) => {
                let mut conn = Connection::new(Role::Client, Config::default());
                conn.receive(&buf[end..]);
                stream.set_nonblocking(true)?;
                return Ok((stream, conn));
            }
            Ok(ParsedResponse::NeedMore) => {}
            Err(e) => return Err(io::Error::other(e.to_string())),
        }
    }
}

/// Writes what `conn` has pending without blocking.
fn flush(c: &mut Client) {
    while !c.conn.pending_output().is_empty() {
        match c.stream.write(c.conn.pending_output()) {
            Ok(n) => c.conn.consume_output(n),
            Err(_) => return,
        }
    }
}

/// Reads everything available from client `i` and handles its events.
fn pump(c: &mut Client, buf: &mut [u8], epoch: Instant, stats: &mut Stats) {
    loop {
        match c.stream.read(buf) {
            Ok(0) => {
                c.conn.receive_eof();
                break;
            }
            Ok(n) => c.conn.receive(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                c.conn.receive_eof();
                break;
            }
        }
    }
    loop {
        match c.conn.next_event() {
            Ok(Some(Event::Text(t))) => {
                let s = t.as_str();
                if s.contains(r#""type":"message""#) {
                    c.received += 1;
                    if let Some(sent_ns) = sent_at(s) {
                        let now = epoch.elapsed().as_nanos() as u64;
                        if stats.measuring {
                            stats.deliveries += 1;
                            stats
                                .latencies_us
                                .push((now.saturating_sub(sent_ns) / 1000) as u32);
                        }
                    }
                } else if s.contains(r#""type":"welcome""#) {
                    c.welcomed = true;
                } else if s.contains(r#""type":"error""#) {
                    stats.errors += 1;
                    if stats.errors <= 5 {
                        eprintln!("loadgen: server error: {s}");
                    }
                }
            }
            Ok(Some(Event::Close(f))) => {
                c.closed_with = Some(f.code.as_u16());
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => {
                eprintln!("loadgen: protocol error: {e}");
                break;
            }
        }
    }
    flush(c);
    c.conn.shrink_buffers();
}

/// The send time embedded in a message's text: `"text":"<ns> ...`.
fn sent_at(json: &str) -> Option<u64> {
    let at = json.find(r#""text":""#)? + 8;
    let rest = &json[at..];
    let end = rest.find(' ')?;
    rest[..end].parse().ok()
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn run(o: &Opts) -> io::Result<()> {
    let epoch = Instant::now();
    let base = proc_sample(o.pid);
    println!(
        "scenario {}: {} clients ({} never read), {} senders, {} msg/s, {} B, {} s",
        o.scenario, o.clients, o.slow, o.senders, o.rate, o.size, o.secs
    );
    // SAFETY: plain syscall; the fd is closed by the OS at exit.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut clients: Vec<Client> = Vec::with_capacity(o.clients);
    let mut stats = Stats {
        latencies_us: Vec::new(),
        deliveries: 0,
        measuring: false,
        errors: 0,
    };
    let mut buf = vec![0u8; 256 << 10];
    let t_connect = Instant::now();
    let mut events: Vec<libc::epoll_event> = vec![libc::epoll_event { events: 0, u64: 0 }; 4096];
    for i in 0..o.clients {
        let (stream, mut conn) = connect(o.addr)?;
        // In `slow`, the last client never reads.
        let reads = i + o.slow < o.clients;
        conn.send_text(&format!(r#"{{"type":"join","nick":"u{i}"}}"#))
            .map_err(|e| io::Error::other(e.to_string()))?;
        let mut c = Client {
            stream,
            conn,
            welcomed: false,
            received: 0,
            closed_with: None,
            reads,
        };
        flush(&mut c);
        if reads {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            // SAFETY: valid epoll fd, open socket fd, valid event pointer.
            if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, c.stream.as_raw_fd(), &mut ev) }
                != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        clients.push(c);
        // Keep up with presence traffic while connecting.
        if i % 100 == 99 {
            poll_once(
                ep,
                &mut events,
                &mut clients,
                &mut buf,
                epoch,
                &mut stats,
                0,
            );
        }
    }
    // Wait for every welcome (the slow one reads its welcome now, once).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        poll_once(
            ep,
            &mut events,
            &mut clients,
            &mut buf,
            epoch,
            &mut stats,
            10,
        );
        let slow_ready = clients.iter_mut().filter(|c| !c.reads).all(|c| {
            if !c.welcomed {
                let _ = c.stream.set_nonblocking(true);
                let mut small = [0u8; 65536];
                if let Ok(n) = c.stream.read(&mut small) {
                    c.conn.receive(&small[..n]);
                    while let Ok(Some(ev)) = c.conn.next_event() {
                        if matches!(&ev, Event::Text(t) if t.as_str().starts_with(r#"{"type":"welcome""#)) {
                            c.welcomed = true;
                        }
                    }
                }
            }
            c.welcomed
        });
        let welcomed = clients.iter().filter(|c| c.welcomed).count();
        if welcomed == clients.len() && slow_ready {
            break;
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "only {welcomed} of {} joined",
                clients.len()
            )));
        }
    }
    println!(
        "connected and joined: {} of {} in {:.2} s",
        clients.iter().filter(|c| c.welcomed).count(),
        o.clients,
        t_connect.elapsed().as_secs_f64()
    );
    // Let presence traffic settle, then measure the idle footprint.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(2) {
        poll_once(
            ep,
            &mut events,
            &mut clients,
            &mut buf,
            epoch,
            &mut stats,
            50,
        );
    }
    let held = proc_sample(o.pid);
    if let (Some((rss0, _)), Some((rss1, _))) = (base, held) {
        println!(
            "server RSS: {} KiB before, {} KiB with {} clients held: {:.2} KiB per connection",
            rss0,
            rss1,
            o.clients,
            (rss1 as f64 - rss0 as f64) / o.clients as f64
        );
    }
    for c in &mut clients {
        c.received = 0;
    }
    // The measured run.
    let senders: Vec<usize> = (0..o.senders.min(o.clients)).collect();
    let pad = "x".repeat(o.size);
    let start_cpu = proc_sample(o.pid);
    let start = Instant::now();
    stats.measuring = true;
    let mut sent: u64 = 0;
    let mut rss_samples = Vec::new();
    let mut next_sample = start;
    let run_for = Duration::from_secs_f64(o.secs);
    while start.elapsed() < run_for {
        let due = (start.elapsed().as_secs_f64() * o.rate) as u64;
        while sent < due {
            let who = senders[(sent % senders.len() as u64) as usize];
            let now_ns = epoch.elapsed().as_nanos() as u64;
            let head = format!("{now_ns} {who} {sent} ");
            // The text is `size` bytes; digits and spaces need no JSON escaping.
            let text = format!(
                r#"{{"type":"message","text":"{head}{}"}}"#,
                &pad[..o.size.saturating_sub(head.len())]
            );
            let c = &mut clients[who];
            if c.conn.send_text(&text).is_ok() {
                flush(c);
            }
            sent += 1;
        }
        if Instant::now() >= next_sample {
            if let Some((rss, _)) = proc_sample(o.pid) {
                rss_samples.push(rss);
            }
            next_sample += Duration::from_secs(1);
        }
        poll_once(
            ep,
            &mut events,
            &mut clients,
            &mut buf,
            epoch,
            &mut stats,
            1,
        );
    }
    let elapsed = start.elapsed();
    let end_cpu = proc_sample(o.pid);
    // Drain what is in flight.
    let drain = Instant::now();
    let readers = clients.iter().filter(|c| c.reads).count() as u64;
    while drain.elapsed() < Duration::from_secs(3) {
        poll_once(
            ep,
            &mut events,
            &mut clients,
            &mut buf,
            epoch,
            &mut stats,
            10,
        );
        let got: u64 = clients.iter().filter(|c| c.reads).map(|c| c.received).sum();
        if got >= sent * readers {
            break;
        }
    }
    stats.measuring = false;
    let got: u64 = clients.iter().filter(|c| c.reads).map(|c| c.received).sum();
    let expected = sent * readers;
    let mut lat = std::mem::take(&mut stats.latencies_us);
    lat.sort_unstable();
    println!(
        "sent {sent} messages in {:.2} s to {readers} reading clients",
        elapsed.as_secs_f64()
    );
    println!(
        "deliveries: {got} of {expected} expected, lost {}, {:.0} deliveries/s",
        expected.saturating_sub(got),
        stats.deliveries as f64 / elapsed.as_secs_f64()
    );
    println!(
        "latency: p50 {} us, p99 {} us, p99.9 {} us, max {} us",
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
        lat.last().copied().unwrap_or(0)
    );
    if let (Some((_, c0)), Some((rss, c1))) = (start_cpu, end_cpu) {
        let cpu = c1.saturating_sub(c0);
        println!(
            "server CPU: {:.3} s over {:.2} s ({:.0}% of a core), {:.2} us per delivery; RSS {} KiB",
            cpu.as_secs_f64(),
            elapsed.as_secs_f64(),
            100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / stats.deliveries.max(1) as f64,
            rss
        );
    }
    if !rss_samples.is_empty() {
        println!("server RSS each second (KiB): {rss_samples:?}");
    }
    // The slow client: read what it was sent, look for its close code.
    let mut closes: HashMap<u16, usize> = HashMap::new();
    for c in clients.iter_mut().filter(|c| !c.reads) {
        let _ = c.stream.set_nonblocking(false);
        let _ = c.stream.set_read_timeout(Some(Duration::from_secs(3)));
        let t = Instant::now();
        while c.closed_with.is_none() && t.elapsed() < Duration::from_secs(10) {
            match c.stream.read(&mut buf) {
                Ok(0) | Err(_) => c.conn.receive_eof(),
                Ok(n) => c.conn.receive(&buf[..n]),
            }
            loop {
                match c.conn.next_event() {
                    Ok(Some(Event::Close(f))) => {
                        c.closed_with = Some(f.code.as_u16());
                        break;
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
        }
        *closes.entry(c.closed_with.unwrap_or(0)).or_default() += 1;
    }
    if !closes.is_empty() {
        println!("non-reading clients closed with: {closes:?} (0 = not closed)");
    }
    let closed_readers = clients
        .iter()
        .filter(|c| c.reads && c.closed_with.is_some())
        .count();
    println!(
        "reading clients closed by the server: {closed_readers}; error replies: {}",
        stats.errors
    );
    Ok(())
}

fn poll_once(
    ep: libc::c_int,
    events: &mut [libc::epoll_event],
    clients: &mut [Client],
    buf: &mut [u8],
    epoch: Instant,
    stats: &mut Stats,
    timeout_ms: i32,
) {
    // SAFETY: `events` is a live buffer of its stated length.
    let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, timeout_ms) };
    for ev in events.iter().take(n.max(0) as usize) {
        let i = ev.u64 as usize;
        if let Some(c) = clients.get_mut(i) {
            pump(c, buf, epoch, stats);
        }
    }
}
