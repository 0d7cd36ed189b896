//! Protocol tests over real sockets on 127.0.0.1: one server per test,
//! started in-process on port 0 with short timeouts. Every read is bounded.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use wsproto::{CloseCode, Event};

impl Client {
    fn send_raw(&mut self, s: &str) {
        self.ws.send(s).unwrap();
    }

    fn error(&mut self, msg: Value) -> String {
        self.send(msg);
        let v = self.recv();
        assert_eq!(v["type"], "error", "{v}");
        assert!(v["message"].is_string());
        v["code"].as_str().unwrap().to_owned()
    }
}

/// Sends raw bytes, returns everything the server sends until it closes.
fn raw(addr: SocketAddr, request: &[u8]) -> String {
    String::from_utf8_lossy(&raw_bytes(addr, request)).into_owned()
}

fn raw_bytes(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn upgrade_request(extra: &str) -> String {
    upgrade("/ws", "x", extra)
}

#[test]
fn join_presence_room_messages_and_who() {
    let server = start(|_| {});
    let (mut alice, w) = Client::join(server.addr, "alice");
    assert_eq!(w["nick"], "alice");
    assert_eq!(w["users"], json!(["alice"]));
    assert_eq!(w["history"], json!([]));
    assert!(w["token"].as_str().unwrap().len() >= 16);

    let (mut bob, w) = Client::join(server.addr, "bob");
    assert_eq!(w["users"], json!(["alice", "bob"]));
    let joined = alice.recv();
    assert_eq!(
        (joined["type"].as_str(), joined["nick"].as_str()),
        (Some("joined"), Some("bob"))
    );
    assert!(joined["ts"].as_u64().unwrap() > 1_600_000_000_000);

    bob.send(json!({"type": "message", "text": "hi 🎉 <b>"}));
    let a = alice.recv();
    let b = bob.recv(); // the sender's own copy is its ack
    assert_eq!(a, b);
    assert_eq!(
        (a["type"].as_str(), a["from"].as_str()),
        (Some("message"), Some("bob"))
    );
    assert_eq!(a["text"], "hi 🎉 <b>");
    let id1 = a["id"].as_u64().unwrap();
    bob.send(json!({"type": "message", "text": "again"}));
    assert!(alice.recv()["id"].as_u64().unwrap() > id1);
    bob.recv();

    alice.send(json!({"type": "who"}));
    assert_eq!(
        alice.recv(),
        json!({"type": "users", "room": "lobby", "users": ["alice", "bob"], "more": false})
    );

    bob.ws.close(CloseCode::NORMAL, "bye").unwrap();
    let left = alice.recv();
    assert_eq!(
        (left["type"].as_str(), left["nick"].as_str()),
        (Some("left"), Some("bob"))
    );
    // The nick is free again.
    let (_bob2, w) = Client::join(server.addr, "BOB");
    assert_eq!(w["users"], json!(["alice", "BOB"]));
}

#[test]
fn every_error_code_in_order_and_connection_stays_open() {
    let server = start(|c| c.max_text = 10);
    let (_alice, _) = Client::join(server.addr, "Alice");
    let mut c = Client::connect(server.addr);
    c.send_raw("{nope");
    assert_eq!(c.recv()["code"], "bad_json");
    c.send_raw(&format!("{}{}", "[".repeat(1000), "]".repeat(1000)));
    assert_eq!(c.recv()["code"], "bad_json"); // nesting limit, not a crash
    assert_eq!(c.error(json!([1, 2])), "bad_request");
    assert_eq!(c.error(json!({"nick": "x"})), "bad_request");
    assert_eq!(c.error(json!({"type": 7})), "bad_request");
    assert_eq!(c.error(json!({"type": "join"})), "bad_request");
    assert_eq!(c.error(json!({"type": "join", "nick": 5})), "bad_request");
    // bad_request comes before not_joined.
    assert_eq!(
        c.error(json!({"type": "message", "text": ""})),
        "bad_request"
    );
    assert_eq!(c.error(json!({"type": "dance"})), "unknown_type");
    assert_eq!(
        c.error(json!({"type": "message", "text": "hi"})),
        "not_joined"
    );
    assert_eq!(c.error(json!({"type": "who"})), "not_joined");
    assert_eq!(c.error(json!({"type": "join", "nick": ""})), "nick_invalid");
    assert_eq!(
        c.error(json!({"type": "join", "nick": "a\u{7}b"})),
        "nick_invalid"
    );
    assert_eq!(
        c.error(json!({"type": "join", "nick": "a\u{200B}"})),
        "nick_invalid"
    );
    assert_eq!(
        c.error(json!({"type": "join", "nick": "x".repeat(33)})),
        "nick_invalid"
    );
    // nick_invalid comes before nick_taken; unique ignoring case.
    assert_eq!(
        c.error(json!({"type": "join", "nick": "aLiCe"})),
        "nick_taken"
    );
    c.send(json!({"type": "join", "nick": "carol"}));
    assert_eq!(c.recv()["type"], "welcome");
    assert_eq!(
        c.error(json!({"type": "join", "nick": "carol2"})),
        "already_joined"
    );
    assert_eq!(
        c.error(json!({"type": "private", "to": "zed", "text": "x".repeat(50)})),
        "unknown_user"
    );
    assert_eq!(
        c.error(json!({"type": "private", "to": "alice", "text": "x".repeat(11)})),
        "too_long"
    );
    assert_eq!(
        c.error(json!({"type": "message", "text": "x".repeat(11)})),
        "too_long"
    );
    // Ten characters is fine even when they are four bytes each.
    c.send(json!({"type": "message", "text": "🎉".repeat(10)}));
    assert_eq!(c.recv_type("message")["text"], "🎉".repeat(10));
    c.send(json!({"type": "who"}));
    assert_eq!(c.recv()["users"], json!(["Alice", "carol"]));
}

#[test]
fn private_messages_reach_only_the_two_ends() {
    let server = start(|_| {});
    let (mut a, _) = Client::join(server.addr, "a");
    let (mut b, _) = Client::join(server.addr, "Bee");
    let (mut c, _) = Client::join(server.addr, "c");
    a.recv_type("joined");
    a.recv_type("joined");
    b.recv_type("joined");
    a.send(json!({"type": "private", "to": "bee", "text": "psst"}));
    let pa = a.recv();
    let pb = b.recv();
    assert_eq!(pa, pb);
    assert_eq!(
        (pa["from"].as_str(), pa["to"].as_str()),
        (Some("a"), Some("Bee"))
    );
    assert!(pa["id"].is_u64() && pa["ts"].is_u64());
    // To yourself: delivered once.
    c.send(json!({"type": "private", "to": "C", "text": "note"}));
    assert_eq!(c.recv()["text"], "note");
    // c saw nothing of a's private message: its next message is the room one.
    a.send(json!({"type": "message", "text": "room"}));
    assert_eq!(c.recv()["text"], "room");
    assert_eq!(b.recv()["text"], "room");
    // Private messages are not history.
    a.recv();
    a.send(json!({"type": "history"}));
    let h = a.recv();
    assert_eq!(h["messages"].as_array().unwrap().len(), 1);
}

#[test]
fn rename_and_collisions() {
    let server = start(|_| {});
    let (mut a, _) = Client::join(server.addr, "alice");
    let (mut b, _) = Client::join(server.addr, "bob");
    a.recv_type("joined");
    assert_eq!(
        b.error(json!({"type": "nick", "nick": "ALICE"})),
        "nick_taken"
    );
    assert_eq!(
        b.error(json!({"type": "nick", "nick": "bad\nname"})),
        "nick_invalid"
    );
    // A case variant of one's own nick is allowed; everyone hears it.
    b.send(json!({"type": "nick", "nick": "Bob"}));
    let rb = b.recv();
    assert_eq!(rb, a.recv());
    assert_eq!(
        (rb["type"].as_str(), rb["from"].as_str(), rb["to"].as_str()),
        (Some("renamed"), Some("bob"), Some("Bob"))
    );
    b.send(json!({"type": "nick", "nick": "robert"}));
    assert_eq!(a.recv()["to"], "robert");
    b.recv();
    // The old nick is free, the new one is taken.
    let (_c, _) = Client::join(server.addr, "bob");
    let mut d = Client::connect(server.addr);
    assert_eq!(
        d.error(json!({"type": "join", "nick": "Robert"})),
        "nick_taken"
    );
    a.send(json!({"type": "private", "to": "ROBERT", "text": "hey"}));
    assert_eq!(b.recv_type("private")["to"], "robert");
}

#[test]
fn history_ring_and_paging() {
    let server = start(|c| c.history = 5);
    let (mut a, _) = Client::join(server.addr, "a");
    let mut ids = Vec::new();
    for i in 0..8 {
        a.send(json!({"type": "message", "text": format!("m{i}")}));
        ids.push(a.recv()["id"].as_u64().unwrap());
    }
    let (mut b, w) = Client::join(server.addr, "b");
    let texts: Vec<&str> = w["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["m3", "m4", "m5", "m6", "m7"]);
    b.send(json!({"type": "history", "before": ids[7], "limit": 2}));
    let h = b.recv();
    let got: Vec<u64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(got, [ids[5], ids[6]]);
    b.send(json!({"type": "history", "before": ids[4]}));
    let got: Vec<u64> = b.recv()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(got, [ids[3]]);
    b.send(json!({"type": "history", "limit": 0}));
    let got: Vec<u64> = b.recv()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(got, [ids[7]]);
    assert_eq!(
        b.error(json!({"type": "history", "before": "x"})),
        "bad_request"
    );
}

#[test]
fn resume_with_since_and_token_takes_over_silently() {
    let server = start(|_| {});
    let (mut a, w) = Client::join(server.addr, "alice");
    let token = w["token"].as_str().unwrap().to_owned();
    let (mut b, _) = Client::join(server.addr, "bob");
    a.recv_type("joined");
    let mut last = 0;
    for i in 0..4 {
        b.send(json!({"type": "message", "text": format!("m{i}")}));
        b.recv();
        let m = a.recv();
        if i == 1 {
            last = m["id"].as_u64().unwrap();
        }
    }
    // Without the token the nick is taken while the old connection is open.
    let mut intruder = Client::connect(server.addr);
    assert_eq!(
        intruder.error(json!({"type": "join", "nick": "alice", "since": 0})),
        "nick_taken"
    );
    assert_eq!(
        intruder.error(json!({"type": "join", "nick": "alice", "token": "00"})),
        "nick_taken"
    );
    // With it, a reconnect takes the session over and gets only what it missed.
    let mut a2 = Client::connect(server.addr);
    a2.send(json!({"type": "join", "nick": "ALICE", "since": last, "token": token}));
    let w = a2.recv();
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["nick"], "alice");
    assert_eq!(w["token"], token.as_str());
    let texts: Vec<&str> = w["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["m2", "m3"]);
    assert_eq!(a.expect_close(), 4000);
    // Silent for the others: bob's next message is his own, not left/joined.
    b.send(json!({"type": "message", "text": "still here?"}));
    assert_eq!(b.recv()["type"], "message");
    assert_eq!(a2.recv()["text"], "still here?");
    b.send(json!({"type": "who"}));
    assert_eq!(b.recv()["users"], json!(["alice", "bob"]));
    // The token survives a rename.
    a2.send(json!({"type": "nick", "nick": "alicia"}));
    a2.recv();
    b.recv();
    let mut a3 = Client::connect(server.addr);
    a3.send(json!({"type": "join", "nick": "alicia", "token": token}));
    assert_eq!(a3.recv()["type"], "welcome");
    assert_eq!(a2.expect_close(), 4000);
}

#[test]
fn max_connections_answers_503() {
    let server = start(|c| c.max_connections = 2);
    let _a = Client::connect(server.addr);
    let _b = Client::connect(server.addr);
    let out = raw(server.addr, upgrade_request("").as_bytes());
    assert!(out.starts_with("HTTP/1.1 503 "), "{out}");
    assert!(out.contains("Retry-After: "), "{out}");
    drop(_a);
    // The slot frees once the first client is gone.
    let deadline = Instant::now() + WAIT;
    while server.handle().connections() > 1 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = raw(server.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
}

#[test]
fn http_routes_and_handshake_rejections() {
    let server = start(|c| c.handshake_timeout = Duration::from_millis(300));
    let a = server.addr;
    let page = raw(a, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        page.starts_with("HTTP/1.1 200 ") && page.contains("text/html") && page.contains("<html"),
        "{page}"
    );
    let ok = raw(a, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        ok.starts_with("HTTP/1.1 200 ") && ok.ends_with("\r\n\r\nok"),
        "{ok}"
    );
    assert!(raw(a, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 404 "));
    let post = raw(
        a,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(
        post.starts_with("HTTP/1.1 405 ") && post.contains("Allow: GET"),
        "{post}"
    );
    assert!(raw(a, b"\x16\x03\x01garbage\r\n\r\n").starts_with("HTTP/1.1 400 "));
    // A bad upgrade: no key is 400, a wrong version 426 with the version we speak.
    let nokey = raw(a, b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n");
    assert!(nokey.starts_with("HTTP/1.1 400 "), "{nokey}");
    let v8 = raw(
        a,
        upgrade_request("")
            .replace("Version: 13", "Version: 8")
            .as_bytes(),
    );
    assert!(
        v8.starts_with("HTTP/1.1 426 ") && v8.contains("Sec-WebSocket-Version: 13"),
        "{v8}"
    );
    assert!(raw(a, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 400 "));
    let big = upgrade_request(&format!("X-Pad: {}\r\n", "a".repeat(9000)));
    assert!(raw(a, big.as_bytes()).starts_with("HTTP/1.1 431 "));
    // permessage-deflate is accepted, without server context (issue 13;
    // tests/deflate.rs has the rest).
    let ok = raw(
        a,
        upgrade_request("Sec-WebSocket-Extensions: permessage-deflate\r\n").as_bytes(),
    );
    assert!(
        ok.starts_with("HTTP/1.1 101 ")
            && ok.contains(
                "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover"
            ),
        "{ok}"
    );
    // Slowloris: an unfinished head is dropped after the handshake timeout.
    let t = Instant::now();
    let out = raw(a, b"GET / HTTP/1.1\r\nHost: x\r\n");
    assert_eq!(out, "");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[test]
fn binary_frame_closes_1003_and_oversized_frame_1009() {
    let server = start(|c| c.max_message_bytes = 1024);
    let (mut a, _) = Client::join(server.addr, "a");
    a.ws.send(vec![1u8, 2, 3]).unwrap();
    assert_eq!(a.expect_close(), 1003);
    let (mut b, _) = Client::join(server.addr, "b");
    b.send_raw(&"x".repeat(2000));
    assert_eq!(b.expect_close(), 1009);
}

#[test]
fn join_timeout_closes_1008() {
    let server = start(|c| c.join_timeout = Duration::from_millis(200));
    let mut c = Client::connect(server.addr);
    let t = Instant::now();
    assert_eq!(c.expect_close(), 1008);
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[test]
fn rate_limit_refuses_then_closes_1008() {
    let server = start(|c| {
        c.rate_burst = 5;
        c.rate_per_sec = 1;
        c.rate_refusals_to_close = 3;
    });
    let (mut a, _) = Client::join(server.addr, "a"); // the join used one token
    for _ in 0..7 {
        a.send(json!({"type": "who"}));
    }
    for _ in 0..4 {
        assert_eq!(a.recv()["type"], "users");
    }
    for _ in 0..3 {
        // The rate is checked before parsing.
        assert_eq!(a.recv()["code"], "rate_limited");
    }
    assert_eq!(a.expect_close(), 1008);
}

#[test]
fn missed_pong_closes_1011() {
    let server = start(|c| {
        c.ping_interval = Duration::from_millis(100);
        c.pong_timeout = Duration::from_millis(200);
    });
    // A raw client that completes the handshake and then never answers.
    let bytes = raw_bytes(server.addr, upgrade_request("").as_bytes());
    assert!(bytes.starts_with(b"HTTP/1.1 101 "));
    let close = bytes
        .windows(2)
        .position(|w| w == [0x88, 0x0e])
        .expect("a close frame");
    assert_eq!(&bytes[close + 2..close + 4], &1011u16.to_be_bytes());
    assert!(
        bytes.windows(2).any(|w| w == [0x89, 0x00]),
        "a ping came first"
    );
}

#[test]
fn slow_client_is_closed_1008_and_others_lose_nothing() {
    let server = start(|c| {
        c.max_queue_bytes = 512 << 10;
        c.max_text = 64 << 10;
        c.rate_burst = 10_000;
        c.rate_per_sec = 10_000;
    });
    let (mut slow, _) = Client::join(server.addr, "slow");
    let (mut fast, _) = Client::join(server.addr, "fast");
    let (mut sender, _) = Client::join(server.addr, "sender");
    slow.ws.get_ref().set_read_timeout(Some(WAIT)).unwrap();
    fast.recv_type("joined");
    let n = 400; // 24 MB: more than loopback socket buffers hold
    let reader = std::thread::spawn(move || {
        let (mut got, mut saw_left) = (0, false);
        while got < n || !saw_left {
            match fast.ws.read() {
                Ok(Event::Text(t)) if t.as_str().contains(r#""type":"message""#) => got += 1,
                Ok(Event::Text(t)) if t.as_str().contains(r#""type":"left""#) => {
                    assert!(t.as_str().contains(r#""nick":"slow""#), "{}", t.as_str());
                    saw_left = true;
                }
                Ok(_) => {}
                Err(e) => panic!("fast reader: {e}"),
            }
        }
        got
    });
    // Lockstep: the sender waits for its own echo, so only `slow` (which
    // never reads) falls behind by more than a message or two.
    let msg = json!({"type": "message", "text": "y".repeat(60_000)}).to_string();
    for _ in 0..n {
        sender.send_raw(&msg);
        loop {
            match sender.ws.read() {
                Ok(Event::Text(t)) if t.as_str().contains(r#""type":"message""#) => break,
                Ok(_) => {}
                Err(e) => panic!("sender: {e}"),
            }
        }
    }
    assert_eq!(reader.join().unwrap(), n);
    // The slow client gets whole frames, then close 1008.
    assert_eq!(slow.expect_close(), 1008);
}

#[test]
fn shutdown_sends_1001_to_everyone() {
    let server = start(|_| {});
    let (mut a, _) = Client::join(server.addr, "a");
    let mut b = Client::connect(server.addr);
    server.stop().unwrap();
    assert_eq!(a.expect_close(), 1001);
    assert_eq!(b.expect_close(), 1001);
}
