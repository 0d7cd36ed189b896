//! wss:// (the `rustls` feature): our client against our server with a
//! throwaway CA, both roles and every message type; certificates the client
//! must refuse, each with its typed error; bad TLS input at the server;
//! full-duplex traffic over one split TLS connection.
#![cfg(feature = "rustls")]

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use wsproto::blocking::{self, MaybeTlsStream, WebSocket};
use wsproto::tls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use wsproto::tls::rustls::{self, RootCertStore};
use wsproto::tls::{self as wtls, TlsError, TlsStream};
use wsproto::{Bytes, CloseCode, Config, Error, Event, Fault, Opcode};

/// Generous for a loaded 2-core machine; every wait here is bounded by it.
const LIMIT: Duration = Duration::from_secs(30);

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    /// A leaf certificate for `names`, valid now (or expired in 2021).
    fn leaf(&self, names: &[&str], expired: bool) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf { cert, key }
    }

    /// A client config that trusts this CA only.
    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        wtls::client_config_with_roots(roots)
    }
}

struct Leaf {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Leaf {
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        wtls::server_config(vec![self.cert.der().clone()], key).unwrap()
    }
}

/// A self-signed certificate for localhost (its own CA).
fn self_signed_localhost() -> Leaf {
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    Leaf { cert, key }
}

/// A temporary directory for PEM files, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wsproto-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Serves one TLS connection on 127.0.0.1 with `handler`; returns the
/// `wss://localhost:PORT/` URL and the handler's result.
fn serve<T: Send + 'static>(
    config: Arc<rustls::ServerConfig>,
    handler: impl FnOnce(Result<WebSocket<TlsStream>, Error>) -> T + Send + 'static,
) -> (String, thread::JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(LIMIT)).unwrap();
        handler(blocking::accept_tls(tcp, config))
    });
    (format!("wss://localhost:{port}/"), handle)
}

/// The server of `every_message_type_both_ways`: echoes data, sends its own
/// text, binary and ping, then closes with 4000 once the client has closed
/// its part... (the client's Close is echoed by the library).
fn echo_then_close(ws: Result<WebSocket<TlsStream>, Error>) -> Result<Vec<Event>, Error> {
    let mut ws = ws?;
    let mut seen = Vec::new();
    loop {
        let event = ws.read()?;
        seen.push(event.clone());
        match event {
            Event::Text(t) if &*t == "your turn" => break,
            Event::Text(t) => ws.send(t)?,
            Event::Binary(b) => ws.send(b)?,
            _ => {}
        }
    }
    // The server's own messages, then its Close (RFC 6455 §7.1.2: either
    // side may start the closing handshake).
    ws.send("from the server")?;
    ws.send(Bytes::from_static(&[9, 8, 7]))?;
    ws.ping(b"srv")?;
    ws.close(
        CloseCode::try_from(4000).expect("a private-use code"),
        "server done",
    )?;
    loop {
        match ws.read()? {
            Event::Close(f) => {
                seen.push(Event::Close(f));
                return Ok(seen);
            }
            e => seen.push(e),
        }
    }
}

