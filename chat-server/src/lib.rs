//! A WebSocket chat server with rooms, built on `wsproto`.
//!
//! One TCP port serves the page (`GET /`), the chat WebSocket (`GET /ws`)
//! and `GET /healthz`; the JSON protocol, limits and fan-out policy are the
//! chat-server section of DESIGN.md.
//!
//! Threads (std only, small stacks):
//! - an acceptor that polls the listener;
//! - one short-lived thread per connection for the HTTP head (bounded in
//!   bytes and time), which answers the page, `/healthz`, images
//!   (`POST /upload`, `GET /media/...`: `media` streams a body to disk,
//!   at most `max_concurrent_uploads` at once, each within
//!   `upload_timeout`) and errors, or upgrades `/ws` and hands the socket
//!   over;
//! - `reactor_threads` reactors (default: one per core, at most 4) that
//!   read every upgraded socket through epoll and feed a sans-IO
//!   [`wsproto::Connection`] each, so an idle connection costs no thread
//!   stack (about 3.4 KiB of RSS per idle client at 10,000 clients);
//! - one flusher that drains the queues of clients whose socket was full.
//!
//! Sends never block: a broadcast is framed once and queued for each
//! member; a reactor corks its sends while it handles one wake-up's events
//! and then writes each client once, everything owed in one `sendmsg`
//! (self-clocked batching, no timer), so a busy server makes fewer, fuller
//! writes. Only what the socket does not take stays queued (byte-bounded)
//! for the flusher. Above `presence_limit` members the room sends a
//! `presence` count once a second instead of a notice per join or leave.
//!
//! Modules: `session` reads one connection (its `wsproto::Connection`,
//! timers, rate limits) and dispatches requests to the `hub` (nicks,
//! tokens, the room map, private messages) or straight to a `room` it is
//! in (members, topic, fan-out; its `history` ring); everything sent to a connection, and the end
//! of its life, goes through its `client::Client`, which holds the one
//! byte bound and the "nothing after our Close" rule; `reactor` and
//! `flusher` are the threads that wait on sockets; `sys` holds every libc
//! call.
//!
//! ```no_run
//! let server = chat_server::Server::bind(chat_server::Config::default())?;
//! eprintln!("listening on {}", server.local_addr());
//! server.run()?; // until shutdown
//! # Ok::<(), std::io::Error>(())
//! ```

mod accounts;
mod client;
mod cluster; // cluster hook
mod flusher;
mod history;
mod http;
mod hub;
mod media;
pub mod protocol;
mod reactor;
mod room;
mod session;
mod store;
mod sys;
mod tls;

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use client::Client;
use flusher::Flusher;
use hub::Hub;
use wsproto::CloseCode;

pub use accounts::{AuthParams, Password};
pub use cluster::media::MediaLimits; // accounts + media hook
pub use cluster::{random_node_id, ClusterConfig}; // cluster hook
pub use room::REPLY_MAX_BYTES;
pub use tls::{TlsError, TlsFiles};

/// Accept-queue length asked of the kernel (capped by
/// `net.core.somaxconn`, 4096 by default since Linux 5.4).
const LISTEN_BACKLOG: u32 = 4096;

