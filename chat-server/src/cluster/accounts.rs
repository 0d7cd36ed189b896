//! Registered nicks in Redis (DESIGN.md v2, "Cluster": accounts are
//! cluster-wide). The rules (password length, Argon2id, lockout, error
//! codes and their order) stay in `crate::accounts`, once; this is only
//! where the accounts are kept when the node is part of a cluster.
//!
//! Keys: [`ACCOUNTS`], a hash from the case-folded nick to
//! `nick TAB <Argon2id PHC string>` (never a password). Creation is one
//! `HSETNX` inside a script that also publishes the change, so two nodes
//! registering the same nick at once get exactly one winner; removal
//! deletes only the very hash the password was checked against.
//!
//! Every node keeps a replica of the registered names ([`SYNC_CHANNEL`]
//! events, reloaded after each (re)subscription, see `cluster::media`), so
//! the question asked on every `join` and rename, "is this nick
//! registered?", costs no Redis round trip on a reactor (while the replica
//! reloads, the answer is `unavailable`, never a wait). The slow work
//! (reading a hash, creating, removing) runs on the accounts' hashing
//! workers, never on a reactor.

use super::Cluster;
use crate::protocol::Refusal;
use std::collections::HashSet;
use std::sync::{Arc, RwLock};

/// The accounts hash: nick key -> `nick TAB hash`.
pub(crate) const ACCOUNTS: &str = "chat:acct";
/// The channel of account and media changes: the node's one subscription
/// (the subscriber of `cluster`) follows it beside the room traffic and
/// queues its events for the sync thread of `cluster::media`.
pub(crate) const SYNC_CHANNEL: &str = "chat:sync";

/// KEYS: accounts hash. ARGV: nick key, `nick TAB hash`, channel. 1 when
/// created, 0 when the nick is registered already.
const CREATE: &str = r"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('PUBLISH', ARGV[3], 'A+\t' .. ARGV[1])
return 1
";

/// KEYS: accounts hash. ARGV: nick key, the stored value the password was
/// checked against, channel. 1 when removed; 0 when it changed meanwhile.
const REMOVE: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[3], 'A-\t' .. ARGV[1])
return 1
";

/// KEYS: the nick's failures (sorted set), its lock. ARGV: window ms,
/// failures that lock, a unique member. Records a wrong password; the
/// limit-th within the window locks the nick for a window (DESIGN.md
/// "Registered nicks": 5 per minute, then `rate_limited` for a minute,
/// whoever sends them, on whichever node).
const FAILED: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
  redis.call('DEL', KEYS[1])
end
return 0
";

fn failures_key(key: &str) -> String {
    format!("chat:fail:{key}")
}

fn lock_key(key: &str) -> String {
    format!("chat:lock:{key}")
}

/// The accounts of a cluster node: Redis, and the replica of the names.
#[derive(Debug)]
pub(crate) struct RedisAccounts {
    pub(super) cluster: Arc<Cluster>,
    names: RwLock<HashSet<String>>,
}

impl RedisAccounts {
    pub(crate) fn new(cluster: &Arc<Cluster>) -> Self {
        Self {
            cluster: Arc::clone(cluster),
            names: RwLock::new(HashSet::new()),
        }
    }

    /// Whether the nick key `key` is registered, from the replica (no
    /// round trip: every caller runs on a reactor). While the replica is
    /// not in sync (before its first load, after an outage, after a
    /// dropped event, until the reload) `unavailable`: asking Redis
    /// instead would stall the reactor for as long as Redis is slow.
    pub(crate) fn is_registered(&self, key: &str) -> Result<bool, Refusal> {
        if !self.cluster.replicas_synced() {
            return Err(super::reloading());
        }
        Ok(self
            .names
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(key))
    }

    /// The stored value (`nick TAB hash`) of `key`, and whether the nick
    /// is locked out cluster-wide (on a worker; one round trip).
    pub(crate) fn stored(&self, key: &str) -> Result<(Option<String>, bool), Refusal> {
        self.cluster.with_cmd(|c| {
            redis::pipe()
                .cmd("HGET")
                .arg(ACCOUNTS)
                .arg(key)
                .cmd("EXISTS")
                .arg(lock_key(key))
                .query(c)
        })
    }

