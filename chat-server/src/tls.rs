//! TLS on the one port (issue 14): `--tls-cert`/`--tls-key` serve the page
//! over `https://` and the chat over `wss://`.
//!
//! rustls' [`ServerConnection`] is sans-IO, like wsproto's `Connection`:
//! the handshake thread drives it with blocking reads bounded by the
//! handshake deadline (the same deadline as the HTTP head, so a handshake
//! that never finishes, or finishes a byte at a time, ends with it), then
//! hands it to the [`Client`](crate::client::Client) of an upgraded
//! connection, whose reactor feeds it the socket's bytes ([`TlsConn::read`])
//! and whose writers encrypt the queued frames into it
//! ([`TlsConn::encrypt`], [`TlsConn::write_to`]). A rustls connection
//! cannot be split into a reading and a writing half, so both go through
//! the client's one lock; a plain connection takes no lock to read.
//!
//! The configuration in use is an `Arc<ServerConfig>` behind a lock:
//! SIGHUP loads the files again ([`TlsState::reload`]); new handshakes get
//! the new certificate, open connections keep the configuration they
//! started with (each `ServerConnection` holds its own `Arc`), and a file
//! that does not load leaves the old one in place.

use crate::sys;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

/// The certificate chain and key files of `--tls-cert` and `--tls-key`
/// (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (PEM `CERTIFICATE` blocks).
    pub cert: PathBuf,
    /// The private key of the leaf (PEM PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why the certificate or key could not be loaded.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The file holds no PEM block of the kind wanted, or a broken one.
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wanted and what went wrong.
        what: String,
    },
    /// rustls refused the pair (e.g. the key does not match the
    /// certificate, or the key type is unsupported).
    Rejected(rustls::Error),
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Read { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            Self::Pem { path, what } => write!(f, "{}: {what}", path.display()),
            Self::Rejected(e) => write!(f, "certificate and key refused by rustls: {e}"),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Read { source, .. } => Some(source),
            Self::Rejected(e) => Some(e),
            Self::Pem { .. } => None,
        }
    }
}

