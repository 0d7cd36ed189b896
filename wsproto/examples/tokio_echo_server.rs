//! An async echo server on the tokio adapter: text comes back as text,
//! binary as binary; pings are answered and a close is echoed (both by the
//! library). One task per connection on a current-thread runtime by
//! default, `--threads N` for a multi-thread runtime with N workers.
//!
//! Replies are queued with `feed` and written when the connection runs
//! out of input (`next` flushes before it waits), so a batch of messages
//! read together is echoed with one write.
//!
//! A client has 10 seconds to complete the opening handshake. With
//! `--deflate` it accepts permessage-deflate offers (RFC 7692).
//!
//! ```sh
//! cargo run --release --features tokio --example tokio_echo_server -p wsproto -- --addr 127.0.0.1:9001 [--deflate] [--threads N]
//! ```

use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use wsproto::{deflate::DeflateConfig, tokio as ws, Config};

const USAGE: &str = "usage: tokio_echo_server --addr HOST:PORT [--deflate] [--threads N]";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> std::io::Result<()> {
    let mut addr = "127.0.0.1:9001".to_string();
    let mut threads = 0usize;
    // Batches of echoes are written once 128 KiB are queued (64 KiB by
    // default): the size tokio-tungstenite's default write buffer reaches
    // before it writes, so 8 echoes of 16 KiB go out in one system call.
    let mut config = Config::default().write_high_water(128 << 10);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--deflate" {
            config = config.deflate(DeflateConfig::default());
            continue;
        }
        match (arg.as_str(), args.next()) {
            ("--addr", Some(a)) => addr = a,
            ("--threads", Some(n)) => match n.parse::<usize>() {
                Ok(n) if n > 0 => threads = n,
                _ => usage(),
            },
            _ => usage(),
        }
    }
    let runtime = if threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(serve(addr, config))
}

async fn serve(addr: String, config: Config) -> std::io::Result<()> {
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("listening on {}", listener.local_addr()?);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(echo(stream, config.clone()));
    }
}

async fn echo(stream: TcpStream, config: Config) {
    let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, ws::accept_with(stream, config, &[]));
    let mut ws = match accepted.await {
        Ok(Ok((ws, _request))) => ws,
        Ok(Err(e)) => return eprintln!("tokio_echo_server: handshake: {e}"),
        Err(_) => return eprintln!("tokio_echo_server: handshake timed out"),
    };
    // Ends at the peer's Close (already echoed) or an error (the Close for
    // a violation is already sent); dropping the stream closes TCP
    // (RFC 6455 §7.1.1: the server first).
    while let Some(Ok(message)) = ws.next().await {
        if ws.feed(message).await.is_err() {
            break;
        }
    }
    // Bounded: a peer that stopped reading does not keep the task.
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.flush()).await;
}

fn usage() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(2);
}
