//! chat-server over TLS (issue 14): `wss://` chat and the `https://` page
//! through the reactor, SIGHUP reload, and bad TLS input ending within the
//! handshake timeout with nothing leaked. The CA and certificates are made
//! here (rcgen); the client is rustls itself (ring provider, the test CA as
//! the only root) under wsproto's blocking adapter.

mod common;

use chat_server::{Config, TlsFiles};
use common::WAIT;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::{json, Value};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wsproto::blocking::{self, Transport, WebSocket};
use wsproto::handshake::ClientRequest;
use wsproto::tls::rustls;
use wsproto::Event;

/// A throwaway CA.
struct Ca {
    cert: CertificateDer<'static>,
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            cert: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `localhost` and 127.0.0.1: (chain PEM, key PEM).
    fn leaf(&self) -> (String, String) {
        let params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

/// A directory of its own for one test's PEM files.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("chat-tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_pair(dir: &Path, (cert, key): &(String, String)) -> TlsFiles {
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    // Write beside, then rename: a reload never sees half a file.
    for (path, text) in [(&files.cert, cert), (&files.key, key)] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
    files
}

/// rustls' blocking stream as a wsproto transport (read timeouts on the
/// socket bound every read).
struct Tls(StreamOwned<ClientConnection, TcpStream>);

impl Read for Tls {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Tls {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl Transport for Tls {
    fn set_read_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        self.0.sock.set_read_timeout(t)
    }
    fn set_write_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        self.0.sock.set_write_timeout(t)
    }
}

/// A TLS connection to `addr` trusting only `config`'s roots, handshake
/// done (or its error).
fn tls_connect(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<Tls> {
    let sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(WAIT))?;
    sock.set_write_timeout(Some(WAIT))?;
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
    let mut s = StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(Tls(s))
}

struct WsClient {
    ws: WebSocket<Tls>,
}

impl WsClient {
    fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> Self {
        let stream = tls_connect(addr, config).unwrap();
        let req = ClientRequest::new("localhost", addr.port(), "/ws").unwrap();
        let (mut ws, _) = blocking::client(stream, &req, wsproto::Config::default()).unwrap();
        ws.set_idle_timeout(Some(WAIT));
        Self { ws }
    }

    fn join(addr: SocketAddr, config: Arc<ClientConfig>, nick: &str) -> Self {
        let mut c = Self::connect(addr, config);
        c.send(json!({"type": "join", "nick": nick}));
        let w = c.recv();
        assert_eq!(w["type"], "welcome", "{w}");
        c
    }

    fn send(&mut self, v: Value) {
        self.ws.send(v.to_string()).unwrap();
    }

