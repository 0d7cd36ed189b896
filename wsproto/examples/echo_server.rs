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
//! With `--tls-cert FILE --tls-key FILE` (PEM; the `rustls` feature) it
//! serves `wss://`: each connection's TLS version and cipher suite go to
//! stderr. The TLS handshake counts against `--handshake-timeout` too.
//!
//! ```sh
//! cargo run --release --example echo_server -p wsproto -- --addr 127.0.0.1:9001 [--deflate]
//! cargo run --release --example echo_server -p wsproto --features rustls -- \
//!     --addr 127.0.0.1:9443 --tls-cert cert.pem --tls-key key.pem
//! ```

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wsproto::blocking::{self, Transport, WebSocket};
use wsproto::{deflate::DeflateConfig, Config, Event};

const USAGE: &str = "usage: echo_server [--addr HOST:PORT] [--handshake-timeout SECS] \
     [--max-connections N] [--deflate] [--tls-cert FILE --tls-key FILE]";

/// The TLS server config, if `--tls-cert`/`--tls-key` were given.
#[cfg(feature = "rustls")]
type Tls = Option<Arc<wsproto::tls::rustls::ServerConfig>>;
#[cfg(not(feature = "rustls"))]
type Tls = Option<Arc<std::convert::Infallible>>;

fn main() -> std::io::Result<()> {
    let mut addr = "127.0.0.1:9001".to_string();
    let mut handshake_timeout = Duration::from_secs(10);
    let mut max_connections = 512;
    let mut config = Config::default();
    let (mut cert, mut key) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--deflate" {
            config = config.deflate(DeflateConfig::default());
            continue;
        }
        let value = args.next();
        match (arg.as_str(), value.as_deref()) {
            ("--addr", Some(a)) => addr = a.to_string(),
            ("--tls-cert", Some(f)) => cert = Some(f.to_string()),
            ("--tls-key", Some(f)) => key = Some(f.to_string()),
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
    let tls = tls_config(cert, key);
    let listener = TcpListener::bind(&addr)?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    eprintln!(
        "echo_server: listening on {scheme}://{}",
        listener.local_addr()?
    );
    let live = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if live.load(Ordering::SeqCst) >= max_connections {
            // Over capacity: dropping the stream closes it.
            continue;
        }
        let slot = Slot::take(&live);
        let config = config.clone();
        let tls = tls.clone();
        let _ = stream.set_nodelay(true);
        std::thread::spawn(move || {
            let _slot = slot;
            // A peer that connects and says nothing is dropped after the
            // deadline; the timeout is cleared once the handshake is done.
            if stream.set_read_timeout(Some(handshake_timeout)).is_err() {
                return;
            }
            match tls {
                None => serve(stream, config),
                #[cfg(feature = "rustls")]
                Some(tls) => serve_tls(stream, config, tls),
                #[cfg(not(feature = "rustls"))]
                Some(never) => match *never {},
            }
        });
    }
    Ok(())
}

fn serve(stream: TcpStream, config: Config) {
    match blocking::accept_with(stream, config, &[]) {
        Ok((ws, _)) => echo(ws),
        Err(e) => eprintln!("echo_server: handshake: {e}"),
    }
}

/// The TLS handshake (bounded by the same read timeout), then as `serve`.
#[cfg(feature = "rustls")]
fn serve_tls(stream: TcpStream, config: Config, tls: Arc<wsproto::tls::rustls::ServerConfig>) {
    let tls = match wsproto::tls::TlsStream::accept(stream, tls) {
        Ok(tls) => tls,
        Err(e) => return eprintln!("echo_server: TLS handshake: {e}"),
    };
    eprintln!(
        "echo_server: {} {:?} {:?}",
        tls.peer_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string()),
        tls.protocol_version(),
        tls.cipher_suite().map(|s| s.suite()),
    );
    match blocking::accept_with(tls, config, &[]) {
        Ok((ws, _)) => echo(ws),
        Err(e) => eprintln!("echo_server: handshake: {e}"),
    }
}

fn echo<S: Transport>(mut ws: WebSocket<S>) {
    if ws.get_mut().set_read_timeout(None).is_err() {
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
}

/// Loads `--tls-cert`/`--tls-key` (both or neither); exits on a bad file.
fn tls_config(cert: Option<String>, key: Option<String>) -> Tls {
    match (cert, key) {
        (None, None) => None,
        #[cfg(feature = "rustls")]
        (Some(cert), Some(key)) => match wsproto::tls::server_config_from_pem(&cert, &key) {
            Ok(config) => Some(config),
            Err(e) => {
                eprintln!("echo_server: {e}");
                std::process::exit(2);
            }
        },
        #[cfg(not(feature = "rustls"))]
        (Some(_), Some(_)) => {
            eprintln!("echo_server: built without TLS: add `--features rustls`");
            std::process::exit(2);
        }
        _ => usage(),
    }
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
