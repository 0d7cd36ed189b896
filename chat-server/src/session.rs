//! Upgraded connections: reactor threads that read them (epoll), their
//! timers, the rate limit and the dispatch of requests to the room.

use crate::outbox::{Peer, DRAIN_DEADLINE};
use crate::protocol::{self, ErrorCode, Refusal, Request};
use crate::room::SessionId;
use crate::{log, Config, LiveGuard, Shared};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wsproto::{Connection, Event, Role};

/// Close codes the server sends (RFC 6455 §7.4.1).
const CLOSE_UNSUPPORTED: u16 = 1003;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_INTERNAL: u16 = 1011;

/// The wsproto limits for a chat connection.
pub(crate) fn ws_config(config: &Config) -> wsproto::Config {
    wsproto::Config::default()
        .max_frame_size(config.max_message_bytes)
        .max_message_size(config.max_message_bytes)
        .max_handshake_size(config.max_header_bytes)
        .max_output_buffer(config.max_queue_bytes)
}

/// Token bucket plus the refusal count of the last minute.
struct RateLimit {
    tokens: f64,
    burst: f64,
    per_sec: f64,
    last: Instant,
    refusals: VecDeque<Instant>,
    refusals_to_close: usize,
}

enum Rate {
    Allowed,
    Refused,
    RefusedAndClose,
}

impl RateLimit {
    fn new(c: &Config) -> Self {
        Self {
            tokens: f64::from(c.rate_burst),
            burst: f64::from(c.rate_burst),
            per_sec: f64::from(c.rate_per_sec),
            last: Instant::now(),
            refusals: VecDeque::new(),
            refusals_to_close: c.rate_refusals_to_close as usize,
        }
    }

    fn check(&mut self, now: Instant) -> Rate {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Rate::Allowed;
        }
        let minute = Duration::from_secs(60);
        while self
            .refusals
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= minute)
        {
            self.refusals.pop_front();
        }
        self.refusals.push_back(now);
        if self.refusals.len() >= self.refusals_to_close {
            Rate::RefusedAndClose
        } else {
            Rate::Refused
        }
    }
}

/// One upgraded connection, owned by a reactor thread.
pub(crate) struct Session {
    id: u64,
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    conn: Connection,
    joined: Option<SessionId>,
    rate: RateLimit,
    join_deadline: Instant,
    next_ping: Instant,
    pong_due: Option<Instant>,
    /// Set when we started the closing handshake: drop TCP at this time if
    /// the peer has not answered.
    closing_until: Option<Instant>,
    why: String,
    _live: LiveGuard,
}

/// A thread that owns many idle-or-busy sessions and reads them through
/// one epoll set, so an idle connection costs no thread stack: only its
/// `Session`, `Connection` (buffers released while idle) and `Peer`.
#[derive(Debug)]
pub(crate) struct Reactor {
    epoll: OwnedFd,
    inbox: Mutex<Vec<Session>>,
    wake_tx: UnixStream,
    wake_rx: UnixStream,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// epoll data of the wake-up socket (sessions use their connection id).
const WAKE: u64 = u64::MAX;

impl Reactor {
    pub(crate) fn new() -> io::Result<Arc<Self>> {
        // SAFETY: plain syscall; the returned fd is owned below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let (wake_tx, wake_rx) = UnixStream::pair()?;
        wake_tx.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let r = Self {
            epoll,
            inbox: Mutex::new(Vec::new()),
            wake_tx,
            wake_rx,
        };
        r.ctl(libc::EPOLL_CTL_ADD, r.wake_rx.as_raw_fd(), WAKE)?;
        Ok(Arc::new(r))
    }

    fn ctl(&self, op: libc::c_int, fd: libc::c_int, data: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: data,
        };
        // SAFETY: valid epoll and socket descriptors, and a valid event
        // (ignored for EPOLL_CTL_DEL).
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut ev) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn adopt(&self, s: Session) {
        let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        inbox.push(s);
        if inbox.len() == 1 {
            let _ = (&self.wake_tx).write(&[1]);
        }
    }

