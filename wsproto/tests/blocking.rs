//! The blocking API over real sockets on 127.0.0.1: our client against our
//! server, every test bounded by timeouts.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};
use wsproto::blocking::{self, MaybeTlsStream, WebSocket};
use wsproto::{Bytes, CloseCode, Config, Error, Event, HandshakeError, Opcode, ProtocolError};

const LIMIT: Duration = Duration::from_secs(10);

/// Spawns a one-connection server running `handler` on the accepted socket.
fn serve<T: Send + 'static>(
    config: Config,
    handler: impl FnOnce(Result<WebSocket<TcpStream>, Error>) -> T + Send + 'static,
) -> (String, thread::JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(LIMIT)).unwrap();
        handler(blocking::accept_with(stream, config, &["chat"]).map(|(ws, _)| ws))
    });
    (url, handle)
}

fn echo(ws: Result<WebSocket<TcpStream>, Error>) -> Result<Vec<Event>, Error> {
    let mut ws = ws?;
    let mut seen = Vec::new();
    loop {
        let event = ws.read()?;
        seen.push(event.clone());
        match event {
            Event::Text(t) => ws.send(t)?,
            Event::Binary(b) => ws.send(b)?,
            Event::Close(_) => return Ok(seen),
            _ => {}
        }
    }
}

fn connect(url: &str) -> WebSocket<MaybeTlsStream> {
    let (ws, _) = blocking::connect(url).unwrap();
    ws.get_ref().set_read_timeout(Some(LIMIT)).unwrap();
    ws
}

#[test]
fn text_and_binary_up_to_several_mib() {
    let (url, server) = serve(Config::default(), echo);
    let mut ws = connect(&url);
    let big_text: String = "ß€😀abc".chars().cycle().take(1 << 20).collect(); // ~3.5 MiB
    let big_binary: Vec<u8> = (0..(5 << 20)).map(|i: u32| (i % 251) as u8).collect();
    for msg in [
        wsproto::Message::from("small"),
        big_text.clone().into(),
        big_binary.clone().into(),
        Vec::new().into(),
    ] {
        ws.send(msg.clone()).unwrap();
        let want = match msg {
            wsproto::Message::Text(t) => Event::Text(t),
            wsproto::Message::Binary(b) => Event::Binary(b),
        };
        assert!(ws.read().unwrap() == want);
    }
    ws.close(CloseCode::NORMAL, "done").unwrap();
    assert!(matches!(ws.read().unwrap(), Event::Close(f) if f.code == CloseCode::NORMAL));
    assert!(matches!(ws.read(), Err(Error::Closed)));
    let seen = server.join().unwrap().unwrap();
    assert!(matches!(seen.last(), Some(Event::Close(f)) if f.reason == "done"));
}

#[test]
fn fragmented_send_with_a_ping_in_the_middle() {
    let (url, server) = serve(Config::default(), echo);
    let mut ws = connect(&url);
    ws.send_fragment(Opcode::Text, "€".as_bytes()[..1].as_ref(), false)
        .unwrap();
    ws.ping(b"mid").unwrap();
    ws.send_fragment(Opcode::Continuation, &"€".as_bytes()[1..], false)
        .unwrap();
    ws.send_fragment(Opcode::Continuation, b"!", true).unwrap();
    assert_eq!(ws.read().unwrap(), Event::Pong(Bytes::from_static(b"mid")));
    assert_eq!(ws.read().unwrap(), Event::Text("€!".into()));
    ws.close(CloseCode::NORMAL, "").unwrap();
    assert!(matches!(ws.read().unwrap(), Event::Close(_)));
    let seen = server.join().unwrap().unwrap();
    assert_eq!(seen[0], Event::Ping(Bytes::from_static(b"mid")));
    assert_eq!(seen[1], Event::Text("€!".into()));
}

