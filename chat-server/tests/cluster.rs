//! Cluster mode (DESIGN.md v2, "Cluster"; issue 17) against a real
//! `redis-server`, started by each test on a free 127.0.0.1 port without
//! persistence. Nodes run in-process, except the one a test SIGKILLs (the
//! binary). Skipped, saying so, only when `redis-server` is not installed
//! (`.ci/run` installs it). Every read is bounded.

mod common;

use common::redis::{node, node_with, Redis};
use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Joins as `nick`, retrying while the node is still connecting to Redis
/// (`unavailable`); panics on any other refusal.
fn join(addr: SocketAddr, nick: &str) -> (Client, Value) {
    join_since(addr, nick, None)
}

fn join_since(addr: SocketAddr, nick: &str, since: Option<u64>) -> (Client, Value) {
    let mut c = Client::connect(addr);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut req = json!({"type": "join", "nick": nick});
        if let Some(s) = since {
            req["since"] = json!(s);
        }
        c.send(req);
        let v = c.recv();
        if v["type"] == "welcome" {
            return (c, v);
        }
        assert_eq!(v["code"], "unavailable", "{v}");
        assert!(Instant::now() < deadline, "node never became available");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `req` (a join expected to be refused) until the node is
/// available; returns the refusal's code.
fn refused(c: &mut Client, req: Value) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        c.send(req.clone());
        let v = c.recv();
        assert_eq!(v["type"], "error", "{v}");
        if v["code"] != "unavailable" || Instant::now() > deadline {
            return v["code"].as_str().unwrap().to_owned();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The next message of type `kind` within `wait`, skipping others.
fn recv_within(c: &mut Client, kind: &str, wait: Duration) -> Option<Value> {
    c.ws.set_idle_timeout(Some(wait));
    let deadline = Instant::now() + wait;
    let out = loop {
        if Instant::now() >= deadline {
            break None;
        }
        match c.ws.read() {
            Ok(wsproto::Event::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == kind {
                    break Some(v);
                }
            }
            Ok(_) => {}
            Err(_) => break None,
        }
    };
    c.ws.set_idle_timeout(Some(WAIT));
    out
}

fn ids(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().map(|m| m["id"].as_u64().unwrap()).collect()
}

#[test]
fn messages_cross_nodes_once_in_one_id_order_with_concurrent_senders() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis, "a", 15), node(&redis, "b", 15));
    let (mut alice, _) = join(a.addr, "alice");
    let (mut bob, _) = join(b.addr, "bob");
    let (mut watch_a, _) = join(a.addr, "wa");
    let (mut watch_b, _) = join(b.addr, "wb");
    const N: usize = 50;
    let sa = std::thread::spawn(move || {
        for i in 0..N {
            alice.send(json!({"type": "message", "text": format!("a{i}")}));
        }
        alice
    });
    let sb = std::thread::spawn(move || {
        for i in 0..N {
            bob.send(json!({"type": "message", "text": format!("b{i}")}));
        }
        bob
    });
    let (_alice, _bob) = (sa.join().unwrap(), sb.join().unwrap());
    let seen_a: Vec<Value> = (0..2 * N).map(|_| watch_a.recv_type("message")).collect();
    let seen_b: Vec<Value> = (0..2 * N).map(|_| watch_b.recv_type("message")).collect();
    let (ia, ib) = (ids(&seen_a), ids(&seen_b));
    assert!(ia.windows(2).all(|w| w[0] < w[1]), "not increasing: {ia:?}");
    assert_eq!(ia, ib, "both nodes see one sequence");
    for who in ["a", "b"] {
        let texts: Vec<&str> = seen_b
            .iter()
            .map(|m| m["text"].as_str().unwrap())
            .filter(|t| t.starts_with(who))
            .collect();
        let want: Vec<String> = (0..N).map(|i| format!("{who}{i}")).collect();
        assert_eq!(texts, want, "each sender's messages once, in order");
    }
    assert!(recv_within(&mut watch_b, "message", Duration::from_millis(300)).is_none());
}

