//! Nickname uniqueness and validity over real sockets on 127.0.0.1 (issue 10
//! item 9), and the clamping of `history`/`since` integers (item 11). One
//! server per test, in-process on port 0; every read is bounded.

mod common;

use common::WAIT;
use serde_json::{json, Value};
use std::net::SocketAddr;
use wsproto::blocking::{self, MaybeTlsStream, WebSocket};
use wsproto::Event;

fn start() -> chat_server::Running {
    common::start(|_| {})
}

struct Client(WebSocket<MaybeTlsStream>);

impl Client {
    fn connect(addr: SocketAddr) -> Self {
        let (mut ws, _) = blocking::connect(&format!("ws://{addr}/ws")).unwrap();
        ws.set_idle_timeout(Some(WAIT));
        Self(ws)
    }

    fn send(&mut self, v: Value) {
        self.0.send(v.to_string()).unwrap();
    }

    /// The next JSON message (pings are answered by the adapter).
    fn recv(&mut self) -> Value {
        for _ in 0..1000 {
            match self.0.read() {
                Ok(Event::Text(t)) => return serde_json::from_str(t.as_str()).unwrap(),
                Ok(Event::Ping(_) | Event::Pong(_)) => {}
                other => panic!("expected a message, got {other:?}"),
            }
        }
        panic!("no message");
    }

    /// The next message of type `kind`, skipping presence notices (bounded).
    fn recv_type(&mut self, kind: &str) -> Value {
        for _ in 0..1000 {
            let v = self.recv();
            if v["type"] == kind {
                return v;
            }
        }
        panic!("no {kind} message");
    }

    /// Sends `msg` and returns the code of the error it must get.
    fn error(&mut self, msg: Value) -> String {
        self.send(msg);
        let v = self.recv_type("error");
        v["code"].as_str().unwrap().to_owned()
    }

    fn join(addr: SocketAddr, nick: &str) -> Self {
        let mut c = Self::connect(addr);
        c.send(json!({"type": "join", "nick": nick}));
        let w = c.recv();
        assert_eq!(w["type"], "welcome", "{nick:?}: {w}");
        c
    }
}

#[test]
fn nick_uniqueness_uses_full_case_folding_and_nfkc() {
    let server = start();
    let mut alice = Client::join(server.addr, "Straße");
    let mut bob = Client::connect(server.addr);
    for taken in ["STRASSE", "strasse", "Stra\u{1E9E}e", "ＳＴＲＡＳＳＥ"] {
        assert_eq!(
            bob.error(json!({"type": "join", "nick": taken})),
            "nick_taken",
            "{taken:?}"
        );
    }
    for (first, second) in [("\u{B5}", "\u{3BC}"), ("ſam", "sam"), ("ΟΔΟΣ", "οδοσ")] {
        let _first = Client::join(server.addr, first);
        let mut other = Client::connect(server.addr);
        assert_eq!(
            other.error(json!({"type": "join", "nick": second})),
            "nick_taken",
            "{first:?} then {second:?}"
        );
    }
    // A rename collides the same way; renaming to a variant of one's own nick
    // is still allowed (DESIGN.md, `nick`).
    let mut carol = Client::join(server.addr, "carol");
    assert_eq!(
        carol.error(json!({"type": "nick", "nick": "STRASSE"})),
        "nick_taken"
    );
    alice.send(json!({"type": "nick", "nick": "STRASSE"}));
    let renamed = alice.recv_type("renamed");
    assert_eq!(renamed["to"], "STRASSE", "{renamed}");
    // A private message finds the nick by its key.
    carol.send(json!({"type": "private", "to": "straße", "text": "psst"}));
    let got = alice.recv_type("private");
    assert_eq!(got["text"], "psst");
    assert_eq!(got["to"], "STRASSE");
    bob.send(json!({"type": "join", "nick": "bob"}));
    assert_eq!(bob.recv()["type"], "welcome");
}

#[test]
fn blank_nicks_are_nick_invalid() {
    let server = start();
    let mut c = Client::connect(server.addr);
    for blank in [
        "\u{3164}",
        "\u{2800}",
        "\u{115F}\u{1160}",
        "\u{FFA0}",
        "a\u{3164}b",
        "\u{301}\u{301}",
        "\u{FE0F}",
    ] {
        assert_eq!(
            c.error(json!({"type": "join", "nick": blank})),
            "nick_invalid",
            "{blank:?}"
        );
    }
    c.send(json!({"type": "join", "nick": "ok"}));
    assert_eq!(c.recv()["type"], "welcome");
    assert_eq!(
        c.error(json!({"type": "nick", "nick": "\u{3164}"})),
        "nick_invalid"
    );
}

#[test]
fn history_and_since_integers_are_clamped() {
    let server = start();
    let mut a = Client::join(server.addr, "a");
    for i in 0..3 {
        a.send(json!({"type": "message", "text": format!("m{i}")}));
        a.recv_type("message");
    }
    let history = |c: &mut Client, req: &str| -> Vec<String> {
        c.0.send(req).unwrap();
        let v = c.recv_type("history");
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_owned())
            .collect()
    };
    for (req, want) in [
        (r#"{"type":"history","limit":-3}"#, vec!["m2"]),
        (r#"{"type":"history","limit":1e30}"#, vec!["m0", "m1", "m2"]),
        (
            r#"{"type":"history","limit":123456789012345678901234567890}"#,
            vec!["m0", "m1", "m2"],
        ),
        (r#"{"type":"history","before":-3}"#, vec![]),
        (
            r#"{"type":"history","before":1e30}"#,
            vec!["m0", "m1", "m2"],
        ),
    ] {
        assert_eq!(history(&mut a, req), want, "{req}");
    }
    a.0.send(r#"{"type":"history","limit":2.5}"#).unwrap();
    assert_eq!(a.recv_type("error")["code"], "bad_request");
    let since = |value: &str| -> usize {
        let mut c = Client::connect(server.addr);
        c.0.send(format!(r#"{{"type":"join","nick":"s","since":{value}}}"#))
            .unwrap();
        let w = c.recv_type("welcome");
        w["history"].as_array().unwrap().len()
    };
    assert_eq!(since("-3"), 3);
    assert_eq!(since("1e30"), 0);
}
