//! Regression tests for a session's lifecycle (issue 10, items 1, 2, 5, 6
//! and 7): one bound for every byte queued for a client, bounded replies,
//! a replaced session that stops acting, free `who` after a change, and
//! logs that a peer cannot forge. Over 127.0.0.1, every read bounded.

mod common;

use common::*;
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wsproto::CloseCode;

/// DESIGN.md, "Replies are bounded".
const REPLY_MAX: usize = 256 << 10;

/// A raw socket past the upgrade, for clients no library would be.
fn raw_upgraded(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "));
    s
}

/// A masked client frame (key 0: XOR with zero leaves the payload as is).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(payload);
    f
}

/// Splits unmasked server frames: (opcode, payload) each.
fn server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 2 {
        let op = bytes[0] & 0x0f;
        let (len, head) = match bytes[1] & 0x7f {
            126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 if bytes.len() >= 10 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n if n < 126 => (n as usize, 2),
            _ => break,
        };
        if bytes.len() < head + len {
            break;
        }
        out.push((op, bytes[head..head + len].to_vec()));
        bytes = &bytes[head + len..];
    }
    out
}

/// Reads until EOF (or a reset), bounded by `limit`.
fn read_to_end_within(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 64 << 10];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the server kept the connection open");
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e} after {} bytes", out.len()),
        }
    }
}

/// Item 1: a client that floods Pings and never reads is closed 1008 and
/// dropped within 2 s; before, it got a Pong for every Ping, forever.
#[test]
fn ping_flood_is_closed_1008_and_dropped_within_2s() {
    let server = start(|_| {});
    let (mut watcher, _) = Client::join(server.addr, "watcher");
    let mut s = raw_upgraded(server.addr);
    s.write_all(&client_frame(0x1, br#"{"type":"join","nick":"flood"}"#))
        .unwrap();
    watcher.recv_type("joined");
    let ping = client_frame(0x9, &[b'p'; 125]);
    let burst: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 5000)
        .collect();
    let t = Instant::now();
    // The server may drop the socket while we write: that is the point.
    let _ = s.write_all(&burst);
    let bytes = read_to_end_within(&mut s, Duration::from_secs(6));
    let elapsed = t.elapsed();
    let frames = server_frames(&bytes);
    let pongs = frames.iter().filter(|(op, _)| *op == 0xA).count();
    let close = frames
        .iter()
        .find(|(op, _)| *op == 0x8)
        .expect("a Close frame");
    assert_eq!(
        u16::from_be_bytes([close.1[0], close.1[1]]),
        1008,
        "{:?}",
        String::from_utf8_lossy(&close.1[2..])
    );
    assert_eq!(
        frames.last().map(|f| f.0),
        Some(0x8),
        "nothing after the Close"
    );
    assert!(pongs <= 100, "{pongs} pongs for a flood");
    assert!(
        elapsed < Duration::from_secs(4),
        "dropped after {elapsed:?}"
    );
    // The room is told the flooder left.
    assert_eq!(watcher.recv_type("left")["nick"], "flood");
}

/// Item 1: control frames sent within the rate still produce Pongs that
/// count toward --max-queue-bytes, like data.
#[test]
fn pongs_count_toward_the_queue_bound() {
    let server = start(|c| {
        c.max_queue_bytes = 64 << 10;
        c.control_burst = 1_000_000;
        c.control_per_sec = 1_000_000;
    });
    let mut s = raw_upgraded(server.addr);
    let ping = client_frame(0x9, &[b'p'; 125]);
    let burst: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 2000)
        .collect();
    let t = Instant::now();
    // Up to 200,000 Pongs (25 MB): more than loopback socket buffers hold
    // (autotuned, they absorb several MB), so the queue must pass its bound.
    for _ in 0..100 {
        if s.write_all(&burst).is_err() {
            break;
        }
    }
    // The old server never ended this connection (the read times out). The
    // 1008 Close is queued behind a full socket buffer; if this client,
    // still writing, does not read it within the 2 s drain deadline, TCP is
    // dropped without it, which is the policy too.
    let bytes = read_to_end_within(&mut s, Duration::from_secs(10));
    let frames = server_frames(&bytes);
    if let Some(close) = frames.iter().find(|(op, _)| *op == 0x8) {
        assert_eq!(u16::from_be_bytes([close.1[0], close.1[1]]), 1008);
        assert_eq!(
            frames.last().map(|f| f.0),
            Some(0x8),
            "nothing after the Close"
        );
    }
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
}

