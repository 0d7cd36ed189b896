//! `chat-server`: the command line. Everything else is in the library.

use chat_server::{
    catch_reload_signal, catch_stop_signals, raise_fd_limit, Config, Server, TlsFiles,
};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

const HELP: &str = "\
chat-server: a WebSocket chat with rooms (page at /, WebSocket at /ws, /healthz)

USAGE: chat-server [OPTIONS]

OPTIONS:
  --addr ADDR                listen address            [default: 127.0.0.1:8080]
  --history N                room messages kept, 0-1000000 [default: 100]
  --max-connections N        WebSocket connections, then HTTP 503; 1-1048576 [default: 10000]
  --max-message-bytes N      largest frame, then close 1009; 1024-67108864 [default: 65536]
  --max-text N               largest text in characters, then too_long;
                             1 to --max-message-bytes [default: 4096]
  --max-header-bytes N       largest HTTP head, then 431; 1024-1048576 [default: 8192]
  --max-queue-bytes N        per-client outgoing queue, then close 1008;
                             65536 (and 6 x --max-text + 1024) to 1073741824 [default: 1048576]
  --handshake-timeout SECS   HTTP request deadline, 1-3600 [default: 5]
  --join-timeout SECS        join deadline, then close 1008; 1-3600 [default: 10]
  --ping-interval SECS       keepalive ping period, 1-86400 [default: 30]
  --pong-timeout SECS        pong deadline, then close 1011; 1-86400 [default: 30]
  --rate-burst N             rate limit bucket, 1-1000000 [default: 40]
  --rate-per-sec N           rate limit refill, 1-1000000 [default: 20]
  --control-burst N          Ping/Pong frames a client may send at once, then
                             the refill below; past it, close 1008 [default: 40]
  --control-per-sec N        Ping/Pong refill per second, 1-1000000 [default: 20]
  --presence-limit N         members up to which joined/left/renamed go to everyone;
                             above, a presence count each second and paged who;
                             0-100000 [default: 500]
  --max-rooms-per-user N     rooms one session may be in at once, lobby included,
                             then too_many_rooms; 1-10000 [default: 20]
  --max-rooms N              rooms the server holds, lobby included, then
                             too_many_rooms; 1-1000000 [default: 1000]
  --reactor-threads N        threads reading WebSockets, 1-64 [default: cores, max 4]
  --allowed-origin ORIGIN    also accept WebSockets from pages of ORIGIN (scheme://host[:port];
                             repeatable; * allows any) [default: same host:port only]
  --data DIR                 keep messages, rooms, accounts and media in DIR (created;
                             SQLite chat.db in WAL mode, media/) [default: ./chat-data]
  --retain-messages N        room messages kept per room (in DIR, or in Redis's
                             streams with --redis), older deleted;
                             1-1000000000 [default: 100000]
  --ephemeral                keep nothing on disk: history lives in memory only (v1)
  --no-deflate               do not negotiate permessage-deflate compression
                             [default: negotiated when the client offers it]
  --tls-cert FILE            serve https:// and wss:// with this PEM certificate chain
                             (leaf first); needs --tls-key. SIGHUP reloads both files
                             (open connections stay; a bad file keeps the old pair)
  --tls-key FILE             the PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1)
  --redirect-http PORT       also answer plain HTTP on PORT with a 308 to https://
                             (needs --tls-cert)
  --max-upload-bytes N       largest image upload, then 413 (refused from its
                             Content-Length); 1024-1073741824 [default: 5242880]
  --upload-rate N            accepted uploads per session per minute, then 429;
                             1-100000 [default: 10]
  --max-concurrent-uploads N uploads received at once, then 503; 1-10000 [default: 32]
  --upload-timeout SECS      an upload body's deadline, then 408; 1-3600 [default: 60]
  --redis URL                be one node of a cluster sharing this Redis,
                             redis://HOST:PORT[/DB] [default: single node]. Redis is
                             then the store of record for everything (messages,
                             rooms, nicks, accounts, images): --data holds nothing
  --node-id ID               this node's name in the cluster [default: random]
  --node-timeout SECS        a node silent this long is dead and its members
                             are announced left; 1-3600 [default: 15]
  --media-max-bytes N        image bytes the cluster keeps in Redis, then 507;
                             1048576-68719476736 [default: 268435456]
  --media-max-files N        images the cluster keeps in Redis, then 507;
                             1-10000000 [default: 10000]
  --media-ttl SECS           an image is kept this long after its last upload;
                             60-315360000 [default: 2592000, 30 days]
  --quiet                    no per-connection log lines
  -h, --help                 this text

