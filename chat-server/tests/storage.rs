//! Storage (DESIGN.md, "Storage"): messages survive a restart and a
//! SIGKILL, ids continue, `since` and `history` reach back past the ring,
//! retention, and a stalled disk never delays delivery.

mod common;

use common::{Client, WAIT};
use rusqlite::Connection;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Self(std::env::temp_dir().join(format!(
            "chat-storage-{tag}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start(dir: &Path, tune: impl FnOnce(&mut chat_server::Config)) -> chat_server::Running {
    let dir = dir.to_path_buf();
    common::start(move |c| {
        c.data = Some(dir);
        c.rate_burst = 100_000;
        c.rate_per_sec = 100_000;
        tune(c);
    })
}

/// Sends `n` room messages as `c` and returns their ids (from the acks).
fn say(c: &mut Client, prefix: &str, n: usize) -> Vec<u64> {
    (0..n)
        .map(|i| {
            c.send(json!({"type": "message", "text": format!("{prefix}{i}")}));
            c.recv_type("message")["id"].as_u64().unwrap()
        })
        .collect()
}

fn texts(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

/// Pages back with `history` from `before` to the oldest message kept,
/// `limit` at a time; returns the texts, oldest first.
fn page_back(c: &mut Client, mut before: u64, limit: u64) -> Vec<String> {
    let mut all = Vec::new();
    for _ in 0..1000 {
        c.send(json!({"type": "history", "before": before, "limit": limit}));
        let h = c.recv_type("history");
        let msgs = h["messages"].as_array().unwrap();
        let mut page = texts(&h["messages"]);
        page.append(&mut all);
        all = page;
        if h["more"] == false || msgs.is_empty() {
            return all;
        }
        before = msgs[0]["id"].as_u64().unwrap();
    }
    panic!("paging did not end");
}

fn db(dir: &Path) -> Connection {
    Connection::open(dir.join("chat.db")).unwrap()
}

/// `page_back` in the room `room`.
fn page_back_in(c: &mut Client, room: &str, mut before: u64, limit: u64) -> Vec<String> {
    let mut all = Vec::new();
    for _ in 0..1000 {
        c.send(json!({"type": "history", "room": room, "before": before, "limit": limit}));
        let h = c.recv_type("history");
        assert_eq!(h["room"], room, "{h}");
        let msgs = h["messages"].as_array().unwrap();
        let mut page = texts(&h["messages"]);
        page.append(&mut all);
        all = page;
        if h["more"] == false || msgs.is_empty() {
            return all;
        }
        before = msgs[0]["id"].as_u64().unwrap();
    }
    panic!("paging did not end");
}

/// A room other than the lobby keeps its messages (under its own name, not
/// the lobby's), its topic and `since` across a restart; a room that had
/// neither is not brought back, nor one whose topic was cleared.
#[test]
fn a_rooms_messages_topic_and_since_survive_a_restart() {
    let dir = TempDir::new("rooms");
    let server = start(&dir.0, |c| c.history = 4);
    let (mut alice, _) = Client::join(server.addr, "alice");
    let (mut bob, _) = Client::join(server.addr, "bob");
    for c in [&mut alice, &mut bob] {
        c.send(json!({"type": "enter", "room": "rust"}));
        c.recv_type("entered");
    }
    alice.send(json!({"type": "topic", "room": "rust", "topic": "borrowck support"}));
    alice.recv_type("topic");
    // A room with only a topic, one with a cleared topic, one with nothing.
    for room in ["only-topic", "cleared", "nothing"] {
        alice.send(json!({"type": "enter", "room": room}));
        alice.recv_type("entered");
    }
    alice.send(json!({"type": "topic", "room": "only-topic", "topic": "kept"}));
    alice.recv_type("topic");
    alice.send(json!({"type": "topic", "room": "cleared", "topic": "soon gone"}));
    alice.recv_type("topic");
    alice.send(json!({"type": "topic", "room": "cleared", "topic": ""}));
    alice.recv_type("topic");
    let mut ids = Vec::new();
    for i in 0..12 {
        alice.send(json!({"type": "message", "room": "rust", "text": format!("r{i}")}));
        let m = alice.recv_type("message");
        assert_eq!(m["room"], "rust", "{m}");
        ids.push(m["id"].as_u64().unwrap());
    }
    let lobby_id = say(&mut alice, "l", 1)[0];
    // Bob has seen up to r5 when the server goes.
    let seen = ids[5];
    drop((alice, bob));
    server.stop().unwrap();

    let server = start(&dir.0, |c| c.history = 4);
    let (mut carol, w) = Client::join(server.addr, "carol");
    // The lobby holds its own message only.
    assert_eq!(texts(&w["history"]), ["l0"], "{w}");
    carol.send(json!({"type": "rooms"}));
    let rooms = carol.recv_type("rooms");
    let listed: Vec<(String, String)> = rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let name = r["name"].as_str().unwrap().to_owned();
            (name, r["topic"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("lobby".to_owned(), String::new()),
            ("only-topic".to_owned(), "kept".to_owned()),
            ("rust".to_owned(), "borrowck support".to_owned()),
        ],
        "{rooms}"
    );
    // The ring is warmed per room: the newest 4 of rust, and more.
    carol.send(json!({"type": "enter", "room": "rust"}));
    let e = carol.recv_type("entered");
    assert_eq!(e["topic"], "borrowck support", "{e}");
    assert_eq!(texts(&e["history"]), ["r8", "r9", "r10", "r11"], "{e}");
    assert_eq!(e["more"], true, "{e}");
    // Ids continue above every id of the last run, shared by every room.
    carol.send(json!({"type": "message", "room": "rust", "text": "n0"}));
    let after = carol.recv_type("message")["id"].as_u64().unwrap();
    assert!(after > lobby_id && after > ids[11], "{after}");

    // `enter` with `since` resumes within the room across the restart.
    let (mut bob, _) = Client::join(server.addr, "bob");
    bob.send(json!({"type": "enter", "room": "rust", "since": seen}));
    let e = bob.recv_type("entered");
    assert_eq!(e["more"], true, "{e}");
    let oldest = e["history"][0]["id"].as_u64().unwrap();
    let mut got = page_back_in(&mut bob, "rust", oldest, 3);
    got.retain(|t| t.starts_with('r') && t[1..].parse::<usize>().unwrap() > 5);
    got.extend(texts(&e["history"]));
    let want: Vec<String> = (6..12)
        .map(|i| format!("r{i}"))
        .chain(["n0".into()])
        .collect();
    assert_eq!(got, want);
    // And `history` pages back through all of rust, nothing of the lobby.
    let all = page_back_in(&mut carol, "rust", u64::MAX, 5);
    let want: Vec<String> = (0..12)
        .map(|i| format!("r{i}"))
        .chain(["n0".into()])
        .collect();
    assert_eq!(all, want);
    let stored: i64 = db(&dir.0)
        .query_row(
            "SELECT COUNT(*) FROM messages WHERE room = 'rust'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, 13);
    drop((bob, carol));
    server.stop().unwrap();
}

#[test]
fn messages_ids_since_and_history_survive_a_restart() {
    let dir = TempDir::new("restart");
    let server = start(&dir.0, |c| c.history = 5);
    let (mut alice, _) = Client::join(server.addr, "alice");
    let (mut bob, _) = Client::join(server.addr, "bob");
    let ids = say(&mut alice, "m", 20);
    alice.send(json!({"type": "private", "to": "bob", "text": "psst"}));
    let private_id = alice.recv_type("private")["id"].as_u64().unwrap();
    // Bob has seen up to m9 when the server goes.
    let seen = ids[9];
    drop((alice, bob));
    server.stop().unwrap();

    let server = start(&dir.0, |c| c.history = 5);
    // The ring is warmed from the database: the newest 5, and more.
    let (mut carol, w) = Client::join(server.addr, "carol");
    assert_eq!(texts(&w["history"]), ["m15", "m16", "m17", "m18", "m19"]);
    assert_eq!(w["more"], true, "{w}");
    // Ids continue above every id of the last run.
    let after = say(&mut carol, "n", 1)[0];
    assert!(after > private_id && after > ids[19], "{after}");

    // `since` resumes across the restart: the welcome holds the ring's
    // part and says more; paging fetches the rest from the database.
    bob = Client::connect(server.addr);
    bob.send(json!({"type": "join", "nick": "bob", "since": seen}));
    let w = bob.recv_type("welcome");
    assert_eq!(w["more"], true, "{w}");
    let oldest = w["history"][0]["id"].as_u64().unwrap();
    let mut got = page_back(&mut bob, oldest, 3);
    got.retain(|t| t.starts_with('m') && t[1..].parse::<usize>().unwrap() > 9);
    got.extend(texts(&w["history"]));
    let want: Vec<String> = (10..20)
        .map(|i| format!("m{i}"))
        .chain(["n0".into()])
        .collect();
    assert_eq!(got, want);

    // `history` pages back past the ring through everything kept.
    let all = page_back(&mut carol, u64::MAX, 7);
    let want: Vec<String> = (0..20)
        .map(|i| format!("m{i}"))
        .chain(["n0".into()])
        .collect();
    assert_eq!(all, want);
    // A history request the ring answers alone says whether older exist.
    carol.send(json!({"type": "history", "limit": 2}));
    let h = carol.recv_type("history");
    assert_eq!(texts(&h["messages"]), ["m19", "n0"]);
    assert_eq!(h["more"], true);
    drop((carol, bob));
    server.stop().unwrap();

    // The private message is stored (it is not part of room history).
    let conn = db(&dir.0);
    let (from, to, text): (String, String, String) = conn
        .query_row(
            "SELECT from_nick, to_nick, text FROM messages WHERE id = ?1",
            [private_id as i64],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        (from.as_str(), to.as_str(), text.as_str()),
        ("alice", "bob", "psst")
    );
}

#[test]
fn retention_keeps_the_newest_messages_per_room() {
    let dir = TempDir::new("retain");
    let server = start(&dir.0, |c| {
        c.retain_messages = 10;
        c.history = 3;
    });
    let (mut alice, _) = Client::join(server.addr, "alice");
    say(&mut alice, "r", 30);
    drop(alice);
    server.stop().unwrap();
    let conn = db(&dir.0);
    let kept: Vec<String> = conn
        .prepare("SELECT text FROM messages WHERE to_nick IS NULL ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let want: Vec<String> = (20..30).map(|i| format!("r{i}")).collect();
    assert_eq!(kept, want);
    drop(conn);
    // And paging after a restart ends there.
    let server = start(&dir.0, |c| c.history = 3);
    let (mut bob, _) = Client::join(server.addr, "bob");
    assert_eq!(page_back(&mut bob, u64::MAX, 4), want);
}

/// A database locked by someone else (a backup, a stalled disk), even
/// past SQLite's busy timeout, delays the writer, never the room: messages
/// keep flowing at once, and are written once the lock goes.
#[test]
fn a_locked_database_never_delays_delivery() {
    let dir = TempDir::new("locked");
    let server = start(&dir.0, |_| {});
    let (mut alice, _) = Client::join(server.addr, "alice");
    say(&mut alice, "warm", 1);
    let conn = db(&dir.0);
    conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let t = Instant::now();
    let ids = say(&mut alice, "x", 200);
    let took = t.elapsed();
    // The writer's commit waits on the lock (SQLite's busy timeout, 5 s).
    assert!(took < Duration::from_secs(2), "delivery waited: {took:?}");
    // Past SQLite's busy timeout (5 s): the writer tries the batch again.
    std::thread::sleep(Duration::from_millis(6000));
    conn.execute_batch("COMMIT").unwrap();
    drop(alice);
    server.stop().unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM messages WHERE id >= ?1",
            [ids[0] as i64],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 200);
}

const BIN: &str = env!("CARGO_BIN_EXE_chat-server");

/// Starts the binary on `dir`; returns it and its address.
fn spawn(dir: &Path) -> (Child, SocketAddr) {
    let mut child = Command::new(BIN)
        .args([
            "--addr",
            "127.0.0.1:0",
            "--quiet",
            "--rate-burst",
            "1000000",
        ])
        .args(["--rate-per-sec", "1000000", "--data"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("server exited").unwrap();
        if let Some(a) = line.strip_prefix("chat: listening on http://") {
            break a.trim_end_matches('/').parse().unwrap();
        }
    };
    // Keep draining stderr so the server never blocks on it.
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}

/// `kill -9` mid-traffic: the database opens clean, every message a
/// receiver had more than 100 ms before the kill is there, and ids go on
/// above every id seen.
#[test]
fn sigkill_mid_traffic_loses_at_most_the_last_batch() {
    let dir = TempDir::new("kill");
    let (mut child, addr) = spawn(&dir.0);
    let (mut bob, _) = Client::join(addr, "bob");
    let (mut alice, _) = Client::join(addr, "alice");
    let stop = Arc::new(AtomicBool::new(false));
    let received: Arc<Mutex<Vec<(u64, String, Instant)>>> = Arc::default();
    let reader = {
        let received = Arc::clone(&received);
        std::thread::spawn(move || {
            // Ends with the connection (the kill); every read is bounded.
            while let Ok(wsproto::Event::Text(t)) = bob.ws.read() {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "message" {
                    let id = v["id"].as_u64().unwrap();
                    let text = v["text"].as_str().unwrap().to_owned();
                    received.lock().unwrap().push((id, text, Instant::now()));
                }
            }
        })
    };
    let sender = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Acquire) {
                if alice
                    .ws
                    .send(json!({"type": "message", "text": format!("k{i}")}).to_string())
                    .is_err()
                {
                    break;
                }
                i += 1;
                if i % 10 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let killed = Instant::now();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    stop.store(true, Ordering::Release);
    sender.join().unwrap();
    reader.join().unwrap();
    let received = std::mem::take(&mut *received.lock().unwrap());
    assert!(
        received.len() > 100,
        "too little traffic: {}",
        received.len()
    );

    let conn = db(&dir.0);
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let mut missing = Vec::new();
    let mut lost_late = 0;
    let mut stmt = conn
        .prepare("SELECT text FROM messages WHERE id = ?1")
        .unwrap();
    for (id, text, at) in &received {
        let stored: Option<String> = stmt.query_row([*id as i64], |r| r.get(0)).ok();
        if stored.as_deref() == Some(text.as_str()) {
            continue;
        }
        if killed.duration_since(*at) <= Duration::from_millis(100) {
            lost_late += 1;
        } else {
            missing.push(*id);
        }
    }
    let last_100ms = received
        .iter()
        .filter(|r| killed.duration_since(r.2) <= Duration::from_millis(100))
        .count();
    eprintln!(
        "sigkill: {} messages received, {last_100ms} in the last 100 ms before the kill, {lost_late} of them lost",
        received.len()
    );
    assert!(
        missing.is_empty(),
        "lost {} of {}: {missing:?}",
        missing.len(),
        received.len()
    );
    drop(stmt);
    drop(conn);

    let max_seen = received.iter().map(|r| r.0).max().unwrap();
    let (mut child, addr) = spawn(&dir.0);
    let (mut carol, w) = Client::join(addr, "carol");
    assert!(!w["history"].as_array().unwrap().is_empty());
    let id = say(&mut carol, "after", 1)[0];
    assert!(id > max_seen, "{id} <= {max_seen}");
    let _ = child.kill();
    let _ = child.wait();
    let _ = WAIT;
}

/// Ids are never reused, even when a kill loses messages that were sent
/// (here: the database is locked by someone else, so the last ones never
/// reach it): the restart starts above the id mark persisted ahead of use.
#[test]
fn ids_are_not_reused_after_a_kill_that_lost_messages() {
    let dir = TempDir::new("ids");
    let (mut child, addr) = spawn(&dir.0);
    let (mut alice, _) = Client::join(addr, "alice");
    say(&mut alice, "kept", 5);
    std::thread::sleep(Duration::from_millis(200));
    let lock = db(&dir.0);
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let lost = say(&mut alice, "lost", 20);
    child.kill().unwrap();
    child.wait().unwrap();
    lock.execute_batch("ROLLBACK").unwrap();
    let stored_max: i64 = lock
        .query_row("SELECT MAX(id) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert!(
        (stored_max as u64) < lost[0],
        "the lock did not hold the writer back"
    );
    drop(lock);
    let (mut child, addr) = spawn(&dir.0);
    let (mut carol, _) = Client::join(addr, "carol");
    let id = say(&mut carol, "after", 1)[0];
    assert!(
        id > *lost.last().unwrap(),
        "id {id} reused (lost up to {lost:?})"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// Two servers on one directory would hand out the same ids: the second
/// refuses to start, and the directory is free again once the first stops.
#[test]
fn a_second_server_on_the_same_directory_refuses_to_start() {
    let dir = TempDir::new("twice");
    let first = start(&dir.0, |_| {});
    let mut c = chat_server::Config::default();
    c.addr = SocketAddr::from(([127, 0, 0, 1], 0));
    c.log = false;
    c.data = Some(dir.0.clone());
    let err = chat_server::Server::bind(c.clone()).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    first.stop().unwrap();
    let again = chat_server::Server::bind(c).unwrap().spawn().unwrap();
    again.stop().unwrap();
}

#[test]
fn the_storage_flags_are_listed_and_checked() {
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in ["--data DIR", "--retain-messages N", "--ephemeral"] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    for bad in [
        &["--retain-messages", "0"][..],
        &["--retain-messages", "x"],
        &["--data"],
    ] {
        let out = Command::new(BIN).args(bad).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}

#[test]
fn an_unusable_data_directory_is_a_clear_startup_error() {
    let dir = TempDir::new("file");
    std::fs::create_dir_all(&dir.0).unwrap();
    let file = dir.0.join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let out = Command::new(BIN)
        .args(["--addr", "127.0.0.1:0", "--data"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chat-server: cannot start"), "{err}");
}