#[test]
fn every_message_type_both_ways_over_wss() {
    let ca = Ca::new("wsproto test CA");
    let leaf = ca.leaf(&["localhost", "127.0.0.1"], false);
    let (url, server) = serve(leaf.server_config(), echo_then_close);
    let (mut ws, _) =
        blocking::connect_with_tls(&url, Config::default(), ca.client_config()).unwrap();
    let MaybeTlsStream::Tls(tls) = ws.get_ref() else {
        panic!("wss:// gave a plain stream")
    };
    assert!(tls.protocol_version().is_some() && tls.cipher_suite().is_some());
    ws.get_ref().set_read_timeout(Some(LIMIT)).unwrap();

    ws.send("héllo").unwrap();
    assert_eq!(ws.read().unwrap(), Event::Text("héllo".into()));
    ws.send("").unwrap();
    assert_eq!(ws.read().unwrap(), Event::Text("".into()));
    ws.send(Bytes::from_static(&[0, 1, 2, 255])).unwrap();
    assert_eq!(
        ws.read().unwrap(),
        Event::Binary(Bytes::from_static(&[0, 1, 2, 255]))
    );
    // Larger than a TLS record (16 KiB) and than rustls' 64 KiB buffer.
    let big = Bytes::from((0..(1 << 20)).map(|i| i as u8).collect::<Vec<u8>>());
    ws.send(big.clone()).unwrap();
    assert_eq!(ws.read().unwrap(), Event::Binary(big));
    ws.send_fragment(Opcode::Text, b"frag", false).unwrap();
    ws.send_fragment(Opcode::Continuation, b"ment", true)
        .unwrap();
    assert_eq!(ws.read().unwrap(), Event::Text("fragment".into()));
    ws.ping(b"cli").unwrap();
    assert_eq!(ws.read().unwrap(), Event::Pong(Bytes::from_static(b"cli")));

    ws.send("your turn").unwrap();
    assert_eq!(ws.read().unwrap(), Event::Text("from the server".into()));
    assert_eq!(
        ws.read().unwrap(),
        Event::Binary(Bytes::from_static(&[9, 8, 7]))
    );
    assert_eq!(ws.read().unwrap(), Event::Ping(Bytes::from_static(b"srv")));
    match ws.read().unwrap() {
        Event::Close(f) => assert_eq!((f.code.as_u16(), &*f.reason), (4000, "server done")),
        e => panic!("expected the server's Close, got {e:?}"),
    }
    assert!(matches!(ws.read(), Err(Error::Closed)));

    let seen = server.join().unwrap().unwrap();
    assert!(
        seen.contains(&Event::Ping(Bytes::from_static(b"cli"))),
        "{seen:?}"
    );
    assert!(
        seen.contains(&Event::Pong(Bytes::from_static(b"srv"))),
        "{seen:?}"
    );
    assert!(
        matches!(seen.last(), Some(Event::Close(f)) if f.code.as_u16() == 4000),
        "{seen:?}"
    );
}

/// Connects with a client trusting `ca` only; returns the client's error
/// and the server's.
fn refused(ca: &Ca, leaf: &Leaf) -> (Error, Error) {
    let (url, server) = serve(leaf.server_config(), |ws| ws.map(|_| ()));
    let client = blocking::connect_with_tls(&url, Config::default(), ca.client_config());
    let server = server.join().unwrap();
    (
        client.expect_err("the client refused"),
        server.expect_err("the server failed"),
    )
}

#[test]
fn client_refuses_a_certificate_for_another_name() {
    let ca = Ca::new("wsproto test CA");
    let (client, server) = refused(&ca, &ca.leaf(&["other.example"], false));
    match &client {
        Error::Tls(TlsError::CertificateNotValidForName {
            expected,
            presented,
        }) => {
            assert_eq!(expected, "localhost");
            assert!(
                presented.iter().any(|p| p.contains("other.example")),
                "{presented:?}"
            );
        }
        e => panic!("expected CertificateNotValidForName, got {e:?}"),
    }
    assert_eq!(TlsError::find(&client).unwrap().fault(), Fault::Peer);
    // RFC 8446 §6.2: the client told the server why.
    assert!(
        matches!(&server, Error::Tls(TlsError::AlertReceived(a)) if a.contains("BadCertificate")),
        "{server:?}"
    );
}

#[test]
fn client_refuses_a_self_signed_certificate_not_under_its_ca() {
    let ca = Ca::new("wsproto test CA");
    let (client, _) = refused(&ca, &self_signed_localhost());
    assert!(
        matches!(client, Error::Tls(TlsError::UnknownIssuer)),
        "{client:?}"
    );
    // Nor one from another CA.
    let other = Ca::new("someone else's CA");
    let (client, _) = refused(&ca, &other.leaf(&["localhost"], false));
    assert!(
        matches!(client, Error::Tls(TlsError::UnknownIssuer)),
        "{client:?}"
    );
}