/// Everything the server can be told; the defaults are DESIGN.md's table.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Room messages kept for the welcome and `history`.
    pub history: usize,
    /// WebSocket connections, open or handshaking; beyond it, HTTP 503.
    pub max_connections: usize,
    /// Largest message frame; over it, close 1009.
    pub max_message_bytes: usize,
    /// Largest `text`, in characters; over it, `too_long`.
    pub max_text: usize,
    /// Largest HTTP head; over it, 431.
    pub max_header_bytes: usize,
    /// A client's outgoing queue bound in bytes, counting every frame
    /// (data, Pong, Ping, Close); past it, close 1008 and TCP dropped
    /// within 2 s. A reply to the client's own request (welcome, history)
    /// is capped at the smaller of [`REPLY_MAX_BYTES`] and half of this.
    pub max_queue_bytes: usize,
    /// The HTTP request must be complete within this (slowloris).
    pub handshake_timeout: Duration,
    /// A `join` must arrive within this after the upgrade; else close 1008.
    pub join_timeout: Duration,
    /// A Ping goes out this often.
    pub ping_interval: Duration,
    /// A Pong must come back within this; else close 1011.
    pub pong_timeout: Duration,
    /// Rate limit: bucket size (frames).
    pub rate_burst: u32,
    /// Rate limit: refill, frames per second.
    pub rate_per_sec: u32,
    /// Rate limit: this many refusals within a minute close with 1008.
    pub rate_refusals_to_close: u32,
    /// Control frames (Ping, Pong) from a client: bucket size. Past the
    /// bucket and its refill the client is closed 1008.
    pub control_burst: u32,
    /// Control frames from a client: refill, frames per second.
    pub control_per_sec: u32,
    /// Stack size of each handshake thread (one per connection until the
    /// upgrade; upgraded connections are read by the reactor threads).
    pub thread_stack: usize,
    /// Threads reading upgraded connections (epoll).
    pub reactor_threads: usize,
    /// Members up to which the room sends `joined`/`left`/`renamed` to
    /// everyone; above it a `presence` count at most once a second and a
    /// paged online list (DESIGN.md, "Presence that scales").
    pub presence_limit: usize,
    /// Rooms one session may be in at once, `lobby` included
    /// (`--max-rooms-per-user`); past it, `too_many_rooms`.
    pub max_rooms_per_user: usize,
    /// Rooms the server holds, `lobby` included (`--max-rooms`); a new
    /// room past it is `too_many_rooms`. Rooms with messages or a topic are
    /// kept when empty, so this bounds their memory too.
    pub max_rooms: usize,
    /// Log one line per connect / disconnect / error to stderr.
    pub log: bool,
    /// Which pages may open the WebSocket (`--allowed-origin`): by default
    /// only the server's own (same host:port), so another site the user
    /// visits cannot drive the room with the user's browser; 403 otherwise.
    pub origin_policy: wsproto::handshake::OriginPolicy,
    /// Negotiate permessage-deflate (RFC 7692) with clients that offer it
    /// (`--no-deflate` turns it off). The server always answers
    /// `server_no_context_takeover`, so one compressed frame serves every
    /// recipient of a broadcast, and asks `client_no_context_takeover`, so
    /// an idle connection keeps no inflate window.
    pub deflate: bool,
    /// Serve `https://` and `wss://` with this certificate chain and key
    /// (`--tls-cert`, `--tls-key`), reloaded on
    /// [`ShutdownHandle::reload_tls`] (SIGHUP for the binary).
    pub tls: Option<TlsFiles>,
    /// Also listen on this port of the same address and answer every
    /// request with a 308 to the same host and target over `https://`
    /// (`--redirect-http`; needs `tls`).
    pub redirect_http: Option<u16>,
    /// Where room messages, private messages, rooms, accounts and media
    /// are kept (`--data DIR`; DESIGN.md, "Storage"); `None` keeps
    /// everything in memory (`--ephemeral`, v1 behaviour). The library
    /// default is `None`; the command line's is `./chat-data`. With
    /// `cluster`, Redis is the store of record (accounts and media
    /// included): nothing is kept in this directory.
    pub data: Option<std::path::PathBuf>,
    /// Room messages kept per room in the store (`--retain-messages`);
    /// older ones are deleted. Private messages are kept as many.
    pub retain_messages: usize,
    /// Argon2id cost, hashing threads and lockout window of registered
    /// nicks (DESIGN.md, "Registered nicks").
    pub auth: AuthParams,
    /// Where uploaded images live (DESIGN.md v2, "Media"), when not in
    /// `data`'s `media/` (the command line always uses that one). `None`:
    /// `data`'s `media/`, or without `data` a fresh directory under the
    /// system's temporary directory, removed when the server stops
    /// (ephemeral, like the history).
    pub media_dir: Option<PathBuf>,
    /// Largest upload body (`--max-upload-bytes`); over it, 413 from the
    /// `Content-Length` alone, before the body is read.
    pub max_upload_bytes: u64,
    /// Accepted uploads per session per minute (`--upload-rate`); past it,
    /// 429.
    pub upload_rate: u32,
    /// Uploads received at once (`--max-concurrent-uploads`); past it, 503
    /// with `Retry-After` before the body is read. Each upload holds a
    /// 64 KiB read buffer (plus 8 KiB to decode the header), never the
    /// body, so this bounds the memory uploads take (about 2.3 MiB at 32).
    pub max_concurrent_uploads: usize,
    /// The whole upload body must arrive within this (`--upload-timeout`);
    /// else 408 (slowloris).
    pub upload_timeout: Duration,
    /// cluster hook: `--redis` (with `--node-id`, `--node-timeout`) makes
    /// this server one node of a cluster sharing one Redis (DESIGN.md v2,
    /// "Cluster"); `None` is the single-node server.
    pub cluster: Option<ClusterConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            history: 100,
            max_connections: 10_000,
            max_message_bytes: 64 << 10,
            max_text: 4096,
            max_header_bytes: 8 << 10,
            max_queue_bytes: 1 << 20,
            handshake_timeout: Duration::from_secs(5),
            join_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(30),
            rate_burst: 40,
            rate_per_sec: 20,
            rate_refusals_to_close: 20,
            control_burst: 40,
            control_per_sec: 20,
            thread_stack: 128 << 10,
            reactor_threads: std::thread::available_parallelism().map_or(2, |n| n.get().min(4)),
            presence_limit: 500,
            max_rooms_per_user: 20,
            max_rooms: 1000,
            log: true,
            origin_policy: wsproto::handshake::OriginPolicy::same_host(),
            deflate: true,
            tls: None,
            redirect_http: None,
            data: None,
            retain_messages: 100_000,
            auth: AuthParams::default(),
            media_dir: None,
            max_upload_bytes: 5 << 20,
            upload_rate: 10,
            max_concurrent_uploads: 32,
            upload_timeout: Duration::from_secs(60),
            cluster: None,
        }
    }
}

