//! The reading side of one upgraded connection: its `Connection` (the
//! WebSocket decoder), timers, rate limits and the dispatch of requests to
//! the room. Everything it sends, and the end of its life, goes through its
//! [`Client`].

use crate::accounts::{self, Gate, PendingJoin};
use crate::client::{Client, Phase, Sent, Transport};
use crate::hub::{not_in_room, Joined};
use crate::protocol::{self, ErrorCode, Refusal, Request};
use crate::reactor::Reactor;
use crate::room::{MemberId, Room};
use crate::{log, Config, LiveGuard, Shared};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wsproto::deflate::DeflateParams;
use wsproto::{CloseCode, Connection, Event, Role, State};

/// The wsproto limits for a chat connection. `max_output_buffer` is moot
/// here: output is taken after every event and bounded by the [`Client`].
pub(crate) fn ws_config(config: &Config) -> wsproto::Config {
    wsproto::Config::default()
        .max_frame_size(config.max_message_bytes)
        .max_message_size(config.max_message_bytes)
        .max_handshake_size(config.max_header_bytes)
        .max_output_buffer(config.max_queue_bytes)
}

/// A token bucket.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    burst: f64,
    per_sec: f64,
    last: Instant,
}

impl Bucket {
    fn new(burst: u32, per_sec: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            per_sec: f64::from(per_sec),
            last: Instant::now(),
        }
    }

    /// Takes a token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Gives back the token of a request that turned out free.
    fn refund(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.burst);
    }
}

/// The text-frame rate limit: a bucket plus the refusals of the last minute.
#[derive(Debug)]
struct RateLimit {
    bucket: Bucket,
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
            bucket: Bucket::new(c.rate_burst, c.rate_per_sec),
            refusals: VecDeque::new(),
            refusals_to_close: c.rate_refusals_to_close as usize,
        }
    }

    fn check(&mut self, now: Instant) -> Rate {
        if self.bucket.take(now) {
            return Rate::Allowed;
        }
        self.refused(now)
    }

    /// Counts a `rate_limited` refusal (the bucket's, or a locked-out
    /// nick's: DESIGN.md, they "count like any other").
    fn refused(&mut self, now: Instant) -> Rate {
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

/// Requests a session holds while one of its requests waits on the
/// cluster worker, at most (past it: closed 1008, like a flood).
const HELD_MAX: usize = 256;

/// cluster hook: a request of a session that runs on the cluster worker
/// (it waits on Redis) while the reactor serves its other sessions. The
/// worker sends the client its reply, leaves here what the session must
/// take over, and wakes the session's reactor.
pub(crate) struct Waiting {
    state: Mutex<WaitState>,
    reactor: Arc<Reactor>,
    session: u64,
}

enum WaitState {
    Waiting,
    Done(Done),
    Abandoned,
}

/// What a request done on the worker changed for its session.
pub(crate) enum Done {
    /// Nothing (the reply went out, or a refusal).
    Nothing,
    /// A join: the member it made or took over.
    Joined(Joined),
    /// An `enter`: the room, and the membership version of its users list.
    Entered(String, Arc<Room>, u64),
}

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, WaitState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The worker is done. Hands `done` back when the session ended
    /// meanwhile (the caller undoes a join then).
    fn finish(&self, done: Done) -> Option<Done> {
        let mut st = self.lock();
        if matches!(*st, WaitState::Abandoned) {
            return Some(done);
        }
        *st = WaitState::Done(done);
        drop(st);
        self.reactor.wake_session(self.session);
        None
    }

    /// What the request changed, once done.
    fn take(&self) -> Option<Done> {
        let mut st = self.lock();
        match std::mem::replace(&mut *st, WaitState::Waiting) {
            WaitState::Done(d) => Some(d),
            other => {
                *st = other;
                None
            }
        }
    }

    /// The session ends: what the request changed, if it is done.
    fn abandon(&self) -> Option<Done> {
        match std::mem::replace(&mut *self.lock(), WaitState::Abandoned) {
            WaitState::Done(d) => Some(d),
            _ => None,
        }
    }
}

