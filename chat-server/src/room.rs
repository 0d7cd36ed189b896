//! The room: members, nicknames, the history ring and fan-out.
//!
//! One mutex guards the whole room. A broadcast is serialized and framed
//! once while holding it, and handed to each member with a non-blocking
//! send ([`Client::send`]), so every member sees room events in the same order
//! and a slow member costs the others nothing but a queue push.
//!
//! Presence scales (DESIGN.md, "Presence that scales"): `joined`, `left`
//! and `renamed` go to every member only while the room has at most
//! `presence_limit` members, counted after the change. Above it a join
//! costs O(1) sends instead of O(members) (a restart's 10,000 returning
//! clients would otherwise queue 50 million notices): members get a
//! `presence` count, at most one per second while the count moves, and
//! read the list in pages (`who` with `after`/`limit`, sorted by
//! case-folded nick).

use crate::client::{close_replaced, Client, Outgoing};
use crate::protocol::{check_nick, nick_key, ErrorCode, Refusal, WHO_LIMIT_DEFAULT};
use crate::store::{HistoryRead, Record, Store}; // store hook
use serde_json::json;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The shortest gap between two `presence` counts (DESIGN.md: "at most one
/// per second").
pub const PRESENCE_EVERY: Duration = Duration::from_secs(1);

/// Largest payload of a reply to a client's own request (`welcome`,
/// `history`): DESIGN.md, "Replies are bounded". It holds the newest
/// history messages that fit, and `"more":true` says older ones exist.
pub const REPLY_MAX_BYTES: usize = 256 << 10;

/// A member's handle, held by the session that joined it (or took it over).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberId(u64);

/// What a good join gives the session.
#[derive(Debug, Clone, Copy)]
pub struct Joined {
    pub id: MemberId,
    /// The membership version of the `users` list in the welcome.
    pub users_version: u64,
}

/// The single chat room.
#[derive(Debug)]
pub struct Room {
    state: Mutex<State>,
    history_len: usize,
    max_text: usize,
    /// Payload bound of a reply: [`REPLY_MAX_BYTES`], or less when the
    /// per-client queue is small, so one reply never trips it.
    reply_max: usize,
    /// Members up to which presence notices are sent one by one.
    presence_limit: usize,
    /// A count change waits for [`PRESENCE_EVERY`] to pass: lets the
    /// reactors skip [`Room::tick`]'s lock while nothing waits.
    presence_pending: AtomicBool,
    log: bool,
    /// Where messages are persisted (none: `--ephemeral`). // store hook
    store: Option<Arc<Store>>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    next_member: u64,
    members: BTreeMap<MemberId, Member>,
    /// Ordered by key, which is the order of the online list.
    by_nick: BTreeMap<String, MemberId>,
    by_token: HashMap<String, MemberId>,
    /// Bumped whenever the online list changes (join, leave, rename).
    version: u64,
    /// Room messages, oldest first, each as its JSON object text.
    history: VecDeque<(u64, Arc<str>)>,
    /// When the last `presence` count went out, and the count it told.
    presence_sent: Option<(Instant, usize)>,
    /// The store holds room messages older than the ring's. // store hook
    older_in_store: bool,
}

/// A nick in the room, with the one connection that acts for it.
#[derive(Debug)]
struct Member {
    nick: String,
    token: String,
    client: Arc<Client>,
}

impl Room {
    pub fn new(
        history_len: usize,
        max_text: usize,
        max_queue: usize,
        presence_limit: usize,
        log: bool,
    ) -> Self {
        Self {
            state: Mutex::new(State {
                next_id: 1,
                ..State::default()
            }),
            history_len,
            max_text,
            reply_max: REPLY_MAX_BYTES.min(max_queue / 2),
            presence_limit,
            presence_pending: AtomicBool::new(false),
            log,
            store: None,
        }
    }

    /// Persists through `store`: ids continue above every earlier run's,
    /// and the ring starts with the newest stored messages. // store hook
    pub fn with_store(mut self, store: Arc<Store>) -> std::io::Result<Self> {
        let (ring, older) = store.recent("lobby", self.history_len)?;
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        st.next_id = store.first_id();
        st.history = ring.into();
        st.older_in_store = older;
        self.store = Some(store);
        Ok(self)
    }

    /// True while a `presence` count waits for its second to pass; the
    /// reactors then call [`tick`](Self::tick) at least every 100 ms.
    pub fn presence_pending(&self) -> bool {
        self.presence_pending.load(Ordering::Acquire)
    }

    /// Sends the waiting `presence` count once [`PRESENCE_EVERY`] has
    /// passed since the last one.
    pub fn tick(&self, now: Instant) {
        if !self.presence_pending() {
            return;
        }
        let mut st = self.lock();
        if st
            .presence_sent
            .is_some_and(|(at, _)| now.saturating_duration_since(at) < PRESENCE_EVERY)
        {
            return;
        }
        self.presence_pending.store(false, Ordering::Release);
        st.send_presence(now);
    }

    /// The member count changed from `before`: above the limit (before or
    /// after), members learn the new count now if none went out in the last
    /// second, else at the next [`tick`](Self::tick) that is due.
    fn presence_changed(&self, st: &mut State, before: usize) {
        if before.max(st.members.len()) <= self.presence_limit {
            return;
        }
        let now = Instant::now();
        match st.presence_sent {
            Some((at, _)) if now.saturating_duration_since(at) < PRESENCE_EVERY => {
                self.presence_pending.store(true, Ordering::Release);
            }
            _ => st.send_presence(now),
        }
    }

    /// Whether one-by-one notices go out with `members` in the room.
    fn notices(&self, members: usize) -> bool {
        members <= self.presence_limit
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update below leaves the maps consistent before any call that
        // could panic, so a poisoned lock still guards valid state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins `client` as `nick`, or takes over the member that `token`
    /// names when its nick matches. Sends the welcome, and `joined` to the
    /// others (not for a takeover, which is silent). A takeover closes the
    /// old connection with 4000 under the room lock: from then on its
    /// requests are refused, since it no longer owns the member.
    pub fn join(
        &self,
        client: &Arc<Client>,
        nick: &str,
        since: Option<u64>,
        token: Option<&str>,
    ) -> Result<Joined, Refusal> {
        check_nick(nick)?;
        let key = nick_key(nick);
        let mut st = self.lock();
        let resumed = token
            .and_then(|t| st.by_token.get(t).copied())
            .filter(|id| st.by_nick.get(&key) == Some(id));
        let (id, old) = if let Some(id) = resumed {
            let member = st
                .members
                .get_mut(&id)
                .ok_or_else(|| Refusal::new(ErrorCode::NickTaken, "member vanished"))?;
            let old = std::mem::replace(&mut member.client, Arc::clone(client));
            (id, Some(old))
        } else {
            if st.by_nick.contains_key(&key) {
                return Err(Refusal::new(
                    ErrorCode::NickTaken,
                    format!("the nickname {nick:?} is taken"),
                ));
            }
            let id = MemberId(st.next_member);
            st.next_member += 1;
            let token = new_token();
            st.by_nick.insert(key, id);
            st.by_token.insert(token.clone(), id);
            st.members.insert(
                id,
                Member {
                    nick: nick.to_owned(),
                    token,
                    client: Arc::clone(client),
                },
            );
            st.version += 1;
            (id, None)
        };
        if let Some(old) = &old {
            old.close(close_replaced(), "replaced");
        }
        let member = &st.members[&id];
        // Under the limit the welcome lists everyone (v1), as far as half a
        // reply holds; above it, or when cut, the first page and the total.
        let total = st.members.len();
        let (page, cut) = if self.notices(total) {
            st.users_page(None, usize::MAX, self.reply_max / 2)
        } else {
            st.users_page(None, WHO_LIMIT_DEFAULT, self.reply_max / 2)
        };
        let users_total = if cut || !self.notices(total) {
            format!(r#","users_total":{total}"#)
        } else {
            String::new()
        };
        let head = format!(
            r#"{{"type":"welcome","nick":{},"token":{},"users":{page}{users_total},"history":["#,
            json!(member.nick),
            json!(member.token),
        );
        let eligible = st
            .history
            .iter()
            .rev()
            .filter(|(id, _)| since.map_or(true, |s| *id > s));
        let budget = self.reply_max.saturating_sub(head.len() + TAIL_MAX);
        let (body, cut) = newest_that_fit(eligible, usize::MAX, budget);
        let more = cut || st.older_than_ring(since); // store hook
        let welcome = format!(r#"{head}{body}],"more":{more}}}"#);
        client.send(client.frame(&welcome));
        match old {
            Some(old) => {
                if self.log {
                    eprintln!(
                        "chat: {} resumed {:?} from {}",
                        client.label(),
                        member.nick,
                        old.label()
                    );
                }
            }
            None => {
                if self.log {
                    eprintln!("chat: {} joined as {:?}", client.label(), member.nick);
                }
                if self.notices(total) {
                    let joined = json!({"type": "joined", "nick": member.nick, "ts": now_ms()});
                    st.broadcast_deferred(&joined.to_string(), Some(id));
                }
                self.presence_changed(&mut st, total - 1);
            }
        }
        Ok(Joined {
            id,
            users_version: st.version,
        })
    }

    /// Whether `token` resumes the member now called `nick` (a takeover,
    /// which needs no password). // accounts hook
    pub fn resumes(&self, nick: &str, token: Option<&str>) -> bool {
        let Some(token) = token else {
            return false;
        };
        let st = self.lock();
        let owner = st.by_token.get(token);
        owner.is_some() && st.by_nick.get(&nick_key(nick)) == owner
    }

    /// The nick of member `id`, if `client` acts for it. // accounts hook
    pub fn nick_of(&self, id: MemberId, client: &Arc<Client>) -> Result<String, Refusal> {
        Ok(self.lock().owned(id, client)?.nick.clone())
    }

    /// A room message from member `id`, sent by `client`.
    pub fn message(&self, id: MemberId, client: &Arc<Client>, text: &str) -> Result<(), Refusal> {
        self.check_len(text)?;
        let mut st = self.lock();
        let from = st.owned(id, client)?.nick.clone();
        let msg_id = st.take_id();
        let ts = now_ms();
        let msg: Arc<str> =
            json!({"type": "message", "id": msg_id, "ts": ts, "from": from, "text": text})
                .to_string()
                .into();
        st.broadcast(&msg, None);
        if let Some(store) = &self.store {
            // store hook
            store.claim_id(msg_id);
            store.record(Record {
                id: msg_id,
                ts,
                room: Some("lobby".into()),
                from,
                to: None,
                text: text.to_owned(),
                image: None,
                json: Arc::clone(&msg),
            });
        }
        st.history.push_back((msg_id, msg));
        while st.history.len() > self.history_len {
            st.history.pop_front();
            st.older_in_store |= self.store.is_some(); // store hook
        }
        Ok(())
    }

    /// A private message from member `id` to the member called `to`.
    pub fn private(
        &self,
        id: MemberId,
        client: &Arc<Client>,
        to: &str,
        text: &str,
    ) -> Result<(), Refusal> {
        let mut st = self.lock();
        st.owned(id, client)?;
        let Some(target) = st.by_nick.get(&nick_key(to)).copied() else {
            return Err(Refusal::new(
                ErrorCode::UnknownUser,
                format!("nobody called {to:?} is online"),
            ));
        };
        self.check_len(text)?;
        let msg_id = st.take_id();
        let (Some(from), Some(dest)) = (st.members.get(&id), st.members.get(&target)) else {
            return Ok(());
        };
        let ts = now_ms();
        let msg = json!({"type": "private", "id": msg_id, "ts": ts, "from": from.nick, "to": dest.nick, "text": text});
        let json = msg.to_string();
        let mut out = Outgoing::text(&json);
        from.client.send(out.frame_for(&from.client));
        if target != id {
            dest.client.send(out.frame_for(&dest.client));
        }
        if let Some(store) = &self.store {
            // store hook
            store.claim_id(msg_id);
            store.record(Record {
                id: msg_id,
                ts,
                room: None,
                from: from.nick.clone(),
                to: Some(dest.nick.clone()),
                text: text.to_owned(),
                image: None,
                json: json.into(),
            });
        }
        Ok(())
    }

    /// Renames member `id`; a case variant of one's own nick is allowed.
    pub fn rename(&self, id: MemberId, client: &Arc<Client>, nick: &str) -> Result<(), Refusal> {
        check_nick(nick)?;
        let key = nick_key(nick);
        let mut st = self.lock();
        st.owned(id, client)?;
        if st.by_nick.get(&key).is_some_and(|&owner| owner != id) {
            return Err(Refusal::new(
                ErrorCode::NickTaken,
                format!("the nickname {nick:?} is taken"),
            ));
        }
        let Some(member) = st.members.get_mut(&id) else {
            return Ok(());
        };
        let old = std::mem::replace(&mut member.nick, nick.to_owned());
        st.by_nick.remove(&nick_key(&old));
        st.by_nick.insert(key, id);
        st.version += 1;
        let msg = json!({"type": "renamed", "from": old, "to": nick, "ts": now_ms()});
        if self.notices(st.members.len()) {
            st.broadcast(&msg.to_string(), None);
        } else {
            // Above the limit only the renamer hears of it: its ack.
            client.send(client.frame(&msg.to_string()));
        }
        if self.log {
            eprintln!("chat: {} renamed {old:?} to {nick:?}", client.label());
        }
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
        let (page, more) = st.users_page(after.as_deref(), limit, self.reply_max - 64);
        let users = format!(r#"{{"type":"users","users":{page},"more":{more}}}"#);
        let version = self.notices(st.members.len()).then_some(st.version);
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
        const HEAD: &str = r#"{"type":"history","messages":["#;
        let st = self.lock();
        st.owned(id, client)?;
        let eligible = st
            .history
            .iter()
            .rev()
            .filter(|(id, _)| before.map_or(true, |b| *id < b));
        let budget = self.reply_max.saturating_sub(HEAD.len() + TAIL_MAX);
        let (body, more) = newest_that_fit(eligible.clone(), limit, budget);
        if let (Some(store), false, true) = (&self.store, more, st.older_in_store) {
            // store hook: older messages are on disk; the reader thread
            // answers, the ring's part snapshotted here.
            let ring = eligible.take(limit).cloned().collect();
            let oldest = st.history.front().map_or(u64::MAX, |(id, _)| *id);
            drop(st);
            store.read_history(HistoryRead {
                room: "lobby".into(),
                client: Arc::clone(client),
                ring,
                disk_before: before.map_or(oldest, |b| b.min(oldest)),
                limit,
                budget,
                head: HEAD.into(),
            });
            return Ok(());
        }
        drop(st);
        let msg = format!(r#"{HEAD}{body}],"more":{more}}}"#);
        client.send(client.frame(&msg));
        Ok(())
    }

    /// Removes member `id` if `client` still owns it (a member taken over
    /// by a resume belongs to the new connection), and tells the others.
    pub fn leave(&self, id: MemberId, client: &Arc<Client>) {
        let mut st = self.lock();
        if st.owned(id, client).is_err() {
            return;
        }
        let Some(member) = st.members.remove(&id) else {
            return;
        };
        st.by_nick.remove(&nick_key(&member.nick));
        st.by_token.remove(&member.token);
        st.version += 1;
        let after = st.members.len();
        if self.notices(after) {
            let msg = json!({"type": "left", "nick": member.nick, "ts": now_ms()});
            st.broadcast_deferred(&msg.to_string(), None);
        }
        self.presence_changed(&mut st, after + 1);
        if self.log {
            eprintln!("chat: {} left as {:?}", client.label(), member.nick);
        }
    }

    fn check_len(&self, text: &str) -> Result<(), Refusal> {
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
}

/// Longest tail of a reply after its history list: `],"more":false}`.
const TAIL_MAX: usize = 16;

/// Joins the newest messages of `newest_first` (at most `limit`, at most
/// `budget` bytes with their commas, but always at least one so paging
/// makes progress) oldest first; true when older ones were left out.
pub(crate) fn newest_that_fit<'a>(
    mut newest_first: impl Iterator<Item = &'a (u64, Arc<str>)>,
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
    /// The member `id`, if `client` is the connection that acts for it: a
    /// connection replaced by a takeover acts for nobody.
    fn owned(&self, id: MemberId, client: &Arc<Client>) -> Result<&Member, Refusal> {
        self.members
            .get(&id)
            .filter(|m| Arc::ptr_eq(&m.client, client))
            .ok_or_else(|| {
                Refusal::new(
                    ErrorCode::NotJoined,
                    "this connection was replaced by a newer one",
                )
            })
    }

    /// Whether the store may hold room messages newer than `since` that
    /// the ring no longer has (ids are not contiguous, so this may say yes
    /// when none exist; paging then returns nothing new). // store hook
    fn older_than_ring(&self, since: Option<u64>) -> bool {
        let oldest = self.history.front().map_or(u64::MAX, |(id, _)| *id);
        self.older_in_store && since.map_or(true, |s| s.saturating_add(1) < oldest)
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The online list from the first key after `after`: a JSON array of
    /// at most `limit` nicks within `budget` bytes (at least one, so paging
    /// makes progress), and whether more follow.
    fn users_page(&self, after: Option<&str>, limit: usize, budget: usize) -> (String, bool) {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut out = String::from("[");
        let mut taken = 0;
        let mut more = false;
        for id in self
            .by_nick
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(_, id)| id)
        {
            let Some(m) = self.members.get(id) else {
                continue;
            };
            let nick = serde_json::to_string(&m.nick).unwrap_or_else(|_| "\"\"".into());
            if taken == limit || (taken > 0 && out.len() + 1 + nick.len() + 1 > budget) {
                more = true;
                break;
            }
            if taken > 0 {
                out.push(',');
            }
            out.push_str(&nick);
            taken += 1;
        }
        out.push(']');
        (out, more)
    }

    /// Tells every member the member count (`presence`, DESIGN.md).
    fn send_presence(&mut self, now: Instant) {
        let users = self.members.len();
        if self.presence_sent.is_some_and(|(_, told)| told == users) {
            return;
        }
        self.presence_sent = Some((now, users));
        let msg = format!(r#"{{"type":"presence","room":"lobby","users":{users}}}"#);
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

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A 128-bit secret from the OS CSPRNG, hex-encoded.
fn new_token() -> String {
    let mut raw = [0u8; 16];
    // A failing CSPRNG leaves zeros; the session id then still differs per
    // session only through the map, so fall back to the clock mixed in.
    if getrandom::getrandom(&mut raw).is_err() {
        raw[..8].copy_from_slice(&now_ms().to_le_bytes());
    }
    raw.iter().map(|b| format!("{b:02x}")).collect()
}
