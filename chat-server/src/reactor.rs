//! Reactor threads: each owns many sessions and reads their sockets through
//! one epoll set, so an idle connection costs no thread stack, only its
//! [`Session`] (a `Connection` whose buffers are released while idle) and
//! its `Client`.

use crate::client;
use crate::session::Session;
use crate::sys::{self, Epoll};
use crate::Shared;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// epoll data of the wake-up socket (sessions use their connection id).
const WAKE: u64 = u64::MAX;

/// Clients written between two looks for newly arrived input while a
/// wake-up's writes go out (see `client::flush_noted`).
const WRITE_SLICE: usize = 16;

/// At most this many such looks per wake-up, so that a steady stream of
/// input cannot keep the loop from its timers.
const MAX_REPOLLS: usize = 64;

/// One reactor thread's shared half: the epoll set and the inbox of
/// sessions handed over by handshake threads.
#[derive(Debug)]
pub(crate) struct Reactor {
    epoll: Epoll,
    inbox: Mutex<Vec<Session>>,
    /// Sessions whose request finished off this thread (cluster worker):
    /// resumed at the next wake-up.
    ready: Mutex<Vec<u64>>,
    wake_tx: UnixStream,
    wake_rx: UnixStream,
}

impl Reactor {
    pub(crate) fn new() -> io::Result<Arc<Self>> {
        let epoll = Epoll::new()?;
        let (wake_tx, wake_rx) = UnixStream::pair()?;
        wake_tx.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        epoll.add(wake_rx.as_raw_fd(), WAKE)?;
        Ok(Arc::new(Self {
            epoll,
            inbox: Mutex::new(Vec::new()),
            ready: Mutex::new(Vec::new()),
            wake_tx,
            wake_rx,
        }))
    }

    /// Hands a session to this reactor's thread.
    pub(crate) fn adopt(&self, s: Session) {
        let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        inbox.push(s);
        if inbox.len() == 1 {
            let _ = (&self.wake_tx).write(&[1]);
        }
    }

    /// Session `id`'s request finished on another thread: the reactor
    /// wakes and resumes it (see `session::Waiting`).
    pub(crate) fn wake_session(&self, id: u64) {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        ready.push(id);
        if ready.len() == 1 {
            let _ = (&self.wake_tx).write(&[1]);
        }
    }

    /// The reactor loop; returns once the server stops and every session
    /// has ended.
    pub(crate) fn run(&self, shared: &Shared) {
        let mut sessions: HashMap<u64, Session> = HashMap::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut events = vec![sys::epoll_event(); 256];
        let mut due = Instant::now();
        loop {
            let adopted =
                std::mem::take(&mut *self.inbox.lock().unwrap_or_else(|e| e.into_inner()));
            for s in adopted {
                let stream = s.client().stream();
                if s.is_over()
                    || stream.set_nonblocking(true).is_err()
                    || self.epoll.add(stream.as_raw_fd(), s.id()).is_err()
                {
                    s.end();
                    continue;
                }
                due = due.min(s.next_timer());
                let id = s.id();
                sessions.insert(id, s);
                // Its request may have finished before it got here.
                self.resume(&mut sessions, id);
            }
            if shared.stop.load(Ordering::Acquire) && sessions.is_empty() {
                return;
            }
            let mut wait = due
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(500));
            if shared.room.presence_pending() {
                wait = wait.min(Duration::from_millis(100));
            }
            let ready = self.epoll.wait(&mut events, wait);
            // Everything this wake-up sends leaves when the cork drops: one
            // write per client however many events fanned out to it.
            let _cork = client::cork();
            self.on_events(ready, &mut sessions, &mut buf, &mut due);
            // Write in slices and take in, between them, what arrived
            // meanwhile: clients not yet written get it in the same write.
            // Never a wait (timeout 0), and bounded so timers still run.
            let mut repolls = 0;
            while client::flush_noted(WRITE_SLICE) && repolls < MAX_REPOLLS {
                repolls += 1;
                let ready = self.epoll.ready_now(&mut events);
                if !ready.is_empty() {
                    self.on_events(ready, &mut sessions, &mut buf, &mut due);
                }
            }
            drop(_cork);
            let now = Instant::now();
            shared.room.tick(now);
            if now >= due {
                due = now + Duration::from_secs(1);
                let mut ended = Vec::new();
                for (id, s) in sessions.iter_mut() {
                    if s.on_timer(now) || s.is_over() {
                        ended.push(*id);
                    } else {
                        due = due.min(s.next_timer());
                    }
                }
                for id in ended {
                    if let Some(s) = sessions.remove(&id) {
                        self.end(s);
                    }
                }
            }
        }
    }

    /// Handles one batch of ready events (reads, and the sends they make,
    /// corked by the caller).
    fn on_events(
        &self,
        ready: &[sys::EpollEvent],
        sessions: &mut HashMap<u64, Session>,
        buf: &mut [u8],
        due: &mut Instant,
    ) {
        for ev in ready {
            let token = ev.u64;
            if token == WAKE {
                let mut sink = [0u8; 64];
                while matches!((&self.wake_rx).read(&mut sink), Ok(k) if k > 0) {}
                let ready =
                    std::mem::take(&mut *self.ready.lock().unwrap_or_else(|e| e.into_inner()));
                for id in ready {
                    self.resume(sessions, id);
                    if let Some(s) = sessions.get(&id) {
                        *due = (*due).min(s.next_timer());
                    }
                }
                continue;
            }
            let Some(s) = sessions.get_mut(&token) else {
                continue;
            };
            // A bug in handling one client must not take down every
            // session this thread owns: end just that one.
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                s.on_readable(buf);
                // TLS: plaintext rustls decrypted beyond the buffer gets no
                // socket event of its own (bounded: rustls holds at most a
                // few records).
                let mut again = 0;
                while again < 64 && !s.is_over() && s.client().more_to_read() {
                    s.on_readable(buf);
                    again += 1;
                }
            }));
            if ok.is_err() {
                s.set_why("internal error (panic), dropped");
            }
            if ok.is_err() || s.is_over() {
                if let Some(s) = sessions.remove(&token) {
                    self.end(s);
                }
            } else {
                *due = (*due).min(s.next_timer());
            }
        }
    }

    /// Resumes session `id` after its request finished off this thread:
    /// the requests it held meanwhile run now.
    fn resume(&self, sessions: &mut HashMap<u64, Session>, id: u64) {
        let Some(s) = sessions.get_mut(&id) else {
            return;
        };
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.resume()));
        if ok.is_err() {
            s.set_why("internal error (panic), dropped");
        }
        if ok.is_err() || s.is_over() {
            if let Some(s) = sessions.remove(&id) {
                self.end(s);
            }
        }
    }

    fn end(&self, s: Session) {
        let _ = self.epoll.delete(s.client().stream().as_raw_fd());
        s.end();
    }
}