A value out of its range is refused (exit code 2).
";

fn main() -> ExitCode {
    let config = match parse_args(std::env::args().skip(1)) {
        Ok(Some(c)) => c,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!(
                "chat-server: {e}\n(`chat-server --help` lists the options and their ranges)"
            );
            return ExitCode::from(2);
        }
    };
    match raise_fd_limit() {
        Ok((soft, _)) if (soft as usize) < config.max_connections + 64 => eprintln!(
            "chat: warning: open-file limit is {soft}, below --max-connections {}; raise the hard limit (ulimit -Hn)",
            config.max_connections
        ),
        Ok(_) => {}
        Err(e) => eprintln!("chat: warning: cannot raise the open-file limit: {e}"),
    }
    let signaled = catch_stop_signals();
    // Without TLS, SIGHUP keeps its default (the process ends), as before.
    let reload = config.tls.is_some().then(catch_reload_signal);
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let server = match Server::bind(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chat-server: cannot start: {e}"); // the address, TLS files or --data
            return ExitCode::FAILURE;
        }
    };
    eprintln!("chat: listening on {scheme}://{}/", server.local_addr());
    let running = match server.spawn() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chat-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    while !signaled.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(100));
        if reload.is_some_and(|r| r.swap(false, Ordering::AcqRel)) {
            match running.handle().reload_tls() {
                Ok(()) => eprintln!("chat: SIGHUP: TLS certificate reloaded"),
                Err(e) => eprintln!("chat: SIGHUP: keeping the old TLS certificate: {e}"),
            }
        }
    }
    eprintln!("chat: signal received, shutting down");
    match running.stop() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat-server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The accepted ranges. Zero is never useful and some values break the
/// server (issue 10: `--ping-interval 0` sent a client 36,285 Pings in 2 s;
/// a zero timeout makes `set_read_timeout` fail; `Instant + Duration` panics
/// on overflow), so every duration and size has a floor and a ceiling.
mod range {
    /// Image bytes in Redis: at least one megabyte; 64 GiB is past any
    /// single Redis a chat would run.
    pub const MEDIA_BYTES: (u64, u64) = (1 << 20, 64 << 30);
    pub const MEDIA_FILES: (u64, u64) = (1, 10_000_000);
    /// A minute to ten years.
    pub const MEDIA_TTL_SECS: (u64, u64) = (60, 315_360_000);
    /// 0 keeps no history (the welcome's is empty); a million 4 KiB texts
    /// is already gigabytes.
    pub const HISTORY: (u64, u64) = (0, 1_000_000);
    /// Linux's default `fs.nr_open`: no process gets more descriptors.
    pub const CONNECTIONS: (u64, u64) = (1, 1 << 20);
    /// A `join` with a 32-character nick, `since` and `token`, escaped as
    /// `\uXXXX`, fits in 1 KiB; a frame this large is buffered whole.
    pub const MESSAGE_BYTES: (u64, u64) = (1 << 10, 64 << 20);
    /// The upper bound is `--max-message-bytes`: a longer text could never
    /// arrive, and would close with 1009 instead of getting `too_long`.
    pub const TEXT_MIN: u64 = 1;
    /// A browser's request head is 0.5-2 KiB before cookies.
    pub const HEADER_BYTES: (u64, u64) = (1 << 10, 1 << 20);
    /// A client's queue must hold one broadcast of the longest text (see
    /// [`queue_floor`]); replies to its own requests are capped at half the
    /// queue (at most 256 KiB, `chat_server::REPLY_MAX_BYTES`), so they fit
    /// whatever the bound. Below 64 KiB a welcome would hold almost no
    /// history. The ceiling keeps 10,000 clients' worst case within reach of
    /// one machine's memory.
    pub const QUEUE_BYTES: (u64, u64) = (64 << 10, 1 << 30);
    pub const HANDSHAKE_SECS: (u64, u64) = (1, 3600);
    pub const JOIN_SECS: (u64, u64) = (1, 3600);
    pub const PING_SECS: (u64, u64) = (1, 86_400);
    pub const PONG_SECS: (u64, u64) = (1, 86_400);
    /// A rate of 0 would refuse every frame; past a million per second the
    /// limit limits nothing.
    pub const RATE: (u64, u64) = (1, 1_000_000);
    /// 0 sends only counts; the ceiling keeps the welcome's full list
    /// (up to the limit) within a bounded reply, where it is cut to a page.
    pub const PRESENCE_LIMIT: (u64, u64) = (0, 100_000);
    /// A session's rooms are walked on rename and leave; past ten thousand
    /// no person follows them.
    pub const ROOMS_PER_USER: (u64, u64) = (1, 10_000);
    /// Empty rooms with messages are kept, each with its history ring: the
    /// ceiling bounds that memory (with `--history`).
    pub const ROOMS: (u64, u64) = (1, 1_000_000);
    /// 0 would delete every message as it is written.
    pub const RETAIN: (u64, u64) = (1, 1_000_000_000);
    /// media: an image under 1 KiB is rare, one over 1 GiB is no chat
    /// image (each upload is streamed to disk, so the bound is disk, not
    /// memory).
    pub const UPLOAD_BYTES: (u64, u64) = (1 << 10, 1 << 30);
    pub const UPLOAD_RATE: (u64, u64) = (1, 100_000);
    /// Each upload holds a 64 KiB buffer and a thread.
    pub const UPLOADS: (u64, u64) = (1, 10_000);
    pub const UPLOAD_SECS: (u64, u64) = (1, 3600);
    /// More reactors than cores only add contention.
    pub const REACTORS: (u64, u64) = (1, 64);
    /// Heartbeats go every third of it: under a second would beat faster
    /// than a loaded Redis answers; an hour keeps the dead visible too long.
    pub const NODE_TIMEOUT_SECS: (u64, u64) = (1, 3600);

