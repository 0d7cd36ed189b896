//! Storage (DESIGN.md, "Storage"): SQLite in `--data DIR/chat.db`, WAL.
//!
//! Threads and bounds:
//! - **One writer thread** owns the write connection. Reactors hand it
//!   [`Record`]s through a bounded queue ([`WRITE_QUEUE`] entries) with a
//!   non-blocking `try_send`: a reactor never waits for the disk. From the
//!   first record it gets, the writer sleeps [`FLUSH_EVERY`] (20 ms), then
//!   takes everything queued (at most [`MAX_BATCH`]) and commits it as one
//!   transaction: one wake-up and one commit per window, whatever the
//!   message rate, and a message is in the WAL within 20 ms plus a commit
//!   (a few ms), under DESIGN.md's 50 ms. When the writer lags so far that the queue
//!   is full, the record is **not persisted** (the message is still
//!   delivered live): counted in [`Store::dropped`] and logged at most once
//!   a second. Memory stays bounded either way.
//! - **One reader thread** with its own read-only connection answers
//!   `history` requests that reach past the in-memory ring: the reactor
//!   hands it a snapshot of the ring's part and the client, and the reader
//!   queues the reply on the client itself. Its queue is bounded
//!   ([`READ_QUEUE`]); when full the reply is made from the ring alone,
//!   with `"more":true`.
//! - **Ids** are never reused, even after a crash: a high-water mark
//!   (`meta.id_limit`) is persisted ahead of use, [`ID_BLOCK`] at a time;
//!   the writer raises it in the same transaction as a batch once less
//!   than half a block is left, and a new run starts above it.
//!
//! `DIR/chat.lock` is held exclusively for the life of the store, so a
//! second server on the same directory refuses to start.

mod schema;

use crate::client::Client;
use crate::room::newest_that_fit;
use rusqlite::Connection;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Records waiting for the writer; past it, records are dropped (counted,
/// logged). 65,536 records of a few hundred bytes each is tens of MiB at
/// worst, and more than a second of the writer's throughput.
pub const WRITE_QUEUE: usize = 65_536;
/// Most records in one transaction.
pub const MAX_BATCH: usize = 4096;
/// History reads waiting for the reader thread.
pub const READ_QUEUE: usize = 1024;
/// Ids persisted ahead of use. A crash skips at most this many ids.
pub const ID_BLOCK: u64 = 1 << 20;
/// How long the writer gathers a batch after its first record. A SIGKILL
/// loses at most this plus one commit (a few ms) of messages: within
/// DESIGN.md's 50 ms.
pub const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// Nice value of the writer and reader threads (and the password
/// hashers): under CPU contention the reactors, at 0, come first.
pub(crate) const BACKGROUND_NICE: i32 = 10;
/// Times a batch is tried again when the database stays locked through
/// SQLite's busy timeout (5 s each).
const BUSY_RETRIES: u32 = 3;
/// How often the retention bound is applied to the rooms written since.
const PRUNE_EVERY: Duration = Duration::from_secs(1);
/// How long the reader waits for the writer to commit what was queued
/// before a history request (messages that left the ring but are not yet
/// in the database).
const READ_WAIT: Duration = Duration::from_secs(5);

/// A room message as the ring holds it: its id and wire JSON.
pub type Entry = (u64, Arc<str>);

/// Where and how much to keep.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The data directory (created); holds `chat.db` and `media/`.
    pub dir: PathBuf,
    /// Room messages kept per room (older ones deleted); also the number
    /// of private messages kept.
    pub retain_messages: usize,
    /// Bound of the writer's queue.
    pub write_queue: usize,
    /// Log lag and errors to stderr.
    pub log: bool,
}

/// A message's image: its `/media/...` URL, width and height.
pub type ImageRef = (String, u32, u32);

/// One message to persist.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: u64,
    pub ts: u64,
    /// `None` for a private message.
    pub room: Option<String>,
    pub from: String,
    /// The recipient of a private message.
    pub to: Option<String>,
    pub text: String,
    pub image: Option<ImageRef>,
    /// The frame payload as broadcast.
    pub json: Arc<str>,
}

/// A persisted room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRow {
    pub name: String,
    pub topic: String,
    pub topic_by: Option<String>,
    pub topic_ts: Option<u64>,
}

enum Op {
    Message(Record),
    Topic(RoomRow),
    /// A room that got its first message: its row, if it has none yet.
    Room(String),
    /// A registered nick: key, nick, Argon2id PHC hash.
    Account(String, String, String),
    /// A nick unregistered (its key).
    Unaccount(String),
    /// Only wakes the writer (to raise the id mark).
    Wake,
    Stop,
}

