//! An async WebSocket over any tokio `AsyncRead + AsyncWrite + Unpin`
//! stream (TCP, TLS, an upgraded hyper connection), on top of
//! [`Connection`]. Needs the `tokio` feature.
//!
//! - [`accept`] / [`accept_with`]: server handshake; [`connect`] /
//!   [`client`]: client handshake; [`from_raw`]: a stream whose handshake
//!   was done elsewhere (hyper's upgrade).
//! - [`WebSocketStream`] is a [`futures_core::Stream`] of
//!   `Result<Message, Error>` and a [`futures_sink::Sink`] of [`Message`];
//!   it has the same calls as inherent `async fn`s (`next`, `send`,
//!   `feed`, `flush`, `close`, `read` for every [`Event`]), so no futures
//!   utility crate is needed.
//! - Protocol rules all stay in [`Connection`]: Pongs and Close echoes are
//!   queued by it and written by the adapter.
//! - [`WebSocketStream::split`] gives a [`ReadHalf`] and a [`WriteHalf`]
//!   for two tasks, with no lock on the message path (see [`Halves`]).
//! - Keepalive and timeouts ([`WebSocketStream::set_keepalive`],
//!   [`set_close_timeout`](WebSocketStream::set_close_timeout),
//!   [`set_idle_timeout`](WebSocketStream::set_idle_timeout)) run inside
//!   the read calls on one `tokio::time::Sleep`: no task per connection.
//!   (Timers need a runtime with time enabled.)
//!
//! # Flushing and backpressure
//!
//! [`send`](WebSocketStream::send) queues a message and writes it out.
//! [`feed`](WebSocketStream::feed) (and `Sink::start_send`) only queue,
//! first waiting for the queue to drain below
//! [`Config::write_high_water`] bytes: batching sends costs one system call
//! per batch, and a peer that does not read makes `feed` wait instead of
//! growing the queue. What is queued is written by `send`, `flush`, and by
//! [`next`](WebSocketStream::next) whenever it waits for input (the
//! transport has none ready), so an echo loop of `next` + `feed` writes
//! once per batch of reads.
//!
//! Reads pause when the application stops asking: bytes are only read
//! from the stream inside `next`/`read`, into the connection's buffer,
//! bounded by the [`Config`] limits. Each read asks for
//! `max(`[`Config::read_size`]`, 64 KiB)`, into one buffer per thread
//! (not per connection), then hands the bytes to the connection.
//!
//! # Cancellation
//!
//! - `next`, `read`, `flush` and `close` are cancellation-safe: their
//!   state lives in the [`WebSocketStream`], an event is taken from the
//!   connection only in the poll that returns it, and a partly read frame
//!   stays buffered for the next call. Dropping one (a `select!` branch
//!   that lost, a `timeout`) loses nothing.
//! - `send` and `feed` queue the whole message in one poll, once there is
//!   room: if cancelled, the message was either not queued at all or is
//!   queued whole and goes out with the next write. The wire never holds
//!   part of a frame whose rest is lost.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tokio::net::TcpListener;
//! use wsproto::{tokio as ws, CloseCode, Message};
//!
//! let listener = TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let server = tokio::spawn(async move {
//!     let (stream, _) = listener.accept().await?;
//!     let mut ws = ws::accept(stream).await?;
//!     while let Some(msg) = ws.next().await {
//!         ws.send(msg?).await?; // Pings and the Close are answered for us
//!     }
//!     Ok::<_, wsproto::Error>(())
//! });
//!
//! let (mut ws, _response) = ws::connect(&format!("ws://{addr}/")).await?;
//! ws.send("hello").await?;
//! assert_eq!(ws.next().await.transpose()?, Some(Message::from("hello")));
//! ws.close(CloseCode::NORMAL, "done").await?;
//! assert!(ws.next().await.is_none()); // the server's answer ends the stream
//! assert_eq!(ws.close_frame().map(|f| f.code), Some(CloseCode::NORMAL));
//! server.await??;
//! # Ok(())
//! # }
//! ```
//!
//! # TLS
//!
//! With the `tokio-rustls` feature, [`connect`] dials `wss://` (Mozilla's roots;
//! `connect_with_tls` for your own `ClientConfig`) and `accept_tls`
//! serves it, through `tokio-rustls`, with the `tls` module's config
//! builders and its typed `TlsError`.
//! Any other TLS stream that is `AsyncRead + AsyncWrite + Unpin` works as
//! it is: pass it to [`accept`] / [`from_raw`], or to [`client`]. A TLS
//! stream cannot be split without a lock (both directions share its
//! state); for [`split`](WebSocketStream::split) of a stream of your own,
//! wrap it as `tokio::io::join` of the halves of `tokio::io::split` (see
//! [`Halves`]).

