//! Outgoing bytes: direct non-blocking sends, a byte-bounded queue per
//! client for whatever would block, and one flusher thread that `poll()`s
//! only the sockets that have something queued.
//!
//! A broadcast is framed once; every recipient gets a clone of the same
//! [`Bytes`] (a reference-count increment). When a client's queue is empty
//! the sender writes straight to the socket with `MSG_DONTWAIT`, so a
//! message to a reading client costs one `sendmsg` and wakes no thread.
//! Only the part that does not fit in the kernel's socket buffer is queued.
//! Queued buffers leave in one `sendmsg` with an iovec per buffer (writes are
//! coalesced). A queue past its byte bound is dropped and the client closed
//! (DESIGN.md, "Fan-out and slow clients").

use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use wsproto::frame::{encode_frame, Opcode};

/// How long a closing client's queued bytes (its Close frame) may take to
/// leave before the TCP connection is dropped regardless (DESIGN.md: "the
/// TCP connection is dropped within 2 s whatever happens").
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(2);

/// Most buffers handed to one `sendmsg` (Linux `IOV_MAX` is 1024): a burst
/// of small presence notices leaves in one call.
const MAX_IOV: usize = 1024;

/// One client's socket and outgoing queue, shared by its reader thread, the
/// room (broadcasts) and the flusher.
#[derive(Debug)]
pub struct Peer {
    /// The socket; the fd stays open as long as any `Arc<Peer>` lives, so a
    /// send never reaches a reused descriptor.
    pub stream: TcpStream,
    /// Log name (`ip:port`).
    pub label: String,
    out: Mutex<Queue>,
    /// Set once no more application data will be accepted.
    closed: AtomicBool,
    /// Set once a Close frame was queued: nothing at all may follow it
    /// (RFC 6455 §5.5.1).
    close_sent: AtomicBool,
    max_queue: usize,
    flusher: Arc<Flusher>,
}

#[derive(Debug, Default)]
struct Queue {
    bufs: VecDeque<Bytes>,
    bytes: usize,
    /// Shut the socket down once the queue drains, or at this deadline.
    drain_by: Option<Instant>,
    /// Shut down as soon as the queue is empty (otherwise only at
    /// `drain_by`, leaving the peer time to answer a Close).
    shutdown_on_drain: bool,
    /// Registered with the flusher.
    registered: bool,
}

/// What became of a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Written or queued.
    Ok,
    /// The client is closed or closing; the bytes were dropped.
    Closed,
    /// This send pushed the queue past its bound: the client is now being
    /// closed with 1008.
    Overflow,
}

impl Peer {
    pub fn new(stream: TcpStream, label: String, max_queue: usize, flusher: Arc<Flusher>) -> Self {
        Self {
            stream,
            label,
            out: Mutex::new(Queue::default()),
            closed: AtomicBool::new(false),
            close_sent: AtomicBool::new(false),
            max_queue,
            flusher,
        }
    }

    /// True once the client is closing (no more application data goes out).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Frames `payload` as one unmasked text frame (a server never masks,
    /// RFC 6455 §5.1).
    pub fn frame_text(payload: &str) -> Bytes {
        let mut buf = BytesMut::with_capacity(payload.len() + 10);
        encode_frame(&mut buf, true, Opcode::Text, payload.as_bytes(), None);
        buf.freeze()
    }

    /// Sends pre-framed application bytes.
    pub fn send(self: &Arc<Self>, frame: Bytes) -> Sent {
        if self.is_closed() {
            return Sent::Closed;
        }
        let q = self.lock();
        if self.is_closed() {
            return Sent::Closed;
        }
        if q.bufs.is_empty() {
            let n = match send_all(&self.stream, std::slice::from_ref(&frame)) {
                Ok(n) => n,
                Err(_) => {
                    // The reader sees the same error on its next read and
                    // cleans up; stop sending.
                    self.closed.store(true, Ordering::Release);
                    return Sent::Closed;
                }
            };
            if n == frame.len() {
                return Sent::Ok;
            }
            self.enqueue(q, frame.slice(n..))
        } else {
            self.enqueue(q, frame)
        }
    }