/// A `history` request the ring cannot answer alone.
pub struct HistoryRead {
    /// The room whose messages are read.
    pub room: String,
    pub client: Arc<Client>,
    /// The ring's eligible messages, newest first (at most `limit`).
    pub ring: Vec<Entry>,
    /// Read from the database the messages with id below this.
    pub disk_before: u64,
    pub limit: usize,
    /// Payload bytes for the messages.
    pub budget: usize,
    /// The reply up to its message list, e.g. `{"type":"history","messages":[`.
    pub head: String,
}

enum Read {
    History(HistoryRead, u64),
    Stop,
}

/// The open store; see the module docs.
#[derive(Debug)]
pub struct Store {
    writes: SyncSender<Op>,
    reads: SyncSender<Read>,
    dir: PathBuf,
    log: bool,
    /// Ids below `limit` are persisted as used-or-skippable.
    id_limit: AtomicU64,
    /// The highest id handed out.
    id_last: AtomicU64,
    first_id: u64,
    ids_raised: (Mutex<()>, Condvar),
    /// Records accepted into the queue, and records the writer has handled
    /// (committed or failed), for the reader's "wait until written".
    queued: AtomicU64,
    written: (Mutex<u64>, Condvar),
    dropped: AtomicU64,
    last_drop_log: Mutex<Option<Instant>>,
    closed: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
    lock: Mutex<Option<Connection>>,
    /// Held by the writer for each batch; a test holds it to stall the
    /// writer.
    gate: Mutex<()>,
}

fn db_err(what: &str, path: &Path, e: rusqlite::Error) -> io::Error {
    io::Error::other(format!("{what} {}: {e}", path.display()))
}

impl Store {
    /// Opens (creating) the data directory and its database, and starts
    /// the writer and reader threads.
    ///
    /// # Errors
    ///
    /// When the directory cannot be created, another server holds it, or
    /// the database cannot be opened or is not ours.
    pub fn open(config: &StoreConfig) -> io::Result<Arc<Self>> {
        let dir = &config.dir;
        std::fs::create_dir_all(dir.join("media"))?;
        let lock = schema::lock_dir(dir).map_err(|e| {
            io::Error::other(format!(
                "data directory {} is in use by another chat-server ({e})",
                dir.display()
            ))
        })?;
        let path = dir.join("chat.db");
        let conn = schema::open_writer(&path).map_err(|e| db_err("cannot open", &path, e))?;
        let first = schema::first_free_id(&conn).map_err(|e| db_err("cannot read", &path, e))?;
        schema::set_id_limit(&conn, first + ID_BLOCK)
            .map_err(|e| db_err("cannot write", &path, e))?;
        let reader = schema::open_reader(&path).map_err(|e| db_err("cannot open", &path, e))?;
        let (writes, write_rx) = mpsc::sync_channel(config.write_queue.max(1));
        let (reads, read_rx) = mpsc::sync_channel(READ_QUEUE);
        let store = Arc::new(Self {
            writes,
            reads,
            dir: dir.clone(),
            log: config.log,
            id_limit: AtomicU64::new(first + ID_BLOCK),
            id_last: AtomicU64::new(first - 1),
            first_id: first,
            ids_raised: (Mutex::new(()), Condvar::new()),
            queued: AtomicU64::new(0),
            written: (Mutex::new(0), Condvar::new()),
            dropped: AtomicU64::new(0),
            last_drop_log: Mutex::new(None),
            closed: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
            lock: Mutex::new(Some(lock)),
            gate: Mutex::new(()),
        });
        let s = Arc::clone(&store);
        let retain = config.retain_messages;
        let writer = std::thread::Builder::new()
            .name("chat-store-writer".into())
            .spawn(move || {
                // Behind the reactors: a commit may wait, a delivery not.
                crate::sys::lower_thread_priority(BACKGROUND_NICE);
                s.write_loop(conn, &write_rx, retain);
            })?;
        let s = Arc::clone(&store);
        let reader = std::thread::Builder::new()
            .name("chat-store-reader".into())
            .spawn(move || {
                crate::sys::lower_thread_priority(BACKGROUND_NICE);
                s.read_loop(&reader, &read_rx);
            })?;
        store.threads_mut().extend([writer, reader]);
        Ok(store)
    }