/// One upgraded connection, owned by a reactor thread.
pub(crate) struct Session {
    id: u64,
    shared: Arc<Shared>,
    client: Arc<Client>,
    conn: Connection,
    member: Option<MemberId>,
    /// The rooms this session's member is in, by name (kept in step with
    /// the hub's registry by this session alone: only the member's owner
    /// enters and leaves), so a room request takes no server-wide lock.
    rooms: HashMap<String, Seat>,
    /// A join waiting for its password check.
    pending: Option<Arc<PendingJoin>>,
    /// cluster hook: a request running on the cluster worker, and the
    /// requests that arrived meanwhile (run in order once it is done).
    waiting: Option<Arc<Waiting>>,
    held: VecDeque<String>,
    rate: RateLimit,
    /// Pings and Pongs from the client: each costs a reply or a wake-up,
    /// so a flood of them is closed 1008 like a flood of text.
    control: Bucket,
    join_deadline: Instant,
    next_ping: Instant,
    pong_due: Option<Instant>,
    why: String,
    _live: LiveGuard,
}

/// A room the session is in.
struct Seat {
    room: Arc<Room>,
    /// The room's membership version of the last `users` list this client
    /// received for it (welcome, `entered` or `who` reply).
    users_seen: Option<u64>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Starts the WebSocket phase of an upgraded connection: the session goes
/// to a reactor thread, and the handshake thread that calls this returns.
pub(crate) fn start(
    shared: &Arc<Shared>,
    stream: Transport,
    addr: SocketAddr,
    id: u64,
    early: &[u8],
    live: LiveGuard,
    deflate: Option<DeflateParams>,
) {
    let cfg = &shared.config;
    // The compressed frames of `client::Outgoing` need a window the client
    // allows; the `Connection` compresses nothing (it only inflates, bounded
    // by max_message_size: 1009 past it, RFC 7692 via wsproto).
    let send_window = deflate
        .as_ref()
        .filter(|p| p.compresses())
        .map(|p| p.send_window_bits);
    let client = Arc::new(Client::new(
        stream,
        addr.to_string(),
        cfg.max_queue_bytes,
        cfg.log,
        Arc::clone(&shared.flusher),
        send_window,
    ));
    shared
        .clients
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, Arc::clone(&client));
    log!(shared, "chat: {addr} connected");
    let now = Instant::now();
    let mut s = Session {
        id,
        shared: Arc::clone(shared),
        conn: Connection::new(Role::Server, ws_config(cfg)),
        member: None,
        rooms: HashMap::new(),
        pending: None,
        waiting: None,
        held: VecDeque::new(),
        rate: RateLimit::new(cfg),
        control: Bucket::new(cfg.control_burst, cfg.control_per_sec),
        join_deadline: now + cfg.join_timeout,
        next_ping: now + cfg.ping_interval,
        pong_due: None,
        why: String::from("closed"),
        client,
        _live: live,
    };
    if let Some(params) = deflate {
        s.conn.enable_deflate(params);
    }
    s.conn.receive(early);
    {
        let _cork = crate::client::cork();
        s.process();
    }
    s.conn.shrink_buffers();
    let reactor = &shared.reactors[(id as usize) % shared.reactors.len()];
    reactor.adopt(s);
}

impl Session {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn client(&self) -> &Arc<Client> {
        &self.client
    }

    pub(crate) fn set_why(&mut self, why: &str) {
        self.why = why.to_owned();
    }

    /// True once the session should end: the WebSocket is closed or the
    /// socket is gone.
    pub(crate) fn is_over(&self) -> bool {
        self.conn.is_closed() || self.client.phase() == Phase::Done
    }

