//! A `redis-server` per test and in-process cluster nodes on it, shared by
//! the cluster suites (`tests/cluster.rs`, `tests/cluster_accounts.rs`).

use super::{start, WAIT};
use chat_server::{ClusterConfig, Running};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child on 127.0.0.1, killed on drop.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    /// `None` (and a message) when the binary is absent.
    pub fn start() -> Option<Self> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Self { port, child: None };
        r.restart();
        Some(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, on the same port) and waits for PONG.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let mut buf = [0u8; 7];
                if s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() {
                    assert_eq!(&buf, b"+PONG\r\n");
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    /// One command (on a connection of its own), for what the nodes left
    /// in Redis or to put something there behind their backs.
    pub fn query<T: ::redis::FromRedisValue>(&self, cmd: &mut ::redis::Cmd) -> T {
        let client = ::redis::Client::open(self.url()).unwrap();
        let mut con = client.get_connection_with_timeout(WAIT).unwrap();
        con.set_read_timeout(Some(WAIT)).unwrap();
        cmd.query(&mut con).unwrap()
    }

    /// Sends `sig` (e.g. "STOP", "CONT") to the server.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An in-process node of the cluster on `redis`.
pub fn node(redis: &Redis, id: &str, timeout_secs: u64) -> Running {
    node_with(redis, id, timeout_secs, |_| {})
}

/// A node with some settings of its own.
pub fn node_with(
    redis: &Redis,
    id: &str,
    timeout_secs: u64,
    tune: impl FnOnce(&mut chat_server::Config),
) -> Running {
    start(|c| {
        let mut cc = ClusterConfig::new(&redis.url());
        cc.node_id = id.into();
        cc.node_timeout = Duration::from_secs(timeout_secs);
        c.cluster = Some(cc);
        // The tests send faster than a person.
        c.rate_burst = 10_000;
        c.rate_per_sec = 10_000;
        tune(c);
    })
}