/// State shared by every thread of one server.
#[derive(Debug)]
struct Shared {
    config: Config,
    /// Every room and member (named `room` since v1's single room; the
    /// reactors tick its presence counts).
    room: Hub,
    /// Uploaded images: the store, its index, the upload limits.
    media: media::Media,
    flusher: Arc<Flusher>,
    /// Connections counted against `max_connections`.
    live: AtomicUsize,
    /// Threads answering 503s (bounded so a flood cannot spawn without end).
    refusing: AtomicUsize,
    stop: AtomicBool,
    next_conn: AtomicU64,
    /// Every upgraded connection, for the shutdown close.
    clients: Mutex<HashMap<u64, Arc<Client>>>,
    /// The threads that read upgraded connections.
    reactors: Vec<Arc<reactor::Reactor>>,
    /// The certificate in use, when serving TLS.
    tls: Option<tls::TlsState>,
    /// Threads answering `--redirect-http` (bounded like `refusing`).
    redirecting: AtomicUsize,
    /// The store, closed (flushed) at shutdown.
    store: Option<Arc<store::Store>>,
    /// Registered nicks.
    accounts: Arc<accounts::Accounts>,
    /// cluster hook: the node's Redis link with `--redis`.
    cluster: Option<Arc<cluster::Cluster>>,
}

// cluster hook: what the cluster threads reach of this server.
impl cluster::Local for Shared {
    fn deliver(&self, room: &str, id: u64, json: Arc<str>) {
        if let Some(r) = self.room.room(room) {
            r.deliver(id, json);
        }
    }
    fn deliver_private(&self, to_key: &str, from_key: &str, json: &str) {
        self.room.deliver_private(to_key, from_key, json);
    }
    fn presence(&self, room: &str, key: &str, nick: &str, joined: bool, notify: bool) {
        if let Some(r) = self.room.room(room) {
            r.remote_presence(key, nick, joined, notify);
        }
    }
    fn renamed(&self, room: &str, old_key: &str, new_key: &str, new: &str, old: &str) {
        if let Some(r) = self.room.room(room) {
            r.remote_rename(old_key, new_key, new, old);
        }
    }
    fn topic(&self, room: &str, topic: &str, json: &str) {
        if let Some(r) = self.room.room(room) {
            r.remote_topic(topic, json);
        }
    }
    fn kick(&self, key: &str, member: u64) {
        self.room.kick(key, member);
    }
    fn members(&self) -> Vec<(String, String, String, Vec<String>)> {
        self.room.cluster_members()
    }
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

macro_rules! log {
    ($shared:expr, $($arg:tt)*) => {
        if $shared.config.log {
            eprintln!($($arg)*);
        }
    };
}
pub(crate) use log;

/// A bound server, not yet accepting.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    /// `--redirect-http`'s listener.
    redirect: Option<TcpListener>,
    shared: Arc<Shared>,
}

/// Stops a running server: every client gets close 1001.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(Arc<Shared>);

impl ShutdownHandle {
    /// Asks the server to shut down; [`Server::run`] returns once done.
    pub fn shutdown(&self) {
        self.0.stop.store(true, Ordering::Release);
    }

    /// Connections open now (handshaking or upgraded).
    pub fn connections(&self) -> usize {
        self.0.live.load(Ordering::Acquire)
    }