    /// Reads what the socket has and acts on it.
    pub(crate) fn on_readable(&mut self, buf: &mut [u8]) {
        match self.client.read(buf) {
            Ok(0) => self.conn.receive_eof(),
            Ok(k) => self.conn.receive(&buf[..k]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                self.why = format!("read error: {e}");
                self.conn.receive_eof();
            }
        }
        self.process();
        self.conn.shrink_buffers();
    }

    pub(crate) fn next_timer(&self) -> Instant {
        let mut t = self.next_ping;
        if let Some(p) = self.pong_due {
            t = t.min(p);
        }
        if self.member.is_none() {
            t = t.min(self.join_deadline);
        }
        if let Phase::Closing { deadline, .. } = self.client.phase() {
            t = t.min(deadline);
        }
        t
    }

    /// Handles expired timers; true when the session should end now.
    pub(crate) fn on_timer(&mut self, now: Instant) -> bool {
        self.poll_pending();
        self.resume();
        match self.client.phase() {
            Phase::Done => return true,
            Phase::Closing { deadline, .. } => {
                if now >= deadline && self.why == "closed" {
                    self.why = "no answer to our close".into();
                }
                return now >= deadline;
            }
            Phase::Open => {}
        }
        if self.member.is_none() && now >= self.join_deadline {
            self.close(CloseCode::POLICY_VIOLATION, "join timeout");
            return false;
        }
        if self.pong_due.is_some_and(|p| now >= p) {
            self.close(CloseCode::INTERNAL_ERROR, "pong timeout");
            return false;
        }
        if now >= self.next_ping {
            self.next_ping = now + self.shared.config.ping_interval;
            if self.pong_due.is_none() {
                self.pong_due = Some(now + self.shared.config.pong_timeout);
            }
            self.note(self.client.ping());
        }
        false
    }

    /// Ends the session: out of the room (its `left` goes out), the client
    /// finished (socket shut once its queue drains).
    pub(crate) fn end(mut self) {
        // A join checked too late joins nobody.
        if let Some(joined) = self.pending.take().and_then(|p| p.abandon()) {
            self.member = Some(joined.id);
        }
        if let Some(Done::Joined(joined)) = self.waiting.take().and_then(|w| w.abandon()) {
            self.member = Some(joined.id);
        }
        if let Some(id) = self.member {
            self.shared.room.leave_all(id, &self.client);
        }
        self.client.finish();
        self.shared
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        // `why` holds peer-supplied text (a close reason) only in escaped
        // form.
        log!(
            self.shared,
            "chat: {} disconnected ({})",
            self.client.label(),
            self.why
        );
    }

    /// Starts the closing handshake with `code`.
    fn close(&mut self, code: CloseCode, reason: &str) {
        if !self.client.is_open() {
            return;
        }
        self.why = format!("closed by server: {code} {reason}");
        log!(
            self.shared,
            "chat: {} error: closing with {code} {reason}",
            self.client.label()
        );
        self.client.close(code, reason);
    }

    fn note(&mut self, sent: Sent) {
        if sent == Sent::Overflow {
            self.why = "closed by server: 1008 send queue full".into();
        }
    }

    /// Hands what the `Connection` produced on its own (a Pong, the echo of
    /// the peer's Close, the Close for a violation) to the client, which
    /// counts it and refuses it after our Close.
    fn relay_output(&mut self) {
        let out = self.conn.take_output();
        if out.is_empty() {
            return;
        }
        if self.conn.state() == State::Open {
            let sent = self.client.send_control(out);
            self.note(sent);
        } else {
            self.client.send_close_frame(out);
        }
    }

