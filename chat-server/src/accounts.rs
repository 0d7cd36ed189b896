//! Registered nicks (DESIGN.md, "Registered nicks").
//!
//! A registered nick's password is kept as an Argon2id hash in PHC string
//! form (RFC 9106; parameters [`AuthParams::default`]: 19 MiB, 2 passes,
//! 1 lane, OWASP's first recommended setting), with a 16-byte salt from
//! the OS. Hashing takes tens of milliseconds and 19 MiB, so it never runs
//! on a reactor: a small pool of [`AuthParams::threads`] workers takes jobs
//! from a bounded queue ([`JOB_QUEUE`]; full: `rate_limited`) and answers
//! on the client itself.
//!
//! Lockout: after [`MAX_FAILURES`] wrong passwords for one nick within the
//! window (a minute), every attempt for it with a password gets
//! `rate_limited` for a window after the last failure, whoever sends it.
//! Attempts in flight count toward the limit, so a burst cannot buy more
//! guesses than the limit. Attempts without a password (`auth_required`)
//! do not count.
//!
//! Passwords live in [`Password`], whose `Debug` is redacted, and are
//! never logged nor echoed.
//!
//! Where the accounts are kept is a [`Storage`]: this node's map (saved in
//! the SQLite store, if any) or, on a cluster node (`--redis`), Redis
//! (`cluster::accounts`: atomic creation, a replica of the names for the
//! check every `join` makes). The rules above are this file's, once, for
//! both; reads and writes of Redis run on the workers too. While Redis is
//! unreachable an operation that needs it answers `unavailable`.

use crate::client::Client;
use crate::cluster::accounts::RedisAccounts;
use crate::hub::Joined;
use crate::protocol::{check_nick, nick_key, ErrorCode, Refusal};
use crate::room::MemberId;
use crate::store::Store;
use crate::Shared;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Wrong passwords for one nick within the window before the lockout.
pub const MAX_FAILURES: usize = 5;
/// Hashing jobs waiting for a worker; past it, `rate_limited`.
pub const JOB_QUEUE: usize = 64;
/// Shortest password accepted by `register`, in bytes (DESIGN.md).
pub const PASSWORD_MIN: usize = 8;
/// Longest password accepted by `register`, in bytes (DESIGN.md).
pub const PASSWORD_MAX: usize = 256;

/// A password from a client. Its `Debug` output is redacted so that no
/// log line or panic message can carry it.
///
/// ```
/// let p = chat_server::Password::new("hunter2hunter2".into());
/// assert_eq!(format!("{p:?}"), "Password(<redacted>)");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a password as received.
    pub fn new(password: String) -> Self {
        Self(password)
    }

    /// Wraps a password for `register`: 8-256 bytes, else the reason.
    ///
    /// # Errors
    ///
    /// The reason, without the password.
    pub fn checked(password: String) -> Result<Self, String> {
        if (PASSWORD_MIN..=PASSWORD_MAX).contains(&password.len()) {
            Ok(Self(password))
        } else {
            Err(format!(
                "a password is {PASSWORD_MIN}-{PASSWORD_MAX} bytes (UTF-8)"
            ))
        }
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Argon2id cost and the hashing pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthParams {
    /// Memory per hash, KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub passes: u32,
    /// Lanes.
    pub lanes: u32,
    /// Worker threads hashing.
    pub threads: usize,
    /// Lockout window: failures counted over it, and its length.
    pub window: Duration,
}

impl Default for AuthParams {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            passes: 2,
            lanes: 1,
            threads: 2,
            window: Duration::from_secs(60),
        }
    }
}

/// A registered nick's Argon2id hash (PHC string); the nick as
/// registered is in the database row.
#[derive(Debug, Clone)]
struct Account {
    hash: String,
}

/// Where the accounts are kept.
#[derive(Debug)]
pub(crate) enum Storage {
    /// This node's map, saved in the SQLite store when there is one.
    Local(Option<Arc<Store>>),
    /// Redis, shared by every node of the cluster.
    Redis(Arc<RedisAccounts>),
}

