//! An echo server, one thread per connection: text comes back as text,
//! binary as binary; pings are answered and a close is echoed with the
//! peer's code and reason (both by the library).
//!
//! A client has `--handshake-timeout` seconds (default 10) to complete the
//! opening handshake, and at most `--max-connections` (default 512)
//! connections are served at once; past that, new ones are closed at once.
//! Without these, every silent socket held a thread forever.
//!
//! With `--deflate` it accepts permessage-deflate offers (RFC 7692).
//!
//! ```sh
//! cargo run --release --example echo_server -p wsproto -- --addr 127.0.0.1:9001 [--deflate]
//! ```

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wsproto::{blocking, deflate::DeflateConfig, Config, Event};

const USAGE: &str =
    "usage: echo_server [--addr HOST:PORT] [--handshake-timeout SECS] [--max-connections N] [--deflate]";

fn main() -> std::io::Result<()> {
    let mut addr = "127.0.0.1:9001".to_string();
    let mut handshake_timeout = Duration::from_secs(10);
    let mut max_connections = 512;
    let mut config = Config::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--deflate" {
            config = config.deflate(DeflateConfig::default());
            continue;
        }
        let value = args.next();
        match (arg.as_str(), value.as_deref()) {
            ("--addr", Some(a)) => addr = a.to_string(),
            ("--handshake-timeout", Some(s)) => match s.parse::<f64>() {
                Ok(secs) if secs > 0.0 && secs <= 3600.0 => {
                    handshake_timeout = Duration::from_secs_f64(secs)
                }
                _ => usage(),
            },
            ("--max-connections", Some(n)) => match n.parse::<usize>() {
                Ok(n) if n > 0 => max_connections = n,
                _ => usage(),
            },
            _ => usage(),
        }
    }
    let listener = TcpListener::bind(&addr)?;
    eprintln!("echo_server: listening on ws://{}", listener.local_addr()?);
    let live = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if live.load(Ordering::SeqCst) >= max_connections {
            // Over capacity: dropping the stream closes it.
            continue;
        }
        let slot = Slot::take(&live);
        let config = config.clone();
        let _ = stream.set_nodelay(true);
        std::thread::spawn(move || {
            let _slot = slot;
            // A peer that connects and says nothing is dropped after the
            // deadline; the timeout is cleared once the handshake is done.
            if stream.set_read_timeout(Some(handshake_timeout)).is_err() {
                return;
            }
            let mut ws = match blocking::accept_with(stream, config, &[]).map(|(ws, _)| ws) {
                Ok(ws) => ws,
                Err(e) => return eprintln!("echo_server: handshake: {e}"),
            };
            if ws.get_ref().set_read_timeout(None).is_err() {
                return;
            }
            loop {
                let result = match ws.read() {
                    Ok(Event::Text(t)) => ws.send(t),
                    Ok(Event::Binary(b)) => ws.send(b),
                    Ok(Event::Ping(_) | Event::Pong(_)) => Ok(()),
                    // The library has answered the close; dropping the
                    // stream closes TCP (RFC 6455 §7.1.1: the server first).
                    Ok(Event::Close(_)) | Err(_) => break,
                    Ok(_) => Ok(()),
                };
                if result.is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

fn usage() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(2);
}

/// One of the `--max-connections` slots, given back when the connection's
/// thread ends (however it ends).
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(live))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
