//! `wss://` over [rustls] (the `rustls` feature): verified by default.
//!
//! - **Client**: [`blocking::connect`](crate::blocking::connect) dials a
//!   `wss://` URL with [`client_config`]: Mozilla's root certificates,
//!   SNI, the host name checked against the certificate. For your own CA
//!   use [`client_config_with_ca`], for anything else (client
//!   certificates, other roots) build a `rustls::ClientConfig` with
//!   [`provider`] and pass it to
//!   [`blocking::connect_with_tls`](crate::blocking::connect_with_tls).
//! - **Server**: [`server_config_from_pem`] loads a certificate chain and
//!   key; [`blocking::accept_tls`](crate::blocking::accept_tls) (or
//!   [`TlsStream::accept`] then [`blocking::accept`](crate::blocking::accept))
//!   serves `wss://`.
//! - Errors are a [`TlsError`] in [`Error::Tls`](crate::Error::Tls):
//!   [`TlsError::CertificateNotValidForName`], [`TlsError::UnknownIssuer`],
//!   [`TlsError::CertificateExpired`], [`TlsError::NotTls`],
//!   [`TlsError::HandshakeTimeout`], ...
//! - [`WebSocket::split`](crate::blocking::WebSocket::split) works over TLS:
//!   see [`TlsStream`] for how one rustls connection serves two threads.
//!
//! Choices, and why:
//!
//! - **Crypto provider: ring**, chosen by this crate for every config it
//!   builds, so no one needs a process-level `CryptoProvider` (a run-time
//!   panic in crates that rely on one). ring builds with a C compiler and
//!   nothing else, in about 10 s of CPU (a clean debug build of rustls
//!   with it, measured here); aws-lc-rs, rustls' default, took 24 s and on
//!   some targets wants CMake or NASM too. Both are fast enough for any
//!   WebSocket load. Your own configs can use any provider.
//! - **Roots: `webpki-roots`** (Mozilla's list, compiled in): the same
//!   answer on every machine, container and CI image, with no OS store to
//!   find or trust. The cost: an update of this crate's dependencies to
//!   follow Mozilla's changes, and no enterprise roots installed on the OS;
//!   for those, pass a config with a verifier of your choice (e.g.
//!   `rustls-platform-verifier`) to `connect_with_tls`.
//! - **PEM: `rustls-pki-types`' own parser** (`rustls-pemfile` is
//!   unmaintained).
//!
//! Both ends on one machine, with a throwaway self-signed certificate
//! (made here with the `rcgen` crate):
//!
//! ```
//! use std::net::TcpListener;
//! use wsproto::tls::{self, rustls};
//! use wsproto::{blocking, Config, Event};
//!
//! let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
//! let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der());
//! let server_config = tls::server_config(vec![cert.cert.der().clone()], key.into())?;
//!
//! let listener = TcpListener::bind("127.0.0.1:0")?;
//! let port = listener.local_addr()?.port();
//! let server = std::thread::spawn(move || -> Result<(), wsproto::Error> {
//!     let (tcp, _) = listener.accept()?;
//!     let mut ws = blocking::accept_tls(tcp, server_config)?;
//!     if let Event::Text(t) = ws.read()? {
//!         ws.send(t)?;
//!     }
//!     Ok(())
//! });
//!
//! // The client trusts that one certificate (a real one: Mozilla's roots,
//! // with plain `blocking::connect`).
//! let mut roots = rustls::RootCertStore::empty();
//! roots.add(cert.cert.der().clone())?;
//! let url = format!("wss://localhost:{port}/");
//! let (mut ws, _) = blocking::connect_with_tls(&url, Config::default(), tls::client_config_with_roots(roots))?;
//! ws.send("over TLS")?;
//! assert_eq!(ws.read()?, Event::Text("over TLS".into()));
//! server.join().unwrap()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ```no_run
//! use wsproto::{blocking, tls, Config, Event};
//! // Mozilla's roots plus a private CA:
//! let roots = tls::client_config_with_ca("ca.pem")?;
//! let (mut ws, _) = blocking::connect_with_tls("wss://chat.internal/ws", Config::default(), roots)?;
//! ws.send("hello")?;
//! # Ok::<(), wsproto::Error>(())
//! ```

mod error;
mod stream;

pub use error::TlsError;
pub use rustls;
pub use stream::{TlsStream, DEFAULT_HANDSHAKE_TIMEOUT};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// The crypto provider every config of this crate uses: ring's.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// Mozilla's root certificates (`webpki-roots`), the default trust store.
pub fn mozilla_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// Adds the certificates of a PEM file (one or more `CERTIFICATE` blocks)
/// to `roots`; returns how many were added.
///
/// # Errors
///
/// [`TlsError::Pem`] if the file cannot be read, holds no certificate, or
/// one is not a valid CA certificate.
pub fn add_pem_roots(roots: &mut RootCertStore, path: impl AsRef<Path>) -> Result<usize, TlsError> {
    let path = path.as_ref();
    let certs = read_certs(path)?;
    let count = certs.len();
    for cert in certs {
        roots.add(cert).map_err(|e| pem_error(path, e))?;
    }
    Ok(count)
}

/// A client config trusting `roots`, with this crate's [`provider`] and
/// TLS 1.2 and 1.3.
pub fn client_config_with_roots(roots: RootCertStore) -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        // invariant: ring's default provider supports the default versions.
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// The default client config: Mozilla's roots ([`mozilla_roots`]), built
/// once per process.
///
/// ```
/// let config = wsproto::tls::client_config();
/// assert!(config.alpn_protocols.is_empty());
/// ```
pub fn client_config() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| client_config_with_roots(mozilla_roots())))
}

/// Mozilla's roots plus the CA certificates in a PEM file (a private CA).
///
/// # Errors
///
/// As [`add_pem_roots`].
pub fn client_config_with_ca(ca_pem: impl AsRef<Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = mozilla_roots();
    add_pem_roots(&mut roots, ca_pem)?;
    Ok(client_config_with_roots(roots))
}

/// A server config from a PEM certificate chain (leaf first, then any
/// intermediates) and a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC),
/// with this crate's [`provider`], TLS 1.2 and 1.3, and ALPN `http/1.1`
/// (a WebSocket upgrade is HTTP/1.1, RFC 6455 §4.1; a browser offering h2
/// falls back to it).
///
/// ```no_run
/// use std::net::TcpListener;
/// use wsproto::{blocking, tls};
/// let config = tls::server_config_from_pem("cert.pem", "key.pem")?;
/// let listener = TcpListener::bind("127.0.0.1:8443")?;
/// let (tcp, _) = listener.accept()?;
/// let mut ws = blocking::accept_tls(tcp, config)?;
/// # Ok::<(), wsproto::Error>(())
/// ```
///
/// # Errors
///
/// [`TlsError::Pem`] for a file that cannot be read or holds no
/// certificate or key; [`TlsError::Config`] for a key that does not match
/// the certificate or is of an unsupported type.
pub fn server_config_from_pem(
    cert_chain: impl AsRef<Path>,
    key: impl AsRef<Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_certs(cert_chain.as_ref())?;
    let key_path = key.as_ref();
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| pem_error(key_path, e))?;
    server_config(certs, key)
}

/// A server config from a certificate chain and key already in memory
/// (DER), as [`server_config_from_pem`] makes it.
///
/// # Errors
///
/// [`TlsError::Config`] as [`server_config_from_pem`].
pub fn server_config(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(Box::new(e)))?
        .with_no_client_auth()
        .with_single_cert(cert_chain, key)
        .map_err(|e| TlsError::Config(Box::new(e)))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

fn pem_error(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}