    /// Queues pre-framed bytes for the flusher instead of writing now: for
    /// presence notices, which arrive in bursts (a thousand joins fan out
    /// a million notices) and are cheaper coalesced, many per `sendmsg`,
    /// than written one syscall each. Order with [`send`](Self::send) is
    /// kept: a later `send` sees a non-empty queue and appends behind.
    pub fn send_deferred(self: &Arc<Self>, frame: Bytes) -> Sent {
        if self.is_closed() {
            return Sent::Closed;
        }
        let q = self.lock();
        if self.is_closed() {
            return Sent::Closed;
        }
        self.enqueue(q, frame)
    }

    /// Queues `frame` behind what is waiting; a queue past its bound closes
    /// the client with 1008 (the policy of DESIGN.md's fan-out section).
    fn enqueue(self: &Arc<Self>, mut q: MutexGuard<'_, Queue>, frame: Bytes) -> Sent {
        q.bytes += frame.len();
        q.bufs.push_back(frame);
        if q.bytes > self.max_queue {
            let pending = q.bytes;
            self.close_locked(&mut q, 1008, "slow consumer: send queue full");
            drop(q);
            eprintln!(
                "chat: {} error: outgoing queue over {} bytes ({pending} pending), closing 1008",
                self.label, self.max_queue
            );
            return Sent::Overflow;
        }
        self.register(&mut q);
        Sent::Ok
    }

    /// Sends protocol bytes the reader's `Connection` produced (a Pong, a
    /// Close echo); they are not refused while closing, only once the
    /// socket is shut.
    pub fn send_control(self: &Arc<Self>, bytes: Bytes) {
        if bytes.is_empty() || self.close_sent.load(Ordering::Acquire) {
            return;
        }
        let mut q = self.lock();
        if q.bufs.is_empty() {
            match send_all(&self.stream, std::slice::from_ref(&bytes)) {
                Ok(n) if n == bytes.len() => return,
                Ok(n) => {
                    q.bytes += bytes.len() - n;
                    q.bufs.push_back(bytes.slice(n..));
                }
                Err(_) => return,
            }
        } else {
            q.bytes += bytes.len();
            q.bufs.push_back(bytes);
        }
        self.register(&mut q);
    }

    /// True once a Close frame has been queued.
    pub fn close_sent(&self) -> bool {
        self.close_sent.load(Ordering::Acquire)
    }

    /// Queues a Close frame the reader's `Connection` produced (its own
    /// close, or the echo of the peer's), unless one went out already.
    pub fn send_close_frame(self: &Arc<Self>, frame: Bytes) {
        if self.close_sent.swap(true, Ordering::AcqRel) {
            return;
        }
        self.closed.store(true, Ordering::Release);
        let mut q = self.lock();
        q.bytes += frame.len();
        q.bufs.push_back(frame);
        self.flush_locked(&mut q);
        self.register(&mut q);
    }

    /// Closes from outside the reader (a takeover, shutdown): queues a Close
    /// with `code` and `reason` after what is already queued, refuses further
    /// data, and drops TCP after [`DRAIN_DEADLINE`] unless the reader, seeing
    /// the peer's answer, does it sooner.
    pub fn close(self: &Arc<Self>, code: u16, reason: &str) {
        if self.close_sent.swap(true, Ordering::AcqRel) {
            return;
        }
        self.closed.store(true, Ordering::Release);
        let mut q = self.lock();
        let frame = close_frame(code, reason);
        q.bytes += frame.len();
        q.bufs.push_back(frame);
        q.drain_by = Some(Instant::now() + DRAIN_DEADLINE);
        self.flush_locked(&mut q);
        self.register(&mut q);
    }