mod split;
mod stream;

pub use split::{Halves, ReadHalf, WriteHalf};
pub use stream::{MaybeTlsRead, MaybeTlsStream, MaybeTlsWrite};

use crate::close::{CloseCode, CloseFrame};
use crate::config::Config;
use crate::connection::{Connection, Event, State};
use crate::error::Error;
use crate::frame::{Opcode, Role};
use crate::handshake::{ClientRequest, Request, Response};
use crate::message::Message;
use crate::upgrade::{self, Head, ServerStep};
use crate::vectored;
use ::tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
#[cfg(feature = "tokio-rustls")]
use ::tokio::net::TcpStream;
use ::tokio::time::{Instant, Sleep};
use bytes::{Buf, Bytes};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice, Read};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Wake, Waker};
use std::time::Duration;

/// Accepts a WebSocket on `stream` with the default [`Config`] and no
/// subprotocols.
///
/// Not cancellation-safe (the handshake's bytes are lost): bound it with
/// `tokio::time::timeout` and drop the stream if it fires.
///
/// # Errors
///
/// [`Error::Handshake`] for a bad request (the 4xx answer has been
/// written), [`Error::Io`] if the stream fails.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
) -> Result<WebSocketStream<S>, Error> {
    accept_with(stream, Config::default(), &[])
        .await
        .map(|(ws, _)| ws)
}

/// Accepts a WebSocket, choosing a subprotocol from `protocols` (in the
/// server's order of preference) and permessage-deflate if
/// [`Config::deflate`] allows. Returns the request too (path, headers).
///
/// # Errors
///
/// As [`accept`].
pub async fn accept_with<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    config: Config,
    protocols: &[&str],
) -> Result<(WebSocketStream<S>, Request), Error> {
    let mut head = Head::new(&config);
    loop {
        if !read_head(&mut stream, &mut head).await? {
            continue;
        }
        match upgrade::server_step(&head, &config, protocols) {
            ServerStep::Accept {
                response,
                request,
                conn,
            } => {
                stream.write_all(&response).await?;
                stream.flush().await?;
                return Ok((WebSocketStream::with_connection(stream, *conn), request));
            }
            ServerStep::Reject { response, error } => {
                // Best effort: the peer may already be gone.
                if stream.write_all(&response).await.is_ok() {
                    let _ = stream.flush().await;
                }
                return Err(error.into());
            }
            ServerStep::NeedMore => {}
        }
    }
}

/// Reads once into `head`; true when it is time to parse it.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S, head: &mut Head) -> Result<bool, Error> {
    let n = stream.read(head.spare()).await?;
    Ok(head.filled(n)?)
}

/// Dials `url` (`ws://host[:port]/path`, or `wss://` with the `tokio-rustls`
/// feature) and performs the client handshake with the default
/// [`Config`]. `wss://` verifies the server against Mozilla's roots
/// (`tls::client_config`), with SNI and the host name, as the blocking
/// `connect`; bring your own roots with `connect_with_tls`.
///
/// # Errors
///
/// [`Error::Handshake`] for a bad URL or a refused upgrade, `Error::Tls`
/// for a refused certificate (`tls::TlsError`:
/// `CertificateNotValidForName`, `UnknownIssuer`, ...) and other TLS
/// failures, [`Error::Io`] if the connection fails.
pub async fn connect(url: &str) -> Result<(WebSocketStream<MaybeTlsStream>, Response), Error> {
    let request = ClientRequest::from_url(url)?;
    #[cfg(feature = "tokio-rustls")]
    let stream = stream::dial(&request, None).await?;
    #[cfg(not(feature = "tokio-rustls"))]
    let stream = stream::dial(&request).await?;
    client(stream, &request, Config::default()).await
}

/// As [`connect`], with `config` and, for a `wss://` URL, the TLS client
/// config `tls` (your own roots or CA, client certificates: see
/// [`tls::client_config_with_ca`](crate::tls::client_config_with_ca)).
/// A `ws://` URL ignores `tls`.
///
/// ```no_run
/// # async fn f() -> Result<(), wsproto::Error> {
/// let tls = wsproto::tls::client_config_with_ca("ca.pem")?;
/// let (mut ws, _) =
///     wsproto::tokio::connect_with_tls("wss://localhost:9443/", wsproto::Config::default(), tls)
///         .await?;
/// ws.send("hello").await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// As [`connect`].
#[cfg(feature = "tokio-rustls")]
pub async fn connect_with_tls(
    url: &str,
    config: Config,
    tls: Arc<rustls::ClientConfig>,
) -> Result<(WebSocketStream<MaybeTlsStream>, Response), Error> {
    let request = ClientRequest::from_url(url)?;
    let stream = stream::dial(&request, Some(tls)).await?;
    client(stream, &request, config).await
}

