//! A blocking WebSocket over any `Read + Write` stream, on top of
//! [`Connection`].
//!
//! - [`accept`] / [`accept_with`]: server handshake on an accepted stream.
//! - [`connect`] / [`client`]: client handshake (`connect` also dials TCP).
//! - [`WebSocket::read`] returns the next [`Event`]; Pongs and Close echoes
//!   are written for you. A normal close is an [`Event::Close`], after which
//!   `read` returns [`Error::Closed`].
//! - [`WebSocket::split`] (TCP) gives a [`Reader`] and a [`Writer`] for two
//!   threads; replies the reader owes the peer go out through the writer's
//!   socket, but the reader never waits for a writer that is blocked.
//! - [`WebSocket::set_keepalive`] pings an idle peer and gives up (close 1011)
//!   when nothing comes back in time; after our Close it bounds the wait for
//!   the peer's.

use crate::close::CloseCode;
use crate::config::Config;
use crate::connection::{Connection, Event, EventRef, State};
use crate::error::{Error, ProtocolError};
use crate::frame::{Opcode, Role};
use crate::handshake::{ClientRequest, Request, Response};
use crate::message::Message;
use crate::owed::Replies;
use crate::upgrade::{self, Head, ServerStep};
use crate::vectored;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

/// How long a client waits for the server to close TCP after the closing
/// handshake (RFC 6455 §7.1.1: the server closes first).
const CLIENT_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// A byte stream a [`WebSocket`] runs on. Timeouts are optional:
/// `impl Transport for MyStream {}` is enough for a stream without them,
/// and [`AnyStream`] wraps any `Read + Write` (a TLS stream from another
/// crate) without writing even that.
///
/// Without read timeouts, [`WebSocket::set_keepalive`] and
/// [`WebSocket::set_idle_timeout`] make `read` fail with
/// `io::ErrorKind::Unsupported`, and a client does not wait for the server
/// to close the transport after the closing handshake (RFC 6455 §7.1.1's
/// wait must be bounded, and only a read timeout can bound it).
pub trait Transport: Read + Write {
    /// Bounds how long one `read` may block (`None`: forever).
    ///
    /// # Errors
    ///
    /// Whatever the stream reports; by default `io::ErrorKind::Unsupported`
    /// (a stream without timeouts).
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let _ = timeout;
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Bounds how long one `write` may block (`None`: forever).
    ///
    /// # Errors
    ///
    /// Whatever the stream reports.
    fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let _ = timeout;
        Ok(())
    }

    /// True if `write_vectored` writes several buffers in one call (a
    /// `writev`), rather than std's default of writing only the first.
    /// [`WebSocket::send`] then hands a server's large payload to the
    /// stream as it is, after its frame header, instead of copying it.
    /// (std's own `Write::is_write_vectored` is not stable yet.)
    fn writes_vectored(&self) -> bool {
        false
    }
}

impl Transport for TcpStream {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, timeout)
    }

    fn writes_vectored(&self) -> bool {
        true
    }
}

#[cfg(unix)]
impl Transport for std::os::unix::net::UnixStream {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, timeout)
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_write_timeout(self, timeout)
    }

    fn writes_vectored(&self) -> bool {
        true
    }
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        (**self).set_read_timeout(timeout)
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        (**self).set_write_timeout(timeout)
    }

    fn writes_vectored(&self) -> bool {
        (**self).writes_vectored()
    }
}

/// Any `Read + Write` stream as a [`Transport`] without timeouts: a TLS
/// stream from another crate, an in-memory pipe.
///
/// ```
/// use std::io::Cursor;
/// use wsproto::blocking::{AnyStream, WebSocket};
/// use wsproto::{Config, Event, Role};
/// // A server's unmasked "hi", then nothing: any Read + Write will do.
/// let stream = AnyStream(Cursor::new(b"\x81\x02hi".to_vec()));
/// let mut ws = WebSocket::from_raw(stream, Role::Client, Config::default(), &[]);
/// assert_eq!(ws.read()?, Event::Text("hi".into()));
/// # Ok::<(), wsproto::Error>(())
/// ```
#[derive(Debug)]
pub struct AnyStream<S>(pub S);

impl<S: Read> Read for AnyStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<S: Write> Write for AnyStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<S: Read + Write> Transport for AnyStream<S> {}

/// What [`connect`] dials: a TCP stream for `ws://`, TLS over TCP for
/// `wss://` (the `rustls` feature). Both split ([`WebSocket::split`]), and
/// both have `TcpStream`'s timeout methods.
///
/// ```
/// use std::net::{TcpListener, TcpStream};
/// use std::time::Duration;
/// use wsproto::blocking::MaybeTlsStream;
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let stream = MaybeTlsStream::from(TcpStream::connect(listener.local_addr()?)?);
/// assert!(!stream.is_tls());
/// stream.set_read_timeout(Some(Duration::from_secs(5)))?;
/// assert_eq!(stream.read_timeout()?, Some(Duration::from_secs(5)));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum MaybeTlsStream {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`.
    #[cfg(feature = "rustls")]
    Tls(crate::tls::TlsStream),
}

impl From<TcpStream> for MaybeTlsStream {
    fn from(tcp: TcpStream) -> Self {
        Self::Plain(tcp)
    }
}

#[cfg(feature = "rustls")]
impl From<crate::tls::TlsStream> for MaybeTlsStream {
    fn from(tls: crate::tls::TlsStream) -> Self {
        Self::Tls(tls)
    }
}

