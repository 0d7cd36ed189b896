//! The database file: its pragmas, tables and the id high-water mark.
//!
//! Columns follow DESIGN.md's names; `from`/`to` are SQL keywords, so they
//! are `from_nick`/`to_nick`. Each message also keeps its wire JSON (`json`):
//! history and resume replay exactly what was broadcast, whatever fields
//! the message kinds grow (room, image), without a second serializer.

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::path::Path;

/// Schema version in `PRAGMA user_version`.
pub(crate) const VERSION: i64 = 1;

const TABLES: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rooms (
    name     TEXT PRIMARY KEY,
    topic    TEXT NOT NULL DEFAULT '',
    topic_by TEXT,
    topic_ts INTEGER
);
-- room is NULL for a private message (to_nick set): privates belong to no room.
CREATE TABLE IF NOT EXISTS messages (
    id        INTEGER PRIMARY KEY,
    room      TEXT,
    from_nick TEXT NOT NULL,
    to_nick   TEXT,
    text      TEXT NOT NULL,
    image     TEXT,
    width     INTEGER,
    height    INTEGER,
    ts        INTEGER NOT NULL,
    json      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_room ON messages(room, id) WHERE to_nick IS NULL;
CREATE INDEX IF NOT EXISTS messages_private ON messages(id) WHERE to_nick IS NOT NULL;
CREATE TABLE IF NOT EXISTS accounts (
    nick_key TEXT PRIMARY KEY,
    nick     TEXT NOT NULL,
    hash     TEXT NOT NULL,
    created  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS media (
    sha256 TEXT PRIMARY KEY,
    ext    TEXT NOT NULL,
    type   TEXT NOT NULL,
    bytes  INTEGER NOT NULL,
    width  INTEGER NOT NULL,
    height INTEGER NOT NULL
);
INSERT OR IGNORE INTO rooms(name) VALUES ('lobby');
";

/// Opens (creating) `chat.db` for writing: WAL, so the reader connection
/// never waits for the writer; `synchronous=NORMAL`, so a commit is one
/// WAL append without fsync: it survives the process being killed (the
/// kernel holds the pages) but not a power cut, which may lose the last
/// commits, never the database (SQLite's WAL guarantee).
pub(crate) fn open_writer(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(TABLES)?;
    conn.pragma_update(None, "user_version", VERSION)?;
    Ok(conn)
}

/// A read-only connection for the history reader thread.
pub(crate) fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// Holds `DIR/chat.lock` exclusively while the returned connection lives:
/// a second server on the same directory would hand out the same ids.
/// (SQLite's exclusive locking mode keeps the write lock after the first
/// write until the connection closes; it also excludes a second
/// connection in this process.)
pub(crate) fn lock_dir(dir: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(dir.join("chat.lock"))?;
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS held (pid INTEGER);
         BEGIN IMMEDIATE; DELETE FROM held; INSERT INTO held VALUES (0); COMMIT;",
    )?;
    Ok(conn)
}

/// The first id this run may use: above every id ever persisted and above
/// the high-water mark of the last run (ids up to it may have been sent
/// before a crash).
pub(crate) fn first_free_id(conn: &Connection) -> rusqlite::Result<u64> {
    let hwm: Option<i64> = conn
        .query_row("SELECT value FROM meta WHERE key = 'id_limit'", [], |r| {
            r.get(0)
        })
        .optional()?;
    let max: Option<i64> = conn.query_row("SELECT MAX(id) FROM messages", [], |r| r.get(0))?;
    let after_max = max.map_or(1, |m| m + 1);
    Ok(hwm.unwrap_or(1).max(after_max).max(1) as u64)
}

/// Persists `limit`: no id at or above it is used until a later call
/// raises it.
pub(crate) fn set_id_limit(conn: &Connection, limit: u64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO meta(key, value) VALUES ('id_limit', ?1)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [limit as i64],
    )?;
    Ok(())
}