/// The TLS handshake on an accepted socket (bounded by
/// [`tls::DEFAULT_HANDSHAKE_TIMEOUT`](crate::tls::DEFAULT_HANDSHAKE_TIMEOUT)),
/// then [`accept_with`]. Build `tls` with
/// [`tls::server_config_from_pem`](crate::tls::server_config_from_pem).
/// Not cancellation-safe, as [`accept`].
///
/// # Errors
///
/// `Error::Tls` if the TLS handshake fails (a peer that is not speaking
/// TLS, a timeout, an alert), otherwise as [`accept`].
#[cfg(feature = "tokio-rustls")]
pub async fn accept_tls(
    tcp: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    config: Config,
    protocols: &[&str],
) -> Result<
    (
        WebSocketStream<tokio_rustls::server::TlsStream<TcpStream>>,
        Request,
    ),
    Error,
> {
    let stream = stream::tls::accept(tcp, tls).await?;
    accept_with(stream, config, protocols).await
}

/// Performs the client handshake for `request` on an established stream
/// (a `TcpStream`, or a TLS stream for `wss://`), offering
/// permessage-deflate if [`Config::deflate`] asks.
///
/// # Errors
///
/// As [`connect`].
pub async fn client<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &ClientRequest,
    config: Config,
) -> Result<(WebSocketStream<S>, Response), Error> {
    let request = upgrade::client_request(request, &config);
    stream.write_all(&request.to_bytes()).await?;
    stream.flush().await?;
    let mut head = Head::new(&config);
    loop {
        if !read_head(&mut stream, &mut head).await? {
            continue;
        }
        if let Some((conn, response)) = upgrade::client_step(&request, &head, &config)? {
            return Ok((WebSocketStream::with_connection(stream, conn), response));
        }
    }
}

/// Wraps a stream whose handshake is already done (by hyper, axum or your
/// own router); `leftover` holds bytes read past the handshake. Same as
/// [`WebSocketStream::from_raw`].
pub fn from_raw<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    role: Role,
    config: Config,
    leftover: &[u8],
) -> WebSocketStream<S> {
    WebSocketStream::from_raw(stream, role, config, leftover)
}

/// Keepalive and timeout settings of the read side, and their one timer.
#[derive(Debug, Default)]
struct Timers {
    /// Ping after this much silence from the peer…
    ping_interval: Option<Duration>,
    /// …and fail if still nothing after this much more.
    pong_deadline: Duration,
    /// After our Close, how long the peer has to answer (RFC 6455 §7.1.1);
    /// `None`: the pong deadline if keepalive is on, else forever.
    close_timeout: Option<Duration>,
    /// Fail after this much silence.
    idle_timeout: Option<Duration>,
    last_heard: Option<Instant>,
    ping_sent: Option<Instant>,
    close_sent: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
}

/// What a timer that fired means.
#[derive(Debug, Clone, Copy)]
enum Due {
    Ping,
    PongMissed,
    CloseMissed(Duration),
    Idle,
}

impl Timers {
    fn is_active(&self) -> bool {
        self.ping_interval.is_some() || self.idle_timeout.is_some() || self.close_timeout.is_some()
    }

    /// Bytes arrived.
    fn heard(&mut self) {
        if self.is_active() {
            self.last_heard = Some(Instant::now());
            self.ping_sent = None;
        }
    }

    /// The earliest deadline and what it means.
    fn next_due(&mut self) -> Option<(Instant, Due)> {
        let last = *self.last_heard.get_or_insert_with(Instant::now);
        let mut due: Option<(Instant, Due)> = None;
        let mut consider = |at: Instant, what: Due| {
            if due.map_or(true, |(d, _)| at < d) {
                due = Some((at, what));
            }
        };
        if let Some(t) = self.idle_timeout {
            consider(last + t, Due::Idle);
        }
        let close_wait = self
            .close_timeout
            .or(self.ping_interval.map(|_| self.pong_deadline));
        match (self.close_sent, self.ping_sent, self.ping_interval) {
            // RFC 6455 §7.1.1: after our Close, no pings; the peer's Close
            // is what we wait for.
            (Some(sent), _, _) => {
                if let Some(w) = close_wait {
                    consider(sent + w, Due::CloseMissed(w));
                }
            }
            (None, Some(sent), Some(_)) => consider(sent + self.pong_deadline, Due::PongMissed),
            (None, None, Some(interval)) => consider(last + interval, Due::Ping),
            (None, _, None) => {}
        }
        due
    }