#[test]
fn client_refuses_an_expired_certificate() {
    let ca = Ca::new("wsproto test CA");
    let (client, _) = refused(&ca, &ca.leaf(&["localhost"], true));
    assert!(
        matches!(client, Error::Tls(TlsError::CertificateExpired)),
        "{client:?}"
    );
}

/// `blocking::connect` verifies by default: Mozilla's roots do not include
/// a test CA.
#[test]
fn plain_connect_verifies_against_mozilla_roots() {
    let ca = Ca::new("wsproto test CA");
    let (url, server) = serve(ca.leaf(&["localhost"], false).server_config(), |ws| {
        ws.map(|_| ())
    });
    let err = blocking::connect(&url).expect_err("refused");
    assert!(
        matches!(err, Error::Tls(TlsError::UnknownIssuer)),
        "{err:?}"
    );
    assert!(server.join().unwrap().is_err());
}

/// `client_config_with_ca` adds a CA from a PEM file to Mozilla's roots;
/// `server_config_from_pem` loads a chain and key.
#[test]
fn pem_files_for_both_sides() {
    let dir = TempDir::new("pem");
    let ca = Ca::new("wsproto test CA");
    let leaf = ca.leaf(&["localhost"], false);
    let ca_pem = dir.write("ca.pem", &ca.cert.pem());
    let cert_pem = dir.write("cert.pem", &leaf.cert.pem());
    let key_pem = dir.write("key.pem", &leaf.key.serialize_pem());

    let server_config = wtls::server_config_from_pem(&cert_pem, &key_pem).unwrap();
    let (url, server) = serve(server_config, |ws| -> Result<(), Error> {
        let mut ws = ws?;
        while let Event::Text(t) = ws.read()? {
            ws.send(t)?;
        }
        Ok(())
    });
    let client_config = wtls::client_config_with_ca(&ca_pem).unwrap();
    let (mut ws, _) = blocking::connect_with_tls(&url, Config::default(), client_config).unwrap();
    ws.send("over pem").unwrap();
    assert_eq!(ws.read().unwrap(), Event::Text("over pem".into()));
    ws.close(CloseCode::NORMAL, "").unwrap();
    assert!(matches!(ws.read().unwrap(), Event::Close(_)));
    server.join().unwrap().unwrap();

    // Each file problem says which file and what.
    let missing = dir.0.join("missing.pem");
    let e = wtls::server_config_from_pem(&missing, &key_pem).unwrap_err();
    assert!(
        matches!(&e, TlsError::Pem { path, .. } if *path == missing),
        "{e:?}"
    );
    let e = wtls::server_config_from_pem(&key_pem, &key_pem).unwrap_err();
    assert!(
        matches!(&e, TlsError::Pem { path, .. } if *path == key_pem),
        "{e:?}"
    );
    let e = wtls::server_config_from_pem(&cert_pem, &cert_pem).unwrap_err();
    assert!(
        matches!(&e, TlsError::Pem { path, .. } if *path == cert_pem),
        "{e:?}"
    );
    // A key that is not the certificate's.
    let other_key = dir.write("other.pem", &KeyPair::generate().unwrap().serialize_pem());
    let e = wtls::server_config_from_pem(&cert_pem, &other_key).unwrap_err();
    assert!(matches!(e, TlsError::Config(_)), "{e:?}");
    assert_eq!(e.fault(), Fault::Caller);
    let e = wtls::client_config_with_ca(&missing).unwrap_err();
    assert!(matches!(e, TlsError::Pem { .. }), "{e:?}");
}