/// The backend behind [`Storage`]: the rules never look past it.
enum Backend {
    Local {
        accounts: Mutex<HashMap<String, Account>>,
        store: Option<Arc<Store>>,
    },
    Redis(Arc<RedisAccounts>),
}

/// What a password check found.
enum Checked {
    /// It matches the stored value (`None`: not registered, or no more).
    Match(Option<String>),
    Wrong,
}

impl Backend {
    fn is_registered(&self, key: &str) -> Result<bool, Refusal> {
        match self {
            Self::Local { accounts, .. } => {
                let all = lock(accounts);
                // Skips the lookup on a server without accounts (a join
                // storm pays nothing for the feature).
                Ok(!all.is_empty() && all.contains_key(key))
            }
            Self::Redis(r) => r.is_registered(key),
        }
    }

    /// The stored value of `key` and its hash (on a worker).
    fn stored(&self, key: &str) -> Result<Option<(String, String)>, Refusal> {
        match self {
            Self::Local { accounts, .. } => Ok(lock(accounts)
                .get(key)
                .map(|a| (a.hash.clone(), a.hash.clone()))),
            Self::Redis(r) => {
                // The lockout is cluster-wide: failures on any node count.
                let (stored, locked_out) = r.stored(key)?;
                if locked_out {
                    return Err(locked());
                }
                Ok(stored.map(|v| {
                    let hash = v.split_once('\t').map_or("", |(_, h)| h).to_owned();
                    (v, hash)
                }))
            }
        }
    }

    /// Creates the account: `nick_registered` when it exists already.
    fn insert(&self, key: String, nick: &str, hash: String) -> Result<(), Refusal> {
        match self {
            Self::Local { accounts, store } => {
                let mut all = lock(accounts);
                if all.contains_key(&key) {
                    return Err(registered(nick));
                }
                if let Some(store) = store {
                    store.save_account(key.clone(), nick.to_owned(), hash.clone());
                }
                all.insert(key, Account { hash });
                Ok(())
            }
            Self::Redis(r) => match r.create(&key, nick, &hash)? {
                true => Ok(()),
                false => Err(registered(nick)),
            },
        }
    }

    /// Removes the account if it still holds `stored`; false when it
    /// changed meanwhile.
    fn remove(&self, key: String, stored: &str) -> Result<bool, Refusal> {
        match self {
            Self::Local { accounts, store } => {
                let mut all = lock(accounts);
                if all.get(&key).map(|a| a.hash.as_str()) != Some(stored) {
                    return Ok(false);
                }
                all.remove(&key);
                if let Some(store) = store {
                    store.remove_account(key);
                }
                Ok(true)
            }
            Self::Redis(r) => r.remove(&key, stored),
        }
    }
}

#[derive(Debug, Default)]
struct Attempts {
    failures: VecDeque<Instant>,
    in_flight: usize,
    locked_until: Option<Instant>,
}

type Job = Box<dyn FnOnce(&Accounts) + Send>;

