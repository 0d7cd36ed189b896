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

use tokio::net::TcpStream;
use wsproto::{deflate::DeflateConfig, tokio as ws, CloseCode, Config, Event};

fn main() {
    let mut url = std::env::var("AUTOBAHN_URL").unwrap_or_else(|_| "ws://127.0.0.1:9001".into());
    let mut agent = std::env::var("AUTOBAHN_AGENT").unwrap_or_else(|_| "wsproto-tokio".into());
    let mut config = Config::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--deflate" {
            config = config.deflate(DeflateConfig::default().no_context_takeover(true));
            continue;
        }
        match (arg.as_str(), args.next()) {
            ("--url", Some(u)) => url = u,
            ("--agent", Some(a)) => agent = a,
            _ => {
                eprintln!(
                    "usage: tokio_autobahn_client [--url ws://HOST:PORT] [--agent NAME] [--deflate]"
                );
                std::process::exit(2);
            }
        }
    }
    let url = url.trim_end_matches('/').to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(e) = runtime.block_on(run(&url, &agent, &config)) {
        eprintln!("tokio_autobahn_client: {e}");
        std::process::exit(1);
    }
}

async fn run(url: &str, agent: &str, config: &Config) -> Result<(), wsproto::Error> {
    let (mut ws, _) = ws::connect(&format!("{url}/getCaseCount")).await?;
    let count: u32 = match ws.read().await? {
        Event::Text(t) => t.parse().map_err(|_| wsproto::Error::Closed)?,
        _ => return Err(wsproto::Error::Closed),
    };
    drop(ws);
    for case in 1..=count {
        let case_url = format!("{url}/runCase?case={case}&agent={agent}");
        let request = wsproto::handshake::ClientRequest::from_url(&case_url)?;
        let stream = TcpStream::connect(request.address()).await?;
        stream.set_nodelay(true)?;
        let Ok((mut ws, _)) = ws::client(stream, &request, config.clone()).await else {
            continue;
        };
        while let Some(Ok(message)) = ws.next().await {
            if ws.send(message).await.is_err() {
                break;
            }
        }
    }
    let (mut ws, _) = ws::connect(&format!("{url}/updateReports?agent={agent}")).await?;
    ws.close(CloseCode::NORMAL, "").await?;
    // Wait for the server's close: the reports are written by then.
    while ws.read().await.is_ok() {}
    Ok(())
}