/// A TLS server fed `input` by a raw client: the server's error, how long
/// it took, and what the client got back.
fn bad_client(
    timeout: Duration,
    input: impl FnOnce(&mut TcpStream) + Send + 'static,
) -> (Error, Duration, Vec<u8>) {
    let config = self_signed_localhost().server_config();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(timeout)).unwrap();
        let start = Instant::now();
        let result = blocking::accept_tls(tcp, config).map(|_| ());
        let _ = tx.send((result.expect_err("the handshake failed"), start.elapsed()));
    });
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(LIMIT)).unwrap();
    input(&mut tcp);
    // Bounded: a server that waits per read, not for the whole handshake,
    // would wait here for ever.
    let (err, took) = rx
        .recv_timeout(LIMIT)
        .unwrap_or_else(|_| panic!("the server still waits after {LIMIT:?}"));
    let mut back = Vec::new();
    let _ = tcp.read_to_end(&mut back);
    (err, took, back)
}

#[test]
fn plain_http_on_the_tls_port_gets_an_alert_at_once() {
    let (err, took, back) = bad_client(Duration::from_secs(5), |tcp| {
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
    });
    assert!(matches!(err, Error::Tls(TlsError::NotTls)), "{err:?}");
    assert_eq!(TlsError::find(&err).unwrap().fault(), Fault::Peer);
    assert!(took < Duration::from_secs(3), "{took:?}");
    // An alert record (RFC 8446 §5.1: content type 21), then the close.
    assert_eq!(back.first(), Some(&21), "{back:?}");
}

#[test]
fn a_stalled_handshake_ends_at_the_timeout() {
    let timeout = Duration::from_millis(800);
    let (err, took, _) = bad_client(timeout, |_| {});
    assert!(
        matches!(err, Error::Tls(TlsError::HandshakeTimeout(t)) if t == timeout),
        "{err:?}"
    );
    assert!(took >= timeout && took < timeout * 3, "{took:?}");
}

/// A peer that trickles a ClientHello one byte at a time never lets a
/// per-read timeout fire; the handshake's deadline still does.
#[test]
fn a_trickled_handshake_ends_at_the_timeout() {
    let timeout = Duration::from_millis(800);
    let (err, took, _) = bad_client(timeout, |tcp| {
        // The start of a TLS 1.2 record holding a ClientHello, slowly.
        let hello = [
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        for b in hello.iter().cycle().take(40) {
            if tcp.write_all(&[*b]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
    });
    assert!(
        matches!(err, Error::Tls(TlsError::HandshakeTimeout(_))),
        "{err:?}"
    );
    assert!(took < timeout * 3, "{took:?}");
}

/// One side of the full-duplex test: sends 40 messages of 1 MiB while its
/// reader takes the other side's 40, then the client closes.
fn send_and_read_40_mib<S: blocking::Transport + Into<MaybeTlsStream>>(
    mut ws: WebSocket<S>,
) -> Result<usize, Error> {
    blocking::Transport::set_read_timeout(ws.get_mut(), Some(LIMIT))?;
    ws.set_write_timeout(Some(LIMIT))?;
    let client = ws.connection().role() == wsproto::Role::Client;
    let (mut reader, writer) = ws.split()?;
    let sender = thread::spawn(move || -> Result<blocking::Writer, Error> {
        let big = Bytes::from(vec![7u8; 1 << 20]);
        for _ in 0..40 {
            writer.send(big.clone())?;
            writer.ping(b"")?;
        }
        Ok(writer)
    });
    let mut got = 0;
    while got < 40 {
        match reader.read()? {
            Event::Binary(b) => {
                assert_eq!(b.len(), 1 << 20);
                got += 1;
            }
            Event::Ping(_) | Event::Pong(_) => {}
            e => panic!("unexpected {e:?}"),
        }
    }
    let writer = sender.join().unwrap()?;
    if client {
        writer.close(CloseCode::NORMAL, "")?;
    }
    loop {
        match reader.read()? {
            Event::Close(_) => return Ok(got),
            Event::Ping(_) | Event::Pong(_) => {}
            e => panic!("unexpected {e:?}"),
        }
    }
}

/// Both halves of both sides busy at once over one TLS connection each:
/// a design that held the TLS state while blocked on the socket would
/// deadlock here (each writer waiting for a peer whose reader waits for
/// its writer).
#[test]
fn split_over_tls_40_mib_each_way_at_once() {
    let ca = Ca::new("wsproto test CA");
    let leaf = ca.leaf(&["localhost"], false);
    let (url, server) = serve(leaf.server_config(), |ws| send_and_read_40_mib(ws?));
    let start = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let client_config = ca.client_config();
    thread::spawn(move || {
        let result = blocking::connect_with_tls(&url, Config::default(), client_config)
            .and_then(|(ws, _)| send_and_read_40_mib(ws));
        let _ = tx.send(result);
    });
    let client = rx
        .recv_timeout(LIMIT * 2)
        .unwrap_or_else(|_| panic!("not done within {:?} (deadlock?)", LIMIT * 2));
    assert_eq!(client.unwrap(), 40);
    assert_eq!(server.join().unwrap().unwrap(), 40);
    eprintln!("80 MiB full duplex over TLS in {:?}", start.elapsed());
}

/// A closed TLS connection ends with close_notify: the peer reads a clean
/// end of stream, not a truncation.
#[test]
fn dropping_the_stream_sends_close_notify() {
    let leaf = self_signed_localhost();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let config = leaf.server_config();
    let server = thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let mut tls = TlsStream::accept(tcp, config).unwrap();
        tls.write_all(b"bye").unwrap();
        drop(tls);
    });
    let mut roots = RootCertStore::empty();
    roots.add(leaf.cert.der().clone()).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(LIMIT)).unwrap();
    let mut tls =
        TlsStream::connect(tcp, "localhost", wtls::client_config_with_roots(roots)).unwrap();
    let mut got = Vec::new();
    tls.read_to_end(&mut got).unwrap(); // Ok, not UnexpectedEof
    assert_eq!(got, b"bye");
    server.join().unwrap();
}