/// Item 5: a welcome over a big history fits the joiner's own queue; it
/// carries the newest messages that fit in 256 KiB and `more`, and
/// `history` pages back through the rest the same way.
#[test]
fn welcome_and_history_replies_are_bounded_and_page() {
    let server = start(|c| {
        c.history = 200;
        c.rate_burst = 10_000;
        c.rate_per_sec = 10_000;
    });
    let (mut poster, w) = Client::join(server.addr, "poster");
    assert_eq!(w["more"], false, "more is always present");
    let cjk: String = "漢".repeat(4096);
    let ctl: String = "\u{1}".repeat(4096); // 6 JSON bytes each
    let mut ids = Vec::new();
    for text in std::iter::repeat_n(&cjk, 100).chain(std::iter::repeat_n(&ctl, 100)) {
        poster.send(json!({"type": "message", "text": text}));
        ids.push(poster.recv_type("message")["id"].as_u64().unwrap());
    }
    // A joiner that reads nothing for a while: the whole history (3.7 MB)
    // at once would overflow its 1 MiB queue.
    let mut joiner = Client::connect(server.addr);
    joiner.send(json!({"type": "join", "nick": "late"}));
    std::thread::sleep(Duration::from_millis(1500));
    let (w, size) = joiner.recv_sized();
    assert_eq!(w["type"], "welcome", "{}", w["type"]);
    assert!(size <= REPLY_MAX, "welcome of {size} bytes");
    assert_eq!(w["more"], true);
    let mut got: Vec<u64> = w["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert!(!got.is_empty());
    assert_eq!(got.last(), ids.last(), "the newest come first");
    let mut more = true;
    for _ in 0..200 {
        if !more {
            break;
        }
        joiner.send(json!({"type": "history", "before": got[0], "limit": 100}));
        let (h, size) = joiner.recv_sized();
        assert_eq!(h["type"], "history");
        assert!(size <= REPLY_MAX, "history of {size} bytes");
        more = h["more"].as_bool().expect("more is always present");
        let page: Vec<u64> = h["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_u64().unwrap())
            .collect();
        assert!(!page.is_empty() || !more);
        got.splice(0..0, page);
    }
    assert_eq!(got, ids, "paging back yields every message once, in order");
    // And the joiner is still connected.
    joiner.send(json!({"type": "message", "text": "made it"}));
    assert_eq!(joiner.recv_type("message")["text"], "made it");
}

/// Item 6: from the moment of a takeover, the old connection's requests
/// are refused: it posts nothing as the nick and renames nobody.
#[test]
fn replaced_session_acts_no_more_after_takeover() {
    let server = start(|_| {});
    let (mut old, w) = Client::join(server.addr, "alice");
    let token = w["token"].as_str().unwrap().to_owned();
    let (mut bob, _) = Client::join(server.addr, "bob");
    old.recv_type("joined");
    let mut new = Client::connect(server.addr);
    new.send(json!({"type": "join", "nick": "alice", "token": token}));
    assert_eq!(new.recv()["type"], "welcome");
    // The old connection has not read its Close yet and keeps talking.
    for i in 0..5 {
        old.send(json!({"type": "message", "text": format!("ghost {i}")}));
    }
    old.send(json!({"type": "nick", "nick": "evil"}));
    old.send(json!({"type": "private", "to": "bob", "text": "ghost"}));
    std::thread::sleep(Duration::from_millis(500));
    new.send(json!({"type": "message", "text": "real"}));
    let m = bob.recv();
    assert_eq!(
        (m["type"].as_str(), m["from"].as_str(), m["text"].as_str()),
        (Some("message"), Some("alice"), Some("real")),
        "{m}"
    );
    bob.send(json!({"type": "who"}));
    assert_eq!(bob.recv_type("users")["users"], json!(["alice", "bob"]));
    assert_eq!(old.expect_close(), 4000);
}

/// Item 2 (server side): a `who` whose answer changed since the client's
/// last `users` list is free; a repeated `who` with nothing new costs a
/// token as before.
#[test]
fn who_after_a_change_is_not_counted() {
    let server = start(|c| {
        c.rate_burst = 3;
        c.rate_per_sec = 1;
        c.rate_refusals_to_close = 1000;
    });
    let (mut a, _) = Client::join(server.addr, "a"); // the join used a token
    let mut others = Vec::new();
    for i in 0..8 {
        let (c, _) = Client::join(server.addr, &format!("u{i}"));
        others.push(c);
        a.recv_type("joined");
        a.send(json!({"type": "who"}));
        let v = a.recv();
        assert_eq!(v["type"], "users", "who #{i} after a join: {v}");
        assert_eq!(v["users"].as_array().unwrap().len(), i + 2);
    }
    // Nothing changed since: these cost, and the bucket runs dry.
    let mut refused = false;
    for _ in 0..10 {
        a.send(json!({"type": "who"}));
        if a.recv()["code"] == "rate_limited" {
            refused = true;
            break;
        }
    }
    assert!(
        refused,
        "a repeated who with nothing new still costs a token"
    );
}

/// Collects a child's stderr lines on a thread.
fn collect_stderr(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        let mut r = BufReader::new(stderr);
        let mut line = Vec::new();
        while r.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            sink.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&line).into_owned());
            line.clear();
        }
    });
    lines
}

