//! Images in Redis (DESIGN.md v2, "Cluster": media are cluster-wide, and
//! with `--redis` "Redis is the store of record and `--data` holds
//! nothing"). Why Redis rather than a shared directory: every node already
//! depends on Redis and nothing else; a shared file system (NFS, a volume
//! mounted on every machine) would be a second store of record to deploy,
//! back up and keep consistent, with its own failure modes. Redis holds
//! memory, so the store is bounded: at most [`MediaLimits::max_bytes`] of
//! image bytes and [`MediaLimits::max_files`] images, each kept
//! [`MediaLimits::ttl`] after its last upload. When full, an upload gets
//! 507 (Insufficient Storage, RFC 4918 §11.5) with `Retry-After` the time
//! until the oldest image expires: images already sent stay viewable
//! (evicting them would break pictures people are looking at, silently).
//!
//! Keys (one Redis, not Redis Cluster: scripts build keys):
//! - `chat:media:<sha256>.<ext>`: the bytes, with a TTL;
//! - [`META`]: file name -> `width height bytes expires_ms`;
//! - [`EXPIRY`]: the names by expiry (Redis' clock, ms), to forget
//!   expired ones and give their bytes back to [`TOTAL`].
//!
//! An upload is still received into a temporary file (the checks of
//! `crate::media` read it), then sent in [`PIECE`]-sized round trips into a
//! temporary key, which one script ([`STORE`]) renames into place after
//! checking the bounds, so memory per upload stays bounded whatever the
//! image's size. A fetch (`GET /media/...`, on the connection's own HTTP
//! thread, never a reactor) reads the key in [`PIECE`]s too.
//!
//! Every node keeps a replica of [`META`] (with the accounts' names, see
//! `cluster::accounts`), fed by [`SYNC_CHANNEL`] (read by the node's one
//! subscription, see [`start_sync`]) and reloaded after each
//! (re)subscription, so checking an image a message names costs no round
//! trip on the reactor. The event is published by the upload's script
//! before the uploader gets its 201, but this node's subscriber may read
//! it after a message naming the image arrives here (the uploader's client
//! is quick, this node busy): a name the replica does not know is asked of
//! Redis on a cluster worker (see [`RedisMedia::get`]) before the message
//! is refused, so an image is never `unknown_media` once its upload got 201.

use super::accounts::{RedisAccounts, ACCOUNTS, SYNC_CHANNEL};
use super::{Backoff, Cluster, SyncMsg};
use crate::media::{Entry, Name};
use crate::protocol::Refusal;
use crate::room::MemberId;
use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

/// Image name -> `width height bytes expires_ms`.
const META: &str = "chat:media:meta";
/// Image names scored by expiry (ms).
const EXPIRY: &str = "chat:media:exp";
/// Image bytes held.
const TOTAL: &str = "chat:media:total";
/// Bytes per round trip, upload and fetch.
pub(crate) const PIECE: usize = 256 << 10;
/// Idle connections kept for uploads and fetches.
const POOL: usize = 8;
/// How long a half-sent upload's temporary key lives (a node that dies
/// mid-upload leaves nothing behind for longer).
const TEMP_TTL_MS: u64 = 120_000;

/// KEYS: temporary key ('' when the bytes were not sent), data key, META,
/// EXPIRY, TOTAL. ARGV: name, `width height bytes`, bytes, ttl ms, max
/// bytes, max files, channel. First forgets what expired; then an image
/// already held has its TTL renewed ('ok'); else the bytes must have been
/// sent ('send' when not), fit the bounds ('full', ms until the oldest
/// expires) and are renamed into place ('ok'). Publishes the entry.
const STORE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function bytes_of(m)
  return tonumber(string.match(m or '', '^%d+ %d+ (%d+)')) or 0
end
for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 1000)) do
  local m = redis.call('HGET', KEYS[3], n)
  if m then
    redis.call('DECRBY', KEYS[5], bytes_of(m))
    redis.call('HDEL', KEYS[3], n)
  end
  redis.call('ZREM', KEYS[4], n)
