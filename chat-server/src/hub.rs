//! The server-wide part of the chat: who is online (nicks, unique ignoring
//! case across the whole server), resume tokens, which rooms exist and which
//! rooms each member is in, and private messages. One room's own state is a
//! [`Room`].
//!
//! Locks: the registry mutex here is taken by the rare, server-wide
//! requests (join, enter, leave, rename, private, rooms) and by a session's
//! end; it is held while a room's lock is taken, never the other way
//! round. Room messages, `who`, `history` and `topic` go straight to the
//! room (the session keeps the rooms it is in), so the message hot path
//! takes one room lock and no server-wide one.
//!
//! Lifecycles, each with one owner: a member (nick + token) lives from its
//! `join` to the end of the session that owns it (a takeover hands it to a
//! new session); a room lives from its first `enter` until its last member
//! leaves, unless it holds messages or a topic (DESIGN.md v2, "Rooms"); the
//! lobby always.

use crate::accounts::Gate;
use crate::client::{close_replaced, Client};
use crate::cluster::{Claim, Cluster, Job, Remote}; // cluster hook
use crate::media::Media;
use crate::protocol::{check_nick, nick_key, ErrorCode, Refusal};
use crate::room::{quote, Ctx, Greeting, MemberId, Room, LOBBY};
use crate::store::{Record, Store};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io;
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// The limits the hub is built with (from `Config`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub history: usize,
    pub max_text: usize,
    pub max_queue: usize,
    pub presence_limit: usize,
    pub max_rooms: usize,
    pub max_rooms_per_user: usize,
    pub log: bool,
}

/// Every room and every member of one server.
#[derive(Debug)]
pub struct Hub {
    ctx: Arc<Ctx>,
    reg: Mutex<Registry>,
    max_rooms: usize,
    max_rooms_per_user: usize,
}

#[derive(Debug, Default)]
struct Registry {
    next_member: u64,
    members: HashMap<MemberId, Member>,
    by_nick: HashMap<String, MemberId>,
    by_token: HashMap<String, MemberId>,
    /// Sorted by name: the order of the `rooms` list.
    rooms: BTreeMap<String, Arc<Room>>,
    /// Nick keys a join or rename is claiming (cluster: in Redis, without
    /// the lock held): taken for everyone else meanwhile.
    reserved: HashSet<String>,
}

/// A nick online, with the one connection that acts for it.
#[derive(Debug)]
struct Member {
    nick: String,
    token: String,
    client: Arc<Client>,
    rooms: BTreeSet<String>,
}

/// A room to greet a member in, pinned, with its stream read (cluster).
type GreetingRead = (String, Arc<Room>, Option<Remote>);

/// A room a session is in, as the session keeps it.
pub(crate) type Entered = (String, Arc<Room>);

/// What a good join gives the session.
#[derive(Debug)]
pub(crate) struct Joined {
    pub id: MemberId,
    /// The lobby's membership version of the `users` list in the welcome.
    pub users_version: u64,
    /// Every room the member is in (the lobby, and after a takeover the
    /// rooms the old connection had entered).
    pub rooms: Vec<Entered>,
}

