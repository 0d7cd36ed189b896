//! Rooms (DESIGN.md v2, "Rooms", and per-room "Presence that scales" and
//! "Replies are bounded") over real sockets on 127.0.0.1: every new
//! message, error code and limit. One server per test; every read bounded.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

impl Client {
    fn error(&mut self, msg: Value) -> String {
        self.send(msg);
        let v = self.recv();
        assert_eq!(v["type"], "error", "{v}");
        assert!(v["message"].is_string());
        v["code"].as_str().unwrap().to_owned()
    }

    /// Enters `room`; returns the `entered` reply.
    fn enter(&mut self, room: &str) -> Value {
        self.send(json!({"type": "enter", "room": room}));
        let mut v = self.recv();
        // A count of a room over the presence limit may come first.
        while v["type"] == "presence" {
            v = self.recv();
        }
        assert_eq!(
            (v["type"].as_str(), v["room"].as_str()),
            (Some("entered"), Some(room)),
            "{v}"
        );
        v
    }

    /// Asserts nothing arrived before the answer to a fresh `rooms`
    /// request: the server answers in order, so anything queued for this
    /// client earlier would come first.
    fn nothing_pending(&mut self) {
        self.send(json!({"type": "rooms"}));
        let v = self.recv();
        assert_eq!(v["type"], "rooms", "unexpected message: {v}");
    }

    fn rooms(&mut self) -> Vec<Value> {
        self.send(json!({"type": "rooms"}));
        let v = self.recv();
        assert_eq!(v["type"], "rooms", "{v}");
        assert_eq!(v["more"], false);
        v["rooms"].as_array().unwrap().clone()
    }

    fn say(&mut self, room: &str, text: &str) -> u64 {
        self.send(json!({"type": "message", "room": room, "text": text}));
        let v = self.recv_type("message");
        assert_eq!(
            (v["room"].as_str(), v["text"].as_str()),
            (Some(room), Some(text))
        );
        v["id"].as_u64().unwrap()
    }
}

fn names(rooms: &[Value]) -> Vec<&str> {
    rooms.iter().map(|r| r["name"].as_str().unwrap()).collect()
}

