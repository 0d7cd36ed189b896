//! [`WebSocketStream::split`]: a [`ReadHalf`] and a [`WriteHalf`] for two
//! tasks.
//!
//! The reader owns the read side of the transport and the [`Connection`]
//! that receives; the writer's transport half and the connection that
//! sends (with the compressor, if deflate is on) sit behind a mutex that
//! each writer call takes for one poll and that nobody ever waits on
//! across an `.await`. Messages never touch anything else: no channel, no
//! task. The replies the reader owes the peer (a Pong, the Close echo, a
//! keepalive Ping, the Close for a violation) go into a small slot
//! (`Owed`: the latest Pong only, RFC 6455 §5.5.3) and are written by
//! whichever half gets to the transport first: the writer before its next
//! message, or the reader itself when the writer is idle, so they reach
//! the wire even if the application never sends.
//!
//! Both halves write with one waker that wakes both of them, so a write
//! readiness that one half registered is never lost to the other.

use super::{noop_waker, poll_event, poll_message, Duty, Parked, Timers, WebSocketStream};
use crate::close::{CloseCode, CloseFrame};
use crate::connection::{Connection, Event, State};
use crate::error::Error;
use crate::frame::Role;
use crate::message::Message;
use crate::owed::Replies;
use ::tokio::io::{AsyncRead, AsyncWrite};
use ::tokio::time::Instant;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::task::{ready, Context, Poll, Wake, Waker};
use std::time::Duration;

/// A transport that comes apart into a read half and a write half that
/// two tasks can use at once, for [`WebSocketStream::split`].
///
/// `TcpStream` and `UnixStream` split without a lock
/// (`into_split`). A stream that cannot (a TLS stream: both directions
/// share its state) can be split by tokio behind its own lock and joined
/// again:
///
/// ```no_run
/// # async fn f(tls: tokio::io::DuplexStream) -> Result<(), wsproto::Error> {
/// // `tls`: any AsyncRead + AsyncWrite + Unpin, e.g. a tokio-rustls stream.
/// let (r, w) = tokio::io::split(tls);
/// let ws = wsproto::tokio::accept(tokio::io::join(r, w)).await?;
/// let (reader, writer) = ws.split();
/// # Ok(()) }
/// ```
pub trait Halves: AsyncRead + AsyncWrite + Unpin + Sized {
    /// The read half.
    type Read: AsyncRead + Unpin;
    /// The write half.
    type Write: AsyncWrite + Unpin;
    /// Takes the stream apart.
    fn into_halves(self) -> (Self::Read, Self::Write);
}