#[test]
fn server_initiated_close() {
    let (url, server) = serve(Config::default(), |ws| -> Result<Event, Error> {
        let mut ws = ws?;
        ws.close(CloseCode::GOING_AWAY, "shutting down")?;
        ws.read()
    });
    let mut ws = connect(&url);
    let got = ws.read().unwrap();
    assert!(
        matches!(&got, Event::Close(f) if f.code == CloseCode::GOING_AWAY && f.reason == "shutting down")
    );
    assert!(
        matches!(server.join().unwrap().unwrap(), Event::Close(f) if f.code == CloseCode::GOING_AWAY)
    );
}

#[test]
fn message_over_the_limit_is_closed_with_1009() {
    let (url, server) = serve(Config::default().max_message_size(1000), echo);
    let mut ws = connect(&url);
    ws.send(vec![0u8; 1001]).unwrap();
    assert!(matches!(ws.read().unwrap(), Event::Close(f) if f.code == CloseCode::MESSAGE_TOO_BIG));
    assert!(matches!(
        server.join().unwrap(),
        Err(Error::Protocol(ProtocolError::MessageTooLarge {
            len: 1001,
            max: 1000
        }))
    ));
}

#[test]
fn frame_over_the_limit_is_closed_with_1009() {
    let (url, server) = serve(Config::default().max_frame_size(100), echo);
    let mut ws = connect(&url);
    ws.send_fragment(Opcode::Binary, &[0; 50], false).unwrap();
    ws.send_fragment(Opcode::Continuation, &[0; 101], true)
        .unwrap();
    assert!(matches!(ws.read().unwrap(), Event::Close(f) if f.code.as_u16() == 1009));
    assert!(matches!(
        server.join().unwrap(),
        Err(Error::Protocol(ProtocolError::FrameTooLarge { .. }))
    ));
}

#[test]
fn fragment_limit_over_the_wire() {
    let (url, server) = serve(Config::default().max_fragments(4), echo);
    let mut ws = connect(&url);
    ws.send_fragment(Opcode::Binary, b"a", false).unwrap();
    for _ in 0..4 {
        ws.send_fragment(Opcode::Continuation, b"b", false).unwrap();
    }
    assert!(matches!(ws.read().unwrap(), Event::Close(f) if f.code.as_u16() == 1009));
    assert!(matches!(
        server.join().unwrap(),
        Err(Error::Protocol(ProtocolError::TooManyFragments { max: 4 }))
    ));
}

/// Sends a raw request and returns the server's whole answer.
fn raw_exchange(config: Config, request: &[u8]) -> (String, Error) {
    let (url, server) = serve(config, |ws| ws.expect_err("handshake must fail"));
    let mut s = TcpStream::connect(url.trim_start_matches("ws://").trim_end_matches('/')).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    (
        String::from_utf8_lossy(&answer).into_owned(),
        server.join().unwrap(),
    )
}

#[test]
fn bad_handshakes_get_complete_http_answers() {
    let base = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let (answer, err) = raw_exchange(
        Config::default(),
        base.replace("Version: 13", "Version: 7").as_bytes(),
    );
    assert!(
        answer.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
        "{answer}"
    );
    assert!(answer.contains("Sec-WebSocket-Version: 13\r\n"));
    assert!(matches!(err, Error::Handshake(HandshakeError::UnsupportedVersion(v)) if v == "7"));

    let (answer, err) = raw_exchange(
        Config::default(),
        base.replace("Upgrade: websocket\r\n", "").as_bytes(),
    );
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(answer.ends_with("missing Upgrade header\n"), "{answer}");
    assert!(matches!(
        err,
        Error::Handshake(HandshakeError::MissingHeader("Upgrade"))
    ));

    // An oversized head trickling in gets 431, without waiting for its end.
    let big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(2000));
    let (answer, _) = raw_exchange(Config::default().max_handshake_size(1024), big.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");

    // A client sees the status of a refused upgrade.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let t = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0; 1024];
        let _ = s.read(&mut buf);
        s.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope")
            .unwrap();
    });
    let err = blocking::connect(&format!("ws://{addr}/")).unwrap_err();
    assert!(
        matches!(err, Error::Handshake(HandshakeError::Status { status: 403, ref body }) if body == "nope"),
        "{err}"
    );
    t.join().unwrap();
}