    fn recv(&mut self) -> Value {
        loop {
            match self.ws.read() {
                Ok(Event::Text(t)) => return serde_json::from_str(t.as_str()).unwrap(),
                Ok(Event::Ping(_) | Event::Pong(_)) => {}
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// Waits for a room message with this text (skipping others, bounded).
    fn recv_text(&mut self, text: &str) {
        for _ in 0..1000 {
            if self.recv_type("message")["text"] == text {
                return;
            }
        }
        panic!("no message {text:?}");
    }

    fn recv_type(&mut self, kind: &str) -> Value {
        for _ in 0..1000 {
            let v = self.recv();
            if v["type"] == kind {
                return v;
            }
        }
        panic!("no {kind}");
    }
}

fn tls_server(files: TlsFiles, tune: impl FnOnce(&mut Config)) -> chat_server::Running {
    common::start(|c| {
        c.tls = Some(files);
        tune(c);
    })
}

/// An HTTP GET over TLS: the whole response (the server closes).
fn https_get(addr: SocketAddr, config: Arc<ClientConfig>, path: &str) -> String {
    let mut s = tls_connect(addr, config).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    s.flush().unwrap();
    let mut out = Vec::new();
    // The server ends with close_notify: a clean EOF.
    s.read_to_end(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn two_users_chat_over_wss_and_the_page_comes_over_https() {
    let ca = Ca::new("chat test CA");
    let files = write_pair(&temp_dir("chat"), &ca.leaf());
    let server = tls_server(files, |_| {});
    let cfg = ca.client_config();

    let page = https_get(server.addr, cfg.clone(), "/");
    assert!(page.starts_with("HTTP/1.1 200"), "{page:.200}");
    // The page picks wss: by itself when loaded over https.
    assert!(page.contains(r#"location.protocol === "https:" ? "wss://""#));
    assert!(https_get(server.addr, cfg.clone(), "/healthz").ends_with("\r\n\r\nok"));

    let mut alice = WsClient::join(server.addr, cfg.clone(), "alice");
    let mut bob = WsClient::join(server.addr, cfg.clone(), "bob");
    alice.recv_type("joined");
    alice.send(json!({"type": "message", "text": "hello over wss"}));
    bob.recv_text("hello over wss");
    // A text past one TLS record (16 KiB) each way: 4096 characters of 4
    // bytes, then a burst that a corked wake-up sends as one batch.
    let long = "😀".repeat(4096);
    bob.send(json!({"type": "message", "text": long}));
    alice.recv_text(&long);
    for i in 0..30 {
        alice.send(json!({"type": "message", "text": format!("burst {i}")}));
    }
    for i in 0..30 {
        bob.recv_text(&format!("burst {i}"));
    }
    // A clean close: the server's Close, then close_notify and EOF.
    alice
        .ws
        .close(wsproto::CloseCode::NORMAL, "bye")
        .expect("closing handshake over TLS");
    server.stop().unwrap();
}

/// `POST /upload` and `GET /media/...` work inside TLS too: a body of
/// several TLS records (sent after `100 Continue`) is stored, served back
/// byte for byte, and an image message naming it goes out over wss.
#[test]
fn an_image_is_uploaded_and_served_over_https() {
    let ca = Ca::new("chat test CA");
    let files = write_pair(&temp_dir("media"), &ca.leaf());
    let server = tls_server(files, |_| {});
    let cfg = ca.client_config();
    let mut alice = WsClient::connect(server.addr, cfg.clone());
    alice.send(json!({"type": "join", "nick": "alice"}));
    let token = alice.recv_type("welcome")["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // A GIF header (all the type check reads) and 40 KiB after it.
    let mut gif = b"GIF89a".to_vec();
    gif.extend_from_slice(&[7, 0, 5, 0, 0, 0, 0]);
    gif.extend((0..40_000u32).map(|i| (i % 251) as u8));
    gif.push(0x3B);
    let mut s = tls_connect(server.addr, cfg.clone()).unwrap();
    write!(
        s,
        "POST /upload HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: image/gif\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        gif.len()
    )
    .unwrap();
    s.flush().unwrap();
    let mut cont = [0u8; 25];
    s.read_exact(&mut cont).unwrap();
    assert_eq!(&cont, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(&gif).unwrap();
    s.flush().unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let url = body["url"].as_str().unwrap().to_owned();
    assert_eq!(
        (body["width"].as_u64(), body["height"].as_u64()),
        (Some(7), Some(5))
    );

    let mut s = tls_connect(server.addr, cfg).unwrap();
    write!(s, "GET {url} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    s.flush().unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    let split = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert!(got[split..] == gif[..], "the served bytes differ");

    alice.send(json!({"type": "message", "image": url}));
    let m = alice.recv_type("message");
    assert_eq!(
        (m["image"].as_str(), m["width"].as_u64()),
        (Some(&*url), Some(7))
    );
    server.stop().unwrap();
}

/// TLS 1.2 clients are served too (the `tls12` feature), with the same
/// page and chat.
#[test]
fn a_tls12_client_gets_the_page_and_chats() {
    let ca = Ca::new("tls12 CA");
    let files = write_pair(&temp_dir("tls12"), &ca.leaf());
    let server = tls_server(files, |_| {});
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls12 = Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    assert!(https_get(server.addr, tls12.clone(), "/healthz").ends_with("\r\n\r\nok"));
    let mut a = WsClient::join(server.addr, tls12.clone(), "twelve");
    let mut b = WsClient::join(server.addr, ca.client_config(), "thirteen");
    a.send(json!({"type": "message", "text": "from 1.2"}));
    b.recv_text("from 1.2");
    assert_eq!(
        a.ws.get_ref().0.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    server.stop().unwrap();
}

/// The first bytes on the TLS port say what the peer speaks: an HTTP
/// request gets a plain-text 400 a browser can show (as nginx does); other
/// non-TLS bytes get rustls' alert and the socket is dropped.
#[test]
fn plain_http_on_the_tls_port_gets_a_plain_400_and_garbage_an_alert() {
    let ca = Ca::new("plain CA");
    let files = write_pair(&temp_dir("plain"), &ca.leaf());
    let server = tls_server(files, |_| {});
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("use https://"), "{out}");

    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&[0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5])
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    // An alert record (content type 21, RFC 8446 §5.1), fatal, then EOF.
    assert_eq!(out.first(), Some(&21), "{out:?}");
    assert_eq!(out.get(5), Some(&2), "fatal alert level: {out:?}");
    server.stop().unwrap();
}

/// A ClientHello as a real client sends it.
fn client_hello(config: Arc<ClientConfig>) -> Vec<u8> {
    let name = ServerName::try_from("localhost").unwrap();
    let mut c = ClientConnection::new(config, name).unwrap();
    let mut out = Vec::new();
    c.write_tls(&mut out).unwrap();
    out
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A ClientHello flood whose handshakes never finish, and handshakes cut
/// short in the first record: every one counts against --max-connections
/// (one more gets a 503 over TLS), every one ends within the handshake
/// timeout, and afterwards no descriptor and no memory is left behind.
#[test]
fn stalled_handshakes_end_within_the_timeout_count_and_leak_nothing() {
    let ca = Ca::new("flood CA");
    let files = write_pair(&temp_dir("flood"), &ca.leaf());
    const N: usize = 40;
    let server = tls_server(files, |c| {
        c.handshake_timeout = Duration::from_secs(2);
        c.max_connections = N;
    });
    let cfg = ca.client_config();
    let hello = client_hello(cfg.clone());
    let fds_before = open_fds();
    let rss_before = rss_kib();
    for round in 0..3 {
        let start = Instant::now();
        let mut socks = Vec::new();
        for i in 0..N {
            let mut s = TcpStream::connect(server.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
            // Half send a whole ClientHello and never answer the server's
            // flight; half stop inside the first record.
            let cut = if i % 2 == 0 { hello.len() } else { 7 };
            s.write_all(&hello[..cut]).unwrap();
            socks.push(s);
        }
        let deadline = Instant::now() + WAIT;
        while server.handle().connections() < N {
            assert!(Instant::now() < deadline, "handshakes not counted");
            std::thread::sleep(Duration::from_millis(10));
        }
        // One more is over the limit: its 503 comes over TLS.
        if round == 0 {
            let reply = https_get(server.addr, cfg.clone(), "/");
            assert!(reply.starts_with("HTTP/1.1 503"), "{reply:.100}");
        }
        for mut s in socks {
            let mut sink = Vec::new();
            // The server's flight (for the whole hellos), then EOF.
            let r = s.read_to_end(&mut sink);
            assert!(
                r.is_ok()
                    || r.as_ref()
                        .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionReset),
                "{r:?}"
            );
        }
        let took = start.elapsed();
        assert!(took < Duration::from_secs(5), "ended after {took:?}");
        let deadline = Instant::now() + WAIT;
        while server.handle().connections() > 0 {
            assert!(Instant::now() < deadline, "connections still counted");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // Threads and sockets gone: the same descriptors as before (give the
    // handshake threads a moment to return).
    let deadline = Instant::now() + WAIT;
    while open_fds() > fds_before {
        assert!(
            Instant::now() < deadline,
            "{} fds, {fds_before} before",
            open_fds()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let grew = rss_kib().saturating_sub(rss_before);
    assert!(grew < 8 << 10, "RSS grew {grew} KiB over 3 floods of {N}");
    server.stop().unwrap();
}

/// The binary, reloading on SIGHUP: an open wss connection keeps working
/// on the old certificate, a new one gets the new certificate, and a bad
/// file leaves the current pair in place with one log line.
#[test]
fn sighup_reloads_the_certificate_without_dropping_connections() {
    let dir = temp_dir("hup");
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let files = write_pair(&dir, &old_ca.leaf());
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let log = dir.join("server.log");
    let child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--addr", &addr.to_string(), "--tls-cert"])
        .arg(&files.cert)
        .arg("--tls-key")
        .arg(&files.key)
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Kill(child);
    let pid = child.0.id().to_string();
    let hup = || {
        let st = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
        assert!(st.success());
    };
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut alice = WsClient::join(addr, old_ca.client_config(), "alice");

    write_pair(&dir, &new_ca.leaf());
    hup();
    let log_has = |what: &str| {
        let deadline = Instant::now() + WAIT;
        loop {
            if std::fs::read_to_string(&log).unwrap().contains(what) {
                return;
            }
            assert!(Instant::now() < deadline, "no {what:?} in the log");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    log_has("TLS certificate reloaded");
    // New handshakes: the new certificate only.
    let refused = tls_connect(addr, old_ca.client_config())
        .err()
        .expect("old CA refused");
    assert!(refused.to_string().contains("certificate"), "{refused}");
    let mut bob = WsClient::join(addr, new_ca.client_config(), "bob");
    // The open connection still chats.
    alice.recv_type("joined");
    alice.send(json!({"type": "message", "text": "still here"}));
    bob.recv_text("still here");

    // A broken key: one line, the pair in use stays.
    std::fs::write(&files.key, "not a key\n").unwrap();
    hup();
    log_has("keeping the old TLS certificate");
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(lines.matches("keeping the old").count(), 1, "{lines}");
    let mut carol = WsClient::join(addr, new_ca.client_config(), "carol");
    bob.send(json!({"type": "message", "text": "after the bad reload"}));
    carol.recv_text("after the bad reload");
    alice.recv_text("after the bad reload");
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn redirect_http_answers_308_to_the_https_port() {
    let ca = Ca::new("redirect CA");
    let files = write_pair(&temp_dir("redirect"), &ca.leaf());
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = tls_server(files, |c| c.redirect_http = Some(port));
    let ask = |head: &str| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let out = ask("GET /ws?x=1 HTTP/1.1\r\nHost: chat.example:80\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 308"), "{out}");
    let https = server.addr.port();
    assert!(
        out.contains(&format!(
            "\r\nLocation: https://chat.example:{https}/ws?x=1\r\n"
        )),
        "{out}"
    );
    // A Host that would write into our header is refused.
    let out = ask("GET / HTTP/1.1\r\nHost: a\"b<c\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    server.stop().unwrap();
}

/// A Python with `websockets`: `WSPROTO_INTEROP_PYTHON` (CI sets it), else
/// `python3` if it has the module; `None` (the test says so and passes)
/// without one.
fn python() -> Option<String> {
    let candidates = std::env::var("WSPROTO_INTEROP_PYTHON")
        .ok()
        .into_iter()
        .chain(["python3".to_string()]);
    for py in candidates {
        let ok = Command::new(&py)
            .args(["-c", "import websockets.sync.client"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(py);
        }
    }
    eprintln!("no Python with `websockets`: interop not run (set WSPROTO_INTEROP_PYTHON)");
    None
}

/// Python's `ssl` + `websockets` (another TLS and WebSocket stack) joins
/// and chats over wss, verifying the server against the test CA only.
#[test]
fn python_websockets_chats_over_wss() {
    let Some(py) = python() else { return };
    let ca = Ca::new("python CA");
    let dir = temp_dir("python");
    let files = write_pair(&dir, &ca.leaf());
    let ca_file = dir.join("ca.pem");
    let server = tls_server(files, |_| {});
    let script = r#"
import json, ssl, sys
from websockets.sync.client import connect
ctx = ssl.create_default_context(cafile=sys.argv[2])
with connect(sys.argv[1], ssl=ctx, open_timeout=10, close_timeout=10) as ws:
    ws.send(json.dumps({"type": "join", "nick": "py"}))
    while json.loads(ws.recv(timeout=10))["type"] != "welcome":
        pass
    ws.send(json.dumps({"type": "message", "text": "hello from python"}))
    while True:
        m = json.loads(ws.recv(timeout=10))
        if m["type"] == "message":
            print("got", m["text"], flush=True)
            break
"#;
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let out = Command::new(py)
        .args(["-c", script])
        .arg(format!("wss://localhost:{}/ws", server.addr.port()))
        .arg(&ca_file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("got hello from python"),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Corking holds over TLS (issue 11's one write per client per wake-up):
/// a burst read in one wake-up is encrypted as one batch per recipient and
/// leaves in one `sendmsg`, not one per message.
#[test]
fn a_burst_over_tls_leaves_in_few_writes() {
    const MESSAGES: usize = 200;
    const MEMBERS: usize = 5;
    let ca = Ca::new("cork CA");
    let files = write_pair(&temp_dir("cork"), &ca.leaf());
    let server = tls_server(files, |c| {
        c.rate_burst = 10_000;
        c.rate_per_sec = 10_000;
    });
    let cfg = ca.client_config();
    let mut members: Vec<WsClient> = (0..MEMBERS)
        .map(|i| WsClient::join(server.addr, cfg.clone(), &format!("m{i}")))
        .collect();
    for (i, m) in members.iter_mut().enumerate() {
        for _ in i + 1..MEMBERS {
            m.recv_type("joined");
        }
    }
    let before = server.handle().socket_writes();
    let sender = &mut members[0];
    for i in 0..MESSAGES {
        let text = json!({"type": "message", "text": format!("burst {i}")}).to_string();
        sender.ws.write(text).unwrap();
    }
    sender.ws.flush().unwrap();
    for m in &mut members {
        for i in 0..MESSAGES {
            assert_eq!(m.recv()["text"], format!("burst {i}"));
        }
    }
    let writes = server.handle().socket_writes() - before;
    let deliveries = (MESSAGES * MEMBERS) as u64;
    eprintln!("{deliveries} deliveries over TLS in {writes} writes");
    assert!(
        writes * 10 <= deliveries,
        "{deliveries} deliveries took {writes} writes"
    );
}

/// The one byte bound holds over TLS: a client that never reads is closed
/// 1008 and dropped while the sender keeps going (encrypted records wait
/// for the socket at most 64 KiB deep; the rest stays queued and counted).
#[test]
fn a_tls_client_that_never_reads_is_closed_1008() {
    let ca = Ca::new("slow CA");
    let files = write_pair(&temp_dir("slow"), &ca.leaf());
    let server = tls_server(files, |c| {
        c.max_queue_bytes = 65_536;
        c.max_text = 10_000;
        c.rate_burst = 100_000;
        c.rate_per_sec = 100_000;
    });
    let cfg = ca.client_config();
    let mut slow = WsClient::join(server.addr, cfg.clone(), "slow");
    let mut sender = WsClient::join(server.addr, cfg.clone(), "sender");
    // 12 MB: more than loopback socket buffers absorb.
    let msg = json!({"type": "message", "text": "y".repeat(10_000)});
    for _ in 0..1200 {
        sender.send(msg.clone());
        sender.recv_type("message");
    }
    let code = loop {
        match slow.ws.read() {
            Ok(Event::Close(f)) => break f.code.as_u16(),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(code, 1008);
    sender.send(json!({"type": "message", "text": "after"}));
    sender.recv_text("after");
    server.stop().unwrap();
}
