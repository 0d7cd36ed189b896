//! [`Client`]: one upgraded connection's outgoing side and lifecycle, the
//! only way to queue bytes for a client or to end its session.
//!
//! Three kinds of thread touch a client: its reactor (replies to its own
//! requests, Pongs, Pings, the Close of its session), the room (broadcasts
//! from other members' reactors, a takeover's close) and the flusher
//! (queued bytes, deadlines). Each rule is written once, here:
//!
//! - **One bound.** Every byte queued for the client, whatever the frame
//!   (data, Pong, Ping, Close), counts toward `--max-queue-bytes`; the send
//!   that pushes the queue past it drops the backlog, queues a 1008 Close
//!   and drops TCP within [`DRAIN_DEADLINE`] (DESIGN.md, "Fan-out and slow
//!   clients").
//! - **Nothing after our Close** (RFC 6455 §5.5.1): once a Close is queued
//!   the client leaves [`Phase::Open`] and every later send is refused.
//! - **The socket goes** once the queue drains after the session ended, or
//!   at the closing deadline, whichever comes first.
//!
//! A broadcast is framed once; every recipient gets a clone of the same
//! [`Bytes`].
//!
//! **Corking** (one write per client per wake-up, issue 11). A thread that
//! handles a batch of socket events (a reactor) first calls [`cork`]:
//! until the returned guard drops, every send on that thread only queues
//! the frame and notes the client; the guard then writes each noted client
//! once, all its queued frames in one `sendmsg` (an iovec per frame). There
//! is no timer: the batch is whatever arrived while the thread was busy, so
//! an idle server answers at once and a busy one writes less often but
//! more per write (self-clocked). Without a cork (a thread that sends one
//! thing) a send to an empty queue is written at once with `MSG_DONTWAIT`.
//! Only what does not fit in the kernel's socket buffer stays queued, for
//! the flusher thread to write when the socket turns writable.
//!
//! **TLS** (`wss://`, issue 14). The queue holds plaintext frames whatever
//! the transport, so the byte bound and the Close rules are the same. A
//! TLS client's rustls connection lives under the same lock as its queue
//! (it cannot be split): a write encrypts the queued frames as one batch
//! (a TLS record per 16 KiB, not per frame) and sends the records with one
//! `sendmsg`, so a corked wake-up still makes one write. Encryption stops
//! once 64 KiB of records wait for the socket (the rest stays queued as
//! plaintext, under the byte bound), so TLS adds at most that to a slow
//! client's memory. The reactor reads through [`Client::read`], which for
//! TLS takes the lock; a plain client reads the socket without it.

use crate::flusher::{Drain, Flusher};
use crate::sys;
use crate::tls::TlsConn;
use bytes::{Bytes, BytesMut};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use wsproto::close::encode_close_frame;
use wsproto::deflate::{PreparedMessage, NO_CONTEXT_MIN_SIZE};
use wsproto::frame::{encode_frame, Opcode};
use wsproto::CloseCode;

/// How long a closing client's queued bytes (its Close frame) may take to
/// leave, and the peer to answer, before TCP is dropped regardless
/// (DESIGN.md: "the TCP connection is dropped within 2 s whatever happens").
pub(crate) const DRAIN_DEADLINE: Duration = Duration::from_secs(2);

/// Close code sent to a connection whose member was taken over by a resume
/// (DESIGN.md: 4000 "replaced"; 4000-4999 are for applications, RFC 6455
/// §7.4.2).
pub(crate) fn close_replaced() -> CloseCode {
    // 4000 is in the application range, so the conversion cannot fail.
    CloseCode::try_from(4000).unwrap_or(CloseCode::POLICY_VIOLATION)
}

/// zlib level of the compressed broadcast frames (zlib's default: the
/// message is compressed once per broadcast, whatever the room's size).
const DEFLATE_LEVEL: u8 = 6;

