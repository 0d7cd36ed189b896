//! A line client: each stdin line goes out as a text message, each message
//! received is printed on its own line; at the end of stdin it closes with
//! 1000 and exits 0 once the closing handshake is done.
//!
//! ```sh
//! cargo run --example client -p wsproto -- --url ws://127.0.0.1:9001/ [--deflate]
//! cargo run --example client -p wsproto --features rustls -- --url wss://localhost:9443/ [--ca ca.pem]
//! ```
//! `--deflate` offers permessage-deflate (RFC 7692). A `wss://` URL (the
//! `rustls` feature) is verified against Mozilla's roots, plus the CA
//! certificates in `--ca FILE` (PEM) if given; the TLS version and cipher
//! suite go to stderr.

use std::io::{BufRead, Write};
#[cfg(not(feature = "rustls"))]
use wsproto::handshake::ClientRequest;
use wsproto::{blocking, deflate::DeflateConfig, CloseCode, Config, Event};

fn main() {
    let mut url = "ws://127.0.0.1:9001/".to_string();
    let mut config = Config::default();
    let mut ca = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--deflate" {
            config = config.deflate(DeflateConfig::default());
            continue;
        }
        match (arg.as_str(), args.next()) {
            ("--url", Some(u)) => url = u,
            ("--ca", Some(f)) => ca = Some(f),
            _ => {
                eprintln!("usage: client [--url ws[s]://HOST:PORT/PATH] [--ca FILE] [--deflate]");
                std::process::exit(2);
            }
        }
    }
    if let Err(e) = run(&url, config, ca) {
        eprintln!("client: {e}");
        std::process::exit(1);
    }
}

#[cfg(feature = "rustls")]
fn dial(
    url: &str,
    config: Config,
    ca: Option<String>,
) -> Result<blocking::WebSocket<blocking::MaybeTlsStream>, wsproto::Error> {
    let tls = match ca {
        Some(file) => wsproto::tls::client_config_with_ca(file)?,
        None => wsproto::tls::client_config(),
    };
    let (ws, _) = blocking::connect_with_tls(url, config, tls)?;
    if let blocking::MaybeTlsStream::Tls(tls) = ws.get_ref() {
        eprintln!(
            "client: {:?} {:?}",
            tls.protocol_version(),
            tls.cipher_suite().map(|s| s.suite())
        );
    }
    Ok(ws)
}

#[cfg(not(feature = "rustls"))]
fn dial(
    url: &str,
    config: Config,
    ca: Option<String>,
) -> Result<blocking::WebSocket<std::net::TcpStream>, wsproto::Error> {
    let request = ClientRequest::from_url(url)?;
    if request.is_secure() || ca.is_some() {
        eprintln!("client: built without TLS: add `--features rustls`");
        std::process::exit(2);
    }
    let stream = std::net::TcpStream::connect(request.address())?;
    stream.set_nodelay(true)?;
    let (ws, _) = blocking::client(stream, &request, config)?;
    Ok(ws)
}

fn run(url: &str, config: Config, ca: Option<String>) -> Result<(), wsproto::Error> {
    let ws = dial(url, config, ca)?;
    let (mut reader, writer) = ws.split()?;
    // Stdin is read on its own thread so received messages print as they come.
    let sender = std::thread::spawn(move || -> Result<(), wsproto::Error> {
        for line in std::io::stdin().lock().lines() {
            writer.send(line?)?;
        }
        writer.close(CloseCode::NORMAL, "")
    });
    let stdout = std::io::stdout();
    let result = loop {
        match reader.read() {
            Ok(Event::Text(t)) => {
                let mut out = stdout.lock();
                writeln!(out, "{t}")?;
                out.flush()?;
            }
            Ok(Event::Binary(b)) => {
                let mut out = stdout.lock();
                writeln!(out, "<{} bytes of binary>", b.len())?;
                out.flush()?;
            }
            Ok(Event::Ping(_) | Event::Pong(_)) => {}
            Ok(Event::Close(frame)) if frame.code == CloseCode::NORMAL => break Ok(()),
            Ok(Event::Close(frame)) => {
                eprintln!("client: closed with {} {:?}", frame.code, frame.reason);
                break Err(wsproto::Error::Closed);
            }
            Ok(_) => {}
            Err(e) => break Err(e),
        }
    };
    // The sender finishes when stdin ends; if the server closed first, stdin
    // may still be open, so don't wait for it in that case.
    if result.is_ok() && sender.is_finished() {
        sender.join().map_err(|_| wsproto::Error::Closed)??;
    }
    result
}
