//! wss:// through the tokio adapter (`tokio` + `rustls` features): our
//! client against our server over 127.0.0.1 with a throwaway rcgen CA,
//! both roles, a large message each way, a split client; certificates the
//! client must refuse, each with the same typed error as the blocking API.
#![cfg(feature = "tokio-rustls")]

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::timeout;
use wsproto::tls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use wsproto::tls::rustls::{self, RootCertStore};
use wsproto::tls::{self as wtls, TlsError};
use wsproto::tokio as ws;
use wsproto::{CloseCode, Config, Error, Message};

/// Generous for a loaded 2-core machine; every test is bounded by it.
const LIMIT: Duration = Duration::from_secs(60);

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "wsproto tokio test CA");
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    /// A server config with a leaf certificate for `names`.
    fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names).unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        wtls::server_config(vec![cert.der().clone()], der).unwrap()
    }

    /// A client config that trusts this CA only.
    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        wtls::client_config_with_roots(roots)
    }
}

fn big(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// `accept_tls` serves, `connect_with_tls` dials: text and 1 MiB each
/// way, then the client splits (TLS halves) and echoes 20 more, then a
/// clean close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_both_roles_large_messages_and_split() {
    timeout(LIMIT, async {
        let ca = Ca::new();
        let server_tls = ca.server_config(&["localhost"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let (mut ws, request) = ws::accept_tls(tcp, server_tls, Config::default(), &[])
                .await
                .unwrap();
            assert_eq!(request.path, "/tls");
            ws.send(Message::Binary(big(1 << 20, 7).into()))
                .await
                .unwrap();
            while let Some(m) = ws.next().await {
                ws.send(m.unwrap()).await.unwrap();
            }
            ws.close_frame().map(|f| f.code)
        });
        let url = format!("wss://localhost:{port}/tls");
        let (mut client, _) = ws::connect_with_tls(&url, Config::default(), ca.client_config())
            .await
            .unwrap();
        assert!(client.get_ref().is_tls());
        let first = client.next().await.unwrap().unwrap();
        assert_eq!(first, Message::Binary(big(1 << 20, 7).into()));
        client.send("héllo").await.unwrap();
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::from("héllo")
        );
        let payload = big(1 << 20, 3);
        client
            .send(Message::Binary(payload.clone().into()))
            .await
            .unwrap();
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Binary(payload.into())
        );
        let (mut reader, mut writer) = client.split();
        let sender = tokio::spawn(async move {
            for i in 0..20 {
                writer.send(Message::Binary(big(70_000, i).into())).await?;
            }
            writer.close(CloseCode::NORMAL, "done").await?;
            Ok::<_, Error>(writer)
        });
        for i in 0..20 {
            let m = reader.next().await.unwrap().unwrap();
            assert_eq!(m, Message::Binary(big(70_000, i).into()), "echo {i}");
        }
        assert!(reader.next().await.is_none());
        assert_eq!(
            reader.close_frame().map(|f| f.code),
            Some(CloseCode::NORMAL)
        );
        drop(sender.await.unwrap().unwrap());
        assert_eq!(server.await.unwrap(), Some(CloseCode::NORMAL));
    })
    .await
    .unwrap();
}

/// A certificate for another name: refused by the client with
/// `TlsError::CertificateNotValidForName`, as in the blocking API; the
/// server's handshake fails with the client's alert, no panic.
#[tokio::test]
async fn wss_wrong_name_is_refused_with_the_typed_error() {
    timeout(LIMIT, async {
        let ca = Ca::new();
        let server_tls = ca.server_config(&["other.example"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            ws::accept_tls(tcp, server_tls, Config::default(), &[])
                .await
                .err()
        });
        let url = format!("wss://localhost:{port}/");
        let e = ws::connect_with_tls(&url, Config::default(), ca.client_config())
            .await
            .expect_err("a certificate for other.example must be refused");
        match TlsError::find(&e) {
            Some(TlsError::CertificateNotValidForName {
                expected,
                presented,
            }) => {
                assert_eq!(expected, "localhost");
                assert!(presented.iter().any(|p| p.contains("other.example")));
            }
            other => panic!("expected CertificateNotValidForName, got {other:?} ({e})"),
        }
        let server_err = server.await.unwrap().expect("the server's handshake fails");
        assert!(
            matches!(
                TlsError::find(&server_err),
                Some(TlsError::AlertReceived(_))
            ),
            "{server_err}"
        );
    })
    .await
    .unwrap();
}

/// `connect("wss://...")` verifies against Mozilla's roots: a private CA
/// is an unknown issuer. The server here is a plain tokio-rustls stream
/// handed to the generic `accept`.
#[tokio::test]
async fn wss_connect_uses_mozilla_roots_and_any_tls_stream_serves() {
    timeout(LIMIT, async {
        let ca = Ca::new();
        let server_tls = ca.server_config(&["localhost"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(server_tls);
            let mut results = Vec::new();
            for _ in 0..2 {
                let (tcp, _) = listener.accept().await.unwrap();
                let Ok(tls) = acceptor.accept(tcp).await else {
                    results.push(false);
                    continue;
                };
                let mut ws = ws::accept(tls).await.unwrap();
                while let Some(Ok(m)) = ws.next().await {
                    ws.send(m).await.unwrap();
                }
                results.push(true);
            }
            results
        });
        let url = format!("wss://localhost:{port}/");
        let e = ws::connect(&url).await.expect_err("unknown issuer");
        assert_eq!(TlsError::find(&e), Some(&TlsError::UnknownIssuer), "{e}");
        let (mut client, _) = ws::connect_with_tls(&url, Config::default(), ca.client_config())
            .await
            .unwrap();
        client.send("over tokio-rustls").await.unwrap();
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::from("over tokio-rustls")
        );
        client.close(CloseCode::NORMAL, "").await.unwrap();
        assert!(client.next().await.is_none());
        assert_eq!(server.await.unwrap(), vec![false, true]);
    })
    .await
    .unwrap();
}

/// A ws:// URL through the same entry point stays plain TCP.
#[tokio::test]
async fn ws_url_stays_plain() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        ws::accept(tcp).await.map(drop)
    });
    let (client, _) = timeout(LIMIT, ws::connect(&format!("ws://{addr}/")))
        .await
        .unwrap()
        .unwrap();
    assert!(!client.get_ref().is_tls());
    server.await.unwrap().unwrap();
}