/// Loads a PEM certificate chain and key into a server configuration with
/// the ring provider selected explicitly, TLS 1.3 and 1.2, and ALPN
/// `http/1.1` (WebSocket upgrades are HTTP/1.1 only, RFC 6455 §4.1; a
/// browser offering h2 must not pick it).
///
/// The one place the chat server builds a `ServerConfig` (to be swapped
/// for wsproto's `tls::server_config_from_pem` once that lands).
pub(crate) fn load_server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let pem_err = |path: &Path, what: String| TlsError::Pem {
        path: path.to_owned(),
        what,
    };
    let cert_pem = read(&files.cert)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(&files.cert, format!("bad CERTIFICATE block: {e}")))?;
    if certs.is_empty() {
        return Err(pem_err(&files.cert, "no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?)
        .map_err(|e| pem_err(&files.key, format!("no usable PRIVATE KEY block: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rejected)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Rejected)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The server's TLS configuration, reloadable.
#[derive(Debug)]
pub(crate) struct TlsState {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsState {
    pub(crate) fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let config = load_server_config(&files)?;
        Ok(Self {
            files,
            current: RwLock::new(config),
        })
    }

    /// Loads the files again; on error the configuration in use stays.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let fresh = load_server_config(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// The configuration new handshakes use.
    pub(crate) fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// How the start of a connection on the TLS port ended.
pub(crate) enum Accepted {
    /// The handshake is done.
    Tls(Box<TlsConn>),
    /// The first bytes are an HTTP request line, not a TLS record: the
    /// caller answers a plain-text 400 (as nginx does), which a browser
    /// shows, rather than an alert it would not.
    PlainHttp,
    /// Failed (bad TLS, timeout, peer gone), with the reason for the log.
    /// rustls has sent its alert, if any, already.
    Failed(String),
}

/// Runs the server handshake on a blocking socket; every read is bounded
/// by `deadline`, so a handshake that never finishes (or drips) ends then.
pub(crate) fn accept(stream: &TcpStream, config: Arc<ServerConfig>, deadline: Instant) -> Accepted {
    // A TLS connection starts with a handshake record (content type 22,
    // RFC 8446 §5.1); an HTTP method starts with a letter.
    let mut first = [0u8; 1];
    match peek(stream, &mut first, deadline) {
        Ok(1) if first[0].is_ascii_alphabetic() => return Accepted::PlainHttp,
        Ok(1) => {}
        Ok(_) => return Accepted::Failed("closed before the ClientHello".into()),
        Err(e) => return Accepted::Failed(io_why(&e)),
    }
    let conn = match ServerConnection::new(config) {
        Ok(c) => c,
        Err(e) => return Accepted::Failed(format!("cannot start a TLS session: {e}")),
    };
    let mut tls = Box::new(TlsConn { conn, more: false });
    while tls.conn.is_handshaking() {
        if let Err(e) = tls.blocking_exchange(stream, deadline) {
            return Accepted::Failed(io_why(&e));
        }
    }
    // TLS 1.3 session tickets and the last handshake flight.
    if let Err(e) = tls.blocking_flush(stream, deadline) {
        return Accepted::Failed(io_why(&e));
    }
    Accepted::Tls(tls)
}

fn peek(stream: &TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
    loop {
        set_read_deadline(stream, deadline)?;
        match stream.peek(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn set_read_deadline(stream: &TcpStream, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    stream.set_read_timeout(Some(left))
}

fn io_why(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            "TLS handshake not done within the handshake timeout".into()
        }
        io::ErrorKind::UnexpectedEof => "closed during the TLS handshake".into(),
        _ => format!("TLS: {e}"),
    }
}

/// One connection's TLS state.
pub(crate) struct TlsConn {
    conn: ServerConnection,
    /// Plaintext may be left in rustls: the last [`read`](Self::read)
    /// filled the caller's buffer.
    more: bool,
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn").finish_non_exhaustive()
    }
}

/// The most plaintext one `read_tls` can yield: rustls reads at most one
/// record's worth beyond what it holds (16 KiB of plaintext plus the
/// record's overhead, RFC 8446 §5.2), with some margin.
const ONE_READ_PLAINTEXT: usize = 20 << 10;

impl TlsConn {
    /// Reads plaintext for the blocking HTTP phase: every socket read is
    /// bounded by `deadline`. `Ok(0)` at the peer's close.
    pub(crate) fn blocking_read(
        &mut self,
        stream: &TcpStream,
        buf: &mut [u8],
        deadline: Instant,
    ) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
            self.blocking_exchange(stream, deadline)?;
        }
    }

    /// Writes handshake output, then reads and processes one socket read.
    fn blocking_exchange(&mut self, stream: &TcpStream, deadline: Instant) -> io::Result<()> {
        self.blocking_flush(stream, deadline)?;
        set_read_deadline(stream, deadline)?;
        let n = loop {
            match self.conn.read_tls(&mut &*stream) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other?,
            }
        };
        self.process(stream)?;
        if n == 0 && self.conn.is_handshaking() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// Decrypts what was read; on a TLS error rustls queues an alert, which
    /// goes out (best effort) before the error is returned.
    fn process(&mut self, stream: &TcpStream) -> io::Result<()> {
        if let Err(e) = self.conn.process_new_packets() {
            let _ = self.conn.write_tls(&mut Sock(stream));
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        Ok(())
    }

    /// Writes everything rustls has to send, blocking until `deadline`.
    pub(crate) fn blocking_flush(
        &mut self,
        stream: &TcpStream,
        deadline: Instant,
    ) -> io::Result<()> {
        while self.conn.wants_write() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            stream.set_write_timeout(Some(left))?;
            match self.conn.write_tls(&mut &*stream) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }

    /// Queues plaintext for the blocking HTTP phase and writes it.
    pub(crate) fn blocking_write_all(
        &mut self,
        stream: &TcpStream,
        mut bytes: &[u8],
        deadline: Instant,
    ) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = self.conn.writer().write(bytes)?;
            bytes = &bytes[n..];
            self.blocking_flush(stream, deadline)?;
        }
        Ok(())
    }

    /// Ends the TLS session (close_notify, RFC 8446 §6.1), best effort.
    pub(crate) fn blocking_close(&mut self, stream: &TcpStream, deadline: Instant) {
        self.conn.send_close_notify();
        let _ = self.blocking_flush(stream, deadline);
    }

    /// Everything the peer sent that rustls already decrypted (the HTTP
    /// phase hands it over with the socket, so nothing waits inside rustls
    /// for a socket event that will not come).
    pub(crate) fn take_plaintext(&mut self, out: &mut Vec<u8>) {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = self.conn.reader().read(&mut chunk) {
            out.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads what the (non-blocking) socket has and returns the plaintext,
    /// as `Read::read` would: `Ok(0)` after the peer's close_notify,
    /// `UnexpectedEof` when TCP ends without it, `WouldBlock` when nothing
    /// new. Handshake and alert output rustls makes meanwhile is left for
    /// the caller to write ([`wants_write`](Self::wants_write)).
    pub(crate) fn read(&mut self, stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        self.more = false;
        let mut filled = 0;
        loop {
            match self.conn.reader().read(&mut buf[filled..]) {
                Ok(0) if filled == buf.len() => {}
                Ok(0) => return Ok(filled),
                Ok(n) => {
                    filled += n;
                    if filled == buf.len() {
                        // More may wait in rustls, and the socket will not
                        // say so: the caller reads again at once.
                        self.more = true;
                        return Ok(filled);
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if filled == 0 => return Err(e),
                Err(_) => return Ok(filled),
            }
            // Only read the socket while one read's plaintext fits: what
            // rustls decrypts must all be handed out now (see `more`).
            if buf.len() - filled < ONE_READ_PLAINTEXT && filled > 0 {
                return Ok(filled);
            }
            match self.conn.read_tls(&mut &*stream) {
                Ok(0) => {
                    // EOF: let rustls tell close_notify from truncation.
                    self.process(stream)?;
                    return match self.conn.reader().read(&mut buf[filled..]) {
                        Ok(n) => Ok(filled + n),
                        Err(_) if filled > 0 => Ok(filled),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            Err(io::ErrorKind::UnexpectedEof.into())
                        }
                        Err(e) => Err(e),
                    };
                }
                Ok(_) => self.process(stream)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if filled > 0 && e.kind() == io::ErrorKind::WouldBlock => return Ok(filled),
                Err(e) => return Err(e),
            }
        }
    }

    /// True when the last [`read`](Self::read) may have left plaintext in
    /// rustls.
    pub(crate) fn more_to_read(&self) -> bool {
        self.more
    }

    /// Encrypts queued plaintext, as much as rustls' outgoing buffer takes
    /// (64 KiB, rustls' default limit): one TLS record per 16 KiB of the
    /// batch, however many frames it holds. Returns the bytes taken;
    /// `Err` once the session failed (a TLS error on its input).
    pub(crate) fn encrypt<'a>(
        &mut self,
        bufs: impl IntoIterator<Item = &'a bytes::Bytes>,
    ) -> io::Result<usize> {
        let mut slices = [io::IoSlice::new(&[]); 64];
        let mut count = 0;
        for (slot, b) in slices.iter_mut().zip(bufs) {
            *slot = io::IoSlice::new(b);
            count += 1;
        }
        self.conn.writer().write_vectored(&slices[..count])
    }

    /// True while encrypted bytes wait to be written.
    pub(crate) fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Writes encrypted bytes with one non-blocking `sendmsg`; `Ok(0)` when
    /// the socket buffer is full.
    pub(crate) fn write_to(&mut self, stream: &TcpStream) -> io::Result<usize> {
        match self.conn.write_tls(&mut Sock(stream)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            other => other,
        }
    }

    /// Queues close_notify (RFC 8446 §6.1) and tries once to send it.
    pub(crate) fn close(&mut self, stream: &TcpStream) {
        self.conn.send_close_notify();
        let _ = self.write_to(stream);
    }
}

/// The socket as rustls' writer: non-blocking `sendmsg` (never SIGPIPE).
struct Sock<'a>(&'a TcpStream);

impl Write for Sock<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match sys::send_slices(self.0, bufs)? {
            0 if bufs.iter().any(|b| !b.is_empty()) => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