#[test]
fn ws_urls_stay_plain_tcp() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let mut ws = blocking::accept(tcp).unwrap();
        let _ = ws.read();
    });
    let (mut ws, _) = blocking::connect(&format!("ws://{addr}/")).unwrap();
    assert!(!ws.get_ref().is_tls());
    ws.close(CloseCode::NORMAL, "").unwrap();
    server.join().unwrap();
}

/// Our CertificateDer import is the one rustls uses (a compile-time check
/// that `wsproto::tls::rustls` is the same crate as the library's).
#[allow(dead_code)]
fn same_rustls(c: CertificateDer<'static>) -> Vec<CertificateDer<'static>> {
    vec![c]
}

/// A broken record after the handshake: the read fails with the TLS reason
/// inside (`TlsError::find`), and every later read says the same.
#[test]
fn a_corrupt_record_after_the_handshake_is_a_typed_error() {
    let ca = Ca::new("wsproto test CA");
    let leaf = ca.leaf(&["localhost"], false);
    let (url, server) = serve(leaf.server_config(), |ws| {
        let mut ws = ws.unwrap();
        assert_eq!(ws.read().unwrap(), Event::Text("go".into()));
        // An application-data record whose ciphertext is garbage: it cannot
        // decrypt (RFC 8446 §5.2: bad_record_mac).
        let mut tcp = ws.get_ref().tcp();
        tcp.write_all(&[23, 3, 3, 0, 32]).unwrap();
        tcp.write_all(&[0x55; 32]).unwrap();
        // Hold the connection until the client has read.
        thread::sleep(Duration::from_millis(500));
    });
    let (mut ws, _) =
        blocking::connect_with_tls(&url, Config::default(), ca.client_config()).unwrap();
    ws.get_ref().set_read_timeout(Some(LIMIT)).unwrap();
    ws.send("go").unwrap();
    let err = ws.read().unwrap_err();
    let tls = TlsError::find(&err).unwrap_or_else(|| panic!("not a TLS error: {err:?}"));
    assert!(matches!(tls, TlsError::Peer(_)), "{tls:?}");
    assert_eq!(tls.fault(), Fault::Peer);
    let again = ws.read().unwrap_err();
    assert!(TlsError::find(&again).is_some(), "{again:?}");
    server.join().unwrap();
}
