//! Registered nicks (DESIGN.md, "Registered nicks"): register, the
//! password on join and rename, the lockout (with a short window), the
//! resume token, unregister, persistence, and the error order.

mod common;

use chat_server::{AuthParams, Config};
use common::Client;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const PW: &str = "correct horse";

/// Cheap hashes (the debug build's Argon2 is slow) and a short lockout.
fn tune(c: &mut Config, window: Duration) {
    c.auth = AuthParams {
        memory_kib: 256,
        passes: 1,
        lanes: 1,
        threads: 2,
        window,
    };
    c.rate_burst = 1000;
    c.rate_per_sec = 1000;
}

fn start(window: Duration) -> chat_server::Running {
    common::start(|c| tune(c, window))
}

fn register(c: &mut Client, password: &str) -> Value {
    c.send(json!({"type": "register", "password": password}));
    c.recv()
}

fn code(v: &Value) -> &str {
    assert_eq!(v["type"], "error", "{v}");
    v["code"].as_str().unwrap()
}

/// Sends a join and returns the first answer.
fn join(addr: SocketAddr, nick: &str, password: Option<&str>) -> (Client, Value) {
    let mut c = Client::connect(addr);
    let mut j = json!({"type": "join", "nick": nick});
    if let Some(p) = password {
        j["password"] = json!(p);
    }
    c.send(j);
    let v = c.recv();
    (c, v)
}

/// Waits until `nick` is gone from the room (its `left` seen by `watcher`).
fn wait_left(watcher: &mut Client, nick: &str) {
    for _ in 0..100 {
        let v = watcher.recv_type("left");
        if v["nick"] == nick {
            return;
        }
    }
    panic!("no left for {nick}");
}

#[test]
fn a_registered_nick_needs_its_password_to_join_or_rename() {
    let server = start(Duration::from_secs(60));
    let (mut watcher, _) = Client::join(server.addr, "watcher");
    let (mut alice, _) = Client::join(server.addr, "Alice");
    // 8-256 bytes.
    assert_eq!(code(&register(&mut alice, "short")), "bad_request");
    assert_eq!(code(&register(&mut alice, &"x".repeat(257))), "bad_request");
    let r = register(&mut alice, PW);
    assert_eq!(r, json!({"type": "registered", "nick": "Alice"}));
    assert_eq!(code(&register(&mut alice, PW)), "nick_registered");
    drop(alice);
    wait_left(&mut watcher, "Alice");

    // Same case folding as nick uniqueness.
    let (_, v) = join(server.addr, "ALICE", None);
    assert_eq!(code(&v), "auth_required");
    let (_, v) = join(server.addr, "alice", Some("wrong password"));
    assert_eq!(code(&v), "auth_failed");
    // nick_invalid comes first.
    let (_, v) = join(server.addr, "", Some(PW));
    assert_eq!(code(&v), "nick_invalid");
    let (mut alice, v) = join(server.addr, "alice", Some(PW));
    assert_eq!(v["type"], "welcome", "{v}");
    // The member is usable at once.
    alice.send(json!({"type": "message", "text": "hi"}));
    assert_eq!(alice.recv_type("message")["text"], "hi");
    // Taken while online: auth first, then nick_taken.
    let (_, v) = join(server.addr, "alice", Some("wrong password"));
    assert_eq!(code(&v), "auth_failed");
    let (_, v) = join(server.addr, "alice", Some(PW));
    assert_eq!(code(&v), "nick_taken");
    // A case variant of one's own registered nick needs nothing.
    alice.send(json!({"type": "nick", "nick": "ALICE"}));
    assert_eq!(alice.recv_type("renamed")["to"], "ALICE");
    alice.send(json!({"type": "nick", "nick": "alice2"}));
    assert_eq!(alice.recv_type("renamed")["to"], "alice2");

    // Renaming to it needs the password too.
    let (mut bob, _) = Client::join(server.addr, "bob");
    bob.send(json!({"type": "nick", "nick": "alice"}));
    assert_eq!(code(&bob.recv()), "auth_required");
    bob.send(json!({"type": "nick", "nick": "alice", "password": "nope nope"}));
    assert_eq!(code(&bob.recv()), "auth_failed");
    bob.send(json!({"type": "nick", "nick": "alice", "password": PW}));
    let v = bob.recv_type("renamed");
    assert_eq!(
        (v["from"].as_str(), v["to"].as_str()),
        (Some("bob"), Some("alice"))
    );

    // Unregister: wrong password refused, right one removes it.
    bob.send(json!({"type": "unregister", "password": "nope nope"}));
    assert_eq!(code(&bob.recv()), "auth_failed");
    bob.send(json!({"type": "unregister", "password": PW}));
    assert_eq!(bob.recv(), json!({"type": "unregistered", "nick": "alice"}));
    drop(bob);
    wait_left(&mut watcher, "alice");
    let (_, v) = join(server.addr, "alice", None);
    assert_eq!(
        v["type"], "welcome",
        "unregistered nicks work as in v1: {v}"
    );
}

