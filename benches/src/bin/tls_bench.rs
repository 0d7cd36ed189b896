//! The client side of the wss-vs-ws measure (benches/scripts/tls.sh runs it
//! against wsproto's echo_server example, each pinned to its own core).
//!
//! ```sh
//! tls_bench handshakes --url wss://localhost:9443/ --ca ca.pem --secs 5
//! tls_bench echo --url wss://localhost:9443/ --ca ca.pem --size 16384 --secs 5
//! ```
//!
//! `handshakes`: one connection after another, each a TCP connect, the TLS
//! handshake for `wss://` and the WebSocket upgrade, then dropped. Prints
//! handshakes/s. Each TLS handshake is a full one (a new client's: session
//! resumption off) unless `--resume` is given (rustls' default client
//! behaviour: TLS 1.3 tickets from the previous connection, so no
//! certificate is sent, signed or verified).
//!
//! `echo`: one connection; batches of messages of `--size` bytes sent one
//! `send` each, then their echoes read back. Prints messages/s and MB/s of
//! payload one way.
//!
//! Each prints the client's CPU time (user + system) too: on a shared
//! machine CPU time per operation moves less than the wall-clock rate.

use std::sync::Arc;
use std::time::{Duration, Instant};
use wsproto::tls::rustls;
use wsproto::{blocking, tls, Bytes, Config, Event};

fn usage() -> ! {
    eprintln!("usage: tls_bench handshakes|echo --url URL [--ca FILE] [--secs S] [--size BYTES] [--resume]");
    std::process::exit(2);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| usage());
    let (mut url, mut ca, mut secs, mut size) = (None, None, 5.0, 20usize);
    let mut resume = false;
    while let Some(arg) = args.next() {
        if arg == "--resume" {
            resume = true;
            continue;
        }
        let value = args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--url" => url = Some(value),
            "--ca" => ca = Some(value),
            "--secs" => secs = value.parse().unwrap_or_else(|_| usage()),
            "--size" => size = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let url = url.unwrap_or_else(|| usage());
    let mut tls = match ca {
        Some(file) => tls::client_config_with_ca(file).expect("the CA file"),
        None => tls::client_config(),
    };
    if !resume {
        let mut config = (*tls).clone();
        config.resumption = rustls::client::Resumption::disabled();
        tls = Arc::new(config);
    }
    let run = Duration::from_secs_f64(secs);
    match mode.as_str() {
        "handshakes" => handshakes(&url, tls, run),
        "echo" => echo(&url, tls, size, run),
        _ => usage(),
    }
}

/// This process's CPU time so far (user + system), from /proc/self/stat:
/// the machine is shared, so wall-clock rates move with others' load and
/// CPU time per operation is the steadier figure.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is the
    // 1st, utime the 12th, stime the 13th (proc(5)).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // Clock ticks are 1/100 s on Linux (USER_HZ).
    f.iter().sum::<f64>() / 100.0
}

fn handshakes(url: &str, tls: Arc<rustls::ClientConfig>, run: Duration) {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < run {
        let (ws, _) = blocking::connect_with_tls(url, Config::default(), Arc::clone(&tls))
            .expect("handshake");
        drop(ws);
        n += 1;
    }
    let took = start.elapsed().as_secs_f64();
    println!(
        "handshakes {n} in {took:.2} s: {:.0}/s cpu {:.2} s",
        n as f64 / took,
        cpu_secs()
    );
}

fn echo(url: &str, tls: Arc<rustls::ClientConfig>, size: usize, run: Duration) {
    let (mut ws, _) = blocking::connect_with_tls(url, Config::default(), tls).expect("handshake");
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let msg = Bytes::from(vec![b'x'; size]);
    // A batch stays well under the loopback socket buffers, so the server's
    // echoes never block it while we are still sending.
    let batch = (512 * 1024 / size.max(1)).clamp(1, 256);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < run {
        for _ in 0..batch {
            ws.send(msg.clone()).expect("send");
        }
        let mut got = 0;
        while got < batch {
            match ws.read().expect("read") {
                Event::Binary(b) => {
                    assert_eq!(b.len(), size);
                    got += 1;
                }
                Event::Ping(_) | Event::Pong(_) => {}
                e => panic!("unexpected {e:?}"),
            }
        }
        n += batch as u64;
    }
    let took = start.elapsed().as_secs_f64();
    let cpu = cpu_secs();
    println!(
        "echo {size} B: {n} in {took:.2} s: {:.0} msg/s, {:.1} MB/s cpu {cpu:.2} s",
        n as f64 / took,
        (n as f64 * size as f64) / took / 1e6
    );
    let _ = ws.close(wsproto::CloseCode::NORMAL, "");
}
