//! A blocking TLS stream over TCP that two threads can share.
//!
//! A rustls connection is one state machine for both directions, so it
//! cannot be split like a socket. Here it sits behind a lock that is only
//! ever held for memory work (decrypting what was read, encrypting what is
//! to be written), never across a blocking socket call:
//!
//! - the reader waits for the socket *without* the lock, then takes it to
//!   hand rustls the ciphertext and take out plaintext;
//! - the writer takes it to encrypt, then writes the ciphertext with the
//!   lock released (a second lock, `writing`, keeps records in order).
//!
//! So a writer blocked on a peer that does not read never stops the reader,
//! and full-duplex traffic flows (`tests/tls.rs`: both halves busy at once).
//! The socket stays blocking, so `set_read_timeout`/`set_write_timeout`
//! work as on a `TcpStream`.

use super::error::{to_io, TlsError};
use rustls::pki_types::ServerName;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

/// How long a handshake may take when the socket has no read timeout of
/// its own (with one, that timeout bounds the whole handshake).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The most ciphertext read from the socket at once: one full TLS record
/// (2^14 bytes of plaintext, RFC 8446 §5.2, plus header and expansion).
const READ_CHUNK: usize = (1 << 14) + 512;

/// How long the close_notify on drop may wait for socket buffer space.
const CLOSE_NOTIFY_WAIT: Duration = Duration::from_millis(100);

/// A TLS connection over a `TcpStream`, client or server, after its
/// handshake. Cloning ([`try_clone`](Self::try_clone)) gives another handle
/// on the same connection: one thread may read while another writes.
/// Dropping the last handle sends a `close_notify` alert (RFC 8446 §6.1).
///
/// ```no_run
/// use std::net::TcpStream;
/// use wsproto::tls::{self, TlsStream};
/// let tcp = TcpStream::connect("example.com:443")?;
/// let tls = TlsStream::connect(tcp, "example.com", tls::client_config())?;
/// eprintln!("{:?} {:?}", tls.protocol_version(), tls.cipher_suite());
/// # Ok::<(), wsproto::Error>(())
/// ```
pub struct TlsStream {
    inner: Arc<Inner>,
}

struct Inner {
    tcp: TcpStream,
    state: Mutex<State>,
    /// One reader at a time (the ciphertext it reads must reach rustls in
    /// socket order), with its socket buffer.
    reading: Mutex<Vec<u8>>,
    /// One socket writer at a time, so records go out in the order rustls
    /// made them.
    writing: Mutex<()>,
}