end
local exp = now + tonumber(ARGV[4])
local meta = ARGV[2] .. ' ' .. exp
local old = redis.call('HGET', KEYS[3], ARGV[1])
if old and redis.call('EXISTS', KEYS[2]) == 1 then
  if KEYS[1] ~= '' then redis.call('DEL', KEYS[1]) end
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
else
  if KEYS[1] == '' or redis.call('STRLEN', KEYS[1]) ~= tonumber(ARGV[3]) then
    return {'send'}
  end
  local total = tonumber(redis.call('GET', KEYS[5]) or '0') - bytes_of(old)
  local files = redis.call('HLEN', KEYS[3]) - (old and 1 or 0)
  if total + tonumber(ARGV[3]) > tonumber(ARGV[5]) or files + 1 > tonumber(ARGV[6]) then
    redis.call('DEL', KEYS[1])
    local oldest = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
    return {'full', tostring(math.max(0, (tonumber(oldest[2]) or now) - now))}
  end
  redis.call('RENAME', KEYS[1], KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  redis.call('INCRBY', KEYS[5], tonumber(ARGV[3]) - bytes_of(old))
end
redis.call('HSET', KEYS[3], ARGV[1], meta)
redis.call('ZADD', KEYS[4], exp, ARGV[1])
redis.call('PUBLISH', ARGV[7], 'I\t' .. ARGV[1] .. '\t' .. meta)
return {'ok'}
";

/// Session tokens held anywhere in the cluster (`POST /upload` may reach
/// any node behind a load balancer): `chat:tok:<token>` = `node TAB
/// member`, written by the node holding the session (through its
/// publisher, never on a reactor) and deleted when the session leaves;
/// written again after an outage (`scripts::RESYNC_NICKS`, from the nick
/// claims, which end with the token: see `Cluster::claim_value`).
fn token_key(token: &str) -> String {
    format!("chat:tok:{token}")
}

/// How long a token entry lives without its session leaving (a node that
/// dies leaves its entries; lookups also check the node is alive).
pub(super) const TOKEN_TTL_SECS: u64 = 7 * 86_400;

/// KEYS: the session's upload window (`chat:uprate:<token>`). ARGV: the
/// uploads allowed a minute, a member name unique to this upload. Counts
/// the upload and returns 0 if the last minute (Redis' clock) holds fewer,
/// else the ms until its oldest leaves it (at least 1), counting nothing.
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, 60000 - (now - tonumber(oldest[2])))
end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('PEXPIRE', KEYS[1], 60000)
return 0
";

/// KEYS: the token's key. ARGV: the value it must still hold.
const FORGET_TOKEN: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
";

/// KEYS: the token's key, the heartbeat set. The holder (`node TAB
/// member`) if its node is alive, else nil.
const LOOKUP_TOKEN: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return false end
local node = string.match(v, '^[^	]+')
if redis.call('ZSCORE', KEYS[2], node) then return v end
return false
";

/// The pipeline part of [`super::Job::Token`].
pub(super) fn token_job(pipe: &mut redis::Pipeline, token: &str, value: &str, set: bool) {
    if set {
        pipe.cmd("SET")
            .arg(token_key(token))
            .arg(value)
            .arg("EX")
            .arg(TOKEN_TTL_SECS)
            .ignore();
    } else {
        pipe.cmd("EVAL")
            .arg(FORGET_TOKEN)
            .arg(1)
            .arg(token_key(token))
            .arg(value)
            .ignore();
    }
}

impl Cluster {
    /// accounts + media hook: member `member` of this node holds session
    /// `token` (a join, or a takeover from another node).
    pub(crate) fn note_token(&self, token: &str, member: u64) {
        self.submit_quiet(super::Job::Token {
            token: token.to_owned(),
            value: format!("{}\t{member}", self.node),
            set: true,
        });
    }

    /// accounts + media hook: member `member` of this node left.
    pub(crate) fn forget_token(&self, token: &str, member: u64) {
        self.submit_quiet(super::Job::Token {
            token: token.to_owned(),
            value: format!("{}\t{member}", self.node),
            set: false,
        });
    }
}

/// The bounds of the image store in Redis (`--media-max-bytes`,
/// `--media-max-files`, `--media-ttl`): a cluster node's uploads past them
/// get 507 until the oldest image expires.
///
/// ```
/// use std::time::Duration;
/// let mut cluster = chat_server::ClusterConfig::new("redis://127.0.0.1:6379");
/// assert_eq!(cluster.media.max_bytes, 256 << 20);
/// cluster.media = chat_server::MediaLimits {
///     max_bytes: 64 << 20,
///     max_files: 1_000,
///     ttl: Duration::from_secs(7 * 86_400),
/// };
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaLimits {
    /// Image bytes Redis holds at most (default 256 MiB).
    pub max_bytes: u64,
    /// Images Redis holds at most (default 10,000).
    pub max_files: u64,
    /// How long an image is kept after its last upload (default 30 days).
    pub ttl: Duration,
}

