//! Upload throughput and server memory (issue 16, "Measure"): N clients
//! (default 20) each join the chat, then all POST a distinct 5 MiB image to
//! `/upload` at once. Reported per run: wall time until every 201, the
//! throughput, and the server's RSS before and at its peak (sampled every
//! 5 ms from `/proc/PID/status`, plus `VmHWM`). The same bodies go, in the
//! same run, to a baseline sink (this binary with `--sink`: reads each
//! body into a 64 KiB buffer and answers, no hashing, no disk), so the
//! cost of hashing, writing and fsyncing shows as a ratio.
//!
//! ```sh
//! cargo build --release -p chat-server -p benches
//! taskset -c 1 target/release/upload --server target/release/chat-server --server-cpu 0 --runs 3
//! ```
//!
//! Std only (plus wsproto for the joins); every socket read has a timeout.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

struct Opts {
    server: String,
    server_cpu: Option<String>,
    clients: usize,
    bytes: usize,
    runs: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--sink") {
        sink();
        return;
    }
    let mut o = Opts {
        server: "target/release/chat-server".into(),
        server_cpu: None,
        clients: 20,
        bytes: 5 << 20,
        runs: 3,
    };
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--server" => o.server = value(),
            "--server-cpu" => o.server_cpu = Some(value()),
            "--clients" => o.clients = value().parse().expect("--clients N"),
            "--bytes" => o.bytes = value().parse().expect("--bytes N"),
            "--runs" => o.runs = value().parse().expect("--runs N"),
            other => panic!("unknown option {other}"),
        }
    }
    let bodies: Vec<Vec<u8>> = (0..o.clients).map(|i| image(o.bytes, i)).collect();
    let mut rows = Vec::new();
    for run in 1..=o.runs {
        let base = measure(&o, &bodies, true);
        let chat = measure(&o, &bodies, false);
        println!(
            "run {run}: chat-server {:.0} MiB/s in {:.2} s, RSS {} -> peak {} KiB (VmHWM {} KiB) | sink {:.0} MiB/s, RSS {} -> peak {} KiB",
            chat.mib_s, chat.secs, chat.rss_before, chat.rss_peak, chat.hwm, base.mib_s, base.rss_before, base.rss_peak
        );
        rows.push((chat, base));
    }
    let med = |f: &dyn Fn(&(Sample, Sample)) -> f64| {
        let mut v: Vec<f64> = rows.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "median of {} runs, {} clients x {} bytes: chat-server {:.0} MiB/s, sink {:.0} MiB/s, ratio {:.2}; \
         chat-server RSS growth {:.0} KiB ({:.0} KiB per concurrent upload), peak {:.0} KiB; sink RSS growth {:.0} KiB",
        rows.len(),
        o.clients,
        o.bytes,
        med(&|r| r.0.mib_s),
        med(&|r| r.1.mib_s),
        med(&|r| r.0.mib_s / r.1.mib_s),
        med(&|r| (r.0.rss_peak - r.0.rss_before) as f64),
        med(&|r| (r.0.rss_peak - r.0.rss_before) as f64 / o.clients as f64),
        med(&|r| r.0.rss_peak as f64),
        med(&|r| (r.1.rss_peak - r.1.rss_before) as f64),
    );
}

struct Sample {
    secs: f64,
    mib_s: f64,
    rss_before: u64,
    rss_peak: u64,
    hwm: u64,
}