/// Calls `$f` on the TCP or TLS stream alike.
macro_rules! either {
    ($s:expr, $v:ident => $f:expr) => {
        match $s {
            MaybeTlsStream::Plain($v) => $f,
            #[cfg(feature = "rustls")]
            MaybeTlsStream::Tls($v) => $f,
        }
    };
}

impl MaybeTlsStream {
    /// The TCP socket (under TLS for `wss://`: writing to it directly
    /// breaks the stream).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            #[cfg(feature = "rustls")]
            Self::Tls(s) => s.tcp(),
        }
    }

    /// True for `wss://`.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Self::Plain(_))
    }

    /// As `TcpStream::set_read_timeout`.
    ///
    /// # Errors
    ///
    /// As `TcpStream::set_read_timeout` (a zero duration).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.tcp().set_read_timeout(timeout)
    }

    /// As `TcpStream::set_write_timeout`.
    ///
    /// # Errors
    ///
    /// As `TcpStream::set_write_timeout` (a zero duration).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.tcp().set_write_timeout(timeout)
    }

    /// As `TcpStream::read_timeout`.
    ///
    /// # Errors
    ///
    /// As `TcpStream::read_timeout`.
    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        self.tcp().read_timeout()
    }

    /// As `TcpStream::write_timeout`.
    ///
    /// # Errors
    ///
    /// As `TcpStream::write_timeout`.
    pub fn write_timeout(&self) -> io::Result<Option<Duration>> {
        self.tcp().write_timeout()
    }

    /// As `TcpStream::shutdown` (over TLS, a `close_notify` goes first).
    ///
    /// # Errors
    ///
    /// As `TcpStream::shutdown`.
    pub fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        either!(self, s => s.shutdown(how))
    }

    /// Another handle on the same stream, for a second thread.
    ///
    /// # Errors
    ///
    /// As `TcpStream::try_clone`.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            Self::Plain(s) => Self::Plain(s.try_clone()?),
            #[cfg(feature = "rustls")]
            Self::Tls(s) => Self::Tls(s.try_clone()?),
        })
    }
}

impl Read for MaybeTlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        either!(self, s => s.read(buf))
    }
}

impl Write for MaybeTlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        either!(self, s => s.write(buf))
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        either!(self, s => s.write_vectored(bufs))
    }

    fn flush(&mut self) -> io::Result<()> {
        either!(self, s => s.flush())
    }
}

impl Transport for MaybeTlsStream {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        MaybeTlsStream::set_read_timeout(self, timeout)
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        MaybeTlsStream::set_write_timeout(self, timeout)
    }

    fn writes_vectored(&self) -> bool {
        // rustls encrypts into records anyway: the payload is copied once
        // whatever we do, so only plain TCP gains from writev.
        matches!(self, Self::Plain(_))
    }
}

/// Accepts a WebSocket on `stream` with the default [`Config`] and no
/// subprotocols.
///
/// # Errors
///
/// [`Error::Handshake`] for a bad request (the 4xx answer has been written),
/// [`Error::Io`] if the stream fails.
pub fn accept<S: Transport>(stream: S) -> Result<WebSocket<S>, Error> {
    accept_with(stream, Config::default(), &[]).map(|(ws, _)| ws)
}

/// Accepts a WebSocket, choosing a subprotocol from `protocols` (in the
/// server's order of preference). Returns the request too (path, headers).
///
/// # Errors
///
/// As [`accept`].
pub fn accept_with<S: Transport>(
    mut stream: S,
    config: Config,
    protocols: &[&str],
) -> Result<(WebSocket<S>, Request), Error> {
    let mut head = Head::new(&config);
    loop {
        if !read_head(&mut stream, &mut head)? {
            continue;
        }
        match upgrade::server_step(&head, &config, protocols) {
            ServerStep::Accept {
                response,
                request,
                conn,
            } => {
                stream.write_all(&response)?;
                stream.flush()?;
                return Ok((WebSocket::with_connection(stream, *conn), request));
            }
            ServerStep::Reject { response, error } => {
                // Best effort: the peer may already be gone.
                let _ = stream.write_all(&response).and_then(|()| stream.flush());
                return Err(error.into());
            }
            ServerStep::NeedMore => {}
        }
    }
}

/// Reads once into `head`; true when it is time to parse it.
fn read_head<S: Read>(stream: &mut S, head: &mut Head) -> Result<bool, Error> {
    let n = loop {
        match stream.read(head.spare()) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    };
    Ok(head.filled(n)?)
}

/// Dials `url` over TCP and performs the client handshake with the default
/// [`Config`]. The scheme decides: `ws://host[:port]/path` is plain TCP,
/// `wss://` is TLS (the `rustls` feature) verified against Mozilla's roots
/// (`tls::client_config`), with SNI and the
/// host name checked.
///
/// ```no_run
/// use wsproto::{blocking, Event};
/// let (mut ws, _response) = blocking::connect("wss://echo.example/ws")?;
/// ws.send("hello")?;
/// # Ok::<(), wsproto::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::Handshake`] for a bad URL or a refused upgrade (a non-101 status
/// is [`HandshakeError::Status`](crate::HandshakeError::Status); `wss://` without the `rustls` feature is
/// [`HandshakeError::InvalidUrl`](crate::HandshakeError::InvalidUrl)), `Error::Tls` for a refused certificate
/// and other TLS failures, [`Error::Io`] if the connection fails.
pub fn connect(url: &str) -> Result<(WebSocket<MaybeTlsStream>, Response), Error> {
    let request = ClientRequest::from_url(url)?;
    let stream = dial(&request)?;
    client(stream, &request, Config::default())
}

