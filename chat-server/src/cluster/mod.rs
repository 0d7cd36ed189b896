//! Cluster mode (`--redis`, DESIGN.md v2 "Cluster"): several nodes sharing
//! one Redis act as one server.
//!
//! Per node, a fixed number of Redis connections whatever the number of
//! clients:
//! - the **subscriber** thread holds the one subscription of the node: the
//!   channel [`CHANNEL`], whose events a second thread delivers into the
//!   local rooms, and [`accounts::SYNC_CHANNEL`], whose account and image
//!   changes go through a bounded queue ([`SyncMsg`]) to the sync thread
//!   of `media::start_sync` (it keeps the node's replicas of the
//!   registered names and the image index: reloaded after every
//!   (re)subscription, the events read after the subscription applied
//!   after the load, in order; the subscriber never waits on it);
//! - the **publisher** thread drains a bounded queue of [`Job`]s and sends
//!   each batch as one pipeline (one round trip for a burst);
//! - the **keeper** thread heartbeats, reaps dead nodes, and after an
//!   outage restores the node's nicks and presence;
//! - four **worker** threads (pooled command connections) run the
//!   requests that wait on an answer (nick claims, stream reads for
//!   `since` and `history`, the `rooms` list): a reactor hands one the
//!   request as a [`Task`] through a bounded queue and goes on serving its
//!   other clients; the task answers the client itself and wakes the
//!   session's reactor (see `session::Waiting`), so a slow or stopped
//!   Redis never stalls a reactor;
//! - the sync thread holds one more connection while it reloads the
//!   replicas, and `media` pools a few for image bytes (HTTP threads).
//!
//! Ids: a room message gets its id, its stream entry and its publication
//! in one Lua script ([`PUBLISH`](scripts::PUBLISH)), the approach Centrifugo takes: scripts
//! run one at a time, so the order of publication on the one channel is
//! the order of ids, for every room at once. Every node, the sender's
//! included, receives the message from the subscription and fans it out
//! to its local members framed once (the sender's copy is its ack).
//!
//! Resume (`since`) merges two sources without gap nor duplicate: the room
//! is registered locally first (so the subscriber fills its ring from then
//! on), then one script reads the counter `G` and the stream's entries
//! after `since`; under the room lock the greeting is the stream's entries
//! plus the ring's entries above `G`, and the new seat skips live messages
//! up to the greeting's newest id (see [`Remote`]).

pub(crate) mod accounts; // accounts + media hook
pub(crate) mod media; // accounts + media hook
mod scripts;

use crate::accounts::Gate;
use crate::client::Client;
use crate::history::Stored;
use crate::protocol::{ErrorCode, Refusal};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// The cluster's channel of room traffic: every node subscribes once (on
/// the one connection that also follows [`accounts::SYNC_CHANNEL`]).
pub const CHANNEL: &str = "chat:ev";
/// The cluster-wide id counter (room and private messages share it).
const COUNTER: &str = "chat:id";
/// Room topics: room -> topic.
const TOPICS: &str = "chat:topics";
/// The heartbeat sorted set: node id scored by Redis' clock (ms).
const NODES: &str = "chat:nodes";

/// Jobs the publisher may hold before requests get `unavailable`.
const QUEUE: usize = 8192;
/// Events read but not yet delivered, at most; past it the subscriber
/// waits (and Redis buffers, up to its pub/sub output limit).
const EVENTS: usize = 65_536;
/// Worker threads (each with its own command connection while it runs a
/// request): requests of different sessions wait on Redis side by side
/// (one session's run one at a time: it holds its next ones).
const WORKERS: usize = 4;
/// Requests that may wait for the workers before new ones get
/// `unavailable` (each is one or two round trips: a full queue is seconds
/// of a stopped Redis).
const TASKS: usize = 4096;
/// Jobs sent in one pipeline at most.
const BATCH: usize = 512;
/// Sync events (account and image changes) the subscriber may queue for
/// the sync thread; past it they are dropped and the replicas reloaded.
const SYNC_EVENTS: usize = 4096;
/// How long a request waits on Redis at most.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// What `--redis`, `--node-id` and `--node-timeout` say.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://HOST:PORT[/DB]`.
    pub url: String,
    /// This node's name in Redis (no tab, no whitespace).
    pub node_id: String,
    /// A node silent this long is dead: its members are announced `left`.
    pub node_timeout: Duration,
    /// The bounds of the image store in Redis (accounts + media hook).
    pub media: media::MediaLimits,
}

impl ClusterConfig {
    /// A config for `url` with a random node id and the default 15 s timeout.
    ///
    /// ```
    /// let c = chat_server::ClusterConfig::new("redis://127.0.0.1:6379");
    /// assert_eq!(c.node_timeout.as_secs(), 15);
    /// assert_eq!(c.node_id.len(), 16);
    /// ```
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            node_id: random_node_id(),
            node_timeout: Duration::from_secs(15),
            media: media::MediaLimits::default(),
        }
    }
}