#[test]
fn enter_message_who_leave_and_the_lobby_default() {
    let server = start(|_| {});
    let (mut alice, w) = Client::join(server.addr, "alice");
    assert_eq!(w["room"], "lobby");
    assert_eq!(w["topic"], "");
    let (mut bob, _) = Client::join(server.addr, "bob");
    assert_eq!(alice.recv_type("joined")["room"], "lobby");
    let (mut carol, _) = Client::join(server.addr, "carol");
    alice.recv_type("joined");
    bob.recv_type("joined");

    let e = alice.enter("rust");
    assert_eq!(e["topic"], "");
    assert_eq!(e["users"], json!(["alice"]));
    assert_eq!(e["history"], json!([]));
    assert_eq!(e["more"], false);
    let e = bob.enter("rust");
    assert_eq!(e["users"], json!(["alice", "bob"]));
    let joined = alice.recv();
    assert_eq!(joined["type"], "joined");
    assert_eq!(
        (joined["room"].as_str(), joined["nick"].as_str()),
        (Some("rust"), Some("bob"))
    );
    assert!(joined["ts"].as_u64().is_some());

    // A room message reaches that room's members only.
    bob.send(json!({"type": "message", "room": "rust", "text": "hi rust"}));
    for c in [&mut alice, &mut bob] {
        let m = c.recv();
        assert_eq!(
            (
                m["type"].as_str(),
                m["room"].as_str(),
                m["from"].as_str(),
                m["text"].as_str()
            ),
            (Some("message"), Some("rust"), Some("bob"), Some("hi rust"))
        );
    }
    carol.nothing_pending();
    // No room means the lobby, and lobby messages say so.
    carol.send(json!({"type": "message", "text": "hi lobby"}));
    for c in [&mut alice, &mut bob, &mut carol] {
        let m = c.recv();
        assert_eq!(
            (m["room"].as_str(), m["text"].as_str()),
            (Some("lobby"), Some("hi lobby"))
        );
    }

    alice.send(json!({"type": "who", "room": "rust"}));
    assert_eq!(
        alice.recv(),
        json!({"type": "users", "room": "rust", "users": ["alice", "bob"], "more": false})
    );
    alice.send(json!({"type": "who"}));
    let u = alice.recv();
    assert_eq!(
        (u["room"].as_str(), u["users"].clone()),
        (Some("lobby"), json!(["alice", "bob", "carol"]))
    );
    alice.send(json!({"type": "history", "room": "rust"}));
    let h = alice.recv();
    assert_eq!(
        (h["type"].as_str(), h["room"].as_str()),
        (Some("history"), Some("rust"))
    );
    assert_eq!(h["messages"][0]["text"], "hi rust");
    assert_eq!(h["messages"].as_array().unwrap().len(), 1);

    // Leave: `left_room` to the leaver, `left` (with room) to the others.
    bob.send(json!({"type": "leave", "room": "rust"}));
    assert_eq!(bob.recv(), json!({"type": "left_room", "room": "rust"}));
    let left = alice.recv();
    assert_eq!(
        (
            left["type"].as_str(),
            left["room"].as_str(),
            left["nick"].as_str()
        ),
        (Some("left"), Some("rust"), Some("bob"))
    );
    carol.nothing_pending();
    assert_eq!(
        bob.error(json!({"type": "message", "room": "rust", "text": "x"})),
        "not_in_room"
    );

    // Leaving the lobby is allowed; the session stays joined.
    alice.send(json!({"type": "leave", "room": "lobby"}));
    assert_eq!(alice.recv(), json!({"type": "left_room", "room": "lobby"}));
    for c in [&mut bob, &mut carol] {
        let left = c.recv();
        assert_eq!(
            (left["type"].as_str(), left["room"].as_str()),
            (Some("left"), Some("lobby"))
        );
    }
    assert_eq!(
        alice.error(json!({"type": "message", "text": "x"})),
        "not_in_room"
    );
    assert_eq!(alice.error(json!({"type": "who"})), "not_in_room");
    assert_eq!(alice.error(json!({"type": "history"})), "not_in_room");
    assert_eq!(
        alice.error(json!({"type": "topic", "topic": "x"})),
        "not_in_room"
    );
    assert_eq!(
        alice.error(json!({"type": "leave", "room": "lobby"})),
        "not_in_room"
    );
    alice.say("rust", "still here");
    // And may come back.
    let e = alice.enter("lobby");
    assert_eq!(e["users"], json!(["alice", "bob", "carol"]));
    assert_eq!(e["history"][0]["text"], "hi lobby");
}

