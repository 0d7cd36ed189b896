//! TLS on the one port (issue 14): `--tls-cert`/`--tls-key` serve the page
//! over `https://` and the chat over `wss://`.
//!
//! rustls is sans-IO, like wsproto's `Connection`. Each connection is an
//! [`UnbufferedServerConnection`] with buffers of our own ([`TlsConn`]),
//! freed whenever empty, so an idle `wss://` client costs its session keys
//! and state but no buffer. The handshake thread drives it with blocking
//! reads bounded by the handshake deadline (the same deadline as the HTTP
//! head, so a handshake that never finishes, or finishes a byte at a time,
//! ends with it), then hands it to the [`Client`](crate::client::Client)
//! of an upgraded connection, whose reactor feeds it the socket's bytes
//! ([`TlsConn::read`]) and whose writers encrypt the queued frames into it
//! ([`TlsConn::encrypt`], [`TlsConn::write_to`]). A rustls connection
//! cannot be split into a reading and a writing half, so both go through
//! the client's one lock; a plain connection takes no lock to read.
//!
//! The configuration in use is an `Arc<ServerConfig>` behind a lock:
//! SIGHUP loads the files again ([`TlsState::reload`]); new handshakes get
//! the new certificate, open connections keep the configuration they
//! started with (each connection holds its own `Arc`), and a file that
//! does not load leaves the old one in place.
//!
//! The first byte tells TLS from plain HTTP: a request line on the TLS
//! port gets a plain-text 400 (a browser shows it; an alert it would not),
//! anything else that is not TLS gets rustls' fatal alert and the socket is
//! dropped.

use crate::sys;
// One rustls for the whole tree: wsproto's (its `rustls` feature), with the
// ring provider it selects.
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    AppDataRecord, ConnectionState, EncodeError, EncryptError, InsufficientSizeError,
    UnbufferedStatus, WriteTraffic,
};
use rustls::ServerConfig;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Instant;
use wsproto::tls::rustls;

/// The certificate chain and key files of `--tls-cert` and `--tls-key`
/// (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (PEM `CERTIFICATE` blocks).
    pub cert: PathBuf,
    /// The private key of the leaf (PEM PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why the certificate or key could not be loaded: wsproto's TLS error
/// (`Pem` for an unreadable or broken file, `Config` when rustls refuses the
/// pair).
pub use wsproto::tls::TlsError;

/// Loads a PEM certificate chain and key into a server configuration with
/// the ring provider selected explicitly, TLS 1.3 and 1.2, and ALPN
/// `http/1.1` (WebSocket upgrades are HTTP/1.1 only, RFC 6455 §4.1; a
/// browser offering h2 must not pick it).
///
/// The one place the chat server builds a `ServerConfig`: wsproto's loader
/// (ring provider, TLS 1.2 and 1.3, ALPN `http/1.1`).
pub(crate) fn load_server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    wsproto::tls::server_config_from_pem(&files.cert, &files.key)
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
    let conn = match UnbufferedServerConnection::new(config) {
        Ok(c) => c,
        Err(e) => return Accepted::Failed(format!("cannot start a TLS session: {e}")),
    };
    let mut tls = Box::new(TlsConn {
        conn,
        incoming: Vec::new(),
        outgoing: Vec::new(),
        sent: 0,
        plaintext: Vec::new(),
        peer_closed: false,
        eof: false,
        send_close: false,
        more: false,
    });
    let handshake = (|| {
        loop {
            // Application data sent right behind the client's Finished
            // (the HTTP request) is kept in `plaintext`.
            tls.run(&mut [], &mut 0, None)?;
            tls.blocking_flush(stream, deadline)?;
            if !tls.conn.is_handshaking() {
                return Ok(());
            }
            if tls.blocking_read_tls(stream, deadline)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    })();
    match handshake {
        Ok(()) => Accepted::Tls(tls),
        Err(e) => {
            // rustls' alert for a bad handshake, best effort.
            let _ = tls.write_to(stream);
            Accepted::Failed(io_why(&e))
        }
    }
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

/// One connection's TLS state, on rustls' unbuffered API: the buffers are
/// ours, and all three are freed whenever empty, so an idle `wss://`
/// connection holds no TLS buffer at all (rustls' buffered
/// `ServerConnection` keeps a 4 KiB receive buffer per connection for
/// good, more than the whole of an idle plain connection).
pub(crate) struct TlsConn {
    conn: UnbufferedServerConnection,
    /// Received TLS bytes not yet processed (the start of a record).
    incoming: Vec<u8>,
    /// Encrypted bytes to send; `outgoing[..sent]` went out already.
    outgoing: Vec<u8>,
    sent: usize,
    /// Decrypted bytes the caller's buffer had no room for.
    plaintext: Vec<u8>,
    /// The peer sent close_notify (RFC 8446 §6.1): its data is over.
    peer_closed: bool,
    /// TCP ended.
    eof: bool,
    /// Encode our close_notify at the next chance.
    send_close: bool,
    /// Plaintext is left over: the last [`read`](Self::read) filled the
    /// caller's buffer.
    more: bool,
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn").finish_non_exhaustive()
    }
}