    /// Drops the queue (a slow client's backlog is not worth sending), queues
    /// a Close if it fits, and drops TCP once that is out, at most
    /// [`DRAIN_DEADLINE`] later.
    fn close_locked(self: &Arc<Self>, q: &mut Queue, code: u16, reason: &str) {
        self.closed.store(true, Ordering::Release);
        // Keep a partially written buffer: cutting a frame in half would
        // corrupt the stream before the Close.
        let keep = q.bufs.pop_front();
        q.bufs = VecDeque::new();
        q.bytes = 0;
        if let Some(first) = keep {
            q.bytes = first.len();
            q.bufs.push_back(first);
        }
        if !self.close_sent.swap(true, Ordering::AcqRel) {
            let frame = close_frame(code, reason);
            q.bytes += frame.len();
            q.bufs.push_back(frame);
        }
        q.drain_by = Some(Instant::now() + DRAIN_DEADLINE);
        q.shutdown_on_drain = true;
        self.flush_locked(q);
        self.register(q);
    }

    /// Called by the reader when it is done: no more data, and the socket is
    /// shut down as soon as the queue drains (at most [`DRAIN_DEADLINE`]).
    pub fn finish(self: &Arc<Self>) {
        self.closed.store(true, Ordering::Release);
        self.close_sent.store(true, Ordering::Release);
        let mut q = self.lock();
        q.shutdown_on_drain = true;
        let deadline = Instant::now() + DRAIN_DEADLINE;
        q.drain_by = Some(q.drain_by.map_or(deadline, |d| d.min(deadline)));
        if !self.flush_locked(&mut q) {
            self.register(&mut q);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves a queue that is still
        // consistent (every update is a push or a pop), so keep using it.
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(self: &Arc<Self>, q: &mut Queue) {
        if !q.registered && (!q.bufs.is_empty() || q.drain_by.is_some()) {
            q.registered = true;
            self.flusher.add(Arc::clone(self));
        }
    }

    /// Writes as much of the queue as the socket takes, in one `sendmsg`
    /// per 1024 buffers. Returns true when the flusher can forget the peer:
    /// drained with no shutdown pending, or shut down.
    fn flush_locked(&self, q: &mut Queue) -> bool {
        while !q.bufs.is_empty() {
            let (a, b) = q.bufs.as_slices();
            let iov: Vec<&Bytes> = a.iter().chain(b).take(MAX_IOV).collect();
            let res = send_iov(&self.stream, &iov);
            match res {
                Ok(0) => break,
                Ok(mut n) => {
                    q.bytes -= n;
                    while n > 0 {
                        let Some(front) = q.bufs.front_mut() else {
                            break;
                        };
                        if n >= front.len() {
                            n -= front.len();
                            q.bufs.pop_front();
                        } else {
                            let rest = front.slice(n..);
                            *front = rest;
                            n = 0;
                        }
                    }
                }
                Err(_) => {
                    q.bufs.clear();
                    q.bytes = 0;
                    self.closed.store(true, Ordering::Release);
                    let _ = self.stream.shutdown(Shutdown::Both);
                    return true;
                }
            }
        }
        if q.bufs.is_empty() {
            q.bufs = VecDeque::new();
            match q.drain_by {
                None => return true,
                Some(_) if q.shutdown_on_drain => {
                    let _ = self.stream.shutdown(Shutdown::Both);
                    return true;
                }
                Some(_) => {}
            }
        }
        if q.drain_by.is_some_and(|d| Instant::now() >= d) {
            q.bufs.clear();
            q.bytes = 0;
            let _ = self.stream.shutdown(Shutdown::Both);
            return true;
        }
        false
    }
}

fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    let mut buf = BytesMut::with_capacity(payload.len() + 2);
    encode_frame(&mut buf, true, Opcode::Close, &payload, None);
    buf.freeze()
}

/// Writes `bufs` with one non-blocking `sendmsg`; `Ok(n)` is the byte count
/// taken (0 when the socket buffer is full).
fn send_all(stream: &TcpStream, bufs: &[Bytes]) -> io::Result<usize> {
    let refs: Vec<&Bytes> = bufs.iter().collect();
    send_iov(stream, &refs)
}

fn send_iov(stream: &TcpStream, bufs: &[&Bytes]) -> io::Result<usize> {
    let mut iov: [libc::iovec; MAX_IOV] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_IOV];
    let count = bufs.len().min(MAX_IOV);
    for (slot, buf) in iov.iter_mut().zip(bufs) {
        slot.iov_base = buf.as_ptr() as *mut libc::c_void;
        slot.iov_len = buf.len();
    }
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = count as _;
    loop {
        // SAFETY: the fd is open for as long as `stream` is borrowed; every
        // iovec points into a live `Bytes` borrowed for this call, and
        // sendmsg only reads them. MSG_DONTWAIT keeps the call from
        // blocking on a full buffer; MSG_NOSIGNAL turns a reset peer into
        // EPIPE instead of SIGPIPE.
        let n = unsafe {
            libc::sendmsg(
                stream.as_raw_fd(),
                &msg,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::WouldBlock => return Ok(0),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(err),
        }
    }
}

/// The thread that drains queues: it polls only the sockets with queued
/// bytes, plus a wake-up socket.
#[derive(Debug)]
pub struct Flusher {
    new: Mutex<Vec<Arc<Peer>>>,
    wake_tx: UnixStream,
    wake_rx: UnixStream,
    stop: AtomicBool,
}

impl Flusher {
    /// Starts the flusher thread.
    pub fn start() -> io::Result<Arc<Self>> {
        let (wake_tx, wake_rx) = UnixStream::pair()?;
        wake_tx.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let flusher = Arc::new(Self {
            new: Mutex::new(Vec::new()),
            wake_tx,
            wake_rx,
            stop: AtomicBool::new(false),
        });
        let f = Arc::clone(&flusher);
        std::thread::Builder::new()
            .name("flusher".into())
            .stack_size(256 << 10)
            .spawn(move || f.run())?;
        Ok(flusher)
    }

