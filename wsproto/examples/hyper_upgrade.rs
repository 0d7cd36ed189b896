//! A WebSocket accepted through hyper 1.x: hyper serves HTTP, answers the
//! upgrade with 101, and hands the connection over; `wsproto::tokio`
//! runs the WebSocket on it (`from_raw`). The same works behind axum,
//! whose `Upgraded` connection is hyper's.
//!
//! Every path echoes WebSocket messages; a plain GET gets a short page.
//!
//! ```sh
//! cargo run --features tokio --example hyper_upgrade -p wsproto -- --addr 127.0.0.1:9002
//! ```

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use wsproto::{handshake, tokio as ws, Config, Role};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut addr = "127.0.0.1:9002".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(a)) => addr = a,
            _ => {
                eprintln!("usage: hyper_upgrade [--addr HOST:PORT]");
                std::process::exit(2);
            }
        }
    }
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(handle);
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                eprintln!("hyper_upgrade: {e}");
            }
        });
    }
}

/// A WebSocket upgrade (RFC 6455 §4.2.1) gets 101 and an echo task; any
/// other request a page.
async fn handle(mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let wants_ws = header(UPGRADE).is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && header(CONNECTION).is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
        && header(SEC_WEBSOCKET_VERSION) == Some("13");
    let key = header(SEC_WEBSOCKET_KEY).map(|k| handshake::accept_key(k.as_bytes()));
    let Some(accept) = key.filter(|_| wants_ws) else {
        return Ok(Response::new(Full::new(Bytes::from_static(
            b"a WebSocket echo server: connect with ws://\n",
        ))));
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => echo(upgraded).await,
            Err(e) => eprintln!("hyper_upgrade: upgrade failed: {e}"),
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    Ok(response)
}

async fn echo(upgraded: hyper::upgrade::Upgraded) {
    // Back to the TcpStream when hyper allows it (it can then be split
    // without a lock); bytes hyper read past the request are handed over.
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let stream = parts.io.into_inner();
            let ws = ws::from_raw(stream, Role::Server, Config::default(), &parts.read_buf);
            let (mut reader, mut writer) = ws.split();
            while let Some(Ok(message)) = reader.next().await {
                if writer.send(message).await.is_err() {
                    break;
                }
            }
        }
        Err(upgraded) => {
            // Any other transport: wsproto runs over hyper's IO as it is.
            let mut ws = ws::from_raw(TokioIo::new(upgraded), Role::Server, Config::default(), &[]);
            while let Some(Ok(message)) = ws.next().await {
                if ws.send(message).await.is_err() {
                    break;
                }
            }
        }
    }
}