/// The registered nicks, their lockouts and the hashing pool.
pub struct Accounts {
    backend: Backend,
    attempts: Mutex<HashMap<String, Attempts>>,
    jobs: SyncSender<Job>,
    argon: Argon2<'static>,
    window: Duration,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Accounts {
    /// Loads the accounts from the SQLite store (if any; Redis is read
    /// when needed) and starts the pool.
    ///
    /// # Errors
    ///
    /// Bad Argon2 parameters, a database error, or no thread.
    pub(crate) fn start(params: AuthParams, storage: Storage) -> io::Result<Arc<Self>> {
        let p = Params::new(params.memory_kib, params.passes, params.lanes, None)
            .map_err(|e| io::Error::other(format!("argon2 parameters: {e}")))?;
        let backend = match storage {
            Storage::Local(store) => {
                let mut accounts = HashMap::new();
                if let Some(store) = &store {
                    for (key, _nick, hash) in store.accounts()? {
                        accounts.insert(key, Account { hash });
                    }
                }
                Backend::Local {
                    accounts: Mutex::new(accounts),
                    store,
                }
            }
            Storage::Redis(r) => Backend::Redis(r),
        };
        let (jobs, rx) = mpsc::sync_channel::<Job>(JOB_QUEUE);
        let me = Arc::new(Self {
            backend,
            attempts: Mutex::new(HashMap::new()),
            jobs,
            argon: Argon2::new(Algorithm::Argon2id, Version::V0x13, p),
            window: params.window,
        });
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..params.threads.max(1) {
            let (rx, weak) = (Arc::clone(&rx), Arc::downgrade(&me));
            std::thread::Builder::new()
                .name(format!("chat-auth-{i}"))
                .spawn(move || {
                    crate::sys::lower_thread_priority(crate::store::BACKGROUND_NICE);
                    work(&rx, &weak);
                })?;
        }
        Ok(me)
    }

    /// Whether `nick` (any case variant) is registered (`unavailable`
    /// when that cannot be known: a cluster node cut from Redis before its
    /// replica of the names was loaded).
    pub(crate) fn is_registered(&self, nick: &str) -> Result<bool, Refusal> {
        if let Backend::Local { accounts, .. } = &self.backend {
            // Skips the case folding on a server without accounts.
            if lock(accounts).is_empty() {
                return Ok(false);
            }
        }
        self.backend.is_registered(&nick_key(nick))
    }

    /// On a cluster node, a resume token held by the member called `nick`
    /// on another node (the contract's takeover without password, across
    /// nodes); on a worker. Always false on a single node (the hub knows
    /// its own tokens).
    fn remote_resume(&self, nick: &str, token: &str) -> Result<bool, Refusal> {
        match &self.backend {
            Backend::Local { .. } => Ok(false),
            Backend::Redis(r) => r.token_holds(&nick_key(nick), token),
        }
    }

    /// Starts a password attempt for `nick` and queues `job` to check it:
    /// `rate_limited` while the nick is locked out (or would be, counting
    /// the attempts in flight) or when the pool is full.
    pub(crate) fn attempt(
        self: &Arc<Self>,
        nick: &str,
        job: impl FnOnce(&Accounts) + Send + 'static,
    ) -> Result<(), Refusal> {
        let key = nick_key(nick);
        self.begin(&key)?;
        self.submit(Box::new(job)).inspect_err(|_| {
            if let Some(a) = lock(&self.attempts).get_mut(&key) {
                a.in_flight -= 1;
            }
        })
    }

    /// Counts an attempt in flight for nick key `key`, unless the nick is
    /// locked out (or would be, counting the attempts in flight).
    fn begin(&self, key: &str) -> Result<(), Refusal> {
        let mut all = lock(&self.attempts);
        let a = all.entry(key.to_owned()).or_default();
        self.expire(a, Instant::now());
        if a.locked_until.is_some() || a.failures.len() + a.in_flight >= MAX_FAILURES {
            return Err(locked());
        }
        a.in_flight += 1;
        Ok(())
    }

    fn submit(&self, job: Job) -> Result<(), Refusal> {
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Refusal::new(
                ErrorCode::RateLimited,
                "too many password checks in progress; try again",
            )),
        }
    }

    fn expire(&self, a: &mut Attempts, now: Instant) {
        if a.locked_until.is_some_and(|t| now >= t) {
            a.locked_until = None;
            a.failures.clear();
        }
        while a
            .failures
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= self.window)
        {
            a.failures.pop_front();
        }
    }

    /// Checks `password` for `nick` (on a worker: slow) and ends the
    /// attempt begun by [`attempt`](Self::attempt): true when it matches.
    /// `unavailable` (not counted as a failure) when the stored hash cannot
    /// be read.
    pub(crate) fn verify(&self, nick: &str, password: &Password) -> Result<bool, Refusal> {
        Ok(matches!(self.check(nick, password)?, Checked::Match(_)))
    }

    fn check(&self, nick: &str, password: &Password) -> Result<Checked, Refusal> {
        let key = nick_key(nick);
        let stored = self.backend.stored(&key);
        let now = Instant::now();
        let stored = match stored {
            Ok(s) => s,
            Err(r) => {
                let mut all = lock(&self.attempts);
                if let Some(a) = all.get_mut(&key) {
                    a.in_flight = a.in_flight.saturating_sub(1);
                }
                return Err(r);
            }
        };
        // A nick unregistered meanwhile needs no password.
        let ok = stored.as_ref().map_or(true, |(_, h)| {
            PasswordHash::new(h).is_ok_and(|parsed| {
                self.argon
                    .verify_password(password.bytes(), &parsed)
                    .is_ok()
            })
        });
        if let (false, Backend::Redis(r)) = (ok, &self.backend) {
            // Best effort: a failure Redis did not record still counts here.
            let _ = r.failed(&key, self.window, MAX_FAILURES);
        }
        let mut all = lock(&self.attempts);
        let a = all.entry(key.clone()).or_default();
        a.in_flight = a.in_flight.saturating_sub(1);
        if ok {
            if a.failures.is_empty() && a.in_flight == 0 && a.locked_until.is_none() {
                all.remove(&key);
            }
        } else {
            self.expire(a, now);
            a.failures.push_back(now);
            if a.failures.len() >= MAX_FAILURES {
                a.locked_until = Some(now + self.window);
            }
        }
        Ok(if ok {
            Checked::Match(stored.map(|(v, _)| v))
        } else {
            Checked::Wrong
        })
    }

    /// Registers `nick` with `password` (hashing on a worker) and answers
    /// on `client`.
    pub(crate) fn register(
        self: &Arc<Self>,
        client: &Arc<Client>,
        nick: String,
        password: Password,
    ) -> Result<(), Refusal> {
        if self.is_registered(&nick)? {
            return Err(registered(&nick));
        }
        let client = Arc::clone(client);
        self.submit(Box::new(move |acc: &Accounts| {
            let reply = match acc.hash(&password) {
                Some(hash) => acc.backend.insert(nick_key(&nick), &nick, hash),
                None => Err(Refusal::new(
                    ErrorCode::BadRequest,
                    "cannot hash this password",
                )),
            };
            match reply {
                Ok(()) => send(
                    &client,
                    &serde_json::json!({"type": "registered", "nick": nick}).to_string(),
                ),
                Err(r) => send(&client, &r.to_json()),
            }
        }))
    }

    /// Unregisters `nick` if `password` matches, answering on `client`.
    pub(crate) fn unregister(
        self: &Arc<Self>,
        client: &Arc<Client>,
        nick: String,
        password: Password,
    ) -> Result<(), Refusal> {
        if !self.is_registered(&nick)? {
            return Err(not_registered(&nick));
        }
        let client = Arc::clone(client);
        let who = nick.clone();
        self.attempt(&who, move |acc: &Accounts| {
            let removed = match acc.check(&nick, &password) {
                Err(r) => Err(r),
                Ok(Checked::Wrong) => Err(failed()),
                Ok(Checked::Match(None)) => Err(not_registered(&nick)),
                // Changed meanwhile (unregistered, registered again): the
                // password was checked against another account.
                Ok(Checked::Match(Some(stored))) => acc
                    .backend
                    .remove(nick_key(&nick), &stored)
                    .and_then(|done| done.then_some(()).ok_or_else(|| not_registered(&nick))),
            };
            if let Err(r) = removed {
                return send(&client, &r.to_json());
            }
            send(
                &client,
                &serde_json::json!({"type": "unregistered", "nick": nick}).to_string(),
            );
        })
    }

    fn hash(&self, password: &Password) -> Option<String> {
        let mut raw = [0u8; 16];
        getrandom::getrandom(&mut raw).ok()?;
        let salt = SaltString::encode_b64(&raw).ok()?;
        self.argon
            .hash_password(password.bytes(), &salt)
            .ok()
            .map(|h| h.to_string())
    }
}