    fn process(&mut self) {
        loop {
            match self.conn.next_event() {
                Ok(Some(Event::Text(t))) => self.on_text(t.as_str()),
                Ok(Some(Event::Binary(_))) => self.close(
                    CloseCode::UNSUPPORTED_DATA,
                    "binary frames are not supported",
                ),
                Ok(Some(Event::Ping(_))) => self.on_control(),
                Ok(Some(Event::Pong(_))) => {
                    self.pong_due = None;
                    self.on_control();
                }
                Ok(Some(Event::Close(f))) => {
                    if self.client.is_open() {
                        // {:?}: the reason is the peer's text (log injection).
                        self.why = format!("client closed: {} {:?}", f.code, f.reason);
                    }
                }
                // wsproto's Event is non-exhaustive; nothing else exists yet.
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    self.why = format!("protocol error: {e} (close {})", e.close_code());
                    log!(self.shared, "chat: {} error: {e}", self.client.label());
                    self.relay_output();
                    break;
                }
            }
            self.relay_output();
        }
    }

    fn on_control(&mut self) {
        if !self.control.take(Instant::now()) {
            self.close(CloseCode::POLICY_VIOLATION, "too many control frames");
        }
    }

    fn on_text(&mut self, text: &str) {
        // After our Close nothing is answered; a replaced session's client
        // was closed by the takeover, so its requests stop here too.
        if !self.client.is_open() {
            return;
        }
        match self.rate.check(Instant::now()) {
            Rate::Allowed => {}
            Rate::Refused => return self.refuse(&rate_refusal()),
            Rate::RefusedAndClose => {
                self.refuse(&rate_refusal());
                return self.close(CloseCode::POLICY_VIOLATION, "rate limit");
            }
        }
        if self.waiting.is_some() {
            self.resume();
        }
        if self.waiting.is_some() {
            // In order, after the request on the worker.
            if self.held.len() >= HELD_MAX {
                return self.close(CloseCode::POLICY_VIOLATION, "too many requests in flight");
            }
            self.held.push_back(text.to_owned());
            return;
        }
        self.run(text);
    }

    /// Runs one request (rate-checked already).
    fn run(&mut self, text: &str) {
        self.poll_pending();
        if let Err(r) = self.dispatch(text) {
            self.refuse(&r);
            // A locked-out nick's rate_limited counts too.
            if r.code == ErrorCode::RateLimited {
                if let Rate::RefusedAndClose = self.rate.refused(Instant::now()) {
                    self.close(CloseCode::POLICY_VIOLATION, "rate limit");
                }
            }
        }
    }

    /// cluster hook: takes over what a request done on the worker changed,
    /// then runs the requests held meanwhile (until one waits again).
    pub(crate) fn resume(&mut self) {
        let Some(w) = &self.waiting else {
            return;
        };
        let Some(done) = w.take() else {
            return;
        };
        self.waiting = None;
        match done {
            Done::Nothing => {}
            Done::Joined(joined) => self.adopt(joined),
            Done::Entered(name, room, version) => {
                self.rooms.insert(
                    name,
                    Seat {
                        room,
                        users_seen: Some(version),
                    },
                );
            }
        }
        let _cork = crate::client::cork();
        while self.waiting.is_none() && self.client.is_open() {
            let Some(text) = self.held.pop_front() else {
                break;
            };
            self.run(&text);
        }
    }

    /// cluster hook: runs `f` on the cluster worker (it waits on Redis);
    /// the session holds its next requests until it is done. A refusal is
    /// sent to the client from there.
    fn off_reactor(
        &mut self,
        f: impl FnOnce(&Arc<Shared>, &Arc<Client>) -> Result<Done, Refusal> + Send + 'static,
    ) -> Result<(), Refusal> {
        let Some(cluster) = &self.shared.cluster else {
            return Err(Refusal::new(ErrorCode::Unavailable, "not a cluster"));
        };
        let reactors = &self.shared.reactors;
        let w = Arc::new(Waiting {
            state: Mutex::new(WaitState::Waiting),
            reactor: Arc::clone(&reactors[(self.id as usize) % reactors.len()]),
            session: self.id,
        });
        let (shared, client, waiting) = (
            Arc::clone(&self.shared),
            Arc::clone(&self.client),
            Arc::clone(&w),
        );
        cluster.call(Box::new(move || {
            let done = f(&shared, &client).unwrap_or_else(|r| {
                client.send(Client::frame_text(&r.to_json()));
                Done::Nothing
            });
            if let Some(Done::Joined(j)) = waiting.finish(done) {
                // The session ended meanwhile: nobody acts for the member.
                shared.room.leave_all(j.id, &client);
            }
        }))?;
        self.waiting = Some(w);
        Ok(())
    }

    /// Takes the member of a join whose password check ended.
    fn poll_pending(&mut self) {
        if let Some(done) = self.pending.as_ref().and_then(|p| p.poll()) {
            self.pending = None;
            if let Some(joined) = done {
                self.adopt(joined);
            }
        }
    }

    /// Becomes the member a join made (or took over), in its rooms.
    fn adopt(&mut self, joined: Joined) {
        self.member = Some(joined.id);
        self.rooms = joined
            .rooms
            .into_iter()
            .map(|(name, room)| {
                (
                    name,
                    Seat {
                        room,
                        users_seen: None,
                    },
                )
            })
            .collect();
        if let Some(lobby) = self.rooms.get_mut(protocol::LOBBY) {
            lobby.users_seen = Some(joined.users_version);
        }
    }

    /// Checks a request against the session's state, in the contract's
    /// order (`not_joined`, `bad_room`, `not_in_room`, `too_many_rooms` (in
    /// the hub), `already_joined`, then the request's own codes), and runs
    /// it.
    fn dispatch(&mut self, text: &str) -> Result<(), Refusal> {
        let req = protocol::parse(text)?;
        let hub = &self.shared.room;
        if self.pending.is_some() {
            return Err(Refusal::new(
                ErrorCode::NotJoined,
                "the join waits for its password check",
            ));
        }
        let id = match (&req, self.member) {
            (Request::Join { .. }, Some(_)) => {
                return Err(Refusal::new(ErrorCode::AlreadyJoined, "already joined"))
            }
            (
                Request::Join {
                    nick,
                    since,
                    token,
                    password,
                },
                None,
            ) => {
                let gate = accounts::join_gate(
                    &self.shared,
                    &self.client,
                    nick,
                    *since,
                    token.as_deref(),
                    password.as_ref(),
                )?;
                if let Some(pending) = gate {
                    self.pending = Some(pending);
                    return Ok(());
                }
                if self.shared.cluster.is_some() {
                    let (nick, since, token) = (nick.clone(), *since, token.clone());
                    return self.off_reactor(move |shared, client| {
                        let j =
                            shared
                                .room
                                .join(client, &nick, since, token.as_deref(), Gate::Open)?;
                        Ok(Done::Joined(j))
                    });
                }
                let joined = hub.join(&self.client, nick, *since, token.as_deref(), Gate::Open)?;
                self.adopt(joined);
                return Ok(());
            }
            (_, None) => {
                return Err(Refusal::new(ErrorCode::NotJoined, "send a join first"));
            }
            (_, Some(id)) => id,
        };
        if let Some(name) = req.room() {
            protocol::check_room(name)?;
            if !matches!(req, Request::Enter { .. }) && !self.rooms.contains_key(name) {
                return Err(not_in_room());
            }
        }
        let client = &self.client;
        // The seat of the request's room: present (checked above) for every
        // request that uses one.
        let seat = req.room().and_then(|n| self.rooms.get_mut(n));
        match req {
            Request::Join { .. } => Ok(()),
            Request::Message { text, image, .. } => match seat {
                Some(seat)
                    if image
                        .as_deref()
                        .is_some_and(|url| self.shared.media.needs_redis(url)) =>
                {
                    let room = Arc::clone(&seat.room);
                    self.off_reactor(move |shared, client| {
                        let media = &shared.media;
                        room.message(id, client, &text, image.as_deref(), media)?;
                        Ok(Done::Nothing)
                    })
                }
                Some(seat) => {
                    let media = &self.shared.media;
                    seat.room
                        .message(id, client, &text, image.as_deref(), media)
                }
                None => Err(not_in_room()),
            },
            Request::Topic { topic, .. } => match seat {
                Some(seat) => seat.room.set_topic(id, client, &topic),
                None => Err(not_in_room()),
            },
            Request::History { before, limit, .. } => match seat {
                Some(seat) if self.shared.cluster.is_some() => {
                    let room = Arc::clone(&seat.room);
                    self.off_reactor(move |_, client| {
                        room.history(id, client, before, limit)?;
                        Ok(Done::Nothing)
                    })
                }
                Some(seat) => seat.room.history(id, client, before, limit),
                None => Err(not_in_room()),
            },
            Request::Who { after, limit, .. } => {
                let Some(seat) = seat else {
                    return Err(not_in_room());
                };
                let version = seat.room.who(id, client, after.as_deref(), limit)?;
                // The rate check came first (cheap on floods); a `who` whose
                // answer tells this client of changes it would have been
                // told about anyway (joined/left/renamed) is free. Above
                // the presence limit nobody is told, and a churning room
                // would make every page free: then each `who` costs a token.
                if version.is_some() && seat.users_seen != version {
                    self.rate.bucket.refund();
                }
                seat.users_seen = version;
                Ok(())
            }
            Request::Enter { room, since } if self.shared.cluster.is_some() => {
                self.off_reactor(move |shared, client| {
                    let (entered, version) = shared.room.enter(id, client, &room, since)?;
                    Ok(Done::Entered(room, entered, version))
                })
            }
            Request::Enter { room, since } => {
                let (entered, version) = hub.enter(id, client, &room, since)?;
                self.rooms.insert(
                    room,
                    Seat {
                        room: entered,
                        users_seen: Some(version),
                    },
                );
                Ok(())
            }
            Request::Leave { room } => {
                hub.leave(id, client, &room)?;
                self.rooms.remove(&room);
                Ok(())
            }
            Request::Rooms { after } if self.shared.cluster.is_some() => {
                self.off_reactor(move |shared, client| {
                    shared.room.rooms(client, after.as_deref());
                    Ok(Done::Nothing)
                })
            }
            Request::Rooms { after } => {
                hub.rooms(client, after.as_deref());
                Ok(())
            }
            Request::Private { to, text, image } if self.shared.cluster.is_some() => self
                .off_reactor(move |shared, client| {
                    let media = &shared.media;
                    shared
                        .room
                        .private(id, client, &to, &text, image.as_deref(), media)?;
                    Ok(Done::Nothing)
                }),
            Request::Private { to, text, image } => {
                hub.private(id, client, &to, &text, image.as_deref(), &self.shared.media)
            }
            Request::Nick { nick, password } => {
                if accounts::rename_gate(&self.shared, client, id, &nick, password.as_ref())? {
                    return Ok(());
                }
                if self.shared.cluster.is_some() {
                    return self.off_reactor(move |shared, client| {
                        shared.room.rename(id, client, &nick, Gate::Open)?;
                        Ok(Done::Nothing)
                    });
                }
                hub.rename(id, client, &nick, Gate::Open)
            }
            Request::Register { password } => {
                let nick = hub.nick_of(id, client)?;
                self.shared.accounts.register(client, nick, password)
            }
            Request::Unregister { password } => {
                let nick = hub.nick_of(id, client)?;
                self.shared.accounts.unregister(client, nick, password)
            }
        }
    }

    fn refuse(&mut self, r: &Refusal) {
        let sent = self.client.send(Client::frame_text(&r.to_json()));
        self.note(sent);
    }
}

fn rate_refusal() -> Refusal {
    Refusal::new(ErrorCode::RateLimited, "too many messages; slow down")
}