/// A PNG head of a sane size, then `len` bytes in all, distinct per `seed`
/// (the server reads only the header; distinct bodies are stored apart).
fn image(len: usize, seed: usize) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\x04\0\0\0\x03\0\x08\x02\0\0\0".to_vec();
    out.extend_from_slice(&[0, 0, 0, 0]);
    let mut x = seed as u64 * 0x9E37_79B9_7F4A_7C15 + 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn spawn(o: &Opts, sink: bool, dir: &std::path::Path) -> (Child, SocketAddr) {
    let me = std::env::current_exe().expect("own path");
    let (prog, mut args): (String, Vec<String>) = if sink {
        (me.to_string_lossy().into_owned(), vec!["--sink".into()])
    } else {
        (
            o.server.clone(),
            [
                "--addr",
                "127.0.0.1:0",
                "--quiet",
                "--upload-rate",
                "100000",
                "--max-concurrent-uploads",
                "64",
                // Media go to DIR/media (the database beside them is
                // not touched by uploads).
                "--data",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([dir.to_string_lossy().into_owned()])
            .collect(),
        )
    };
    let mut cmd = match &o.server_cpu {
        Some(cpu) => {
            args.splice(0..0, ["-c".to_owned(), cpu.clone(), prog]);
            let mut c = Command::new("taskset");
            c.args(&args);
            c
        }
        None => {
            let mut c = Command::new(prog);
            c.args(&args);
            c
        }
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the server");
    let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the server printed its address")
            .expect("stderr");
        if let Some(rest) = line.strip_prefix("chat: listening on http://") {
            break rest.trim_end_matches('/').parse().expect("an address");
        }
    };
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    (child, addr)
}

fn measure(o: &Opts, bodies: &[Vec<u8>], sink: bool) -> Sample {
    let dir = std::env::temp_dir().join(format!("upload-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut child, addr) = spawn(o, sink, &dir);
    let pid = child.id();
    // Every client joins first (its token authorises the upload).
    let mut sockets = Vec::new();
    let mut tokens = Vec::new();
    for i in 0..bodies.len() {
        if sink {
            tokens.push(String::from("sink"));
            continue;
        }
        let (mut ws, _) = wsproto::blocking::connect(&format!("ws://{addr}/ws")).expect("connect");
        ws.set_idle_timeout(Some(WAIT));
        ws.send(format!(r#"{{"type":"join","nick":"up{i}"}}"#))
            .expect("join");
        let token = loop {
            match ws.read().expect("welcome") {
                wsproto::Event::Text(t) if t.as_str().contains(r#""type":"welcome""#) => {
                    let s = t.as_str();
                    let at = s.find(r#""token":""#).expect("token") + 9;
                    break s[at..at + s[at..].find('"').expect("end")].to_owned();
                }
                _ => {}
            }
        };
        tokens.push(token);
        sockets.push(ws);
    }
    std::thread::sleep(Duration::from_millis(200));
    let rss_before = status(pid, "VmRSS:");
    let peak = Arc::new(Mutex::new(rss_before));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (Arc::clone(&peak), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                let r = status(pid, "VmRSS:");
                let mut p = peak.lock().unwrap_or_else(|e| e.into_inner());
                *p = (*p).max(r);
                drop(p);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let barrier = Arc::new(Barrier::new(bodies.len() + 1));
    let threads: Vec<_> = bodies
        .iter()
        .zip(&tokens)
        .map(|(body, token)| {
            let (body, token, barrier) = (body.clone(), token.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.set_read_timeout(Some(WAIT)).expect("timeout");
                s.set_write_timeout(Some(WAIT)).expect("timeout");
                barrier.wait();
                let head = format!(
                    "POST /upload HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                s.write_all(head.as_bytes()).expect("head");
                for piece in body.chunks(64 << 10) {
                    s.write_all(piece).expect("body");
                }
                let mut answer = Vec::new();
                let _ = s.read_to_end(&mut answer);
                let line = String::from_utf8_lossy(&answer[..answer.len().min(12)]).into_owned();
                assert!(line.starts_with("HTTP/1.1 201"), "upload answered {line:?}");
            })
        })
        .collect();
    barrier.wait();
    let t = Instant::now();
    for th in threads {
        th.join().expect("an upload failed");
    }
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Release);
    let _ = sampler.join();
    let hwm = status(pid, "VmHWM:");
    let rss_peak = *peak.lock().unwrap_or_else(|e| e.into_inner());
    drop(sockets);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let total = bodies.iter().map(Vec::len).sum::<usize>() as f64;
    Sample {
        secs,
        mib_s: total / (1 << 20) as f64 / secs,
        rss_before,
        rss_peak,
        hwm,
    }
}

fn status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The baseline: accepts, reads each request's head and `Content-Length`
/// body into one 64 KiB buffer, answers 201. A thread per connection, as
/// chat-server's HTTP side.
fn sink() {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    eprintln!(
        "chat: listening on http://{}/",
        l.local_addr().expect("addr")
    );
    for s in l.incoming().map_while(Result::ok) {
        std::thread::spawn(move || {
            let mut s = s;
            let _ = s.set_read_timeout(Some(WAIT));
            let mut buf = vec![0u8; 64 << 10];
            let mut head = Vec::new();
            let body_start = loop {
                let n = match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                head.extend_from_slice(&buf[..n]);
                if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
            };
            let text = String::from_utf8_lossy(&head[..body_start]).to_ascii_lowercase();
            let len: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let mut got = head.len() - body_start;
            while got < len {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n,
                }
            }
            let _ = s.write_all(
                b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            );
        });
    }
}
