//! permessage-deflate against Python `websockets` (deflate on by default
//! there), both roles. Needs a Python with `websockets`: the one named by
//! `WSPROTO_INTEROP_PYTHON`, else `python3` if it has the module; without
//! one the tests say so and pass (CI installs it: see the report).
#![cfg(feature = "deflate")]

mod common;

use std::net::{TcpListener, TcpStream};
use std::time::Duration;
use wsproto::deflate::DeflateConfig;
use wsproto::handshake::ClientRequest;
use wsproto::{blocking, CloseCode, Config, Event};

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
    let Some(py) = common::python("websockets.sync.client", "interop") else {
        return;
    };
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
    let url = format!("ws://{addr}/");
    let stdout = common::run_client(
        &py,
        PY_CLIENT,
        &[&url, &sizes.join(",")],
        Duration::from_secs(60),
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
    let Some(py) = common::python("websockets.sync.client", "interop") else {
        return;
    };
    common::with_server(&py, PY_SERVER, &[], |port| {
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
}