    /// Ready with what fired, or Pending with the timer armed.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Due> {
        if !self.is_active() {
            return Poll::Pending;
        }
        let Some((at, due)) = self.next_due() else {
            return Poll::Pending;
        };
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(::tokio::time::sleep_until(at)));
        // Every read moves the deadline later; the timer is only moved
        // earlier, so a busy connection does not re-arm it per read. One
        // armed too early fires, finds nothing due, and is re-armed.
        if sleep.deadline() > at {
            sleep.as_mut().reset(at);
        }
        loop {
            ready!(sleep.as_mut().poll(cx));
            if Instant::now() >= at {
                return Poll::Ready(due);
            }
            sleep.as_mut().reset(at);
        }
    }
}

/// How the read loop gets the replies the connection queued (Pongs, Close
/// echoes, the Close for a violation, keepalive Pings) onto the wire: a
/// whole stream writes them itself, a split reader hands them over.
trait Duty<R> {
    /// Writes (or hands over) what `conn` has queued, without waiting.
    fn flush(&mut self, cx: &mut Context<'_>, conn: &mut Connection, io: &mut R) -> io::Result<()>;
    /// Queues a keepalive Ping; false if our Close went out already.
    fn ping(&mut self, cx: &mut Context<'_>, conn: &mut Connection, io: &mut R) -> bool;
    /// Queues close 1011 for a missed pong.
    fn give_up(&mut self, cx: &mut Context<'_>, conn: &mut Connection, io: &mut R);
    /// When our Close went out, if it did.
    fn close_sent(&self) -> Option<Instant>;
}

/// A `std::io::Read` view of an `AsyncRead` for one poll, so
/// [`Connection::receive_from`] reads straight into its buffer.
struct PollRead<'a, 'b, R> {
    io: &'a mut R,
    cx: &'a mut Context<'b>,
    pending: bool,
}

impl<R: AsyncRead + Unpin> Read for PollRead<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut rb) {
            Poll::Ready(Ok(())) => Ok(rb.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => {
                self.pending = true;
                Err(io::ErrorKind::WouldBlock.into())
            }
        }
    }
}

/// The least a read asks for: the scratch buffer is per thread, not per
/// connection, so a large one costs no memory per connection, and a batch
/// of large messages takes fewer system calls (10 connections echoing
/// 8 x 16 KiB: 16 KiB reads split every frame across two reads).
const SCRATCH_MIN: usize = 256 << 10;

thread_local! {
    /// The buffer every connection on this thread reads into before
    /// handing the bytes to its [`Connection`]: zeroed once, rather than
    /// `read_size` bytes zeroed per read in the connection's own buffer,
    /// and no read buffer kept per idle connection.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// One read from `io` into the connection.
fn poll_receive<R: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    conn: &mut Connection,
    io: &mut R,
) -> Poll<io::Result<usize>> {
    let max = conn.config().read_size.max(SCRATCH_MIN);
    SCRATCH.with(|scratch| {
        let Ok(mut buf) = scratch.try_borrow_mut() else {
            // A stream read from inside another one's read (a WebSocket
            // tunnelled in a WebSocket): read into the connection.
            return poll_receive_from(cx, conn, io, max);
        };
        if buf.len() < max {
            buf.resize(max, 0);
        }
        let mut rb = ReadBuf::new(&mut buf[..max]);
        ready!(Pin::new(io).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        if n == 0 {
            conn.receive_eof();
        } else {
            conn.receive(rb.filled());
        }
        Poll::Ready(Ok(n))
    })
}

/// One read from `io` straight into the connection's buffer.
fn poll_receive_from<R: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    conn: &mut Connection,
    io: &mut R,
    max: usize,
) -> Poll<io::Result<usize>> {
    let mut reader = PollRead {
        io,
        cx,
        pending: false,
    };
    match conn.receive_from(&mut reader, max) {
        Err(_) if reader.pending => Poll::Pending,
        other => Poll::Ready(other),
    }
}

/// The read loop shared by [`WebSocketStream`] and [`ReadHalf`]: the next
/// event, reading when the connection needs bytes, with the replies the
/// connection queued written or handed over by `duty`, and the timers run.
fn poll_event<R: AsyncRead + Unpin, D: Duty<R>>(
    cx: &mut Context<'_>,
    conn: &mut Connection,
    io: &mut R,
    timers: &mut Timers,
    duty: &mut D,
) -> Poll<Result<Event, Error>> {
    loop {
        match conn.next_event() {
            Ok(Some(event)) => {
                // Only control frames queue replies; data goes out with the
                // next batch.
                match &event {
                    Event::Ping(_) => duty.flush(cx, conn, io)?,
                    // The peer's Close is news even if our echo cannot be
                    // written (the peer may have shut down already).
                    Event::Close(_) => {
                        let _ = duty.flush(cx, conn, io);
                    }
                    _ => {}
                }
                return Poll::Ready(Ok(event));
            }
            Ok(None) if conn.is_closed() => {
                let _ = duty.flush(cx, conn, io);
                return Poll::Ready(Err(Error::Closed));
            }
            Ok(None) => {}
            Err(e) => {
                // The Close for the violation is queued; send it, best effort.
                let _ = duty.flush(cx, conn, io);
                return Poll::Ready(Err(e.into()));
            }
        }
        // Out of input: read more if the transport has it; write what is
        // queued only when it has none, so the echoes of all the input
        // at hand go out in one write (10 connections echoing 8 x 16 KiB:
        // 3.2 messages per write when writing before every read, ~8 so).
        match poll_receive(cx, conn, io) {
            Poll::Ready(Ok(_)) => {
                timers.heard();
                continue;
            }
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Poll::Ready(Err(e)) => {
                let _ = duty.flush(cx, conn, io);
                return Poll::Ready(Err(e.into()));
            }
            Poll::Pending => duty.flush(cx, conn, io)?,
        }
        if timers.close_sent.is_none() {
            timers.close_sent = duty.close_sent();
        }
        match ready!(timers.poll(cx)) {
            Due::Ping => {
                let now = Instant::now();
                if duty.ping(cx, conn, io) {
                    timers.ping_sent = Some(now);
                } else if timers.close_sent.is_none() {
                    timers.close_sent = Some(duty.close_sent().unwrap_or(now));
                }
            }
            Due::PongMissed => {
                duty.give_up(cx, conn, io);
                return Poll::Ready(Err(Error::PongTimeout(timers.pong_deadline)));
            }
            Due::CloseMissed(wait) => return Poll::Ready(Err(close_timeout(wait))),
            Due::Idle => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no bytes from the peer within the idle timeout",
                )
                .into()))
            }
        }
    }
}