/// Starts the binary on a free port; returns it, its address and its
/// stderr lines.
fn spawn_binary(args: &[&str]) -> (Child, SocketAddr, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--addr", "127.0.0.1:0", "--ephemeral"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = collect_stderr(&mut child);
    let deadline = Instant::now() + WAIT;
    loop {
        let addr = lines.lock().unwrap().iter().find_map(|l| {
            l.trim()
                .strip_prefix("chat: listening on http://")
                .and_then(|a| a.trim_end_matches('/').parse().ok())
        });
        if let Some(addr) = addr {
            return (child, addr, lines);
        }
        assert!(Instant::now() < deadline, "no listening line");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Item 7: with --quiet no per-connection line is printed, not even for a
/// takeover or a queue overflow.
#[test]
fn quiet_silences_takeover_and_overflow_lines() {
    let (mut child, addr, lines) = spawn_binary(&[
        "--quiet",
        "--max-queue-bytes",
        "65536",
        "--max-text",
        "10000",
        "--rate-burst",
        "100000",
        "--rate-per-sec",
        "100000",
    ]);
    // A takeover.
    let (mut old, w) = Client::join(addr, "alice");
    let mut new = Client::connect(addr);
    new.send(json!({"type": "join", "nick": "alice", "token": w["token"]}));
    assert_eq!(new.recv()["type"], "welcome");
    assert_eq!(old.expect_close(), 4000);
    // An overflow: `slow` never reads while the sender posts 12 MB.
    let (mut slow, _) = Client::join(addr, "slow");
    slow.ws.get_ref().set_read_timeout(Some(WAIT)).unwrap();
    let (mut sender, _) = Client::join(addr, "sender");
    // 12 MB: more than loopback socket buffers absorb.
    let msg = json!({"type": "message", "text": "y".repeat(10_000)});
    for _ in 0..1200 {
        sender.send(msg.clone());
        sender.recv_type("message");
    }
    assert_eq!(slow.expect_close(), 1008);
    sender.ws.close(CloseCode::NORMAL, "bye").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let _ = child.kill();
    let _ = child.wait();
    std::thread::sleep(Duration::from_millis(100));
    let lines = lines.lock().unwrap();
    let chatter: Vec<&String> = lines
        .iter()
        .filter(|l| !l.starts_with("chat: listening on ") && !l.starts_with("chat: warning: "))
        .collect();
    assert!(chatter.is_empty(), "--quiet printed: {chatter:?}");
}

/// Item 7: a peer-supplied close reason reaches the log escaped: it cannot
/// start a line of its own nor send an escape sequence to the terminal.
#[test]
fn close_reason_is_logged_escaped() {
    let (mut child, addr, lines) = spawn_binary(&[]);
    let (mut c, _) = Client::join(addr, "mallory");
    c.ws.close(CloseCode::NORMAL, "\n[fake] line\x1b[31m")
        .unwrap();
    let _ = c.expect_close();
    let deadline = Instant::now() + WAIT;
    while !lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("disconnected"))
    {
        assert!(Instant::now() < deadline, "no disconnect line");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let lines = lines.lock().unwrap();
    let all = lines.concat();
    assert!(!all.contains('\x1b'), "raw escape in the log: {all:?}");
    assert!(
        lines.iter().all(|l| !l.starts_with("[fake]")),
        "forged line: {all:?}"
    );
    assert!(
        all.contains(r"\n[fake] line\u{1b}[31m"),
        "reason not logged escaped: {all:?}"
    );
}
