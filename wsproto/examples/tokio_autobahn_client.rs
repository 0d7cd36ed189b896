//! The Autobahn|Testsuite client driver on the tokio adapter (the async
//! twin of `autobahn_client`): runs every case against the fuzzing
//! server, echoing what it sends, then asks for the reports.
//!
//! ```sh
//! cargo run --release --features tokio --example tokio_autobahn_client -p wsproto -- --url ws://127.0.0.1:9001 --agent wsproto-tokio [--deflate]
//! ```
//! With `--deflate` each case offers permessage-deflate with the
//! `client_no_context_takeover` hint and `client_max_window_bits`, so the
//! fuzzing server can accept it with each of its 13.x settings.
//! (`AUTOBAHN_URL` / `AUTOBAHN_AGENT` from `test-client.sh` are used when the
//! flags are absent.)

#[path = "common/autobahn.rs"]
mod autobahn;

use autobahn::Args;
use tokio::net::TcpStream;
use wsproto::{tokio as ws, CloseCode};

fn main() {
    let args = Args::parse("tokio_autobahn_client", "wsproto-tokio");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(e) = runtime.block_on(run(&args)) {
        eprintln!("tokio_autobahn_client: {e}");
        std::process::exit(1);
    }
}

async fn run(args: &Args) -> Result<(), wsproto::Error> {
    let (mut ws, _) = ws::connect(&args.count_url()).await?;
    let count = autobahn::case_count(ws.read().await?)?;
    drop(ws);
    for case in 1..=count {
        let request = wsproto::handshake::ClientRequest::from_url(&args.case_url(case))?;
        let stream = TcpStream::connect(request.address()).await?;
        stream.set_nodelay(true)?;
        let Ok((mut ws, _)) = ws::client(stream, &request, args.config.clone()).await else {
            continue;
        };
        while let Some(Ok(message)) = ws.next().await {
            if ws.send(message).await.is_err() {
                break;
            }
        }
    }
    let (mut ws, _) = ws::connect(&args.report_url()).await?;
    ws.close(CloseCode::NORMAL, "").await?;
    // Wait for the server's close: the reports are written by then.
    while ws.read().await.is_ok() {}
    Ok(())
}