impl Halves for ::tokio::net::TcpStream {
    type Read = ::tokio::net::tcp::OwnedReadHalf;
    type Write = ::tokio::net::tcp::OwnedWriteHalf;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

#[cfg(unix)]
impl Halves for ::tokio::net::UnixStream {
    type Read = ::tokio::net::unix::OwnedReadHalf;
    type Write = ::tokio::net::unix::OwnedWriteHalf;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

/// A server's TLS stream from [`accept_tls`](super::accept_tls): its
/// halves share the TLS state behind tokio's lock.
#[cfg(feature = "tokio-rustls")]
impl Halves for tokio_rustls::server::TlsStream<::tokio::net::TcpStream> {
    type Read = ::tokio::io::ReadHalf<Self>;
    type Write = ::tokio::io::WriteHalf<Self>;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        ::tokio::io::split(self)
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Halves for ::tokio::io::Join<R, W> {
    type Read = R;
    type Write = W;
    fn into_halves(self) -> (R, W) {
        self.into_inner()
    }
}

impl<S: Halves> WebSocketStream<S> {
    /// Splits into a [`ReadHalf`] and a [`WriteHalf`] for two tasks.
    /// Keepalive settings and anything queued carry over.
    ///
    /// Dropping a half closes cleanly: a Close (1000) goes out if none
    /// did, and from then on the writer refuses to send
    /// ([`Error::Closed`]); the transport closes when both are gone.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use tokio::net::TcpListener;
    /// use wsproto::{tokio as ws, Message};
    /// let listener = TcpListener::bind("127.0.0.1:0").await?;
    /// let addr = listener.local_addr()?;
    /// tokio::spawn(async move {
    ///     let (stream, _) = listener.accept().await?;
    ///     let mut ws = ws::accept(stream).await?;
    ///     while let Some(msg) = ws.next().await {
    ///         ws.send(msg?).await?;
    ///     }
    ///     Ok::<_, wsproto::Error>(())
    /// });
    /// let (ws, _) = ws::connect(&format!("ws://{addr}/")).await?;
    /// let (mut reader, mut writer) = ws.split();
    /// let sender = tokio::spawn(async move {
    ///     for i in 0..3 {
    ///         writer.send(format!("{i}")).await?;
    ///     }
    ///     Ok::<_, wsproto::Error>(writer)
    /// });
    /// for i in 0..3 {
    ///     assert_eq!(reader.next().await.transpose()?, Some(Message::from(format!("{i}"))));
    /// }
    /// sender.await??;
    /// # Ok(())
    /// # }
    /// ```
    pub fn split(self) -> (ReadHalf<S>, WriteHalf<S>) {
        let WebSocketStream {
            io,
            mut conn,
            timers,
            close_frame,
            mut parked,
            writes_vectored: _,
        } = self;
        let (read_io, write_io) = io.into_halves();
        // deflate hook: the writer takes the compressor.
        let mut sender = conn.split_sender();
        if conn.state() != State::Open {
            // Our Close (or the peer's) is past: the writer may not send.
            let _ = sender.close(CloseCode::NORMAL, "");
            sender.consume_output(sender.pending_output().len());
        }
        // Anything queued and not yet written goes out first.
        let queued = parked.queued(&conn);
        if queued > 0 {
            parked.unpark_into(&conn, &mut sender);
            conn.consume_output(conn.pending_output().len());
        }
        let wakers = Arc::new(Wakers::default());
        let shared = Arc::new(Shared {
            side: Mutex::new(Side {
                writes_vectored: write_io.is_write_vectored(),
                io: write_io,
                conn: sender,
                duty: queued > 0,
                parked: Parked::default(),
            }),
            owed: Mutex::new(Owed {
                close_sent: timers.close_sent,
                ..Owed::default()
            }),
            owes: AtomicBool::new(queued > 0),
            closing: AtomicBool::new(timers.close_sent.is_some()),
            waker: Waker::from(Arc::clone(&wakers)),
            wakers,
        });
        let receiver = match conn.role() {
            Role::Client => Role::Server,
            Role::Server => Role::Client,
        };
        (
            ReadHalf {
                io: read_io,
                conn,
                timers,
                close_frame,
                receiver,
                shared: Arc::clone(&shared),
            },
            WriteHalf { shared },
        )
    }
}

/// What the halves share.
struct Shared<W> {
    /// The write side. Held for one poll at a time, never across an await.
    side: Mutex<Side<W>>,
    /// Replies the reader owes, not yet encoded (locked briefly).
    owed: Mutex<Owed>,
    /// `owed` holds something or `side` holds unwritten replies: the one
    /// thing the message path checks.
    owes: AtomicBool,
    /// Our Close went out (its instant is in `owed`).
    closing: AtomicBool,
    wakers: Arc<Wakers>,
    /// Wakes both halves: every write to the transport registers it.
    waker: Waker,
}

struct Side<W> {
    io: W,
    /// Encodes everything sent; its state records our Close.
    conn: Connection,
    /// The queued output holds replies: write it all out at the next
    /// chance rather than only down to the high-water mark.
    duty: bool,
    /// Large payloads queued zero-copy (as in [`WebSocketStream`]).
    parked: Parked,
    writes_vectored: bool,
}

impl<W> Side<W> {
    /// Nothing left to write.
    fn drained(&self) -> bool {
        self.parked.queued(&self.conn) == 0
    }
}

/// Replies the reader owes the peer.
#[derive(Debug, Default)]
struct Owed {
    replies: Replies,
    /// When our Close went out.
    close_sent: Option<Instant>,
}

#[derive(Default)]
struct Wakers {
    reader: Mutex<Option<Waker>>,
    writer: Mutex<Option<Waker>>,
}

#[derive(Clone, Copy)]
enum Who {
    Reader,
    Writer,
}

impl Wakers {
    fn slot(&self, who: Who) -> &Mutex<Option<Waker>> {
        match who {
            Who::Reader => &self.reader,
            Who::Writer => &self.writer,
        }
    }

    fn register(&self, who: Who, waker: &Waker) {
        let mut slot = lock(self.slot(who));
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }

