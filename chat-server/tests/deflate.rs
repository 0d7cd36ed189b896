//! permessage-deflate (RFC 7692) in chat-server, over 127.0.0.1: the
//! negotiation, compressed messages in and out (framed and compressed once
//! per broadcast), the plain form for clients that cannot take it, and the
//! bounded inflate (1009). Every read is bounded.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wsproto::blocking::{self, Transport, WebSocket};
use wsproto::deflate::DeflateConfig;
use wsproto::handshake::ClientRequest;
use wsproto::{Error, Event};

/// The 101 (or other) response head to an upgrade offering `extensions`.
fn upgrade_head(addr: SocketAddr, extensions: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: {extensions}\r\n\r\n"
    )
    .unwrap();
    let deadline = Instant::now() + WAIT;
    let mut head = Vec::new();
    let mut b = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        assert!(Instant::now() < deadline, "no response head");
        match s.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&b[..n]),
        }
    }
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

#[test]
fn offer_is_answered_with_server_no_context_takeover() {
    let server = start(|_| {});
    let head = upgrade_head(server.addr, "permessage-deflate; client_max_window_bits");
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let ext = head
        .lines()
        .find_map(|l| l.strip_prefix("sec-websocket-extensions:"))
        .unwrap_or_else(|| panic!("no extensions answer: {head}"))
        .trim();
    assert!(
        ext.starts_with("permessage-deflate; server_no_context_takeover"),
        "{ext}"
    );
    assert!(ext.contains("client_no_context_takeover"), "{ext}");
    server.stop().unwrap();
}

#[test]
fn no_deflate_answers_no_extension() {
    let server = start(|c| c.deflate = false);
    let head = upgrade_head(server.addr, "permessage-deflate; client_max_window_bits");
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(!head.contains("sec-websocket-extensions"), "{head}");
    server.stop().unwrap();
}

/// A TCP stream that counts the bytes read and keeps the first one read
/// after [`Tap::mark`]: the first byte of the next frame (FIN, RSV1,
/// opcode).
struct Tap {
    stream: TcpStream,
    read: Arc<AtomicUsize>,
    first: Arc<Mutex<Option<u8>>>,
}

impl Read for Tap {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.read(buf)?;
        if n > 0 {
            self.read.fetch_add(n, Ordering::SeqCst);
            let mut f = self.first.lock().unwrap();
            if f.is_none() {
                *f = Some(buf[0]);
            }
        }
        Ok(n)
    }
}

impl Write for Tap {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

impl Transport for Tap {
    fn set_read_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(t)
    }
    fn set_write_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        self.stream.set_write_timeout(t)
    }
}

struct Client {
    ws: WebSocket<Tap>,
    read: Arc<AtomicUsize>,
    first: Arc<Mutex<Option<u8>>>,
}

impl Client {
    /// Joins as `nick`, offering `deflate` if given.
    fn join(addr: SocketAddr, nick: &str, deflate: Option<DeflateConfig>) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        let read = Arc::new(AtomicUsize::new(0));
        let first = Arc::new(Mutex::new(Some(0)));
        let tap = Tap {
            stream,
            read: Arc::clone(&read),
            first: Arc::clone(&first),
        };
        let mut config = wsproto::Config::default();
        if let Some(d) = deflate.clone() {
            config = config.deflate(d);
        }
        let req = ClientRequest::from_url(&format!("ws://{addr}/ws")).unwrap();
        let (mut ws, resp) = blocking::client(tap, &req, config).unwrap();
        assert_eq!(resp.deflate.is_some(), deflate.is_some(), "{resp:?}");
        ws.set_idle_timeout(Some(WAIT));
        let mut c = Self { ws, read, first };
        c.ws.send(json!({"type": "join", "nick": nick}).to_string())
            .unwrap();
        assert_eq!(c.recv_type("welcome")["nick"], nick);
        c
    }

    fn read(&mut self) -> Result<Event, Error> {
        self.ws.read()
    }

    /// The next message of type `kind`, skipping others (bounded).
    fn recv_type(&mut self, kind: &str) -> Value {
        for _ in 0..1000 {
            match self.read() {
                Ok(Event::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["type"] == kind {
                        return v;
                    }
                }
                Ok(Event::Ping(_) | Event::Pong(_)) => {}
                other => panic!("expected {kind}, got {other:?}"),
            }
        }
        panic!("no {kind} message");
    }

    /// Starts counting: the bytes read and the first byte read from now.
    fn mark(&self) -> usize {
        *self.first.lock().unwrap() = None;
        self.read.load(Ordering::SeqCst)
    }

    /// The wire bytes since `mark` and the first of them.
    fn since(&self, mark: usize) -> (usize, u8) {
        let n = self.read.load(Ordering::SeqCst) - mark;
        (n, self.first.lock().unwrap().expect("nothing read"))
    }
}

