//! The tokio adapter end to end: handshake, messages, split halves under
//! load, backpressure, cancellation, keepalive (on tokio's paused clock),
//! and interop with the blocking API. 127.0.0.1 and in-memory pipes only;
//! every wait is bounded.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use wsproto::tokio::{self as ws, WebSocketStream};
use wsproto::{CloseCode, Config, Connection, Error, Event, Message, Role};

/// Bound for tests on real time (debug builds on a loaded 2-core machine).
const LIMIT: Duration = Duration::from_secs(60);

/// A server and a client over real TCP, both tokio.
async fn tcp_pair(
    server_config: Config,
    client_config: Config,
) -> (WebSocketStream<TcpStream>, WebSocketStream<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        ws::accept_with(stream, server_config, &[]).await.unwrap().0
    });
    let request = wsproto::handshake::ClientRequest::from_url(&format!("ws://{addr}/")).unwrap();
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (client, _) = ws::client(stream, &request, client_config).await.unwrap();
    (server.await.unwrap(), client)
}

/// A server over an in-memory pipe whose other end the test drives by
/// hand, with a sans-IO client connection to encode and decode frames.
fn raw_server(config: Config, pipe: usize) -> (WebSocketStream<DuplexStream>, DuplexStream) {
    let (a, b) = tokio::io::duplex(pipe);
    (WebSocketStream::from_raw(a, Role::Server, config, &[]), b)
}

/// Every event the raw peer can decode from what is readable now (and
/// within `wait`).
async fn peer_events(peer: &mut DuplexStream, conn: &mut Connection, wait: Duration) -> Vec<Event> {
    let mut events = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(Ok(n)) = timeout(wait, peer.read(&mut buf)).await {
        if n == 0 {
            conn.receive_eof();
        } else {
            conn.receive(&buf[..n]);
        }
        while let Ok(Some(e)) = conn.next_event() {
            events.push(e);
        }
        if n == 0 {
            break;
        }
    }
    events
}

fn client_frames(f: impl FnOnce(&mut Connection)) -> Vec<u8> {
    let mut c = Connection::new(Role::Client, Config::default());
    f(&mut c);
    c.take_output().to_vec()
}