impl Default for MediaLimits {
    fn default() -> Self {
        Self {
            max_bytes: 256 << 20,
            max_files: 10_000,
            ttl: Duration::from_secs(30 * 86_400),
        }
    }
}

/// Why an upload was not stored.
#[derive(Debug)]
pub(crate) enum StoreError {
    /// 507: the store is at its bound until the oldest image expires.
    Full { retry_after: Duration },
    /// 503: Redis cannot be reached (or refused).
    Unavailable(String),
    /// 500: the temporary file could not be read back.
    Disk(io::Error),
}

/// The image store of a cluster node.
pub(crate) struct RedisMedia {
    cluster: Arc<Cluster>,
    limits: MediaLimits,
    /// Name -> (entry, expiry in ms since the epoch).
    index: RwLock<HashMap<Name, (Entry, u64)>>,
    pool: Mutex<Vec<redis::Connection>>,
}

impl std::fmt::Debug for RedisMedia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisMedia")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn data_key(name: &Name) -> String {
    format!("chat:media:{}", name.file_name())
}

fn now_ms() -> u64 {
    crate::room::now_ms()
}

impl RedisMedia {
    pub(crate) fn new(cluster: &Arc<Cluster>, limits: MediaLimits) -> Self {
        Self {
            cluster: Arc::clone(cluster),
            limits,
            index: RwLock::new(HashMap::new()),
            pool: Mutex::new(Vec::new()),
        }
    }

    /// Redis is reachable (as far as the node knows).
    pub(crate) fn available(&self) -> bool {
        self.cluster.available()
    }

    /// The entry of `name`, from the replica (no round trip: a message's
    /// image is checked on a reactor). While the replica is not in sync
    /// (before its first load, after an outage or a dropped event, until
    /// the reload) `unavailable` rather than a wait on Redis. An entry the
    /// replica holds is trusted even then: images leave the store only by
    /// expiring, which the entry says itself.
    ///
    /// On a cluster worker (`may_wait`) a name the replica does not know
    /// is asked of Redis, and added when Redis holds it: its event may not
    /// have reached this node yet. `unavailable` when Redis cannot answer.
    pub(crate) fn get(&self, name: &Name) -> Result<Option<Entry>, Refusal> {
        let held = self
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .filter(|(_, exp)| *exp > now_ms())
            .map(|(e, _)| *e);
        match held {
            Some(e) => Ok(Some(e)),
            None if super::may_wait() => self.ask(name),
            None if self.cluster.replicas_synced() => Ok(None),
            None => Err(super::reloading()),
        }
    }

    /// Reads the entry of `name` from Redis into the replica: one round
    /// trip, on a worker thread.
    fn ask(&self, name: &Name) -> Result<Option<Entry>, Refusal> {
        if !self.available() {
            return Err(super::unavailable());
        }
        let mut con = self.take().map_err(|_| super::unavailable())?;
        let file = name.file_name();
        let meta: Option<String> = redis::cmd("HGET")
            .arg(META)
            .arg(&file)
            .query(&mut con)
            .map_err(|_| super::unavailable())?;
        self.give_back(con);
        let Some((n, (entry, exp))) = meta.and_then(|m| parse_meta(&file, &m)) else {
            return Ok(None);
        };
        if exp <= now_ms() {
            return Ok(None);
        }
        self.index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(n, (entry, exp));
        Ok(Some(entry))
    }

    fn take(&self) -> redis::RedisResult<redis::Connection> {
        let pooled = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match pooled {
            Some(c) => Ok(c),
            None => self.cluster.connect(),
        }
    }

