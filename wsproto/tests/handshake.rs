//! The server handshake of the blocking adapter against hostile requests,
//! over real sockets on 127.0.0.1. Every read is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};
use wsproto::blocking;
use wsproto::handshake::{ClientRequest, OriginPolicy};
use wsproto::{Config, Error, HandshakeError};

const LIMIT: Duration = Duration::from_secs(10);

/// Serves one connection with `blocking::accept_with`; returns the verdict.
fn serve(config: Config) -> (SocketAddr, thread::JoinHandle<Result<(), Error>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(LIMIT)).unwrap();
        blocking::accept_with(stream, config, &[]).map(|_| ())
    });
    (addr, handle)
}

/// Sends `request` raw; returns the answer (read to EOF), how long it
/// took, and the server's verdict.
fn exchange(config: Config, request: &[u8]) -> (String, Duration, Result<(), Error>) {
    let (addr, server) = serve(config);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let start = Instant::now();
    s.write_all(request).unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    // Until the status line is in (a 101 leaves the socket open).
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
    }
    let took = start.elapsed();
    drop(s);
    (
        String::from_utf8_lossy(&answer).into_owned(),
        took,
        server.join().unwrap(),
    )
}

fn upgrade(target: &str, extra: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\n{extra}Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

#[test]
fn cross_site_origin_is_refused_by_default() {
    let req = upgrade(
        "/ws",
        "Host: 127.0.0.1:9\r\nOrigin: http://evil.example\r\n",
    );
    let (answer, _, verdict) = exchange(Config::default(), req.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{answer}");
    assert!(matches!(
        verdict,
        Err(Error::Handshake(HandshakeError::OriginRefused { ref origin })) if origin == "http://evil.example"
    ));

    let same = upgrade("/ws", "Host: 127.0.0.1:9\r\nOrigin: http://127.0.0.1:9\r\n");
    let (answer, _, verdict) = exchange(Config::default(), same.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
    verdict.unwrap();

    let listed = Config::default().origin_policy(
        OriginPolicy::same_host()
            .allow("http://evil.example")
            .unwrap(),
    );
    let (answer, _, verdict) = exchange(listed, req.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
    verdict.unwrap();
}

/// The Autobahn fuzzing client and our own client send no `Origin`: the
/// default policy must let them in.
#[test]
fn our_client_is_accepted_by_the_default_policy() {
    let (addr, server) = serve(Config::default());
    let (ws, _) = blocking::connect(&format!("ws://{addr}/")).unwrap();
    drop(ws);
    server.join().unwrap().unwrap();

    // With an explicit same-host Origin, as a browser would send.
    let (addr, server) = serve(Config::default());
    let req = ClientRequest::new("127.0.0.1", addr.port(), "/")
        .and_then(|r| r.header("Origin", &format!("http://127.0.0.1:{}", addr.port())))
        .unwrap();
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    blocking::client(stream, &req, Config::default()).unwrap();
    server.join().unwrap().unwrap();
}

#[test]
fn bare_lf_head_gets_400_at_once() {
    let req = upgrade("/ws", "Host: 127.0.0.1\r\n").replace("\r\n", "\n");
    let (answer, took, verdict) = exchange(Config::default(), req.as_bytes());
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    assert!(matches!(
        verdict,
        Err(Error::Handshake(HandshakeError::MalformedHttp(_)))
    ));
}

#[test]
fn upgrade_carrying_a_body_is_refused() {
    // A masked Text frame "hello" smuggled as the body.
    let body = b"\x81\x85abcd\x09\x07\x0f\x08\x0e";
    for header in ["Content-Length: 11\r\n", "Transfer-Encoding: chunked\r\n"] {
        let mut req = upgrade("/ws", &format!("Host: 127.0.0.1\r\n{header}")).into_bytes();
        req.extend_from_slice(body);
        let (answer, _, verdict) = exchange(Config::default(), &req);
        assert!(answer.starts_with("HTTP/1.1 400 "), "{header}: {answer}");
        assert!(matches!(
            verdict,
            Err(Error::Handshake(HandshakeError::UnexpectedBody { .. }))
        ));
    }
}

#[test]
fn absolute_form_target_is_accepted() {
    let req = upgrade("http://127.0.0.1:9/ws", "Host: 127.0.0.1:9\r\n");
    let (addr, server) = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream.set_read_timeout(Some(LIMIT)).unwrap();
            blocking::accept_with(stream, Config::default(), &[]).map(|(_, req)| req)
        });
        (addr, handle)
    };
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    let req = server.join().unwrap().unwrap();
    assert_eq!(
        (req.path.as_str(), req.host.as_str()),
        ("/ws", "127.0.0.1:9")
    );
}