/// A random 64-bit node id, hex.
pub fn random_node_id() -> String {
    let mut raw = [0u8; 8];
    if getrandom::getrandom(&mut raw).is_err() {
        raw = crate::room::now_ms().to_le_bytes();
    }
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// Stream entries (newest first) read for a greeting, and the counter's
/// value `G` at the moment of the read: every message of the room with an
/// id up to `G` was in the stream then (within the count read).
#[derive(Debug, Default)]
pub(crate) struct Remote {
    pub counter: u64,
    pub newest_first: Vec<Stored>,
    /// The room's members on other nodes (nick key, nick), read with the
    /// entries (a greeting's read only).
    pub members: Option<Vec<(String, String)>>,
    /// The room's topic (a greeting's read only).
    pub topic: String,
    /// The member was moved here from another node (a resume token):
    /// seated without a notice.
    pub moved: bool,
}

/// A request for the worker thread: runs with Redis' answers, sends the
/// client its reply and hands the session what changed.
pub(crate) type Task = Box<dyn FnOnce() + Send>;

/// Work for the publisher thread, in the order the node produced it.
#[derive(Debug)]
pub(crate) enum Job {
    /// A room or private message: the script allocates the id and puts it
    /// between `prefix` and `suffix`; `stream` is empty for a private one.
    Message {
        stream: String,
        header: String,
        prefix: String,
        suffix: String,
        sender: Arc<Client>,
    },
    /// A member entered (`true`) or left a room on this node; `quiet`
    /// updates the online lists without a notice (a takeover).
    Seat {
        room: String,
        nick: String,
        enter: bool,
        quiet: bool,
    },
    /// A local member renamed: its seats in `rooms` follow.
    Rename {
        rooms: Vec<String>,
        old: String,
        new: String,
    },
    /// A room's new topic; `json` is the `topic` notice every member gets.
    Topic {
        room: String,
        topic: String,
        json: String,
        sender: Arc<Client>,
    },
    /// A nick this node no longer holds (`value` is the claim it made).
    Release { key: String, value: String },
    /// accounts + media hook: session `token` is held by `value` (`node
    /// TAB member`; `set` false: no more, if it still is).
    Token {
        token: String,
        value: String,
        set: bool,
    },
}

/// One node's link to the cluster.
pub(crate) struct Cluster {
    pub node: String,
    client: redis::Client,
    node_timeout: Duration,
    retain: usize,
    log: bool,
    /// The workers' command connections, idle ones (one per worker at
    /// most: a worker takes one for a request and puts it back).
    cmds: Mutex<Vec<redis::Connection>>,
    /// Set by any thread that saw Redis fail; cleared by the keeper once it
    /// has restored the node's state.
    down: AtomicBool,
    /// The subscription is live.
    subscribed: AtomicBool,
    jobs: SyncSender<Job>,
    queue: Mutex<Option<Receiver<Job>>>,
    tasks: SyncSender<Task>,
    task_queue: Mutex<Option<Receiver<Task>>>,
    /// The newest id this node has seen: restores the counter when Redis
    /// comes back empty, so ids keep increasing.
    max_seen: AtomicU64,
    stop: AtomicBool,
    /// Jobs published, and the round trips (pipelines) they took: logged
    /// at shutdown, the cost per message in Redis round trips.
    published: AtomicU64,
    round_trips: AtomicU64,
    /// Some presence or nick job was lost: the keeper resyncs.
    resync_needed: AtomicBool,
    /// The subscriber's side of the queue to the sync thread
    /// (`media::start_sync`), which takes the other side.
    sync_tx: SyncSender<SyncMsg>,
    sync_rx: Mutex<Option<Receiver<SyncMsg>>>,
    /// Loads of the replicas owed (a (re)subscription, a dropped event)
    /// and not yet done: the replicas are in sync at 0.
    loads_owed: AtomicU64,
}

/// What the subscriber hands the sync thread, in the order it read it.
#[derive(Debug)]
pub(crate) enum SyncMsg {
    /// Read the replicas whole from Redis now: the events before this may
    /// be incomplete, every event after it is queued after it (the read
    /// happens after they were subscribed to, so applying them on top,
    /// in order, leaves the replicas as Redis is).
    Load,
    /// An event of [`accounts::SYNC_CHANNEL`].
    Event(Vec<u8>),
}

/// The subscriber's end of the sync queue.
struct SyncLink {
    tx: SyncSender<SyncMsg>,
    /// A load is owed but not queued yet (the queue was full): sync
    /// events are dropped until it is.
    owed: bool,
}

/// What the cluster threads need of the server they serve.
pub(crate) trait Local: Send + Sync + 'static {
    /// A room message (or any JSON with an id) for local room `room`.
    fn deliver(&self, room: &str, id: u64, json: Arc<str>);
    /// A private message for the local members called `to` and `from`.
    fn deliver_private(&self, to_key: &str, from_key: &str, json: &str);
    /// Member `nick` (key `key`) joined (`true`) or left local room `room`
    /// on another node.
    fn presence(&self, room: &str, key: &str, nick: &str, joined: bool, notify: bool);
    /// Member `old_key` of local room `room` is now `new` (key `new_key`),
    /// renamed on another node from `old`.
    fn renamed(&self, room: &str, old_key: &str, new_key: &str, new: &str, old: &str);
    /// A topic set on any node (this one included) for local room `room`.
    fn topic(&self, room: &str, topic: &str, json: &str);
    /// Another node took over local member `member` (nick key `key`) with
    /// its resume token: close it, silently.
    fn kick(&self, key: &str, member: u64);
    /// Every local member: (nick key, claim value, nick, rooms).
    fn members(&self) -> Vec<(String, String, String, Vec<String>)>;
    /// The server is stopping.
    fn stopping(&self) -> bool;
}