#[test]
fn nicks_presence_and_private_messages_are_cluster_wide() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis, "a", 15), node(&redis, "b", 15));
    let (mut alice, _) = join(a.addr, "alice");
    let mut dup = Client::connect(b.addr);
    assert_eq!(
        refused(&mut dup, json!({"type": "join", "nick": "ALICE"})),
        "nick_taken"
    );
    // Presence across nodes: bob joins on B, alice on A hears it. Bob
    // learns of alice from his welcome's list, or, when A's seat write
    // (queued behind alice's welcome) reaches Redis after B read the list,
    // from a `joined` right after: never not at all.
    let (mut bob, welcome) = join(b.addr, "bob");
    let users = welcome["users"].as_array().unwrap();
    assert!(users.contains(&json!("bob")), "{welcome}");
    if !users.contains(&json!("alice")) {
        assert_eq!(users, &[json!("bob")], "{welcome}");
        let v = recv_within(&mut bob, "joined", WAIT).expect("alice announced to bob");
        assert_eq!(v["nick"], "alice", "{v}");
    }
    let v = recv_within(&mut alice, "joined", WAIT).expect("joined across nodes");
    assert_eq!(
        (v["nick"].as_str(), v["room"].as_str()),
        (Some("bob"), Some("lobby"))
    );
    alice.send(json!({"type": "who"}));
    assert_eq!(alice.recv_type("users")["users"], json!(["alice", "bob"]));
    // Private message A -> B, delivered once to each end, with a cluster id.
    alice.send(json!({"type": "private", "to": "BOB", "text": "psst"}));
    let got = bob.recv_type("private");
    assert_eq!(
        (got["from"].as_str(), got["to"].as_str()),
        (Some("alice"), Some("bob"))
    );
    let ack = alice.recv_type("private");
    assert_eq!(ack["id"], got["id"]);
    alice.send(json!({"type": "private", "to": "nobody", "text": "x"}));
    assert_eq!(alice.recv_type("error")["code"], "unknown_user");
    // A rename on B is `renamed` on A (not left + joined).
    bob.send(json!({"type": "nick", "nick": "robert"}));
    bob.recv_type("renamed");
    let r = recv_within(&mut alice, "renamed", WAIT).expect("renamed across nodes");
    assert_eq!(
        (r["from"].as_str(), r["to"].as_str()),
        (Some("bob"), Some("robert"))
    );
    alice.send(json!({"type": "who"}));
    assert_eq!(
        alice.recv_type("users")["users"],
        json!(["alice", "robert"])
    );
    bob.send(json!({"type": "nick", "nick": "bob"}));
    bob.recv_type("renamed");
    assert_eq!(alice.recv_type("renamed")["to"], "bob");
    // Rooms: a member entering on A is announced to B's members there.
    bob.send(json!({"type": "enter", "room": "rust"}));
    bob.recv_type("entered");
    alice.send(json!({"type": "enter", "room": "rust"}));
    alice.recv_type("entered");
    let v = recv_within(&mut bob, "joined", WAIT).expect("joined in rust");
    assert_eq!(v["room"], "rust");
    // Topics: set on A, heard on B; a room new to B greets with it.
    alice.send(json!({"type": "topic", "room": "rust", "topic": "crabs"}));
    let t = bob.recv_type("topic");
    assert_eq!(
        (t["topic"].as_str(), t["by"].as_str()),
        (Some("crabs"), Some("alice"))
    );
    assert_eq!(alice.recv_type("topic")["topic"], "crabs");
    alice.send(json!({"type": "enter", "room": "go"}));
    alice.recv_type("entered");
    alice.send(json!({"type": "topic", "room": "go", "topic": "gophers"}));
    alice.recv_type("topic");
    bob.send(json!({"type": "enter", "room": "go"}));
    let e = bob.recv_type("entered");
    assert_eq!(
        (e["topic"].as_str(), e["users"].clone()),
        (Some("gophers"), json!(["alice", "bob"]))
    );
    bob.send(json!({"type": "leave", "room": "go"}));
    bob.recv_type("left_room");
    // Leaving frees the nick cluster-wide and is announced.
    drop(alice);
    let mut rooms = Vec::new();
    for _ in 0..2 {
        let v = recv_within(&mut bob, "left", WAIT).expect("left across nodes");
        assert_eq!(v["nick"], "alice");
        rooms.push(v["room"].as_str().unwrap().to_owned());
    }
    rooms.sort();
    assert_eq!(rooms, ["lobby", "rust"]);
    bob.send(json!({"type": "who", "room": "rust"}));
    assert_eq!(bob.recv_type("users")["users"], json!(["bob"]));
    let deadline = Instant::now() + WAIT;
    loop {
        dup.send(json!({"type": "join", "nick": "ALICE"}));
        let v = dup.recv();
        if v["type"] == "welcome" {
            break;
        }
        assert!(Instant::now() < deadline, "nick never freed: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn resume_on_another_node_while_messages_flow_has_no_gap_and_no_duplicate() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis, "a", 15), node(&redis, "b", 15));
    let (mut reference, _) = join(a.addr, "ref");
    let (mut reader, _) = join(a.addr, "reader");
    let (sender, _) = join(a.addr, "sender");
    const N: usize = 300;
    let s = send_in_background(sender, N, &[]);
    // The reader sees some messages on A, then its node "goes away" and it
    // resumes on B from the last id it saw, while the sender keeps going.
    let mut last = 0;
    for _ in 0..40 {
        last = reader.recv_type("message")["id"].as_u64().unwrap();
    }
    drop(reader);
    let (mut resumed, welcome) = join_since(b.addr, "reader2", Some(last));
    let mut got = ids(welcome["history"].as_array().unwrap());
    let all: Vec<u64> = ids(&(0..N)
        .map(|_| reference.recv_type("message"))
        .collect::<Vec<_>>());
    let _sender = s.join().unwrap();
    let want: Vec<u64> = all.iter().copied().filter(|&i| i > last).collect();
    while got.len() < want.len() {
        match recv_within(&mut resumed, "message", WAIT) {
            Some(m) => got.push(m["id"].as_u64().unwrap()),
            None => break,
        }
    }
    assert_eq!(
        got, want,
        "resume after id {last}: exactly the rest, in order"
    );
    assert!(recv_within(&mut resumed, "message", Duration::from_millis(300)).is_none());
    // history paging reads the stream on B, which never saw the start.
    resumed.send(json!({"type": "history", "before": all[10], "limit": 5}));
    let page = resumed.recv_type("history");
    assert_eq!(
        ids(page["messages"].as_array().unwrap()),
        all[5..10].to_vec()
    );
}

/// The binary as a cluster node; returns the child and its address (from
/// its "listening on" log line).
fn spawn_node(redis: &Redis, id: &str, timeout_secs: u64) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args([
            "--addr",
            "127.0.0.1:0",
            "--redis",
            &redis.url(),
            "--node-id",
            id,
        ])
        .args(["--node-timeout", &timeout_secs.to_string()])
        // Media stay node-local under --redis: in a throwaway directory,
        // not the default ./chat-data of the test's working directory.
        .arg("--data")
        .arg(std::env::temp_dir().join(format!("chat-cluster-{id}-{}", std::process::id())))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("node exited").unwrap();
        if let Some(rest) = line.strip_prefix("chat: listening on http://") {
            break rest.trim_end_matches('/').parse().unwrap();
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

#[test]
fn a_sigkilled_node_s_members_are_announced_left_once_and_their_nicks_freed() {
    let Some(redis) = Redis::start() else { return };
    let timeout = 2;
    let (mut doomed, a_addr) = spawn_node(&redis, "doomed", timeout);
    let b = node(&redis, "b", timeout);
    let c = node(&redis, "c", timeout);
    let (mut dave, _) = join(a_addr, "dave");
    dave.send(json!({"type": "enter", "room": "rust"}));
    dave.recv_type("entered");
    let (mut bob, _) = join(b.addr, "bob");
    bob.send(json!({"type": "enter", "room": "rust"}));
    bob.recv_type("entered");
    let (mut carol, _) = join(c.addr, "carol");
    dave.send(json!({"type": "message", "room": "rust", "text": "before"}));
    let before = bob.recv_type("message");
    assert_eq!(before["text"], "before");
    doomed.kill().unwrap();
    let killed = Instant::now();
    let _ = doomed.wait();
    // bob (in lobby and rust) hears dave leave each room exactly once;
    // carol, on another survivor, hears it once in the lobby.
    let mut rooms = Vec::new();
    while let Some(v) = recv_within(&mut bob, "left", Duration::from_secs(10)) {
        assert_eq!(v["nick"], "dave");
        rooms.push(v["room"].as_str().unwrap().to_owned());
        if rooms.len() == 2 {
            break;
        }
    }
    let elapsed = killed.elapsed();
    rooms.sort();
    assert_eq!(rooms, ["lobby", "rust"], "after {elapsed:?}");
    // Dead after `timeout` of silence, seen at a survivor's next beat (every
    // third of it); the rest is slack for a loaded machine.
    eprintln!("left announced {elapsed:?} after the SIGKILL (--node-timeout {timeout}s)");
    assert!(
        elapsed < Duration::from_secs(timeout * 2 + 3),
        "{elapsed:?}"
    );
    let v = recv_within(&mut carol, "left", WAIT).expect("carol hears it");
    assert_eq!(v["nick"], "dave");
    carol.send(json!({"type": "who"}));
    assert_eq!(carol.recv_type("users")["users"], json!(["bob", "carol"]));
    assert!(
        recv_within(&mut carol, "left", Duration::from_secs(timeout)).is_none(),
        "once"
    );
    // dave comes back on B: the nick is free and rust resumes from `before`.
    let (mut dave2, _) = join(b.addr, "dave");
    dave2.send(
        json!({"type": "enter", "room": "rust", "since": before["id"].as_u64().unwrap() - 1}),
    );
    let e = dave2.recv_type("entered");
    assert_eq!(
        ids(e["history"].as_array().unwrap()),
        [before["id"].as_u64().unwrap()]
    );
}

#[test]
fn redis_outage_answers_unavailable_then_recovers() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let (a, b) = (node(&redis, "a", 3), node(&redis, "b", 3));
    let (mut alice, _) = join(a.addr, "alice");
    let (mut bob, _) = join(b.addr, "bob");
    // Presence is published asynchronously: wait until A knows bob.
    assert_eq!(
        recv_within(&mut alice, "joined", WAIT).unwrap()["nick"],
        "bob"
    );
    alice.send(json!({"type": "message", "text": "one"}));
    let first = bob.recv_type("message")["id"].as_u64().unwrap();
    alice.recv_type("message");
    redis.kill();
    // Cross-node work is refused; the local member is still served.
    let deadline = Instant::now() + WAIT;
    loop {
        alice.send(json!({"type": "message", "text": "lost?"}));
        let v = alice.recv();
        if v["type"] == "error" {
            assert_eq!(v["code"], "unavailable", "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "never unavailable");
        std::thread::sleep(Duration::from_millis(100));
    }
    alice.send(json!({"type": "who"}));
    // The online list as last known (bob is still on B).
    assert_eq!(alice.recv_type("users")["users"], json!(["alice", "bob"]));
    redis.restart();
    let back = Instant::now();
    let deadline = back + Duration::from_secs(10);
    let id = loop {
        alice.send(json!({"type": "message", "text": "two"}));
        let v = alice.recv();
        if v["type"] == "message" && v["text"] == "two" {
            break v["id"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "not recovered within 10 s: {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        id > first,
        "ids keep increasing across a Redis that lost its data"
    );
    let v = bob.recv_type("message");
    assert_eq!(
        (v["text"].as_str(), v["id"].as_u64()),
        (Some("two"), Some(id))
    );
    // The nicks were restored: alice is still taken from B.
    let mut dup = Client::connect(b.addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        dup.send(json!({"type": "join", "nick": "alice"}));
        let v = dup.recv();
        if v["code"] == "nick_taken" {
            break;
        }
        assert_eq!(v["code"], "unavailable", "{v}");
        assert!(Instant::now() < deadline, "B never recovered");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("recovered {:?} after the restart", back.elapsed());
}

#[test]
fn after_a_redis_pause_what_the_cluster_missed_is_announced_and_nobody_is_reaped() {
    let Some(redis) = Redis::start() else { return };
    let timeout = 2;
    let (a, b) = (node(&redis, "a", timeout), node(&redis, "b", timeout));
    let (mut alice, _) = join(a.addr, "alice");
    let (bob, _) = join(b.addr, "bob");
    assert_eq!(
        recv_within(&mut alice, "joined", WAIT).unwrap()["nick"],
        "bob"
    );
    // Redis hangs (data kept): the nodes notice within their I/O timeout.
    redis.signal("STOP");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        alice.send(json!({"type": "message", "text": "x"}));
        if recv_within(&mut alice, "error", Duration::from_secs(3))
            .is_some_and(|v| v["code"] == "unavailable")
        {
            break;
        }
        assert!(Instant::now() < deadline, "never unavailable");
    }
    // bob leaves while Redis cannot hear it, and the pause outlasts the
    // node timeout: on resume nobody may be declared dead for it.
    drop(bob);
    std::thread::sleep(Duration::from_secs(timeout + 1));
    redis.signal("CONT");
    let v = recv_within(&mut alice, "left", Duration::from_secs(10)).expect("bob's left");
    assert_eq!(v["nick"], "bob");
    assert!(
        recv_within(&mut alice, "left", Duration::from_secs(timeout * 2)).is_none(),
        "left once, and alice's node not reaped"
    );
    // bob's nick is free again, alice's is still held.
    let (_bob, _) = join(a.addr, "bob");
    let mut dup = Client::connect(b.addr);
    assert_eq!(
        refused(&mut dup, json!({"type": "join", "nick": "alice"})),
        "nick_taken"
    );
}

#[test]
fn a_resume_token_moves_a_member_to_another_node_silently() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis, "a", 15), node(&redis, "b", 15));
    let (mut alice, welcome) = join(a.addr, "alice");
    let token = welcome["token"].as_str().unwrap().to_owned();
    let (mut bob, _) = join(b.addr, "bob");
    assert_eq!(
        recv_within(&mut alice, "joined", WAIT).unwrap()["nick"],
        "bob"
    );
    alice.send(json!({"type": "message", "text": "one"}));
    let one = bob.recv_type("message")["id"].as_u64().unwrap();
    // A wrong token is no takeover.
    let mut thief = Client::connect(b.addr);
    thief.send(json!({"type": "join", "nick": "alice", "token": "00", "since": one}));
    assert_eq!(thief.recv()["code"], "nick_taken");
    // The right one moves alice to B: A closes her old connection 4000,
    // nobody hears left/joined, and she resumes after `one`.
    let mut moved = Client::connect(b.addr);
    moved.send(json!({"type": "join", "nick": "alice", "token": token, "since": one}));
    let w = moved.recv_type("welcome");
    assert_eq!(w["history"], json!([]), "{w}");
    assert_eq!(w["token"], token.as_str());
    assert_eq!(alice.expect_close(), 4000);
    bob.send(json!({"type": "who"}));
    assert_eq!(bob.recv_type("users")["users"], json!(["alice", "bob"]));
    moved.send(json!({"type": "message", "text": "two"}));
    let two = bob.recv_type("message");
    assert_eq!(
        (two["from"].as_str(), two["text"].as_str()),
        (Some("alice"), Some("two"))
    );
    assert!(recv_within(&mut bob, "left", Duration::from_millis(500)).is_none());
    // Leaving from B is announced once and frees the nick on A too (B
    // announces first, then frees it: a moment after the `left`).
    drop(moved);
    assert_eq!(
        recv_within(&mut bob, "left", WAIT).unwrap()["nick"],
        "alice"
    );
    let deadline = Instant::now() + WAIT;
    let mut again = Client::connect(a.addr);
    loop {
        again.send(json!({"type": "join", "nick": "alice"}));
        let v = again.recv();
        if v["type"] == "welcome" {
            break;
        }
        assert!(
            matches!(v["code"].as_str(), Some("nick_taken" | "unavailable")),
            "{v}"
        );
        assert!(Instant::now() < deadline, "the nick was never freed: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `rooms` reply of `c` once it equals `want` (name, users, topic),
/// the seats reaching Redis a moment after each `entered`.
fn rooms_until(c: &mut Client, want: &Value) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        c.send(json!({"type": "rooms"}));
        let r = c.recv_type("rooms");
        if &r["rooms"] == want || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_rooms_list_the_room_bound_and_the_presence_limit_are_cluster_wide() {
    let Some(redis) = Redis::start() else { return };
    let tune = |c: &mut chat_server::Config| {
        c.max_rooms = 3;
        c.presence_limit = 3;
    };
    let (a, b) = (
        node_with(&redis, "a", 15, tune),
        node_with(&redis, "b", 15, tune),
    );
    let (mut alice, _) = join(a.addr, "alice");
    let (mut bob, _) = join(b.addr, "bob");
    let (mut carol, _) = join(b.addr, "carol");
    enter(&mut alice, "rust");
    enter(&mut bob, "rust");
    enter(&mut carol, "go");
    carol.send(json!({"type": "topic", "room": "go", "topic": "gophers"}));
    carol.recv_type("topic");
    // Every node lists every room with the members of every node.
    let want = json!([
        {"name": "go", "users": 1, "topic": "gophers"},
        {"name": "lobby", "users": 3, "topic": ""},
        {"name": "rust", "users": 2, "topic": ""},
    ]);
    for c in [&mut alice, &mut bob] {
        let r = rooms_until(c, &want);
        assert_eq!(r["rooms"], want, "{r}");
        assert_eq!(r["more"], false);
    }
    // --max-rooms 3 counts the cluster's rooms: A alone holds two.
    alice.send(json!({"type": "enter", "room": "zig"}));
    assert_eq!(alice.recv_type("error")["code"], "too_many_rooms");
    // A room emptied everywhere (no message, no topic) is forgotten by
    // the cluster: then there is room for one more.
    alice.send(json!({"type": "leave", "room": "rust"}));
    alice.recv_type("left_room");
    bob.send(json!({"type": "leave", "room": "rust"}));
    bob.recv_type("left_room");
    let want = json!([
        {"name": "go", "users": 1, "topic": "gophers"},
        {"name": "lobby", "users": 3, "topic": ""},
    ]);
    assert_eq!(rooms_until(&mut alice, &want)["rooms"], want);
    enter(&mut alice, "zig");
    // --presence-limit 3 counts every node's members: a fourth member
    // anywhere puts the lobby over it, so A's alice gets a count, not
    // `joined` (A alone has two members).
    let (_dave, _) = join(a.addr, "dave");
    let deadline = Instant::now() + WAIT;
    loop {
        let v = alice.recv();
        assert!(
            !(v["type"] == "joined" && v["nick"] == "dave"),
            "a notice over the cluster-wide limit: {v}"
        );
        if v["type"] == "presence" && v["room"] == "lobby" && v["users"] == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "no presence count");
    }
}

#[test]
fn a_resume_on_another_node_gets_every_room_back_without_gap_or_duplicate() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis, "a", 15), node(&redis, "b", 15));
    const ROOMS: [&str; 3] = ["lobby", "rust", "go"];
    let (mut reader, welcome) = join(a.addr, "reader");
    let token = welcome["token"].as_str().unwrap().to_owned();
    let (mut reference, _) = join(b.addr, "ref");
    let (mut sender, _) = join(b.addr, "sender");
    for room in &ROOMS[1..] {
        for c in [&mut reader, &mut reference, &mut sender] {
            enter(c, room);
        }
    }
    const N: usize = 300;
    let s = send_in_background(sender, N, &ROOMS);
    // The reader sees some messages on A, then moves to B with its token
    // and the last id it saw, while the sender keeps going (A still holds
    // its old connection: a network switch).
    let mut last = 0;
    for _ in 0..40 {
        last = reader.recv_type("message")["id"].as_u64().unwrap();
    }
    let mut moved = Client::connect(b.addr);
    moved.send(json!({"type": "join", "nick": "reader", "token": token, "since": last}));
    let all: Vec<Value> = (0..N).map(|_| reference.recv_type("message")).collect();
    let _sender = s.join().unwrap();
    let mut got: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    let mut greeted = Vec::new();
    let want_total = all
        .iter()
        .filter(|m| m["id"].as_u64().unwrap() > last)
        .count();
    let deadline = Instant::now() + WAIT;
    while got.values().map(Vec::len).sum::<usize>() < want_total || greeted.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "greeted {greeted:?}, got {got:?}"
        );
        let Some(v) = recv_any(&mut moved, WAIT) else {
            break;
        };
        let room = v["room"].as_str().unwrap_or("").to_owned();
        match v["type"].as_str() {
            Some("welcome" | "entered") => {
                greeted.push(room.clone());
                let ids = ids(v["history"].as_array().unwrap());
                got.entry(room).or_default().extend(ids);
            }
            Some("message") => got.entry(room).or_default().push(v["id"].as_u64().unwrap()),
            _ => {}
        }
    }
    assert_eq!(greeted[0], "lobby", "the welcome first");
    greeted.sort();
    assert_eq!(greeted, ["go", "lobby", "rust"], "every room greeted once");
    for room in ROOMS {
        let want: Vec<u64> = all
            .iter()
            .filter(|m| m["room"] == room && m["id"].as_u64().unwrap() > last)
            .map(|m| m["id"].as_u64().unwrap())
            .collect();
        assert_eq!(
            got.get(room).cloned().unwrap_or_default(),
            want,
            "{room}: exactly what it missed after {last}, in order"
        );
    }
    assert_eq!(reader.expect_close(), 4000);
    assert!(recv_within(&mut moved, "message", Duration::from_millis(300)).is_none());
    // Nobody heard it leave or join: it lives on, in every room, on B.
    for room in ROOMS {
        reference.send(json!({"type": "who", "room": room}));
        let users = reference.recv_type("users");
        assert_eq!(users["users"], json!(["reader", "ref", "sender"]), "{room}");
    }
    assert!(recv_within(&mut reference, "left", Duration::from_millis(300)).is_none());
    moved.send(json!({"type": "message", "room": "go", "text": "back"}));
    assert_eq!(reference.recv_type("message")["text"], "back");
}