/// One outgoing text message, framed once and compressed at most once
/// (issue 13: "broadcast framed once, compressed once"): every recipient
/// gets a clone of the same [`Bytes`], the compressed frame (RSV1 set,
/// RFC 7692 §6) if it negotiated permessage-deflate, the plain one
/// otherwise. The compressed frame is made without context, which is valid
/// for every recipient because the server always answers
/// `server_no_context_takeover` (RFC 7692 §7.1.1.1) and never compresses
/// through its `Connection`; it is made with a 15-bit window, so a client
/// that limited `server_max_window_bits` below 15 gets the plain frame.
/// Texts under [`NO_CONTEXT_MIN_SIZE`] (most chat lines) are never
/// compressed: without context they barely shrink (wsproto's measurement).
pub(crate) struct Outgoing<'a> {
    text: &'a str,
    plain: Bytes,
    /// Made on the first recipient that can take it.
    prepared: Option<PreparedMessage>,
}

impl<'a> Outgoing<'a> {
    pub(crate) fn text(text: &'a str) -> Self {
        Self {
            text,
            plain: Client::frame_text(text),
            prepared: None,
        }
    }

    /// The frame `client` gets.
    pub(crate) fn frame_for(&mut self, client: &Client) -> Bytes {
        if let Some(bits) = client.deflate_window {
            if self.text.len() >= NO_CONTEXT_MIN_SIZE {
                let text = self.text;
                let prepared = self.prepared.get_or_insert_with(|| {
                    PreparedMessage::text(text, DEFLATE_LEVEL, NO_CONTEXT_MIN_SIZE)
                });
                if let Some(z) = prepared.compressed_frame(bits) {
                    return z.clone();
                }
            }
        }
        self.plain.clone()
    }
}

/// A connection's wire: the TCP socket, with TLS over it for `wss://`.
#[derive(Debug)]
pub(crate) struct Transport {
    pub(crate) stream: TcpStream,
    pub(crate) tls: Option<Box<TlsConn>>,
}

impl From<TcpStream> for Transport {
    fn from(stream: TcpStream) -> Self {
        Self { stream, tls: None }
    }
}

/// One client's socket, outgoing queue and lifecycle.
///
/// Invariants (checked by [`Inner::check`] after every change in debug
/// builds):
/// 1. `bytes` is the sum of the queued buffers' lengths.
/// 2. While [`Phase::Open`], `bytes <= max_queue`: a push past it leaves
///    `Open` in the same critical section.
/// 3. Nothing is queued after a Close: the only push outside `Open` is the
///    Close itself, made by `begin_close` before it leaves `Open`.
/// 4. [`Phase::Done`] holds an empty queue and a shut-down socket; no phase
///    goes back (Open -> Closing -> Done).
/// 5. `open` mirrors `phase == Open` (the lock-free fast check).
/// 6. `front_started` (part of the first buffer is on the wire, or in
///    rustls' encrypted buffer) implies a non-empty queue.
#[derive(Debug)]
pub(crate) struct Client {
    /// The fd stays open as long as any `Arc<Client>` lives, so a send
    /// never reaches a reused descriptor.
    stream: TcpStream,
    /// `inner.tls` is set (fixed at birth): a plain client reads without
    /// the lock.
    tls: bool,
    /// Log name (`ip:port`).
    label: String,
    inner: Mutex<Inner>,
    open: AtomicBool,
    max_queue: usize,
    log: bool,
    flusher: Arc<Flusher>,
    /// The send window (`server_max_window_bits`) agreed when the client
    /// negotiated permessage-deflate; `None` without it.
    deflate_window: Option<u8>,
}

/// Where a client is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Anything may be queued.
    Open,
    /// Our Close is queued or sent, or the session ended: nothing more is
    /// queued. The socket is shut once the queue drains if
    /// `shutdown_on_drain` (the peer has nothing left to tell us), and at
    /// `deadline` in any case.
    Closing {
        deadline: Instant,
        shutdown_on_drain: bool,
    },
    /// The socket is shut down.
    Done,
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    bufs: VecDeque<Bytes>,
    bytes: usize,
    front_started: bool,
    /// Registered with the flusher.
    registered: bool,
    /// Noted by a thread's [`cork`], which writes the queue when it drops.
    corked: bool,
    /// The TLS session of a `wss://` client: reads and writes both go
    /// through it, hence through this lock.
    tls: Option<Box<TlsConn>>,
}