    fn wake_one(&self, who: Who) {
        let waker = lock(self.slot(who)).take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Wake for Wakers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_one(Who::Reader);
        self.wake_one(Who::Writer);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves bytes half-written at worst;
    // the stream is still usable for an error close, so ignore poisoning.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

impl<W: AsyncWrite + Unpin> Shared<W> {
    /// Encodes what is owed into the write side, in order: Pong, Ping,
    /// Close. Nothing goes out after our Close (RFC 6455 §5.5.1).
    fn encode_owed(&self, side: &mut Side<W>) {
        let replies = lock(&self.owed).replies.take();
        replies.encode(&mut side.conn);
        if !side.conn.pending_output().is_empty() {
            side.duty = true;
        }
    }

    /// Writes all of `side`'s output, with the waker that wakes both
    /// halves, `task` registered as `who`. Owed replies are encoded once
    /// the output has drained, so while the peer is not reading they wait
    /// in the slot (the latest Pong only), not in the output.
    fn poll_write_side(
        &self,
        side: &mut Side<W>,
        task: &Waker,
        who: Who,
        registered: bool,
    ) -> Poll<io::Result<()>> {
        let mut cx = Context::from_waker(&self.waker);
        let mut registered = registered;
        loop {
            if side.drained() && self.owes.load(Ordering::Acquire) {
                self.encode_owed(side);
            }
            match side
                .parked
                .poll_write_out(&mut cx, &mut side.conn, &mut side.io)
            {
                Poll::Ready(Ok(())) => {
                    side.duty = false;
                    if self.owes.load(Ordering::Acquire) {
                        let owed = lock(&self.owed);
                        if owed.replies.any() {
                            // Left while we wrote: encode and write it too.
                            continue;
                        }
                        self.owes.store(false, Ordering::Release);
                    }
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if registered => return Poll::Pending,
                Poll::Pending => {
                    // Register, then poll again: a wake between the two
                    // polls must not be lost.
                    self.wakers.register(who, task);
                    registered = true;
                }
            }
        }
    }

    /// True if the writer must write everything out before queueing more:
    /// replies are queued or owed.
    fn must_drain(&self, side: &Side<W>) -> bool {
        side.duty || self.owes.load(Ordering::Acquire)
    }

    /// The writer's way in: runs `f` on the write side, after encoding
    /// anything owed if nothing else waits to be written; afterwards,
    /// wakes the reader if replies are left for it to write.
    fn with_side<R>(&self, f: impl FnOnce(&Self, &mut Side<W>) -> R) -> R {
        let mut side = lock(&self.side);
        if self.owes.load(Ordering::Acquire) && side.drained() {
            self.encode_owed(&mut side);
        }
        let result = f(self, &mut side);
        drop(side);
        if self.owes.load(Ordering::Acquire) {
            // The reader may have left a reply while we held the side, or
            // ours are not all written: it delivers them.
            self.wakers.wake_one(Who::Reader);
        }
        result
    }

    /// The reader's way in: never waits for the writer. If the writer
    /// holds the side it writes the replies (and wakes us if it leaves
    /// some); otherwise they are written now, as far as the transport
    /// takes them.
    fn try_deliver(&self, task: &Waker) -> io::Result<()> {
        if !self.owes.load(Ordering::Acquire) {
            return Ok(());
        }
        self.wakers.register(Who::Reader, task);
        let Some(mut side) = try_lock(&self.side) else {
            return Ok(());
        };
        match self.poll_write_side(&mut side, task, Who::Reader, true) {
            Poll::Ready(r) => r,
            Poll::Pending => Ok(()),
        }
    }

    /// Notes our Close.
    fn closed_now(&self) {
        let mut owed = lock(&self.owed);
        if owed.close_sent.is_none() {
            owed.close_sent = Some(Instant::now());
        }
        self.closing.store(true, Ordering::Release);
    }

    /// A half is dropped: Close (1000) unless one went out, written as far
    /// as the transport takes it now; the other half writes the rest.
    fn close_on_drop(&self, other: Who) {
        let mut side = lock(&self.side);
        if self.owes.load(Ordering::Acquire) {
            self.encode_owed(&mut side);
        }
        if side.conn.state() == State::Open {
            let _ = side.conn.close(CloseCode::NORMAL, "");
            side.duty = true;
            self.closed_now();
        }
        if side.duty {
            // The shared waker: a registration by the other half stays valid.
            let noop = noop_waker();
            let _ = self.poll_write_side(&mut side, &noop, other, true);
        }
        if side.duty {
            let _owed = lock(&self.owed);
            self.owes.store(true, Ordering::Release);
        }
        drop(side);
        self.wakers.wake_one(other);
    }
}

/// The receiving half of a split [`WebSocketStream`].
pub struct ReadHalf<S: Halves> {
    io: S::Read,
    conn: Connection,
    timers: Timers,
    close_frame: Option<CloseFrame>,
    /// The peer's role: whose frames the replies are.
    receiver: Role,
    shared: Arc<Shared<S::Write>>,
}

impl<S: Halves> std::fmt::Debug for ReadHalf<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadHalf")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

/// A split reader's duties: hand the replies over, write them if the
/// writer is idle.
struct Handover<'a, W> {
    shared: &'a Shared<W>,
    receiver: Role,
}

impl<R, W: AsyncWrite + Unpin> Duty<R> for Handover<'_, W> {
    fn flush(&mut self, cx: &mut Context<'_>, conn: &mut Connection, _: &mut R) -> io::Result<()> {
        if !conn.pending_output().is_empty() {
            let out = conn.take_output();
            let mut owed = lock(&self.shared.owed);
            owed.replies.record(&out, self.receiver);
            self.shared.owes.store(true, Ordering::Release);
        }
        self.shared.try_deliver(cx.waker())
    }

    fn ping(&mut self, cx: &mut Context<'_>, _: &mut Connection, _: &mut R) -> bool {
        {
            let mut owed = lock(&self.shared.owed);
            if owed.close_sent.is_some() {
                return false;
            }
            owed.replies.ping = true;
            self.shared.owes.store(true, Ordering::Release);
        }
        let _ = self.shared.try_deliver(cx.waker());
        true
    }

    fn give_up(&mut self, cx: &mut Context<'_>, _: &mut Connection, _: &mut R) {
        {
            let mut owed = lock(&self.shared.owed);
            owed.replies
                .owe_close(CloseCode::INTERNAL_ERROR, "keepalive timeout");
            self.shared.owes.store(true, Ordering::Release);
        }
        let _ = self.shared.try_deliver(cx.waker());
    }

    fn close_sent(&self) -> Option<Instant> {
        if self.shared.closing.load(Ordering::Acquire) {
            lock(&self.shared.owed).close_sent
        } else {
            None
        }
    }
}

impl<S: Halves> ReadHalf<S> {
    /// Polls for the next event, as [`WebSocketStream::poll_read_event`].
    ///
    /// # Errors
    ///
    /// As [`WebSocketStream::read`].
    pub fn poll_read_event(&mut self, cx: &mut Context<'_>) -> Poll<Result<Event, Error>> {
        let mut duty = Handover {
            shared: &self.shared,
            receiver: self.receiver,
        };
        // Replies left from an earlier poll (the transport was full).
        if let Err(e) = self.shared.try_deliver(cx.waker()) {
            return Poll::Ready(Err(e.into()));
        }
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

    /// The next event, as [`WebSocketStream::read`]. Pongs and Close
    /// echoes go out through the writer's transport half: before the
    /// writer's next message, or right away if it is idle. The reader
    /// never waits for the writer. Cancellation-safe.
    ///
    /// # Errors
    ///
    /// As [`WebSocketStream::read`].
    pub async fn read(&mut self) -> Result<Event, Error> {
        poll_fn(|cx| self.poll_read_event(cx)).await
    }

    /// The next message, as [`WebSocketStream::next`]. Cancellation-safe.
    pub async fn next(&mut self) -> Option<Result<Message, Error>> {
        poll_fn(|cx| poll_message(cx, |cx| self.poll_read_event(cx))).await
    }

    /// As [`WebSocketStream::set_keepalive`].
    pub fn set_keepalive(&mut self, interval: Duration, deadline: Duration) {
        self.timers.ping_interval = Some(interval);
        self.timers.pong_deadline = deadline;
        self.timers.last_heard = None;
    }

    /// As [`WebSocketStream::set_close_timeout`].
    pub fn set_close_timeout(&mut self, timeout: Option<Duration>) {
        self.timers.close_timeout = timeout;
    }

    /// As [`WebSocketStream::set_idle_timeout`].
    pub fn set_idle_timeout(&mut self, timeout: Option<Duration>) {
        self.timers.idle_timeout = timeout;
        self.timers.last_heard = None;
    }

    /// The peer's Close frame, once the stream has ended with it.
    pub fn close_frame(&self) -> Option<&CloseFrame> {
        self.close_frame.as_ref()
    }

    /// The receiving state machine.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

impl<S: Halves> Drop for ReadHalf<S> {
    fn drop(&mut self) {
        // Replies still in the connection (a Close echo) go with ours.
        if !self.conn.pending_output().is_empty() {
            let out = self.conn.take_output();
            lock(&self.shared.owed).replies.record(&out, self.receiver);
            self.shared.owes.store(true, Ordering::Release);
        }
        self.shared.close_on_drop(Who::Writer);
    }
}

impl<S: Halves> futures_core::Stream for ReadHalf<S> {
    type Item = Result<Message, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        poll_message(cx, |cx| this.poll_read_event(cx))
    }
}

/// The sending half of a split [`WebSocketStream`].
pub struct WriteHalf<S: Halves> {
    shared: Arc<Shared<S::Write>>,
}

impl<S: Halves> std::fmt::Debug for WriteHalf<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteHalf").finish_non_exhaustive()
    }
}

impl<S: Halves> WriteHalf<S> {
    fn poll_ready_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.shared.with_side(|shared, side| {
            let high = side.conn.config().write_high_water;
            if shared.must_drain(side) || side.parked.queued(&side.conn) >= high {
                ready!(shared.poll_write_side(side, cx.waker(), Who::Writer, false))?;
            }
            Poll::Ready(Ok(()))
        })
    }