/// The worker loop: ends when the accounts are gone.
fn work(rx: &Mutex<Receiver<Job>>, accounts: &std::sync::Weak<Accounts>) {
    loop {
        let job = match lock(rx).recv_timeout(Duration::from_millis(500)) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if accounts.strong_count() == 0 {
                    return;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let Some(acc) = accounts.upgrade() else {
            return;
        };
        job(&acc);
    }
}

fn send(client: &Arc<Client>, json: &str) {
    client.send(client.frame(json));
}

fn not_registered(nick: &str) -> Refusal {
    Refusal::new(
        ErrorCode::BadRequest,
        format!("the nickname {nick:?} is not registered"),
    )
}

fn registered(nick: &str) -> Refusal {
    Refusal::new(
        ErrorCode::NickRegistered,
        format!("the nickname {nick:?} is already registered"),
    )
}

/// How a join or a rename passed the accounts gate ([`join_gate`],
/// [`rename_gate`]). A single node decides at the gate; a cluster node
/// decides on an [`Gate::Open`] claim again in Redis, atomically with the
/// claim, because its replica of the registered names may lag a
/// registration made through another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// The nick looked unregistered to this node.
    Open,
    /// A password was checked, a session token resumed, or the nick is a
    /// case variant of the member's own.
    Passed,
}

