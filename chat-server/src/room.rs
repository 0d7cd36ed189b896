//! The room: members, nicknames, the history ring and fan-out.
//!
//! One mutex guards the whole room. A broadcast is serialized and framed
//! once while holding it, and handed to each member with a non-blocking
//! send ([`Peer::send`]), so every member sees room events in the same order
//! and a slow member costs the others nothing but a queue push.

use crate::outbox::Peer;
use crate::protocol::{check_nick, nick_key, ErrorCode, Refusal};
use bytes::Bytes;
use serde_json::json;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Close code sent to a connection whose session was taken over by a resume
/// (DESIGN.md: 4000 "replaced"; 4000-4999 are for applications, RFC 6455
/// §7.4.2).
pub const CLOSE_REPLACED: u16 = 4000;

/// A joined member's session handle, held by its reader thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(u64);

/// The single chat room.
#[derive(Debug)]
pub struct Room {
    state: Mutex<State>,
    history_len: usize,
    max_text: usize,
    log: bool,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    next_session: u64,
    sessions: BTreeMap<SessionId, Session>,
    by_nick: HashMap<String, SessionId>,
    by_token: HashMap<String, SessionId>,
    /// Room messages, oldest first, each as its JSON object text.
    history: VecDeque<(u64, Arc<str>)>,
}

#[derive(Debug)]
struct Session {
    nick: String,
    token: String,
    peer: Arc<Peer>,
}