    /// `sendmsg` calls made to WebSocket clients so far. Sends are corked
    /// per wake-up, so under load this grows far slower than the frames
    /// sent (for tests and measurements).
    ///
    /// ```no_run
    /// let mut config = chat_server::Config::default();
    /// config.addr = ([127, 0, 0, 1], 0).into();
    /// let running = chat_server::Server::bind(config)?.spawn()?;
    /// assert_eq!(running.handle().socket_writes(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn socket_writes(&self) -> u64 {
        self.0.flusher.writes()
    }

    /// Loads the TLS certificate and key files again: new handshakes get
    /// the new certificate, open connections keep theirs. On error the
    /// certificate in use stays. Does nothing without TLS.
    ///
    /// # Errors
    ///
    /// A file cannot be read, holds no usable PEM block, or rustls refuses
    /// the pair.
    ///
    /// ```no_run
    /// let running = chat_server::Server::bind(chat_server::Config::default())?.spawn()?;
    /// if let Err(e) = running.handle().reload_tls() {
    ///     eprintln!("keeping the old certificate: {e}");
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        match &self.0.tls {
            Some(t) => t.reload(),
            None => Ok(()),
        }
    }

    /// The directory uploaded images are stored in (`Config::media_dir`,
    /// or, when that is `None`, the temporary one made on the first upload).
    ///
    /// ```no_run
    /// let mut config = chat_server::Config::default();
    /// config.addr = ([127, 0, 0, 1], 0).into();
    /// config.media_dir = Some("chat-data/media".into());
    /// let running = chat_server::Server::bind(config)?.spawn()?;
    /// assert!(running.handle().media_dir().is_dir());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn media_dir(&self) -> &std::path::Path {
        self.0.media.dir()
    }
}