/// What became of a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Written or queued.
    Ok,
    /// The client is closing or closed; the bytes were dropped.
    Closed,
    /// This send pushed the queue past its bound: the client is now being
    /// closed with 1008.
    Overflow,
}

impl Inner {
    fn push(&mut self, frame: Bytes) {
        debug_assert!(
            self.phase == Phase::Open,
            "invariant 3: nothing is queued after our Close"
        );
        if frame.is_empty() {
            return;
        }
        self.bytes += frame.len();
        self.bufs.push_back(frame);
    }

    /// Bytes wait to be written: queued frames, or TLS records rustls holds.
    fn pending(&self) -> bool {
        !self.bufs.is_empty() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Drops the first `n` queued bytes (they were written or encrypted).
    fn consume(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            let Some(front) = self.bufs.front_mut() else {
                break;
            };
            if n >= front.len() {
                n -= front.len();
                self.bufs.pop_front();
                self.front_started = false;
            } else {
                *front = front.slice(n..);
                self.front_started = true;
                n = 0;
            }
        }
    }

    fn clear(&mut self) {
        self.bufs = VecDeque::new();
        self.bytes = 0;
        self.front_started = false;
    }

    fn check(&self, max_queue: usize, open: bool) {
        // Summing a long queue on every push would make debug builds
        // quadratic under a burst of presence notices; short queues are
        // where the off-by-one bugs live.
        debug_assert!(
            self.bufs.len() > 64 || self.bytes == self.bufs.iter().map(Bytes::len).sum::<usize>(),
            "invariant 1"
        );
        debug_assert!(
            self.phase != Phase::Open || self.bytes <= max_queue,
            "invariant 2: {} queued over {max_queue}",
            self.bytes
        );
        debug_assert!(
            self.phase != Phase::Done || self.bufs.is_empty(),
            "invariant 4"
        );
        debug_assert_eq!(open, self.phase == Phase::Open, "invariant 5");
        debug_assert!(!self.front_started || !self.bufs.is_empty(), "invariant 6");
    }
}

impl Client {
    pub(crate) fn new(
        transport: Transport,
        label: String,
        max_queue: usize,
        log: bool,
        flusher: Arc<Flusher>,
        deflate_window: Option<u8>,
    ) -> Self {
        let Transport { stream, tls } = transport;
        Self {
            stream,
            tls: tls.is_some(),
            label,
            inner: Mutex::new(Inner {
                phase: Phase::Open,
                bufs: VecDeque::new(),
                bytes: 0,
                front_started: false,
                registered: false,
                corked: false,
                tls,
            }),
            open: AtomicBool::new(true),
            max_queue,
            log,
            flusher,
            deflate_window,
        }
    }