    /// The reactor loop; returns once the server stops and every session
    /// has ended.
    pub(crate) fn run(&self, shared: &Shared) {
        let mut sessions: HashMap<u64, Session> = HashMap::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut due = Instant::now();
        loop {
            let adopted =
                std::mem::take(&mut *self.inbox.lock().unwrap_or_else(|e| e.into_inner()));
            for s in adopted {
                let fd = s.peer.stream.as_raw_fd();
                if s.conn.is_closed()
                    || s.peer.stream.set_nonblocking(true).is_err()
                    || self.ctl(libc::EPOLL_CTL_ADD, fd, s.id).is_err()
                {
                    self.end(s);
                    continue;
                }
                due = due.min(s.next_timer());
                sessions.insert(s.id, s);
            }
            if shared.stop.load(Ordering::Acquire) && sessions.is_empty() {
                return;
            }
            let now = Instant::now();
            let wait = due
                .saturating_duration_since(now)
                .min(Duration::from_millis(500));
            let ms = wait.as_millis().max(1) as libc::c_int;
            // SAFETY: `events` is a live buffer of the stated length.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as libc::c_int,
                    ms,
                )
            };
            for ev in events.iter().take(n.max(0) as usize) {
                let token = ev.u64;
                if token == WAKE {
                    let mut sink = [0u8; 64];
                    while matches!((&self.wake_rx).read(&mut sink), Ok(k) if k > 0) {}
                    continue;
                }
                let Some(s) = sessions.get_mut(&token) else {
                    continue;
                };
                match (&s.peer.stream).read(&mut buf) {
                    Ok(0) => s.conn.receive_eof(),
                    Ok(k) => s.conn.receive(&buf[..k]),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => {
                        s.why = format!("read error: {e}");
                        s.conn.receive_eof();
                    }
                }
                // A bug in handling one client must not take down every
                // session this thread owns: end just that one.
                let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.process()));
                s.conn.shrink_buffers();
                if ok.is_err() {
                    s.why = "internal error (panic), dropped".into();
                }
                if ok.is_err() || s.conn.is_closed() {
                    if let Some(s) = sessions.remove(&token) {
                        self.end(s);
                    }
                } else {
                    due = due.min(s.next_timer());
                }
            }
            let now = Instant::now();
            if now >= due {
                due = now + Duration::from_secs(1);
                let mut ended = Vec::new();
                for (id, s) in sessions.iter_mut() {
                    if s.peer.close_sent() && s.closing_until.is_none() {
                        s.closing_until = Some(now + DRAIN_DEADLINE);
                    }
                    if s.on_timer() || s.conn.is_closed() {
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

    /// Ends a session: out of epoll, out of the room (its `left` goes out),
    /// socket shut down once its queue drains.
    fn end(&self, s: Session) {
        let _ = self.ctl(libc::EPOLL_CTL_DEL, s.peer.stream.as_raw_fd(), s.id);
        if let Some(sid) = s.joined {
            s.shared.room.leave(sid, &s.peer);
        }
        s.peer.finish();
        s.shared
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&s.id);
        log!(s.shared, "chat: {} disconnected ({})", s.peer.label, s.why);
    }
}

/// Starts the WebSocket phase of an upgraded connection: the session goes
/// to a reactor thread, and the handshake thread that calls this returns.
pub(crate) fn start(
    shared: &Arc<Shared>,
    stream: TcpStream,
    addr: SocketAddr,
    id: u64,
    early: &[u8],
    live: LiveGuard,
) {
    let cfg = &shared.config;
    let peer = Arc::new(Peer::new(
        stream,
        addr.to_string(),
        cfg.max_queue_bytes,
        Arc::clone(&shared.flusher),
    ));
    shared
        .peers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, Arc::clone(&peer));
    log!(shared, "chat: {addr} connected");
    let now = Instant::now();
    let mut s = Session {
        id,
        shared: Arc::clone(shared),
        conn: Connection::new(Role::Server, ws_config(cfg)),
        joined: None,
        rate: RateLimit::new(cfg),
        join_deadline: now + cfg.join_timeout,
        next_ping: now + cfg.ping_interval,
        pong_due: None,
        closing_until: None,
        why: String::from("closed"),
        peer,
        _live: live,
    };
    s.conn.receive(early);
    s.process();
    s.conn.shrink_buffers();
    let reactor = &shared.reactors[(id as usize) % shared.reactors.len()];
    reactor.adopt(s);
}

impl Session {
    fn next_timer(&self) -> Instant {
        let mut t = self.next_ping;
        if let Some(p) = self.pong_due {
            t = t.min(p);
        }
        if self.joined.is_none() {
            t = t.min(self.join_deadline);
        }
        if let Some(c) = self.closing_until {
            t = t.min(c);
        }
        t
    }

