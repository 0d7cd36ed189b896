//! fastwebsockets echo server, a peer of issue 15's async echo benchmark
//! (`benches/scripts/echo.sh`): text back as text, binary as binary, through
//! its `FragmentCollector` (whole messages, as the other servers hand out),
//! on a current-thread runtime. The library answers pings and echoes the
//! close. Each echo is one `write_frame`, as the crate's own echo example
//! does. No batched mode: `write_frame` writes at once, and `read_frame` is
//! not cancellation-safe (it consumes a header's first bytes before awaiting
//! the rest), so it cannot be polled to see whether more is ready.
//!
//! The opening handshake is a minimal hand-written HTTP upgrade (RFC 6455
//! §4.2) followed by `WebSocket::after_handshake`, to stay off hyper: it is
//! not measured, only the echo loop is.
//!
//! ```sh
//! cargo run --release -p benches --example fastwebsockets_echo -- --addr 127.0.0.1:9003
//! ```

mod common;

use fastwebsockets::{FragmentCollector, OpCode, Role, WebSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most a request head may take.
const MAX_HEAD: usize = 8 << 10;

fn main() -> std::io::Result<()> {
    let o = common::opts("fastwebsockets_echo", false);
    common::serve("fastwebsockets_echo", o, echo)
}

async fn echo(mut stream: TcpStream, _: common::Opts) {
    if upgrade(&mut stream).await.is_err() {
        return;
    }
    let mut ws = FragmentCollector::new(WebSocket::after_handshake(stream, Role::Server));
    loop {
        let Ok(frame) = ws.read_frame().await else {
            return;
        };
        let data = match frame.opcode {
            OpCode::Text | OpCode::Binary => true,
            // The reply went out before read_frame returned it.
            OpCode::Close => return,
            _ => false,
        };
        if data && ws.write_frame(frame).await.is_err() {
            return;
        }
    }
}

/// Reads the request head and answers 101. A client that sends frames
/// before it has the 101 is refused (the benchmark's never does): bytes past
/// the head could not be handed to `after_handshake`.
async fn upgrade(stream: &mut TcpStream) -> std::io::Result<()> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let end = loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(bad("closed before the request head ended"));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > MAX_HEAD {
            return Err(bad("request head too long"));
        }
    };
    if end != head.len() {
        return Err(bad("bytes after the request head"));
    }
    let text = std::str::from_utf8(&head).map_err(|_| bad("request head not UTF-8"))?;
    let key = text
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-key"))
        .map(|(_, v)| v.trim())
        .ok_or_else(|| bad("no Sec-WebSocket-Key"))?;
    let accept = wsproto::handshake::accept_key(key.as_bytes());
    let reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(reply.as_bytes()).await
}