    fn give_back(&self, c: redis::Connection) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL {
            pool.push(c);
        }
    }

    /// Stores the received image (its bytes in `file`) under `name`: sent
    /// only when the replica does not know it already.
    pub(crate) fn store(
        &self,
        file: &mut std::fs::File,
        name: &Name,
        entry: &Entry,
    ) -> Result<(), StoreError> {
        if !self.available() {
            return Err(StoreError::Unavailable("Redis is unreachable".into()));
        }
        let mut con = self
            .take()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let out = self.store_on(&mut con, file, name, entry);
        // A connection that failed mid-way may hold a half-read answer.
        if !matches!(out, Err(StoreError::Unavailable(_))) {
            self.give_back(con);
        }
        out
    }

    fn store_on(
        &self,
        con: &mut redis::Connection,
        file: &mut std::fs::File,
        name: &Name,
        entry: &Entry,
    ) -> Result<(), StoreError> {
        let redis_err = |e: redis::RedisError| StoreError::Unavailable(e.to_string());
        let mut temp = String::new();
        let mut sent = false;
        // Unknown, or not known yet (the replica reloading): sent; the
        // script only renews an image it holds already.
        if !matches!(self.get(name), Ok(Some(_))) {
            temp = self.send_to_temp(con, file)?;
            sent = true;
        }
        loop {
            let answer: Vec<String> = redis::cmd("EVAL")
                .arg(STORE)
                .arg(5)
                .arg(&temp)
                .arg(data_key(name))
                .arg(META)
                .arg(EXPIRY)
                .arg(TOTAL)
                .arg(name.file_name())
                .arg(format!("{} {} {}", entry.width, entry.height, entry.bytes))
                .arg(entry.bytes)
                .arg(self.limits.ttl.as_millis() as u64)
                .arg(self.limits.max_bytes)
                .arg(self.limits.max_files)
                .arg(SYNC_CHANNEL)
                .query(con)
                .map_err(redis_err)?;
            match answer.first().map(String::as_str) {
                Some("ok") => {
                    let exp = now_ms() + self.limits.ttl.as_millis() as u64;
                    self.index
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(*name, (*entry, exp));
                    return Ok(());
                }
                Some("full") => {
                    let ms: u64 = answer.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                    return Err(StoreError::Full {
                        retry_after: Duration::from_millis(ms),
                    });
                }
                // The replica knew a name that expired meanwhile: send.
                Some("send") if !sent => {
                    temp = self.send_to_temp(con, file)?;
                    sent = true;
                }
                other => {
                    return Err(StoreError::Unavailable(format!(
                        "the store script answered {other:?}"
                    )))
                }
            }
        }
    }

    /// Sends `file` into a fresh temporary key (the store script renames it
    /// into place) and returns the key.
    fn send_to_temp(
        &self,
        con: &mut redis::Connection,
        file: &mut std::fs::File,
    ) -> Result<String, StoreError> {
        let temp = format!("chat:media:up:{}", super::random_node_id());
        self.send(con, file, &temp).map_err(|e| match e {
            SendError::Redis(e) => StoreError::Unavailable(e.to_string()),
            SendError::Disk(e) => StoreError::Disk(e),
        })?;
        Ok(temp)
    }

    /// Sends the file into `temp`, one [`PIECE`] per round trip.
    fn send(
        &self,
        con: &mut redis::Connection,
        file: &mut std::fs::File,
        temp: &str,
    ) -> Result<(), SendError> {
        use std::io::Seek;
        file.seek(io::SeekFrom::Start(0)).map_err(SendError::Disk)?;
        let mut buf = vec![0u8; PIECE];
        let mut first = true;
        loop {
            let n = read_full(file, &mut buf).map_err(SendError::Disk)?;
            if n == 0 && !first {
                return Ok(());
            }
            if first {
                redis::cmd("SET")
                    .arg(temp)
                    .arg(&buf[..n])
                    .arg("PX")
                    .arg(TEMP_TTL_MS)
                    .query::<()>(con)
                    .map_err(SendError::Redis)?;
                first = false;
            } else {
                redis::cmd("APPEND")
                    .arg(temp)
                    .arg(&buf[..n])
                    .query::<()>(con)
                    .map_err(SendError::Redis)?;
            }
            if n < buf.len() {
                return Ok(());
            }
        }
    }

    /// The member holding session `token` on another node (an upload that
    /// a load balancer sent elsewhere than the session's WebSocket): an id
    /// of its own for the upload limits, derived from the token. `Err`:
    /// Redis is unreachable. On the HTTP thread, never a reactor.
    pub(crate) fn remote_member(&self, token: &str) -> Result<Option<MemberId>, String> {
        if !self.available() {
            return Err("Redis is unreachable".into());
        }
        let mut con = self.take().map_err(|e| e.to_string())?;
        let holder: Option<String> = redis::cmd("EVAL")
            .arg(LOOKUP_TOKEN)
            .arg(2)
            .arg(token_key(token))
            .arg(super::NODES)
            .query(&mut con)
            .map_err(|e| e.to_string())?;
        self.give_back(con);
        Ok(holder.map(|_| {
            use sha2::{Digest, Sha256};
            let d = Sha256::digest(token.as_bytes());
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&d[..8]);
            // Local member ids count up from 1: the top bit keeps these
            // apart from them.
            MemberId(u64::from_le_bytes(raw) | 1 << 63)
        }))
    }

    /// Counts an accepted upload of the session `token` against
    /// `per_minute`, cluster-wide: behind a load balancer a session's
    /// uploads reach every node, and each node counting its own would let
    /// it upload `per_minute` times the number of nodes. `Ok(Some(wait))`:
    /// the last minute is full. `Err`: Redis is unreachable. On the HTTP
    /// thread, never a reactor.
    pub(crate) fn admit(&self, token: &str, per_minute: u32) -> Result<Option<Duration>, String> {
        if !self.available() {
            return Err("Redis is unreachable".into());
        }
        let mut con = self.take().map_err(|e| e.to_string())?;
        let ms: u64 = redis::cmd("EVAL")
            .arg(ADMIT)
            .arg(1)
            .arg(format!("chat:uprate:{token}"))
            .arg(per_minute)
            .arg(super::random_node_id())
            .query(&mut con)
            .map_err(|e| e.to_string())?;
        self.give_back(con);
        Ok((ms > 0).then(|| Duration::from_millis(ms)))
    }

    /// Opens `name` for reading: its length and a reader that fetches it a
    /// [`PIECE`] per round trip. `Ok(None)`: not held (404); `Err`: Redis
    /// is unreachable (503).
    pub(crate) fn open(&self, name: &Name) -> Result<Option<(RedisReader<'_>, u64)>, String> {
        if !self.available() {
            return Err("Redis is unreachable".into());
        }
        let mut con = self.take().map_err(|e| e.to_string())?;
        let key = data_key(name);
        let (len, first): (u64, Vec<u8>) = redis::pipe()
            .cmd("STRLEN")
            .arg(&key)
            .cmd("GETRANGE")
            .arg(&key)
            .arg(0)
            .arg(PIECE - 1)
            .query(&mut con)
            .map_err(|e| e.to_string())?;
        if len == 0 {
            self.give_back(con);
            return Ok(None);
        }
        let at = first.len() as u64;
        Ok(Some((
            RedisReader {
                media: self,
                con: Some(con),
                key,
                buf: first,
                pos: 0,
                at,
                len,
            },
            len,
        )))
    }

    fn apply(&self, fields: &str) {
        // `name TAB width height bytes expires_ms`
        let Some((name, meta)) = fields.split_once('\t') else {
            return;
        };
        if let Some((n, e)) = parse_meta(name, meta) {
            self.index
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(n, e);
        }
    }

    fn reload(&self, all: Vec<String>) {
        let mut index = HashMap::with_capacity(all.len() / 2);
        for pair in all.chunks_exact(2) {
            if let Some((n, e)) = parse_meta(&pair[0], &pair[1]) {
                index.insert(n, e);
            }
        }
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = index;
    }

    fn sweep(&self) {
        let now = now_ms();
        self.index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (_, exp)| *exp > now);
    }
}