    /// Handles expired timers; true when the connection should end now.
    fn on_timer(&mut self) -> bool {
        let now = Instant::now();
        if self.closing_until.is_some_and(|c| now >= c) {
            if self.why == "closed" {
                self.why = "no answer to our close".into();
            }
            return true;
        }
        if self.closing_until.is_some() {
            return false;
        }
        if self.joined.is_none() && now >= self.join_deadline {
            self.close(CLOSE_POLICY, "join timeout");
            return false;
        }
        if self.pong_due.is_some_and(|p| now >= p) {
            self.close(CLOSE_INTERNAL, "pong timeout");
            return false;
        }
        if now >= self.next_ping {
            self.next_ping = now + self.shared.config.ping_interval;
            if self.pong_due.is_none() {
                self.pong_due = Some(now + self.shared.config.pong_timeout);
            }
            if self.conn.ping(b"").is_ok() {
                self.flush_conn();
            }
        }
        false
    }

    /// Starts the closing handshake with `code`.
    fn close(&mut self, code: u16, reason: &str) {
        if self.closing_until.is_some() {
            return;
        }
        self.why = format!("closed by server: {code} {reason}");
        log!(
            self.shared,
            "chat: {} error: closing with {code} {reason}",
            self.peer.label
        );
        if let Ok(code) = wsproto::CloseCode::try_from(code) {
            let _ = self.conn.close(code, reason);
        }
        self.flush_conn();
        self.closing_until = Some(Instant::now() + DRAIN_DEADLINE);
    }

    /// Hands what the `Connection` queued (Pongs, Pings, Close frames) to
    /// the peer's outbox.
    fn flush_conn(&mut self) {
        let out = self.conn.take_output();
        if out.is_empty() {
            return;
        }
        if self.conn.state() == wsproto::State::Open {
            self.peer.send_control(out);
        } else {
            self.peer.send_close_frame(out);
        }
    }

    fn process(&mut self) {
        loop {
            match self.conn.next_event() {
                Ok(Some(Event::Text(t))) => self.on_text(t.as_str()),
                Ok(Some(Event::Binary(_))) => {
                    self.close(CLOSE_UNSUPPORTED, "binary frames are not supported")
                }
                Ok(Some(Event::Ping(_))) => {}
                Ok(Some(Event::Pong(_))) => self.pong_due = None,
                Ok(Some(Event::Close(f))) => {
                    if self.closing_until.is_none() {
                        self.why = format!("client closed: {} {}", f.code.as_u16(), f.reason);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.why = format!("protocol error: {e} (close {})", e.close_code().as_u16());
                    log!(self.shared, "chat: {} error: {e}", self.peer.label);
                    self.flush_conn();
                    break;
                }
            }
            self.flush_conn();
        }
        self.flush_conn();
    }

    fn on_text(&mut self, text: &str) {
        if self.closing_until.is_some() {
            return;
        }
        match self.rate.check(Instant::now()) {
            Rate::Allowed => {}
            Rate::Refused => return self.refuse(&rate_refusal()),
            Rate::RefusedAndClose => {
                self.refuse(&rate_refusal());
                return self.close(CLOSE_POLICY, "rate limit");
            }
        }
        if let Err(r) = self.dispatch(text) {
            self.refuse(&r);
        }
    }

    fn dispatch(&mut self, text: &str) -> Result<(), Refusal> {
        let req = protocol::parse(text)?;
        let room = &self.shared.room;
        let sid = match (&req, self.joined) {
            (Request::Join { .. }, Some(_)) => {
                return Err(Refusal::new(ErrorCode::AlreadyJoined, "already joined"))
            }
            (Request::Join { nick, since, token }, None) => {
                let sid = room.join(&self.peer, nick, *since, token.as_deref())?;
                self.joined = Some(sid);
                return Ok(());
            }
            (_, None) => {
                return Err(Refusal::new(ErrorCode::NotJoined, "send a join first"));
            }
            (_, Some(sid)) => sid,
        };
        match req {
            Request::Join { .. } => Ok(()),
            Request::Message { text } => room.message(sid, &text),
            Request::Private { to, text } => room.private(sid, &to, &text),
            Request::Nick { nick } => room.rename(sid, &nick),
            Request::Who => {
                room.who(&self.peer);
                Ok(())
            }
            Request::History { before, limit } => {
                room.history(&self.peer, before, limit);
                Ok(())
            }
        }
    }

    fn refuse(&self, r: &Refusal) {
        self.peer.send(Peer::frame_text(&r.to_json()));
    }
}

fn rate_refusal() -> Refusal {
    Refusal::new(ErrorCode::RateLimited, "too many messages; slow down")
}