    /// The socket, for the reactor to poll (reads go through
    /// [`read`](Self::read)).
    pub(crate) fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Reads what the socket has, as `Read::read` on it would (plaintext
    /// for a TLS client). TLS output the read makes (alerts, key updates)
    /// is written like queued bytes.
    pub(crate) fn read(self: &Arc<Self>, buf: &mut [u8]) -> io::Result<usize> {
        if !self.tls {
            return (&self.stream).read(buf);
        }
        let mut q = self.lock();
        let Some(tls) = q.tls.as_mut() else {
            return (&self.stream).read(buf);
        };
        let read = tls.read(&self.stream, buf);
        if tls.wants_write() && q.phase != Phase::Done && !self.flush_locked(&mut q) {
            self.register(&mut q);
        }
        read
    }

    /// The last [`read`](Self::read) filled the buffer and TLS may hold
    /// more plaintext: read again now (the socket will not signal it).
    pub(crate) fn more_to_read(&self) -> bool {
        self.tls && self.lock().tls.as_ref().is_some_and(|t| t.more_to_read())
    }

    /// Log name (`ip:port`).
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// True while anything may be sent (no Close queued, session not over).
    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// The current phase.
    pub(crate) fn phase(&self) -> Phase {
        self.lock().phase
    }

    /// Frames `payload` as one unmasked text frame (a server never masks,
    /// RFC 6455 §5.1).
    pub(crate) fn frame_text(payload: &str) -> Bytes {
        let mut buf = BytesMut::with_capacity(payload.len() + 10);
        encode_frame(&mut buf, true, Opcode::Text, payload.as_bytes(), None);
        buf.freeze()
    }

    /// Frames `payload` for this client alone: compressed when it
    /// negotiated permessage-deflate and the text is long enough to pay.
    pub(crate) fn frame(&self, payload: &str) -> Bytes {
        Outgoing::text(payload).frame_for(self)
    }

    /// Sends a pre-framed message now, queueing what the socket does not
    /// take.
    pub(crate) fn send(self: &Arc<Self>, frame: Bytes) -> Sent {
        self.queue(frame, true)
    }

    /// Queues a pre-framed message without writing now even on an uncorked
    /// thread (the flusher writes it, coalesced with whatever follows): for
    /// presence notices, which arrive in bursts. On a corked thread it is
    /// the same as [`send`](Self::send). Order with `send` is kept: a later
    /// `send` sees a non-empty queue and appends behind.
    pub(crate) fn send_deferred(self: &Arc<Self>, frame: Bytes) -> Sent {
        self.queue(frame, false)
    }

    /// Sends control frames the reader's `Connection` produced while open
    /// (Pongs): counted like any other byte, refused after our Close.
    pub(crate) fn send_control(self: &Arc<Self>, bytes: Bytes) -> Sent {
        self.queue(bytes, true)
    }

    /// Sends a keepalive Ping.
    pub(crate) fn ping(self: &Arc<Self>) -> Sent {
        let mut buf = BytesMut::with_capacity(2);
        encode_frame(&mut buf, true, Opcode::Ping, b"", None);
        self.queue(buf.freeze(), true)
    }

    fn queue(self: &Arc<Self>, mut frame: Bytes, write_now: bool) -> Sent {
        if !self.is_open() {
            return Sent::Closed;
        }
        let mut q = self.lock();
        if q.phase != Phase::Open {
            return Sent::Closed;
        }
        let corked = CORK.with(|c| match &mut *c.borrow_mut() {
            Some(noted) => {
                if !q.corked {
                    q.corked = true;
                    noted.push_back(Arc::clone(self));
                }
                true
            }
            None => false,
        });
        if write_now && !corked && q.bufs.is_empty() && !self.tls {
            self.flusher.count_write();
            match sys::send_iov(&self.stream, [&frame]) {
                Ok(n) if n == frame.len() => return Sent::Ok,
                Ok(n) => {
                    q.front_started = n > 0;
                    frame = frame.slice(n..);
                }
                Err(_) => {
                    // The reader sees the same error on its next read and
                    // ends the session.
                    self.shut(&mut q);
                    return Sent::Closed;
                }
            }
        }
        q.push(frame);
        if write_now && !corked && self.tls && !q.registered {
            if let Err(()) = self.write_out(&mut q) {
                self.shut(&mut q);
                return Sent::Closed;
            }
        }
        if q.bytes > self.max_queue {
            let pending = q.bytes;
            self.begin_close(
                &mut q,
                CloseCode::POLICY_VIOLATION,
                "slow consumer: send queue full",
                true,
            );
            drop(q);
            if self.log {
                eprintln!(
                    "chat: {} error: outgoing queue over {} bytes ({pending} pending), closing 1008",
                    self.label, self.max_queue
                );
            }
            return Sent::Overflow;
        }
        if !corked {
            self.register(&mut q);
        }
        q.check(self.max_queue, self.is_open());
        Sent::Ok
    }

    /// Writes what a cork held back: one `sendmsg` for the whole queue
    /// (unless the flusher already waits for the socket to drain it).
    fn uncork(self: &Arc<Self>) {
        let mut q = self.lock();
        q.corked = false;
        if q.registered || !q.pending() {
            return;
        }
        if !self.flush_locked(&mut q) {
            self.register(&mut q);
        }
    }

    /// Starts the closing handshake: queues a Close with `code` and `reason`
    /// behind what is already queued; nothing more is sent, and TCP is
    /// dropped once the peer answers (the reader then calls
    /// [`finish`](Self::finish)) or after [`DRAIN_DEADLINE`]. Does nothing
    /// if a Close went out already.
    pub(crate) fn close(self: &Arc<Self>, code: CloseCode, reason: &str) {
        let mut q = self.lock();
        self.begin_close(&mut q, code, reason, false);
    }

    /// Queues a Close frame the reader's `Connection` encoded (the echo of
    /// the peer's Close, or the Close for a protocol violation), unless our
    /// own Close went out first. The connection is over: TCP is dropped once
    /// the frame is out.
    pub(crate) fn send_close_frame(self: &Arc<Self>, frame: Bytes) {
        let mut q = self.lock();
        if q.phase == Phase::Open {
            q.push(frame);
            self.enter_closing(&mut q, true);
        }
    }

    /// Called by the reader when the session is over (the Close handshake
    /// is done, the peer went away, or the deadline passed): nothing more is
    /// sent, and the socket is shut down as soon as the queue drains, at the
    /// latest at the closing deadline.
    pub(crate) fn finish(self: &Arc<Self>) {
        let mut q = self.lock();
        match q.phase {
            Phase::Open => self.enter_closing(&mut q, true),
            Phase::Closing { deadline, .. } => {
                q.phase = Phase::Closing {
                    deadline,
                    shutdown_on_drain: true,
                };
                if !self.flush_locked(&mut q) {
                    self.register(&mut q);
                }
            }
            Phase::Done => {}
        }
    }

    /// Queues our Close and leaves `Open`; `overflow` drops the backlog
    /// first (a slow client's backlog is not worth sending) and drops TCP as
    /// soon as the Close is out.
    fn begin_close(self: &Arc<Self>, q: &mut Inner, code: CloseCode, reason: &str, overflow: bool) {
        if q.phase != Phase::Open {
            return;
        }
        if overflow {
            // Keep a partially written buffer: cutting a frame in half would
            // corrupt the stream before the Close.
            let keep = q.front_started.then(|| q.bufs.pop_front()).flatten();
            q.clear();
            if let Some(front) = keep {
                q.push(front);
                q.front_started = true;
            }
        }
        q.push(encode_close_frame(code, reason, None));
        self.enter_closing(q, overflow);
    }

    fn enter_closing(self: &Arc<Self>, q: &mut Inner, shutdown_on_drain: bool) {
        q.phase = Phase::Closing {
            deadline: Instant::now() + DRAIN_DEADLINE,
            shutdown_on_drain,
        };
        self.open.store(false, Ordering::Release);
        if !self.flush_locked(q) {
            self.register(q);
        }
        q.check(self.max_queue, self.is_open());
    }

    /// Shuts the socket down: the end of every path.
    fn shut(&self, q: &mut Inner) {
        if q.phase != Phase::Done {
            if let Some(tls) = q.tls.as_mut() {
                tls.close(&self.stream);
            }
        }
        // The session's keys and buffers go now, not when the last
        // `Arc<Client>` does (a reader after this sees the shut socket).
        q.tls = None;
        q.clear();
        q.phase = Phase::Done;
        self.open.store(false, Ordering::Release);
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a queue that is still
        // consistent (every update is a push or a pop), so keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(self: &Arc<Self>, q: &mut Inner) {
        let waiting = q.pending() || matches!(q.phase, Phase::Closing { .. });
        if !q.registered && waiting {
            q.registered = true;
            self.flusher.add(Arc::clone(self) as Arc<dyn Drain>);
        }
    }
}

thread_local! {
    /// The clients a corked thread has queued for; `None` when not corked.
    static CORK: RefCell<Option<VecDeque<Arc<Client>>>> = const { RefCell::new(None) };
}

/// Holds back this thread's writes until dropped (see the module docs):
/// then every client sent to meanwhile gets one write. Nested corks are
/// folded into the outermost.
#[must_use = "the writes leave when the guard drops"]
pub(crate) struct Cork {
    outermost: bool,
}

/// Corks this thread's sends until the guard drops.
pub(crate) fn cork() -> Cork {
    let outermost = CORK.with(|c| {
        let mut c = c.borrow_mut();
        let fresh = c.is_none();
        if fresh {
            *c = Some(VecDeque::new());
        }
        fresh
    });
    Cork { outermost }
}

/// Writes up to `n` of the clients noted under this thread's cork, in the
/// order they were noted, and leaves the cork on; true if some remain.
///
/// A reactor writes a wake-up's clients in slices and takes in, between
/// slices, what arrived meanwhile (issue 11): a client not yet written then
/// gets the new frames in the same `sendmsg`, and nothing waits for it (the
/// pass never sleeps). A client written in an earlier slice is noted again
/// by the next send and goes at the end.
pub(crate) fn flush_noted(n: usize) -> bool {
    for _ in 0..n {
        // Take the client out before locking it: nothing may borrow the
        // cell while a client's lock is held.
        let Some(client) = CORK.with(|c| c.borrow_mut().as_mut().and_then(VecDeque::pop_front))
        else {
            return false;
        };
        client.uncork();
    }
    CORK.with(|c| c.borrow().as_ref().is_some_and(|v| !v.is_empty()))
}

impl Drop for Cork {
    fn drop(&mut self) {
        if !self.outermost {
            return;
        }
        // Uncorking sends nothing new, but take the list out first anyway:
        // nothing may borrow the cell while a client's lock is held.
        let noted = CORK.with(|c| c.borrow_mut().take()).unwrap_or_default();
        for client in noted {
            client.uncork();
        }
    }
}

impl Drain for Client {
    /// POLLOUT only with bytes queued: asking for it on an empty queue
    /// would spin.
    fn interest(&self) -> (RawFd, i16, Option<Instant>) {
        let q = self.lock();
        let events = if q.pending() { sys::POLLOUT } else { 0 };
        let deadline = match q.phase {
            Phase::Closing { deadline, .. } => Some(deadline),
            _ => None,
        };
        (self.stream.as_raw_fd(), events, deadline)
    }