struct State {
    conn: rustls::Connection,
    /// Ciphertext read from the socket that rustls has not taken yet (it
    /// takes no more while its plaintext buffer is full).
    rx: Vec<u8>,
    rx_pos: usize,
    /// The socket said end-of-stream.
    eof: bool,
    /// rustls was told of the end-of-stream.
    eof_fed: bool,
    /// Ciphertext waiting for the socket, in record order.
    tx: Vec<u8>,
    /// A fatal TLS error: every later call reports it.
    failed: Option<TlsError>,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("tcp", &self.inner.tcp)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves the TLS state as it was between
    // two calls at worst; ignore poisoning as blocking.rs does.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl TlsStream {
    /// The client handshake on a connected socket: sends SNI for
    /// `server_name` and checks the server's certificate against `config`'s
    /// roots and that name (RFC 6125). Bounded by the socket's read timeout
    /// if it has one, else by [`DEFAULT_HANDSHAKE_TIMEOUT`].
    ///
    /// # Errors
    ///
    /// [`Error::Tls`](crate::Error::Tls): a refused certificate
    /// ([`TlsError::CertificateNotValidForName`], [`TlsError::UnknownIssuer`],
    /// [`TlsError::CertificateExpired`], ...), an alert, a timeout;
    /// [`Error::Io`](crate::Error::Io) if the socket fails.
    pub fn connect(
        tcp: TcpStream,
        server_name: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<Self, crate::Error> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| TlsError::InvalidServerName(server_name.to_owned()))?;
        let conn = rustls::ClientConnection::new(config, name).map_err(TlsError::from)?;
        Self::handshake(tcp, conn.into())
    }

    /// The server handshake on an accepted socket. Bounded by the socket's
    /// read timeout if it has one, else by [`DEFAULT_HANDSHAKE_TIMEOUT`]: a
    /// peer that sends plain HTTP gets an alert and [`TlsError::NotTls`], one
    /// that stalls [`TlsError::HandshakeTimeout`].
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub fn accept(tcp: TcpStream, config: Arc<rustls::ServerConfig>) -> Result<Self, crate::Error> {
        let conn = rustls::ServerConnection::new(config).map_err(TlsError::from)?;
        Self::handshake(tcp, conn.into())
    }

    fn handshake(mut tcp: TcpStream, mut conn: rustls::Connection) -> Result<Self, crate::Error> {
        let (read_timeout, write_timeout) = (tcp.read_timeout()?, tcp.write_timeout()?);
        let limit = read_timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT);
        let deadline = Instant::now() + limit;
        let remaining = || {
            deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or(TlsError::HandshakeTimeout(limit))
        };
        loop {
            while conn.wants_write() {
                tcp.set_write_timeout(Some(remaining()?))?;
                match conn.write_tls(&mut tcp) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if is_timeout(&e) => {
                        return Err(TlsError::HandshakeTimeout(limit).into())
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if !conn.is_handshaking() {
                break;
            }
            tcp.set_read_timeout(Some(remaining()?))?;
            match conn.read_tls(&mut tcp) {
                Ok(0) => return Err(TlsError::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => continue, // the deadline decides
                Err(e) => return Err(e.into()),
            }
            if let Err(e) = conn.process_new_packets() {
                // rustls queued the alert that tells the peer why (RFC 8446
                // §6.2); send it, bounded by the write timeout, then give up.
                let _ = tcp.set_write_timeout(Some(Duration::from_millis(500)));
                while conn.wants_write() {
                    if conn.write_tls(&mut tcp).is_err() {
                        break;
                    }
                }
                return Err(TlsError::from(e).into());
            }
        }
        tcp.set_read_timeout(read_timeout)?;
        tcp.set_write_timeout(write_timeout)?;
        Ok(Self {
            inner: Arc::new(Inner {
                tcp,
                state: Mutex::new(State {
                    conn,
                    rx: Vec::new(),
                    rx_pos: 0,
                    eof: false,
                    eof_fed: false,
                    tx: Vec::new(),
                    failed: None,
                }),
                reading: Mutex::new(Vec::new()),
                writing: Mutex::new(()),
            }),
        })
    }

    /// The TLS version agreed on (`TLSv1_3`, `TLSv1_2`).
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        lock(&self.inner.state).conn.protocol_version()
    }

    /// The cipher suite agreed on.
    pub fn cipher_suite(&self) -> Option<rustls::SupportedCipherSuite> {
        lock(&self.inner.state).conn.negotiated_cipher_suite()
    }

    /// The ALPN protocol agreed on, if any.
    pub fn alpn_protocol(&self) -> Option<Vec<u8>> {
        lock(&self.inner.state)
            .conn
            .alpn_protocol()
            .map(<[u8]>::to_vec)
    }

    /// The certificates the peer presented (a server's always; a client's
    /// if the server asked for them), leaf first.
    pub fn peer_certificates(&self) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
        lock(&self.inner.state)
            .conn
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
    }

    /// The socket underneath (writing to it directly breaks the TLS stream).
    pub fn tcp(&self) -> &TcpStream {
        &self.inner.tcp
    }

    /// Another handle on the same connection (see the type's docs).
    ///
    /// # Errors
    ///
    /// None today; `io::Result` to match `TcpStream::try_clone`.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            inner: Arc::clone(&self.inner),
        })
    }

    /// As `TcpStream::set_read_timeout` (shared by every handle).
    ///
    /// # Errors
    ///
    /// As `TcpStream::set_read_timeout` (a zero duration).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.tcp.set_read_timeout(timeout)
    }

    /// As `TcpStream::set_write_timeout` (shared by every handle).
    ///
    /// # Errors
    ///
    /// As `TcpStream::set_write_timeout` (a zero duration).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.tcp.set_write_timeout(timeout)
    }

    /// As `TcpStream::read_timeout`.
    ///
    /// # Errors
    ///
    /// As `TcpStream::read_timeout`.
    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        self.inner.tcp.read_timeout()
    }

    /// As `TcpStream::write_timeout`.
    ///
    /// # Errors
    ///
    /// As `TcpStream::write_timeout`.
    pub fn write_timeout(&self) -> io::Result<Option<Duration>> {
        self.inner.tcp.write_timeout()
    }

    /// The peer's address.
    ///
    /// # Errors
    ///
    /// As `TcpStream::peer_addr`.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.tcp.peer_addr()
    }

    /// Our address.
    ///
    /// # Errors
    ///
    /// As `TcpStream::local_addr`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.tcp.local_addr()
    }

    /// Sends `close_notify` (RFC 8446 §6.1: no more data from us) and shuts
    /// the socket down in `how`.
    ///
    /// # Errors
    ///
    /// As `TcpStream::shutdown`, or the write of the alert.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        if matches!(how, Shutdown::Write | Shutdown::Both) {
            let _w = lock(&self.inner.writing);
            lock(&self.inner.state).close_notify();
            self.inner.flush_tx()?;
        }
        self.inner.tcp.shutdown(how)
    }
}

