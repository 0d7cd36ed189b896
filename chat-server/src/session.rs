//! One upgraded connection: its reader thread, timers, rate limit and the
//! dispatch of requests to the room.

use crate::outbox::{Peer, DRAIN_DEADLINE};
use crate::protocol::{self, ErrorCode, Refusal, Request};
use crate::room::SessionId;
use crate::{log, Config, Shared};
use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
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

struct Session<'a> {
    shared: &'a Arc<Shared>,
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
}

/// Runs the WebSocket phase of one connection until it ends.
pub(crate) fn run(
    shared: &Arc<Shared>,
    stream: TcpStream,
    addr: SocketAddr,
    id: u64,
    early: &[u8],
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
        shared,
        conn: Connection::new(Role::Server, ws_config(cfg)),
        joined: None,
        rate: RateLimit::new(cfg),
        join_deadline: now + cfg.join_timeout,
        next_ping: now + cfg.ping_interval,
        pong_due: None,
        closing_until: None,
        why: String::from("closed"),
        peer: Arc::clone(&peer),
    };
    // The stack buffer keeps an idle connection free of heap buffers.
    let mut buf = [0u8; 4096];
    s.conn.receive(early);
    s.process();
    while !s.conn.is_closed() {
        if s.shared.stop.load(std::sync::atomic::Ordering::Acquire) && s.closing_until.is_none() {
            // Shutdown already queued 1001; wait for the answer as usual.
            s.closing_until = Some(Instant::now() + DRAIN_DEADLINE);
        }
        if s.peer.close_sent() && s.closing_until.is_none() {
            s.closing_until = Some(Instant::now() + DRAIN_DEADLINE);
        }
        let timeout = s.next_timer().saturating_duration_since(Instant::now());
        let timeout = timeout.max(Duration::from_millis(1));
        if s.peer.stream.set_read_timeout(Some(timeout)).is_err() {
            break;
        }
        match (&s.peer.stream).read(&mut buf) {
            Ok(0) => s.conn.receive_eof(),
            Ok(n) => s.conn.receive(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if s.on_timer() {
                    break;
                }
                continue;
            }
            Err(e) => {
                s.why = format!("read error: {e}");
                s.conn.receive_eof();
            }
        }
        s.process();
        s.conn.shrink_buffers();
    }
    if let Some(sid) = s.joined {
        shared.room.leave(sid, &peer);
    }
    peer.finish();
    shared
        .peers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    log!(shared, "chat: {addr} disconnected ({})", s.why);
}

impl Session<'_> {
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