    /// Done when drained while open, or shut down.
    fn flush_ready(&self, writable: bool) -> bool {
        let mut q = self.lock();
        let due = matches!(q.phase, Phase::Closing { deadline, .. } if Instant::now() >= deadline);
        let done = if writable || due {
            self.flush_locked(&mut q)
        } else {
            match q.phase {
                Phase::Open => !q.pending(),
                Phase::Closing { .. } => false,
                Phase::Done => true,
            }
        };
        if done {
            q.registered = false;
        }
        done
    }
}

impl Client {
    /// Writes as much of the queue as the socket takes (see
    /// [`write_out`](Self::write_out)), then applies the phase's shutdown
    /// rule. Returns true when nothing is left for the flusher.
    fn flush_locked(&self, q: &mut Inner) -> bool {
        if self.write_out(q).is_err() {
            self.shut(q);
            return true;
        }
        let done = match q.phase {
            Phase::Open => !q.pending(),
            Phase::Closing {
                deadline,
                shutdown_on_drain,
            } => {
                if (!q.pending() && shutdown_on_drain) || Instant::now() >= deadline {
                    self.shut(q);
                    true
                } else {
                    false
                }
            }
            Phase::Done => true,
        };
        if q.bufs.is_empty() {
            // Release the ring's memory while idle.
            q.bufs = VecDeque::new();
        }
        q.check(self.max_queue, self.is_open());
        done
    }