#[tokio::test]
async fn echo_over_tcp_and_clean_close() {
    timeout(LIMIT, async {
        let (mut server, mut client) = tcp_pair(Config::default(), Config::default()).await;
        let echo = tokio::spawn(async move {
            while let Some(m) = server.next().await {
                server.send(m.unwrap()).await.unwrap();
            }
            server.close_frame().cloned()
        });
        client.send("hello").await.unwrap();
        client.send(vec![1u8, 2, 3]).await.unwrap();
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::from("hello")
        );
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::from(vec![1u8, 2, 3])
        );
        client.close(CloseCode::NORMAL, "bye").await.unwrap();
        assert!(client.next().await.is_none());
        assert_eq!(client.close_frame().unwrap().code, CloseCode::NORMAL);
        let seen = echo.await.unwrap().unwrap();
        assert_eq!(
            (seen.code, seen.reason.as_str()),
            (CloseCode::NORMAL, "bye")
        );
        // After the close event, reads say Closed.
        assert!(matches!(client.read().await, Err(Error::Closed)));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn sink_and_stream_traits() {
    use futures_core::Stream;
    use futures_sink::Sink;
    use std::pin::Pin;
    timeout(LIMIT, async {
        let (mut server, mut client) = tcp_pair(Config::default(), Config::default()).await;
        std::future::poll_fn(|cx| Pin::new(&mut client).poll_ready(cx))
            .await
            .unwrap();
        Pin::new(&mut client)
            .start_send(Message::from("via sink"))
            .unwrap();
        std::future::poll_fn(|cx| Pin::new(&mut client).poll_flush(cx))
            .await
            .unwrap();
        let got = std::future::poll_fn(|cx| Pin::new(&mut server).poll_next(cx)).await;
        assert_eq!(got.unwrap().unwrap(), Message::from("via sink"));
        std::future::poll_fn(|cx| Pin::new(&mut client).poll_close(cx))
            .await
            .unwrap();
        // The server's stream ends with the Close (echoed for it).
        assert!(
            std::future::poll_fn(|cx| Pin::new(&mut server).poll_next(cx))
                .await
                .is_none()
        );
        assert!(client.next().await.is_none());
    })
    .await
    .unwrap();
}

/// Both halves of both ends busy at once: 40 × 1 MiB each way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_full_duplex_40_mib_each_way() {
    const N: usize = 40;
    const SIZE: usize = 1 << 20;
    let started = std::time::Instant::now();
    timeout(LIMIT, async {
        let (server, client) = tcp_pair(Config::default(), Config::default()).await;
        let (mut s_read, mut s_write) = server.split();
        let (mut c_read, mut c_write) = client.split();
        let send = |mut w: ws::WriteHalf<TcpStream>, tag: u8| {
            tokio::spawn(async move {
                for i in 0..N {
                    let payload = vec![tag ^ i as u8; SIZE];
                    w.send(payload).await.unwrap();
                }
                w
            })
        };
        let recv = |mut r: ws::ReadHalf<TcpStream>, tag: u8| {
            tokio::spawn(async move {
                for i in 0..N {
                    match r.next().await {
                        Some(Ok(Message::Binary(b))) => {
                            assert_eq!(b.len(), SIZE);
                            assert!(b.iter().all(|&x| x == tag ^ i as u8), "message {i}");
                        }
                        other => panic!("message {i}: {other:?}"),
                    }
                }
                r
            })
        };
        let tasks = (
            send(s_write, 0x5a),
            send(c_write, 0xa5),
            recv(c_read, 0x5a),
            recv(s_read, 0xa5),
        );
        s_write = tasks.0.await.unwrap();
        c_write = tasks.1.await.unwrap();
        c_read = tasks.2.await.unwrap();
        s_read = tasks.3.await.unwrap();
        // A clean close through the halves.
        c_write.close(CloseCode::NORMAL, "").await.unwrap();
        assert!(s_read.next().await.is_none());
        assert!(c_read.next().await.is_none());
        drop((s_write, c_write));
    })
    .await
    .expect("40 MiB each way within the limit");
    eprintln!("full duplex 2 x 40 MiB: {:?}", started.elapsed());
}

