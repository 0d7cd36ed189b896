//! A blocking WebSocket over any `Read + Write` stream, on top of
//! [`Connection`].
//!
//! - [`accept`] / [`accept_with`]: server handshake on an accepted stream.
//! - [`connect`] / [`client`]: client handshake (`connect` also dials TCP).
//! - [`WebSocket::read`] returns the next [`Event`]; Pongs and Close echoes
//!   are written for you. A normal close is an [`Event::Close`], after which
//!   `read` returns [`Error::Closed`].
//! - [`WebSocket::split`] (TCP) gives a [`Reader`] and a [`Writer`] for two
//!   threads; replies the reader owes the peer go out through the writer's lock.
//! - [`WebSocket::set_keepalive`] pings an idle peer and gives up (close 1011)
//!   when nothing comes back in time.

use crate::close::CloseCode;
use crate::config::Config;
use crate::connection::{Connection, Event, State};
use crate::error::{Error, HandshakeError};
use crate::frame::Role;
use crate::handshake::{self, ClientRequest, ParsedRequest, ParsedResponse, Request, Response};
use crate::message::Message;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bytes asked of the transport per read.
const READ_CHUNK: usize = 16 << 10;

/// How long a client waits for the server to close TCP after the closing
/// handshake (RFC 6455 §7.1.1: the server closes first).
const CLIENT_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// A byte stream a [`WebSocket`] runs on. Timeouts are optional: the default
/// methods do nothing, so `impl Transport for MyStream {}` is enough for a
/// stream without them (keepalive and read timeouts then cannot fire).
pub trait Transport: Read + Write {
    /// Bounds how long one `read` may block (`None`: forever).
    ///
    /// # Errors
    ///
    /// Whatever the stream reports.
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let _ = timeout;
        Ok(())
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
}

impl Transport for TcpStream {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, timeout)
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
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        (**self).set_read_timeout(timeout)
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        (**self).set_write_timeout(timeout)
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
    let mut buf = Vec::with_capacity(1024);
    let mut scanned = 0;
    loop {
        let before = buf.len();
        read_some(&mut stream, &mut buf, config.max_handshake_size)?;
        if handshake::head_end(&buf, scanned).is_none() && buf.len() < config.max_handshake_size {
            scanned = before.max(buf.len());
            continue;
        }
        match handshake::parse_request(&buf, &config) {
            ParsedRequest::Complete(req, len) => {
                let protocol = req.select_protocol(protocols);
                stream.write_all(&req.accept(protocol))?;
                stream.flush()?;
                let ws = WebSocket::from_raw(stream, Role::Server, config, &buf[len..]);
                return Ok((ws, req));
            }
            ParsedRequest::Reject(r) => {
                // Best effort: the peer may already be gone.
                let _ = stream.write_all(&r.response).and_then(|()| stream.flush());
                return Err(r.error.into());
            }
            ParsedRequest::NeedMore => scanned = buf.len(),
        }
    }
}

/// Reads once into `buf` (up to `limit` bytes in total).
fn read_some<S: Read>(stream: &mut S, buf: &mut Vec<u8>, limit: usize) -> Result<(), Error> {
    let start = buf.len();
    let want = (limit.saturating_sub(start)).clamp(1, 4096);
    buf.resize(start + want, 0);
    let n = loop {
        match stream.read(&mut buf[start..]) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                buf.truncate(start);
                return Err(e.into());
            }
        }
    };
    buf.truncate(start + n);
    if n == 0 {
        return Err(HandshakeError::UnexpectedEof.into());
    }
    Ok(())
}

/// Dials `url` (`ws://host[:port]/path`) over TCP and performs the client
/// handshake with the default [`Config`].
///
/// # Errors
///
/// [`Error::Handshake`] for a bad URL or a refused upgrade (a non-101 status
/// is [`HandshakeError::Status`]), [`Error::Io`] if the connection fails.
pub fn connect(url: &str) -> Result<(WebSocket<TcpStream>, Response), Error> {
    let request = ClientRequest::from_url(url)?;
    let stream = TcpStream::connect(request.address())?;
    stream.set_nodelay(true)?;
    client(stream, &request, Config::default())
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
    stream.write_all(&request.to_bytes())?;
    stream.flush()?;
    let mut buf = Vec::with_capacity(1024);
    let mut scanned = 0;
    loop {
        read_some(&mut stream, &mut buf, config.max_handshake_size)?;
        if handshake::head_end(&buf, scanned).is_none() && buf.len() < config.max_handshake_size {
            scanned = buf.len();
            continue;
        }
        match request.parse_response(&buf, &config)? {
            ParsedResponse::Complete(resp, len) => {
                let ws = WebSocket::from_raw(stream, Role::Client, config, &buf[len..]);
                return Ok((ws, resp));
            }
            ParsedResponse::NeedMore => scanned = buf.len(),
        }
    }
}

