//! A line client: each stdin line goes out as a text message, each message
//! received is printed on its own line; at the end of stdin it closes with
//! 1000 and exits 0 once the closing handshake is done.
//!
//! ```sh
//! cargo run --example client -p wsproto -- --url ws://127.0.0.1:9001/ [--deflate]
//! ```
//! `--deflate` offers permessage-deflate (RFC 7692).

use std::io::{BufRead, Write};
use wsproto::{
    blocking, deflate::DeflateConfig, handshake::ClientRequest, CloseCode, Config, Event,
};

fn main() {
    let mut url = "ws://127.0.0.1:9001/".to_string();
    let mut config = Config::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--deflate" {
            config = config.deflate(DeflateConfig::default());
            continue;
        }
        match (arg.as_str(), args.next()) {
            ("--url", Some(u)) => url = u,
            _ => {
                eprintln!("usage: client [--url ws://HOST:PORT/PATH] [--deflate]");
                std::process::exit(2);
            }
        }
    }
    if let Err(e) = run(&url, config) {
        eprintln!("client: {e}");
        std::process::exit(1);
    }
}

fn run(url: &str, config: Config) -> Result<(), wsproto::Error> {
    let request = ClientRequest::from_url(url)?;
    let stream = std::net::TcpStream::connect(request.address())?;
    stream.set_nodelay(true)?;
    let (ws, _) = blocking::client(stream, &request, config)?;
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
