//! The room: members, nicknames, the history ring and fan-out.
//!
//! One mutex guards the whole room. A broadcast is serialized and framed
//! once while holding it, and handed to each member with a non-blocking
//! send ([`Client::send`]), so every member sees room events in the same order
//! and a slow member costs the others nothing but a queue push.

use crate::client::{close_replaced, Client};
use crate::protocol::{check_nick, nick_key, ErrorCode, Refusal};
use bytes::Bytes;
use serde_json::json;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

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
    log: bool,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    next_member: u64,
    members: BTreeMap<MemberId, Member>,
    by_nick: HashMap<String, MemberId>,
    by_token: HashMap<String, MemberId>,
    /// Bumped whenever the online list changes (join, leave, rename).
    version: u64,
    /// Room messages, oldest first, each as its JSON object text.
    history: VecDeque<(u64, Arc<str>)>,
}

/// A nick in the room, with the one connection that acts for it.
#[derive(Debug)]
struct Member {
    nick: String,
    token: String,
    client: Arc<Client>,
}

impl Room {
    pub fn new(history_len: usize, max_text: usize, max_queue: usize, log: bool) -> Self {
        Self {
            state: Mutex::new(State {
                next_id: 1,
                ..State::default()
            }),
            history_len,
            max_text,
            reply_max: REPLY_MAX_BYTES.min(max_queue / 2),
            log,
        }
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
        let head = format!(
            r#"{{"type":"welcome","nick":{},"token":{},"users":{},"history":["#,
            json!(member.nick),
            json!(member.token),
            users_json(&st.users()),
        );
        let eligible = st
            .history
            .iter()
            .rev()
            .filter(|(id, _)| since.map_or(true, |s| *id > s));
        let budget = self.reply_max.saturating_sub(head.len() + TAIL_MAX);
        let (body, more) = newest_that_fit(eligible, usize::MAX, budget);
        let welcome = format!(r#"{head}{body}],"more":{more}}}"#);
        client.send(Client::frame_text(&welcome));
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
                let joined = json!({"type": "joined", "nick": member.nick, "ts": now_ms()});
                st.broadcast_deferred(&joined.to_string(), Some(id));
                if self.log {
                    eprintln!("chat: {} joined as {:?}", client.label(), member.nick);
                }
            }
        }
        Ok(Joined {
            id,
            users_version: st.version,
        })
    }

    /// A room message from member `id`, sent by `client`.
    pub fn message(&self, id: MemberId, client: &Arc<Client>, text: &str) -> Result<(), Refusal> {
        self.check_len(text)?;
        let mut st = self.lock();
        let from = st.owned(id, client)?.nick.clone();
        let msg_id = st.take_id();
        let msg: Arc<str> =
            json!({"type": "message", "id": msg_id, "ts": now_ms(), "from": from, "text": text})
                .to_string()
                .into();
        st.broadcast(&msg, None);
        st.history.push_back((msg_id, msg));
        while st.history.len() > self.history_len {
            st.history.pop_front();
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
        let msg = json!({"type": "private", "id": msg_id, "ts": now_ms(), "from": from.nick, "to": dest.nick, "text": text});
        let frame = Client::frame_text(&msg.to_string());
        from.client.send(frame.clone());
        if target != id {
            dest.client.send(frame);
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
        st.broadcast(&msg.to_string(), None);
        if self.log {
            eprintln!("chat: {} renamed {old:?} to {nick:?}", client.label());
        }
        Ok(())
    }

    /// Sends the online list to member `id`; returns the membership version
    /// it shows.
    pub fn who(&self, id: MemberId, client: &Arc<Client>) -> Result<u64, Refusal> {
        let st = self.lock();
        st.owned(id, client)?;
        let users = format!(r#"{{"type":"users","users":{}}}"#, users_json(&st.users()));
        let version = st.version;
        drop(st);
        client.send(Client::frame_text(&users));
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
        let (body, more) = newest_that_fit(eligible, limit, budget);
        drop(st);
        let msg = format!(r#"{HEAD}{body}],"more":{more}}}"#);
        client.send(Client::frame_text(&msg));
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
        let msg = json!({"type": "left", "nick": member.nick, "ts": now_ms()});
        st.broadcast_deferred(&msg.to_string(), None);
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
fn newest_that_fit<'a>(
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

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn users(&self) -> Vec<&str> {
        self.members.values().map(|m| m.nick.as_str()).collect()
    }

    /// Frames `json` once and sends the same bytes to every member but
    /// `except`, written directly where the socket has room.
    fn broadcast(&self, json: &str, except: Option<MemberId>) {
        let frame: Bytes = Client::frame_text(json);
        for (id, m) in &self.members {
            if Some(*id) != except {
                m.client.send(frame.clone());
            }
        }
    }

    /// As [`broadcast`](Self::broadcast), but through the flusher, which
    /// coalesces bursts (presence notices).
    fn broadcast_deferred(&self, json: &str, except: Option<MemberId>) {
        let frame: Bytes = Client::frame_text(json);
        for (id, m) in &self.members {
            if Some(*id) != except {
                m.client.send_deferred(frame.clone());
            }
        }
    }
}

/// The online list as a JSON array, serialized straight from the borrowed
/// names (no intermediate `Value` with a copy of each).
fn users_json(users: &[&str]) -> String {
    serde_json::to_string(users).unwrap_or_else(|_| "[]".into())
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