/// A peer that never reads: `feed` and `send` wait instead of queueing
/// without bound, and the reader keeps working meanwhile.
#[tokio::test]
async fn peer_that_never_reads_makes_send_wait() {
    timeout(LIMIT, async {
        let (server, client) = tcp_pair(Config::default(), Config::default()).await;
        let (mut reader, mut writer) = server.split();
        let (_c_read, mut c_write) = client.split();
        let message = Message::from(vec![7u8; 1 << 20]);
        let mut sent = 0usize;
        let result = timeout(Duration::from_secs(2), async {
            loop {
                writer.feed(message.clone()).await.unwrap();
                sent += 1;
            }
        })
        .await;
        assert!(result.is_err(), "feed never waited");
        // Kernel buffers on loopback take a few MiB; the rest waits.
        assert!(sent < 64, "{sent} MiB accepted by a peer that never reads");
        // A send waits too.
        assert!(timeout(Duration::from_millis(300), writer.send("more"))
            .await
            .is_err());
        // The reader is not held up by the blocked writer.
        c_write.send("still here").await.unwrap();
        assert_eq!(
            timeout(Duration::from_secs(5), reader.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
            Message::from("still here")
        );
    })
    .await
    .unwrap();
}

/// The queue of a stream whose peer does not read stays under the
/// high-water mark plus one message.
#[tokio::test]
async fn queue_is_bounded_when_the_peer_does_not_read() {
    let (mut server, _peer) = raw_server(Config::default().write_high_water(16 << 10), 1024);
    let message = Message::from(vec![1u8; 4096]);
    let r = timeout(Duration::from_secs(1), async {
        loop {
            server.feed(message.clone()).await.unwrap();
            assert!(server.queued() <= (16 << 10) + 4096 + 14);
        }
    })
    .await;
    assert!(r.is_err());
    assert!(server.queued() >= 16 << 10);
}

/// Reads pause when the application does not ask: a peer writing to a
/// stream nobody reads is held back by the transport.
#[tokio::test]
async fn reads_pause_when_not_consumed() {
    let (server, mut peer) = raw_server(Config::default(), 64 << 10);
    let data = client_frames(|c| c.send_binary(&vec![0u8; 1 << 20]).unwrap());
    let write = timeout(Duration::from_millis(500), peer.write_all(&data)).await;
    assert!(write.is_err(), "1 MiB went into a stream nobody reads");
    drop(server);
}

/// `next` cancelled while a frame is half there: nothing is lost.
#[tokio::test(start_paused = true)]
async fn cancelled_next_loses_no_frame() {
    let (mut server, mut peer) = raw_server(Config::default(), 1 << 20);
    let wire = client_frames(|c| {
        for i in 0..50u32 {
            c.send_text(&format!("message {i}")).unwrap();
            c.send_binary(&vec![i as u8; 300]).unwrap();
            c.ping(b"p").unwrap();
        }
        // A fragmented one too.
        c.send_fragment(wsproto::Opcode::Text, b"frag", false)
            .unwrap();
        c.send_fragment(wsproto::Opcode::Continuation, b"mented", true)
            .unwrap();
    });
    let mut got = Vec::new();
    // Seven bytes at a time, with a cancelled `next` after each piece.
    for piece in wire.chunks(7) {
        peer.write_all(piece).await.unwrap();
        loop {
            match timeout(Duration::from_millis(1), server.next()).await {
                Ok(Some(m)) => got.push(m.unwrap()),
                Ok(None) => panic!("ended"),
                Err(_) => break, // cancelled mid-frame
            }
        }
    }
    assert_eq!(got.len(), 101);
    for i in 0..50u32 {
        assert_eq!(got[2 * i as usize], Message::from(format!("message {i}")));
        assert_eq!(got[2 * i as usize + 1], Message::from(vec![i as u8; 300]));
    }
    assert_eq!(got[100], Message::from("fragmented"));
}

/// `send` cancelled while the transport is full: the message is queued
/// whole and goes out intact with the next flush, before later messages.
#[tokio::test(start_paused = true)]
async fn cancelled_send_loses_no_frame() {
    let (mut server, mut peer) = raw_server(Config::default(), 256);
    let big = vec![9u8; 10_000];
    assert!(timeout(Duration::from_millis(5), server.send(big.clone()))
        .await
        .is_err());
    let reader = tokio::spawn(async move {
        let mut conn = Connection::new(Role::Client, Config::default());
        let mut events = Vec::new();
        while events.len() < 2 {
            events.extend(peer_events(&mut peer, &mut conn, Duration::from_secs(1)).await);
        }
        events
    });
    server.flush().await.unwrap();
    server.send("after").await.unwrap();
    let events = reader.await.unwrap();
    assert_eq!(events[0], Event::Binary(big.into()));
    assert_eq!(events[1], Event::Text("after".into()));
}

/// Keepalive on the paused clock: a Ping after the interval, then close
/// 1011 and `PongTimeout` when no Pong comes.
#[tokio::test(start_paused = true)]
async fn keepalive_pings_then_gives_up() {
    let (mut server, mut peer) = raw_server(Config::default(), 1 << 16);
    server.set_keepalive(Duration::from_secs(10), Duration::from_secs(5));
    let start = tokio::time::Instant::now();
    let err = server.read().await.unwrap_err();
    assert!(
        matches!(err, Error::PongTimeout(d) if d == Duration::from_secs(5)),
        "{err}"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(15));
    let mut conn = Connection::new(Role::Client, Config::default());
    let events = peer_events(&mut peer, &mut conn, Duration::from_millis(10)).await;
    assert_eq!(events[0], Event::Ping(bytes::Bytes::new()));
    assert!(
        matches!(&events[1], Event::Close(f) if f.code == CloseCode::INTERNAL_ERROR),
        "{events:?}"
    );
}

/// While the peer talks more often than the interval, no Ping goes out;
/// the first one follows the first silence of a whole interval.
#[tokio::test(start_paused = true)]
async fn keepalive_quiet_while_the_peer_talks() {
    let (mut server, mut peer) = raw_server(Config::default(), 1 << 16);
    server.set_keepalive(Duration::from_secs(10), Duration::from_secs(5));
    let talker = tokio::spawn(async move {
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            peer.write_all(&client_frames(|c| c.send_text("tick").unwrap()))
                .await
                .unwrap();
        }
        peer
    });
    for _ in 0..12 {
        assert_eq!(server.next().await.unwrap().unwrap(), Message::from("tick"));
    }
    let mut peer = talker.await.unwrap();
    let mut conn = Connection::new(Role::Client, Config::default());
    assert!(peer_events(&mut peer, &mut conn, Duration::from_millis(1))
        .await
        .is_empty());
    let silent = tokio::time::Instant::now();
    let pinged =
        tokio::spawn(
            async move { peer_events(&mut peer, &mut conn, Duration::from_secs(30)).await },
        );
    assert!(matches!(server.read().await, Err(Error::PongTimeout(_))));
    // Ping 10 s after the last tick, then 5 s for the pong (`silent`
    // started a millisecond after the tick).
    let e = silent.elapsed();
    assert!(
        e > Duration::from_millis(14_990) && e <= Duration::from_secs(15),
        "{e:?}"
    );
    let events = pinged.await.unwrap();
    assert_eq!(events[0], Event::Ping(bytes::Bytes::new()));
}