/// `auth_required`: a registered nick and no password.
pub(crate) fn required(nick: &str) -> Refusal {
    Refusal::new(
        ErrorCode::AuthRequired,
        format!("the nickname {nick:?} is registered: send its password"),
    )
}

/// `auth_failed`: a wrong password.
pub(crate) fn failed() -> Refusal {
    Refusal::new(ErrorCode::AuthFailed, "wrong password")
}

fn locked() -> Refusal {
    Refusal::new(
        ErrorCode::RateLimited,
        "too many wrong passwords for this nickname; try again in a minute",
    )
}

/// A join for a registered nick, waiting for its password check on a
/// worker. The worker completes the join itself (the welcome goes out from
/// there); the session picks the member up at its next event. A session
/// that ends first abandons it, under the same lock, so a late check never
/// joins a gone connection, and a join done just before is left by the
/// session.
#[derive(Debug)]
pub(crate) struct PendingJoin(Mutex<Pending>);

#[derive(Debug)]
enum Pending {
    Waiting,
    Joined(Joined),
    Refused,
    Abandoned,
}

impl PendingJoin {
    /// `None` while waiting; then the member joined, if it was (handed
    /// over once: the session drops the pending join then).
    pub(crate) fn poll(&self) -> Option<Option<Joined>> {
        let mut st = lock(&self.0);
        match std::mem::replace(&mut *st, Pending::Refused) {
            Pending::Waiting => {
                *st = Pending::Waiting;
                None
            }
            Pending::Joined(j) => Some(Some(j)),
            Pending::Refused | Pending::Abandoned => Some(None),
        }
    }

    /// The session ends: no join after this; the member, if joined.
    pub(crate) fn abandon(&self) -> Option<Joined> {
        match std::mem::replace(&mut *lock(&self.0), Pending::Abandoned) {
            Pending::Joined(j) => Some(j),
            _ => None,
        }
    }
}