impl Cluster {
    /// Checks the URL; connects lazily (the node starts even while Redis
    /// is down, serving local members only).
    pub fn new(c: &crate::ClusterConfig, retain: usize, log: bool) -> Result<Self, String> {
        if c.node_id.is_empty() || c.node_id.chars().any(|ch| ch.is_whitespace()) {
            return Err(format!(
                "--node-id {:?}: must be non-empty, without whitespace",
                c.node_id
            ));
        }
        let client =
            redis::Client::open(c.url.as_str()).map_err(|e| format!("--redis {}: {e}", c.url))?;
        let (jobs, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let (tasks, task_rx) = std::sync::mpsc::sync_channel(TASKS);
        let (sync_tx, sync_rx) = std::sync::mpsc::sync_channel(SYNC_EVENTS);
        Ok(Self {
            node: c.node_id.clone(),
            client,
            node_timeout: c.node_timeout,
            retain: retain.max(1),
            log,
            cmds: Mutex::new(Vec::new()),
            down: AtomicBool::new(true),
            subscribed: AtomicBool::new(false),
            jobs,
            queue: Mutex::new(Some(rx)),
            tasks,
            task_queue: Mutex::new(Some(task_rx)),
            max_seen: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            published: AtomicU64::new(0),
            round_trips: AtomicU64::new(0),
            resync_needed: AtomicBool::new(false),
            sync_tx,
            sync_rx: Mutex::new(Some(sync_rx)),
            loads_owed: AtomicU64::new(1),
        })
    }

    /// Starts the subscriber, deliverer, publisher, worker and keeper
    /// threads.
    pub fn start(self: &Arc<Self>, local: Weak<dyn Local>) -> std::io::Result<()> {
        let rx = self
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| std::io::Error::other("cluster already started"))?;
        let spawn = |name: &str| std::thread::Builder::new().name(name.into());
        // The subscriber only reads; a second thread delivers, corked per
        // run of events already read, so a burst costs each client one
        // write (self-clocked like the reactors: no timer, no added wait).
        let (events, inbox) = std::sync::mpsc::sync_channel::<Vec<u8>>(EVENTS);
        let (me, l) = (Arc::clone(self), local.clone());
        spawn("chat-redis-sub").spawn(move || me.subscriber(&l, &events))?;
        let (me, l) = (Arc::clone(self), local.clone());
        spawn("chat-redis-deliver").spawn(move || me.deliverer(&l, &inbox))?;
        let me = Arc::clone(self);
        spawn("chat-redis-pub").spawn(move || me.publisher(&rx))?;
        let tasks = self
            .task_queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| std::io::Error::other("cluster already started"))?;
        let tasks = Arc::new(Mutex::new(tasks));
        for _ in 0..WORKERS {
            let (me, l, t) = (Arc::clone(self), local.clone(), Arc::clone(&tasks));
            spawn("chat-redis-worker").spawn(move || me.worker(&l, &t))?;
        }
        let me = Arc::clone(self);
        spawn("chat-redis-keeper").spawn(move || me.keeper(&local))?;
        Ok(())
    }

    /// Stops the threads (at their next timeout).
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        let (jobs, trips) = (
            self.published.load(Ordering::Acquire),
            self.round_trips.load(Ordering::Acquire),
        );
        // Even with --quiet: one line, the cost per message in round trips
        // (benches/scripts/cluster_load.sh reads it).
        if jobs > 0 {
            eprintln!(
                "chat: redis publisher: {jobs} jobs in {trips} round trips ({:.3} per job)",
                trips as f64 / jobs as f64
            );
        }
    }

    /// Hands `task` to the worker thread (the caller is a reactor: it must
    /// not wait on Redis); `unavailable` while Redis is down or when the
    /// queue is full.
    pub fn call(&self, task: Task) -> Result<(), Refusal> {
        if !self.available() {
            return Err(unavailable());
        }
        match self.tasks.try_send(task) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Refusal::new(
                ErrorCode::Unavailable,
                "the cluster store (Redis) is slow to answer; try again",
            )),
            Err(TrySendError::Disconnected(_)) => Err(unavailable()),
        }
    }

    /// Runs tasks, one at a time (one of [`WORKERS`]).
    fn worker(&self, local: &Weak<dyn Local>, tasks: &Mutex<Receiver<Task>>) {
        MAY_WAIT.with(|w| w.set(true));
        loop {
            // The receiver is shared: one idle worker waits on it at a time.
            let next = tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .recv_timeout(Duration::from_millis(300));
            match next {
                Ok(task) => {
                    // A bug in one request must not end the worker.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task));
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.stopped(local) {
                        return;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Redis is reachable and the subscription is live.
    pub fn available(&self) -> bool {
        !self.down.load(Ordering::Acquire) && self.subscribed.load(Ordering::Acquire)
    }

    fn mark_down(&self, what: &str, e: &redis::RedisError) {
        if !self.down.swap(true, Ordering::AcqRel) && self.log {
            eprintln!(
                "chat: redis unavailable ({what}: {e}); serving local members only, reconnecting"
            );
        }
    }

    /// Runs `f` on the command connection (connecting if needed), or
    /// answers `unavailable`.
    fn with_cmd<T>(
        &self,
        f: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, Refusal> {
        if !self.available() {
            return Err(unavailable());
        }
        let idle = || self.cmds.lock().unwrap_or_else(|e| e.into_inner());
        let mut held = idle().pop();
        // A connection from before a Redis restart fails once with
        // "dropped" (the command never reached the new server), so one
        // retry on a fresh connection is safe and spares an outage.
        for retry in [false, true] {
            let mut con = match held.take() {
                Some(c) => c,
                None => match self.connect() {
                    Ok(c) => c,
                    Err(e) => {
                        self.mark_down("connect", &e);
                        return Err(unavailable());
                    }
                },
            };
            match f(&mut con) {
                Ok(v) => {
                    idle().push(con);
                    return Ok(v);
                }
                Err(e) if e.is_connection_dropped() && !retry => {}
                Err(e) => {
                    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                        self.mark_down("command", &e);
                    } else {
                        if self.log {
                            eprintln!("chat: redis refused a command: {e}");
                        }
                        idle().push(con);
                    }
                    return Err(unavailable());
                }
            }
        }
        Err(unavailable())
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let con = self.client.get_connection_with_timeout(IO_TIMEOUT)?;
        con.set_read_timeout(Some(IO_TIMEOUT))?;
        con.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(con)
    }

    /// The claim value this node writes for member `member` called `nick`.
    pub fn claim_value(&self, member: u64, nick: &str, token: &str) -> String {
        format!("{}\t{member}\t{nick}\t{token}", self.node)
    }

    /// A join with a resume token for a nick another node holds: takes the
    /// claim and the member's seats over when the token is that member's
    /// (the old node closes its connection). The member's rooms, or `None`
    /// when it is not.
    pub fn take_over(
        &self,
        key: &str,
        token: &str,
        value: &str,
    ) -> Result<Option<Vec<String>>, Refusal> {
        let rooms: Vec<String> = self.with_cmd(|c| {
            redis::cmd("EVAL")
                .arg(scripts::TAKEOVER)
                .arg(3)
                .arg(nick_key(key))
                .arg(nicks_key(&self.node))
                .arg(seats_key(&self.node))
                .arg(token)
                .arg(value)
                .arg(CHANNEL)
                .arg(&self.node)
                .arg(key)
                .query(c)
        })?;
        Ok((!rooms.is_empty()).then_some(rooms))
    }

    /// Claims the nick key `key` cluster-wide with `value` for a local
    /// member (the caller found it free locally, so a claim of this
    /// node's own is stale and taken over); `gate` says how the member
    /// passed the accounts gate. [`Claim::Taken`] when another node holds
    /// it; [`Claim::Registered`] for a registered nick claimed
    /// through [`Gate::Open`] (this node's replica of the accounts had not
    /// heard of the registration yet): the check and the claim are one
    /// script, so no registered nick is ever taken without its password.
    pub fn claim_nick(&self, key: &str, value: &str, gate: Gate) -> Result<Claim, Refusal> {
        let prefix = format!("{}\t", self.node);
        let answer: i64 = self.with_cmd(|c| {
            redis::cmd("EVAL")
                .arg(scripts::CLAIM)
                .arg(3)
                .arg(nick_key(key))
                .arg(nicks_key(&self.node))
                .arg(accounts::ACCOUNTS)
                .arg(value)
                .arg(&prefix)
                .arg(key)
                .arg(if gate == Gate::Passed { "1" } else { "0" })
                .query(c)
        })?;
        Ok(match answer {
            0 => Claim::Claimed,
            2 => Claim::Registered,
            _ => Claim::Taken,
        })
    }

    /// The nick (as registered) of the member called `key` anywhere in the
    /// cluster, if any.
    pub fn nick_owner(&self, key: &str) -> Result<Option<String>, Refusal> {
        let v: Option<String> = self.with_cmd(|c| redis::cmd("GET").arg(nick_key(key)).query(c))?;
        Ok(v.and_then(|v| v.split('\t').nth(2).map(str::to_owned)))
    }

    /// Reads the greeting's history of `room`: entries after `since`
    /// (newest first, at most `count`) and the counter; with `members`,
    /// the room's members on other nodes too (only the first greeting of
    /// a room on this node needs them: events keep the list after that,
    /// and reading a big room's hash per join would cost O(members)).
    /// Lists the room cluster-wide unless `max_rooms` are listed already
    /// (`too_many_rooms`; 0 checks nothing).
    pub fn read_since(
        &self,
        room: &str,
        since: Option<u64>,
        count: usize,
        max_rooms: usize,
        members: bool,
    ) -> Result<Remote, Refusal> {
        let min = since.map_or("-".to_owned(), |s| (s.saturating_add(1)).to_string());
        self.read(room, "+".to_owned(), min, count, (max_rooms, members))
    }

    /// Reads a `history` page: the newest `count` entries before `before`.
    pub fn read_before(
        &self,
        room: &str,
        before: Option<u64>,
        count: usize,
    ) -> Result<Remote, Refusal> {
        let max = match before {
            Some(0) => return Ok(Remote::default()),
            Some(b) => (b - 1).to_string(),
            None => "+".to_owned(),
        };
        self.read(room, max, "-".to_owned(), count, (0, false))
    }

    fn read(
        &self,
        room: &str,
        max: String,
        min: String,
        count: usize,
        (max_rooms, members): (usize, bool),
    ) -> Result<Remote, Refusal> {
        let hash = if members {
            members_key(room)
        } else {
            String::new()
        };
        let raw: Vec<String> = self.with_cmd(|c| {
            redis::cmd("EVAL")
                .arg(scripts::READ)
                .arg(4)
                .arg(COUNTER)
                .arg(stream_key(room))
                .arg(&hash)
                .arg(TOPICS)
                .arg(&max)
                .arg(&min)
                .arg(count.max(1))
                .arg(room)
                .arg(max_rooms)
                .query(c)
        })?;
        if raw.first().is_some_and(|f| f == "full") {
            let n = raw.get(1).map_or("", String::as_str);
            return Err(Refusal::new(
                ErrorCode::TooManyRooms,
                format!("the cluster holds {n} rooms, the most allowed"),
            ));
        }
        let mut it = raw.into_iter();
        let counter = it.next().and_then(|g| g.parse().ok()).unwrap_or(0);
        let topic = it.next().unwrap_or_default();
        let entries: usize = it.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let mut newest_first = Vec::with_capacity(entries);
        for _ in 0..entries {
            let (Some(id), Some(json)) = (it.next(), it.next()) else {
                break;
            };
            let id = id
                .split('-')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            newest_first.push((id, Arc::<str>::from(json)));
        }
        // This node's own members are in the hash too; it knows them.
        let own = format!("{}\t", self.node);
        let members = members.then(|| {
            let mut out = Vec::new();
            while let (Some(key), Some(v)) = (it.next(), it.next()) {
                if v.starts_with(&own) {
                    continue;
                }
                if let Some((_, nick)) = v.split_once('\t') {
                    out.push((key, nick.to_owned()));
                }
            }
            out
        });
        Ok(Remote {
            counter,
            newest_first,
            members,
            topic,
            moved: false,
        })
    }

    /// The cluster's rooms after the name `after` (at most `count`, sorted):
    /// (name, topic, members on other nodes).
    pub fn rooms(
        &self,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<(String, String, usize)>, Refusal> {
        let raw: Vec<String> = self.with_cmd(|c| {
            redis::cmd("EVAL")
                .arg(scripts::ROOMS)
                .arg(0)
                .arg(&self.node)
                .arg(after.unwrap_or(""))
                .arg(count.max(1))
                .query(c)
        })?;
        Ok(raw
            .chunks_exact(3)
            .map(|r| (r[0].clone(), r[1].clone(), r[2].parse().unwrap_or(0)))
            .collect())
    }

    /// Queues a job; `unavailable` while Redis is down or the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), Refusal> {
        if !self.available() {
            return Err(unavailable());
        }
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Refusal::new(
                ErrorCode::Unavailable,
                "the cluster link is saturated; try again",
            )),
            Err(TrySendError::Disconnected(_)) => Err(unavailable()),
        }
    }

    /// Queues presence/cleanup work. It never refuses the request it
    /// belongs to: a job lost (queue full, Redis down, batch refused) makes
    /// the keeper resync the node's nicks and seats at its next beat.
    pub fn submit_quiet(&self, job: Job) {
        if self.jobs.try_send(job).is_err() {
            self.resync_needed.store(true, Ordering::Release);
        }
    }

    /// A room message to publish: `prefix` ends where the id goes.
    pub fn room_job(
        &self,
        room: &str,
        prefix: String,
        suffix: String,
        sender: &Arc<Client>,
    ) -> Job {
        Job::Message {
            stream: stream_key(room),
            header: format!("M\t{room}\t"),
            prefix,
            suffix,
            sender: Arc::clone(sender),
        }
    }

    /// A topic for `room`, to store and publish.
    pub fn topic_job(&self, room: &str, topic: &str, json: String, sender: &Arc<Client>) -> Job {
        Job::Topic {
            room: room.to_owned(),
            topic: topic.to_owned(),
            json,
            sender: Arc::clone(sender),
        }
    }

    /// A private message from `from_key` to `to_key`.
    pub fn private_job(
        &self,
        to_key: &str,
        from_key: &str,
        prefix: String,
        suffix: String,
        sender: &Arc<Client>,
    ) -> Job {
        Job::Message {
            stream: String::new(),
            header: format!("P\t{to_key}\t{from_key}\t"),
            prefix,
            suffix,
            sender: Arc::clone(sender),
        }
    }

    fn stopped(&self, local: &Weak<dyn Local>) -> bool {
        self.stop.load(Ordering::Acquire) || local.upgrade().map_or(true, |l| l.stopping())
    }

    /// The one subscription of the node ([`CHANNEL`] and
    /// [`accounts::SYNC_CHANNEL`]): hands room traffic to the deliverer
    /// and sync events to the sync thread, owes the replicas a load after
    /// each (re)subscription, and reconnects with backoff when the link
    /// drops.
    fn subscriber(&self, local: &Weak<dyn Local>, events: &SyncSender<Vec<u8>>) {
        let mut backoff = Backoff::new();
        // The first load is owed from the start (`loads_owed` is 1).
        let mut sync = SyncLink {
            tx: self.sync_tx.clone(),
            owed: true,
        };
        while !self.stopped(local) {
            let mut con = match self.connect() {
                Ok(c) => c,
                Err(e) => {
                    self.mark_down("subscribe", &e);
                    backoff.sleep();
                    continue;
                }
            };
            let mut ps = con.as_pubsub();
            // One channel per SUBSCRIBE: the crate returns on the first
            // confirmation, and the replicas' load must not start before
            // the sync channel is confirmed too (an event published
            // between the load and the subscription would be lost).
            let ok = ps
                .subscribe(CHANNEL)
                .and_then(|()| ps.subscribe(accounts::SYNC_CHANNEL))
                .and_then(|()| ps.set_read_timeout(Some(Duration::from_millis(300))));
            if let Err(e) = ok {
                self.mark_down("subscribe", &e);
                backoff.sleep();
                continue;
            }
            self.subscribed.store(true, Ordering::Release);
            backoff = Backoff::new();
            loop {
                // Every sync event read from now on is queued after the
                // load (owed since the subscription or a dropped event),
                // which goes as soon as the queue has room, whatever the
                // channel the traffic comes on.
                self.send_load(&mut sync);
                match ps.get_message() {
                    Ok(msg) if msg.get_channel_name() == accounts::SYNC_CHANNEL => {
                        self.send_sync(&mut sync, msg.get_payload_bytes());
                    }
                    Ok(msg) => {
                        if events.send(msg.get_payload_bytes().to_vec()).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.is_timeout() => {
                        if self.stopped(local) {
                            return;
                        }
                    }
                    Err(e) => {
                        self.subscribed.store(false, Ordering::Release);
                        self.owe_load(&mut sync);
                        self.mark_down("subscription", &e);
                        break;
                    }
                }
            }
        }
    }

    /// The replicas (registered names, image index) may miss events from
    /// now on: unsynced until a load is sent and done.
    fn owe_load(&self, sync: &mut SyncLink) {
        if !sync.owed {
            sync.owed = true;
            self.loads_owed.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Queues the owed load, if the queue has room (never waits: the same
    /// thread reads the room traffic).
    fn send_load(&self, sync: &mut SyncLink) {
        if sync.owed && sync.tx.try_send(SyncMsg::Load).is_ok() {
            sync.owed = false;
        }
    }

    /// Queues one event of [`accounts::SYNC_CHANNEL`] behind the owed
    /// load; while the load cannot be queued, or when the queue is full,
    /// the event is dropped and a (new) load owed instead: the load reads
    /// Redis after the event happened, so nothing is lost.
    fn send_sync(&self, sync: &mut SyncLink, payload: &[u8]) {
        self.send_load(sync);
        if sync.owed {
            return;
        }
        if sync.tx.try_send(SyncMsg::Event(payload.to_vec())).is_err() {
            self.owe_load(sync);
        }
    }

    /// The replicas of the registered names and of the image index hold
    /// every change Redis made: loaded since the last (re)subscription,
    /// and no event dropped since.
    pub(crate) fn replicas_synced(&self) -> bool {
        self.loads_owed.load(Ordering::Acquire) == 0
    }

    /// Delivers the events the subscriber read, in order, corking this
    /// thread's writes over each run of events already waiting.
    fn deliverer(&self, local: &Weak<dyn Local>, inbox: &Receiver<Vec<u8>>) {
        loop {
            let first = match inbox.recv_timeout(Duration::from_millis(300)) {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout) => {
                    if self.stopped(local) {
                        return;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let Some(l) = local.upgrade() else { return };
            let _cork = crate::client::cork();
            self.handle_event(&*l, &first);
            for _ in 1..BATCH {
                match inbox.try_recv() {
                    Ok(e) => self.handle_event(&*l, &e),
                    Err(_) => break,
                }
            }
        }
    }

    /// One event from [`CHANNEL`]: `M room id json`, `P to from id json`,
    /// `J node room key nick` or `L node room key nick` (tab-separated;
    /// nicks have no control characters and room names no tab).
    fn handle_event(&self, local: &dyn Local, payload: &[u8]) {
        let Ok(text) = std::str::from_utf8(payload) else {
            return;
        };
        let mut f = text.splitn(5, '\t');
        match f.next() {
            Some("M") => {
                let mut f = text[2..].splitn(3, '\t');
                if let (Some(room), Some(Ok(id)), Some(json)) =
                    (f.next(), f.next().map(str::parse::<u64>), f.next())
                {
                    self.max_seen.fetch_max(id, Ordering::AcqRel);
                    local.deliver(room, id, json.into());
                }
            }
            Some("P") => {
                if let (Some(to), Some(from), Some(Ok(id)), Some(json)) = (
                    f.next(),
                    f.next(),
                    f.next().map(str::parse::<u64>),
                    f.next(),
                ) {
                    self.max_seen.fetch_max(id, Ordering::AcqRel);
                    local.deliver_private(to, from, json);
                }
            }
            Some("R") => {
                let mut f = text[2..].splitn(6, '\t');
                if let (
                    Some(node),
                    Some(room),
                    Some(old_key),
                    Some(new_key),
                    Some(new),
                    Some(old),
                ) = (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
                {
                    if node != self.node {
                        local.renamed(room, old_key, new_key, new, old);
                    }
                }
            }
            Some("T") => {
                let mut f = text[2..].splitn(2, '\t');
                if let (Some(room), Some(json)) = (f.next(), f.next()) {
                    let topic = serde_json::from_str::<serde_json::Value>(json)
                        .ok()
                        .and_then(|v| v["topic"].as_str().map(str::to_owned));
                    if let Some(topic) = topic {
                        local.topic(room, &topic, json);
                    }
                }
            }
            Some("K") => {
                if let (Some(node), Some(key), Some(Ok(member))) =
                    (f.next(), f.next(), f.next().map(str::parse::<u64>))
                {
                    if node == self.node {
                        local.kick(key, member);
                    }
                }
            }
            Some(kind @ ("J" | "L" | "j" | "l")) => {
                let (Some(node), Some(room), Some(key), Some(nick)) =
                    (f.next(), f.next(), f.next(), f.next())
                else {
                    return;
                };
                // This node told its own members already.
                if node == self.node {
                    return;
                }
                let joined = kind.eq_ignore_ascii_case("j");
                local.presence(room, key, nick, joined, kind == "J" || kind == "L");
            }
            _ => {}
        }
    }

    /// Drains the job queue in batches, one pipeline (one round trip) per
    /// batch.
    fn publisher(&self, rx: &Receiver<Job>) {
        let mut con: Option<redis::Connection> = None;
        loop {
            let first = match rx.recv_timeout(Duration::from_millis(300)) {
                Ok(j) => j,
                Err(RecvTimeoutError::Timeout) => {
                    if self.stop.load(Ordering::Acquire) {
                        return;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            if con.is_none() {
                match self.connect() {
                    Ok(c) => con = Some(c),
                    Err(e) => {
                        self.mark_down("publish", &e);
                        refuse_all(&batch);
                        continue;
                    }
                }
            }
            let mut pipe = redis::pipe();
            for job in &batch {
                self.add_to(&mut pipe, job);
            }
            let Some(c) = con.as_mut() else { continue };
            let mut sent = pipe.query::<redis::Value>(c);
            if sent.as_ref().is_err_and(|e| e.is_connection_dropped()) {
                // A connection from before a Redis restart: the batch never
                // reached the new server, so it is sent once more.
                con = self.connect().ok();
                if let Some(c) = con.as_mut() {
                    sent = pipe.query::<redis::Value>(c);
                }
            }
            self.round_trips.fetch_add(1, Ordering::AcqRel);
            if sent.is_ok() {
                self.published
                    .fetch_add(batch.len() as u64, Ordering::AcqRel);
            }
            if let Err(e) = sent {
                if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                    con = None;
                    self.mark_down("publish", &e);
                } else if self.log {
                    eprintln!("chat: redis refused a batch: {e}");
                }
                refuse_all(&batch);
                if batch.iter().any(|j| {
                    matches!(
                        j,
                        Job::Seat { .. } | Job::Release { .. } | Job::Rename { .. }
                    )
                }) {
                    self.resync_needed.store(true, Ordering::Release);
                }
            }
        }
    }

    fn add_to(&self, pipe: &mut redis::Pipeline, job: &Job) {
        match job {
            Job::Message {
                stream,
                header,
                prefix,
                suffix,
                ..
            } => {
                pipe.cmd("EVAL")
                    .arg(scripts::PUBLISH)
                    .arg(2)
                    .arg(COUNTER)
                    .arg(stream)
                    .arg(prefix)
                    .arg(suffix)
                    .arg(self.retain)
                    .arg(CHANNEL)
                    .arg(header)
                    .arg(trim_mode(self.retain))
                    .ignore();
            }
            Job::Seat {
                room,
                nick,
                enter,
                quiet,
            } => {
                let key = crate::protocol::nick_key(nick);
                let seat = format!("{room}\t{key}\t{nick}");
                let kind = match (*enter, *quiet) {
                    (true, false) => 'J',
                    (false, false) => 'L',
                    (true, true) => 'j',
                    (false, true) => 'l',
                };
                pipe.cmd("EVAL")
                    .arg(scripts::SEAT)
                    .arg(2)
                    .arg(seats_key(&self.node))
                    .arg(members_key(room))
                    .arg(&seat)
                    .arg(if *enter { "1" } else { "0" })
                    .arg(CHANNEL)
                    .arg(format!("{kind}\t{}\t{seat}", self.node))
                    .arg(&key)
                    .arg(format!("{}\t{nick}", self.node))
                    .ignore();
            }
            Job::Rename { rooms, old, new } => {
                let cmd = pipe
                    .cmd("EVAL")
                    .arg(scripts::RENAME)
                    .arg(1)
                    .arg(seats_key(&self.node))
                    .arg(&self.node)
                    .arg(CHANNEL)
                    .arg(crate::protocol::nick_key(old))
                    .arg(old)
                    .arg(crate::protocol::nick_key(new))
                    .arg(new);
                for room in rooms {
                    cmd.arg(room);
                }
                cmd.ignore();
            }
            Job::Topic {
                room, topic, json, ..
            } => {
                pipe.cmd("EVAL")
                    .arg(scripts::TOPIC)
                    .arg(1)
                    .arg(TOPICS)
                    .arg(room)
                    .arg(topic)
                    .arg(CHANNEL)
                    .arg(format!("T\t{room}\t{json}"))
                    .ignore();
            }
            Job::Release { key, value } => {
                pipe.cmd("EVAL")
                    .arg(scripts::RELEASE)
                    .arg(2)
                    .arg(nick_key(key))
                    .arg(nicks_key(&self.node))
                    .arg(value)
                    .arg(key)
                    .ignore();
            }
            Job::Token { token, value, set } => media::token_job(pipe, token, value, *set),
        }
    }

    /// Heartbeats every third of the node timeout, reaps dead nodes, and
    /// after an outage restores this node's nicks and seats (announcing
    /// its members again if the cluster had declared it dead).
    fn keeper(&self, local: &Weak<dyn Local>) {
        let period = (self.node_timeout / 3).max(Duration::from_millis(100));
        let mut con: Option<redis::Connection> = None;
        let mut first = true;
        let mut backoff = Backoff::new();
        while !self.stopped(local) {
            let Some(l) = local.upgrade() else { return };
            match self.keep(&mut con, &*l, first) {
                Ok(true) => {
                    first = false;
                    backoff = Backoff::new();
                    drop(l);
                    self.sleep(period, local);
                }
                Ok(false) => {
                    // Redis answers but the subscription is not back yet.
                    drop(l);
                    self.sleep(Duration::from_millis(100), local);
                }
                Err(e) => {
                    con = None;
                    if !(e.is_io_error() || e.is_timeout() || e.is_connection_dropped()) && self.log
                    {
                        // A script refused: a bug, not an outage; say so.
                        eprintln!("chat: redis refused the heartbeat: {e}");
                    }
                    self.mark_down("heartbeat", &e);
                    drop(l);
                    backoff.sleep();
                }
            }
        }
    }

    fn sleep(&self, d: Duration, local: &Weak<dyn Local>) {
        let end = Instant::now() + d;
        while Instant::now() < end && !self.stopped(local) {
            std::thread::sleep(Duration::from_millis(50).min(d));
        }
    }

    fn keep(
        &self,
        con: &mut Option<redis::Connection>,
        local: &dyn Local,
        first: bool,
    ) -> redis::RedisResult<bool> {
        if con.is_none() {
            *con = Some(self.connect()?);
        }
        let Some(c) = con.as_mut() else {
            return Ok(false);
        };
        let timeout_ms = self.node_timeout.as_millis() as u64;
        // On the first beat, whatever a former run under this node id left
        // (a crash, then a restart with the same --node-id) is reaped.
        let forced = if first { self.node.as_str() } else { "" };
        let _reaped: i64 = redis::cmd("EVAL")
            .arg(scripts::BEAT)
            .arg(1)
            .arg(NODES)
            .arg(&self.node)
            .arg(timeout_ms)
            .arg(CHANNEL)
            .arg(forced)
            .query(c)?;
        if !self.down.load(Ordering::Acquire) && self.resync_needed.swap(false, Ordering::AcqRel) {
            self.resync(c, local)?;
        }
        if self.down.load(Ordering::Acquire) {
            if !self.subscribed.load(Ordering::Acquire) || !self.replicas_synced() {
                // Not up until the subscription is back, so no message of
                // ours goes unseen by our own members, and the replicas
                // are loaded, so a join is not refused for want of them.
                return Ok(false);
            }
            self.resync(c, local)?;
            self.down.store(false, Ordering::Release);
            if self.log && !first {
                eprintln!("chat: redis available again; nicks and presence restored");
            }
        }
        Ok(true)
    }

    /// Writes this node's members back into Redis after an outage: the
    /// counter's floor, nick claims (freeing those of members gone
    /// meanwhile), and seats, publishing `left`/`joined` for what the other
    /// nodes missed (every seat when the node was reaped meanwhile or
    /// Redis lost its data).
    fn resync(&self, c: &mut redis::Connection, local: &dyn Local) -> redis::RedisResult<()> {
        let members = local.members();
        let mut nicks = redis::cmd("EVAL");
        nicks
            .arg(scripts::RESYNC_NICKS)
            .arg(0)
            .arg(&self.node)
            .arg(media::TOKEN_TTL_SECS);
        let mut seats = redis::cmd("EVAL");
        seats
            .arg(scripts::RESYNC_SEATS)
            .arg(0)
            .arg(&self.node)
            .arg(CHANNEL);
        for (key, value, nick, rooms) in &members {
            nicks.arg(key).arg(value);
            for room in rooms {
                seats.arg(format!("{room}\t{key}\t{nick}"));
            }
        }
        let (lost,): (i64,) = redis::pipe()
            .cmd("EVAL")
            .arg(scripts::FLOOR)
            .arg(1)
            .arg(COUNTER)
            .arg(self.max_seen.load(Ordering::Acquire))
            .ignore()
            .add_command(nicks)
            .add_command(seats)
            .ignore()
            .query(c)?;
        if lost > 0 && self.log {
            eprintln!(
                "chat: {lost} nicks of this node were taken on other nodes during the outage"
            );
        }
        Ok(())
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .field("available", &self.available())
            .finish_non_exhaustive()
    }
}

fn refuse_all(batch: &[Job]) {
    for job in batch {
        if let Job::Message { sender, .. } | Job::Topic { sender, .. } = job {
            sender.send(sender.frame(&unavailable().to_json()));
        }
    }
}

/// `unavailable`: Redis cannot be reached; local members are still served.
pub(crate) fn unavailable() -> Refusal {
    Refusal::new(
        ErrorCode::Unavailable,
        "the cluster store (Redis) is unreachable; only this node's members are served until it returns",
    )
}

/// The answer to [`Cluster::claim_nick`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    Claimed,
    /// Another node holds the nick.
    Taken,
    /// The nick is registered and the claim came through [`Gate::Open`].
    Registered,
}

thread_local! {
    /// Set on the cluster's worker threads, which may wait on Redis; a
    /// reactor never may.
    static MAY_WAIT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread may wait on Redis (it is a cluster worker): checks
/// that answer from a replica on a reactor ask Redis instead on a miss.
pub(crate) fn may_wait() -> bool {
    MAY_WAIT.with(std::cell::Cell::get)
}

/// `unavailable` for a check the replicas answer while they are being
/// (re)loaded: a reactor never waits on Redis for them instead.
pub(crate) fn reloading() -> Refusal {
    Refusal::new(
        ErrorCode::Unavailable,
        "this node is loading the registered nicks and images from the cluster store (Redis); try again",
    )
}

/// How a room's stream is trimmed to `--retain-messages` on each append:
/// `~` (whole macro nodes, Redis' cheap way, keeping at most ~100 more) for
/// the usual large retentions, exact (`=`) for small ones, where 100 more
/// would be most of what a person asked to keep.
fn trim_mode(retain: usize) -> &'static str {
    if retain >= EXACT_TRIM_BELOW {
        "~"
    } else {
        "="
    }
}

/// Retentions below this are trimmed exactly (see [`trim_mode`]).
const EXACT_TRIM_BELOW: usize = 10_000;

fn stream_key(room: &str) -> String {
    format!("chat:s:{room}")
}
fn nick_key(key: &str) -> String {
    format!("chat:nick:{key}")
}
fn nicks_key(node: &str) -> String {
    format!("chat:nicks:{node}")
}
fn members_key(room: &str) -> String {
    format!("chat:m:{room}")
}
fn seats_key(node: &str) -> String {
    format!("chat:seats:{node}")
}

/// 100 ms doubling to 2 s.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(Duration::from_millis(100))
    }
    fn sleep(&mut self) {
        std::thread::sleep(self.0);
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(rx: &Receiver<SyncMsg>) -> Vec<String> {
        rx.try_iter()
            .map(|m| match m {
                SyncMsg::Load => "load".to_owned(),
                SyncMsg::Event(e) => String::from_utf8(e).unwrap(),
            })
            .collect()
    }

    /// The subscriber's side of the sync queue: a full queue drops the
    /// event, marks the replicas unsynced at once and owes a load, which
    /// is queued before any later event; the replicas are in sync only
    /// once every owed load is done (the sync thread's part is simulated).
    #[test]
    fn an_overflowing_sync_queue_owes_a_load_queued_before_later_events() {
        let c = Cluster::new(&crate::ClusterConfig::new("redis://127.0.0.1:1"), 10, false).unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let mut link = SyncLink { tx, owed: true };
        assert!(!c.replicas_synced(), "unsynced before the first load");
        c.send_load(&mut link);
        c.send_sync(&mut link, b"e1");
        assert!(!link.owed);
        // Full: e2 is dropped, a second load owed.
        c.send_sync(&mut link, b"e2");
        assert!(link.owed);
        assert_eq!(c.loads_owed.load(Ordering::Acquire), 2);
        // Still full: e3 is dropped too (the owed load covers it).
        c.send_sync(&mut link, b"e3");
        assert_eq!(c.loads_owed.load(Ordering::Acquire), 2);
        // The sync thread takes the first load and e1.
        assert_eq!(kinds(&rx), ["load", "e1"]);
        c.loads_owed.fetch_sub(1, Ordering::AcqRel);
        assert!(!c.replicas_synced(), "e2 and e3 are not in the replicas");
        // Room again: the owed load goes first, then e4.
        c.send_sync(&mut link, b"e4");
        assert!(!link.owed);
        assert_eq!(kinds(&rx), ["load", "e4"]);
        c.loads_owed.fetch_sub(1, Ordering::AcqRel);
        assert!(c.replicas_synced());
        // A lost subscription owes one load, however often it is noted.
        c.owe_load(&mut link);
        c.owe_load(&mut link);
        assert_eq!(c.loads_owed.load(Ordering::Acquire), 1);
        c.send_load(&mut link);
        c.send_load(&mut link);
        assert_eq!(kinds(&rx), ["load"]);
    }
}