/// A peer that answers keeps the connection up indefinitely.
#[tokio::test(start_paused = true)]
async fn keepalive_answered_keeps_connection() {
    let (a, b) = tokio::io::duplex(1 << 16);
    let mut server = WebSocketStream::from_raw(a, Role::Server, Config::default(), &[]);
    let mut client = WebSocketStream::from_raw(b, Role::Client, Config::default(), &[]);
    tokio::spawn(async move { while client.read().await.is_ok() {} });
    server.set_keepalive(Duration::from_secs(10), Duration::from_secs(5));
    let mut pongs = 0;
    let r = timeout(Duration::from_secs(100), async {
        loop {
            match server.read().await {
                Ok(Event::Pong(_)) => pongs += 1,
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
    assert!(r.is_err());
    assert!(pongs >= 6, "{pongs} pongs in 100 s at a 10 s interval");
}

/// After our Close, the wait for the peer's is bounded.
#[tokio::test(start_paused = true)]
async fn close_timeout_bounds_the_wait() {
    let (mut server, _peer) = raw_server(Config::default(), 1 << 16);
    server.set_close_timeout(Some(Duration::from_secs(3)));
    server.close(CloseCode::NORMAL, "").await.unwrap();
    let start = tokio::time::Instant::now();
    match server.read().await {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut),
        other => panic!("{other:?}"),
    }
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn idle_timeout() {
    let (mut server, _peer) = raw_server(Config::default(), 1 << 16);
    server.set_idle_timeout(Some(Duration::from_secs(30)));
    match server.next().await {
        Some(Err(Error::Io(e))) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut),
        other => panic!("{other:?}"),
    }
}

/// A pipe split by tokio behind its lock and joined again: what any
/// stream (a TLS stream) needs to be split.
type Joined =
    tokio::io::Join<tokio::io::ReadHalf<DuplexStream>, tokio::io::WriteHalf<DuplexStream>>;

/// Split over a pipe (tokio's `split` + `join`: any stream can be split).
fn raw_split_server(pipe: usize) -> (ws::ReadHalf<Joined>, ws::WriteHalf<Joined>, DuplexStream) {
    let (a, b) = tokio::io::duplex(pipe);
    let (r, w) = tokio::io::split(a);
    let server =
        WebSocketStream::from_raw(tokio::io::join(r, w), Role::Server, Config::default(), &[]);
    let (reader, writer) = server.split();
    (reader, writer, b)
}

/// The split reader's duties reach the wire though the application never
/// writes: the Pong for a Ping, keepalive Pings, the Close echo.
#[tokio::test(start_paused = true)]
async fn split_reader_duties_go_out_with_an_idle_writer() {
    let (mut reader, _writer, mut peer) = raw_split_server(1 << 16);
    reader.set_keepalive(Duration::from_secs(10), Duration::from_secs(60));
    let mut conn = Connection::new(Role::Client, Config::default());
    peer.write_all(&client_frames(|c| c.ping(b"are you there").unwrap()))
        .await
        .unwrap();
    assert_eq!(
        reader.read().await.unwrap(),
        Event::Ping("are you there".as_bytes().into())
    );
    let events = peer_events(&mut peer, &mut conn, Duration::from_millis(10)).await;
    assert_eq!(events, [Event::Pong("are you there".as_bytes().into())]);
    // Keepalive: the reader's ping goes out through the idle writer's half.
    let pending = tokio::spawn(async move {
        let r = reader.read().await;
        (reader, r)
    });
    tokio::time::sleep(Duration::from_secs(11)).await;
    let events = peer_events(&mut peer, &mut conn, Duration::from_millis(10)).await;
    assert_eq!(events, [Event::Ping(bytes::Bytes::new())]);
    // The peer closes; its Close is echoed.
    peer.write_all(&client_frames(|c| {
        c.close(CloseCode::NORMAL, "done").unwrap()
    }))
    .await
    .unwrap();
    let (_reader, r) = pending.await.unwrap();
    assert!(matches!(r, Ok(Event::Close(f)) if f.reason == "done"));
    let events = peer_events(&mut peer, &mut conn, Duration::from_millis(10)).await;
    assert!(
        matches!(&events[..], [Event::Close(f)] if f.reason == "done"),
        "{events:?}"
    );
}

/// A ping flood while the writer is stuck owes one Pong, not one per Ping.
#[tokio::test(start_paused = true)]
async fn split_ping_flood_owes_one_pong() {
    timeout(Duration::from_secs(600), ping_flood())
        .await
        .expect("bounded");
}

async fn ping_flood() {
    let (mut reader, mut writer, mut peer) = raw_split_server(1024);
    // Fill the pipe so nothing more can be written.
    assert!(
        timeout(Duration::from_millis(5), writer.send(vec![0u8; 4096]))
            .await
            .is_err()
    );
    let flood = client_frames(|c| {
        for i in 0..1000u32 {
            c.ping(&i.to_be_bytes()).unwrap();
        }
    });
    // The pipe holds 1 KiB: the peer writes while the reader reads.
    let flooding = tokio::spawn(async move {
        peer.write_all(&flood).await.unwrap();
        peer
    });
    for _ in 0..1000 {
        assert!(matches!(reader.read().await.unwrap(), Event::Ping(_)));
    }
    let mut peer = flooding.await.unwrap();
    // Now let the peer read: the message, then one Pong (the latest).
    let mut conn = Connection::new(Role::Client, Config::default());
    let drain = tokio::spawn(async move {
        let mut events = Vec::new();
        while events.len() < 2 {
            events.extend(peer_events(&mut peer, &mut conn, Duration::from_millis(50)).await);
        }
        events
    });
    writer.flush().await.unwrap();
    let events = drain.await.unwrap();
    assert_eq!(events.len(), 2, "one message and one Pong");
    assert_eq!(events[1], Event::Pong(999u32.to_be_bytes().to_vec().into()));
}

/// Dropping the writer half sends Close 1000; the reader then gets the
/// peer's answer and ends.
#[tokio::test]
async fn dropped_writer_closes_cleanly() {
    timeout(LIMIT, async {
        let (server, mut client) = tcp_pair(Config::default(), Config::default()).await;
        let (mut reader, writer) = server.split();
        drop(writer);
        let client_side = tokio::spawn(async move {
            assert!(client.next().await.is_none());
            client.close_frame().cloned()
        });
        assert!(reader.next().await.is_none());
        assert_eq!(reader.close_frame().unwrap().code, CloseCode::NORMAL);
        assert_eq!(client_side.await.unwrap().unwrap().code, CloseCode::NORMAL);
    })
    .await
    .unwrap();
}

/// Dropping the reader half sends Close 1000 too; the writer refuses to
/// send afterwards.
#[tokio::test]
async fn dropped_reader_closes_cleanly() {
    timeout(LIMIT, async {
        let (server, mut client) = tcp_pair(Config::default(), Config::default()).await;
        let (reader, mut writer) = server.split();
        drop(reader);
        assert!(client.next().await.is_none());
        assert_eq!(client.close_frame().unwrap().code, CloseCode::NORMAL);
        assert!(matches!(writer.send("late").await, Err(Error::Closed)));
    })
    .await
    .unwrap();
}

/// A violation through the adapter: typed error, Close 1002 on the wire.
#[tokio::test]
async fn protocol_violation_is_answered() {
    let (mut server, mut peer) = raw_server(Config::default(), 1 << 16);
    peer.write_all(b"\x81\x02hi").await.unwrap(); // unmasked from a client
    assert!(matches!(server.next().await, Some(Err(Error::Protocol(_)))));
    let mut conn = Connection::new(Role::Client, Config::default());
    let events = peer_events(&mut peer, &mut conn, Duration::from_millis(100)).await;
    assert!(matches!(&events[..], [Event::Close(f), ..] if f.code == CloseCode::PROTOCOL_ERROR));
    assert!(server.next().await.is_none());
}

#[tokio::test]
async fn handshake_rejection_and_subprotocol() {
    timeout(LIMIT, async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let bad = ws::accept(stream).await;
            let (stream, _) = listener.accept().await.unwrap();
            let (_ws, request) = ws::accept_with(stream, Config::default(), &["chat"])
                .await
                .unwrap();
            (bad.map(|_| ()), request.path)
        });
        let mut raw = TcpStream::connect(addr).await.unwrap();
        raw.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        raw.read_to_end(&mut answer).await.unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 405 "));
        let request = wsproto::handshake::ClientRequest::from_url(&format!("ws://{addr}/room"))
            .unwrap()
            .protocols(&["chat"])
            .unwrap();
        let stream = TcpStream::connect(addr).await.unwrap();
        let (_client, response) = ws::client(stream, &request, Config::default())
            .await
            .unwrap();
        assert_eq!(response.protocol.as_deref(), Some("chat"));
        let (bad, path) = server.await.unwrap();
        assert!(matches!(bad, Err(Error::Handshake(_))));
        assert_eq!(path, "/room");
    })
    .await
    .unwrap();
}