/// Keepalive and timeout settings of the read side.
#[derive(Debug, Clone, Default)]
struct Timers {
    /// Ping after this much silence from the peer…
    ping_interval: Option<Duration>,
    /// …and fail if still nothing after this much more.
    pong_deadline: Duration,
    /// `read` fails with `TimedOut` after this much silence.
    idle_timeout: Option<Duration>,
    last_heard: Option<Instant>,
    ping_sent: Option<Instant>,
    applied: Option<Option<Duration>>,
}

impl Timers {
    fn is_active(&self) -> bool {
        self.ping_interval.is_some() || self.idle_timeout.is_some()
    }
}

/// What the read loop asks of the write side.
enum Duty {
    /// Write the reader connection's pending output (pongs, close replies).
    Flush,
    /// Send a keepalive ping.
    Ping,
    /// Close with 1011 after a missed pong.
    GiveUp,
}

/// The read loop shared by [`WebSocket`] and [`Reader`].
fn read_event<S: Transport>(
    conn: &mut Connection,
    stream: &mut S,
    timers: &mut Timers,
    duty: &mut dyn FnMut(Duty, &mut Connection, &mut S) -> Result<(), Error>,
) -> Result<Event, Error> {
    loop {
        match conn.next_event() {
            Ok(Some(event)) => {
                duty(Duty::Flush, conn, stream)?;
                if matches!(event, Event::Close(_)) && conn.role() == Role::Client {
                    wait_for_server_close(stream);
                }
                return Ok(event);
            }
            Ok(None) if conn.is_closed() => return Err(Error::Closed),
            Ok(None) => duty(Duty::Flush, conn, stream)?,
            Err(e) => {
                // The Close for the violation is queued; send it, best effort.
                let _ = duty(Duty::Flush, conn, stream);
                return Err(e.into());
            }
        }
        let now = Instant::now();
        let last = *timers.last_heard.get_or_insert(now);
        let mut wait: Option<Duration> = timers
            .idle_timeout
            .map(|t| (last + t).saturating_duration_since(now));
        if let Some(interval) = timers.ping_interval {
            let due = match timers.ping_sent {
                Some(sent) => sent + timers.pong_deadline,
                None => last + interval,
            };
            let left = due.saturating_duration_since(now);
            wait = Some(wait.map_or(left, |w| w.min(left)));
        }
        // A zero timeout means "block forever" to std; use 1 ms instead.
        let wait = wait.map(|w| w.max(Duration::from_millis(1)));
        // Without timers of our own, leave the caller's socket timeout alone.
        if timers.is_active() && timers.applied != Some(wait) {
            stream.set_read_timeout(wait)?;
            timers.applied = Some(wait);
        }
        match conn.receive_from(stream, READ_CHUNK) {
            Ok(_) => {
                timers.last_heard = Some(Instant::now());
                timers.ping_sent = None;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if timers.is_active()
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
                if let Some(interval) = timers.ping_interval {
                    match timers.ping_sent {
                        Some(sent) if now >= sent + timers.pong_deadline => {
                            let _ = duty(Duty::GiveUp, conn, stream);
                            return Err(Error::PongTimeout(timers.pong_deadline));
                        }
                        None if now >= last + interval => {
                            duty(Duty::Ping, conn, stream)?;
                            timers.ping_sent = Some(now);
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
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
        let mut duty = |d: Duty, c: &mut Connection, s: &mut S| -> Result<(), Error> {
            match d {
                Duty::Flush => {}
                Duty::Ping => c.ping(b"")?,
                Duty::GiveUp => c.close(CloseCode::INTERNAL_ERROR, "keepalive timeout")?,
            }
            write_out(s, c)
        };
        read_event(
            &mut self.conn,
            &mut self.stream,
            &mut self.timers,
            &mut duty,
        )
    }

    /// Sends a message (queues it and flushes).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once a Close was sent or received, [`Error::Io`].
    pub fn send(&mut self, message: impl Into<Message>) -> Result<(), Error> {
        self.write(message)?;
        self.flush()
    }

    /// Queues a message without flushing (batch several, then [`flush`](Self::flush)).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`], or [`Error::OutputFull`] past
    /// [`Config::max_output_buffer`].
    pub fn write(&mut self, message: impl Into<Message>) -> Result<(), Error> {
        match message.into() {
            Message::Text(t) => self.conn.send_text(&t),
            Message::Binary(b) => self.conn.send_binary(&b),
        }
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
        self.conn.close(code, reason)?;
        self.flush()
    }

    /// Pings after `interval` without hearing from the peer, and fails
    /// [`read`](Self::read) with [`Error::PongTimeout`] (after sending close
    /// 1011) if nothing arrives within `deadline` of the ping. Needs a
    /// [`Transport`] with read timeouts, such as `TcpStream`.
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

impl WebSocket<TcpStream> {
    /// Splits into a [`Reader`] and a [`Writer`] that can live on two threads.
    ///
    /// # Errors
    ///
    /// If the socket cannot be cloned.
    pub fn split(self) -> io::Result<(Reader, Writer)> {
        let read_stream = self.stream.try_clone()?;
        let role = self.conn.role();
        let config = self.conn.config().clone();
        let shared = Arc::new(Mutex::new(WriteHalf {
            stream: self.stream,
            conn: Connection::new(role, config),
        }));
        Ok((
            Reader {
                stream: read_stream,
                conn: self.conn,
                timers: self.timers,
                writer: Arc::clone(&shared),
            },
            Writer { shared },
        ))
    }
}

#[derive(Debug)]
struct WriteHalf {
    stream: TcpStream,
    /// Encodes what the writer sends; its state records our Close.
    conn: Connection,
}

fn lock(shared: &Mutex<WriteHalf>) -> MutexGuard<'_, WriteHalf> {
    // A panic while holding the lock leaves bytes half-written at worst; the
    // stream is still usable for an error close, so ignore poisoning.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// The receiving half of a split [`WebSocket`].
#[derive(Debug)]
pub struct Reader {
    stream: TcpStream,
    conn: Connection,
    timers: Timers,
    writer: Arc<Mutex<WriteHalf>>,
}

impl Reader {
    /// Blocks until the next event; as [`WebSocket::read`]. Pongs and Close
    /// replies are written through the writer's lock.
    ///
    /// # Errors
    ///
    /// As [`WebSocket::read`].
    pub fn read(&mut self) -> Result<Event, Error> {
        let writer = Arc::clone(&self.writer);
        let mut duty = |d: Duty, c: &mut Connection, _: &mut TcpStream| -> Result<(), Error> {
            let mut w = lock(&writer);
            let w = &mut *w;
            match d {
                Duty::Flush => {
                    let out = c.take_output();
                    if out.is_empty() {
                        return Ok(());
                    }
                    // Our replies (pong, close echo, error close) are only
                    // sent while the writer has not closed (RFC 6455 §5.5.1).
                    if w.conn.state() != State::Open {
                        return Ok(());
                    }
                    if c.is_closed() {
                        w.conn.mark_closed();
                    }
                    write_out(&mut w.stream, &mut w.conn)?;
                    w.stream.write_all(&out)?;
                    w.stream.flush()?;
                    Ok(())
                }
                Duty::Ping => {
                    w.conn.ping(b"")?;
                    write_out(&mut w.stream, &mut w.conn)
                }
                Duty::GiveUp => {
                    let _ = w.conn.close(CloseCode::INTERNAL_ERROR, "keepalive timeout");
                    write_out(&mut w.stream, &mut w.conn)
                }
            }
        };
        read_event(
            &mut self.conn,
            &mut self.stream,
            &mut self.timers,
            &mut duty,
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
    shared: Arc<Mutex<WriteHalf>>,
}

impl Writer {
    /// Sends a message.
    ///
    /// # Errors
    ///
    /// As [`WebSocket::send`].
    pub fn send(&self, message: impl Into<Message>) -> Result<(), Error> {
        let mut w = lock(&self.shared);
        let w = &mut *w;
        match message.into() {
            Message::Text(t) => w.conn.send_text(&t)?,
            Message::Binary(b) => w.conn.send_binary(&b)?,
        }
        write_out(&mut w.stream, &mut w.conn)
    }

    /// Sends a Ping.
    ///
    /// # Errors
    ///
    /// As [`WebSocket::ping`].
    pub fn ping(&self, payload: &[u8]) -> Result<(), Error> {
        let mut w = lock(&self.shared);
        let w = &mut *w;
        w.conn.ping(payload)?;
        write_out(&mut w.stream, &mut w.conn)
    }

    /// Starts the closing handshake; the [`Reader`] returns the peer's answer.
    ///
    /// # Errors
    ///
    /// As [`WebSocket::close`].
    pub fn close(&self, code: CloseCode, reason: &str) -> Result<(), Error> {
        let mut w = lock(&self.shared);
        let w = &mut *w;
        w.conn.close(code, reason)?;
        write_out(&mut w.stream, &mut w.conn)
    }
}