/// The error for a peer that did not answer our Close in time.
fn close_timeout(wait: Duration) -> Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the peer did not answer our Close within {wait:?} (RFC 6455 §7.1.1)"),
    )
    .into()
}

/// Writes all of `conn`'s pending output to `io`, then flushes `io`.
fn poll_write_out<W: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    conn: &mut Connection,
    io: &mut W,
) -> Poll<io::Result<()>> {
    while !conn.pending_output().is_empty() {
        match ready!(Pin::new(&mut *io).poll_write(cx, conn.pending_output())) {
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => conn.consume_output(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    Pin::new(io).poll_flush(cx)
}

/// Large payloads a server queued by reference (zero-copy): each goes
/// out as its own `IoSlice` after the connection's output bytes that
/// precede it (its header among them), so the connection's buffer holds
/// headers and small frames only.
#[derive(Debug, Default)]
struct Parked {
    /// (output bytes queued before it and after the previous one, payload)
    items: VecDeque<(usize, Bytes)>,
    /// Sum of the items' first fields.
    before: usize,
    /// Sum of the payloads' lengths.
    len: usize,
}

impl Parked {
    /// Queues `message` on `conn`, its payload parked here if it goes
    /// zero-copy ([`vectored::header`]).
    fn queue(
        &mut self,
        conn: &mut Connection,
        writes_vectored: bool,
        message: Message,
    ) -> Result<(), Error> {
        let (opcode, payload) = match &message {
            Message::Text(t) => (Opcode::Text, t.as_bytes().clone()),
            Message::Binary(b) => (Opcode::Binary, b.clone()),
        };
        let Some(head) = vectored::header(conn, writes_vectored, opcode, payload.len()) else {
            return queue(conn, message);
        };
        let (head, n) = head?;
        conn.queue_framed(&head[..n]);
        let before = conn.pending_output().len() - self.before;
        self.before += before;
        self.len += payload.len();
        self.items.push_back((before, payload));
        Ok(())
    }

    /// Bytes queued in all: the connection's output and the payloads.
    fn queued(&self, conn: &Connection) -> usize {
        conn.pending_output().len() + self.len
    }

    /// Everything queued as one buffer on `conn` (for a writer that does
    /// not know about parked payloads: the split halves).
    fn unpark_into(&mut self, conn: &Connection, into: &mut Connection) {
        let mut out = conn.pending_output();
        for (before, payload) in self.items.drain(..) {
            into.queue_framed(&out[..before]);
            into.queue_framed(&payload);
            out = &out[before..];
        }
        into.queue_framed(out);
        self.before = 0;
        self.len = 0;
    }

    /// `n` bytes were written: drop them from the front.
    fn consume(&mut self, conn: &mut Connection, mut n: usize) {
        while let Some((before, payload)) = self.items.front_mut() {
            let c = n.min(*before);
            conn.consume_output(c);
            *before -= c;
            self.before -= c;
            n -= c;
            if *before > 0 {
                return;
            }
            let c = n.min(payload.len());
            payload.advance(c);
            self.len -= c;
            n -= c;
            if !payload.is_empty() {
                return;
            }
            self.items.pop_front();
        }
        conn.consume_output(n);
    }

    /// Writes all of `conn`'s output and the parked payloads in order,
    /// then flushes `io`.
    fn poll_write_out<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Connection,
        io: &mut W,
    ) -> Poll<io::Result<()>> {
        while !self.items.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut k = 0;
            let mut out = conn.pending_output();
            let mut all = true;
            for (before, payload) in self.items.iter() {
                if k + 2 > MAX_SLICES {
                    all = false;
                    break;
                }
                if *before > 0 {
                    slices[k] = IoSlice::new(&out[..*before]);
                    k += 1;
                    out = &out[*before..];
                }
                slices[k] = IoSlice::new(payload);
                k += 1;
            }
            if all && k < MAX_SLICES && !out.is_empty() {
                slices[k] = IoSlice::new(out);
                k += 1;
            }
            match ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..k])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.consume(conn, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        poll_write_out(cx, conn, io)
    }
}

/// At most this many `IoSlice`s per write (Linux's IOV_MAX is 1024; a
/// batch rarely holds more than a few large payloads).
const MAX_SLICES: usize = 64;

/// A waker that does nothing: for the best-effort write of a Close when a
/// stream is dropped (there is no task to wake).
struct NoWake;

impl Wake for NoWake {
    fn wake(self: Arc<Self>) {}
}

fn noop_waker() -> Waker {
    Waker::from(Arc::new(NoWake))
}

/// A whole stream's duties: it owns the transport, so it writes at once
/// (after the payloads parked before the replies).
struct Own<'a> {
    close_sent: Option<Instant>,
    parked: &'a mut Parked,
}

