//! One room: its members (with the nick each shows), topic, history ring,
//! presence and fan-out. The server-wide part (nick registry, tokens, the
//! room map, private messages) is the [`Hub`](crate::hub::Hub).
//!
//! One mutex per room guards that room alone, so a message takes only its
//! room's lock: rooms never contend with each other, and the message path
//! never touches a server-wide lock. A broadcast is serialized and framed
//! once while holding it, and handed to each member with a non-blocking
//! send ([`Client::send`]), so every member sees the room's events in the
//! same order and a slow member costs the others nothing but a queue push.
//! Lock order: the hub's registry, then a room; a room never calls back.
//!
//! Presence scales (DESIGN.md, "Presence that scales"), per room: `joined`,
//! `left` and `renamed` go to every member only while the room has at most
//! `presence_limit` members, counted after the change. Above it a join
//! costs O(1) sends instead of O(members): members get a `presence` count,
//! at most one per second while the count moves, and read the list in
//! pages (`who` with `after`/`limit`, sorted by case-folded nick).

use crate::client::{Client, Outgoing};
use crate::cluster::{Cluster, Remote}; // cluster hook
use crate::history::{Bound as Hist, History, Stored};
use crate::media::Media;
use crate::protocol::{nick_key, ErrorCode, Refusal, TOPIC_MAX_CHARS, WHO_LIMIT_DEFAULT};
use crate::store::{HistoryRead, ImageRef, Record, RoomRow, Store};
use serde_json::json;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The shortest gap between two `presence` counts (DESIGN.md: "at most one
/// per second").
pub const PRESENCE_EVERY: Duration = Duration::from_secs(1);

/// Largest payload of a reply to a client's own request (`welcome`,
/// `entered`, `history`, `users`, `rooms`): DESIGN.md, "Replies are
/// bounded". It holds the newest history messages that fit, and
/// `"more":true` says older ones exist.
pub const REPLY_MAX_BYTES: usize = 256 << 10;

/// The room every session enters on `join`; never forgotten.
pub use crate::protocol::LOBBY;

/// A member's handle, held by the session that joined it (or took it over).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberId(pub(crate) u64);

/// What every room shares (owned by the hub): limits and the one id
/// counter of the server.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub history_len: usize,
    pub max_text: usize,
    /// Payload bound of a reply: [`REPLY_MAX_BYTES`], or less when the
    /// per-client queue is small, so one reply never trips it.
    pub reply_max: usize,
    /// Members up to which presence notices are sent one by one.
    pub presence_limit: usize,
    pub log: bool,
    /// The next message id, server-wide (DESIGN.md v2: "one increasing
    /// counter for the whole server"). Taken under the lock of the room
    /// the message goes to, so within a room ids increase in broadcast and
    /// history order.
    next_id: AtomicU64,
    /// Some room waits for [`PRESENCE_EVERY`] to send a count: lets the
    /// reactors skip [`Hub::tick`](crate::hub::Hub::tick) while none does.
    pub presence_pending: AtomicBool,
    /// Where messages, rooms and topics are persisted (`None`:
    /// `--ephemeral`).
    pub store: Option<Arc<Store>>,
    /// cluster hook: the node's link when `--redis` is given; ids then
    /// come from Redis and messages reach the room through it.
    pub cluster: Option<Arc<Cluster>>,
}

impl Ctx {
    pub fn new(
        history_len: usize,
        max_text: usize,
        max_queue: usize,
        presence_limit: usize,
        log: bool,
        store: Option<Arc<Store>>,
    ) -> Self {
        Self {
            history_len,
            max_text,
            reply_max: REPLY_MAX_BYTES.min(max_queue / 2),
            presence_limit,
            log,
            // With a store, ids continue above every earlier run's.
            next_id: AtomicU64::new(store.as_ref().map_or(1, |s| s.first_id())),
            presence_pending: AtomicBool::new(false),
            store,
            cluster: None,
        }
    }

    /// A fresh message id (room and private messages share the counter).
    pub fn take_id(&self) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Some(store) = &self.store {
            // The store persists a mark ahead of the ids in use (in
            // blocks), so no id is handed out twice, even after a crash.
            store.claim_id(id);
        }
        id
    }

    /// `too_long` for a text over `--max-text` characters.
    pub fn check_len(&self, text: &str) -> Result<(), Refusal> {
        // Byte length bounds the character count from above, so most texts
        // skip the count.
        if text.len() > self.max_text && text.chars().count() > self.max_text {
            return Err(Refusal::new(
                ErrorCode::TooLong,
                format!("text is over {} characters", self.max_text),
            ));
        }
        Ok(())
    }

    fn notices(&self, members: usize) -> bool {
        members <= self.presence_limit
    }
}