/// The accounts check of a `join` (after `nick_invalid`, before
/// `nick_taken`): `Ok(None)` when the join goes on at once (nick not
/// registered, or a resume token that owns it), `auth_required` without a
/// password, else the pending join whose password is being checked.
pub(crate) fn join_gate(
    shared: &Arc<Shared>,
    client: &Arc<Client>,
    nick: &str,
    since: Option<u64>,
    token: Option<&str>,
    password: Option<&Password>,
) -> Result<Option<Arc<PendingJoin>>, Refusal> {
    check_nick(nick)?;
    if !shared.accounts.is_registered(nick)? || shared.room.resumes(nick, token) {
        return Ok(None);
    }
    // On a cluster the token may be held on another node: a worker asks
    // Redis (then the password, if any, as usual).
    let remote = matches!(shared.accounts.backend, Backend::Redis(_)) && token.is_some();
    if password.is_none() && !remote {
        return Err(required(nick));
    }
    let pending = Arc::new(PendingJoin(Mutex::new(Pending::Waiting)));
    let (p, s, c) = (Arc::clone(&pending), Arc::clone(shared), Arc::clone(client));
    let (nick, token) = (nick.to_owned(), token.map(str::to_owned));
    let password = password.cloned();
    let who = nick.clone();
    let job = move |acc: &Accounts, counted: bool| {
        let resumed = match (&token, remote) {
            (Some(t), true) => acc.remote_resume(&nick, t),
            _ => Ok(false),
        };
        let ok = match (resumed, &password) {
            (Err(r), _) => Err(r),
            (Ok(true), _) => Ok(true),
            (Ok(false), None) => Err(required(&nick)),
            (Ok(false), Some(pw)) => {
                // A remote check counts its attempt only now it needs one.
                let key = nick_key(&nick);
                match counted || acc.begin(&key).is_ok() {
                    true => acc.verify(&nick, pw),
                    false => Err(locked()),
                }
            }
        };
        let mut st = lock(&p.0);
        if matches!(*st, Pending::Abandoned) {
            return;
        }
        let refusal = match ok {
            Ok(true) => None,
            Ok(false) => Some(failed()),
            Err(r) => Some(r),
        };
        if let Some(r) = refusal {
            *st = Pending::Refused;
            return send(&c, &r.to_json());
        }
        match s
            .room
            .join(&c, &nick, since, token.as_deref(), Gate::Passed)
        {
            Ok(j) => *st = Pending::Joined(j),
            Err(r) => {
                *st = Pending::Refused;
                send(&c, &r.to_json());
            }
        }
    };
    if remote {
        shared
            .accounts
            .submit(Box::new(move |acc: &Accounts| job(acc, false)))?;
    } else {
        shared
            .accounts
            .attempt(&who, move |acc: &Accounts| job(acc, true))?;
    }
    Ok(Some(pending))
}

/// The accounts check of a rename: `Ok(false)` when the rename goes on at
/// once, `Ok(true)` when a worker checks the password and renames.
pub(crate) fn rename_gate(
    shared: &Arc<Shared>,
    client: &Arc<Client>,
    id: MemberId,
    nick: &str,
    password: Option<&Password>,
) -> Result<bool, Refusal> {
    check_nick(nick)?;
    if !shared.accounts.is_registered(nick)? {
        return Ok(false);
    }
    // A case variant of one's own nick needs no password.
    if nick_key(&shared.room.nick_of(id, client)?) == nick_key(nick) {
        return Ok(false);
    }
    let Some(password) = password.cloned() else {
        return Err(required(nick));
    };
    let (s, c, nick) = (Arc::clone(shared), Arc::clone(client), nick.to_owned());
    let who = nick.clone();
    shared.accounts.attempt(&who, move |acc: &Accounts| {
        match acc.verify(&nick, &password) {
            Ok(true) => {}
            Ok(false) => return send(&c, &failed().to_json()),
            Err(r) => return send(&c, &r.to_json()),
        }
        if let Err(r) = s.room.rename(id, &c, &nick, Gate::Passed) {
            send(&c, &r.to_json());
        }
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Time of one hash with the default parameters (run by hand:
    /// `cargo test --release -p chat-server --lib hash_cost -- --ignored --nocapture`).
    #[test]
    #[ignore = "a measurement, run by hand in release"]
    fn hash_cost() {
        let acc = Accounts::start(AuthParams::default(), Storage::Local(None)).unwrap();
        let pw = Password::new("correct horse battery".into());
        let mut times = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let h = acc.hash(&pw).unwrap();
            times.push(t.elapsed());
            assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        }
        times.sort();
        eprintln!("argon2id m=19456 t=2 p=1: median {:?} of 5", times[2]);
    }
}
