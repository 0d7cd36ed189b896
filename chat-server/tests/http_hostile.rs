//! Hostile HTTP heads against the chat server, over raw TCP on 127.0.0.1:
//! foreign origins (cross-site WebSocket hijacking), absolute-form targets,
//! bare-LF heads and bodies smuggled into an upgrade. One server per test,
//! every read bounded.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use wsproto::blocking::WebSocket;
use wsproto::handshake::OriginPolicy;
use wsproto::{Event, Role};

/// Sends `request`; returns the socket, the response head and whatever
/// came after it, once the head is in (or the server closed, or `WAIT`).
fn send(addr: SocketAddr, request: &[u8]) -> (TcpStream, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            let rest = buf[end + 4..].to_vec();
            return (s, head, rest);
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    (s, head, Vec::new())
}

fn status(addr: SocketAddr, request: &str) -> String {
    let (_, head, _) = send(addr, request.as_bytes());
    head.lines().next().unwrap_or("(no answer)").to_owned()
}

/// A masked client Text frame (RFC 6455 §5.2), for payloads under 126 bytes.
fn masked_text(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut out = vec![0x81, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// After a 101: join and expect the welcome.
fn join_over(stream: TcpStream, early: &[u8], nick: &str) {
    let mut ws = WebSocket::from_raw(stream, Role::Client, wsproto::Config::default(), early);
    ws.set_idle_timeout(Some(WAIT));
    ws.send(format!(r#"{{"type":"join","nick":"{nick}"}}"#))
        .unwrap();
    loop {
        match ws.read() {
            Ok(Event::Text(t)) => {
                assert!(t.as_str().contains(r#""type":"welcome""#), "{}", t.as_str());
                return;
            }
            Ok(Event::Ping(_) | Event::Pong(_)) => {}
            other => panic!("expected the welcome, got {other:?}"),
        }
    }
}

#[test]
fn foreign_origin_gets_403_and_own_or_none_gets_101() {
    let server = start(|_| {});
    let addr = server.addr;
    let host = addr.to_string();

    let evil = upgrade("/ws", &host, "Origin: http://evil.example\r\n");
    let (mut s, head, mut body) = send(addr, evil.as_bytes());
    assert!(head.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{head}");
    let _ = s.read_to_end(&mut body);
    assert_eq!(body, b"origin \"http://evil.example\" is not allowed\n");

    for origin in [
        "null",
        "http://127.0.0.1", // another port
        "http://localhost.evil.example",
    ] {
        let line = status(
            addr,
            &upgrade("/ws", &host, &format!("Origin: {origin}\r\n")),
        );
        assert!(line.starts_with("HTTP/1.1 403 "), "{origin}: {line}");
    }

    // The page's own origin (scheme ignored, host case-insensitive) and a
    // client that sends none (not a browser) are let in.
    for extra in [
        format!("Origin: http://{host}\r\n"),
        format!("Origin: https://{host}\r\n"),
        String::new(),
    ] {
        let (s, head, early) = send(addr, upgrade("/ws", &host, &extra).as_bytes());
        assert!(head.starts_with("HTTP/1.1 101 "), "{extra:?}: {head}");
        join_over(s, &early, "own");
    }
    let port = addr.port();
    let line = status(
        addr,
        &upgrade(
            "/ws",
            &format!("LOCALHOST:{port}"),
            &format!("Origin: http://localhost:{port}\r\n"),
        ),
    );
    assert!(line.starts_with("HTTP/1.1 101 "), "{line}");
    server.stop().unwrap();
}

#[test]
fn allowed_origins_get_101() {
    let server = start(|c| {
        c.origin_policy = OriginPolicy::same_host()
            .allow("https://app.example:8443")
            .unwrap();
    });
    let host = server.addr.to_string();
    let ok = upgrade("/ws", &host, "Origin: https://APP.example:8443\r\n");
    assert!(status(server.addr, &ok).starts_with("HTTP/1.1 101 "));
    let other = upgrade("/ws", &host, "Origin: http://app.example:8443\r\n");
    assert!(status(server.addr, &other).starts_with("HTTP/1.1 403 "));
    server.stop().unwrap();

    let server = start(|c| c.origin_policy = OriginPolicy::same_host().allow("*").unwrap());
    let host = server.addr.to_string();
    for origin in ["http://evil.example", "null"] {
        let req = upgrade("/ws", &host, &format!("Origin: {origin}\r\n"));
        assert!(
            status(server.addr, &req).starts_with("HTTP/1.1 101 "),
            "{origin}"
        );
    }
    server.stop().unwrap();
}

#[test]
fn absolute_form_target_is_served_like_origin_form() {
    let server = start(|_| {});
    let addr = server.addr;
    let host = addr.to_string();

    let req = upgrade(
        &format!("http://{host}/ws"),
        &host,
        &format!("Origin: http://{host}\r\n"),
    );
    let (s, head, early) = send(addr, req.as_bytes());
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    join_over(s, &early, "absolute");

    let (mut s, head, mut body) = send(addr, b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let _ = s.read_to_end(&mut body);
    assert!(String::from_utf8_lossy(&body).contains("<html"));

    let line = status(addr, "GET HTTP://h/healthz?x=1 HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(line.starts_with("HTTP/1.1 200 "), "{line}");
    let line = status(addr, "GET * HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(line.starts_with("HTTP/1.1 400 "), "{line}");
    server.stop().unwrap();
}

#[test]
fn bare_lf_head_gets_400_within_a_second() {
    let server = start(|_| {});
    let host = server.addr.to_string();
    for req in [
        upgrade("/ws", &host, "").replace("\r\n", "\n"),
        "GET / HTTP/1.1\nHost: h\n\n".to_owned(),
        "GET / HTTP/1.1\r\nHost: h\n\r\n".to_owned(),
    ] {
        let start = Instant::now();
        let line = status(server.addr, &req);
        let took = start.elapsed();
        assert!(line.starts_with("HTTP/1.1 400 "), "{req:?}: {line}");
        assert!(
            took < Duration::from_secs(1),
            "{req:?}: answered after {took:?}"
        );
    }
    server.stop().unwrap();
}

#[test]
fn not_http_gets_400_at_once_and_a_trickled_request_still_works() {
    let server = start(|_| {});
    // The start of a TLS ClientHello, as a browser sends to https://.
    let hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
    for garbage in [
        &hello[..],
        b"\r\n\x00GET / HTTP/1.1",
        b" GET /",
        b"AVERYLONGMETHODNAME / HTTP/1.1",
    ] {
        let start = Instant::now();
        let (_, head, _) = send(server.addr, garbage);
        let took = start.elapsed();
        assert!(head.starts_with("HTTP/1.1 400 "), "{garbage:?}: {head}");
        assert!(took < Duration::from_secs(1), "{garbage:?}: after {took:?}");
    }
    // One byte per write: every prefix may still start a request.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_nodelay(true).unwrap();
    for b in b"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n" {
        s.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
    server.stop().unwrap();
}

#[test]
fn upgrade_with_a_body_is_refused_and_the_body_never_read_as_frames() {
    let server = start(|_| {});
    let host = server.addr.to_string();
    let join = masked_text(br#"{"type":"join","nick":"smuggled"}"#);
    for header in [
        format!("Content-Length: {}\r\n", join.len()),
        "Content-Length: 5\r\n".to_owned(),
        "Transfer-Encoding: chunked\r\n".to_owned(),
    ] {
        let mut req = upgrade("/ws", &host, &header).into_bytes();
        req.extend_from_slice(&join);
        let (mut s, head, mut rest) = send(server.addr, &req);
        assert!(head.starts_with("HTTP/1.1 400 "), "{header:?}: {head}");
        let _ = s.read_to_end(&mut rest);
        let rest = String::from_utf8_lossy(&rest);
        assert!(!rest.contains("welcome"), "{header:?}: {rest}");
    }
    server.stop().unwrap();
}

const BIN: &str = env!("CARGO_BIN_EXE_chat-server");

/// Runs the binary with `args`, sends each request, stops it with SIGINT
/// and returns its log (stderr lines).
fn run_binary(args: &[&str], requests: &[(String, &str)]) -> Vec<String> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(BIN)
        .args(["--addr", "127.0.0.1:0", "--ephemeral"])
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    let addr: SocketAddr = loop {
        let line = lines.next().expect("server exited early").unwrap();
        log.push(line.clone());
        if let Some(rest) = line.strip_prefix("chat: listening on http://") {
            break rest.trim_end_matches('/').parse().unwrap();
        }
    };
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    for (request, want) in requests {
        let request = request.replace("{host}", &addr.to_string());
        let line = status(addr, &request);
        assert!(line.starts_with(want), "{request:?}: {line}");
    }
    // SAFETY: sending a signal to our own child process by its pid.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "no exit after SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    }
    log.extend(drain.join().unwrap());
    log
}

fn hostile_requests() -> Vec<(String, &'static str)> {
    vec![
        (
            upgrade("/ws", "{host}", "Origin: http://evil.example\t\"x\r\n"),
            "HTTP/1.1 403 ",
        ),
        (
            upgrade("/ws", "{host}", "Origin: https://app.example\r\n"),
            "HTTP/1.1 101 ",
        ),
        ("GET / HTTP/1.1\nHost: h\n\n".into(), "HTTP/1.1 400 "),
        (
            "GET /nope\t HTTP/1.1\r\nHost: h\r\n\r\n".into(),
            "HTTP/1.1 ",
        ),
        ("BREW / HTTP/1.1\r\nHost: h\r\n\r\n".into(), "HTTP/1.1 405 "),
    ]
}

#[test]
fn allowed_origin_flag_and_refusal_log_lines() {
    let log = run_binary(
        &["--allowed-origin", "https://app.example"],
        &hostile_requests(),
    );
    let refused: Vec<_> = log.iter().filter(|l| l.contains(" http 403 ")).collect();
    assert_eq!(refused.len(), 1, "{log:#?}");
    // The origin as sent held a TAB and a quote: both escaped, one line.
    assert!(
        refused[0].contains(r#"origin "http://evil.example\t\"x" is not allowed"#),
        "{}",
        refused[0]
    );
    assert!(log.iter().all(|l| !l.contains('\t')), "{log:#?}");

    for bad in ["null", "app.example", "https://app.example/path"] {
        let out = std::process::Command::new(BIN)
            .args(["--allowed-origin", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--allowed-origin"));
    }
    let help = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--allowed-origin ORIGIN"));
}

#[test]
fn quiet_silences_every_http_line() {
    let log = run_binary(
        &["--quiet", "--allowed-origin", "https://app.example"],
        &hostile_requests(),
    );
    // Only the lines about the server itself remain.
    for line in &log {
        assert!(
            line.starts_with("chat: listening on ") || line.contains("signal received"),
            "a per-connection line under --quiet: {line:?}"
        );
    }
}