/// One chat room.
#[derive(Debug)]
pub struct Room {
    /// cluster hook: the name, for the room's Redis stream.
    name: String,
    /// The room's name as a JSON string (names need no escaping: `a-z 0-9 - _`).
    quoted: String,
    ctx: Arc<Ctx>,
    state: Mutex<State>,
    /// This room's count waits for its second (see [`Ctx::presence_pending`]).
    pending: AtomicBool,
    /// cluster hook: requests between their registry steps (waiting on
    /// Redis) that will seat a member here: an empty room is not
    /// forgotten meanwhile.
    pins: AtomicUsize,
}

#[derive(Debug)]
struct State {
    members: BTreeMap<MemberId, Seat>,
    /// Ordered by key, which is the order of the online list.
    by_nick: BTreeMap<String, MemberId>,
    /// Bumped whenever the online list changes (enter, leave, rename).
    version: u64,
    history: History,
    topic: String,
    /// When the last `presence` count went out, and the count it told.
    presence_sent: Option<(Instant, usize)>,
    /// The store has a row for this room (so it is listed after a restart).
    row_stored: bool,
    /// cluster hook: members on other nodes (nick key -> nick), from the
    /// first greeting's read on, then kept by their presence events.
    remote: Option<BTreeMap<String, String>>,
    /// cluster hook: presence, rename and topic events that arrived while
    /// the first greeting's read was out (`remote` still `None`, the room
    /// pinned): replayed, in order, over the read's snapshot. Each is a
    /// set operation, so events the snapshot already holds change nothing,
    /// and none that came after the read is lost. At most [`EARLY_MAX`].
    early: VecDeque<Early>,
}

/// cluster hook: an event kept for the first greeting (see `State::early`).
#[derive(Debug)]
enum Early {
    Presence {
        key: String,
        nick: String,
        joined: bool,
    },
    Rename {
        old_key: String,
        new_key: String,
        new: String,
    },
    Topic(String),
}

/// Events kept while a room's first greeting reads Redis (a read takes a
/// round trip; past this many, the oldest are dropped, as all were before).
const EARLY_MAX: usize = 4096;

/// A member in this room: the nick it shows here and its connection.
#[derive(Debug)]
struct Seat {
    nick: String,
    client: Arc<Client>,
    /// cluster hook: messages up to this id were in the seat's greeting
    /// (read from the stream), so the live copies are skipped.
    floor: u64,
}

/// What a reply to entering describes: the `join`'s welcome, or an
/// `entered`.
pub(crate) enum Greeting<'a> {
    Welcome { nick: &'a str, token: &'a str },
    Entered,
}

impl Room {
    pub(crate) fn new(name: &str, ctx: Arc<Ctx>) -> Self {
        Self {
            name: name.to_owned(),
            quoted: json!(name).to_string(),
            state: Mutex::new(State {
                members: BTreeMap::new(),
                by_nick: BTreeMap::new(),
                version: 0,
                history: History::new(ctx.history_len),
                topic: String::new(),
                presence_sent: None,
                row_stored: false,
                remote: None,
                early: VecDeque::new(),
            }),
            ctx,
            pending: AtomicBool::new(false),
            pins: AtomicUsize::new(0),
        }
    }

    /// cluster hook: the name (the room's Redis keys).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// cluster hook: the list of members on other nodes is kept here
    /// already (read with the room's first greeting on this node).
    pub(crate) fn knows_remote(&self) -> bool {
        self.lock().remote.is_some()
    }

    /// cluster hook: a request will seat a member here (see `pins`).
    pub(crate) fn pin(&self) {
        self.pins.fetch_add(1, Ordering::AcqRel);
    }

    /// The request that pinned the room is done. True when the room is
    /// then unused: no member, no message, no topic, no other pin.
    pub(crate) fn unpin(&self) -> bool {
        self.pins.fetch_sub(1, Ordering::AcqRel);
        self.forgettable()
    }

    /// No member, no message, no topic, no pin: the hub forgets it
    /// (never the lobby: the hub checks).
    pub(crate) fn forgettable(&self) -> bool {
        let st = self.lock();
        st.members.is_empty()
            && !st.history.is_used()
            && st.topic.is_empty()
            && self.pins.load(Ordering::Acquire) == 0
    }

