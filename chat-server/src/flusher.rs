//! The thread that drains queues: it polls only the sockets of clients with
//! queued bytes or a closing deadline, plus a wake-up socket. What to write
//! and when to shut a socket is the client's business ([`Drain`]); this
//! thread only waits for the moments to ask it.

use crate::sys;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the flusher needs of a client with something pending.
pub(crate) trait Drain: Send + Sync + std::fmt::Debug {
    /// The socket, the poll events wanted, and the deadline to wake up for.
    fn interest(&self) -> (RawFd, i16, Option<Instant>);
    /// Writes what the socket takes if `writable` and applies the deadline;
    /// true when there is nothing left to wait for.
    fn flush_ready(&self, writable: bool) -> bool;
}

/// The flusher thread's handle.
#[derive(Debug)]
pub(crate) struct Flusher {
    new: Mutex<Vec<Arc<dyn Drain>>>,
    wake_tx: UnixStream,
    wake_rx: UnixStream,
    stop: AtomicBool,
    /// `sendmsg` calls made by this server's clients (for tests and
    /// measurements: one per client per wake-up is the goal).
    writes: AtomicU64,
}

impl Flusher {
    /// Starts the flusher thread.
    pub(crate) fn start() -> io::Result<Arc<Self>> {
        let (wake_tx, wake_rx) = UnixStream::pair()?;
        wake_tx.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let flusher = Arc::new(Self {
            new: Mutex::new(Vec::new()),
            wake_tx,
            wake_rx,
            stop: AtomicBool::new(false),
            writes: AtomicU64::new(0),
        });
        let f = Arc::clone(&flusher);
        std::thread::Builder::new()
            .name("flusher".into())
            .stack_size(256 << 10)
            .spawn(move || f.run())?;
        Ok(flusher)
    }

    /// Asks the thread to exit once nothing is pending.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = (&self.wake_tx).write(&[1]);
    }

    /// Counts one `sendmsg` to a client socket.
    pub(crate) fn count_write(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// `sendmsg` calls to client sockets so far.
    pub(crate) fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Watches `client` until it reports nothing left to do.
    pub(crate) fn add(&self, client: Arc<dyn Drain>) {
        let mut new = self.new.lock().unwrap_or_else(|e| e.into_inner());
        new.push(client);
        // One wake-up per batch: the flusher takes the whole list at once,
        // so only the push that made it non-empty needs to wake it.
        if new.len() == 1 {
            let _ = (&self.wake_tx).write(&[1]);
        }
    }

    fn run(&self) {
        let mut clients: Vec<Arc<dyn Drain>> = Vec::new();
        let mut fds: Vec<sys::PollFd> = Vec::new();
        loop {
            clients.append(&mut self.new.lock().unwrap_or_else(|e| e.into_inner()));
            if clients.is_empty() && self.stop.load(Ordering::Acquire) {
                return;
            }
            fds.clear();
            fds.push(sys::pollfd(self.wake_rx.as_raw_fd(), sys::POLLIN));
            let mut timeout = Duration::from_secs(1);
            let now = Instant::now();
            for c in &clients {
                let (fd, events, deadline) = c.interest();
                if let Some(d) = deadline {
                    timeout = timeout.min(d.saturating_duration_since(now));
                }
                fds.push(sys::pollfd(fd, events));
            }
            // Every fd belongs to a stream kept open by `clients` or `self`.
            if !sys::poll(&mut fds, timeout.max(Duration::from_millis(1))) {
                continue;
            }
            if fds[0].revents != 0 {
                let mut sink = [0u8; 64];
                while matches!((&self.wake_rx).read(&mut sink), Ok(n) if n > 0) {}
            }
            let mut kept = Vec::with_capacity(clients.len());
            for (client, fd) in clients.drain(..).zip(&fds[1..]) {
                if !client.flush_ready(fd.revents != 0) {
                    kept.push(client);
                }
            }
            clients = kept;
        }
    }
}
