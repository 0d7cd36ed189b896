//! Helpers shared by the in-process chat-server integration tests: a server
//! on 127.0.0.1 port 0 and a JSON client over `wsproto`'s blocking socket.
//! Every read is bounded. (`hostile_kit.rs`, beside this file, is the
//! hostile suite's own kit, included by `hostile.rs` alone.)
//!
//! Each test binary uses a part of this module, hence `dead_code` allowed.
#![allow(dead_code)]

pub mod redis;

use chat_server::{Config, Running, Server};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use wsproto::blocking::{self, MaybeTlsStream, WebSocket};
use wsproto::Event;

pub const WAIT: Duration = Duration::from_secs(5);

/// A server on 127.0.0.1 port 0, logs off, `tune`d, running in-process.
pub fn start(tune: impl FnOnce(&mut Config)) -> Running {
    let mut c = Config::default();
    c.addr = SocketAddr::from(([127, 0, 0, 1], 0));
    c.log = false;
    tune(&mut c);
    Server::bind(c).unwrap().spawn().unwrap()
}

/// An upgrade request for `target` on `host`, `extra` header lines
/// (each ending in CRLF) before the blank line.
pub fn upgrade(target: &str, host: &str, extra: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

pub struct Client {
    pub ws: WebSocket<MaybeTlsStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Self {
        let (mut ws, _) = blocking::connect(&format!("ws://{addr}/ws")).unwrap();
        ws.set_idle_timeout(Some(WAIT));
        Self { ws }
    }

    pub fn join(addr: SocketAddr, nick: &str) -> (Self, Value) {
        let mut c = Self::connect(addr);
        c.send(json!({"type": "join", "nick": nick}));
        let w = c.recv();
        assert_eq!(w["type"], "welcome", "{w}");
        (c, w)
    }

    pub fn send(&mut self, v: Value) {
        self.ws.send(v.to_string()).unwrap();
    }

    /// The next JSON message and its payload size (pings are answered by
    /// the adapter).
    pub fn recv_sized(&mut self) -> (Value, usize) {
        loop {
            match self.ws.read() {
                Ok(Event::Text(t)) => {
                    return (serde_json::from_str(t.as_str()).unwrap(), t.as_str().len())
                }
                Ok(Event::Ping(_) | Event::Pong(_)) => {}
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// The next JSON message.
    pub fn recv(&mut self) -> Value {
        self.recv_sized().0
    }

    /// The next message of type `kind`, skipping others (bounded).
    pub fn recv_type(&mut self, kind: &str) -> Value {
        for _ in 0..10_000 {
            let v = self.recv();
            if v["type"] == kind {
                return v;
            }
        }
        panic!("no {kind} message");
    }

    /// Reads until the server's Close; returns its code.
    pub fn expect_close(&mut self) -> u16 {
        for _ in 0..100_000 {
            match self.ws.read() {
                Ok(Event::Close(f)) => return f.code.as_u16(),
                Ok(_) => {}
                Err(e) => panic!("expected a close, got {e}"),
            }
        }
        panic!("no close");
    }
}