/// The next JSON message within `wait`, pings skipped.
fn recv_any(c: &mut Client, wait: Duration) -> Option<Value> {
    c.ws.set_idle_timeout(Some(wait));
    let deadline = Instant::now() + wait;
    let out = loop {
        if Instant::now() >= deadline {
            break None;
        }
        match c.ws.read() {
            Ok(wsproto::Event::Text(t)) => break Some(serde_json::from_str(t.as_str()).unwrap()),
            Ok(_) => {}
            Err(_) => break None,
        }
    };
    c.ws.set_idle_timeout(Some(WAIT));
    out
}

#[test]
fn a_stopped_redis_never_stalls_a_reactor() {
    let Some(redis) = Redis::start() else { return };
    // One reactor: a wait on Redis there would stall every session.
    let a = node_with(&redis, "a", 15, |c| c.reactor_threads = 1);
    let (mut alice, _) = join(a.addr, "alice");
    let (mut bob, _) = join(a.addr, "bob");
    alice.recv_type("joined");
    redis.signal("STOP");
    // Requests that wait on Redis: a join (the nick claim), a history
    // page, a rooms list, a private message to someone elsewhere.
    let mut carol = Client::connect(a.addr);
    carol.send(json!({"type": "join", "nick": "carol"}));
    bob.send(json!({"type": "history", "limit": 5}));
    bob.send(json!({"type": "rooms"}));
    bob.send(json!({"type": "private", "to": "zed", "text": "x"}));
    std::thread::sleep(Duration::from_millis(100));
    // Meanwhile alice, on the same reactor, is answered at once, again
    // and again (a reactor waiting on Redis answers after its 2 s timeout).
    answered_promptly_for(&mut alice, Duration::from_millis(1500));
    redis.signal("CONT");
    // The waiting requests are answered in order once Redis is back (or
    // refused `unavailable`), and the node serves on.
    let v = recv_any(&mut carol, Duration::from_secs(10)).expect("join answered");
    assert!(v["type"] == "welcome" || v["code"] == "unavailable", "{v}");
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let v = recv_any(&mut bob, Duration::from_secs(10)).expect("answered");
        if v["type"] == "joined" {
            continue;
        }
        kinds.push(if v["type"] == "error" {
            v["code"].as_str().unwrap().to_owned()
        } else {
            v["type"].as_str().unwrap().to_owned()
        });
    }
    for (k, want) in kinds.iter().zip(["history", "rooms", "unknown_user"]) {
        assert!(k == want || k == "unavailable", "{kinds:?}");
    }
}

