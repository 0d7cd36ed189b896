//! `chat-server`: the command line. Everything else is in the library.

use chat_server::{raise_fd_limit, Config, Server};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const HELP: &str = "\
chat-server: a one-room WebSocket chat (page at /, WebSocket at /ws, /healthz)

USAGE: chat-server [OPTIONS]

OPTIONS:
  --addr ADDR                listen address            [default: 127.0.0.1:8080]
  --history N                room messages kept         [default: 100]
  --max-connections N        WebSocket connections, then HTTP 503 [default: 10000]
  --max-message-bytes N      largest frame, then close 1009 [default: 65536]
  --max-text N               largest text in characters, then too_long [default: 4096]
  --max-header-bytes N       largest HTTP head, then 431 [default: 8192]
  --max-queue-bytes N        per-client outgoing queue, then close 1008 [default: 1048576]
  --handshake-timeout SECS   HTTP request deadline      [default: 5]
  --join-timeout SECS        join deadline, then close 1008 [default: 10]
  --ping-interval SECS       keepalive ping period      [default: 30]
  --pong-timeout SECS        pong deadline, then close 1011 [default: 30]
  --rate-burst N             rate limit bucket          [default: 40]
  --rate-per-sec N           rate limit refill          [default: 20]
  --reactor-threads N        threads reading WebSockets [default: cores, max 4]
  --allowed-origin ORIGIN    also accept WebSockets from pages of ORIGIN (scheme://host[:port];
                             repeatable; * allows any) [default: same host:port only]
  --quiet                    no per-connection log lines
  -h, --help                 this text
";

static SIGNALED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    SIGNALED.store(true, Ordering::Release);
}

fn main() -> ExitCode {
    let config = match parse_args(std::env::args().skip(1)) {
        Ok(Some(c)) => c,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("chat-server: {e}\n\n{HELP}");
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
    // SAFETY: `on_signal` only stores to an atomic, which is
    // async-signal-safe; installing a handler has no other precondition.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let server = match Server::bind(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chat-server: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("chat: listening on http://{}/", server.local_addr());
    let running = match server.spawn() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chat-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    while !SIGNALED.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(100));
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

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Config>, String> {
    let mut c = Config::default();
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        if flag == "--quiet" {
            c.log = false;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag}: {value:?} is not a number"))
        };
        let secs = || num().map(Duration::from_secs);
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
            "--history" => c.history = num()? as usize,
            "--max-connections" => c.max_connections = num()? as usize,
            "--max-message-bytes" => c.max_message_bytes = num()? as usize,
            "--max-text" => c.max_text = num()? as usize,
            "--max-header-bytes" => c.max_header_bytes = num()? as usize,
            "--max-queue-bytes" => c.max_queue_bytes = num()? as usize,
            "--handshake-timeout" => c.handshake_timeout = secs()?,
            "--join-timeout" => c.join_timeout = secs()?,
            "--ping-interval" => c.ping_interval = secs()?,
            "--pong-timeout" => c.pong_timeout = secs()?,
            "--rate-burst" => c.rate_burst = num()?.min(u32::MAX.into()) as u32,
            "--reactor-threads" => c.reactor_threads = (num()? as usize).max(1),
            "--rate-per-sec" => c.rate_per_sec = num()?.min(u32::MAX.into()) as u32,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(Some(c))
}
