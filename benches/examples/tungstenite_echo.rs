//! tokio-tungstenite echo server, a peer of issue 15's async echo benchmark
//! (`benches/scripts/echo.sh`): text back as text, binary as binary, on a
//! current-thread runtime. tungstenite answers pings and echoes the close.
//!
//! By default each echo is `send` (write and flush). `--batch` feeds every
//! message already received and flushes when no more is ready: one write for
//! what one read brought. That is what `StreamExt::forward` does in the
//! crate's own echo-server example, here without `split` and its lock.
//!
//! ```sh
//! cargo run --release -p benches --example tungstenite_echo -- --addr 127.0.0.1:9002 [--batch]
//! ```

mod common;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn main() -> std::io::Result<()> {
    let o = common::opts("tungstenite_echo", true);
    common::serve("tungstenite_echo", o, echo)
}

fn is_data(m: &Message) -> bool {
    m.is_text() || m.is_binary()
}

async fn echo(stream: TcpStream, o: common::Opts) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    // A Close is not data: the loop goes on reading, which sends the echoed
    // Close, until the stream ends.
    if !o.batch {
        while let Some(Ok(m)) = ws.next().await {
            if is_data(&m) && ws.send(m).await.is_err() {
                return;
            }
        }
        return;
    }
    while let Some(Ok(m)) = ws.next().await {
        if is_data(&m) && ws.feed(m).await.is_err() {
            return;
        }
        // Whatever is already readable, without waiting.
        while let Some(next) = ws.next().now_or_never() {
            match next {
                Some(Ok(m)) => {
                    if is_data(&m) && ws.feed(m).await.is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}