/// A 2 KiB chat text that compresses well but is not one repeated byte.
fn long_text() -> String {
    let mut s = String::new();
    let mut i = 0u32;
    while s.len() < 2048 {
        s.push_str(&format!(
            "line {i}: the quick brown fox jumps over the lazy dog. "
        ));
        i += 1;
    }
    s.truncate(2048);
    s
}

#[test]
fn compressed_message_reaches_deflate_and_plain_clients() {
    let server = start(|_| {});
    let addr = server.addr;
    let mut zed = Client::join(addr, "zed", Some(DeflateConfig::default()));
    // Asks server_max_window_bits=10: our compressed frames (15-bit
    // window) are not valid for it, so it must get the plain form.
    let mut tiny = Client::join(
        addr,
        "tiny",
        Some(DeflateConfig::default().peer_window_bits(10)),
    );
    zed.recv_type("joined");
    let mut pia = Client::join(addr, "pia", None);
    zed.recv_type("joined");
    tiny.recv_type("joined");

    let text = long_text();
    let (z0, t0, p0) = (zed.mark(), tiny.mark(), pia.mark());
    zed.ws
        .send(json!({"type": "message", "text": text}).to_string())
        .unwrap();
    for c in [&mut zed, &mut tiny, &mut pia] {
        let m = c.recv_type("message");
        assert_eq!(
            (m["from"].as_str(), m["text"].as_str()),
            (Some("zed"), Some(text.as_str()))
        );
    }
    let (zn, zb) = zed.since(z0);
    let (tn, tb) = tiny.since(t0);
    let (pn, pb) = pia.since(p0);
    // FIN + RSV1 (compressed, RFC 7692 §6) + text, and far smaller.
    assert_eq!(zb, 0xC1, "deflate client got an uncompressed frame");
    assert!(zn < 1024, "compressed frame of {zn} bytes for 2 KiB");
    // FIN + text: no RSV1 for a client without deflate or with a small window.
    assert_eq!((pb, tb), (0x81, 0x81));
    assert!(pn > 2048 && tn > 2048, "{pn} {tn}");

    // Short chat lines go out plain even to a deflate client.
    let z1 = zed.mark();
    pia.ws
        .send(json!({"type": "message", "text": "hi"}).to_string())
        .unwrap();
    assert_eq!(zed.recv_type("message")["text"], "hi");
    assert_eq!(zed.since(z1).1, 0x81);
    server.stop().unwrap();
}

#[test]
fn zip_bomb_is_closed_1009() {
    let server = start(|c| c.max_message_bytes = 16 << 10);
    let addr = server.addr;
    let mut bomb = Client::join(addr, "bomb", Some(DeflateConfig::default()));
    // 4 MiB of one byte compresses to a few KiB: under the frame limit on
    // the wire, 256 times the message limit once inflated.
    bomb.ws
        .send(json!({"type": "message", "text": "a".repeat(4 << 20)}).to_string())
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no close");
        match bomb.read() {
            Ok(Event::Close(f)) => {
                assert_eq!(f.code.as_u16(), 1009, "{f:?}");
                eprintln!("bomb closed: {f:?}");
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("expected close 1009, got {e}"),
        }
    }
    server.stop().unwrap();
}