/// A server running on its own thread (for tests and embedding).
#[derive(Debug)]
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    handle: ShutdownHandle,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Running {
    /// The shutdown handle.
    pub fn handle(&self) -> &ShutdownHandle {
        &self.handle
    }

    /// Shuts down and waits for the server thread.
    pub fn stop(mut self) -> io::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> io::Result<()> {
        self.handle.shutdown();
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("server thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

impl Server {
    /// Binds the listening socket and starts the flusher thread.
    ///
    /// # Errors
    ///
    /// When the address cannot be bound, a thread cannot start, or the TLS
    /// files do not load (`io::ErrorKind::InvalidInput`, wrapping a
    /// [`TlsError`]).
    pub fn bind(config: Config) -> io::Result<Self> {
        let tls = match &config.tls {
            Some(files) => Some(
                tls::TlsState::load(files.clone())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            ),
            None => None,
        };
        let listener = TcpListener::bind(config.addr)?;
        let redirect = match config.redirect_http {
            Some(port) => {
                let l = TcpListener::bind(SocketAddr::new(config.addr.ip(), port))?;
                l.set_nonblocking(true)?;
                Some(l)
            }
            None => None,
        };
        // std listens with a backlog of 128: a join storm (every client of
        // a restarted server coming back at once, thousands a second)
        // overflows it between two accept passes, and each dropped SYN
        // costs its client a one-second retransmit (issue 11).
        sys::set_backlog(&listener, LISTEN_BACKLOG)?;
        listener.set_nonblocking(true)?;
        // cluster hook: with --redis, Redis is the store of record
        // (DESIGN.md v2, "Cluster"): no SQLite store; accounts and media
        // are in Redis too, so --data holds nothing.
        let store = match (&config.data, &config.cluster) {
            (Some(dir), None) => Some(store::Store::open(&store::StoreConfig {
                dir: dir.clone(),
                retain_messages: config.retain_messages,
                write_queue: store::WRITE_QUEUE,
                log: config.log,
            })?),
            _ => None,
        };
        if let (Some(store), true) = (&store, config.log) {
            eprintln!(
                "chat: storing in {} (next id {})",
                store.dir().display(),
                store.first_id()
            );
        }
        // cluster hook: the link is made before the hub that uses it.
        let cluster = match &config.cluster {
            Some(c) => Some(Arc::new(
                cluster::Cluster::new(c, config.retain_messages, config.log)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            )),
            None => None,
        };
        let hub = Hub::new(
            hub::Limits {
                history: config.history,
                max_text: config.max_text,
                max_queue: config.max_queue_bytes,
                presence_limit: config.presence_limit,
                max_rooms: config.max_rooms,
                max_rooms_per_user: config.max_rooms_per_user,
                log: config.log,
            },
            store.clone(),
            cluster.clone(),
        )
        .inspect_err(|_| store.iter().for_each(|s| s.close()))?;
        // accounts + media hook: on a cluster node both live in Redis, with
        // one sync thread keeping this node's replicas of their indexes.
        let redis = match &cluster {
            Some(c) => {
                let limits = config
                    .cluster
                    .as_ref()
                    .map(|cc| cc.media)
                    .unwrap_or_default();
                let a = Arc::new(cluster::accounts::RedisAccounts::new(c));
                let m = Arc::new(cluster::media::RedisMedia::new(c, limits));
                cluster::media::start_sync(&a, &m)?;
                Some((a, m))
            }
            None => None,
        };
        let storage = match &redis {
            Some((a, _)) => accounts::Storage::Redis(Arc::clone(a)),
            None => accounts::Storage::Local(store.clone()),
        };
        let accounts = accounts::Accounts::start(config.auth, storage)
            .inspect_err(|_| store.iter().for_each(|s| s.close()))?;
        // With storage, images live beside the database (the store made
        // DIR/media); without, in a temporary directory of this process.
        let media_dir = config
            .media_dir
            .clone()
            .or_else(|| config.data.as_ref().map(|d| d.join("media")));
        let media = media::Media::open(
            media_dir.as_deref(),
            media::Limits {
                max_bytes: config.max_upload_bytes,
                per_minute: config.upload_rate,
                max_concurrent: config.max_concurrent_uploads,
                timeout: config.upload_timeout,
            },
            redis.map(|(_, m)| m),
        )
        .inspect_err(|_| store.iter().for_each(|s| s.close()))?;
        let reactors = (0..config.reactor_threads.max(1))
            .map(|_| reactor::Reactor::new())
            .collect::<io::Result<Vec<_>>>()?;
        let shared = Arc::new(Shared {
            reactors,
            room: hub,
            cluster,
            store,
            accounts,
            media,
            flusher: Flusher::start()?,
            live: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
            clients: Mutex::new(HashMap::new()),
            tls,
            redirecting: AtomicUsize::new(0),
            config,
        });
        for (i, r) in shared.reactors.iter().enumerate() {
            let (r, s) = (Arc::clone(r), Arc::clone(&shared));
            std::thread::Builder::new()
                .name(format!("chat-reactor-{i}"))
                .stack_size(512 << 10)
                .spawn(move || r.run(&s))?;
        }
        if let Some(c) = &shared.cluster {
            // cluster hook: subscriber, publisher and keeper threads.
            let weak: std::sync::Weak<dyn cluster::Local> = Arc::downgrade(&shared) as _;
            c.start(weak)?;
        }
        Ok(Self {
            listener,
            redirect,
            shared,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.shared.config.addr)
    }

    /// A handle that stops the server from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(Arc::clone(&self.shared))
    }

    /// Runs on a new thread.
    ///
    /// # Errors
    ///
    /// When the thread cannot be spawned.
    pub fn spawn(self) -> io::Result<Running> {
        let addr = self.local_addr();
        let handle = self.shutdown_handle();
        let thread = std::thread::Builder::new()
            .name("chat-accept".into())
            .spawn(move || self.run())?;
        Ok(Running {
            addr,
            handle,
            thread: Some(thread),
        })
    }

    /// Accepts connections until shut down, then closes every client with
    /// 1001 and waits (at most a few seconds) for them to go.
    ///
    /// # Errors
    ///
    /// A fatal error on the listening socket.
    pub fn run(self) -> io::Result<()> {
        let https_port = self.local_addr().port();
        let shared = self.shared;
        while !shared.stop.load(Ordering::Acquire) {
            // The timeout bounds how long a shutdown request waits.
            let mut pfd = [sys::pollfd(self.listener.as_raw_fd(), sys::POLLIN)];
            match &self.redirect {
                Some(r) => {
                    let mut both = [pfd[0], sys::pollfd(r.as_raw_fd(), sys::POLLIN)];
                    sys::poll(&mut both, Duration::from_millis(100));
                    if both[1].revents != 0 {
                        redirect_all(&shared, r, https_port);
                    }
                }
                None => {
                    sys::poll(&mut pfd, Duration::from_millis(100));
                }
            }
            loop {
                match self.listener.accept() {
                    Ok((stream, addr)) => accept(&shared, stream, addr),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        // EMFILE and friends: say so, back off, keep serving.
                        log!(shared, "chat: accept error: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                        break;
                    }
                }
            }
        }
        drop(self.listener);
        drop(self.redirect);
        let clients: Vec<Arc<Client>> = shared
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        log!(
            shared,
            "chat: shutting down, closing {} connections with 1001 ({} sendmsg calls to clients since start)",
            clients.len(),
            shared.flusher.writes()
        );
        for c in &clients {
            c.close(CloseCode::GOING_AWAY, "server shutting down");
        }
        drop(clients);
        let deadline = Instant::now() + Duration::from_secs(4);
        while shared.live.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        shared.flusher.stop();
        if let Some(c) = &shared.cluster {
            c.shutdown(); // cluster hook: after the sessions' leave jobs
        }
        if let Some(store) = &shared.store {
            // Every queued message is written before run returns.
            store.close();
            if store.dropped() > 0 {
                log!(
                    shared,
                    "chat: store: {} messages were not persisted (writer lagging)",
                    store.dropped()
                );
            }
        }
        shared.media.remove_temporary();
        Ok(())
    }
}

fn accept(shared: &Arc<Shared>, stream: TcpStream, addr: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let live = shared.live.fetch_add(1, Ordering::AcqRel);
    let guard = LiveGuard(Arc::clone(shared));
    if live >= shared.config.max_connections {
        drop(guard);
        refuse_busy(shared, stream, addr);
        return;
    }
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let s = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .stack_size(shared.config.thread_stack)
        .spawn(move || http::serve(&s, stream, addr, id, guard));
    if let Err(e) = spawned {
        log!(shared, "chat: {addr} error: cannot start a thread: {e}");
    }
}

/// Answers 503 on a short-lived thread: reading the request first means the
/// close does not reset the connection before the client reads the answer.
fn refuse_busy(shared: &Arc<Shared>, stream: TcpStream, addr: SocketAddr) {
    log!(shared, "chat: {addr} refused: over --max-connections");
    if shared.refusing.fetch_add(1, Ordering::AcqRel) >= 64 {
        shared.refusing.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let s = Arc::clone(shared);
    // A TLS handshake needs more stack than a plain-text 503.
    let stack = if shared.tls.is_some() {
        shared.config.thread_stack
    } else {
        64 << 10
    };
    let spawned = std::thread::Builder::new()
        .stack_size(stack)
        .spawn(move || {
            http::refuse_busy(&s, stream, addr);
            s.refusing.fetch_sub(1, Ordering::AcqRel);
        });
    if spawned.is_err() {
        shared.refusing.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers every connection waiting on `--redirect-http`'s port, each on
/// a short-lived thread; past 64 at once the rest are dropped (they are
/// not chat connections and must not cost more).
fn redirect_all(shared: &Arc<Shared>, listener: &TcpListener, https_port: u16) {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if shared.redirecting.fetch_add(1, Ordering::AcqRel) >= 64 {
            shared.redirecting.fetch_sub(1, Ordering::AcqRel);
            continue;
        }
        let s = Arc::clone(shared);
        let timeout = shared.config.handshake_timeout;
        let spawned = std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || {
                http::redirect(stream, https_port, timeout);
                s.redirecting.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            shared.redirecting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Counts a connection against `max_connections` while it lives.
pub(crate) struct LiveGuard(Arc<Shared>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Raises the open-file soft limit to the hard limit; returns (soft, hard)
/// after the change.
///
/// # Errors
///
/// When the limit cannot be read or set.
pub fn raise_fd_limit() -> io::Result<(u64, u64)> {
    sys::raise_fd_limit()
}

/// Catches SIGINT and SIGTERM for a clean shutdown: the returned flag turns
/// true once either arrives (the handler only sets it).
///
/// ```no_run
/// let stop = chat_server::catch_stop_signals();
/// while !stop.load(std::sync::atomic::Ordering::Acquire) {
///     std::thread::sleep(std::time::Duration::from_millis(100));
/// }
/// ```
pub fn catch_stop_signals() -> &'static AtomicBool {
    sys::catch_stop_signals()
}

/// Catches SIGHUP: the returned flag turns true when it arrives (the
/// handler only sets it; the caller resets it and calls
/// [`ShutdownHandle::reload_tls`]).
///
/// ```no_run
/// let hup = chat_server::catch_reload_signal();
/// if hup.swap(false, std::sync::atomic::Ordering::AcqRel) {
///     // reload
/// }
/// ```
pub fn catch_reload_signal() -> &'static AtomicBool {
    sys::catch_reload_signal()
}
