//! An echo server, one thread per connection: text comes back as text,
//! binary as binary; pings are answered and a close is echoed with the
//! peer's code (both by the library).
//!
//! ```sh
//! cargo run --release --example echo_server -p wsproto -- --addr 127.0.0.1:9001
//! ```

use std::net::TcpListener;
use wsproto::{blocking, Event};

fn main() -> std::io::Result<()> {
    let mut addr = "127.0.0.1:9001".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(a)) => addr = a,
            _ => {
                eprintln!("usage: echo_server [--addr HOST:PORT]");
                std::process::exit(2);
            }
        }
    }
    let listener = TcpListener::bind(&addr)?;
    eprintln!("echo_server: listening on ws://{}", listener.local_addr()?);
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let _ = stream.set_nodelay(true);
        std::thread::spawn(move || {
            let mut ws = match blocking::accept(stream) {
                Ok(ws) => ws,
                Err(e) => return eprintln!("echo_server: handshake: {e}"),
            };
            loop {
                let result = match ws.read() {
                    Ok(Event::Text(t)) => ws.send(t),
                    Ok(Event::Binary(b)) => ws.send(b),
                    Ok(Event::Ping(_) | Event::Pong(_)) => Ok(()),
                    // The library has answered the close; dropping the
                    // stream closes TCP (RFC 6455 §7.1.1: the server first).
                    Ok(Event::Close(_)) | Err(_) => break,
                };
                if result.is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}