#[test]
fn rooms_list_topics_and_forgetting_empty_rooms() {
    let server = start(|_| {});
    let (mut alice, _) = Client::join(server.addr, "alice");
    let (mut bob, _) = Client::join(server.addr, "bob");
    alice.recv_type("joined");
    let lobby = alice.rooms();
    assert_eq!(
        lobby,
        vec![json!({"name": "lobby", "users": 2, "topic": ""})]
    );

    alice.enter("zeta");
    alice.enter("alpha");
    bob.enter("alpha");
    alice.recv_type("joined");
    alice.enter("quiet");
    let rooms = bob.rooms();
    assert_eq!(names(&rooms), ["alpha", "lobby", "quiet", "zeta"]);
    assert_eq!(rooms[0]["users"], 2);
    assert_eq!(rooms[2]["users"], 1);

    // Topic: any member sets it, every member hears it (the setter too).
    bob.send(json!({"type": "topic", "room": "alpha", "topic": "first letters <b>"}));
    for c in [&mut alice, &mut bob] {
        let t = c.recv();
        assert_eq!(
            (
                t["type"].as_str(),
                t["room"].as_str(),
                t["topic"].as_str(),
                t["by"].as_str()
            ),
            (
                Some("topic"),
                Some("alpha"),
                Some("first letters <b>"),
                Some("bob")
            )
        );
        assert!(t["ts"].as_u64().is_some());
    }
    // Omitted room = lobby; 200 characters fit, 201 are too long.
    let max = "é".repeat(200);
    alice.send(json!({"type": "topic", "topic": max}));
    assert_eq!(alice.recv_type("topic")["room"], "lobby");
    assert_eq!(bob.recv_type("topic")["topic"], max.as_str());
    assert_eq!(
        alice.error(json!({"type": "topic", "topic": "é".repeat(201)})),
        "too_long"
    );
    assert_eq!(
        alice.error(json!({"type": "topic", "room": "alpha"})),
        "bad_request"
    );
    let rooms = alice.rooms();
    assert_eq!(
        rooms[0],
        json!({"name": "alpha", "users": 2, "topic": "first letters <b>"})
    );
    assert_eq!(rooms[1]["topic"], max.as_str());
    alice.say("zeta", "kept");

    // Empty rooms: one without messages or topic is forgotten; one with a
    // message or a topic is kept (and its topic comes with `entered`).
    for room in ["alpha", "zeta", "quiet"] {
        alice.send(json!({"type": "leave", "room": room}));
        alice.recv_type("left_room");
    }
    bob.send(json!({"type": "leave", "room": "alpha"}));
    bob.recv_type("left_room");
    let rooms = bob.rooms();
    assert_eq!(names(&rooms), ["alpha", "lobby", "zeta"]);
    assert_eq!(rooms[0]["users"], 0);
    let e = bob.enter("alpha");
    assert_eq!(e["topic"], "first letters <b>");
    assert_eq!(e["users"], json!(["bob"]));
    // Clearing the topic (0 characters is allowed) and leaving forgets it.
    bob.send(json!({"type": "topic", "room": "alpha", "topic": ""}));
    assert_eq!(bob.recv_type("topic")["topic"], "");
    bob.send(json!({"type": "leave", "room": "alpha"}));
    bob.recv_type("left_room");
    assert_eq!(names(&bob.rooms()), ["lobby", "zeta"]);
    // A session's end leaves its rooms too.
    alice.enter("gone");
    drop(alice);
    let deadline = Instant::now() + WAIT;
    loop {
        bob.send(json!({"type": "rooms"}));
        let rooms = bob.recv_type("rooms")["rooms"].as_array().unwrap().clone();
        if names(&rooms) == ["lobby", "zeta"] && rooms[0]["users"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{rooms:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The lobby is never forgotten, even empty.
    bob.send(json!({"type": "leave", "room": "lobby"}));
    bob.recv_type("left_room");
    assert_eq!(names(&bob.rooms()), ["lobby", "zeta"]);
}

#[test]
fn new_error_codes_in_the_contracts_order() {
    let server = start(|c| {
        c.max_text = 10;
        c.max_rooms_per_user = 3;
        c.max_rooms = 5;
        c.rate_burst = 1000;
    });
    // not_joined comes before bad_room; shape errors (bad_request) come
    // before both.
    let mut stranger = Client::connect(server.addr);
    assert_eq!(
        stranger.error(json!({"type": "enter", "room": "Bad Room"})),
        "not_joined"
    );
    assert_eq!(stranger.error(json!({"type": "enter"})), "bad_request");
    assert_eq!(stranger.error(json!({"type": "rooms"})), "not_joined");

    let (mut a, _) = Client::join(server.addr, "alice");
    assert_eq!(a.error(json!({"type": "enter"})), "bad_request");
    assert_eq!(a.error(json!({"type": "leave"})), "bad_request");
    assert_eq!(a.error(json!({"type": "enter", "room": 7})), "bad_request");
    assert_eq!(
        a.error(json!({"type": "who", "room": null, "after": 3})),
        "bad_request"
    );
    for bad in ["", "Rust", "a b", "ü", "a.b", &"x".repeat(33)] {
        assert_eq!(
            a.error(json!({"type": "enter", "room": bad})),
            "bad_room",
            "{bad:?}"
        );
        // bad_room before not_in_room, not_in_room before too_long.
        assert_eq!(
            a.error(json!({"type": "message", "room": bad, "text": "x".repeat(11)})),
            "bad_room"
        );
        for kind in ["who", "history", "leave"] {
            assert_eq!(a.error(json!({"type": kind, "room": bad})), "bad_room");
        }
        assert_eq!(
            a.error(json!({"type": "topic", "room": bad, "topic": ""})),
            "bad_room"
        );
    }
    a.enter(&"x".repeat(32));
    assert_eq!(
        a.error(json!({"type": "message", "room": "nowhere", "text": "x".repeat(11)})),
        "not_in_room"
    );
    assert_eq!(
        a.error(json!({"type": "topic", "room": "nowhere", "topic": "t".repeat(201)})),
        "not_in_room"
    );
    for kind in ["who", "history", "leave"] {
        assert_eq!(
            a.error(json!({"type": kind, "room": "nowhere"})),
            "not_in_room"
        );
    }
    assert_eq!(
        a.error(json!({"type": "message", "room": "lobby", "text": "x".repeat(11)})),
        "too_long"
    );
    // Per session: lobby + 2 = 3 rooms; entering one of them again is fine.
    a.enter("two");
    assert_eq!(
        a.error(json!({"type": "enter", "room": "three"})),
        "too_many_rooms"
    );
    assert_eq!(a.enter("two")["users"], json!(["alice"]));
    assert_eq!(
        a.error(json!({"type": "enter", "room": "Three"})),
        "bad_room"
    );
    // Server-wide: 5 rooms, lobby included.
    let (mut b, _) = Client::join(server.addr, "bob");
    b.enter("b1");
    b.enter("two");
    a.recv_type("joined");
    let (mut c, _) = Client::join(server.addr, "carol");
    c.enter("c1");
    assert_eq!(names(&c.rooms()).len(), 5);
    assert_eq!(
        c.error(json!({"type": "enter", "room": "c2"})),
        "too_many_rooms"
    );
    // ... but an existing room can still be entered.
    assert_eq!(c.enter("b1")["users"], json!(["bob", "carol"]));
    // A forgotten room frees its place.
    c.send(json!({"type": "leave", "room": "c1"}));
    c.recv_type("left_room");
    c.enter("c2");
    // The connection stays open through all of it.
    a.say("lobby", "still open");
}

#[test]
fn renamed_goes_once_to_each_room_and_nicks_stay_server_wide() {
    let server = start(|_| {});
    let (mut alice, _) = Client::join(server.addr, "alice");
    let (mut bob, _) = Client::join(server.addr, "bob");
    alice.recv_type("joined");
    alice.enter("rust");
    alice.enter("go");
    bob.enter("rust");
    bob.enter("go");
    alice.recv_type("joined");
    alice.recv_type("joined");
    let (mut carol, _) = Client::join(server.addr, "carol");
    alice.recv_type("joined");
    bob.recv_type("joined");
    carol.enter("solo");
    // Nick uniqueness is server-wide, whatever rooms one is in.
    assert_eq!(
        carol.error(json!({"type": "nick", "nick": "ALICE"})),
        "nick_taken"
    );
    let mut dave = Client::connect(server.addr);
    assert_eq!(
        dave.error(json!({"type": "join", "nick": "Bob"})),
        "nick_taken"
    );

    alice.send(json!({"type": "nick", "nick": "alicia"}));
    let rooms = |c: &mut Client, n: usize| {
        let mut got: Vec<String> = (0..n)
            .map(|_| {
                let r = c.recv();
                assert_eq!(
                    (r["type"].as_str(), r["from"].as_str(), r["to"].as_str()),
                    (Some("renamed"), Some("alice"), Some("alicia")),
                    "{r}"
                );
                r["room"].as_str().unwrap().to_owned()
            })
            .collect();
        got.sort();
        got
    };
    assert_eq!(rooms(&mut alice, 3), ["go", "lobby", "rust"]);
    assert_eq!(rooms(&mut bob, 3), ["go", "lobby", "rust"]);
    assert_eq!(rooms(&mut carol, 1), ["lobby"]);
    alice.nothing_pending();
    bob.nothing_pending();
    carol.nothing_pending();
    bob.send(json!({"type": "who", "room": "go"}));
    assert_eq!(bob.recv()["users"], json!(["alicia", "bob"]));
    // A member in no room still gets its ack (without a room).
    carol.send(json!({"type": "leave", "room": "lobby"}));
    carol.recv_type("left_room");
    carol.send(json!({"type": "leave", "room": "solo"}));
    carol.recv_type("left_room");
    carol.send(json!({"type": "nick", "nick": "caz"}));
    let r = carol.recv();
    assert_eq!(
        (r["type"].as_str(), r["to"].as_str()),
        (Some("renamed"), Some("caz"))
    );
    assert!(r.get("room").is_none(), "{r}");
    // Private messages still reach anyone online, whatever the rooms.
    bob.send(json!({"type": "private", "to": "CAZ", "text": "psst"}));
    assert_eq!(carol.recv()["text"], "psst");
}

#[test]
fn ids_are_server_wide_and_since_before_are_per_room() {
    let server = start(|_| {});
    let (mut a, _) = Client::join(server.addr, "alice");
    a.enter("one");
    a.enter("two");
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(a.say("one", &format!("one {i}")));
        ids.push(a.say("two", &format!("two {i}")));
        ids.push(a.say("lobby", &format!("lobby {i}")));
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // history before, within the room.
    a.send(json!({"type": "history", "room": "two", "before": ids[10], "limit": 2}));
    let h = a.recv();
    let texts: Vec<&str> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["two 1", "two 2"]);
    assert_eq!(h["more"], true);
    // enter with since, within the room: a resume of one room.
    let (mut b, _) = Client::join(server.addr, "bob");
    b.send(json!({"type": "enter", "room": "one", "since": ids[3]}));
    let e = b.recv();
    let texts: Vec<&str> = e["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["one 2", "one 3"]);
    assert_eq!(e["more"], false);
    // join's since is the lobby's.
    let mut c = Client::connect(server.addr);
    c.send(json!({"type": "join", "nick": "carol", "since": ids[8]}));
    let w = c.recv();
    let texts: Vec<&str> = w["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["lobby 3"]);
}

#[test]
fn a_takeover_keeps_the_rooms() {
    let server = start(|_| {});
    let (mut old, w) = Client::join(server.addr, "alice");
    let token = w["token"].as_str().unwrap().to_owned();
    old.enter("rust");
    let (mut bob, _) = Client::join(server.addr, "bob");
    bob.enter("rust");
    let mut new = Client::connect(server.addr);
    new.send(json!({"type": "join", "nick": "alice", "token": token}));
    let w = new.recv();
    assert_eq!(
        (w["type"].as_str(), w["room"].as_str()),
        (Some("welcome"), Some("lobby"))
    );
    assert_eq!(old.expect_close(), 4000);
    // Still in rust, without entering again, and nobody was told.
    bob.send(json!({"type": "message", "room": "rust", "text": "still there?"}));
    assert_eq!(new.recv()["text"], "still there?");
    assert_eq!(bob.recv()["text"], "still there?");
    new.say("rust", "yes");
    assert_eq!(bob.recv_type("message")["text"], "yes");
    bob.send(json!({"type": "who", "room": "rust"}));
    let u = bob.recv_type("users");
    assert_eq!(u["users"], json!(["alice", "bob"]));
    // Entering again gives `entered` (a page's resume) and tells nobody.
    let e = new.enter("rust");
    assert_eq!(e["history"].as_array().unwrap().len(), 2);
    bob.nothing_pending();
}

#[test]
fn presence_limit_and_bounded_replies_apply_per_room() {
    let server = start(|c| {
        c.presence_limit = 2;
        c.max_text = 60_000;
        c.max_message_bytes = 64 << 10;
    });
    let (mut a, _) = Client::join(server.addr, "a");
    let (mut b, _) = Client::join(server.addr, "b");
    a.recv_type("joined");
    a.enter("big");
    b.enter("big");
    a.recv_type("joined");
    // A third member in "big" puts it over the limit: a count, not a notice.
    let (mut c, _) = Client::join(server.addr, "c");
    // (the lobby went over the limit too: counts there, with its own room)
    let p = a.recv_type("presence");
    assert_eq!(
        (p["room"].as_str(), p["users"].as_u64()),
        (Some("lobby"), Some(3))
    );
    let e = c.enter("big");
    assert_eq!(e["users_total"], 3);
    let deadline = Instant::now() + WAIT;
    loop {
        let v = a.recv();
        assert!(v["type"] != "joined", "{v}");
        if v["type"] == "presence" && v["room"] == "big" {
            assert_eq!(v["users"], 3);
            break;
        }
        assert!(Instant::now() < deadline);
    }
    // A small room stays v1-like for its members.
    b.enter("small");
    c.enter("small");
    assert_eq!(b.recv_type("joined")["room"], "small");

    // Replies are bounded per room: 10 messages of ~60 KB in "big" do not
    // fit one 256 KiB entered; the newest that fit come with more:true.
    let text = "y".repeat(60_000);
    for _ in 0..10 {
        a.send(json!({"type": "message", "room": "big", "text": text}));
        a.recv_type("message");
    }
    let (mut d, _) = Client::join(server.addr, "d");
    d.send(json!({"type": "enter", "room": "big"}));
    // (the lobby is over the limit too: its counts may come first)
    let (mut e, mut size) = d.recv_sized();
    while e["type"] == "presence" {
        (e, size) = d.recv_sized();
    }
    assert_eq!(e["type"], "entered");
    assert!(size <= chat_server::REPLY_MAX_BYTES, "{size}");
    assert_eq!(e["more"], true);
    let n = e["history"].as_array().unwrap().len();
    assert!((1..10).contains(&n), "{n}");
    d.send(json!({"type": "history", "room": "big"}));
    let (mut h, mut size) = d.recv_sized();
    while h["type"] == "presence" {
        (h, size) = d.recv_sized();
    }
    assert!(size <= chat_server::REPLY_MAX_BYTES, "{size}");
    assert_eq!(
        (h["room"].as_str(), h["more"].as_bool()),
        (Some("big"), Some(true))
    );
}

#[test]
fn the_rooms_reply_is_bounded_and_pages() {
    let server = start(|c| {
        c.max_rooms = 2000;
        c.rate_burst = 10_000;
        c.rate_per_sec = 10_000;
    });
    let (mut a, _) = Client::join(server.addr, "alice");
    // 1,000 rooms with 200-character topics of 4-byte characters (~800 KB
    // in all) must not trip the client's queue bound: the list pages.
    let topic = "🎉".repeat(200);
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..1000 {
        let room = format!("r{i:04}");
        a.send(json!({"type": "enter", "room": room}));
        a.recv_type("entered");
        a.send(json!({"type": "topic", "room": room, "topic": topic}));
        a.recv_type("topic");
        a.send(json!({"type": "leave", "room": room}));
        a.recv_type("left_room");
        assert!(Instant::now() < deadline);
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..100 {
        a.send(json!({"type": "rooms", "after": after}));
        let (v, size) = a.recv_sized();
        assert!(size <= chat_server::REPLY_MAX_BYTES, "{size}");
        let rooms = v["rooms"].as_array().unwrap();
        assert!(!rooms.is_empty());
        seen.extend(rooms.iter().map(|r| r["name"].as_str().unwrap().to_owned()));
        after = seen.last().cloned();
        if v["more"] == false {
            break;
        }
    }
    assert_eq!(seen.len(), 1001);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn room_flags_are_in_help_and_bounded() {
    use std::process::Command;
    const BIN: &str = env!("CARGO_BIN_EXE_chat-server");
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--max-rooms-per-user", "--max-rooms "] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    for args in [
        ["--max-rooms", "0"],
        ["--max-rooms-per-user", "0"],
        ["--max-rooms-per-user", "10001"],
        ["--max-rooms", "many"],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(args[0]));
    }
}

/// Sessions entering, leaving, talking, renaming and quitting at once in
/// shared rooms: no deadlock (every reply comes within the read timeout),
/// and afterwards the room list agrees with who is left.
#[test]
fn concurrent_enter_leave_message_rename_stay_consistent() {
    let server = start(|c| {
        c.rate_burst = 100_000;
        c.rate_per_sec = 100_000;
    });
    let addr = server.addr;
    let workers: Vec<_> = (0..6)
        .map(|w| {
            std::thread::spawn(move || {
                let (mut c, _) = Client::join(addr, &format!("w{w}"));
                for i in 0..60 {
                    let room = format!("r{}", (i + w) % 4);
                    c.send(json!({"type": "enter", "room": room}));
                    c.recv_type("entered");
                    c.send(json!({"type": "message", "room": room, "text": format!("{w}/{i}")}));
                    c.send(json!({"type": "nick", "nick": format!("w{w}-{}", i % 2)}));
                    c.send(json!({"type": "leave", "room": room}));
                    c.recv_type("left_room");
                }
                // Half stay in one room, half quit.
                if w % 2 == 0 {
                    c.send(json!({"type": "enter", "room": "stay"}));
                    c.recv_type("entered");
                    Some(c)
                } else {
                    None
                }
            })
        })
        .collect();
    let stayed: Vec<Client> = workers
        .into_iter()
        .filter_map(|h| h.join().unwrap())
        .collect();
    let (mut obs, _) = Client::join(addr, "observer");
    let deadline = Instant::now() + WAIT;
    loop {
        obs.send(json!({"type": "rooms"}));
        let rooms = obs.recv_type("rooms")["rooms"].as_array().unwrap().clone();
        let users = |name: &str| {
            rooms
                .iter()
                .find(|r| r["name"] == name)
                .map(|r| r["users"].clone())
        };
        // r0-r3 hold messages, so they are kept (empty); quitters are gone.
        if users("stay") == Some(json!(3))
            && users("lobby") == Some(json!(4))
            && (0..4).all(|i| users(&format!("r{i}")) == Some(json!(0)))
        {
            break;
        }
        assert!(Instant::now() < deadline, "{rooms:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stayed);
}