/// Dials the request's host: TCP, then TLS for `wss://`.
fn dial(request: &ClientRequest) -> Result<MaybeTlsStream, Error> {
    if request.is_secure() {
        #[cfg(feature = "rustls")]
        return dial_tls(request, crate::tls::client_config());
        #[cfg(not(feature = "rustls"))]
        return Err(crate::HandshakeError::InvalidUrl {
            url: format!("wss://{}", request.address()),
            why: "wss:// needs wsproto's rustls feature (or a TLS stream of your own and blocking::client)",
        }
        .into());
    }
    let tcp = TcpStream::connect(request.address())?;
    tcp.set_nodelay(true)?;
    Ok(MaybeTlsStream::Plain(tcp))
}

#[cfg(feature = "rustls")]
fn dial_tls(
    request: &ClientRequest,
    tls: Arc<rustls::ClientConfig>,
) -> Result<MaybeTlsStream, Error> {
    let tcp = TcpStream::connect(request.address())?;
    tcp.set_nodelay(true)?;
    let tls = crate::tls::TlsStream::connect(tcp, request.host(), tls)?;
    Ok(MaybeTlsStream::Tls(tls))
}

/// As [`connect`], with `config` and, for a `wss://` URL, the TLS client
/// config `tls` (your own roots or CA, client certificates; build one with
/// [`tls::provider`](crate::tls::provider) or use
/// [`tls::client_config_with_ca`](crate::tls::client_config_with_ca)).
/// A `ws://` URL ignores `tls`. A runnable example is in the `tls`
/// module's docs.
///
/// # Errors
///
/// As [`connect`].
#[cfg(feature = "rustls")]
pub fn connect_with_tls(
    url: &str,
    config: Config,
    tls: Arc<rustls::ClientConfig>,
) -> Result<(WebSocket<MaybeTlsStream>, Response), Error> {
    let request = ClientRequest::from_url(url)?;
    let stream = if request.is_secure() {
        dial_tls(&request, tls)?
    } else {
        dial(&request)?
    };
    client(stream, &request, config)
}

/// The TLS handshake on an accepted socket (see
/// [`TlsStream::accept`](crate::tls::TlsStream::accept): bounded by the
/// socket's read timeout, else 10 s), then [`accept`].
///
/// # Errors
///
/// `Error::Tls` if the TLS handshake fails (a peer that is not speaking
/// TLS, a timeout), otherwise as [`accept`].
#[cfg(feature = "rustls")]
pub fn accept_tls(
    tcp: TcpStream,
    tls: Arc<rustls::ServerConfig>,
) -> Result<WebSocket<crate::tls::TlsStream>, Error> {
    accept(crate::tls::TlsStream::accept(tcp, tls)?)
}

/// Performs the client handshake for `request` on an established stream
/// (e.g. a TLS stream for `wss://`).
///
/// # Errors
///
/// As [`connect`].
pub fn client<S: Transport>(
    mut stream: S,
    request: &ClientRequest,
    config: Config,
) -> Result<(WebSocket<S>, Response), Error> {
    let request = upgrade::client_request(request, &config);
    stream.write_all(&request.to_bytes())?;
    stream.flush()?;
    let mut head = Head::new(&config);
    loop {
        if !read_head(&mut stream, &mut head)? {
            continue;
        }
        if let Some((conn, response)) = upgrade::client_step(&request, &head, &config)? {
            return Ok((WebSocket::with_connection(stream, conn), response));
        }
    }
}

/// Keepalive and timeout settings of the read side.
#[derive(Debug, Clone, Default)]
struct Timers {
    /// Ping after this much silence from the peer…
    ping_interval: Option<Duration>,
    /// …and fail if still nothing after this much more. After our Close,
    /// also how long the peer has to answer it.
    pong_deadline: Duration,
    /// `read` fails with `TimedOut` after this much silence.
    idle_timeout: Option<Duration>,
    last_heard: Option<Instant>,
    ping_sent: Option<Instant>,
    /// When our Close went out, once we know it did.
    close_sent: Option<Instant>,
    /// The caller's own socket read timeout, restored when a retry tick
    /// (see [`RETRY_TICK`]) is no longer needed.
    base_timeout: Option<Duration>,
    applied: Option<Option<Duration>>,
}

impl Timers {
    fn is_active(&self) -> bool {
        self.ping_interval.is_some() || self.idle_timeout.is_some()
    }
}

/// How often a split [`Reader`] retries a reply it could not write yet
/// (its [`Writer`] holds the socket, or the peer is not reading).
const RETRY_TICK: Duration = Duration::from_millis(25);

/// What the read loop asks of the write side.
enum Duty {
    /// Write the reader connection's pending output (pongs, close replies).
    Flush,
    /// Send a keepalive ping.
    Ping,
    /// Close with 1011 after a missed pong.
    GiveUp,
}

/// How a [`Duty`] went.
enum Done {
    /// Done (or nothing to do).
    Sent,
    /// A reply is still owed: retry within [`RETRY_TICK`].
    Owed,
    /// No ping: our Close went out at this instant; the peer's answer is due.
    Closing(Instant),
}

/// Takes the next event (or notes the one lent) and says whether it is
/// the Close.
type NextEvent<T> = fn(&mut Connection) -> Result<Option<(T, bool)>, ProtocolError>;

/// The next owned event and whether it is the Close.
fn next_owned(conn: &mut Connection) -> Result<Option<(Event, bool)>, ProtocolError> {
    let event = conn.next_event()?;
    Ok(event.map(|e| {
        let close = matches!(e, Event::Close(_));
        (e, close)
    }))
}