#[test]
fn room_streams_are_trimmed_to_retain_messages() {
    let Some(redis) = Redis::start() else { return };
    let a = node_with(&redis, "a", 15, |c| c.retain_messages = 5);
    let (mut alice, _) = join(a.addr, "alice");
    for i in 0..30 {
        alice.send(json!({"type": "message", "text": format!("m{i}")}));
    }
    let ids: Vec<u64> = (0..30)
        .map(|_| alice.recv_type("message")["id"].as_u64().unwrap())
        .collect();
    let len: u64 = redis.query(::redis::cmd("XLEN").arg("chat:s:lobby"));
    assert_eq!(len, 5, "--retain-messages 5 keeps 5 in the stream");
    alice.send(json!({"type": "history", "limit": 100}));
    let page = alice.recv_type("history");
    assert_eq!(ids_of(&page), ids[25..].to_vec());
    assert_eq!(page["more"], false);
    // A resume from the start gets what is kept.
    let (_b, w) = join_since(a.addr, "bob", Some(0));
    assert_eq!(ids_of_history(&w), ids[25..].to_vec());
}

fn ids_of(page: &Value) -> Vec<u64> {
    ids(page["messages"].as_array().unwrap())
}

fn ids_of_history(greeting: &Value) -> Vec<u64> {
    ids(greeting["history"].as_array().unwrap())
}