impl<S: AsyncWrite + Unpin> Duty<S> for Own<'_> {
    fn flush(&mut self, cx: &mut Context<'_>, conn: &mut Connection, io: &mut S) -> io::Result<()> {
        if self.parked.queued(conn) == 0 {
            return Ok(());
        }
        match self.parked.poll_write_out(cx, conn, io) {
            Poll::Ready(r) => r,
            // The write half's waker is registered; what is left goes out
            // when the peer reads.
            Poll::Pending => Ok(()),
        }
    }

    fn ping(&mut self, cx: &mut Context<'_>, conn: &mut Connection, io: &mut S) -> bool {
        if conn.state() != State::Open {
            return false;
        }
        // Best effort: past max_output_buffer no ping goes out, and the
        // pong deadline still runs.
        let _ = conn.ping(b"");
        let _ = self.flush(cx, conn, io);
        true
    }

    fn give_up(&mut self, cx: &mut Context<'_>, conn: &mut Connection, io: &mut S) {
        let _ = conn.close(CloseCode::INTERNAL_ERROR, "keepalive timeout");
        let _ = self.flush(cx, conn, io);
    }

    fn close_sent(&self) -> Option<Instant> {
        self.close_sent
    }
}

/// A WebSocket over an async stream: a [`Stream`](futures_core::Stream)
/// of received messages and a [`Sink`](futures_sink::Sink) of messages to
/// send. See the [module docs](self) for flushing, backpressure and
/// cancellation.
///
/// Dropping it drops the transport as it is: call
/// [`close`](Self::close) (and read until the end) for a clean close, or
/// the peer sees the connection end without a Close (1006).
/// (The halves of [`split`](Self::split) send a Close when dropped.)
#[derive(Debug)]
pub struct WebSocketStream<S> {
    io: S,
    conn: Connection,
    timers: Timers,
    /// The peer's Close, once it came.
    close_frame: Option<CloseFrame>,
    /// Large payloads queued zero-copy, written vectored.
    parked: Parked,
    /// `io` writes several buffers in one call.
    writes_vectored: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocketStream<S> {
    /// Wraps a stream whose handshake is already done (e.g. hyper's
    /// upgraded connection). `leftover` holds bytes read past the
    /// handshake.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), wsproto::Error> {
    /// use wsproto::{tokio::WebSocketStream, Config, Message, Role};
    /// let (a, mut b) = tokio::io::duplex(64);
    /// let mut ws = WebSocketStream::from_raw(a, Role::Client, Config::default(), &[]);
    /// tokio::io::AsyncWriteExt::write_all(&mut b, b"\x81\x02hi").await?; // a server's "hi"
    /// assert_eq!(ws.next().await.transpose()?, Some(Message::from("hi")));
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_raw(stream: S, role: Role, config: Config, leftover: &[u8]) -> Self {
        let mut conn = Connection::new(role, config);
        conn.receive(leftover);
        Self::with_connection(stream, conn)
    }

    /// Runs `conn` (fresh from a handshake) over `stream`.
    fn with_connection(io: S, conn: Connection) -> Self {
        Self {
            writes_vectored: io.is_write_vectored(),
            io,
            conn,
            timers: Timers::default(),
            close_frame: None,
            parked: Parked::default(),
        }
    }

    /// Polls for the next event (every kind, as [`read`](Self::read)).
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read).
    pub fn poll_read_event(&mut self, cx: &mut Context<'_>) -> Poll<Result<Event, Error>> {
        let mut duty = Own {
            close_sent: self.timers.close_sent,
            parked: &mut self.parked,
        };
        let event = ready!(poll_event(
            cx,
            &mut self.conn,
            &mut self.io,
            &mut self.timers,
            &mut duty
        ));
        if let Ok(Event::Close(f)) = &event {
            self.close_frame = Some(f.clone());
        }
        Poll::Ready(event)
    }