fn deflate_config() -> Config {
    Config::default().deflate(wsproto::deflate::DeflateConfig::default())
}

/// A blocking client against a tokio server, with and without
/// permessage-deflate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_blocking_client_tokio_server() {
    for deflate in [false, wsproto::deflate::ENABLED] {
        let config = if deflate {
            deflate_config()
        } else {
            Config::default()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_config = config.clone();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (mut ws, _) = ws::accept_with(stream, server_config, &[]).await.unwrap();
            let compressed = ws.connection().deflate_enabled();
            while let Some(m) = ws.next().await {
                ws.send(m.unwrap()).await.unwrap();
            }
            compressed
        });
        let client = std::thread::spawn(move || {
            use wsproto::blocking;
            let request =
                wsproto::handshake::ClientRequest::from_url(&format!("ws://{addr}/")).unwrap();
            let stream = std::net::TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(LIMIT)).unwrap();
            let (mut ws, _) = blocking::client(stream, &request, config).unwrap();
            let text = "to be or not to be, ".repeat(100);
            for i in 0..20 {
                ws.send(format!("{i}{text}")).unwrap();
                assert_eq!(ws.read().unwrap(), Event::Text(format!("{i}{text}").into()));
            }
            ws.send(vec![0u8; 100_000]).unwrap();
            assert_eq!(ws.read().unwrap(), Event::Binary(vec![0u8; 100_000].into()));
            ws.close(CloseCode::NORMAL, "").unwrap();
            assert!(matches!(ws.read().unwrap(), Event::Close(_)));
        });
        let compressed = timeout(LIMIT, server).await.unwrap().unwrap();
        client.join().unwrap();
        assert_eq!(compressed, deflate);
    }
}