#[test]
fn handshake_bytes_trickling_in_one_at_a_time() {
    let (url, server) = serve(Config::default(), echo);
    let mut s = TcpStream::connect(url.trim_start_matches("ws://").trim_end_matches('/')).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let req = wsproto::handshake::ClientRequest::new("x", 80, "/").unwrap();
    for b in req.to_bytes() {
        s.write_all(&[b]).unwrap();
    }
    let mut ws = WebSocket::from_raw(s, wsproto::Role::Client, Config::default(), &[]);
    // Skip the 101 head by hand: read until the blank line.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        ws.get_mut().read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "));
    ws.send("after trickle").unwrap();
    assert_eq!(ws.read().unwrap(), Event::Text("after trickle".into()));
    ws.close(CloseCode::NORMAL, "").unwrap();
    let _ = ws.read();
    server.join().unwrap().unwrap();
}

#[test]
fn subprotocol_is_negotiated() {
    let (url, server) = serve(Config::default(), echo);
    let request = wsproto::handshake::ClientRequest::from_url(&url)
        .unwrap()
        .protocols(&["other", "chat"])
        .unwrap();
    let stream = TcpStream::connect(request.address()).unwrap();
    let (mut ws, resp) = blocking::client(stream, &request, Config::default()).unwrap();
    assert_eq!(resp.protocol.as_deref(), Some("chat"));
    ws.close(CloseCode::NORMAL, "").unwrap();
    let _ = ws.read();
    server.join().unwrap().unwrap();
}

#[test]
fn keepalive_gives_up_on_a_silent_peer() {
    let (url, server) = serve(Config::default(), |ws| {
        let mut ws = ws.unwrap();
        ws.set_keepalive(Duration::from_millis(100), Duration::from_millis(200));
        let start = Instant::now();
        (ws.read(), start.elapsed())
    });
    // Handshake, then never read: pings go unanswered.
    let (ws, _) = blocking::connect(&url).unwrap();
    let (result, elapsed) = server.join().unwrap();
    assert!(matches!(result, Err(Error::PongTimeout(_))), "{result:?}");
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    drop(ws);
}

#[test]
fn keepalive_is_satisfied_by_a_live_peer() {
    let (url, server) = serve(Config::default(), |ws| {
        let mut ws = ws.unwrap();
        ws.set_keepalive(Duration::from_millis(50), Duration::from_millis(300));
        let mut pongs = 0;
        loop {
            match ws.read() {
                Ok(Event::Pong(_)) => pongs += 1,
                Ok(Event::Text(t)) => assert_eq!(t, "bye"),
                Ok(Event::Close(_)) => return pongs,
                other => panic!("{other:?}"),
            }
        }
    });
    let (ws, _) = blocking::connect(&url).unwrap();
    let (mut reader, writer) = ws.split().unwrap();
    // The reader answers pings (through the writer) while this thread waits.
    let t = thread::spawn(move || while reader.read().is_ok() {});
    thread::sleep(Duration::from_millis(700));
    writer.send("bye").unwrap();
    writer.close(CloseCode::NORMAL, "").unwrap();
    let pongs = server.join().unwrap();
    assert!(pongs >= 3, "pongs {pongs}");
    t.join().unwrap();
}

#[test]
fn idle_timeout() {
    let (url, server) = serve(Config::default(), |ws| {
        let mut ws = ws.unwrap();
        ws.set_idle_timeout(Some(Duration::from_millis(150)));
        ws.read()
    });
    let _ws = connect(&url);
    let err = server.join().unwrap().unwrap_err();
    assert!(
        matches!(err, Error::Io(ref e) if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)),
        "{err}"
    );
}

