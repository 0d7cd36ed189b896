//! The Autobahn|Testsuite client driver: runs every case against the
//! fuzzing server, echoing what it sends, then asks for the reports.
//!
//! ```sh
//! cargo run --release --example autobahn_client -p wsproto -- --url ws://127.0.0.1:9001 --agent wsproto [--deflate]
//! ```
//! With `--deflate` each case offers permessage-deflate with the
//! `client_no_context_takeover` hint and `client_max_window_bits`, so the
//! fuzzing server can accept it with each of its 13.x settings.
//! (`AUTOBAHN_URL` / `AUTOBAHN_AGENT` from `test-client.sh` are used when the
//! flags are absent.)

#[path = "common/autobahn.rs"]
mod autobahn;

use autobahn::Args;
use wsproto::{blocking, CloseCode, Event};

fn main() {
    let args = Args::parse("autobahn_client", "wsproto");
    if let Err(e) = run(&args) {
        eprintln!("autobahn_client: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), wsproto::Error> {
    let (mut ws, _) = blocking::connect(&args.count_url())?;
    let count = autobahn::case_count(ws.read()?)?;
    drop(ws);
    for case in 1..=count {
        let request = wsproto::handshake::ClientRequest::from_url(&args.case_url(case))?;
        let stream = std::net::TcpStream::connect(request.address())?;
        stream.set_nodelay(true)?;
        let Ok((mut ws, _)) = blocking::client(stream, &request, args.config.clone()) else {
            continue;
        };
        loop {
            let sent = match ws.read() {
                Ok(Event::Text(t)) => ws.send(t),
                Ok(Event::Binary(b)) => ws.send(b),
                Ok(Event::Ping(_) | Event::Pong(_)) => Ok(()),
                Ok(Event::Close(_)) | Err(_) => break,
                Ok(_) => Ok(()),
            };
            if sent.is_err() {
                break;
            }
        }
    }
    let (mut ws, _) = blocking::connect(&args.report_url())?;
    ws.close(CloseCode::NORMAL, "")?;
    // Wait for the server's close: the reports are written by then.
    while ws.read().is_ok() {}
    Ok(())
}