    fn poll_flush_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.shared.with_side(|shared, side| {
            ready!(shared.poll_write_side(side, cx.waker(), Who::Writer, false))?;
            Poll::Ready(Ok(()))
        })
    }

    fn start_send_inner(&mut self, message: Message) -> Result<(), Error> {
        self.shared.with_side(|_, side| {
            let vectored = side.writes_vectored;
            side.parked.queue(&mut side.conn, vectored, message)
        })
    }

    /// Queues `message` and writes everything queued, after any reply the
    /// [`ReadHalf`] owes. Cancellation: as [`WebSocketStream::send`].
    ///
    /// # Errors
    ///
    /// As [`WebSocketStream::send`].
    pub async fn send(&mut self, message: impl Into<Message>) -> Result<(), Error> {
        let mut message = Some(message.into());
        poll_fn(|cx| {
            if let Some(m) = message.take() {
                if self.poll_ready_inner(cx)?.is_pending() {
                    message = Some(m);
                    return Poll::Pending;
                }
                self.start_send_inner(m)?;
            }
            self.poll_flush_inner(cx)
        })
        .await
    }

    /// Queues `message` without writing it, as [`WebSocketStream::feed`].
    ///
    /// # Errors
    ///
    /// As [`WebSocketStream::send`].
    pub async fn feed(&mut self, message: impl Into<Message>) -> Result<(), Error> {
        poll_fn(|cx| self.poll_ready_inner(cx)).await?;
        self.start_send_inner(message.into())
    }