fn parse_meta(name: &str, meta: &str) -> Option<(Name, (Entry, u64))> {
    let name = Name::parse(name)?;
    let mut f = meta.split(' ').map(str::parse::<u64>);
    let (Some(Ok(w)), Some(Ok(h)), Some(Ok(bytes)), Some(Ok(exp))) =
        (f.next(), f.next(), f.next(), f.next())
    else {
        return None;
    };
    let entry = Entry {
        width: u32::try_from(w).ok()?,
        height: u32::try_from(h).ok()?,
        bytes,
    };
    Some((name, (entry, exp)))
}

enum SendError {
    Redis(redis::RedisError),
    Disk(io::Error),
}

fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// An image read from Redis a [`PIECE`] at a time.
pub(crate) struct RedisReader<'a> {
    media: &'a RedisMedia,
    con: Option<redis::Connection>,
    key: String,
    buf: Vec<u8>,
    pos: usize,
    /// Bytes of the image fetched so far.
    at: u64,
    len: u64,
}

impl Read for RedisReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            if self.at >= self.len {
                return Ok(0);
            }
            let con = self
                .con
                .as_mut()
                .ok_or_else(|| io::Error::other("connection lost"))?;
            let end = (self.at + PIECE as u64).min(self.len) - 1;
            let got: Vec<u8> = redis::cmd("GETRANGE")
                .arg(&self.key)
                .arg(self.at)
                .arg(end)
                .query(con)
                .map_err(|e| {
                    self.con = None;
                    io::Error::other(e.to_string())
                })?;
            if got.is_empty() {
                // Expired mid-read: the answer is cut short.
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.at += got.len() as u64;
            self.buf = got;
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for RedisReader<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.con.take() {
            if self.at >= self.len && self.pos == self.buf.len() {
                self.media.give_back(c);
            }
        }
    }
}