/// The largest TLS record on the wire (RFC 8446 §5.2: 2^14 bytes of
/// plaintext plus at most 256 of expansion, and the 5-byte header): one
/// socket read's worth.
const MAX_RECORD: usize = (1 << 14) + 256 + 5;

/// The most plaintext carried by one record.
const MAX_FRAGMENT: usize = 1 << 14;

/// Stop encrypting the queue once this much waits to be sent (the
/// socket is full): the rest stays queued as plaintext, counted by the
/// client's byte bound.
const OUTGOING_LIMIT: usize = 64 << 10;

/// What the writer hands rustls once the session may carry data.
type AppWriter<'a> =
    &'a mut dyn FnMut(&mut WriteTraffic<'_, ServerConnectionData>, &mut Vec<u8>) -> io::Result<()>;

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Appends what `encode` writes to `out`, growing it to the size rustls
/// asks for.
fn append(
    out: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> io::Result<()> {
    let mut need = 256;
    loop {
        let start = out.len();
        out.resize(start + need, 0);
        match encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Some(required)) if required > need => {
                out.truncate(start);
                need = required;
            }
            Err(_) => {
                out.truncate(start);
                return Err(io::Error::other("TLS: cannot encode a record"));
            }
        }
    }
}

/// Encrypts `data` (one record per 16 KiB) onto `out`.
fn encrypt_onto(
    wt: &mut WriteTraffic<'_, ServerConnectionData>,
    data: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<()> {
    append(out, |buf| {
        wt.encrypt(data, buf).map_err(|e| match e {
            EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Some(required_size)
            }
            _ => None,
        })
    })
}

/// Copies `payload` into `out[*filled..]` as far as it fits, the rest onto
/// `spill`.
fn deliver(payload: &[u8], out: &mut [u8], filled: &mut usize, spill: &mut Vec<u8>) {
    let n = payload.len().min(out.len() - *filled);
    out[*filled..*filled + n].copy_from_slice(&payload[..n]);
    *filled += n;
    spill.extend_from_slice(&payload[n..]);
}