/// A tokio client against a blocking server, with and without
/// permessage-deflate, split on the client side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_tokio_client_blocking_server() {
    for deflate in [false, wsproto::deflate::ENABLED] {
        let config = if deflate {
            deflate_config()
        } else {
            Config::default()
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server_config = config.clone();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream.set_read_timeout(Some(LIMIT)).unwrap();
            let (mut ws, _) = wsproto::blocking::accept_with(stream, server_config, &[]).unwrap();
            loop {
                match ws.read() {
                    Ok(Event::Text(t)) => ws.send(t).unwrap(),
                    Ok(Event::Binary(b)) => ws.send(b).unwrap(),
                    Ok(Event::Close(_)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        });
        timeout(LIMIT, async {
            let request =
                wsproto::handshake::ClientRequest::from_url(&format!("ws://{addr}/")).unwrap();
            let stream = TcpStream::connect(addr).await.unwrap();
            let (client, _) = ws::client(stream, &request, config).await.unwrap();
            assert_eq!(client.connection().deflate_enabled(), deflate);
            let (mut reader, mut writer) = client.split();
            let text = "all the world's a stage ".repeat(50);
            let sender = {
                let text = text.clone();
                tokio::spawn(async move {
                    for i in 0..50 {
                        writer.feed(format!("{i} {text}")).await.unwrap();
                    }
                    writer.flush().await.unwrap();
                    writer
                })
            };
            for i in 0..50 {
                let m = reader.next().await.unwrap().unwrap();
                assert_eq!(m, Message::from(format!("{i} {text}")));
            }
            let mut writer = sender.await.unwrap();
            writer.close(CloseCode::NORMAL, "").await.unwrap();
            assert!(reader.next().await.is_none());
        })
        .await
        .unwrap();
        server.join().unwrap();
    }
}

/// A stream that writes vectored but takes at most `max` bytes per write,
/// so every boundary between a header, a parked payload and the bytes
/// queued after it gets cut somewhere.
struct Trickle {
    inner: DuplexStream,
    max: usize,
}

impl tokio::io::AsyncRead for Trickle {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Trickle {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = buf.len().min(self.max);
        std::pin::Pin::new(&mut self.inner).poll_write(cx, &buf[..n])
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let max = self.max;
        let gathered: Vec<u8> = bufs
            .iter()
            .flat_map(|b| b.iter().copied())
            .take(max)
            .collect();
        self.poll_write(cx, &gathered)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A server's large payloads are not copied into the output buffer (only
/// their headers are), and go out in order with what is queued around
/// them, a Pong owed meanwhile included, through writes cut anywhere.
#[tokio::test]
async fn large_payloads_go_out_zero_copy_in_order() {
    timeout(LIMIT, async {
        let (a, mut peer) = tokio::io::duplex(256 << 10);
        let stream = Trickle { inner: a, max: 7 };
        let mut ws = WebSocketStream::from_raw(stream, Role::Server, Config::default(), &[]);
        let big1: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let big2 = "é".repeat(2_000);
        ws.feed(Message::Binary(big1.clone().into())).await.unwrap();
        // Only the header is in the connection's buffer: the payload is
        // shared, not copied (the old adapter held all 20,004 bytes).
        assert!(ws.connection().pending_output().len() <= 14);
        ws.feed("a").await.unwrap();
        ws.feed(big2.as_str()).await.unwrap();
        // A Ping arrives: its Pong goes after what is already queued.
        peer.write_all(&client_frames(|c| c.ping(b"p").unwrap()))
            .await
            .unwrap();
        assert!(timeout(Duration::from_millis(200), ws.next())
            .await
            .is_err());
        ws.feed(Message::Binary(big1[..3000].to_vec().into()))
            .await
            .unwrap();
        ws.close(CloseCode::NORMAL, "bye").await.unwrap();
        let mut conn = Connection::new(Role::Client, Config::default());
        let events = peer_events(&mut peer, &mut conn, Duration::from_millis(300)).await;
        let expected = [
            Event::Binary(big1.clone().into()),
            Event::Text("a".into()),
            Event::Text(big2.as_str().into()),
            Event::Pong(bytes::Bytes::from_static(b"p")),
            Event::Binary(big1[..3000].to_vec().into()),
        ];
        assert_eq!(events[..5], expected[..]);
        assert!(matches!(&events[5], Event::Close(f) if f.code == CloseCode::NORMAL));
    })
    .await
    .unwrap();
}

/// A split server's large payloads go out zero-copy too, in order with a
/// Pong the reader owed meanwhile, through writes cut anywhere.
#[tokio::test]
async fn split_writer_large_payloads_in_order_with_owed_pong() {
    timeout(LIMIT, async {
        let (a, mut peer) = tokio::io::duplex(256 << 10);
        let (r, w) = tokio::io::split(Trickle { inner: a, max: 5 });
        let server =
            WebSocketStream::from_raw(tokio::io::join(r, w), Role::Server, Config::default(), &[]);
        let (mut reader, mut writer) = server.split();
        let big: Vec<u8> = (0..30_000u32).map(|i| (i % 253) as u8).collect();
        writer
            .feed(Message::Binary(big.clone().into()))
            .await
            .unwrap();
        writer.feed("small").await.unwrap();
        peer.write_all(&client_frames(|c| c.ping(b"q").unwrap()))
            .await
            .unwrap();
        assert_eq!(
            reader.read().await.unwrap(),
            Event::Ping("q".as_bytes().into())
        );
        writer
            .send(Message::Binary(big[..2000].to_vec().into()))
            .await
            .unwrap();
        let mut conn = Connection::new(Role::Client, Config::default());
        let events = peer_events(&mut peer, &mut conn, Duration::from_millis(300)).await;
        assert_eq!(
            events,
            [
                Event::Binary(big.clone().into()),
                Event::Text("small".into()),
                Event::Pong("q".as_bytes().into()),
                Event::Binary(big[..2000].to_vec().into()),
            ]
        );
    })
    .await
    .unwrap();
}

/// More parked payloads than one vectored write takes (64 slices): every
/// message arrives, in order, whole writes or cut ones.
#[tokio::test]
async fn many_parked_payloads_span_several_writes() {
    timeout(LIMIT, async {
        for max in [1 << 20, 1000] {
            let (a, mut peer) = tokio::io::duplex(1 << 20);
            let stream = Trickle { inner: a, max };
            let mut ws = WebSocketStream::from_raw(stream, Role::Server, Config::default(), &[]);
            let sent: Vec<Vec<u8>> = (0..80u8).map(|i| vec![i; 1024 + i as usize]).collect();
            for (i, m) in sent.iter().enumerate() {
                ws.feed(Message::Binary(m.clone().into())).await.unwrap();
                if i % 3 == 0 {
                    ws.feed("between").await.unwrap(); // small: copied
                }
            }
            ws.flush().await.unwrap();
            assert_eq!(ws.queued(), 0);
            let mut conn = Connection::new(Role::Client, Config::default());
            let events = peer_events(&mut peer, &mut conn, Duration::from_millis(300)).await;
            let mut expected = Vec::new();
            for (i, m) in sent.iter().enumerate() {
                expected.push(Event::Binary(m.clone().into()));
                if i % 3 == 0 {
                    expected.push(Event::Text("between".into()));
                }
            }
            assert_eq!(events, expected, "writes of at most {max} bytes");
        }
    })
    .await
    .unwrap();
}

/// A stream that reads at most 64 bytes at a time and counts writes.
struct SmallReads {
    inner: DuplexStream,
    writes: usize,
}

impl tokio::io::AsyncRead for SmallReads {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let mut small = [0u8; 64];
        let mut rb = tokio::io::ReadBuf::new(&mut small);
        std::task::ready!(std::pin::Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
        buf.put_slice(rb.filled());
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for SmallReads {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.writes += 1;
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An echo loop (`next` + `feed`) writes the echoes of all the input the
/// transport has ready in one write, even when that input takes several
/// reads: `next` reads before it writes (it used to write before every
/// read: 4 writes here).
#[tokio::test]
async fn echoes_of_input_at_hand_go_out_in_one_write() {
    timeout(LIMIT, async {
        let (a, mut peer) = tokio::io::duplex(1 << 16);
        let stream = SmallReads {
            inner: a,
            writes: 0,
        };
        let mut ws = WebSocketStream::from_raw(stream, Role::Server, Config::default(), &[]);
        let frames = client_frames(|c| {
            for i in 0..8 {
                c.send_text(&format!("message number {i:>4}")).unwrap();
            }
        });
        assert!(frames.len() > 3 * 64, "several reads' worth");
        peer.write_all(&frames).await.unwrap();
        for _ in 0..8 {
            let m = ws.next().await.unwrap().unwrap();
            ws.feed(m).await.unwrap();
        }
        assert!(timeout(Duration::from_millis(100), ws.next())
            .await
            .is_err());
        assert_eq!(ws.queued(), 0);
        assert_eq!(ws.get_ref().writes, 1);
        let mut conn = Connection::new(Role::Client, Config::default());
        let events = peer_events(&mut peer, &mut conn, Duration::from_millis(100)).await;
        assert_eq!(events.len(), 8);
    })
    .await
    .unwrap();
}