/// The read loop shared by [`WebSocket`] and [`Reader`]: `next` takes the
/// next event from the connection (owned, or only noted when it is lent)
/// and says whether it is the Close.
fn read_event<S: Transport, T>(
    conn: &mut Connection,
    stream: &mut S,
    timers: &mut Timers,
    duty: &mut dyn FnMut(Duty, &mut Connection, &mut S) -> Result<Done, Error>,
    next: NextEvent<T>,
) -> Result<T, Error> {
    let entered = Instant::now();
    loop {
        let owed = match next(conn) {
            Ok(Some((event, is_close))) => {
                let flushed = duty(Duty::Flush, conn, stream);
                if is_close {
                    // The peer's Close is news even if our echo cannot be
                    // written (the peer may have shut down already).
                    if conn.role() == Role::Client {
                        wait_for_server_close(stream);
                    }
                } else {
                    flushed?;
                }
                return Ok(event);
            }
            Ok(None) if conn.is_closed() => return Err(Error::Closed),
            Ok(None) => matches!(duty(Duty::Flush, conn, stream)?, Done::Owed),
            Err(e) => {
                // The Close for the violation is queued; send it, best effort.
                let _ = duty(Duty::Flush, conn, stream);
                return Err(e.into());
            }
        };
        let now = Instant::now();
        let last = *timers.last_heard.get_or_insert(now);
        let mut wait: Option<Duration> = timers
            .idle_timeout
            .map(|t| (last + t).saturating_duration_since(now));
        if let Some(interval) = timers.ping_interval {
            let due = match (timers.close_sent, timers.ping_sent) {
                // RFC 6455 §7.1.1: after our Close, no pings; the peer's
                // Close is what we wait for, as long as for a pong.
                (Some(sent), _) | (None, Some(sent)) => sent + timers.pong_deadline,
                (None, None) => last + interval,
            };
            let left = due.saturating_duration_since(now);
            wait = Some(wait.map_or(left, |w| w.min(left)));
        }
        if owed {
            wait = Some(wait.map_or(RETRY_TICK, |w| w.min(RETRY_TICK)));
        }
        // A zero timeout means "block forever" to std; use 1 ms instead.
        let wait = wait.map(|w| w.max(Duration::from_millis(1)));
        // Without timers of our own, leave the caller's socket timeout alone
        // (and put it back after a retry tick).
        let ours = timers.is_active() || owed;
        if ours && timers.applied != Some(wait) {
            stream.set_read_timeout(wait)?;
            timers.applied = Some(wait);
        } else if !ours && timers.applied.is_some() {
            stream.set_read_timeout(timers.base_timeout)?;
            timers.applied = None;
        }
        let read_size = conn.config().read_size;
        match conn.receive_from(stream, read_size) {
            Ok(_) => {
                timers.last_heard = Some(Instant::now());
                timers.ping_sent = None;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if ours
                    && matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
            {
                let now = Instant::now();
                if let Some(t) = timers.idle_timeout {
                    if now >= last + t {
                        return Err(e.into());
                    }
                }
                if !timers.is_active() {
                    // Only the retry tick fired; the caller's own timeout
                    // still counts from the last byte (or this call).
                    let quiet = entered.max(last);
                    match timers.base_timeout {
                        Some(t) if now >= quiet + t => return Err(e.into()),
                        _ => continue,
                    }
                }
                if let Some(interval) = timers.ping_interval {
                    match (timers.close_sent, timers.ping_sent) {
                        (Some(sent), _) if now >= sent + timers.pong_deadline => {
                            return Err(close_timeout(timers.pong_deadline));
                        }
                        (None, Some(sent)) if now >= sent + timers.pong_deadline => {
                            let _ = duty(Duty::GiveUp, conn, stream);
                            return Err(Error::PongTimeout(timers.pong_deadline));
                        }
                        (None, None) if now >= last + interval => {
                            match duty(Duty::Ping, conn, stream)? {
                                Done::Closing(sent) => timers.close_sent = Some(sent),
                                Done::Sent | Done::Owed => timers.ping_sent = Some(now),
                            }
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The error for a peer that did not answer our Close in time.
fn close_timeout(deadline: Duration) -> Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the peer did not answer our Close within {deadline:?} (RFC 6455 §7.1.1)"),
    )
    .into()
}

/// RFC 6455 §7.1.1: after the closing handshake the client waits, briefly,
/// for the server to close the TCP connection first.
fn wait_for_server_close<S: Transport>(stream: &mut S) {
    if stream.set_read_timeout(Some(CLIENT_CLOSE_WAIT)).is_err() {
        return;
    }
    let deadline = Instant::now() + CLIENT_CLOSE_WAIT;
    let mut sink = [0u8; 512];
    while Instant::now() < deadline {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// A whole (unsplit) socket's timer duties: it owns the stream, so it
/// writes what the connection owes at once. After our Close no keepalive
/// Ping goes out; the wait for the peer's Close is bounded from `closed_at`.
fn own_duty<S: Transport>(
    closed_at: Option<Instant>,
    d: Duty,
    c: &mut Connection,
    s: &mut S,
) -> Result<Done, Error> {
    match d {
        Duty::Flush => {}
        Duty::Ping if c.state() != State::Open => {
            return Ok(Done::Closing(closed_at.unwrap_or_else(Instant::now)));
        }
        Duty::Ping => c.ping(b"")?,
        Duty::GiveUp => c.close(CloseCode::INTERNAL_ERROR, "keepalive timeout")?,
    }
    write_out(s, c)?;
    Ok(Done::Sent)
}

fn write_out<W: Write>(stream: &mut W, conn: &mut Connection) -> Result<(), Error> {
    while !conn.pending_output().is_empty() {
        match stream.write(conn.pending_output()) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
            Ok(n) => conn.consume_output(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    stream.flush()?;
    Ok(())
}

/// Writes the pending output, then `head` and `payload`, with vectored
/// writes: the payload goes to the stream from where it is, never copied.
/// If the stream fails part-way, the unwritten rest of the frame is queued
/// on the connection (as `write_out` leaves its bytes queued), so a later
/// flush completes the frame and the framing is never broken.
fn write_out_vectored<W: Write>(
    stream: &mut W,
    conn: &mut Connection,
    head: &[u8],
    payload: &[u8],
) -> Result<(), Error> {
    let (mut head_done, mut payload_done) = (0, 0);
    loop {
        let pending = conn.pending_output();
        let pending_len = pending.len();
        if pending_len == 0 && head_done == head.len() && payload_done == payload.len() {
            break;
        }
        let bufs = [
            io::IoSlice::new(pending),
            io::IoSlice::new(&head[head_done..]),
            io::IoSlice::new(&payload[payload_done..]),
        ];
        let err = match stream.write_vectored(&bufs) {
            Ok(0) => io::Error::from(io::ErrorKind::WriteZero),
            Ok(n) => {
                let from_pending = n.min(pending_len);
                conn.consume_output(from_pending);
                let from_head = (n - from_pending).min(head.len() - head_done);
                head_done += from_head;
                payload_done += n - from_pending - from_head;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => e,
        };
        conn.queue_framed(&head[head_done..]);
        conn.queue_framed(&payload[payload_done..]);
        return Err(err.into());
    }
    stream.flush()?;
    Ok(())
}

/// Sends `message` as `[header, payload]` with vectored writes if that is
/// how it should go ([`vectored::header`]): the caller's
/// `Bytes` is shared, never copied. `None` if it should not (a client
/// must mask, which is a copy anyway; a compressed message is a new buffer
/// anyway): the caller then queues and flushes as usual. Shared by
/// [`WebSocket::send`] and [`Writer::send`].
fn send_vectored<W: Write>(
    stream: &mut W,
    conn: &mut Connection,
    writes_vectored: bool,
    message: &Message,
) -> Option<Result<(), Error>> {
    let (opcode, payload): (Opcode, &[u8]) = match message {
        Message::Text(t) => (Opcode::Text, t.as_bytes()),
        Message::Binary(b) => (Opcode::Binary, b),
    };
    let head = vectored::header(conn, writes_vectored, opcode, payload.len())?;
    Some(
        head.and_then(|(head, head_len)| {
            write_out_vectored(stream, conn, &head[..head_len], payload)
        }),
    )
}

/// A WebSocket over a blocking stream.
///
/// ```no_run
/// use wsproto::{blocking, Event};
/// let (mut ws, _response) = blocking::connect("ws://127.0.0.1:9001/")?;
/// ws.send("hello")?;
/// if let Event::Text(reply) = ws.read()? {
///     println!("{reply}");
/// }
/// ws.close(wsproto::CloseCode::NORMAL, "bye")?;
/// # Ok::<(), wsproto::Error>(())
/// ```
#[derive(Debug)]
pub struct WebSocket<S> {
    stream: S,
    conn: Connection,
    timers: Timers,
}

impl<S: Transport> WebSocket<S> {
    /// Wraps a stream whose handshake is already done (e.g. by your own HTTP
    /// router). `leftover` holds bytes read past the handshake.
    pub fn from_raw(stream: S, role: Role, config: Config, leftover: &[u8]) -> Self {
        let mut conn = Connection::new(role, config);
        conn.receive(leftover);
        Self::with_connection(stream, conn)
    }

    /// Runs `conn` (fresh from a handshake) over `stream`.
    fn with_connection(stream: S, conn: Connection) -> Self {
        Self {
            stream,
            conn,
            timers: Timers::default(),
        }
    }

    /// Blocks until the next event.
    ///
    /// # Errors
    ///
    /// [`Error::Protocol`] if the peer violated the protocol (the Close has
    /// been sent), [`Error::Closed`] after the close event was returned,
    /// [`Error::PongTimeout`] on a missed keepalive, [`Error::Io`] otherwise
    /// (`TimedOut` for an [idle timeout](Self::set_idle_timeout)).
    pub fn read(&mut self) -> Result<Event, Error> {
        let closed_at = self.timers.close_sent;
        let mut duty = |d: Duty, c: &mut Connection, s: &mut S| own_duty(closed_at, d, c, s);
        read_event(
            &mut self.conn,
            &mut self.stream,
            &mut self.timers,
            &mut duty,
            next_owned,
        )
    }

    /// As [`read`](Self::read), with the payload borrowed from the
    /// connection until the next call (see [`Connection::next_event_ref`]):
    /// a message that arrived in one frame is handed out from the receive
    /// buffer, with no allocation and no reference count.
    ///
    /// ```
    /// use std::io::Cursor;
    /// use wsproto::blocking::{AnyStream, WebSocket};
    /// use wsproto::{Config, EventRef, Role};
    /// let wire = b"\x81\x02hi\x82\x01\x07".to_vec();
    /// let mut ws = WebSocket::from_raw(AnyStream(Cursor::new(wire)), Role::Client, Config::default(), &[]);
    /// assert_eq!(ws.read_ref()?, EventRef::Text("hi"));
    /// assert_eq!(ws.read_ref()?, EventRef::Binary(&[7]));
    /// # Ok::<(), wsproto::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read).
    pub fn read_ref(&mut self) -> Result<EventRef<'_>, Error> {
        let closed_at = self.timers.close_sent;
        let mut duty = |d: Duty, c: &mut Connection, s: &mut S| own_duty(closed_at, d, c, s);
        // The event stays lent by the connection; only its kind comes out
        // of the loop, and `relend` hands the same event out again.
        let text = read_event(
            &mut self.conn,
            &mut self.stream,
            &mut self.timers,
            &mut duty,
            |c| {
                let event = c.next_event_ref()?;
                Ok(event.map(|e| {
                    let close = matches!(e, EventRef::Close(_));
                    (matches!(e, EventRef::Text(_)), close)
                }))
            },
        )?;
        Ok(self.conn.relend(text))
    }

    /// Sends a message (queues it and flushes).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once a Close was sent or received, [`Error::Io`].
    pub fn send(&mut self, message: impl Into<Message>) -> Result<(), Error> {
        let message = message.into();
        let vectored = self.stream.writes_vectored();
        if let Some(sent) = send_vectored(&mut self.stream, &mut self.conn, vectored, &message) {
            return sent;
        }
        self.write(message)?;
        self.flush()
    }

    /// Queues a message without flushing (batch several, then
    /// [`flush`](Self::flush)); once
    /// [`Config::write_high_water`] bytes are queued it flushes by itself.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`], [`Error::Io`] from the automatic flush (the
    /// message stays queued), or [`Error::OutputFull`] if
    /// [`Config::max_output_buffer`] is set below the high-water mark.
    pub fn write(&mut self, message: impl Into<Message>) -> Result<(), Error> {
        match message.into() {
            Message::Text(t) => self.conn.send_text(&t),
            Message::Binary(b) => self.conn.send_binary(&b),
        }?;
        if self.conn.pending_output().len() >= self.conn.config().write_high_water {
            self.flush()?;
        }
        Ok(())
    }

    /// Sends a message framed (and compressed) once for many connections
    /// (see [`Connection::send_prepared`]): a server broadcasting to many
    /// blocking connections frames and compresses it once, not once per
    /// peer.
    ///
    /// ```
    /// use std::net::{TcpListener, TcpStream};
    /// use wsproto::blocking::WebSocket;
    /// use wsproto::deflate::PreparedMessage;
    /// use wsproto::{Config, Event, Role};
    /// let listener = TcpListener::bind("127.0.0.1:0")?;
    /// let a = TcpStream::connect(listener.local_addr()?)?;
    /// let (b, _) = listener.accept()?;
    /// let mut server = WebSocket::from_raw(a, Role::Server, Config::default(), b"");
    /// let mut client = WebSocket::from_raw(b, Role::Client, Config::default(), b"");
    /// let msg = PreparedMessage::text("hello, room", 6, 256);
    /// server.send_prepared(&msg)?;
    /// assert_eq!(client.read()?, Event::Text("hello, room".into()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub fn send_prepared(
        &mut self,
        message: &crate::deflate::PreparedMessage,
    ) -> Result<(), Error> {
        self.conn.send_prepared(message)?;
        self.flush()
    }

    /// Sends one fragment of a message (see [`Connection::send_fragment`]).
    ///
    /// # Errors
    ///
    /// As [`Connection::send_fragment`], and [`Error::Io`].
    pub fn send_fragment(
        &mut self,
        opcode: crate::Opcode,
        payload: &[u8],
        fin: bool,
    ) -> Result<(), Error> {
        self.conn.send_fragment(opcode, payload, fin)?;
        self.flush()
    }

    /// Sends a Ping.
    ///
    /// # Errors
    ///
    /// As [`Connection::ping`], and [`Error::Io`].
    pub fn ping(&mut self, payload: &[u8]) -> Result<(), Error> {
        self.conn.ping(payload)?;
        self.flush()
    }

    /// Writes everything queued.
    ///
    /// # Errors
    ///
    /// [`Error::Io`].
    pub fn flush(&mut self) -> Result<(), Error> {
        write_out(&mut self.stream, &mut self.conn)
    }

    /// Starts the closing handshake; keep calling [`read`](Self::read) until
    /// it returns [`Event::Close`] (the peer's answer) or an error.
    ///
    /// # Errors
    ///
    /// As [`Connection::close`], and [`Error::Io`].
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), Error> {
        let was_open = self.conn.state() == State::Open;
        self.conn.close(code, reason)?;
        if was_open {
            self.timers.close_sent = Some(Instant::now());
        }
        self.flush()
    }

    /// Pings after `interval` without hearing from the peer, and fails
    /// [`read`](Self::read) with [`Error::PongTimeout`] (after sending close
    /// 1011) if nothing arrives within `deadline` of the ping. Needs a
    /// [`Transport`] with read timeouts, such as `TcpStream`.
    ///
    /// After [`close`](Self::close) no more pings go out: `read` waits for
    /// the peer's Close and fails with an [`Error::Io`] of kind `TimedOut`
    /// if it has not come `deadline` after ours (RFC 6455 §7.1.1).
    pub fn set_keepalive(&mut self, interval: Duration, deadline: Duration) {
        self.timers.ping_interval = Some(interval);
        self.timers.pong_deadline = deadline;
    }

    /// Fails a [`send`](Self::send) or [`flush`](Self::flush) that cannot
    /// write for `timeout` (a peer that stopped reading), with an
    /// [`Error::Io`] of kind `WouldBlock` or `TimedOut`. The unwritten bytes
    /// stay queued. `None`: block forever.
    ///
    /// # Errors
    ///
    /// If the transport refuses the timeout.
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        Ok(self.stream.set_write_timeout(timeout)?)
    }

    /// Fails [`read`](Self::read) with an `io::ErrorKind::TimedOut` error after
    /// `timeout` without any bytes from the peer (`None`: wait forever).
    pub fn set_idle_timeout(&mut self, timeout: Option<Duration>) {
        self.timers.idle_timeout = timeout;
    }

    /// The state machine underneath.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The stream.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The stream, mutably (writing to it directly corrupts the framing).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }
}

impl<S: Into<MaybeTlsStream>> WebSocket<S> {
    /// Splits into a [`Reader`] and a [`Writer`] that can live on two
    /// threads; for a `TcpStream`, a `TlsStream` (the `rustls` feature) or
    /// what [`connect`] returns. Over TLS both halves share the one TLS
    /// connection; the reader never holds it while it waits for the socket,
    /// so neither half blocks the other (see `tls::TlsStream`).
    ///
    /// # Errors
    ///
    /// If the socket cannot be cloned.
    pub fn split(self) -> io::Result<(Reader, Writer)> {
        let mut ws = self.map_stream(Into::into);
        let read_stream = ws.stream.try_clone()?;
        let mut timers = ws.timers;
        timers.base_timeout = read_stream.read_timeout()?;
        let shared = Arc::new(Shared {
            half: Mutex::new(WriteHalf {
                stream: ws.stream,
                // deflate hook: the writer takes the compressor.
                conn: ws.conn.split_sender(),
            }),
            owed: Mutex::new(Owed {
                close_sent: timers.close_sent,
                ..Owed::default()
            }),
        });
        Ok((
            Reader {
                stream: read_stream,
                conn: ws.conn,
                timers,
                shared: Arc::clone(&shared),
            },
            Writer { shared },
        ))
    }
}

impl<S> WebSocket<S> {
    fn map_stream<T>(self, f: impl FnOnce(S) -> T) -> WebSocket<T> {
        WebSocket {
            stream: f(self.stream),
            conn: self.conn,
            timers: self.timers,
        }
    }
}

/// What a split socket's halves share. The reader never waits for `half`
/// (a writer may hold it for as long as the peer does not read): it leaves
/// its replies in `owed`, which is only ever locked briefly, and whoever
/// holds `half` next sends them.
#[derive(Debug)]
struct Shared {
    half: Mutex<WriteHalf>,
    owed: Mutex<Owed>,
}

#[derive(Debug)]
struct WriteHalf {
    stream: MaybeTlsStream,
    /// Encodes everything sent; its state records our Close.
    conn: Connection,
}

/// Replies the reader owes the peer, not yet encoded.
#[derive(Debug, Default)]
struct Owed {
    replies: Replies,
    /// Replies are encoded in the write half but a bounded write by the
    /// reader did not get them all out.
    unwritten: bool,
    /// When our Close went out (the reader then waits for the peer's).
    close_sent: Option<Instant>,
}

impl Owed {
    fn any(&self) -> bool {
        self.replies.any() || self.unwritten
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// How long the reader may wait for socket buffer space for its replies;
/// past it, they wait for the next retry (the peer is not reading).
const REPLY_WRITE_WAIT: Duration = Duration::from_millis(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves bytes half-written at worst; the
    // stream is still usable for an error close, so ignore poisoning.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

impl Shared {
    fn owes(&self) -> bool {
        lock(&self.owed).any()
    }

    /// Records the replies in `out` (frames the reader's connection queued:
    /// Pongs and at most one Close) as owed.
    fn owe(&self, out: &[u8], receiver: Role) {
        lock(&self.owed).replies.record(out, receiver);
    }

    /// Encodes what is owed into the write half (held by the caller).
    fn encode_owed(&self, w: &mut WriteHalf) {
        let replies = {
            let mut owed = lock(&self.owed);
            owed.unwritten = false;
            owed.replies.take()
        };
        replies.encode(&mut w.conn);
    }

    /// Runs `f` on the write half, sending owed replies before and after.
    fn with_half<R>(&self, f: impl FnOnce(&mut WriteHalf) -> Result<R, Error>) -> Result<R, Error> {
        let mut w = lock(&self.half);
        if self.owes() {
            self.encode_owed(&mut w);
            self.write_replies(&mut w)?;
        }
        let result = f(&mut w);
        drop(w);
        self.hand_off();
        result
    }

    /// Called after releasing `half`: sends replies the reader left while
    /// it was held. A holder that is busy hands off in turn when it
    /// releases, so nothing owed is left behind.
    fn hand_off(&self) {
        while self.owes() {
            let Some(mut w) = try_lock(&self.half) else {
                return;
            };
            self.encode_owed(&mut w);
            if self.write_replies(&mut w).is_err() {
                // The reader sees the failure on its side.
                return;
            }
        }
    }

    /// Writes the write half's output, owed replies included. If the
    /// peer is not reading (a write timeout), the rest stays queued and is
    /// marked owed, so the reader retries it.
    fn write_replies(&self, w: &mut WriteHalf) -> Result<(), Error> {
        let result = write_out(&mut w.stream, &mut w.conn);
        if matches!(&result, Err(Error::Io(e)) if is_timeout(e)) {
            lock(&self.owed).unwritten = true;
        }
        result
    }

    /// The reader's attempt: never waits for the lock, and waits at most
    /// [`REPLY_WRITE_WAIT`] for buffer space. Returns true if something is
    /// still owed.
    fn try_send_owed(&self) -> Result<bool, Error> {
        if !self.owes() {
            return Ok(false);
        }
        let Some(mut w) = try_lock(&self.half) else {
            // The holder sends it when it releases the lock; the retry
            // tick covers a holder that failed.
            return Ok(true);
        };
        self.encode_owed(&mut w);
        let w = &mut *w;
        let before = w.stream.write_timeout()?;
        w.stream.set_write_timeout(Some(REPLY_WRITE_WAIT))?;
        let result = self.write_replies(w);
        w.stream.set_write_timeout(before)?;
        match result {
            Ok(()) => Ok(self.owes()),
            Err(Error::Io(e)) if is_timeout(&e) => Ok(true),
            Err(e) => Err(e),
        }
    }
}

/// The receiving half of a split [`WebSocket`].
#[derive(Debug)]
pub struct Reader {
    stream: MaybeTlsStream,
    conn: Connection,
    timers: Timers,
    shared: Arc<Shared>,
}

impl Reader {
    /// Blocks until the next event; as [`WebSocket::read`]. Pongs and Close
    /// replies go out through the writer's socket: right away if the
    /// [`Writer`] is idle, otherwise as soon as it finishes what it is
    /// sending. The reader never waits for the writer, so events, timeouts
    /// and keepalive keep working while a send is blocked on a peer that
    /// stopped reading.
    ///
    /// # Errors
    ///
    /// As [`WebSocket::read`].
    pub fn read(&mut self) -> Result<Event, Error> {
        let shared = Arc::clone(&self.shared);
        if self.timers.close_sent.is_none() {
            self.timers.close_sent = lock(&shared.owed).close_sent;
        }
        let receiver = match self.conn.role() {
            Role::Client => Role::Server,
            Role::Server => Role::Client,
        };
        let mut duty =
            |d: Duty, c: &mut Connection, _: &mut MaybeTlsStream| -> Result<Done, Error> {
                match d {
                    Duty::Flush => {
                        if !c.pending_output().is_empty() {
                            shared.owe(&c.take_output(), receiver);
                        }
                    }
                    Duty::Ping => {
                        let mut owed = lock(&shared.owed);
                        if let Some(sent) = owed.close_sent {
                            return Ok(Done::Closing(sent));
                        }
                        owed.replies.ping = true;
                    }
                    Duty::GiveUp => lock(&shared.owed)
                        .replies
                        .owe_close(CloseCode::INTERNAL_ERROR, "keepalive timeout"),
                }
                Ok(if shared.try_send_owed()? {
                    Done::Owed
                } else {
                    Done::Sent
                })
            };
        read_event(
            &mut self.conn,
            &mut self.stream,
            &mut self.timers,
            &mut duty,
            next_owned,
        )
    }

    /// As [`WebSocket::set_keepalive`].
    pub fn set_keepalive(&mut self, interval: Duration, deadline: Duration) {
        self.timers.ping_interval = Some(interval);
        self.timers.pong_deadline = deadline;
    }

    /// As [`WebSocket::set_idle_timeout`].
    pub fn set_idle_timeout(&mut self, timeout: Option<Duration>) {
        self.timers.idle_timeout = timeout;
    }
}

/// The sending half of a split [`WebSocket`]; cheap to clone, so several
/// threads can send (each message is written whole under a lock).
#[derive(Debug, Clone)]
pub struct Writer {
    shared: Arc<Shared>,
}

impl Writer {
    /// Sends a message, after any Pong or Close the [`Reader`] owes.
    ///
    /// # Errors
    ///
    /// As [`WebSocket::send`].
    pub fn send(&self, message: impl Into<Message>) -> Result<(), Error> {
        let message = message.into();
        self.shared.with_half(|w| {
            // A frame an earlier send left part-written goes out first, so
            // its rest never counts against the output limit of this one.
            if !w.conn.pending_output().is_empty() {
                write_out(&mut w.stream, &mut w.conn)?;
            }
            // As `WebSocket::send`: a server's large payload goes out
            // vectored after its header, never copied.
            let vectored = w.stream.writes_vectored();
            if let Some(sent) = send_vectored(&mut w.stream, &mut w.conn, vectored, &message) {
                return sent;
            }
            match &message {
                Message::Text(t) => w.conn.send_text(t)?,
                Message::Binary(b) => w.conn.send_binary(b)?,
            }
            write_out(&mut w.stream, &mut w.conn)
        })
    }

    /// Sends a prepared message, as [`WebSocket::send_prepared`].
    ///
    /// # Errors
    ///
    /// As [`WebSocket::send`].
    pub fn send_prepared(&self, message: &crate::deflate::PreparedMessage) -> Result<(), Error> {
        self.shared.with_half(|w| {
            w.conn.send_prepared(message)?;
            write_out(&mut w.stream, &mut w.conn)
        })
    }

    /// Sends a Ping.
    ///
    /// # Errors
    ///
    /// As [`WebSocket::ping`].
    pub fn ping(&self, payload: &[u8]) -> Result<(), Error> {
        self.shared.with_half(|w| {
            w.conn.ping(payload)?;
            write_out(&mut w.stream, &mut w.conn)
        })
    }

    /// Starts the closing handshake; the [`Reader`] returns the peer's answer.
    ///
    /// # Errors
    ///
    /// As [`WebSocket::close`].
    pub fn close(&self, code: CloseCode, reason: &str) -> Result<(), Error> {
        self.shared.with_half(|w| {
            let was_open = w.conn.state() == State::Open;
            w.conn.close(code, reason)?;
            if was_open {
                lock(&self.shared.owed).close_sent = Some(Instant::now());
            }
            write_out(&mut w.stream, &mut w.conn)
        })
    }
}