    /// Writes as much of the queue as the socket takes: plain, one
    /// `sendmsg` per [`sys::MAX_IOV`] buffers; TLS, the queue encrypted as
    /// one batch (up to 64 KiB of records) and sent with one `sendmsg`.
    /// `Err` when the socket or the TLS session failed.
    fn write_out(&self, q: &mut Inner) -> Result<(), ()> {
        // A TLS client never gets plaintext on its socket, even after its
        // session state is gone.
        if self.tls {
            return self.write_out_tls(q);
        }
        while !q.bufs.is_empty() {
            self.flusher.count_write();
            match sys::send_iov(&self.stream, &q.bufs) {
                Ok(0) => break,
                Ok(n) => q.consume(n),
                Err(_) => return Err(()),
            }
        }
        Ok(())
    }

    fn write_out_tls(&self, q: &mut Inner) -> Result<(), ()> {
        loop {
            let taken = match q.tls.as_mut() {
                Some(tls) if !q.bufs.is_empty() => tls.encrypt(&q.bufs).map_err(|_| ())?,
                _ => 0,
            };
            q.consume(taken);
            let Some(tls) = q.tls.as_mut() else {
                return Ok(());
            };
            if !tls.wants_write() {
                // Frames wait and nothing could be encrypted: the session
                // can carry no more data; waiting would spin the flusher.
                if taken == 0 && !q.bufs.is_empty() {
                    return Err(());
                }
                return Ok(());
            }
            self.flusher.count_write();
            match tls.write_to(&self.stream) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(_) => return Err(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    fn pair(max_queue: usize) -> (Arc<Client>, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let flusher = Flusher::start().unwrap();
        let c = Client::new(s.into(), "test".into(), max_queue, false, flusher, None);
        (Arc::new(c), peer)
    }

    /// Under a cork, clients are written in slices; what is sent between
    /// two slices leaves with the first write of every client not yet
    /// written, and in a second write for those already written.
    #[test]
    fn frames_sent_between_slices_join_the_unwritten_clients_writes() {
        let clients: Vec<_> = (0..3).map(|_| pair(1 << 20)).collect();
        let one = Client::frame_text("one");
        let two = Client::frame_text("two");
        {
            let _cork = cork();
            for (c, _) in &clients {
                assert_eq!(c.send(one.clone()), Sent::Ok);
            }
            assert!(flush_noted(1), "two clients left to write");
            for (c, _) in &clients {
                assert_eq!(c.send(two.clone()), Sent::Ok);
            }
        }
        let writes: Vec<u64> = clients.iter().map(|(c, _)| c.flusher.writes()).collect();
        assert_eq!(writes, [2, 1, 1]);
        let mut want = one.to_vec();
        want.extend_from_slice(&two);
        for (_, peer) in &clients {
            let mut peer = peer;
            peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = vec![0; want.len()];
            peer.read_exact(&mut got).unwrap();
            assert_eq!(got, want);
        }
    }

    /// Control frames count toward the same bound as data, and the bound
    /// ends the session with 1008 as the last frame.
    #[test]
    fn pongs_count_toward_the_bound_and_nothing_follows_the_close() {
        let (c, mut peer) = pair(64 << 10);
        let pong = {
            let mut b = BytesMut::new();
            encode_frame(&mut b, true, Opcode::Pong, &[7; 125], None);
            b.freeze()
        };
        let mut sent = 0usize;
        let outcome = loop {
            match c.send_control(pong.clone()) {
                Sent::Ok => sent += 1,
                other => break other,
            }
            assert!(sent < 1_000_000, "no bound on control frames");
        };
        assert_eq!(outcome, Sent::Overflow);
        assert!(!c.is_open());
        assert_eq!(c.send(Client::frame_text("late")), Sent::Closed);
        assert_eq!(c.send_control(pong.clone()), Sent::Closed);
        assert_eq!(c.ping(), Sent::Closed);
        c.close(CloseCode::NORMAL, "again");
        // The peer reads whole Pongs, one Close 1008, then EOF within the
        // drain deadline.
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let t = Instant::now();
        let mut all = Vec::new();
        peer.read_to_end(&mut all).unwrap();
        assert!(t.elapsed() < DRAIN_DEADLINE + Duration::from_secs(1));
        let close = encode_close_frame(
            CloseCode::POLICY_VIOLATION,
            "slow consumer: send queue full",
            None,
        );
        assert!(all.ends_with(&close), "the Close is the last frame");
        let body = &all[..all.len() - close.len()];
        assert_eq!(body.len() % pong.len(), 0, "only whole pongs before it");
        assert_eq!(c.phase(), Phase::Done);
    }
}