    /// Smallest `--max-queue-bytes` for a `--max-text`: a room message of
    /// `max_text` characters goes out with each character escaped to at
    /// most 6 bytes (`\u0001`), plus the envelope, nick and frame header.
    pub fn queue_floor(max_text: u64) -> u64 {
        QUEUE_BYTES.0.max(6 * max_text + 1024)
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Config>, String> {
    let mut c = Config::default();
    let (mut cert, mut key): (Option<PathBuf>, Option<PathBuf>) = (None, None);
    // The command line persists by default.
    let mut data = Some(PathBuf::from("./chat-data"));
    let mut ephemeral = false;
    let (mut redis, mut node_id, mut node_timeout) = (None, None, None);
    let mut media: Vec<(&'static str, u64)> = Vec::new();
    while let Some(flag) = args.next() {
        if flag == "--ephemeral" {
            ephemeral = true;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        if flag == "--quiet" {
            c.log = false;
            continue;
        }
        if flag == "--no-deflate" {
            c.deflate = false;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |(lo, hi): (u64, u64)| bounded(&flag, &value, lo, hi);
        let secs = |r| num(r).map(Duration::from_secs);
        // Every range is within u32, so the `as` casts below are exact.
        match flag.as_str() {
            "--allowed-origin" => {
                c.origin_policy = std::mem::take(&mut c.origin_policy)
                    .allow(&value)
                    .map_err(|e| format!("--allowed-origin: {e}"))?
            }
            "--addr" => {
                c.addr = value
                    .parse()
                    .map_err(|_| format!("--addr: {value:?} is not host:port"))?
            }
            "--data" if !value.is_empty() => data = Some(value.into()),
            "--retain-messages" => c.retain_messages = num(range::RETAIN)? as usize,
            "--history" => c.history = num(range::HISTORY)? as usize,
            "--max-connections" => c.max_connections = num(range::CONNECTIONS)? as usize,
            "--max-message-bytes" => c.max_message_bytes = num(range::MESSAGE_BYTES)? as usize,
            "--max-text" => c.max_text = num((range::TEXT_MIN, range::MESSAGE_BYTES.1))? as usize,
            "--max-header-bytes" => c.max_header_bytes = num(range::HEADER_BYTES)? as usize,
            "--max-queue-bytes" => c.max_queue_bytes = num(range::QUEUE_BYTES)? as usize,
            "--handshake-timeout" => c.handshake_timeout = secs(range::HANDSHAKE_SECS)?,
            "--join-timeout" => c.join_timeout = secs(range::JOIN_SECS)?,
            "--ping-interval" => c.ping_interval = secs(range::PING_SECS)?,
            "--pong-timeout" => c.pong_timeout = secs(range::PONG_SECS)?,
            "--rate-burst" => c.rate_burst = num(range::RATE)? as u32,
            "--presence-limit" => c.presence_limit = num(range::PRESENCE_LIMIT)? as usize,
            "--max-rooms-per-user" => c.max_rooms_per_user = num(range::ROOMS_PER_USER)? as usize,
            "--max-rooms" => c.max_rooms = num(range::ROOMS)? as usize,
            "--reactor-threads" => c.reactor_threads = num(range::REACTORS)? as usize,
            "--max-upload-bytes" => c.max_upload_bytes = num(range::UPLOAD_BYTES)?,
            "--upload-rate" => c.upload_rate = num(range::UPLOAD_RATE)? as u32,
            "--max-concurrent-uploads" => c.max_concurrent_uploads = num(range::UPLOADS)? as usize,
            "--upload-timeout" => c.upload_timeout = secs(range::UPLOAD_SECS)?,
            "--rate-per-sec" => c.rate_per_sec = num(range::RATE)? as u32,
            "--control-burst" => c.control_burst = num(range::RATE)? as u32,
            "--control-per-sec" => c.control_per_sec = num(range::RATE)? as u32,
            "--tls-cert" => cert = Some(value.into()),
            "--tls-key" => key = Some(value.into()),
            "--redirect-http" => c.redirect_http = Some(num((1, 65_535))? as u16),
            // cluster hook: --node-id and --node-timeout apply once --redis
            // is known, in any order.
            "--redis" => redis = Some(value),
            "--node-id" => node_id = Some(value),
            "--node-timeout" => node_timeout = Some(secs(range::NODE_TIMEOUT_SECS)?),
            "--media-max-bytes" => media.push(("bytes", num(range::MEDIA_BYTES)?)),
            "--media-max-files" => media.push(("files", num(range::MEDIA_FILES)?)),
            "--media-ttl" => media.push(("ttl", num(range::MEDIA_TTL_SECS)?)),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    match redis {
        Some(url) => {
            let mut cc = chat_server::ClusterConfig::new(&url);
            if let Some(id) = node_id {
                cc.node_id = id;
            }
            if let Some(t) = node_timeout {
                cc.node_timeout = t;
            }
            for (what, n) in media {
                match what {
                    "bytes" => cc.media.max_bytes = n,
                    "files" => cc.media.max_files = n,
                    _ => cc.media.ttl = Duration::from_secs(n),
                }
            }
            c.cluster = Some(cc);
        }
        None if node_id.is_some() || node_timeout.is_some() || !media.is_empty() => {
            return Err("--node-id, --node-timeout and --media-* need --redis".into());
        }
        None => {}
    }
    c.data = if ephemeral { None } else { data };
    // Flags that bound each other, checked once all are known (in any order).
    c.tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        (Some(_), None) => return Err("--tls-cert needs --tls-key".into()),
        (None, Some(_)) => return Err("--tls-key needs --tls-cert".into()),
    };
    if c.redirect_http.is_some() && c.tls.is_none() {
        return Err("--redirect-http needs --tls-cert and --tls-key".into());
    }
    if c.redirect_http == Some(c.addr.port()) {
        return Err(format!(
            "--redirect-http: {} is the --addr port itself",
            c.addr.port()
        ));
    }
    if c.max_text > c.max_message_bytes {
        return Err(format!(
            "--max-text: {} is more than --max-message-bytes {}; a text that long could never arrive",
            c.max_text, c.max_message_bytes
        ));
    }
    let floor = range::queue_floor(c.max_text as u64);
    if (c.max_queue_bytes as u64) < floor {
        return Err(format!(
            "--max-queue-bytes: {} cannot hold one message of --max-text {} characters; the least is {floor}",
            c.max_queue_bytes, c.max_text
        ));
    }
    Ok(Some(c))
}

/// `value` as an integer in `lo..=hi`, or an error naming `flag`.
fn bounded(flag: &str, value: &str, lo: u64, hi: u64) -> Result<u64, String> {
    let out_of_range = || format!("{flag}: {value} is out of range; expected {lo} to {hi}");
    match value.parse::<u64>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        Ok(_) => Err(out_of_range()),
        Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => Err(out_of_range()),
        Err(_) => Err(format!("{flag}: {value:?} is not a number")),
    }
}
