//! permessage-deflate against Python `websockets` (deflate on by default
//! there), both roles. Needs a Python with `websockets`: the one named by
//! `WSPROTO_INTEROP_PYTHON`, else `python3` if it has the module; without
//! one the tests say so and pass (CI installs it: see the report).
#![cfg(feature = "deflate")]

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wsproto::deflate::DeflateConfig;
use wsproto::handshake::ClientRequest;
use wsproto::{blocking, CloseCode, Config, Event};

fn python() -> Option<String> {
    let candidates = std::env::var("WSPROTO_INTEROP_PYTHON")
        .ok()
        .into_iter()
        .chain(["python3".to_string()]);
    for py in candidates {
        let ok = Command::new(&py)
            .args(["-c", "import websockets.sync.client"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(py);
        }
    }
    eprintln!("no Python with `websockets`: interop not run (set WSPROTO_INTEROP_PYTHON)");
    None
}

/// Waits for `child` at most `limit`, killing it past that.
fn wait(mut child: Child, limit: Duration) -> std::process::Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Messages of every size class: tiny (sent plain), chat-sized, large.
const SIZES: [usize; 6] = [0, 5, 100, 1000, 70_000, 300_000];

const PY_CLIENT: &str = r#"
import sys
from websockets.sync.client import connect
with connect(sys.argv[1], max_size=2**22, open_timeout=10, close_timeout=10) as ws:
    print("ext", ws.response.headers.get("Sec-WebSocket-Extensions"), flush=True)
    for n in [int(x) for x in sys.argv[2].split(",")]:
        msg = ("chat message %d " % n) * (n // 16 + 1)
        msg = msg[:n]
        ws.send(msg)
        assert ws.recv(timeout=10) == msg, n
        data = bytes(i % 7 for i in range(n))
        ws.send(data)
        assert ws.recv(timeout=10) == data, n
print("ok", flush=True)
"#;

#[test]
fn python_websockets_client_against_our_server() {
    let Some(py) = python() else { return };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let config = Config::default()
            .deflate(DeflateConfig::default())
            .origin_policy(wsproto::handshake::OriginPolicy::any());
        let (mut ws, _) = blocking::accept_with(stream, config, &[]).unwrap();
        assert!(ws.connection().deflate_enabled(), "negotiated");
        loop {
            match ws.read() {
                Ok(Event::Text(t)) => ws.send(t).unwrap(),
                Ok(Event::Binary(b)) => ws.send(b).unwrap(),
                Ok(Event::Close(_)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    let sizes: Vec<String> = SIZES.iter().map(|n| n.to_string()).collect();
    let child = Command::new(&py)
        .args(["-c", PY_CLIENT, &format!("ws://{addr}/"), &sizes.join(",")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait(child, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ext permessage-deflate"), "{stdout}");
    assert!(stdout.contains("ok"), "{stdout}");
    server.join().unwrap();
}

const PY_SERVER: &str = r#"
from websockets.sync.server import serve
def echo(ws):
    for msg in ws:
        ws.send(msg)
with serve(echo, "127.0.0.1", 0, max_size=2**22) as server:
    print(server.socket.getsockname()[1], flush=True)
    server.serve_forever()
"#;

#[test]
fn our_client_against_python_websockets_server() {
    let Some(py) = python() else { return };
    let mut child = Command::new(&py)
        .args(["-c", PY_SERVER])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let result = std::panic::catch_unwind(|| {
        let port: u16 = line.trim().parse().expect("the server's port");
        let request = ClientRequest::new("127.0.0.1", port, "/").unwrap();
        let stream = TcpStream::connect(request.address()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let config = Config::default().deflate(DeflateConfig::default());
        let (mut ws, resp) = blocking::client(stream, &request, config).unwrap();
        assert!(resp.deflate.is_some(), "negotiated: {:?}", resp.extensions);
        for n in SIZES {
            let text = "chat message ".repeat(n / 13 + 1)[..n].to_string();
            ws.send(text.as_str()).unwrap();
            assert_eq!(ws.read().unwrap(), Event::Text(text.into()));
            let data: Vec<u8> = (0..n).map(|i| (i % 7) as u8).collect();
            ws.send(data.as_slice()).unwrap();
            assert_eq!(ws.read().unwrap(), Event::Binary(data.into()));
        }
        ws.close(CloseCode::NORMAL, "").unwrap();
        while !matches!(ws.read(), Ok(Event::Close(_)) | Err(_)) {}
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