    /// Records a wrong password for `key` cluster-wide.
    pub(crate) fn failed(
        &self,
        key: &str,
        window: std::time::Duration,
        limit: usize,
    ) -> Result<(), Refusal> {
        self.cluster.with_cmd(|c| {
            redis::cmd("EVAL")
                .arg(FAILED)
                .arg(2)
                .arg(failures_key(key))
                .arg(lock_key(key))
                .arg(window.as_millis() as u64)
                .arg(limit)
                .arg(super::random_node_id())
                .query::<()>(c)
        })
    }

    /// Creates the account; `Ok(false)` when the nick is registered already
    /// (on any node).
    pub(crate) fn create(&self, key: &str, nick: &str, hash: &str) -> Result<bool, Refusal> {
        let value = format!("{nick}\t{hash}");
        let n: i64 = self.cluster.with_cmd(|c| {
            redis::cmd("EVAL")
                .arg(CREATE)
                .arg(1)
                .arg(ACCOUNTS)
                .arg(key)
                .arg(&value)
                .arg(SYNC_CHANNEL)
                .query(c)
        })?;
        if n == 1 {
            self.apply(true, key);
        }
        Ok(n == 1)
    }

    /// Removes the account if it still holds `stored`.
    pub(crate) fn remove(&self, key: &str, stored: &str) -> Result<bool, Refusal> {
        let n: i64 = self.cluster.with_cmd(|c| {
            redis::cmd("EVAL")
                .arg(REMOVE)
                .arg(1)
                .arg(ACCOUNTS)
                .arg(key)
                .arg(stored)
                .arg(SYNC_CHANNEL)
                .query(c)
        })?;
        if n == 1 {
            self.apply(false, key);
        }
        Ok(n == 1)
    }

    /// Whether `token` is the resume token of the member holding nick key
    /// `key` on any node (a takeover needs no password, DESIGN.md
    /// "Registered nicks"; the claim value ends with the token).
    pub(crate) fn token_holds(&self, key: &str, token: &str) -> Result<bool, Refusal> {
        let v: Option<String> = self
            .cluster
            .with_cmd(|c| redis::cmd("GET").arg(super::nick_key(key)).query(c))?;
        Ok(v.is_some_and(|v| v.split('\t').nth(3) == Some(token)))
    }

    /// An event from [`SYNC_CHANNEL`] (or this node's own change).
    pub(super) fn apply(&self, registered: bool, key: &str) {
        let mut names = self.names.write().unwrap_or_else(|e| e.into_inner());
        if registered {
            names.insert(key.to_owned());
        } else {
            names.remove(key);
        }
    }

    /// Replaces the replica with `keys`, read after subscribing (events
    /// read after it are applied on top, in order, so the replica ends as
    /// Redis is).
    pub(super) fn reload(&self, keys: Vec<String>) {
        *self.names.write().unwrap_or_else(|e| e.into_inner()) = keys.into_iter().collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// Two nodes registering one nick at the same moment: the creation is
    /// one script, so exactly one wins whatever the interleaving (the
    /// protocol cannot produce this race on its own while nick claims
    /// hold, so the script is tested directly, from 8 connections at once).
    #[test]
    fn concurrent_creations_of_one_account_have_exactly_one_winner() {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            eprintln!("SKIPPED: redis-server is not installed");
            return;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let connect = || loop {
            match client.get_connection_with_timeout(Duration::from_secs(1)) {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => panic!("redis-server: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        for round in 0..20 {
            let key = format!("nick{round}");
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
            let wins: i64 = (0..8)
                .map(|i| {
                    let (mut con, key, b) = (connect(), key.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        b.wait();
                        redis::cmd("EVAL")
                            .arg(CREATE)
                            .arg(1)
                            .arg(ACCOUNTS)
                            .arg(&key)
                            .arg(format!("{key}\thash-{i}"))
                            .arg(SYNC_CHANNEL)
                            .query::<i64>(&mut con)
                            .unwrap()
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|t| t.join().unwrap())
                .sum();
            assert_eq!(wins, 1, "round {round}");
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