    fn threads_mut(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.threads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The data directory (media files go to its `media/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The first id of this run (every earlier run's ids are below it).
    pub fn first_id(&self) -> u64 {
        self.first_id
    }

    /// Records not persisted because the writer's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Notes that `id` is handed out. Returns at once unless the writer
    /// has fallen a half block behind (ID_BLOCK / 2 ids without a commit):
    /// then it waits for the writer to raise the mark, since an id above
    /// the persisted mark could be reused after a crash.
    pub fn claim_id(&self, id: u64) {
        self.id_last.fetch_max(id, Ordering::AcqRel);
        if id < self.id_limit.load(Ordering::Acquire) {
            return;
        }
        if self.log {
            eprintln!("chat: store: id {id} waits for the writer to persist a new id block");
        }
        // Wake the writer even when no record follows this id.
        let _ = self.writes.try_send(Op::Wake);
        let (lock, cv) = &self.ids_raised;
        let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        while id >= self.id_limit.load(Ordering::Acquire) && !self.closed.load(Ordering::Acquire) {
            guard = cv
                .wait_timeout(guard, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Queues `record` for the writer without waiting; when the queue is
    /// full the record is dropped (counted, logged once a second).
    pub fn record(&self, record: Record) {
        match self.writes.try_send(Op::Message(record)) {
            Ok(()) => {
                self.queued.fetch_add(1, Ordering::AcqRel);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                let mut last = self.last_drop_log.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                if self.log
                    && last.map_or(true, |t| now.duration_since(t) >= Duration::from_secs(1))
                {
                    *last = Some(now);
                    eprintln!(
                        "chat: store: writer lagging, write queue full: message not persisted ({n} so far)"
                    );
                }
            }
        }
    }

    /// Queues a room's topic (or its creation) for the writer.
    pub fn save_room(&self, row: RoomRow) {
        if self.writes.try_send(Op::Topic(row)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues the row of a room that got its first message (kept as it
    /// is when the room has one), so the room is listed after a restart.
    pub fn keep_room(&self, name: String) {
        if self.writes.try_send(Op::Room(name)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The newest `n` room messages of `room`, oldest first, and whether
    /// older ones exist. Blocks on the database: for startup only.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn recent(&self, room: &str, n: usize) -> io::Result<(Vec<Entry>, bool)> {
        let path = self.dir.join("chat.db");
        let conn = schema::open_reader(&path).map_err(|e| db_err("cannot open", &path, e))?;
        let mut rows = read_before(&conn, room, u64::MAX, n + 1)
            .map_err(|e| db_err("cannot read", &path, e))?;
        let older = rows.len() > n;
        rows.truncate(n);
        rows.reverse();
        Ok((rows, older))
    }

    /// Queues a new account (registered nick) for the writer. Accounts are
    /// few and matter: this waits for room in the queue rather than drop.
    pub fn save_account(&self, key: String, nick: String, hash: String) {
        let _ = self.writes.send(Op::Account(key, nick, hash));
    }

    /// Queues the removal of an account.
    pub fn remove_account(&self, key: String) {
        let _ = self.writes.send(Op::Unaccount(key));
    }

    /// Every account: (nick key, nick, hash). Blocks on the database: for
    /// startup only.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn accounts(&self) -> io::Result<Vec<(String, String, String)>> {
        let path = self.dir.join("chat.db");
        let read = || -> rusqlite::Result<Vec<(String, String, String)>> {
            let conn = schema::open_reader(&path)?;
            let mut stmt = conn.prepare("SELECT nick_key, nick, hash FROM accounts")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect()
        };
        read().map_err(|e| db_err("cannot read", &path, e))
    }

    /// Every persisted room. Blocks on the database: for startup only.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn rooms(&self) -> io::Result<Vec<RoomRow>> {
        let path = self.dir.join("chat.db");
        let read = || -> rusqlite::Result<Vec<RoomRow>> {
            let conn = schema::open_reader(&path)?;
            let mut stmt =
                conn.prepare("SELECT name, topic, topic_by, topic_ts FROM rooms ORDER BY name")?;
            let rows = stmt.query_map([], |r| {
                Ok(RoomRow {
                    name: r.get(0)?,
                    topic: r.get(1)?,
                    topic_by: r.get(2)?,
                    topic_ts: r.get::<_, Option<i64>>(3)?.map(|t| t as u64),
                })
            })?;
            rows.collect()
        };
        read().map_err(|e| db_err("cannot read", &path, e))
    }

    /// Answers a `history` request through the reader thread; when its
    /// queue is full, at once from the ring alone (with `"more":true`).
    pub fn read_history(&self, req: HistoryRead) {
        let after = self.queued.load(Ordering::Acquire);
        if let Err(
            TrySendError::Full(Read::History(req, _))
            | TrySendError::Disconnected(Read::History(req, _)),
        ) = self.reads.try_send(Read::History(req, after))
        {
            if self.log {
                eprintln!("chat: store: reader busy, history answered from memory");
            }
            let (body, _) = newest_that_fit(req.ring.iter(), req.limit, req.budget);
            send_reply(&req, &body, true);
        }
    }

    /// Writes everything queued, stops both threads and releases the
    /// directory. Idempotent.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        // Blocking sends: the threads are draining, and nothing else runs.
        let _ = self.writes.send(Op::Stop);
        let _ = self.reads.send(Read::Stop);
        let threads = std::mem::take(&mut *self.threads_mut());
        for t in threads {
            let _ = t.join();
        }
        self.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.ids_raised.1.notify_all();
    }

    fn write_loop(&self, mut conn: Connection, rx: &Receiver<Op>, retain: usize) {
        let mut touched: HashMap<Option<String>, u64> = HashMap::new();
        let mut last_prune = Instant::now();
        let mut batch: Vec<Op> = Vec::with_capacity(MAX_BATCH);
        loop {
            match rx.recv_timeout(PRUNE_EVERY) {
                Ok(op) => {
                    // Let the batch gather for FLUSH_EVERY: one wake-up and
                    // one commit per window instead of per message (the
                    // senders wake nobody while this thread sleeps).
                    let wake = !matches!(op, Op::Message(_));
                    batch.push(op);
                    if !wake {
                        std::thread::sleep(FLUSH_EVERY);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let stop = batch.iter().any(|op| matches!(op, Op::Stop));
            let _gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
            let records = batch.iter().filter(|o| matches!(o, Op::Message(_))).count() as u64;
            let prune = stop || last_prune.elapsed() >= PRUNE_EVERY;
            // A clean stop persists the exact mark, so a restart skips
            // no block.
            let new_limit = if stop {
                Some(self.id_last.load(Ordering::Acquire) + 1)
            } else {
                self.next_limit()
            };
            // A database locked by another process (a backup, sqlite3 in a
            // shell) past the busy timeout: try the same batch again a few
            // times before giving it up; the queue bound holds meanwhile.
            let mut tries = 0;
            let result = loop {
                let r = write_batch(
                    &mut conn,
                    &batch,
                    new_limit,
                    &mut touched,
                    prune.then_some(retain),
                );
                if tries < BUSY_RETRIES && is_busy(&r) {
                    tries += 1;
                    if self.log {
                        eprintln!("chat: store: database locked by someone else; retrying a batch of {records} messages");
                    }
                    continue;
                }
                break r;
            };
            match result {
                Ok(()) => {
                    if let Some(limit) = new_limit {
                        self.id_limit.store(limit, Ordering::Release);
                        self.ids_raised.1.notify_all();
                    }
                }
                Err(e) => {
                    if self.log {
                        eprintln!(
                            "chat: store: error: a batch of {records} messages was not written: {e}"
                        );
                    }
                }
            }
            if prune {
                last_prune = Instant::now();
                touched.clear();
            }
            batch.clear();
            let (lock, cv) = &self.written;
            *lock.lock().unwrap_or_else(|e| e.into_inner()) += records;
            cv.notify_all();
            if stop {
                break;
            }
        }
    }

    /// The id mark to persist with the next batch, if less than half a
    /// block is left.
    fn next_limit(&self) -> Option<u64> {
        let last = self.id_last.load(Ordering::Acquire);
        let limit = self.id_limit.load(Ordering::Acquire);
        (limit.saturating_sub(last) < ID_BLOCK / 2).then_some(last + ID_BLOCK)
    }

    fn read_loop(&self, conn: &Connection, rx: &Receiver<Read>) {
        while let Ok(Read::History(req, after)) = rx.recv() {
            // Messages that left the ring before the request may still be
            // queued for the writer: wait (bounded) for them to be written.
            let (lock, cv) = &self.written;
            let deadline = Instant::now() + READ_WAIT;
            let mut written = lock.lock().unwrap_or_else(|e| e.into_inner());
            while *written < after && !self.closed.load(Ordering::Acquire) {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                written = cv
                    .wait_timeout(written, left.min(Duration::from_millis(100)))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            drop(written);
            let want = req.limit.saturating_sub(req.ring.len()) + 1;
            let disk = match read_before(conn, &req.room, req.disk_before, want) {
                Ok(rows) => rows,
                Err(e) => {
                    if self.log {
                        eprintln!("chat: store: error: history read failed: {e}");
                    }
                    Vec::new()
                }
            };
            let all: Vec<Entry> = req.ring.iter().cloned().chain(disk).collect();
            let (body, more) = newest_that_fit(all.iter(), req.limit, req.budget);
            send_reply(&req, &body, more);
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // The threads hold an Arc: this runs only after `close`, or when
        // `open` failed half-way; nothing is left to do but to be sure.
        self.closed.store(true, Ordering::Release);
    }
}

fn is_busy(r: &rusqlite::Result<()>) -> bool {
    matches!(
        r,
        Err(rusqlite::Error::SqliteFailure(e, _))
            if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn send_reply(req: &HistoryRead, body: &str, more: bool) {
    let msg = format!(r#"{}{body}],"more":{more}}}"#, req.head);
    req.client.send(req.client.frame(&msg));
}

/// Room messages of `room` with id below `before`, newest first, at most `n`.
fn read_before(
    conn: &Connection,
    room: &str,
    before: u64,
    n: usize,
) -> rusqlite::Result<Vec<Entry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, json FROM messages WHERE room = ?1 AND to_nick IS NULL AND id < ?2
         ORDER BY id DESC LIMIT ?3",
    )?;
    let before = before.min(i64::MAX as u64) as i64;
    let rows = stmt.query_map(rusqlite::params![room, before, n as i64], |r| {
        Ok((
            r.get::<_, i64>(0)? as u64,
            Arc::<str>::from(r.get::<_, String>(1)?),
        ))
    })?;
    rows.collect()
}

fn write_batch(
    conn: &mut Connection,
    batch: &[Op],
    id_limit: Option<u64>,
    touched: &mut HashMap<Option<String>, u64>,
    retain: Option<usize>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO messages(id, room, from_nick, to_nick, text, image, width, height, ts, json)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        let mut topic = tx.prepare_cached(
            "INSERT INTO rooms(name, topic, topic_by, topic_ts) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET topic = excluded.topic,
                 topic_by = excluded.topic_by, topic_ts = excluded.topic_ts",
        )?;
        for op in batch {
            match op {
                Op::Message(r) => {
                    let (image, w, h) = match &r.image {
                        Some((url, w, h)) => (Some(url.as_str()), Some(*w), Some(*h)),
                        None => (None, None, None),
                    };
                    insert.execute(rusqlite::params![
                        r.id as i64,
                        r.room,
                        r.from,
                        r.to,
                        r.text,
                        image,
                        w,
                        h,
                        r.ts as i64,
                        &*r.json
                    ])?;
                    *touched.entry(r.room.clone()).or_default() += 1;
                }
                Op::Topic(row) => {
                    topic.execute(rusqlite::params![
                        row.name,
                        row.topic,
                        row.topic_by,
                        row.topic_ts.map(|t| t as i64)
                    ])?;
                }
                Op::Room(name) => {
                    tx.execute("INSERT OR IGNORE INTO rooms(name) VALUES (?1)", [name])?;
                }
                Op::Account(key, nick, hash) => {
                    tx.execute(
                        "INSERT OR REPLACE INTO accounts(nick_key, nick, hash, created)
                         VALUES (?1, ?2, ?3, ?4)",
                        rusqlite::params![key, nick, hash, crate::room::now_ms() as i64],
                    )?;
                }
                Op::Unaccount(key) => {
                    tx.execute("DELETE FROM accounts WHERE nick_key = ?1", [key])?;
                }
                Op::Wake | Op::Stop => {}
            }
        }
    }
    if let Some(limit) = id_limit {
        schema::set_id_limit(&tx, limit)?;
    }
    if let Some(keep) = retain {
        for room in touched.keys() {
            prune(&tx, room.as_deref(), keep)?;
        }
    }
    tx.commit()
}

/// Deletes all but the newest `keep` messages of `room` (`None`: the
/// private messages).
fn prune(conn: &Connection, room: Option<&str>, keep: usize) -> rusqlite::Result<()> {
    match room {
        Some(room) => conn.execute(
            "DELETE FROM messages WHERE room = ?1 AND to_nick IS NULL AND id <=
               (SELECT id FROM messages WHERE room = ?1 AND to_nick IS NULL
                ORDER BY id DESC LIMIT 1 OFFSET ?2)",
            rusqlite::params![room, keep as i64],
        )?,
        None => conn.execute(
            "DELETE FROM messages WHERE to_nick IS NOT NULL AND id <=
               (SELECT id FROM messages WHERE to_nick IS NOT NULL
                ORDER BY id DESC LIMIT 1 OFFSET ?1)",
            rusqlite::params![keep as i64],
        )?,
    };
    Ok(())
}

#[cfg(test)]
mod tests;