    /// A room kept by the store: its topic, the newest `ring` messages
    /// (oldest first) and whether the store holds older ones.
    pub(crate) fn stored(
        name: &str,
        ctx: Arc<Ctx>,
        topic: String,
        ring: Vec<Stored>,
        older: bool,
    ) -> Self {
        let room = Self::new(name, ctx);
        {
            let mut st = room.lock();
            st.topic = topic;
            st.history.load(ring, older);
            st.row_stored = true;
        }
        room
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update below leaves the maps consistent before any call that
        // could panic, so a poisoned lock still guards valid state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts member `id` (showing `nick`, connected by `client`) in the room
    /// if it is not there yet, and sends `client` the greeting: the room's
    /// users, topic and the newest history with id > `since` that fits.
    /// A new member's `joined` goes to the others (unless `remote` says it
    /// moved here from another node, which nobody hears).
    /// Returns the membership version of the users list sent.
    pub(crate) fn enter(
        &self,
        id: MemberId,
        nick: &str,
        client: &Arc<Client>,
        since: Option<u64>,
        greeting: Greeting<'_>,
        remote: Option<Remote>,
    ) -> u64 {
        // cluster hook: a member moved here from another node is seated
        // without a notice.
        let announce = remote.as_ref().map_or(true, |r| !r.moved);
        let mut st = self.lock();
        // cluster hook: the greeting's history is the stream's entries
        // (ids up to the counter read with them) plus what the ring got
        // since; live copies up to its newest id are skipped.
        let merged = remote.map(|r| {
            if st.remote.is_none() {
                // The read ran after the room was registered and pinned:
                // the events since are in `early`, replayed over it.
                let mut remote: BTreeMap<String, String> =
                    r.members.unwrap_or_default().into_iter().collect();
                st.topic = r.topic;
                for e in std::mem::take(&mut st.early) {
                    match e {
                        Early::Presence { key, nick, joined } => {
                            if joined {
                                remote.insert(key, nick);
                            } else {
                                remote.remove(&key);
                            }
                        }
                        Early::Rename {
                            old_key,
                            new_key,
                            new,
                        } => {
                            remote.remove(&old_key);
                            remote.insert(new_key, new);
                        }
                        Early::Topic(t) => st.topic = t,
                    }
                }
                st.remote = Some(remote);
            }
            let g = r.counter;
            let mut all: Vec<Stored> = st
                .history
                .newest_first(Hist::All)
                .take_while(|(i, _)| *i > g)
                .filter(|(i, _)| since.map_or(true, |s| *i > s))
                .cloned()
                .collect();
            all.extend(r.newest_first);
            let floor = all.first().map_or(g, |(i, _)| (*i).max(g));
            (all, floor)
        });
        let floor = merged.as_ref().map_or(0, |(_, f)| *f);
        let new = match st.members.get_mut(&id) {
            Some(seat) => {
                // Entering again (or a takeover's welcome): a fresh
                // greeting, nobody else told.
                seat.client = Arc::clone(client);
                seat.floor = floor;
                false
            }
            None => {
                if let Some(remote) = &mut st.remote {
                    // cluster hook: this node is now where it lives.
                    remote.remove(&nick_key(nick));
                }
                st.by_nick.insert(nick_key(nick), id);
                st.members.insert(
                    id,
                    Seat {
                        nick: nick.to_owned(),
                        client: Arc::clone(client),
                        floor,
                    },
                );
                st.version += 1;
                true
            }
        };
        let ctx = &self.ctx;
        // Under the limit the greeting lists everyone (v1), as far as half a
        // reply holds; above it, or when cut, the first page and the total.
        // cluster hook: the limit counts the members on every node.
        let total = st.total();
        let limit = if ctx.notices(total) {
            usize::MAX
        } else {
            WHO_LIMIT_DEFAULT
        };
        let (page, cut) = st.users_page(None, limit, ctx.reply_max / 2);
        let users_total = if cut || !ctx.notices(total) {
            format!(r#","users_total":{total}"#)
        } else {
            String::new()
        };
        let (room, topic) = (&self.quoted, json!(st.topic));
        let head = match greeting {
            Greeting::Welcome { nick, token } => format!(
                r#"{{"type":"welcome","room":{room},"nick":{},"token":{},"topic":{topic},"users":{page}{users_total},"history":["#,
                json!(nick),
                json!(token),
            ),
            Greeting::Entered => format!(
                r#"{{"type":"entered","room":{room},"topic":{topic},"users":{page}{users_total},"history":["#
            ),
        };
        let bound = since.map_or(Hist::All, Hist::Since);
        let budget = ctx.reply_max.saturating_sub(head.len() + TAIL_MAX);
        let (body, more) = match &merged {
            Some((all, _)) => newest_that_fit(all.iter(), usize::MAX, budget),
            None => {
                let (body, cut) =
                    newest_that_fit(st.history.newest_first(bound), usize::MAX, budget);
                // Older messages than the ring's may be on disk: `more` sends
                // the client paging back with `history` (a resume across a
                // restart).
                (body, cut || st.history.older_than_ring(since))
            }
        };
        let reply = format!(r#"{head}{body}],"more":{more}}}"#);
        client.send(client.frame(&reply));
        if new && announce {
            if ctx.notices(total) {
                let joined = format!(
                    r#"{{"type":"joined","room":{room},"nick":{},"ts":{}}}"#,
                    json!(nick),
                    now_ms()
                );
                st.broadcast_deferred(&joined, Some(id));
            }
            self.presence_changed(&mut st, total - 1);
        }
        st.version
    }

    /// cluster hook: a member of another node renamed: the list follows
    /// and the local members hear `renamed` (within the presence limit).
    pub(crate) fn remote_rename(&self, old_key: &str, new_key: &str, new: &str, old: &str) {
        let mut st = self.lock();
        if let Some(remote) = &mut st.remote {
            remote.remove(old_key);
            remote.insert(new_key.to_owned(), new.to_owned());
        } else {
            self.keep_early(
                &mut st,
                Early::Rename {
                    old_key: old_key.to_owned(),
                    new_key: new_key.to_owned(),
                    new: new.to_owned(),
                },
            );
        }
        st.version += 1;
        if self.ctx.notices(st.total()) {
            let msg = format!(
                r#"{{"type":"renamed","room":{},"from":{},"to":{},"ts":{}}}"#,
                self.quoted,
                quote(old),
                quote(new),
                now_ms()
            );
            st.broadcast(&msg, None);
        }
    }

    /// cluster hook: a topic set on any node, from the subscription.
    pub(crate) fn remote_topic(&self, topic: &str, json: &str) {
        let mut st = self.lock();
        st.topic = topic.to_owned();
        if st.remote.is_none() {
            self.keep_early(&mut st, Early::Topic(topic.to_owned()));
        }
        st.broadcast(json, None);
    }

    /// Keeps an event for the first greeting whose read is out (see
    /// `State::early`); with no read out, the greeting's read will see it.
    fn keep_early(&self, st: &mut State, e: Early) {
        if self.pins.load(Ordering::Acquire) == 0 {
            // Kept for a read that failed: the next read sees them, and
            // replayed after an event not kept (this one) they would
            // undo it.
            st.early.clear();
            return;
        }
        if st.early.len() >= EARLY_MAX {
            st.early.pop_front();
        }
        st.early.push_back(e);
    }

    /// cluster hook: member `id` moved to another node (a takeover by
    /// token there): out of this room without a notice.
    pub(crate) fn leave_quietly(&self, id: MemberId) {
        let mut st = self.lock();
        if let Some(seat) = st.members.remove(&id) {
            st.by_nick.remove(&nick_key(&seat.nick));
            st.version += 1;
        }
    }

    /// Points member `id` at its new connection (a takeover by token).
    pub(crate) fn replace_client(&self, id: MemberId, client: &Arc<Client>) {
        if let Some(seat) = self.lock().members.get_mut(&id) {
            seat.client = Arc::clone(client);
        }
    }

    /// Takes member `id` out and tells the others. True when the room is
    /// now empty and holds nothing worth keeping (no message ever, no
    /// topic): the hub then forgets it.
    pub(crate) fn leave(&self, id: MemberId) -> bool {
        let mut st = self.lock();
        if let Some(seat) = st.members.remove(&id) {
            st.by_nick.remove(&nick_key(&seat.nick));
            st.version += 1;
            let after = st.total();
            if self.ctx.notices(after) {
                let msg = format!(
                    r#"{{"type":"left","room":{},"nick":{},"ts":{}}}"#,
                    self.quoted,
                    json!(seat.nick),
                    now_ms()
                );
                st.broadcast_deferred(&msg, None);
            }
            self.presence_changed(&mut st, after + 1);
        }
        st.members.is_empty()
            && !st.history.is_used()
            && st.topic.is_empty()
            && self.pins.load(Ordering::Acquire) == 0
    }

    /// Member `id` is now called `nick`: the room's list follows and every
    /// member hears `renamed` (above the presence limit only the renamer,
    /// as its ack).
    pub(crate) fn rename(&self, id: MemberId, nick: &str, renamer: &Arc<Client>) {
        let mut st = self.lock();
        let Some(seat) = st.members.get_mut(&id) else {
            return;
        };
        let old = std::mem::replace(&mut seat.nick, nick.to_owned());
        st.by_nick.remove(&nick_key(&old));
        st.by_nick.insert(nick_key(nick), id);
        st.version += 1;
        let msg = format!(
            r#"{{"type":"renamed","room":{},"from":{},"to":{},"ts":{}}}"#,
            self.quoted,
            json!(old),
            json!(nick),
            now_ms()
        );
        if self.ctx.notices(st.total()) {
            st.broadcast(&msg, None);
        } else {
            renamer.send(renamer.frame(&msg));
        }
    }

    /// A room message from member `id`, sent by `client`, maybe with an
    /// image URL that `media` must hold.
    pub(crate) fn message(
        &self,
        id: MemberId,
        client: &Arc<Client>,
        text: &str,
        image: Option<&str>,
        media: &Media,
    ) -> Result<(), Refusal> {
        self.ctx.check_len(text)?;
        let (image_json, image) = image_fields(image, media)?;
        let mut st = self.lock();
        let nick = st.owned(id, client)?.nick.clone();
        let from = quote(&nick);
        if let Some(cluster) = &self.ctx.cluster {
            // cluster hook: Redis allocates the id; the message comes back
            // to every node, this one included, through the subscription.
            drop(st);
            let prefix = format!(r#"{{"type":"message","room":{},"id":"#, self.quoted);
            let suffix = format!(
                r#","ts":{},"from":{from},"text":{}{image_json}}}"#,
                now_ms(),
                quote(text)
            );
            return cluster.submit(cluster.room_job(&self.name, prefix, suffix, client));
        }
        let msg_id = self.ctx.take_id();
        let ts = now_ms();
        let msg: Arc<str> = format!(
            r#"{{"type":"message","room":{},"id":{msg_id},"ts":{ts},"from":{from},"text":{}{image_json}}}"#,
            self.quoted,
            quote(text)
        )
        .into();
        st.broadcast(&msg, None);
        if let Some(store) = &self.ctx.store {
            // Written in the room's order (under its lock): the writer
            // gets the room row before the room's first message.
            if !st.row_stored {
                st.row_stored = true;
                store.keep_room(self.name.clone());
            }
            store.record(Record {
                id: msg_id,
                ts,
                room: Some(self.name.clone()),
                from: nick,
                to: None,
                text: text.to_owned(),
                image,
                json: Arc::clone(&msg),
            });
        }
        st.history.append(msg_id, msg, self.ctx.store.is_some());
        Ok(())
    }

    /// Sets the topic (0-[`TOPIC_MAX_CHARS`] characters, any member) and
    /// tells every member, the setter included.
    pub fn set_topic(
        &self,
        id: MemberId,
        client: &Arc<Client>,
        topic: &str,
    ) -> Result<(), Refusal> {
        let mut st = self.lock();
        let setter = st.owned(id, client)?.nick.clone();
        let by = json!(setter);
        if topic.len() > TOPIC_MAX_CHARS && topic.chars().count() > TOPIC_MAX_CHARS {
            return Err(Refusal::new(
                ErrorCode::TooLong,
                format!("a topic is at most {TOPIC_MAX_CHARS} characters"),
            ));
        }
        let ts = now_ms();
        let msg = format!(
            r#"{{"type":"topic","room":{},"topic":{},"by":{by},"ts":{ts}}}"#,
            self.quoted,
            json!(topic),
        );
        if let Some(c) = &self.ctx.cluster {
            // cluster hook: stored in Redis and applied on every node (this
            // one included) from the subscription, in one order.
            drop(st);
            return c.submit(c.topic_job(&self.name, topic, msg, client));
        }
        st.topic = topic.to_owned();
        if let Some(store) = &self.ctx.store {
            st.row_stored = true;
            store.save_room(RoomRow {
                name: self.name.clone(),
                topic: topic.to_owned(),
                topic_by: Some(setter),
                topic_ts: Some(ts),
            });
        }
        st.broadcast(&msg, None);
        Ok(())
    }

    /// Sends member `id` a page of the online list: at most `limit` nicks
    /// after the nick `after` (by key), as many as one reply holds, and
    /// whether more follow. Returns the membership version it shows, or
    /// `None` when the room is over the presence limit (its members are not
    /// told of each change, so a `who` there is never a catch-up).
    pub fn who(
        &self,
        id: MemberId,
        client: &Arc<Client>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<u64>, Refusal> {
        let st = self.lock();
        st.owned(id, client)?;
        let after = after.map(nick_key);
        let (page, more) = st.users_page(after.as_deref(), limit, self.ctx.reply_max - 96);
        let users = format!(
            r#"{{"type":"users","room":{},"users":{page},"more":{more}}}"#,
            self.quoted
        );
        let version = self.ctx.notices(st.total()).then_some(st.version);
        drop(st);
        client.send(client.frame(&users));
        Ok(version)
    }

    /// Sends member `id` the newest `limit` room messages with id <
    /// `before` that fit in one reply, oldest first, and whether older
    /// ones exist.
    pub fn history(
        &self,
        id: MemberId,
        client: &Arc<Client>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(), Refusal> {
        let head = format!(r#"{{"type":"history","room":{},"messages":["#, self.quoted);
        self.lock().owned(id, client)?;
        // cluster hook: pages come from the room's stream (one more than
        // asked, to tell whether older ones exist); while Redis is down,
        // from the local ring.
        let remote = self.ctx.cluster.as_ref().and_then(|c| {
            c.read_before(&self.name, before, limit.saturating_add(1))
                .ok()
        });
        let st = self.lock();
        st.owned(id, client)?;
        let bound = before.map_or(Hist::All, Hist::Before);
        let budget = self.ctx.reply_max.saturating_sub(head.len() + TAIL_MAX);
        let (body, more) = match &remote {
            Some(r) => newest_that_fit(r.newest_first.iter(), limit, budget),
            None => newest_that_fit(st.history.newest_first(bound), limit, budget),
        };
        if let (None, Some(store), false, Some(oldest)) = (
            &remote,
            &self.ctx.store,
            more,
            st.history.oldest_on_disk_before(),
        ) {
            // Older messages are on disk: the reader thread answers, with
            // the ring's part snapshotted here.
            let ring = st
                .history
                .newest_first(bound)
                .take(limit)
                .cloned()
                .collect();
            drop(st);
            store.read_history(HistoryRead {
                room: self.name.clone(),
                client: Arc::clone(client),
                ring,
                disk_before: before.map_or(oldest, |b| b.min(oldest)),
                limit,
                budget,
                head,
            });
            return Ok(());
        }
        drop(st);
        let msg = format!(r#"{head}{body}],"more":{more}}}"#);
        client.send(client.frame(&msg));
        Ok(())
    }

    /// cluster hook: a room message from the subscription (any node's,
    /// this one's included), in id order: framed once for the local
    /// members, kept in the ring. A seat whose greeting held it skips it.
    pub(crate) fn deliver(&self, msg_id: u64, json: Arc<str>) {
        let mut st = self.lock();
        let mut out = Outgoing::text(&json);
        for m in st.members.values() {
            if m.floor < msg_id {
                m.client.send(out.frame_for(&m.client));
            }
        }
        // Older ones are in the room's stream, not in a local store.
        st.history.append(msg_id, json, false);
    }

    /// cluster hook: member `nick` joined or left this room on another
    /// node: the online list follows, and the local members hear it while
    /// the room is within the presence limit.
    pub(crate) fn remote_presence(&self, key: &str, nick: &str, joined: bool, notify: bool) {
        let mut st = self.lock();
        let before = st.total();
        if let Some(remote) = &mut st.remote {
            if joined {
                remote.insert(key.to_owned(), nick.to_owned());
            } else {
                remote.remove(key);
            }
        } else {
            self.keep_early(
                &mut st,
                Early::Presence {
                    key: key.to_owned(),
                    nick: nick.to_owned(),
                    joined,
                },
            );
        }
        st.version += 1;
        let total = st.total();
        if total != before {
            // Above the limit the count covers every node's members.
            self.presence_changed(&mut st, before);
        }
        if notify && self.ctx.notices(total) {
            let what = if joined { "joined" } else { "left" };
            let json = format!(
                r#"{{"type":"{what}","room":{},"nick":{},"ts":{}}}"#,
                self.quoted,
                quote(nick),
                now_ms()
            );
            st.broadcast_deferred(&json, None);
        }
    }

    /// Members and topic, for the `rooms` list.
    pub(crate) fn summary(&self) -> (usize, String) {
        let st = self.lock();
        (st.members.len(), st.topic.clone())
    }

    /// Sends the waiting `presence` count once [`PRESENCE_EVERY`] has
    /// passed since the last one.
    pub(crate) fn tick(&self, now: Instant) {
        if !self.pending.load(Ordering::Acquire) {
            return;
        }
        let mut st = self.lock();
        if st
            .presence_sent
            .is_some_and(|(at, _)| now.saturating_duration_since(at) < PRESENCE_EVERY)
        {
            // Still waiting: keep the reactors ticking.
            self.ctx.presence_pending.store(true, Ordering::Release);
            return;
        }
        self.pending.store(false, Ordering::Release);
        st.send_presence(&self.quoted, now);
    }

    /// The member count changed from `before`: above the limit (before or
    /// after), members learn the new count now if none went out in the last
    /// second, else at the next [`tick`](Self::tick) that is due.
    fn presence_changed(&self, st: &mut State, before: usize) {
        if before.max(st.total()) <= self.ctx.presence_limit {
            return;
        }
        let now = Instant::now();
        match st.presence_sent {
            Some((at, _)) if now.saturating_duration_since(at) < PRESENCE_EVERY => {
                self.pending.store(true, Ordering::Release);
                self.ctx.presence_pending.store(true, Ordering::Release);
            }
            _ => st.send_presence(&self.quoted, now),
        }
    }
}

/// Longest tail of a reply after its history list: `],"more":false}`.
const TAIL_MAX: usize = 16;

/// Joins the newest messages of `newest_first` (at most `limit`, at most
/// `budget` bytes with their commas, but always at least one so paging
/// makes progress) oldest first; true when older ones were left out.
pub(crate) fn newest_that_fit<'a>(
    mut newest_first: impl Iterator<Item = &'a Stored>,
    limit: usize,
    budget: usize,
) -> (String, bool) {
    let mut picked: Vec<&str> = Vec::new();
    let mut used = 0;
    let mut more = false;
    for (_, json) in newest_first.by_ref() {
        let cost = json.len() + usize::from(!picked.is_empty());
        if picked.len() == limit || (!picked.is_empty() && used + cost > budget) {
            more = true;
            break;
        }
        used += cost;
        picked.push(json);
    }
    picked.reverse();
    (picked.join(","), more)
}

impl State {
    /// Members on this node and (cluster) on the others: what the
    /// presence limit and the counts are about (DESIGN.md v2, "Presence
    /// that scales", cluster-wide).
    fn total(&self) -> usize {
        self.members.len() + self.remote.as_ref().map_or(0, BTreeMap::len)
    }

    /// The seat of member `id`, if `client` is the connection that acts for
    /// it: a connection replaced by a takeover acts for nobody.
    fn owned(&self, id: MemberId, client: &Arc<Client>) -> Result<&Seat, Refusal> {
        match self.members.get(&id) {
            Some(seat) if Arc::ptr_eq(&seat.client, client) => Ok(seat),
            Some(_) => Err(Refusal::new(
                ErrorCode::NotJoined,
                "this connection was replaced by a newer one",
            )),
            None => Err(Refusal::new(
                ErrorCode::NotInRoom,
                "you are not in this room; enter it first",
            )),
        }
    }

    /// The online list from the first key after `after`: a JSON array of
    /// at most `limit` nicks within `budget` bytes (at least one, so paging
    /// makes progress), and whether more follow.
    fn users_page(&self, after: Option<&str>, limit: usize, budget: usize) -> (String, bool) {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut out = String::from("[");
        let mut more = false;
        let mut local = self
            .by_nick
            .range::<str, _>((start, Bound::Unbounded))
            .filter_map(|(k, id)| Some((k.as_str(), self.members.get(id)?.nick.as_str())))
            .peekable();
        // cluster hook: other nodes' members, merged in key order.
        let mut remote = self
            .remote
            .iter()
            .flat_map(|r| r.range::<str, _>((start, Bound::Unbounded)))
            .map(|(k, n)| (k.as_str(), n.as_str()))
            .peekable();
        let next = || -> Option<&str> {
            let take_local = match (local.peek(), remote.peek()) {
                (Some(l), Some(r)) => l.0 <= r.0,
                (l, _) => l.is_some(),
            };
            if take_local {
                let (k, n) = local.next()?;
                if remote.peek().is_some_and(|r| r.0 == k) {
                    remote.next();
                }
                Some(n)
            } else {
                remote.next().map(|(_, n)| n)
            }
        };
        for (taken, nick) in std::iter::from_fn(next).enumerate() {
            let nick = serde_json::to_string(nick).unwrap_or_else(|_| "\"\"".into());
            if taken == limit || (taken > 0 && out.len() + 1 + nick.len() + 1 > budget) {
                more = true;
                break;
            }
            if taken > 0 {
                out.push(',');
            }
            out.push_str(&nick);
        }
        out.push(']');
        (out, more)
    }

    /// Tells every member the member count (`presence`, DESIGN.md).
    fn send_presence(&mut self, room: &str, now: Instant) {
        let users = self.total();
        if self.presence_sent.is_some_and(|(_, told)| told == users) {
            return;
        }
        self.presence_sent = Some((now, users));
        let msg = format!(r#"{{"type":"presence","room":{room},"users":{users}}}"#);
        self.broadcast_deferred(&msg, None);
    }

    /// Frames `json` once and sends the same bytes to every member but
    /// `except`, written directly where the socket has room.
    fn broadcast(&self, json: &str, except: Option<MemberId>) {
        let mut out = Outgoing::text(json);
        for (id, m) in &self.members {
            if Some(*id) != except {
                m.client.send(out.frame_for(&m.client));
            }
        }
    }

    /// As [`broadcast`](Self::broadcast), but through the flusher, which
    /// coalesces bursts (presence notices).
    fn broadcast_deferred(&self, json: &str, except: Option<MemberId>) {
        let mut out = Outgoing::text(json);
        for (id, m) in &self.members {
            if Some(*id) != except {
                m.client.send_deferred(out.frame_for(&m.client));
            }
        }
    }
}

/// The image of a message naming `image`, checked after `too_long` (by
/// the caller first): one the server does not hold is `unknown_media`.
/// Returns the `,"image":...,"width":W,"height":H` fields of the message
/// and what the store keeps of the image.
pub(crate) fn image_fields(
    image: Option<&str>,
    media: &Media,
) -> Result<(String, Option<ImageRef>), Refusal> {
    let Some(url) = image else {
        return Ok((String::new(), None));
    };
    let Some(img) = media.lookup(url)? else {
        return Err(Refusal::new(
            ErrorCode::UnknownMedia,
            format!(
                "no image {:?} here: upload it first (POST /upload)",
                url.chars().take(90).collect::<String>()
            ),
        ));
    };
    let fields = format!(
        r#","image":{},"width":{},"height":{}"#,
        quote(&img.url),
        img.width,
        img.height
    );
    Ok((fields, Some((img.url, img.width, img.height))))
}

/// `s` as a JSON string.
pub(crate) fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flusher::Flusher;
    use std::net::{TcpListener, TcpStream};

    fn client() -> (Arc<Client>, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let flusher = Flusher::start().unwrap();
        let c = Client::new(s.into(), "test".into(), 1 << 20, false, flusher, None);
        (Arc::new(c), peer)
    }

    /// cluster hook: a room's first greeting reads its members on other
    /// nodes from Redis; presence, rename and topic events that arrive
    /// while the read is out are replayed over its snapshot, not lost (a
    /// member who joined another node then was missing from this node's
    /// list for good).
    #[test]
    fn events_during_the_first_greetings_read_are_replayed_over_it() {
        let room = Room::new(
            "lobby",
            Arc::new(Ctx::new(50, 1000, 1 << 20, 100, false, None)),
        );
        // An event before any read is out: the read will see it.
        room.remote_presence("zed", "zed", true, true);
        room.pin();
        // The read's snapshot is taken here; then, in order:
        room.remote_presence("alice", "alice", true, true);
        room.remote_presence("carol", "carol", false, true);
        room.remote_rename("dave", "dan", "dan", "dave");
        room.remote_presence("erin", "erin", true, true);
        room.remote_presence("erin", "erin", false, true);
        room.remote_topic("new", r#"{"type":"topic"}"#);
        let snapshot = Remote {
            counter: 0,
            newest_first: Vec::new(),
            members: Some(vec![
                ("carol".into(), "carol".into()),
                ("dave".into(), "dave".into()),
                ("zed".into(), "zed".into()),
            ]),
            topic: "old".into(),
            moved: false,
        };
        let (bob, _peer) = client();
        room.enter(
            MemberId(1),
            "bob",
            &bob,
            None,
            Greeting::Entered,
            Some(snapshot),
        );
        let st = room.lock();
        let remote: Vec<&str> = st
            .remote
            .as_ref()
            .unwrap()
            .values()
            .map(String::as_str)
            .collect();
        assert_eq!(remote, ["alice", "dan", "zed"]);
        assert_eq!(st.topic, "new");
        assert!(st.early.is_empty());
    }
}