    /// Writes everything queued. Cancellation-safe.
    ///
    /// # Errors
    ///
    /// [`Error::Io`].
    pub async fn flush(&mut self) -> Result<(), Error> {
        poll_fn(|cx| self.poll_flush_inner(cx)).await
    }

    /// Sends a Ping.
    ///
    /// # Errors
    ///
    /// As [`Connection::ping`], and [`Error::Io`].
    pub async fn ping(&mut self, payload: &[u8]) -> Result<(), Error> {
        self.shared.with_side(|_, side| side.conn.ping(payload))?;
        self.flush().await
    }

    /// Starts the closing handshake; the [`ReadHalf`] returns the peer's
    /// answer.
    ///
    /// # Errors
    ///
    /// As [`Connection::close`], and [`Error::Io`].
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), Error> {
        self.start_close(code, reason)?;
        self.flush().await
    }

    fn start_close(&mut self, code: CloseCode, reason: &str) -> Result<(), Error> {
        self.shared.with_side(|shared, side| {
            let was_open = side.conn.state() == State::Open;
            side.conn.close(code, reason)?;
            if was_open {
                shared.closed_now();
            }
            Ok(())
        })
    }
}

impl<S: Halves> Drop for WriteHalf<S> {
    fn drop(&mut self) {
        self.shared.close_on_drop(Who::Reader);
    }
}

impl<S: Halves> futures_sink::Sink<Message> for WriteHalf<S> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_ready_inner(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Error> {
        self.get_mut().start_send_inner(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_flush_inner(cx)
    }

    /// Sends a Close (1000) if none went out yet, and flushes.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        this.start_close(CloseCode::NORMAL, "")?;
        this.poll_flush_inner(cx)
    }
}