    /// Asks the thread to exit once nothing is pending.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = (&self.wake_tx).write(&[1]);
    }

    fn add(&self, peer: Arc<Peer>) {
        let mut new = self.new.lock().unwrap_or_else(|e| e.into_inner());
        new.push(peer);
        // One wake-up per batch: the flusher takes the whole list at once,
        // so only the push that made it non-empty needs to wake it.
        if new.len() == 1 {
            let _ = (&self.wake_tx).write(&[1]);
        }
    }

    fn run(&self) {
        let mut peers: Vec<Arc<Peer>> = Vec::new();
        let mut fds: Vec<libc::pollfd> = Vec::new();
        loop {
            peers.append(&mut self.new.lock().unwrap_or_else(|e| e.into_inner()));
            if peers.is_empty() && self.stop.load(Ordering::Acquire) {
                return;
            }
            fds.clear();
            fds.push(libc::pollfd {
                fd: self.wake_rx.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            let mut timeout = Duration::from_secs(1);
            let now = Instant::now();
            for p in &peers {
                let q = p.lock();
                // A peer with nothing queued waits only for its deadline;
                // asking for POLLOUT on it would spin.
                let events = if q.bufs.is_empty() { 0 } else { libc::POLLOUT };
                if let Some(d) = q.drain_by {
                    timeout = timeout.min(d.saturating_duration_since(now));
                }
                drop(q);
                fds.push(libc::pollfd {
                    fd: p.stream.as_raw_fd(),
                    events,
                    revents: 0,
                });
            }
            let ms = timeout.as_millis().clamp(1, 1000) as libc::c_int;
            // SAFETY: `fds` is a live, correctly sized array of pollfd; every
            // fd in it belongs to a stream kept open by `peers` or `self`.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            if ready < 0 {
                continue;
            }
            if fds[0].revents != 0 {
                let mut sink = [0u8; 64];
                while matches!((&self.wake_rx).read(&mut sink), Ok(n) if n > 0) {}
            }
            let mut kept = Vec::with_capacity(peers.len());
            for (peer, fd) in peers.drain(..).zip(&fds[1..]) {
                let mut q = peer.lock();
                let due = q.drain_by.is_some_and(|d| Instant::now() >= d);
                let done = if fd.revents != 0 || due {
                    peer.flush_locked(&mut q)
                } else {
                    q.bufs.is_empty() && q.drain_by.is_none()
                };
                if done {
                    q.registered = false;
                } else {
                    drop(q);
                    kept.push(peer);
                }
            }
            peers = kept;
        }
    }
}