impl TlsConn {
    /// Runs rustls over the bytes received until it needs I/O: decrypted
    /// data goes to `out[*filled..]` (then `plaintext`), handshake records
    /// and alerts onto `outgoing`, and once the session is open `app`
    /// encrypts onto `outgoing` (and close_notify, if asked).
    fn run(
        &mut self,
        out: &mut [u8],
        filled: &mut usize,
        mut app: Option<AppWriter<'_>>,
    ) -> io::Result<()> {
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    self.incoming.drain(..discard.min(self.incoming.len()));
                    self.encode_alert();
                    return Err(tls_error(e));
                }
            };
            // Some(()) when rustls waits for I/O.
            let step: io::Result<Option<()>> = match state {
                ConnectionState::ReadTraffic(mut rt) => {
                    let mut r = Ok(None);
                    while let Some(record) = rt.next_record() {
                        match record {
                            Ok(AppDataRecord {
                                discard: d,
                                payload,
                            }) => {
                                discard += d;
                                deliver(payload, out, filled, &mut self.plaintext);
                            }
                            Err(e) => {
                                r = Err(tls_error(e));
                                break;
                            }
                        }
                    }
                    r
                }
                ConnectionState::EncodeTlsData(mut enc) => append(&mut self.outgoing, |buf| {
                    enc.encode(buf).map_err(|e| match e {
                        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
                            Some(required_size)
                        }
                        _ => None,
                    })
                })
                .map(|()| None),
                ConnectionState::TransmitTlsData(t) => {
                    // Everything encoded is in `outgoing`, which every
                    // caller writes before waiting on the socket.
                    t.done();
                    Ok(None)
                }
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    Ok(None)
                }
                ConnectionState::WriteTraffic(mut wt) => {
                    let mut r = match app.take() {
                        Some(write) => write(&mut wt, &mut self.outgoing),
                        None => Ok(()),
                    };
                    if r.is_ok() && std::mem::take(&mut self.send_close) {
                        r = append(&mut self.outgoing, |buf| {
                            wt.queue_close_notify(buf).map_err(|e| match e {
                                EncryptError::InsufficientSize(InsufficientSizeError {
                                    required_size,
                                }) => Some(required_size),
                                _ => None,
                            })
                        });
                    }
                    r.map(Some)
                }
                ConnectionState::Closed => {
                    self.peer_closed = true;
                    Ok(Some(()))
                }
                // BlockedHandshake: more input needed; early data is off
                // (`max_early_data_size` 0), so ReadEarlyData never comes.
                _ => Ok(Some(())),
            };
            self.incoming.drain(..discard.min(self.incoming.len()));
            if self.incoming.is_empty() {
                self.incoming = Vec::new();
            }
            match step {
                Ok(Some(())) => return Ok(()),
                Ok(None) => {}
                Err(e) => {
                    self.encode_alert();
                    return Err(e);
                }
            }
        }
    }

    /// After an error rustls has an alert queued: encode it (bounded).
    fn encode_alert(&mut self) {
        for _ in 0..4 {
            let status = self.conn.process_tls_records(&mut []);
            match status.state {
                Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                    let _ = append(&mut self.outgoing, |buf| enc.encode(buf).map_err(|_| None));
                }
                _ => return,
            }
        }
    }

    /// Reads once from the socket onto `incoming` (blocking until
    /// `deadline`); `Ok(0)` at EOF.
    fn blocking_read_tls(&mut self, stream: &TcpStream, deadline: Instant) -> io::Result<usize> {
        set_read_deadline(stream, deadline)?;
        self.read_tls(stream)
    }

    /// One `read` from the socket onto `incoming`.
    fn read_tls(&mut self, stream: &TcpStream) -> io::Result<usize> {
        let start = self.incoming.len();
        self.incoming.resize(start + MAX_RECORD, 0);
        let r = loop {
            match (&*stream).read(&mut self.incoming[start..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        self.incoming.truncate(start + *r.as_ref().unwrap_or(&0));
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
        if let Ok(0) = r {
            self.eof = true;
        }
        r
    }

    /// Hands out leftover plaintext.
    fn take_into(&mut self, buf: &mut [u8]) -> usize {
        let n = self.plaintext.len().min(buf.len());
        buf[..n].copy_from_slice(&self.plaintext[..n]);
        self.plaintext.drain(..n);
        if self.plaintext.is_empty() {
            self.plaintext = Vec::new();
        }
        n
    }

    /// Reads plaintext for the blocking HTTP phase: every socket read is
    /// bounded by `deadline`. `Ok(0)` at the peer's close.
    pub(crate) fn blocking_read(
        &mut self,
        stream: &TcpStream,
        buf: &mut [u8],
        deadline: Instant,
    ) -> io::Result<usize> {
        loop {
            let mut filled = self.take_into(buf);
            if filled > 0 || self.peer_closed {
                return Ok(filled);
            }
            if self.eof {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.blocking_read_tls(stream, deadline)?;
            let r = self.run(buf, &mut filled, None);
            // Alerts and key-update answers.
            let _ = self.blocking_flush(stream, deadline);
            r?;
            if filled > 0 {
                return Ok(filled);
            }
        }
    }

    /// Writes everything encoded, blocking until `deadline`.
    pub(crate) fn blocking_flush(
        &mut self,
        stream: &TcpStream,
        deadline: Instant,
    ) -> io::Result<()> {
        while self.wants_write() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            stream.set_write_timeout(Some(left))?;
            let n = match (&*stream).write(&self.outgoing[self.sent..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => other?,
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.advance(n);
        }
        Ok(())
    }

    /// Encrypts `bytes` and writes them, blocking until `deadline`.
    pub(crate) fn blocking_write_all(
        &mut self,
        stream: &TcpStream,
        bytes: &[u8],
        deadline: Instant,
    ) -> io::Result<()> {
        for chunk in bytes.chunks(OUTGOING_LIMIT) {
            let mut done = false;
            let mut write = |wt: &mut WriteTraffic<'_, ServerConnectionData>, out: &mut Vec<u8>| {
                done = true;
                encrypt_onto(wt, chunk, out)
            };
            self.run(&mut [], &mut 0, Some(&mut write))?;
            if !done {
                return Err(io::Error::other("TLS session not open for data"));
            }
            self.blocking_flush(stream, deadline)?;
        }
        Ok(())
    }

    /// Ends the TLS session (close_notify, RFC 8446 §6.1), best effort.
    pub(crate) fn blocking_close(&mut self, stream: &TcpStream, deadline: Instant) {
        self.send_close = true;
        if self.run(&mut [], &mut 0, None).is_ok() {
            let _ = self.blocking_flush(stream, deadline);
        }
    }

    /// Everything the peer sent that was decrypted already (the HTTP phase
    /// hands it over with the socket, so nothing waits here for a socket
    /// event that will not come).
    pub(crate) fn take_plaintext(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.plaintext);
        self.plaintext = Vec::new();
    }

    /// Reads what the (non-blocking) socket has and returns the plaintext,
    /// as `Read::read` would: `Ok(0)` after the peer's close_notify,
    /// `UnexpectedEof` when TCP ends without it, `WouldBlock` when nothing
    /// new. Records rustls makes meanwhile (alerts, key updates) are left
    /// for the caller to write ([`wants_write`](Self::wants_write)).
    pub(crate) fn read(&mut self, stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = self.take_into(buf);
        self.more = !self.plaintext.is_empty();
        loop {
            if self.more || self.peer_closed || (filled > 0 && buf.len() - filled < MAX_FRAGMENT) {
                return Ok(filled);
            }
            if self.eof {
                return match filled {
                    0 => Err(io::ErrorKind::UnexpectedEof.into()),
                    n => Ok(n),
                };
            }
            match self.read_tls(stream) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && filled > 0 => return Ok(filled),
                Err(e) => return Err(e),
            }
            self.run(buf, &mut filled, None)?;
            // What did not fit waits here; the socket will not say so.
            self.more = !self.plaintext.is_empty();
        }
    }

    /// True when the last [`read`](Self::read) left plaintext behind.
    pub(crate) fn more_to_read(&self) -> bool {
        self.more
    }

    /// Encrypts queued plaintext onto the outgoing buffer until it holds
    /// [`OUTGOING_LIMIT`]: small frames are gathered into one record per
    /// 16 KiB (not a record per frame). Returns the bytes taken; `Err` once
    /// the session failed.
    pub(crate) fn encrypt<'a>(
        &mut self,
        bufs: impl IntoIterator<Item = &'a bytes::Bytes>,
    ) -> io::Result<usize> {
        if self.outgoing.len() - self.sent >= OUTGOING_LIMIT {
            return Ok(0);
        }
        let mut bufs = bufs.into_iter();
        let mut taken = 0;
        let sent = self.sent;
        let mut write = |wt: &mut WriteTraffic<'_, ServerConnectionData>, out: &mut Vec<u8>| {
            let mut batch: Vec<u8> = Vec::new();
            for b in bufs.by_ref() {
                if batch.len() + b.len() > MAX_FRAGMENT && !batch.is_empty() {
                    encrypt_onto(wt, &batch, out)?;
                    taken += batch.len();
                    batch.clear();
                    if out.len() - sent >= OUTGOING_LIMIT {
                        return Ok(());
                    }
                }
                if b.len() >= MAX_FRAGMENT {
                    encrypt_onto(wt, b, out)?;
                    taken += b.len();
                    if out.len() - sent >= OUTGOING_LIMIT {
                        return Ok(());
                    }
                } else {
                    batch.extend_from_slice(b);
                }
            }
            if !batch.is_empty() {
                encrypt_onto(wt, &batch, out)?;
                taken += batch.len();
            }
            Ok(())
        };
        self.run(&mut [], &mut 0, Some(&mut write))?;
        Ok(taken)
    }

    /// True while encrypted bytes wait to be written.
    pub(crate) fn wants_write(&self) -> bool {
        self.sent < self.outgoing.len()
    }

    fn advance(&mut self, n: usize) {
        self.sent += n;
        if self.sent >= self.outgoing.len() {
            self.outgoing = Vec::new();
            self.sent = 0;
        }
    }

    /// Writes encrypted bytes with one non-blocking `sendmsg`; `Ok(0)` when
    /// the socket buffer is full.
    pub(crate) fn write_to(&mut self, stream: &TcpStream) -> io::Result<usize> {
        if !self.wants_write() {
            return Ok(0);
        }
        let n = sys::send_slices(stream, &[io::IoSlice::new(&self.outgoing[self.sent..])])?;
        self.advance(n);
        Ok(n)
    }

    /// Queues close_notify (RFC 8446 §6.1) and tries once to send it.
    pub(crate) fn close(&mut self, stream: &TcpStream) {
        self.send_close = true;
        let _ = self.run(&mut [], &mut 0, None);
        let _ = self.write_to(stream);
    }
}