#[test]
fn five_failures_lock_the_nick_for_a_window_whoever_asks() {
    let window = Duration::from_millis(1500);
    let server = start(window);
    let (mut alice, _) = Client::join(server.addr, "alice");
    assert_eq!(register(&mut alice, PW)["type"], "registered");
    drop(alice);
    std::thread::sleep(Duration::from_millis(200));

    let mut mallory = Client::connect(server.addr);
    let attempt = |c: &mut Client, pw: Option<&str>| {
        let mut j = json!({"type": "join", "nick": "alice"});
        if let Some(p) = pw {
            j["password"] = json!(p);
        }
        c.send(j);
        c.recv()
    };
    for _ in 0..5 {
        assert_eq!(
            code(&attempt(&mut mallory, Some("guess guess"))),
            "auth_failed"
        );
    }
    let locked_at = Instant::now();
    // Locked: even the right password, from another connection.
    assert_eq!(code(&attempt(&mut mallory, Some(PW))), "rate_limited");
    let mut alice = Client::connect(server.addr);
    assert_eq!(code(&attempt(&mut alice, Some(PW))), "rate_limited");
    // Without a password: auth_required, not counted.
    assert_eq!(code(&attempt(&mut alice, None)), "auth_required");
    // Other nicks are not affected.
    let (_, v) = join(server.addr, "carol", None);
    assert_eq!(v["type"], "welcome");
    // After the window, the right password works.
    std::thread::sleep(window.saturating_sub(locked_at.elapsed()) + Duration::from_millis(300));
    let v = attempt(&mut alice, Some(PW));
    assert_eq!(v["type"], "welcome", "{v}");
}

#[test]
fn a_resume_token_takes_over_without_the_password() {
    let server = start(Duration::from_secs(60));
    let (mut alice, _) = Client::join(server.addr, "alice");
    assert_eq!(register(&mut alice, PW)["type"], "registered");
    let mut first = Client::connect(server.addr);
    first.send(json!({"type": "join", "nick": "alice2"}));
    let _ = first.recv_type("welcome");
    // A fresh login with the password, then a resume by its token.
    drop(alice);
    std::thread::sleep(Duration::from_millis(200));
    let (mut a1, w) = join(server.addr, "alice", Some(PW));
    assert_eq!(w["type"], "welcome", "{w}");
    let token = w["token"].as_str().unwrap().to_owned();
    let mut a2 = Client::connect(server.addr);
    a2.send(json!({"type": "join", "nick": "alice", "token": token}));
    let w2 = a2.recv();
    assert_eq!(w2["type"], "welcome", "{w2}");
    assert_eq!(a1.expect_close(), 4000);
    // A wrong token is no way in.
    let mut a3 = Client::connect(server.addr);
    a3.send(json!({"type": "join", "nick": "alice", "token": "0000"}));
    assert_eq!(code(&a3.recv()), "auth_required");
}

#[test]
fn accounts_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!(
        "chat-accounts-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    ));
    let with_data = |c: &mut Config| {
        tune(c, Duration::from_secs(60));
        c.data = Some(dir.clone());
    };
    let server = common::start(with_data);
    let (mut alice, _) = Client::join(server.addr, "alice");
    assert_eq!(register(&mut alice, PW)["type"], "registered");
    drop(alice);
    server.stop().unwrap();
    let server = common::start(with_data);
    let (_, v) = join(server.addr, "alice", None);
    assert_eq!(code(&v), "auth_required");
    let (_, v) = join(server.addr, "alice", Some(PW));
    assert_eq!(v["type"], "welcome", "{v}");
    server.stop().unwrap();
    // The hash is Argon2id with the stated parameters; no password text.
    let conn = rusqlite::Connection::open(dir.join("chat.db")).unwrap();
    let hash: String = conn
        .query_row(
            "SELECT hash FROM accounts WHERE nick_key = 'alice'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(hash.starts_with("$argon2id$v=19$m=256,t=1,p=1$"), "{hash}");
    assert!(!hash.contains(PW));
    drop(conn);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn passwords_are_redacted_in_debug_output() {
    let req =
        chat_server::protocol::parse(r#"{"type":"join","nick":"a","password":"s3cret-pass"}"#)
            .unwrap();
    assert!(!format!("{req:?}").contains("s3cret"));
    let req =
        chat_server::protocol::parse(r#"{"type":"register","password":"s3cret-pass"}"#).unwrap();
    assert!(!format!("{req:?}").contains("s3cret"));
}
