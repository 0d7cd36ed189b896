//! wss:// against Python `websockets` (over Python's `ssl`, i.e. OpenSSL),
//! both roles, with a throwaway CA. Needs a Python with `websockets`: the
//! one named by `WSPROTO_INTEROP_PYTHON`, else `python3` if it has the
//! module; without one the tests say so and pass (CI installs it).
#![cfg(feature = "rustls")]

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;
use wsproto::blocking::MaybeTlsStream;
use wsproto::tls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use wsproto::tls::rustls::RootCertStore;
use wsproto::{blocking, tls, CloseCode, Config, Event};

/// A CA and a localhost certificate it signed, as PEM files in a
/// temporary directory (removed on drop).
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    leaf: rcgen::Certificate,
    key: KeyPair,
}

impl Pki {
    fn new(tag: &str) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "wsproto interop CA");
        let ca = params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let leaf = params.signed_by(&key, &ca, &ca_key).unwrap();
        let dir =
            std::env::temp_dir().join(format!("wsproto-tls-interop-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        Self { dir, ca, leaf, key }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sizes across TLS record boundaries (16 KiB) and rustls' buffer (64 KiB).
const SIZES: [usize; 6] = [0, 5, 1000, 16_385, 70_000, 300_000];

const PY_CLIENT: &str = r#"
import ssl, sys
from websockets.sync.client import connect
ctx = ssl.create_default_context(cafile=sys.argv[2])
with connect(sys.argv[1], ssl=ctx, max_size=2**22, open_timeout=10, close_timeout=10) as ws:
    tls = ws.socket
    print("tls", tls.version(), tls.cipher()[0], flush=True)
    for n in [int(x) for x in sys.argv[3].split(",")]:
        msg = ("chat message %d " % n) * (n // 16 + 1)
        msg = msg[:n]
        ws.send(msg)
        assert ws.recv(timeout=10) == msg, n
        data = bytes(i % 7 for i in range(n))
        ws.send(data)
        assert ws.recv(timeout=10) == data, n
    ws.ping(b"py").wait(timeout=10)
print("ok", flush=True)
"#;

#[test]
fn python_websockets_client_against_our_wss_server() {
    let Some(py) = common::python("ssl, websockets.sync.client", "TLS interop") else {
        return;
    };
    let pki = Pki::new("server");
    let config = tls::server_config(
        vec![pki.leaf.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key.serialize_der())),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut ws = blocking::accept_tls(tcp, config).unwrap();
        let mut echoed = 0;
        loop {
            match ws.read() {
                Ok(Event::Text(t)) => ws.send(t).unwrap(),
                Ok(Event::Binary(b)) => ws.send(b).unwrap(),
                Ok(Event::Close(_)) | Err(_) => return echoed,
                Ok(_) => continue,
            }
            echoed += 1;
        }
    });
    let sizes: Vec<String> = SIZES.iter().map(|n| n.to_string()).collect();
    let stdout = common::run_client(
        &py,
        PY_CLIENT,
        &[
            &format!("wss://localhost:{port}/"),
            &pki.path("ca.pem"),
            &sizes.join(","),
        ],
        Duration::from_secs(60),
    );
    assert!(stdout.contains("tls TLSv1.3"), "{stdout}");
    assert!(stdout.contains("ok"), "{stdout}");
    assert_eq!(server.join().unwrap(), 2 * SIZES.len());
}

const PY_SERVER: &str = r#"
import ssl, sys
from websockets.sync.server import serve
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
def echo(ws):
    for msg in ws:
        ws.send(msg)
with serve(echo, "127.0.0.1", 0, ssl=ctx, max_size=2**22) as server:
    print(server.socket.getsockname()[1], flush=True)
    server.serve_forever()
"#;

#[test]
fn our_wss_client_against_python_websockets_server() {
    let Some(py) = common::python("ssl, websockets.sync.client", "TLS interop") else {
        return;
    };
    let pki = Pki::new("client");
    let args = [pki.path("cert.pem"), pki.path("key.pem")];
    common::with_server(&py, PY_SERVER, &[&args[0], &args[1]], |port| {
        let mut roots = RootCertStore::empty();
        roots.add(pki.ca.der().clone()).unwrap();
        let (mut ws, _) = blocking::connect_with_tls(
            &format!("wss://localhost:{port}/"),
            Config::default(),
            tls::client_config_with_roots(roots),
        )
        .unwrap();
        assert!(matches!(ws.get_ref(), MaybeTlsStream::Tls(_)));
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        for n in SIZES {
            let text = "chat message ".repeat(n / 13 + 1)[..n].to_string();
            ws.send(text.as_str()).unwrap();
            assert_eq!(ws.read().unwrap(), Event::Text(text.into()));
            let data: Vec<u8> = (0..n).map(|i| (i % 7) as u8).collect();
            ws.send(data.as_slice()).unwrap();
            assert_eq!(ws.read().unwrap(), Event::Binary(data.into()));
        }
        ws.ping(b"rs").unwrap();
        assert_eq!(ws.read().unwrap(), Event::Pong(b"rs".to_vec().into()));
        ws.close(CloseCode::NORMAL, "").unwrap();
        assert!(matches!(ws.read().unwrap(), Event::Close(f) if f.code == CloseCode::NORMAL));
    });
}