impl Room {
    pub fn new(history_len: usize, max_text: usize, log: bool) -> Self {
        Self {
            state: Mutex::new(State {
                next_id: 1,
                ..State::default()
            }),
            history_len,
            max_text,
            log,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update below leaves the maps consistent before any call that
        // could panic, so a poisoned lock still guards valid state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins `peer` as `nick`, or takes over the session that `token` names
    /// when its nick matches. Sends the welcome, and `joined` to the others
    /// (not for a takeover, which is silent).
    pub fn join(
        &self,
        peer: &Arc<Peer>,
        nick: &str,
        since: Option<u64>,
        token: Option<&str>,
    ) -> Result<SessionId, Refusal> {
        check_nick(nick)?;
        let key = nick_key(nick);
        let mut st = self.lock();
        let resumed = token
            .and_then(|t| st.by_token.get(t).copied())
            .filter(|sid| st.by_nick.get(&key) == Some(sid));
        let (sid, old) = if let Some(sid) = resumed {
            let session = st
                .sessions
                .get_mut(&sid)
                .ok_or_else(|| Refusal::new(ErrorCode::NickTaken, "session vanished"))?;
            let old = std::mem::replace(&mut session.peer, Arc::clone(peer));
            (sid, Some(old))
        } else {
            if st.by_nick.contains_key(&key) {
                return Err(Refusal::new(
                    ErrorCode::NickTaken,
                    format!("the nickname {nick:?} is taken"),
                ));
            }
            let sid = SessionId(st.next_session);
            st.next_session += 1;
            let token = new_token();
            st.by_nick.insert(key, sid);
            st.by_token.insert(token.clone(), sid);
            st.sessions.insert(
                sid,
                Session {
                    nick: nick.to_owned(),
                    token,
                    peer: Arc::clone(peer),
                },
            );
            (sid, None)
        };
        let session = &st.sessions[&sid];
        let history: Vec<&str> = st
            .history
            .iter()
            .filter(|(id, _)| since.map_or(true, |s| *id > s))
            .map(|(_, j)| &**j)
            .collect();
        let welcome = format!(
            r#"{{"type":"welcome","nick":{},"token":{},"users":{},"history":[{}]}}"#,
            json!(session.nick),
            json!(session.token),
            users_json(&st.users()),
            history.join(",")
        );
        peer.send(Peer::frame_text(&welcome));
        match old {
            Some(old) => {
                old.close(CLOSE_REPLACED, "replaced");
                eprintln!(
                    "chat: {} resumed {:?} from {}",
                    peer.label, session.nick, old.label
                );
            }
            None => {
                let joined = json!({"type": "joined", "nick": session.nick, "ts": now_ms()});
                st.broadcast_deferred(&joined.to_string(), Some(sid));
                if self.log {
                    eprintln!("chat: {} joined as {:?}", peer.label, session.nick);
                }
            }
        }
        Ok(sid)
    }

    /// A room message from `sid`.
    pub fn message(&self, sid: SessionId, text: &str) -> Result<(), Refusal> {
        self.check_len(text)?;
        let mut st = self.lock();
        let Some(from) = st.sessions.get(&sid).map(|s| s.nick.clone()) else {
            return Ok(());
        };
        let id = st.take_id();
        let msg: Arc<str> =
            json!({"type": "message", "id": id, "ts": now_ms(), "from": from, "text": text})
                .to_string()
                .into();
        st.broadcast(&msg, None);
        st.history.push_back((id, msg));
        while st.history.len() > self.history_len {
            st.history.pop_front();
        }
        Ok(())
    }

    /// A private message from `sid` to the member called `to`.
    pub fn private(&self, sid: SessionId, to: &str, text: &str) -> Result<(), Refusal> {
        let mut st = self.lock();
        let Some(target) = st.by_nick.get(&nick_key(to)).copied() else {
            return Err(Refusal::new(
                ErrorCode::UnknownUser,
                format!("nobody called {to:?} is online"),
            ));
        };
        self.check_len(text)?;
        let id = st.take_id();
        let (Some(from), Some(dest)) = (st.sessions.get(&sid), st.sessions.get(&target)) else {
            return Ok(());
        };
        let msg = json!({"type": "private", "id": id, "ts": now_ms(), "from": from.nick, "to": dest.nick, "text": text});
        let frame = Peer::frame_text(&msg.to_string());
        from.peer.send(frame.clone());
        if target != sid {
            dest.peer.send(frame);
        }
        Ok(())
    }

    /// Renames `sid`; a case variant of one's own nick is allowed.
    pub fn rename(&self, sid: SessionId, nick: &str) -> Result<(), Refusal> {
        check_nick(nick)?;
        let key = nick_key(nick);
        let mut st = self.lock();
        if st.by_nick.get(&key).is_some_and(|&owner| owner != sid) {
            return Err(Refusal::new(
                ErrorCode::NickTaken,
                format!("the nickname {nick:?} is taken"),
            ));
        }
        let Some(session) = st.sessions.get_mut(&sid) else {
            return Ok(());
        };
        let old = std::mem::replace(&mut session.nick, nick.to_owned());
        let label = session.peer.label.clone();
        st.by_nick.remove(&nick_key(&old));
        st.by_nick.insert(key, sid);
        let msg = json!({"type": "renamed", "from": old, "to": nick, "ts": now_ms()});
        st.broadcast(&msg.to_string(), None);
        if self.log {
            eprintln!("chat: {label} renamed {old:?} to {nick:?}");
        }
        Ok(())
    }

    /// Sends the online list to `peer`.
    pub fn who(&self, peer: &Arc<Peer>) {
        let users = format!(
            r#"{{"type":"users","users":{}}}"#,
            users_json(&self.lock().users())
        );
        peer.send(Peer::frame_text(&users));
    }

    /// Sends `peer` the newest `limit` room messages with id < `before`,
    /// oldest first.
    pub fn history(&self, peer: &Arc<Peer>, before: Option<u64>, limit: usize) {
        let st = self.lock();
        let picked: Vec<&str> = st
            .history
            .iter()
            .rev()
            .filter(|(id, _)| before.map_or(true, |b| *id < b))
            .take(limit)
            .map(|(_, j)| &**j)
            .collect();
        let body: Vec<&str> = picked.into_iter().rev().collect();
        let msg = format!(r#"{{"type":"history","messages":[{}]}}"#, body.join(","));
        drop(st);
        peer.send(Peer::frame_text(&msg));
    }

    /// Removes `sid` if `peer` still owns it (a session taken over by a
    /// resume belongs to the new connection), and tells the others.
    pub fn leave(&self, sid: SessionId, peer: &Arc<Peer>) {
        let mut st = self.lock();
        let owned = st
            .sessions
            .get(&sid)
            .is_some_and(|s| Arc::ptr_eq(&s.peer, peer));
        if !owned {
            return;
        }
        let Some(session) = st.sessions.remove(&sid) else {
            return;
        };
        st.by_nick.remove(&nick_key(&session.nick));
        st.by_token.remove(&session.token);
        let msg = json!({"type": "left", "nick": session.nick, "ts": now_ms()});
        st.broadcast_deferred(&msg.to_string(), None);
        if self.log {
            eprintln!("chat: {} left as {:?}", peer.label, session.nick);
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

impl State {
    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn users(&self) -> Vec<&str> {
        self.sessions.values().map(|s| s.nick.as_str()).collect()
    }

    /// Frames `json` once and sends the same bytes to every member but
    /// `except`, written directly where the socket has room.
    fn broadcast(&self, json: &str, except: Option<SessionId>) {
        let frame: Bytes = Peer::frame_text(json);
        for (sid, s) in &self.sessions {
            if Some(*sid) != except {
                s.peer.send(frame.clone());
            }
        }
    }

    /// As [`broadcast`](Self::broadcast), but through the flusher, which
    /// coalesces bursts (presence notices).
    fn broadcast_deferred(&self, json: &str, except: Option<SessionId>) {
        let frame: Bytes = Peer::frame_text(json);
        for (sid, s) in &self.sessions {
            if Some(*sid) != except {
                s.peer.send_deferred(frame.clone());
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