/// Enters `room`; the `entered` reply.
fn enter(c: &mut Client, room: &str) -> Value {
    c.send(json!({"type": "enter", "room": room}));
    c.recv_type("entered")
}

#[test]
fn requests_sent_behind_one_that_waits_on_redis_are_answered_in_order() {
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis, "a", 15);
    // Wait until the node is up, then send without reading in between:
    // the join and the enter run on the cluster worker, and what follows
    // each is held until it is done, then run in order.
    drop(join(a.addr, "probe"));
    let mut c = Client::connect(a.addr);
    c.send(json!({"type": "join", "nick": "eager"}));
    c.send(json!({"type": "enter", "room": "rust"}));
    c.send(json!({"type": "message", "room": "rust", "text": "first"}));
    c.send(json!({"type": "who", "room": "rust"}));
    c.send(json!({"type": "history", "room": "rust", "limit": 5}));
    c.send(json!({"type": "rooms"}));
    let mut kinds = Vec::new();
    while kinds.len() < 6 {
        let v = recv_any(&mut c, WAIT).expect("every request answered");
        if ["joined", "left"].contains(&v["type"].as_str().unwrap()) {
            continue;
        }
        kinds.push(v["type"].as_str().unwrap().to_owned());
    }
    // The message comes back through Redis, so it may pass the `who`
    // reply; everything else keeps the order it was asked in.
    let mut without_message = kinds.clone();
    without_message.retain(|k| k != "message");
    assert_eq!(
        without_message,
        ["welcome", "entered", "users", "history", "rooms"],
        "{kinds:?}"
    );
    assert!(kinds.contains(&"message".to_owned()), "{kinds:?}");
}