    /// The next event: a message, a Ping (its Pong is already on its
    /// way), a Pong, or the Close (already answered), after which it
    /// returns [`Error::Closed`]. Cancellation-safe.
    ///
    /// # Errors
    ///
    /// [`Error::Protocol`] if the peer violated the protocol (the Close
    /// has been sent), [`Error::Closed`] after the close event,
    /// [`Error::PongTimeout`] on a missed keepalive, [`Error::Io`]
    /// otherwise (`TimedOut` for the idle and close timeouts).
    pub async fn read(&mut self) -> Result<Event, Error> {
        poll_fn(|cx| self.poll_read_event(cx)).await
    }

    /// The next message; `None` once the connection is closed (the
    /// peer's Close is then in [`close_frame`](Self::close_frame)). Pings
    /// and Pongs are handled here and not returned. Cancellation-safe.
    /// The same as `StreamExt::next`.
    pub async fn next(&mut self) -> Option<Result<Message, Error>> {
        poll_fn(|cx| poll_message(cx, |cx| self.poll_read_event(cx))).await
    }

    /// Queues `message` and writes everything queued.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once a Close was sent or received, [`Error::Io`].
    pub async fn send(&mut self, message: impl Into<Message>) -> Result<(), Error> {
        let message = message.into();
        let mut message = Some(message);
        poll_fn(|cx| {
            if let Some(m) = message.take() {
                if self.poll_ready_inner(cx)?.is_pending() {
                    message = Some(m);
                    return Poll::Pending;
                }
                self.queue(m)?;
            }
            self.poll_flush_inner(cx)
        })
        .await
    }

    /// Queues `message` without writing it, once fewer than
    /// [`Config::write_high_water`] bytes are queued (waiting for the peer
    /// to read otherwise). See the [module docs](self#flushing-and-backpressure).
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub async fn feed(&mut self, message: impl Into<Message>) -> Result<(), Error> {
        poll_fn(|cx| self.poll_ready_inner(cx)).await?;
        self.queue(message.into())
    }

    /// Writes everything queued. Cancellation-safe.
    ///
    /// # Errors
    ///
    /// [`Error::Io`].
    pub async fn flush(&mut self) -> Result<(), Error> {
        poll_fn(|cx| self.poll_flush_inner(cx)).await
    }

    /// Queues `message`: a large payload by reference, written vectored
    /// after its header (no copy into the output buffer).
    fn queue(&mut self, message: Message) -> Result<(), Error> {
        self.parked
            .queue(&mut self.conn, self.writes_vectored, message)
    }

    /// Sends a Ping.
    ///
    /// # Errors
    ///
    /// As [`Connection::ping`], and [`Error::Io`].
    pub async fn ping(&mut self, payload: &[u8]) -> Result<(), Error> {
        self.conn.ping(payload)?;
        self.flush().await
    }