impl State {
    fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some(e) => Err(to_io(e.clone())),
            None => Ok(()),
        }
    }

    /// Moves what rustls wants to send into `tx`.
    fn drain_tls(&mut self) {
        while self.conn.wants_write() {
            // Writing into a Vec cannot fail.
            if self.conn.write_tls(&mut self.tx).is_err() {
                break;
            }
        }
    }

    fn close_notify(&mut self) {
        if self.failed.is_none() {
            self.conn.send_close_notify();
            self.drain_tls();
        }
    }

    /// Hands rustls the ciphertext read so far, as much as it takes.
    fn feed(&mut self) -> io::Result<()> {
        self.check()?;
        // rustls takes no ciphertext while plaintext waits to be read.
        while self.conn.wants_read() {
            if self.rx_pos < self.rx.len() {
                let n = self.conn.read_tls(&mut &self.rx[self.rx_pos..])?;
                self.rx_pos += n;
                if n == 0 {
                    break;
                }
            } else if self.eof && !self.eof_fed {
                self.eof_fed = true;
                self.conn.read_tls(&mut io::empty())?;
            } else {
                break;
            }
            if let Err(e) = self.conn.process_new_packets() {
                // The alert rustls queued goes out with the next write.
                self.drain_tls();
                let e = TlsError::from(e);
                self.failed = Some(e.clone());
                return Err(to_io(e));
            }
            // KeyUpdate answers (RFC 8446 §4.6.3) and the like.
            self.drain_tls();
        }
        if self.rx_pos == self.rx.len() {
            self.rx.clear();
            self.rx_pos = 0;
        }
        Ok(())
    }
}

impl Inner {
    /// Writes `tx` to the socket; the caller holds `writing`. The state
    /// lock is released during each socket write.
    fn flush_tx(&self) -> io::Result<()> {
        loop {
            let chunk = {
                let mut st = lock(&self.state);
                if st.tx.is_empty() {
                    return Ok(());
                }
                std::mem::take(&mut st.tx)
            };
            let mut done = 0;
            while done < chunk.len() {
                match (&self.tcp).write(&chunk[done..]) {
                    Ok(0) => {
                        self.unwrite(&chunk[done..]);
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.unwrite(&chunk[done..]);
                        return Err(e);
                    }
                }
            }
            let mut st = lock(&self.state);
            if st.tx.is_empty() {
                // Keep the buffer's capacity for the next write.
                let mut chunk = chunk;
                chunk.clear();
                st.tx = chunk;
            }
        }
    }

