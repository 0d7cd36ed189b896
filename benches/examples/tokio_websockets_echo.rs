//! tokio-websockets echo server, a peer of issue 15's async echo benchmark
//! (`benches/scripts/echo.sh`): text back as text, binary as binary, on a
//! current-thread runtime, default `Config` and `Limits`, as the crate's own
//! echo example does (`send` per echo). The library answers pings and
//! echoes the close.
//!
//! No `--batch` mode: its stream flushes whatever is queued each time it is
//! polled for the next message, so `feed` and one flush for what one read
//! brought still writes once per message (measured: same echoes per read
//! as `send`).
//!
//! ```sh
//! cargo run --release -p benches --example tokio_websockets_echo -- --addr 127.0.0.1:9004
//! ```

mod common;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_websockets::ServerBuilder;

fn main() -> std::io::Result<()> {
    let o = common::opts("tokio_websockets_echo", false);
    common::serve("tokio_websockets_echo", o, echo)
}

async fn echo(stream: TcpStream, _: common::Opts) {
    let Ok((_, mut ws)) = ServerBuilder::new().accept(stream).await else {
        return;
    };
    while let Some(Ok(m)) = ws.next().await {
        if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
            return;
        }
    }
}