    /// Starts the closing handshake: sends a Close with `code` and
    /// `reason`. Keep reading until the stream ends (the peer's answer),
    /// within the [close timeout](Self::set_close_timeout).
    ///
    /// # Errors
    ///
    /// As [`Connection::close`], and [`Error::Io`].
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), Error> {
        self.start_close(code, reason)?;
        self.flush().await
    }

    fn start_close(&mut self, code: CloseCode, reason: &str) -> Result<(), Error> {
        let was_open = self.conn.state() == State::Open;
        self.conn.close(code, reason)?;
        if was_open {
            self.timers.close_sent = Some(Instant::now());
        }
        Ok(())
    }

    fn poll_ready_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.parked.queued(&self.conn) >= self.conn.config().write_high_water {
            ready!(self.parked.poll_write_out(cx, &mut self.conn, &mut self.io))?;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_flush_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(ready!(self.parked.poll_write_out(
            cx,
            &mut self.conn,
            &mut self.io
        ))?))
    }

    /// Pings after `interval` without hearing from the peer, and fails the
    /// read with [`Error::PongTimeout`] (after sending close 1011) if
    /// nothing arrives within `deadline` of the ping. After our Close no
    /// more pings go out, and the peer has `deadline` to answer it (unless
    /// a [close timeout](Self::set_close_timeout) is set).
    ///
    /// The timers run while a read (`next`, `read`, the `Stream`) is
    /// waiting: keep one pending, as any receive loop does.
    pub fn set_keepalive(&mut self, interval: Duration, deadline: Duration) {
        self.timers.ping_interval = Some(interval);
        self.timers.pong_deadline = deadline;
        self.timers.last_heard = None;
    }

    /// Bounds the wait for the peer's Close after ours (RFC 6455 §7.1.1):
    /// the read fails with an [`Error::Io`] of kind `TimedOut` past it.
    pub fn set_close_timeout(&mut self, timeout: Option<Duration>) {
        self.timers.close_timeout = timeout;
    }

    /// Fails the read with an `io::ErrorKind::TimedOut` error after
    /// `timeout` without any bytes from the peer (`None`: wait forever).
    pub fn set_idle_timeout(&mut self, timeout: Option<Duration>) {
        self.timers.idle_timeout = timeout;
        self.timers.last_heard = None;
    }

    /// The peer's Close frame, once the stream has ended with it.
    pub fn close_frame(&self) -> Option<&CloseFrame> {
        self.close_frame.as_ref()
    }

    /// The state machine underneath. Large payloads queued by reference
    /// are not in its [`pending_output`](Connection::pending_output): see
    /// [`queued`](Self::queued).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Bytes queued and not yet written: the connection's output and the
    /// large payloads a server queues by reference (written vectored,
    /// never copied). What [`feed`](Self::feed) holds under
    /// [`Config::write_high_water`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), wsproto::Error> {
    /// use wsproto::{tokio::WebSocketStream, Config, Message, Role};
    /// let (a, _b) = tokio::io::duplex(64);
    /// let mut ws = WebSocketStream::from_raw(a, Role::Server, Config::default(), &[]);
    /// ws.feed(Message::Binary(vec![0; 4096].into())).await?;
    /// assert_eq!(ws.queued(), 4 + 4096); // header + payload
    /// # Ok(())
    /// # }
    /// ```
    pub fn queued(&self) -> usize {
        self.parked.queued(&self.conn)
    }

    /// The stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The stream, mutably (writing to it directly corrupts the framing).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }
}

/// A message from the next event, skipping Pings and Pongs; `None` at the
/// end.
fn poll_message(
    cx: &mut Context<'_>,
    mut poll: impl FnMut(&mut Context<'_>) -> Poll<Result<Event, Error>>,
) -> Poll<Option<Result<Message, Error>>> {
    loop {
        return Poll::Ready(match ready!(poll(cx)) {
            Ok(Event::Text(t)) => Some(Ok(Message::Text(t))),
            Ok(Event::Binary(b)) => Some(Ok(Message::Binary(b))),
            Ok(Event::Close(_)) | Err(Error::Closed) => None,
            Ok(_) => continue,
            Err(e) => Some(Err(e)),
        });
    }
}

/// Queues `message` on `conn`.
fn queue(conn: &mut Connection, message: Message) -> Result<(), Error> {
    match message {
        Message::Text(t) => conn.send_text(&t),
        Message::Binary(b) => conn.send_binary(&b),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> futures_core::Stream for WebSocketStream<S> {
    type Item = Result<Message, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        poll_message(cx, |cx| this.poll_read_event(cx))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> futures_sink::Sink<Message> for WebSocketStream<S> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_ready_inner(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Error> {
        self.get_mut().queue(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_flush_inner(cx)
    }

    /// Sends a Close (1000) if none went out yet, and flushes. The
    /// transport stays open: keep reading for the peer's answer.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        this.start_close(CloseCode::NORMAL, "")?;
        this.poll_flush_inner(cx)
    }
}
