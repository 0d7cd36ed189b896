//! What the async echo peers share: the command line, a current-thread tokio
//! runtime and the accept loop, so the three servers differ only in their
//! per-connection echo loop (issue 15's measurement, `scripts/echo.sh`).

use std::future::Future;
use tokio::net::{TcpListener, TcpStream};

/// The peer's options: `--addr HOST:PORT [--batch]`.
#[derive(Debug, Clone)]
pub struct Opts {
    pub addr: String,
    /// Echo every message already received before one flush (Stream + Sink
    /// peers), instead of `send` (write + flush) per message.
    pub batch: bool,
}

/// Parses the command line; exits with a usage line on anything else.
pub fn opts(name: &str, batch_allowed: bool) -> Opts {
    let mut o = Opts {
        addr: "127.0.0.1:9001".into(),
        batch: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--addr", Some(v)) => o.addr = v,
            ("--batch", None) if batch_allowed => o.batch = true,
            _ => {
                let batch = if batch_allowed { " [--batch]" } else { "" };
                eprintln!("usage: {name} --addr HOST:PORT{batch}");
                std::process::exit(2);
            }
        }
    }
    o
}

/// Serves `handler` for every accepted connection on a current-thread
/// runtime (one task per connection), printing `listening on ADDR` to
/// stderr once bound. Sockets get `TCP_NODELAY`, as the wsproto servers set.
pub fn serve<F, Fut>(name: &str, o: Opts, handler: F) -> std::io::Result<()>
where
    F: Fn(TcpStream, Opts) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async {
        let listener = TcpListener::bind(&o.addr).await?;
        eprintln!("{name}: listening on {}", listener.local_addr()?);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(handler(stream, o.clone()));
        }
    })
}