#[test]
fn write_timeout_bounds_a_send_to_a_peer_that_never_reads() {
    let (url, server) = serve(Config::default(), |ws| {
        let mut ws = ws.unwrap();
        ws.set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let big = vec![0u8; 1 << 20];
        let start = Instant::now();
        // Socket buffers hold a few MiB at most; the peer reads nothing.
        let result = (0..64).try_for_each(|_| ws.send(big.clone()));
        (
            result,
            start.elapsed(),
            ws.connection().pending_output().len(),
        )
    });
    let silent = connect(&url); // never reads
    let (result, elapsed, pending) = server.join().unwrap();
    assert!(
        matches!(&result, Err(Error::Io(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "{result:?}"
    );
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert!(pending > 0, "the unwritten bytes stay queued");
    drop(silent);
}

#[test]
fn callers_own_socket_timeout_is_respected() {
    let (url, server) = serve(Config::default(), |ws| {
        let mut ws = ws.unwrap();
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let start = Instant::now();
        (ws.read(), start.elapsed())
    });
    let _ws = connect(&url);
    let (result, elapsed) = server.join().unwrap();
    assert!(matches!(result, Err(Error::Io(_))), "{result:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[test]
fn split_halves_on_two_threads() {
    let (url, server) = serve(Config::default(), echo);
    let (ws, _) = blocking::connect(&url).unwrap();
    let (mut reader, writer) = ws.split().unwrap();
    let w2 = writer.clone();
    let sender = thread::spawn(move || {
        for i in 0..200 {
            w2.send(format!("msg {i}")).unwrap();
        }
        w2.ping(b"last").unwrap();
    });
    let mut got = 0;
    loop {
        match reader.read().unwrap() {
            Event::Text(t) => {
                assert_eq!(t, format!("msg {got}").as_str());
                got += 1;
            }
            Event::Pong(p) => {
                assert_eq!(&p[..], b"last");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, 200);
    sender.join().unwrap();
    writer.close(CloseCode::NORMAL, "").unwrap();
    assert!(matches!(reader.read().unwrap(), Event::Close(_)));
    assert!(matches!(writer.send("too late"), Err(Error::Closed)));
    server.join().unwrap().unwrap();
}

#[test]
fn peer_close_through_split_reader_blocks_the_writer() {
    let (url, server) = serve(Config::default(), |ws| -> Result<(), Error> {
        let mut ws = ws?;
        ws.close(CloseCode::NORMAL, "server done")?;
        while ws.read().is_ok() {}
        Ok(())
    });
    let (ws, _) = blocking::connect(&url).unwrap();
    let (mut reader, writer) = ws.split().unwrap();
    assert!(matches!(reader.read().unwrap(), Event::Close(f) if f.reason == "server done"));
    assert!(
        matches!(writer.send("x"), Err(Error::Closed)),
        "closed after the echo"
    );
    server.join().unwrap().unwrap();
}

/// Runs `f` on a thread and waits at most `bound` for it: a deadlock fails
/// the test instead of hanging it.
fn within<T: Send + 'static>(bound: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(bound)
        .unwrap_or_else(|_| panic!("not done within {bound:?} (deadlock?)"))
}

/// One side of `split_peers_sending_40_mib_each_way_complete`: sends 40
/// messages of 1 MiB (with a Ping after each) while reading the other
/// side's 40, then closes (the client first).
fn send_and_read_40_mib<S: blocking::Transport + Into<MaybeTlsStream>>(
    mut ws: WebSocket<S>,
) -> Result<usize, Error> {
    // Socket timeouts only bound the old code's deadlock.
    blocking::Transport::set_read_timeout(ws.get_mut(), Some(LIMIT * 3))?;
    ws.set_write_timeout(Some(LIMIT * 3))?;
    let client = ws.connection().role() == wsproto::Role::Client;
    let (mut reader, writer) = ws.split()?;
    let sender = thread::spawn(move || -> Result<blocking::Writer, Error> {
        let big = Bytes::from(vec![7u8; 1 << 20]);
        for _ in 0..40 {
            writer.send(big.clone())?;
            writer.ping(b"p")?;
        }
        Ok(writer)
    });
    let mut got = 0;
    while got < 40 {
        match reader.read()? {
            Event::Binary(b) => {
                assert_eq!(b.len(), 1 << 20);
                got += 1;
            }
            Event::Ping(_) | Event::Pong(_) => {}
            other => panic!("{other:?}"),
        }
    }
    let writer = sender.join().unwrap()?;
    // A closing handshake, so neither side resets the other's last bytes.
    if client {
        writer.close(CloseCode::NORMAL, "")?;
    }
    while !matches!(reader.read()?, Event::Close(_)) {}
    Ok(got)
}

#[test]
fn split_peers_sending_40_mib_each_way_complete() {
    // Each writer blocks until the other side reads; with readers that
    // waited for their own writer's lock, neither side read again.
    let (url, server) = serve(Config::default(), |ws| send_and_read_40_mib(ws?));
    let client = within(LIMIT * 6, move || {
        let (ws, _) = blocking::connect(&url)?;
        send_and_read_40_mib(ws)
    });
    assert_eq!(client.unwrap(), 40);
    assert_eq!(server.join().unwrap().unwrap(), 40);
}

/// A server whose split writer is blocked in `send` (holding the socket)
/// on a client that never reads: `test` gets the reader once that is so,
/// and `peer` the client (which can still send) at the same moment.
fn with_blocked_writer<T: Send + 'static>(
    test: impl FnOnce(&mut blocking::Reader) -> T + Send + 'static,
    peer: impl FnOnce(&mut WebSocket<TcpStream>) + Send + 'static,
) -> T {
    use std::sync::mpsc;
    let (blocked_tx, blocked_rx) = mpsc::channel();
    let (url, server) = serve(Config::default(), move |ws| {
        let mut ws = ws.unwrap();
        // Bounds how long the old code's reader waited for the lock.
        ws.set_write_timeout(Some(Duration::from_secs(8))).unwrap();
        let (mut reader, writer) = ws.split().unwrap();
        let flood = thread::spawn(move || {
            // More than loopback socket buffers can ever hold (4 MiB send
            // + 32 MiB receive here), so no window update the peer's own
            // frames carry lets it finish. (Untouched zero pages: only the
            // encoded copy costs memory.)
            let _ = writer.send(vec![0u8; 40 << 20]);
        });
        thread::sleep(Duration::from_millis(500));
        blocked_tx.send(()).unwrap();
        let out = test(&mut reader);
        (out, flood)
    });
    // The peer can take the 40 MiB message in one frame, once it reads.
    let request = wsproto::handshake::ClientRequest::from_url(&url).unwrap();
    let stream = TcpStream::connect(request.address()).unwrap();
    let config = Config::default().max_frame_size(64 << 20);
    let (mut ws, _) = blocking::client(stream, &request, config).unwrap();
    blocked_rx.recv_timeout(LIMIT).unwrap();
    peer(&mut ws);
    let (out, flood) = server.join().unwrap();
    drop(ws); // the blocked send fails now
    flood.join().unwrap();
    out
}

#[test]
fn split_reader_returns_a_close_while_its_writer_is_blocked() {
    let (event, waited) = with_blocked_writer(
        |reader| {
            let start = Instant::now();
            (reader.read(), start.elapsed())
        },
        |peer| {
            thread::sleep(Duration::from_millis(300));
            peer.close(CloseCode::GOING_AWAY, "leaving").unwrap();
        },
    );
    assert!(
        matches!(&event, Ok(Event::Close(f)) if f.code == CloseCode::GOING_AWAY && f.reason == "leaving"),
        "{event:?}"
    );
    // The Close arrives ~300 ms after the reader starts; the old reader
    // waited for the writer's 8 s write timeout.
    eprintln!("WAITED {waited:?} {event:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
}

#[test]
fn split_reader_timers_fire_while_its_writer_is_blocked() {
    // The peer's Ping leaves a Pong owed that cannot go out; the reader
    // still returns the Ping, then its idle timeout fires on time.
    let (ping, idle) = with_blocked_writer(
        |reader| {
            reader.set_idle_timeout(Some(Duration::from_millis(400)));
            let start = Instant::now();
            let ping = (reader.read(), start.elapsed());
            let start = Instant::now();
            let idle = (reader.read(), start.elapsed());
            (ping, idle)
        },
        |peer| {
            thread::sleep(Duration::from_millis(200));
            peer.ping(b"hi").unwrap();
        },
    );
    assert!(
        matches!(&ping.0, Ok(Event::Ping(p)) if &p[..] == b"hi"),
        "{ping:?}"
    );
    assert!(ping.1 < Duration::from_secs(2), "{ping:?}");
    assert!(
        matches!(&idle.0, Err(Error::Io(e)) if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)),
        "{idle:?}"
    );
    assert!(
        idle.1 >= Duration::from_millis(350) && idle.1 < Duration::from_secs(2),
        "{idle:?}"
    );

    // Keepalive: the ping cannot go out either; the pong deadline still
    // ends the read on time.
    let (result, elapsed) = with_blocked_writer(
        |reader| {
            reader.set_keepalive(Duration::from_millis(200), Duration::from_millis(300));
            let start = Instant::now();
            (reader.read(), start.elapsed())
        },
        |_| {},
    );
    assert!(matches!(result, Err(Error::PongTimeout(_))), "{result:?}");
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
}

#[test]
fn split_writer_sends_the_pong_the_reader_owed() {
    // The Pong owed while the writer was busy goes out when it is done:
    // here the writer is busy with a 4 MiB message the peer reads only
    // after it has sent its Ping.
    let (url, server) = serve(Config::default(), |ws| -> Result<Event, Error> {
        let (mut reader, writer) = ws?.split()?;
        let sender = thread::spawn(move || writer.send(vec![1u8; 4 << 20]));
        let ping = reader.read()?;
        sender.join().unwrap()?;
        Ok(ping)
    });
    let mut ws = connect(&url);
    thread::sleep(Duration::from_millis(300));
    ws.ping(b"owed").unwrap();
    assert!(matches!(ws.read().unwrap(), Event::Binary(b) if b.len() == 4 << 20));
    assert!(matches!(ws.read().unwrap(), Event::Pong(p) if &p[..] == b"owed"));
    assert!(matches!(server.join().unwrap(), Ok(Event::Ping(_))));
}

#[test]
fn keepalive_after_close_waits_for_the_peers_close() {
    // The peer answers our Close after 300 ms: three ping intervals, well
    // inside the 2 s deadline.
    let slow_peer = |url: String| {
        let mut ws = connect(&url);
        thread::sleep(Duration::from_millis(300));
        ws.read() // our Close; the library echoes it
    };
    let (url, server) = serve(Config::default(), |ws| {
        let mut ws = ws.unwrap();
        ws.set_keepalive(Duration::from_millis(100), Duration::from_secs(2));
        ws.close(CloseCode::NORMAL, "bye").unwrap();
        ws.read()
    });
    assert!(matches!(slow_peer(url), Ok(Event::Close(f)) if f.reason == "bye"));
    let answer = server.join().unwrap();
    assert!(
        matches!(&answer, Ok(Event::Close(f)) if f.code == CloseCode::NORMAL && f.reason == "bye"),
        "the peer's Close (echoing our reason): {answer:?}"
    );

    // The same through a split socket.
    let (url, server) = serve(Config::default(), |ws| {
        let (mut reader, writer) = ws.unwrap().split().unwrap();
        reader.set_keepalive(Duration::from_millis(100), Duration::from_secs(2));
        writer.close(CloseCode::NORMAL, "bye").unwrap();
        reader.read()
    });
    assert!(slow_peer(url).is_ok());
    let answer = server.join().unwrap();
    assert!(matches!(&answer, Ok(Event::Close(_))), "{answer:?}");

    // A peer that never answers: bounded by the deadline, not forever.
    let (url, server) = serve(Config::default(), |ws| {
        let mut ws = ws.unwrap();
        ws.set_keepalive(Duration::from_millis(100), Duration::from_millis(500));
        ws.close(CloseCode::NORMAL, "").unwrap();
        let start = Instant::now();
        (ws.read(), start.elapsed())
    });
    let silent = connect(&url);
    let (result, elapsed) = server.join().unwrap();
    assert!(
        matches!(&result, Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut),
        "{result:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    drop(silent);
}

/// The `echo_server` example's binary, next to this test's in `target/`
/// (`cargo test` builds the package's examples; `--test blocking` alone
/// does not, and then the test says so and does nothing).
fn echo_server_binary() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?; // target/<profile>/deps/..
    let bin = dir.join("examples").join("echo_server");
    bin.exists().then_some(bin)
}

#[test]
fn echo_server_example_drops_silent_sockets_and_caps_connections() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let Some(bin) = echo_server_binary() else {
        eprintln!("echo_server example not built (run `cargo test -p wsproto`): skipped");
        return;
    };
    let mut server = Command::new(bin)
        .args(["--addr", "127.0.0.1:0", "--handshake-timeout", "1.5"])
        .args(["--max-connections", "3"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit("ws://").next().unwrap().to_string();
    let silent = |addr: &str| {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        s
    };
    let closed_after = |mut s: TcpStream| {
        let start = Instant::now();
        let mut buf = [0u8; 64];
        // The server closes without an answer (or with a 4xx for a
        // partial head); either way the stream ends.
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        start.elapsed()
    };
    // Three silent sockets fill the cap: a fourth is closed at once.
    let held: Vec<_> = (0..3).map(|_| silent(&addr)).collect();
    thread::sleep(Duration::from_millis(100));
    let over = closed_after(silent(&addr));
    // (Under the 1.5 s deadline that would close it if it had a slot.)
    assert!(over < Duration::from_secs(1), "over the cap: {over:?}");
    // The silent ones are dropped at the handshake deadline.
    for s in held {
        let t = closed_after(s);
        assert!(t < Duration::from_secs(5), "silent socket held {t:?}");
    }
    // Their slots are free again, and a real client is served.
    thread::sleep(Duration::from_millis(100));
    let mut ws = connect(&format!("ws://{addr}/"));
    ws.send("still here").unwrap();
    assert!(matches!(ws.read().unwrap(), Event::Text(t) if t == "still here"));
    ws.close(CloseCode::NORMAL, "").unwrap();
    let _ = ws.read();
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn split_reader_owes_only_the_latest_pong() {
    // 200 Pings while the writer is blocked: the reader returns each one
    // and owes one Pong, for the latest (RFC 6455 §5.5.3), which goes out
    // right after the message the writer was stuck on.
    use std::sync::mpsc;
    let (done_tx, done_rx) = mpsc::channel();
    let pings = with_blocked_writer(
        move |reader| {
            let mut pings = 0;
            while pings < 200 {
                match reader.read() {
                    Ok(Event::Ping(_)) => pings += 1,
                    other => panic!("{other:?}"),
                }
            }
            done_tx.send(()).unwrap();
            pings
        },
        move |peer| {
            for i in 0..200 {
                peer.ping(format!("{i}").as_bytes()).unwrap();
            }
            done_rx.recv_timeout(LIMIT).unwrap();
            assert!(matches!(peer.read().unwrap(), Event::Binary(b) if b.len() == 40 << 20));
            assert!(matches!(peer.read().unwrap(), Event::Pong(p) if &p[..] == b"199"));
            peer.get_ref()
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            // Then nothing, or the end of the stream once the server's
            // halves are dropped; no second Pong.
            let next = peer.read();
            assert!(
                matches!(next, Err(Error::Io(_)) | Ok(Event::Close(_))),
                "one Pong only: {next:?}"
            );
        },
    );
    assert_eq!(pings, 200);
}

// ---- issue 12: rough edges of the blocking API ------------------------------

/// A scripted stream: hands out `script` in reads of at most the size asked
/// (recording the largest), then blocks for up to `block` (a stream with no
/// read timeout) before reporting end of stream.
struct Scripted {
    script: std::io::Cursor<Vec<u8>>,
    block: Duration,
    largest_read: usize,
    written: Vec<u8>,
}

impl Scripted {
    fn new(script: &[u8], block: Duration) -> Self {
        Self {
            script: std::io::Cursor::new(script.to_vec()),
            block,
            largest_read: 0,
            written: Vec::new(),
        }
    }
}

impl Read for Scripted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.largest_read = self.largest_read.max(buf.len());
        let n = self.script.read(buf)?;
        if n == 0 {
            thread::sleep(self.block);
        }
        Ok(n)
    }
}

impl Write for Scripted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl blocking::Transport for Scripted {}

#[test]
fn client_close_wait_is_bounded_without_read_timeouts() {
    // The server's Close, then a stream that would block for 8 s: the
    // client must not wait on it (it cannot bound that read).
    let stream = Scripted::new(b"\x88\x02\x03\xe8", Duration::from_secs(8));
    let mut ws = WebSocket::from_raw(stream, wsproto::Role::Client, Config::default(), &[]);
    let start = Instant::now();
    assert!(matches!(ws.read().unwrap(), Event::Close(f) if f.code == CloseCode::NORMAL));
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "waited {:?} for the server to close",
        start.elapsed()
    );
    // The echo went out.
    assert_eq!(&ws.get_ref().written[..2], b"\x88\x82");
}

#[test]
fn read_size_comes_from_config() {
    let mut wire = Vec::new();
    for i in 0..50u8 {
        wire.extend_from_slice(&[0x82, 126, 0x03, 0xe8]);
        wire.extend(std::iter::repeat(i).take(1000));
    }
    let stream = Scripted::new(&wire, Duration::ZERO);
    let config = Config::default().read_size(700);
    let mut ws = WebSocket::from_raw(stream, wsproto::Role::Client, config, &[]);
    for i in 0..50u8 {
        assert_eq!(
            ws.read().unwrap(),
            Event::Binary(Bytes::from(vec![i; 1000]))
        );
    }
    assert!(
        ws.get_ref().largest_read <= 700,
        "{}",
        ws.get_ref().largest_read
    );
}

#[test]
fn read_ref_lends_each_event() {
    let mut wire = b"\x81\x02hi\x82\x00\x01\x03abc\x80\x01d\x89\x01p".to_vec();
    wire.extend_from_slice(b"\x81\x00\x88\x00");
    let stream = blocking::AnyStream(std::io::Cursor::new(wire));
    let mut ws = WebSocket::from_raw(stream, wsproto::Role::Client, Config::default(), &[]);
    use wsproto::EventRef;
    assert_eq!(ws.read_ref().unwrap(), EventRef::Text("hi"));
    assert_eq!(ws.read_ref().unwrap(), EventRef::Binary(b""));
    // Reassembled from two fragments: lent from an owned event.
    assert_eq!(ws.read_ref().unwrap(), EventRef::Text("abcd"));
    assert_eq!(ws.read_ref().unwrap(), EventRef::Ping(b"p"));
    assert_eq!(ws.read_ref().unwrap(), EventRef::Text(""));
    assert!(matches!(ws.read_ref().unwrap(), EventRef::Close(_)));
    assert!(matches!(ws.read_ref(), Err(Error::Closed)));
}

#[test]
fn write_flushes_itself_at_the_high_water_mark() {
    // Read side unused: a Vec is Write only, so pair it with an empty reader.
    struct Pair(std::io::Empty, Vec<u8>);
    impl Read for Pair {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(b)
        }
    }
    impl Write for Pair {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.1.write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let config = Config::default().write_high_water(10_000);
    let mut ws = WebSocket::from_raw(
        blocking::AnyStream(Pair(std::io::empty(), Vec::new())),
        wsproto::Role::Server,
        config,
        &[],
    );
    ws.write(vec![1u8; 4000]).unwrap();
    ws.write(vec![2u8; 4000]).unwrap();
    assert!(ws.get_ref().0 .1.is_empty(), "flushed below the mark");
    ws.write(vec![3u8; 4000]).unwrap();
    assert_eq!(
        ws.get_ref().0 .1.len(),
        3 * (4 + 4000),
        "not flushed at the mark"
    );
    // Batching 20 MiB never meets the 16 MiB output limit.
    for _ in 0..20 {
        ws.write(vec![0u8; 1 << 20]).unwrap();
    }
    assert!(ws.connection().pending_output().is_empty());
}