impl Hub {
    /// A hub with the lobby and, with a `store`, every room it kept (those
    /// with messages or a topic), each with its topic and newest messages.
    /// With a `cluster` (`--redis`) there is no store: Redis keeps the
    /// history and the topics.
    ///
    /// # Errors
    ///
    /// A database error while reading the kept rooms.
    pub(crate) fn new(
        l: Limits,
        store: Option<Arc<Store>>,
        cluster: Option<Arc<Cluster>>,
    ) -> io::Result<Self> {
        let mut ctx = Ctx::new(
            l.history,
            l.max_text,
            l.max_queue,
            l.presence_limit,
            l.log,
            store.clone(),
        );
        ctx.cluster = cluster; // cluster hook
        let ctx = Arc::new(ctx);
        let mut reg = Registry::default();
        reg.rooms
            .insert(LOBBY.into(), Arc::new(Room::new(LOBBY, Arc::clone(&ctx))));
        if let Some(store) = &store {
            // Kept rooms count toward `--max-rooms` but are all loaded:
            // they exist, whatever the bound was when they were made.
            for row in store.rooms()? {
                let (ring, older) = store.recent(&row.name, l.history)?;
                let used = !ring.is_empty() || older;
                // A room whose topic was cleared and that never had a
                // message was forgotten when its last member left.
                if row.name != LOBBY && !used && row.topic.is_empty() {
                    continue;
                }
                let room = Room::stored(&row.name, Arc::clone(&ctx), row.topic, ring, older);
                reg.rooms.insert(row.name, Arc::new(room));
            }
        }
        Ok(Self {
            ctx,
            reg: Mutex::new(reg),
            max_rooms: l.max_rooms.max(1),
            max_rooms_per_user: l.max_rooms_per_user.max(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // Every update leaves the maps consistent before any call that could
        // panic, so a poisoned lock still guards valid state.
        self.reg.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True while some room's `presence` count waits for its second to
    /// pass; the reactors then call [`tick`](Self::tick) at least every
    /// 100 ms.
    pub fn presence_pending(&self) -> bool {
        self.ctx.presence_pending.load(Ordering::Acquire)
    }

    /// Sends the waiting `presence` counts that are due.
    pub fn tick(&self, now: Instant) {
        if !self.ctx.presence_pending.swap(false, Ordering::AcqRel) {
            return;
        }
        // Rooms still waiting set the flag again.
        let rooms: Vec<Arc<Room>> = self.lock().rooms.values().cloned().collect();
        for room in rooms {
            room.tick(now);
        }
    }

    /// Joins `client` as `nick` and enters the lobby, or takes over the
    /// member that `token` names when its nick matches (its rooms with it).
    /// The welcome describes the lobby. A takeover closes the old
    /// connection with 4000 under the registry lock: from then on its
    /// requests are refused, since it no longer owns the member.
    ///
    /// cluster hook: a takeover of a member another node holds moves its
    /// seats here, and the welcome is followed by an `entered` per other
    /// room, each with the messages after `since` (a cluster's ids are one
    /// counter published on one channel, so every node delivers them in
    /// id order: the last id a client saw in any room is where each of its
    /// rooms resumes). With `--redis` this runs on the cluster worker (it
    /// waits on Redis: the nick claim or takeover, and the greetings'
    /// stream reads), and the registry lock is never held while it waits.
    pub(crate) fn join(
        &self,
        client: &Arc<Client>,
        nick: &str,
        since: Option<u64>,
        token: Option<&str>,
        gate: Gate,
    ) -> Result<Joined, Refusal> {
        check_nick(nick)?;
        let key = nick_key(nick);
        let cluster = self.ctx.cluster.as_ref();
        // 1. Under the lock: a takeover here, or the nick reserved.
        let (id, here) = {
            let mut reg = self.lock();
            let reg = &mut *reg;
            let resumed = token
                .and_then(|t| reg.by_token.get(t).copied())
                .filter(|id| reg.by_nick.get(&key) == Some(id));
            match resumed.and_then(|id| Some((id, reg.members.get(&id)?))) {
                Some((id, m)) => (id, Some(m.rooms.iter().cloned().collect::<Vec<_>>())),
                None => {
                    if reg.by_nick.contains_key(&key) || reg.reserved.contains(&key) {
                        return Err(taken(nick));
                    }
                    reg.reserved.insert(key.clone());
                    let id = MemberId(reg.next_member);
                    reg.next_member += 1;
                    (id, None)
                }
            }
        };
        // 2. cluster hook: the claim (or a takeover from another node),
        // without the lock.
        let mut new_token = new_token();
        let mut moved = None;
        if let (Some(c), None) = (cluster, &here) {
            let claimed = (|| {
                if let Some(t) = token {
                    if let Some(rooms) = c.take_over(&key, t, &c.claim_value(id.0, nick, t))? {
                        return Ok(Some(rooms));
                    }
                }
                match c.claim_nick(&key, &c.claim_value(id.0, nick, &new_token), gate)? {
                    Claim::Claimed => Ok(None),
                    Claim::Taken => Err(taken(nick)),
                    Claim::Registered => Err(crate::accounts::required(nick)),
                }
            })();
            match claimed {
                Ok(m) => moved = m,
                Err(e) => {
                    self.lock().reserved.remove(&key);
                    return Err(e);
                }
            }
            if let (Some(_), Some(t)) = (&moved, token) {
                new_token = t.to_owned();
            }
        }
        // The rooms greeted now: the lobby first, then, for a member moved
        // from another node, its other rooms (this node seats it there).
        // A takeover here keeps its seats live; the client re-enters them
        // with its own `since` each (what the page does).
        let mut greet = vec![LOBBY.to_owned()];
        let others = moved.clone().unwrap_or_default();
        greet.extend(others.into_iter().filter(|r| r != LOBBY));
        let reads = match self.greeting_reads(&greet, since) {
            Ok(r) => r,
            Err(e) => {
                let mut reg = self.lock();
                reg.reserved.remove(&key);
                if let (Some(c), None) = (cluster, &here) {
                    c.submit_quiet(Job::Release {
                        key: key.clone(),
                        value: c.claim_value(id.0, nick, &new_token),
                    });
                }
                return Err(e);
            }
        };
        // 3. Under the lock again: the member made (or taken over), its
        // greetings sent.
        let mut reg = self.lock();
        let reg = &mut *reg;
        let old = match &here {
            Some(_) => {
                let member = reg.members.get_mut(&id);
                let Some(member) = member else {
                    self.unpin_all(reg, &reads);
                    return Err(Refusal::new(ErrorCode::NickTaken, "member vanished"));
                };
                Some(std::mem::replace(&mut member.client, Arc::clone(client)))
            }
            None => {
                reg.reserved.remove(&key);
                if let Some(c) = cluster {
                    // accounts + media hook: uploads through any node.
                    c.note_token(&new_token, id.0);
                }
                if let (Some(c), None) = (cluster, &moved) {
                    c.submit_quiet(Job::Seat {
                        room: LOBBY.into(),
                        nick: nick.to_owned(),
                        enter: true,
                        quiet: false,
                    });
                }
                reg.by_nick.insert(key, id);
                reg.by_token.insert(new_token.clone(), id);
                reg.members.insert(
                    id,
                    Member {
                        nick: nick.to_owned(),
                        token: new_token,
                        client: Arc::clone(client),
                        rooms: greet.iter().cloned().collect(),
                    },
                );
                None
            }
        };
        if let Some(old) = &old {
            old.close(close_replaced(), "replaced");
        }
        let Some(member) = reg.members.get(&id) else {
            self.unpin_all(reg, &reads);
            return Err(Refusal::new(ErrorCode::NickTaken, "member vanished"));
        };
        // The welcome first (it must be the new connection's first
        // message), then the other rooms follow the member to it.
        let announce = here.is_none() && moved.is_none();
        let mut users_version = 0;
        let mut greeted = BTreeSet::new();
        for (name, room, remote) in reads {
            let greeting = if name == LOBBY {
                Greeting::Welcome {
                    nick: &member.nick,
                    token: &member.token,
                }
            } else {
                Greeting::Entered
            };
            let remote = remote.map(|r| Remote {
                moved: !announce,
                ..r
            });
            let v = room.enter(id, &member.nick, client, since, greeting, remote);
            if name == LOBBY {
                users_version = v;
            }
            reg.rooms
                .entry(name.clone())
                .or_insert_with(|| Arc::clone(&room));
            room.unpin();
            greeted.insert(name);
        }
        let mut rooms = Vec::with_capacity(member.rooms.len());
        for name in &member.rooms {
            if let Some(room) = reg.rooms.get(name) {
                if !greeted.contains(name) {
                    room.replace_client(id, client);
                }
                rooms.push((name.clone(), Arc::clone(room)));
            }
        }
        if self.ctx.log {
            match (&old, &moved) {
                (Some(old), _) => eprintln!(
                    "chat: {} resumed {:?} from {}",
                    client.label(),
                    member.nick,
                    old.label()
                ),
                (None, Some(_)) => eprintln!(
                    "chat: {} resumed {:?} from another node",
                    client.label(),
                    member.nick
                ),
                (None, None) => eprintln!("chat: {} joined as {:?}", client.label(), member.nick),
            }
        }
        Ok(Joined {
            id,
            users_version,
            rooms,
        })
    }

    /// The rooms `names` registered here (made if new) and pinned, each
    /// with its greeting's stream read (cluster; `None` without): read
    /// after the room is registered, so the subscriber fills its ring from
    /// before the read on and the greeting misses nothing.
    fn greeting_reads(
        &self,
        names: &[String],
        since: Option<u64>,
    ) -> Result<Vec<GreetingRead>, Refusal> {
        let rooms: Vec<(String, Arc<Room>)> = {
            let mut reg = self.lock();
            names
                .iter()
                .map(|name| {
                    let room = Arc::clone(
                        reg.rooms
                            .entry(name.clone())
                            .or_insert_with(|| Arc::new(Room::new(name, Arc::clone(&self.ctx)))),
                    );
                    room.pin();
                    (name.clone(), room)
                })
                .collect()
        };
        let mut out = Vec::with_capacity(rooms.len());
        for (name, room) in rooms {
            match self.read_since(&room, since, 0) {
                Ok(remote) => out.push((name, room, remote)),
                Err(e) => {
                    let mut reg = self.lock();
                    let reg = &mut *reg;
                    for (n, r, _) in &out {
                        self.unpin(reg, n, r);
                    }
                    self.unpin(reg, &name, &room);
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// A request that pinned `room` is done with it: an unused room goes.
    fn unpin(&self, reg: &mut Registry, name: &str, room: &Arc<Room>) {
        if room.unpin()
            && name != LOBBY
            && reg.rooms.get(name).is_some_and(|r| Arc::ptr_eq(r, room))
        {
            reg.rooms.remove(name);
        }
    }

    fn unpin_all(&self, reg: &mut Registry, reads: &[GreetingRead]) {
        for (name, room, _) in reads {
            self.unpin(reg, name, room);
        }
    }

    /// Whether `token` resumes the member now called `nick` (a takeover,
    /// which needs no password: DESIGN.md, "Registered nicks").
    pub(crate) fn resumes(&self, nick: &str, token: Option<&str>) -> bool {
        let Some(token) = token else {
            return false;
        };
        let reg = self.lock();
        let owner = reg.by_token.get(token);
        owner.is_some() && reg.by_nick.get(&nick_key(nick)) == owner
    }

    /// The nick of member `id`, if `client` acts for it.
    pub(crate) fn nick_of(&self, id: MemberId, client: &Arc<Client>) -> Result<String, Refusal> {
        let mut reg = self.lock();
        Ok(owned(&mut reg.members, id, client)?.nick.clone())
    }

    /// media: the member a session token names, while its session is
    /// joined (`POST /upload` authenticates with the welcome's token).
    pub(crate) fn member_by_token(&self, token: &str) -> Option<MemberId> {
        self.lock().by_token.get(token).copied()
    }

    /// Member `id` enters the room `name` (created on first entry), or
    /// gets its `entered` again when it is already in. Returns the room and
    /// the membership version of the users list sent.
    ///
    /// cluster hook: runs on the cluster worker (the greeting's read, and
    /// the cluster-wide `--max-rooms` check, wait on Redis), without the
    /// registry lock held meanwhile.
    pub(crate) fn enter(
        &self,
        id: MemberId,
        client: &Arc<Client>,
        name: &str,
        since: Option<u64>,
    ) -> Result<(Arc<Room>, u64), Refusal> {
        let mut reg = self.lock();
        let member = owned(&mut reg.members, id, client)?;
        let new_seat = !member.rooms.contains(name);
        if new_seat {
            if member.rooms.len() >= self.max_rooms_per_user {
                return Err(Refusal::new(
                    ErrorCode::TooManyRooms,
                    format!(
                        "you are in {} rooms, the most allowed; leave one first",
                        member.rooms.len()
                    ),
                ));
            }
            // A cluster counts its rooms in Redis (the read below).
            let known = reg.rooms.contains_key(name);
            if !known && self.ctx.cluster.is_none() && reg.rooms.len() >= self.max_rooms {
                return Err(Refusal::new(
                    ErrorCode::TooManyRooms,
                    format!(
                        "the server holds {} rooms, the most allowed",
                        reg.rooms.len()
                    ),
                ));
            }
        }
        // Made here if new (persisted once it gets a message or a topic),
        // pinned until the member sits in it.
        let room = Arc::clone(
            reg.rooms
                .entry(name.to_owned())
                .or_insert_with(|| Arc::new(Room::new(name, Arc::clone(&self.ctx)))),
        );
        room.pin();
        drop(reg);
        // cluster hook: read after the room is registered (the subscriber
        // fills its ring from then on).
        let max_rooms = if new_seat { self.max_rooms } else { 0 };
        let remote = self.read_since(&room, since, max_rooms);
        let mut reg = self.lock();
        let reg = &mut *reg;
        let remote = match remote {
            Ok(r) => r,
            Err(e) => {
                self.unpin(reg, name, &room);
                return Err(e);
            }
        };
        let member = match owned(&mut reg.members, id, client) {
            Ok(m) => m,
            Err(e) => {
                self.unpin(reg, name, &room);
                return Err(e);
            }
        };
        if new_seat {
            member.rooms.insert(name.to_owned());
            if let Some(c) = &self.ctx.cluster {
                c.submit_quiet(Job::Seat {
                    room: name.to_owned(),
                    nick: member.nick.clone(),
                    enter: true,
                    quiet: false,
                });
            }
        }
        let greeting = Greeting::Entered;
        let version = room.enter(id, &member.nick, client, since, greeting, remote);
        reg.rooms
            .entry(name.to_owned())
            .or_insert_with(|| Arc::clone(&room));
        room.unpin();
        Ok((room, version))
    }

    /// Member `id` leaves the room `name`; it gets `left_room`, the others
    /// `left`. An empty room without messages or topic is forgotten.
    pub(crate) fn leave(
        &self,
        id: MemberId,
        client: &Arc<Client>,
        name: &str,
    ) -> Result<(), Refusal> {
        let mut reg = self.lock();
        let reg = &mut *reg;
        let member = owned(&mut reg.members, id, client)?;
        if !member.rooms.remove(name) {
            return Err(not_in_room());
        }
        if let Some(c) = &self.ctx.cluster {
            // cluster hook
            c.submit_quiet(Job::Seat {
                room: name.to_owned(),
                nick: member.nick.clone(),
                enter: false,
                quiet: false,
            });
        }
        if let Some(room) = reg.rooms.get(name) {
            if room.leave(id) && name != LOBBY {
                // A forgotten room (no message ever, no topic) has
                // nothing worth loading in the store.
                reg.rooms.remove(name);
            }
        }
        client.send(client.frame(&format!(r#"{{"type":"left_room","room":{}}}"#, quote(name))));
        Ok(())
    }

    /// Removes member `id` if `client` still owns it (a member taken over
    /// by a resume belongs to the new connection): out of every room, each
    /// of which tells its members.
    pub(crate) fn leave_all(&self, id: MemberId, client: &Arc<Client>) {
        let mut reg = self.lock();
        let reg = &mut *reg;
        if owned(&mut reg.members, id, client).is_err() {
            return;
        }
        let Some(member) = reg.members.remove(&id) else {
            return;
        };
        let key = nick_key(&member.nick);
        if let Some(c) = &self.ctx.cluster {
            // cluster hook: presence elsewhere, then the nick freed.
            for name in &member.rooms {
                c.submit_quiet(Job::Seat {
                    room: name.clone(),
                    nick: member.nick.clone(),
                    enter: false,
                    quiet: false,
                });
            }
            c.submit_quiet(Job::Release {
                value: c.claim_value(id.0, &member.nick, &member.token),
                key: key.clone(),
            });
            c.forget_token(&member.token, id.0); // accounts + media hook
        }
        reg.by_nick.remove(&key);
        reg.by_token.remove(&member.token);
        for name in &member.rooms {
            if let Some(room) = reg.rooms.get(name) {
                if room.leave(id) && name != LOBBY {
                    reg.rooms.remove(name);
                }
            }
        }
        if self.ctx.log {
            eprintln!("chat: {} left as {:?}", client.label(), member.nick);
        }
    }

    /// Renames member `id` server-wide; a case variant of one's own nick is
    /// allowed. Each room the member is in hears `renamed` once; a member
    /// in no room gets its ack without `room`.
    ///
    /// cluster hook: the new nick is claimed in Redis on the cluster
    /// worker, reserved here meanwhile (the registry lock is not held).
    pub(crate) fn rename(
        &self,
        id: MemberId,
        client: &Arc<Client>,
        nick: &str,
        gate: Gate,
    ) -> Result<(), Refusal> {
        check_nick(nick)?;
        let key = nick_key(nick);
        let mut reg = self.lock();
        let member = owned(&mut reg.members, id, client)?;
        let (old_nick, token) = (member.nick.clone(), member.token.clone());
        let own = nick_key(&old_nick) == key;
        if !own && (reg.by_nick.contains_key(&key) || reg.reserved.contains(&key)) {
            return Err(taken(nick));
        }
        if let Some(c) = &self.ctx.cluster {
            // Claim the new nick, free the old claim; other nodes say
            // `renamed` in each room.
            if !own {
                reg.reserved.insert(key.clone());
            }
            drop(reg);
            // One's own nick (a case variant) needs no password.
            let gate = if own { Gate::Passed } else { gate };
            let claimed = c.claim_nick(&key, &c.claim_value(id.0, nick, &token), gate);
            reg = self.lock();
            if !own {
                reg.reserved.remove(&key);
            }
            let gone = owned(&mut reg.members, id, client).is_err();
            match claimed {
                Ok(Claim::Claimed) if gone => {
                    c.submit_quiet(Job::Release {
                        value: c.claim_value(id.0, nick, &token),
                        key: key.clone(),
                    });
                    return Err(Refusal::new(
                        ErrorCode::NotJoined,
                        "this connection was replaced by a newer one",
                    ));
                }
                Ok(Claim::Claimed) => {}
                Ok(Claim::Taken) => return Err(taken(nick)),
                Ok(Claim::Registered) => return Err(crate::accounts::required(nick)),
                Err(e) => return Err(e),
            }
            if !own {
                c.submit_quiet(Job::Release {
                    value: c.claim_value(id.0, &old_nick, &token),
                    key: nick_key(&old_nick),
                });
            }
            let member = owned(&mut reg.members, id, client)?;
            c.submit_quiet(Job::Rename {
                rooms: member.rooms.iter().cloned().collect(),
                old: old_nick.clone(),
                new: nick.to_owned(),
            });
        }
        let reg = &mut *reg;
        let member = owned(&mut reg.members, id, client)?;
        let old = std::mem::replace(&mut member.nick, nick.to_owned());
        reg.by_nick.remove(&nick_key(&old));
        reg.by_nick.insert(key, id);
        for name in &member.rooms {
            if let Some(room) = reg.rooms.get(name) {
                room.rename(id, nick, client);
            }
        }
        if member.rooms.is_empty() {
            client.send(client.frame(&format!(
                r#"{{"type":"renamed","from":{},"to":{},"ts":{}}}"#,
                quote(&old),
                quote(nick),
                crate::room::now_ms()
            )));
        }
        if self.ctx.log {
            eprintln!("chat: {} renamed {old:?} to {nick:?}", client.label());
        }
        Ok(())
    }

    /// A private message from member `id` to the member called `to`, maybe
    /// with an image `media` holds.
    pub(crate) fn private(
        &self,
        id: MemberId,
        client: &Arc<Client>,
        to: &str,
        text: &str,
        image: Option<&str>,
        media: &Media,
    ) -> Result<(), Refusal> {
        if let Some(c) = &self.ctx.cluster {
            return self.private_cluster(c, id, client, to, text, (image, media));
        }
        let mut reg = self.lock();
        let reg = &mut *reg;
        owned(&mut reg.members, id, client)?;
        let Some(target) = reg.by_nick.get(&nick_key(to)).copied() else {
            return Err(Refusal::new(
                ErrorCode::UnknownUser,
                format!("nobody called {to:?} is online"),
            ));
        };
        self.ctx.check_len(text)?;
        let (image_json, image) = crate::room::image_fields(image, media)?;
        let msg_id = self.ctx.take_id();
        let (Some(from), Some(dest)) = (reg.members.get(&id), reg.members.get(&target)) else {
            return Ok(());
        };
        let ts = crate::room::now_ms();
        let msg = format!(
            r#"{{"type":"private","id":{msg_id},"ts":{ts},"from":{},"to":{},"text":{}{image_json}}}"#,
            quote(&from.nick),
            quote(&dest.nick),
            quote(text)
        );
        let mut out = crate::client::Outgoing::text(&msg);
        from.client.send(out.frame_for(&from.client));
        if target != id {
            dest.client.send(out.frame_for(&dest.client));
        }
        if let Some(store) = &self.ctx.store {
            store.record(Record {
                id: msg_id,
                ts,
                room: None,
                from: from.nick.clone(),
                to: Some(dest.nick.clone()),
                text: text.to_owned(),
                image,
                json: msg.into(),
            });
        }
        Ok(())
    }

    /// cluster hook: the greeting's stream read (none without `--redis`).
    fn read_since(
        &self,
        room: &Room,
        since: Option<u64>,
        max_rooms: usize,
    ) -> Result<Option<Remote>, Refusal> {
        let Some(c) = &self.ctx.cluster else {
            return Ok(None);
        };
        // A resume reaches past the ring, as far as one reply holds.
        let count = if since.is_some() {
            1000
        } else {
            self.ctx.history_len
        };
        let members = !room.knows_remote();
        c.read_since(room.name(), since, count, max_rooms, members)
            .map(Some)
    }

    /// cluster hook: a private message through Redis (its id is
    /// cluster-wide); both ends get it from the subscription, on whichever
    /// node they are.
    fn private_cluster(
        &self,
        c: &Cluster,
        id: MemberId,
        client: &Arc<Client>,
        to: &str,
        text: &str,
        (image, media): (Option<&str>, &Media),
    ) -> Result<(), Refusal> {
        let to_key = nick_key(to);
        let (from, local_to) = {
            let mut reg = self.lock();
            let reg = &mut *reg;
            let from = owned(&mut reg.members, id, client)?.nick.clone();
            let local_to = reg
                .by_nick
                .get(&to_key)
                .and_then(|t| reg.members.get(t))
                .map(|m| m.nick.clone());
            (from, local_to)
        };
        let to_nick = match local_to {
            Some(n) => n,
            None => c.nick_owner(&to_key)?.ok_or_else(|| {
                Refusal::new(
                    ErrorCode::UnknownUser,
                    format!("nobody called {to:?} is online"),
                )
            })?,
        };
        self.ctx.check_len(text)?;
        // media: checked against the cluster-wide image store (Redis).
        let (image_json, _) = crate::room::image_fields(image, media)?;
        let prefix = r#"{"type":"private","id":"#.to_owned();
        let suffix = format!(
            r#","ts":{},"from":{},"to":{},"text":{}{image_json}}}"#,
            crate::room::now_ms(),
            quote(&from),
            quote(&to_nick),
            quote(text)
        );
        c.submit(c.private_job(&to_key, &nick_key(&from), prefix, suffix, client))
    }

    /// cluster hook: member `member` (nick key `key`) was taken over on
    /// another node with its resume token: it leaves this node without a
    /// notice (it lives on there) and its connection is closed with 4000.
    pub(crate) fn kick(&self, key: &str, member: u64) {
        let mut reg = self.lock();
        let reg = &mut *reg;
        let Some(&id) = reg.by_nick.get(key).filter(|id| id.0 == member) else {
            return;
        };
        let Some(m) = reg.members.remove(&id) else {
            return;
        };
        reg.by_nick.remove(key);
        reg.by_token.remove(&m.token);
        for name in &m.rooms {
            if let Some(room) = reg.rooms.get(name) {
                room.leave_quietly(id);
            }
        }
        m.client.close(close_replaced(), "replaced");
        if self.ctx.log {
            eprintln!(
                "chat: {} {:?} resumed on another node",
                m.client.label(),
                m.nick
            );
        }
    }

    /// cluster hook: the local room called `name`, for the subscriber.
    pub(crate) fn room(&self, name: &str) -> Option<Arc<Room>> {
        self.lock().rooms.get(name).cloned()
    }

    /// cluster hook: a private message from the subscription to the local
    /// members called `to_key` and `from_key` (once if they are one).
    pub(crate) fn deliver_private(&self, to_key: &str, from_key: &str, json: &str) {
        let reg = self.lock();
        let mut out = crate::client::Outgoing::text(json);
        let to = reg.by_nick.get(to_key).copied();
        let from = reg.by_nick.get(from_key).copied();
        for m in [to, from.filter(|f| Some(*f) != to)].into_iter().flatten() {
            if let Some(m) = reg.members.get(&m) {
                m.client.send(out.frame_for(&m.client));
            }
        }
    }

    /// cluster hook: every local member as (nick key, claim, nick, rooms),
    /// for restoring Redis after an outage.
    pub(crate) fn cluster_members(&self) -> Vec<(String, String, String, Vec<String>)> {
        let Some(c) = &self.ctx.cluster else {
            return Vec::new();
        };
        self.lock()
            .members
            .iter()
            .map(|(id, m)| {
                (
                    nick_key(&m.nick),
                    c.claim_value(id.0, &m.nick, &m.token),
                    m.nick.clone(),
                    m.rooms.iter().cloned().collect(),
                )
            })
            .collect()
    }

    /// Sends `client` the rooms after the name `after`, sorted by name, as
    /// many as one reply holds, and whether more follow.
    pub(crate) fn rooms(&self, client: &Arc<Client>, after: Option<&str>) {
        const HEAD: &str = r#"{"type":"rooms","rooms":["#;
        let budget = self.ctx.reply_max.saturating_sub(HEAD.len() + 16);
        // A snapshot of the map, so no room lock is taken under the
        // registry's (a busy room's broadcast would hold up every join).
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let local: Vec<(String, Arc<Room>)> = self
            .lock()
            .rooms
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(name, room)| (name.clone(), Arc::clone(room)))
            .collect();
        // name -> (members, topic): this node's rooms, plus (cluster hook)
        // every room of the cluster with its members on other nodes
        // (this node counts its own: its seats reach Redis a moment later).
        let mut rooms: BTreeMap<String, (usize, String)> = local
            .iter()
            .map(|(name, room)| (name.clone(), room.summary()))
            .collect();
        let mut more = false;
        if let Some(c) = &self.ctx.cluster {
            const PAGE: usize = 4096;
            let listed = match c.rooms(after, PAGE) {
                Ok(l) => l,
                Err(e) => {
                    client.send(client.frame(&e.to_json()));
                    return;
                }
            };
            more = listed.len() == PAGE;
            if let Some((last, ..)) = listed.last().filter(|_| more) {
                // Past Redis' page, the next page answers.
                let last = last.clone();
                rooms.retain(|name, _| *name <= last);
            }
            for (name, topic, others) in listed {
                let e = rooms.entry(name).or_insert((0, String::new()));
                e.0 += others;
                if e.1.is_empty() {
                    e.1 = topic;
                }
            }
        }
        let mut out = String::from(HEAD);
        let mut used = 0;
        let mut first = true;
        for (name, (users, topic)) in &rooms {
            let entry = format!(
                r#"{{"name":{},"users":{users},"topic":{}}}"#,
                quote(name),
                quote(topic)
            );
            let cost = entry.len() + usize::from(!first);
            if !first && used + cost > budget {
                more = true;
                break;
            }
            if !first {
                out.push(',');
            }
            out.push_str(&entry);
            used += cost;
            first = false;
        }
        out.push_str(&format!(r#"],"more":{more}}}"#));
        client.send(client.frame(&out));
    }
}

/// The member `id`, if `client` is the connection that acts for it: a
/// connection replaced by a takeover acts for nobody.
fn owned<'a>(
    members: &'a mut HashMap<MemberId, Member>,
    id: MemberId,
    client: &Arc<Client>,
) -> Result<&'a mut Member, Refusal> {
    members
        .get_mut(&id)
        .filter(|m| Arc::ptr_eq(&m.client, client))
        .ok_or_else(|| {
            Refusal::new(
                ErrorCode::NotJoined,
                "this connection was replaced by a newer one",
            )
        })
}

fn taken(nick: &str) -> Refusal {
    Refusal::new(
        ErrorCode::NickTaken,
        format!("the nickname {nick:?} is taken"),
    )
}

pub(crate) fn not_in_room() -> Refusal {
    Refusal::new(
        ErrorCode::NotInRoom,
        "you are not in this room; enter it first",
    )
}

/// A 128-bit secret from the OS CSPRNG, hex-encoded.
fn new_token() -> String {
    let mut raw = [0u8; 16];
    // A failing CSPRNG leaves zeros; the session id then still differs per
    // session only through the map, so fall back to the clock mixed in.
    if getrandom::getrandom(&mut raw).is_err() {
        raw[..8].copy_from_slice(&crate::room::now_ms().to_le_bytes());
    }
    raw.iter().map(|b| format!("{b:02x}")).collect()
}
