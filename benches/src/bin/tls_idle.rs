//! Server RSS per idle connection, `ws://` vs `wss://` (issue 14): opens
//! `--count` WebSocket connections to a running chat-server, joins each,
//! reads its welcome, then holds them all and reads the server's RSS.
//!
//! ```text
//! tls_idle --addr 127.0.0.1:PORT --pid SERVER_PID --count 10000 [--ca CA.pem]
//! ```
//!
//! With `--ca` the connections are TLS (rustls, ring provider, the PEM CA
//! as the only root, server name `localhost`). Prints one `RESULT` line:
//! (RSS with the clients held − RSS before the first connect) ÷ count.
//! Run with the server's `--ping-interval` above the run's length (the
//! clients never answer a Ping), `--max-connections` above the count, and
//! an open-file limit above it (`ulimit -n`; scripts/tls_idle.sh does all
//! three).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wsproto::blocking::{self, Transport, WebSocket};
use wsproto::handshake::ClientRequest;
use wsproto::tls::rustls;
use wsproto::Event;

/// Plain TCP or rustls over it, as one wsproto transport.
enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(s) => s.flush(),
        }
    }
}

impl Transport for Stream {
    fn set_read_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.set_read_timeout(t),
            Self::Tls(s) => s.sock.set_read_timeout(t),
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("server status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn connect(addr: &str, tls: Option<&Arc<ClientConfig>>, nick: &str) -> WebSocket<Stream> {
    let sock = TcpStream::connect(addr).expect("connect");
    sock.set_nodelay(true).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let stream = match tls {
        None => Stream::Plain(sock),
        Some(cfg) => {
            let name = ServerName::try_from("localhost").unwrap();
            let conn = ClientConnection::new(Arc::clone(cfg), name).unwrap();
            Stream::Tls(Box::new(StreamOwned::new(conn, sock)))
        }
    };
    let port = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap();
    let req = ClientRequest::new("localhost", port, "/ws").unwrap();
    let (mut ws, _) =
        blocking::client(stream, &req, wsproto::Config::default()).expect("handshake");
    ws.send(format!(r#"{{"type":"join","nick":"{nick}"}}"#))
        .unwrap();
    loop {
        match ws.read().expect("welcome") {
            Event::Text(t) if t.as_str().contains(r#""type":"welcome""#) => return ws,
            _ => {}
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut addr, mut pid, mut count, mut ca) = (String::new(), 0u32, 10_000usize, None);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => addr = value,
            "--pid" => pid = value.parse().expect("--pid"),
            "--count" => count = value.parse().expect("--count"),
            "--ca" => ca = Some(value),
            _ => panic!("unknown option {flag}"),
        }
    }
    let tls = ca.map(|path| {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&path).expect("--ca") {
            roots
                .add(cert.expect("--ca PEM"))
                .expect("--ca certificate");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    });
    let before = rss_kib(pid);
    let start = Instant::now();
    let held: Vec<_> = (0..count)
        .map(|i| connect(&addr, tls.as_ref(), &format!("idle{i}")))
        .collect();
    let ramp = start.elapsed();
    // Let the presence counts of the joins go out and the server settle.
    std::thread::sleep(Duration::from_secs(3));
    let after = rss_kib(pid);
    let per = (after.saturating_sub(before)) as f64 / count as f64;
    println!(
        "RESULT mode={} count={count} rss_before_kib={before} rss_after_kib={after} per_conn_kib={per:.2} ramp_s={:.1}",
        if tls.is_some() { "wss" } else { "ws" },
        ramp.as_secs_f64()
    );
    drop(held);
}