/// Issue 17, "one Redis subscription per node (not per client)": the room
/// traffic (`chat:ev`) and the account/image changes (`chat:sync`) share
/// the node's one pub/sub connection, whatever the clients.
#[test]
fn a_node_holds_exactly_one_pubsub_connection() {
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis, "a", 15);
    let b = node(&redis, "b", 15);
    // Clients on both nodes: still one subscription per node.
    let (_alice, _) = join(a.addr, "alice");
    let (_bob, _) = join(b.addr, "bob");
    let (_carol, _) = join(b.addr, "carol");
    let numsub = || -> Vec<(String, u64)> {
        redis.query(
            ::redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg("chat:ev")
                .arg("chat:sync"),
        )
    };
    let deadline = Instant::now() + WAIT;
    while numsub() != [("chat:ev".to_owned(), 2), ("chat:sync".to_owned(), 2)] {
        assert!(Instant::now() < deadline, "{:?}", numsub());
        std::thread::sleep(Duration::from_millis(50));
    }
    // A moment more for any late subscription to show.
    std::thread::sleep(Duration::from_millis(500));
    let list: String = redis.query(::redis::cmd("CLIENT").arg("LIST"));
    let pubsub: Vec<&str> = list
        .lines()
        .filter(|l| l.split(' ').any(|f| f.starts_with("sub=") && f != "sub=0"))
        .collect();
    assert_eq!(pubsub.len(), 2, "one pub/sub connection per node:\n{list}");
    for l in &pubsub {
        assert!(l.split(' ').any(|f| f == "sub=2"), "both channels: {l}");
    }
    let typed: String = redis.query(::redis::cmd("CLIENT").arg("LIST").arg("TYPE").arg("pubsub"));
    assert_eq!(typed.lines().count(), 2, "{typed}");
    assert_eq!(
        numsub(),
        [("chat:ev".to_owned(), 2), ("chat:sync".to_owned(), 2)]
    );
}