/// Starts the node's sync thread: it applies what the subscriber (the
/// one subscription of the node, in `cluster`) read from [`SYNC_CHANNEL`],
/// in order. At each [`SyncMsg::Load`] (after every (re)subscription, and
/// after an event had to be dropped) it reads the replicas of the
/// registered names and of the images whole, then applies the events
/// queued behind it: the load happened after they were subscribed to, so
/// the replicas end as Redis is. The subscriber never waits on this
/// thread.
pub(crate) fn start_sync(accounts: &Arc<RedisAccounts>, media: &Arc<RedisMedia>) -> io::Result<()> {
    let (a, m) = (Arc::downgrade(accounts), Arc::downgrade(media));
    let cluster = Arc::clone(&accounts.cluster);
    let rx = cluster
        .sync_rx
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .ok_or_else(|| io::Error::other("cluster sync already started"))?;
    std::thread::Builder::new()
        .name("chat-redis-sync".into())
        .spawn(move || sync(&cluster, &rx, &a, &m))?;
    Ok(())
}

fn sync(
    cluster: &Cluster,
    rx: &Receiver<SyncMsg>,
    accounts: &Weak<RedisAccounts>,
    media: &Weak<RedisMedia>,
) {
    let gone = || {
        cluster.stop.load(Ordering::Acquire)
            || accounts.strong_count() == 0
            || media.strong_count() == 0
    };
    let mut swept = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(300)) {
            Ok(SyncMsg::Load) => {
                if !load(cluster, accounts, media, &gone) {
                    return;
                }
            }
            Ok(SyncMsg::Event(payload)) => {
                let Ok(text) = std::str::from_utf8(&payload) else {
                    continue;
                };
                if let Some(key) = text.strip_prefix("A+\t") {
                    accounts.upgrade().inspect(|a| a.apply(true, key));
                } else if let Some(key) = text.strip_prefix("A-\t") {
                    accounts.upgrade().inspect(|a| a.apply(false, key));
                } else if let Some(fields) = text.strip_prefix("I\t") {
                    media.upgrade().inspect(|m| m.apply(fields));
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if gone() {
                    return;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if swept.elapsed() >= Duration::from_secs(60) {
            swept = Instant::now();
            media.upgrade().inspect(|m| m.sweep());
        }
    }
}

/// Reads both replicas whole (one round trip), retrying with backoff
/// until it works (the events behind the load wait in the queue; past its
/// bound the subscriber owes another load), on a connection of its own
/// dropped after (reloads are rare). False: the node is stopping.
fn load(
    cluster: &Cluster,
    accounts: &Weak<RedisAccounts>,
    media: &Weak<RedisMedia>,
    gone: &dyn Fn() -> bool,
) -> bool {
    let mut backoff = Backoff::new();
    let mut said = false;
    loop {
        if gone() {
            return false;
        }
        let loaded: redis::RedisResult<(Vec<String>, Vec<String>)> =
            cluster.connect().and_then(|mut c| {
                redis::pipe()
                    .cmd("HKEYS")
                    .arg(ACCOUNTS)
                    .cmd("HGETALL")
                    .arg(META)
                    .query(&mut c)
            });
        match loaded {
            Ok((names, images)) => {
                let (Some(a), Some(m)) = (accounts.upgrade(), media.upgrade()) else {
                    return false;
                };
                a.reload(names);
                m.reload(images);
                cluster.loads_owed.fetch_sub(1, Ordering::AcqRel);
                return true;
            }
            Err(e) => {
                // An outage is logged by whoever sees it first; a refusal
                // (a key of the wrong type) leaves the checks that read the
                // replicas `unavailable` until fixed: said once per load.
                let outage = e.is_io_error() || e.is_timeout() || e.is_connection_dropped();
                if !outage && !said && cluster.log {
                    said = true;
                    eprintln!("chat: redis refused to load the replicas of accounts and images ({e}); retrying");
                }
                backoff.sleep();
            }
        }
    }
}