    /// Puts bytes a failed write did not send back in front of `tx`.
    fn unwrite(&self, rest: &[u8]) {
        let mut st = lock(&self.state);
        let mut tx = rest.to_vec();
        tx.extend_from_slice(&st.tx);
        st.tx = tx;
    }

    /// The reader's fatal alert (RFC 8446 §6.2: tell the peer why), if no
    /// writer holds the socket: briefly, as the connection is over anyway.
    /// Anything else the reader queues (a KeyUpdate answer) waits for the
    /// next write: RFC 8446 §4.6.3 asks for it before our next application
    /// data, not at once, so the reader never blocks on a full socket.
    fn send_alert(&self) {
        if let Some(_w) = try_lock(&self.writing) {
            let _ = self.tcp.set_write_timeout(Some(CLOSE_NOTIFY_WAIT));
            let _ = self.flush_tx();
        }
    }

    /// After a write: sends what the reader queued meanwhile, if no other
    /// writer is busy (a busy one sends it before it lets go).
    fn hand_off(&self) {
        loop {
            if lock(&self.state).tx.is_empty() {
                return;
            }
            let Some(_w) = try_lock(&self.writing) else {
                return;
            };
            if self.flush_tx().is_err() {
                return;
            }
        }
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Read for &TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let inner = &*self.inner;
        let mut chunk = lock(&inner.reading);
        chunk.resize(READ_CHUNK, 0);
        loop {
            let (result, failed) = {
                let mut st = lock(&inner.state);
                let result = st.feed().and_then(|()| st.conn.reader().read(buf));
                (result, st.failed.is_some())
            };
            match result {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    if failed {
                        inner.send_alert();
                    }
                    return Err(e);
                }
            }
            // No plaintext: wait for the socket, not holding the state, so
            // a writer can encrypt and send meanwhile. Its timeout is the
            // caller's read timeout.
            let n = (&inner.tcp).read(&mut chunk)?;
            let mut st = lock(&inner.state);
            if n == 0 {
                st.eof = true;
            } else {
                st.rx.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self).flush()
    }
}

impl Write for &TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let inner = &*self.inner;
        let w = lock(&inner.writing);
        // What an earlier write left queued goes first; if it still cannot
        // go, nothing of `buf` is taken.
        inner.flush_tx()?;
        let n = {
            let mut st = lock(&inner.state);
            st.check()?;
            // rustls takes up to its buffer limit (64 KiB) at a time.
            let n = st.conn.writer().write(buf)?;
            st.drain_tls();
            n
        };
        // `n` bytes are taken: a timeout now leaves their records queued
        // for the next write or flush, which reports it.
        match inner.flush_tx() {
            Err(e) if !is_timeout(&e) => return Err(e),
            _ => {}
        }
        drop(w);
        inner.hand_off();
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        let inner = &*self.inner;
        let w = lock(&inner.writing);
        let result = inner.flush_tx();
        drop(w);
        inner.hand_off();
        result
    }
}

impl crate::blocking::Transport for TlsStream {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        TlsStream::set_read_timeout(self, timeout)
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        TlsStream::set_write_timeout(self, timeout)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // RFC 8446 §6.1: tell the peer the end is intended (a truncation
        // attack looks like a bare TCP close). Best effort, briefly.
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if st.failed.is_some() {
            return;
        }
        st.close_notify();
        let tx = std::mem::take(&mut st.tx);
        let _ = self.tcp.set_write_timeout(Some(CLOSE_NOTIFY_WAIT));
        let _ = (&self.tcp).write_all(&tx);
    }
}