/// The checks a node answers from its replicas (is this nick registered,
/// is this image held) never wait on Redis on a reactor: while the
/// replicas cannot be loaded (here the image index has the wrong type
/// after the subscription was cut, then Redis stops) they answer
/// `unavailable` at once, and the node recovers once Redis does.
#[test]
fn replica_checks_never_wait_on_redis_while_the_replicas_are_not_loaded() {
    let Some(redis) = Redis::start() else { return };
    // One reactor: a wait on Redis there would stall every session.
    let a = node_with(&redis, "a", 3, |c| c.reactor_threads = 1);
    let (mut alice, _) = join(a.addr, "alice");
    let (mut bob, _) = join(a.addr, "bob");
    alice.recv_type("joined");
    // The replicas' next load fails (WRONGTYPE) until the key is fixed.
    let _: () = redis.query(::redis::cmd("SET").arg("chat:media:meta").arg("x"));
    let _: u64 = redis.query(::redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"));
    // The node resubscribes (and, were it to fall back on Redis for its
    // checks, would call itself available again).
    let mut probe = Client::connect(a.addr);
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        probe.send(json!({"type": "join", "nick": "probe"}));
        if probe.recv()["code"] != "unavailable" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    redis.signal("STOP");
    let mut carol = Client::connect(a.addr);
    carol.send(json!({"type": "join", "nick": "carol"}));
    bob.send(json!({"type": "message", "room": "lobby", "text": "x",
        "image": "/media/0000000000000000000000000000000000000000000000000000000000000000.png"}));
    std::thread::sleep(Duration::from_millis(50));
    answered_promptly_for(&mut alice, Duration::from_millis(1500));
    let v = recv_any(&mut carol, Duration::from_secs(1)).expect("join answered at once");
    assert_eq!(v["code"], "unavailable", "{v}");
    redis.signal("CONT");
    let _: u64 = redis.query(::redis::cmd("DEL").arg("chat:media:meta"));
    // Loaded again: the node serves joins (the replica says who is
    // registered) within 10 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        carol.send(json!({"type": "join", "nick": "carol"}));
        let v = recv_any(&mut carol, Duration::from_secs(3)).expect("join answered");
        if v["type"] == "welcome" {
            break;
        }
        assert_eq!(v["code"], "unavailable", "{v}");
        assert!(Instant::now() < deadline, "the node never recovered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// For `span`, `c` asks `who` again and again and must be answered within
/// 400 ms each time (a reactor waiting on a stopped Redis would answer only
/// after its 2 s command timeout).
fn answered_promptly_for(c: &mut Client, span: Duration) {
    let end = Instant::now() + span;
    let mut answers = 0;
    while Instant::now() < end {
        let t = Instant::now();
        c.send(json!({"type": "who"}));
        let u = recv_within(c, "users", Duration::from_secs(3));
        assert!(u.is_some(), "no answer within 3 s");
        let took = t.elapsed();
        assert!(
            took < Duration::from_millis(400),
            "answered after {took:?} while Redis was stopped"
        );
        answers += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(answers >= 3);
}

/// `sender` sends `m0`..`m{n-1}` from a thread of its own, in turn to each
/// of `rooms` (none: no `room` field, the lobby), pausing 2 ms every ten
/// messages so that they keep flowing while the test moves a reader.
fn send_in_background(
    mut sender: Client,
    n: usize,
    rooms: &'static [&'static str],
) -> std::thread::JoinHandle<Client> {
    std::thread::spawn(move || {
        for i in 0..n {
            let mut m = json!({"type": "message", "text": format!("m{i}")});
            if !rooms.is_empty() {
                m["room"] = json!(rooms[i % rooms.len()]);
            }
            sender.send(m);
            if i % 10 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        sender
    })
}
