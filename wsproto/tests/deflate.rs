//! permessage-deflate (RFC 7692) through `Connection` and the blocking API.
#![cfg(feature = "deflate")]

use proptest::prelude::*;
use std::net::TcpListener;
use std::time::Duration;
use wsproto::deflate::{DeflateConfig, DeflateParams};
use wsproto::frame::{parse_header, FrameHeader, ParsedHeader, MAX_HEADER_LEN};
use wsproto::handshake::{accept_key, parse_request, ClientRequest, ParsedRequest, ParsedResponse};
use wsproto::{
    blocking, CloseCode, Config, Connection, Event, HandshakeError, Opcode, ProtocolError, Role,
};

fn frame(fin: bool, rsv: u8, opcode: Opcode, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = masked.then_some([0x12, 0x34, 0x56, 0x78]);
    let h = FrameHeader {
        fin,
        rsv,
        opcode,
        mask,
        payload_len: payload.len() as u64,
    };
    let mut head = [0; MAX_HEADER_LEN];
    let n = h.encode(&mut head);
    let mut out = head[..n].to_vec();
    let mut body = payload.to_vec();
    if let Some(key) = mask {
        wsproto::mask::apply_mask(&mut body, key, 0);
    }
    out.extend_from_slice(&body);
    out
}

/// The frames in `wire` sent by `sender`: (header, unmasked payload).
fn frames(wire: &[u8], sender: Role) -> Vec<(FrameHeader, Vec<u8>)> {
    let receiver = match sender {
        Role::Client => Role::Server,
        Role::Server => Role::Client,
    };
    let mut out = Vec::new();
    let mut rest = wire;
    while !rest.is_empty() {
        let Ok(ParsedHeader::Complete(h, n)) = parse_header(rest, receiver, 0b100) else {
            panic!("bad frame")
        };
        let end = n + h.payload_len as usize;
        let mut p = rest[n..end].to_vec();
        if let Some(key) = h.mask {
            wsproto::mask::apply_mask(&mut p, key, 0);
        }
        out.push((h, p));
        rest = &rest[end..];
    }
    out
}

fn pair(client: DeflateParams, server: DeflateParams, config: Config) -> (Connection, Connection) {
    let mut c = Connection::new(Role::Client, config.clone());
    let mut s = Connection::new(Role::Server, config);
    c.enable_deflate(client);
    s.enable_deflate(server);
    (c, s)
}

/// The compressed payload our compressor makes for `text` (server side).
fn compressed(text: &str) -> Vec<u8> {
    let mut s = Connection::new(Role::Server, Config::default());
    s.enable_deflate(DeflateParams::default());
    s.send_text(text).unwrap();
    let f = frames(&s.take_output(), Role::Server);
    assert_eq!(f[0].0.rsv, 0b100, "compressed");
    f[0].1.clone()
}

fn close_code(conn: &mut Connection) -> u16 {
    let out = conn.take_output();
    let f = frames(&out, conn.role());
    let (h, p) = f.last().expect("a close frame");
    assert_eq!(h.opcode, Opcode::Close);
    u16::from_be_bytes([p[0], p[1]])
}

const CHAT: &str = r#"{"type":"message","room":"lobby","from":"alice","text":"hello everyone, how are you doing today?"}"#;

#[test]
fn messages_round_trip_compressed_both_ways() {
    let (mut c, mut s) = pair(
        DeflateParams::default(),
        DeflateParams::default(),
        Config::default(),
    );
    for i in 0..5 {
        let text = format!("{CHAT} #{i}");
        c.send_text(&text).unwrap();
        let wire = c.take_output();
        let f = frames(&wire, Role::Client);
        assert_eq!((f.len(), f[0].0.rsv), (1, 0b100));
        assert!(wire.len() < text.len(), "{} vs {}", wire.len(), text.len());
        s.receive(&wire);
        assert_eq!(
            s.next_event().unwrap(),
            Some(Event::Text(text.clone().into()))
        );
        s.send_binary(text.as_bytes()).unwrap();
        c.receive(&s.take_output());
        assert_eq!(
            c.next_event().unwrap(),
            Some(Event::Binary(text.into_bytes().into()))
        );
    }
}

#[test]
fn tiny_messages_go_out_uncompressed_and_still_arrive() {
    let (mut c, mut s) = pair(
        DeflateParams::default(),
        DeflateParams::default(),
        Config::default(),
    );
    c.send_text("hi").unwrap();
    c.send_text(CHAT).unwrap();
    c.send_text("yo").unwrap();
    let wire = c.take_output();
    let rsv: Vec<u8> = frames(&wire, Role::Client)
        .iter()
        .map(|f| f.0.rsv)
        .collect();
    assert_eq!(rsv, [0, 0b100, 0]);
    s.receive(&wire);
    for want in ["hi", CHAT, "yo"] {
        assert_eq!(s.next_event().unwrap(), Some(Event::Text(want.into())));
    }
}

/// RFC 7692 §7.1.2.1 lets a client ask `server_max_window_bits=8`, which
/// zlib cannot compress with: every message goes out uncompressed.
#[test]
fn eight_bit_window_sends_uncompressed() {
    let eight = DeflateParams {
        send_window_bits: 8,
        ..DeflateParams::default()
    };
    let (mut c, mut s) = pair(DeflateParams::default(), eight, Config::default());
    let long = CHAT.repeat(100);
    s.send_text(&long).unwrap();
    let wire = s.take_output();
    assert_eq!(frames(&wire, Role::Server)[0].0.rsv, 0);
    c.receive(&wire);
    assert_eq!(
        c.next_event().unwrap(),
        Some(Event::Text(long.clone().into()))
    );
    // The other direction still compresses.
    c.send_text(&long).unwrap();
    let wire = c.take_output();
    assert_eq!(frames(&wire, Role::Client)[0].0.rsv, 0b100);
    s.receive(&wire);
    assert_eq!(s.next_event().unwrap(), Some(Event::Text(long.into())));
}

#[test]
fn fragmented_compressed_message_with_a_ping_between() {
    let (_, mut s) = pair(
        DeflateParams::default(),
        DeflateParams::default(),
        Config::default(),
    );
    let text = CHAT.repeat(20);
    let z = compressed(&text);
    let (a, b) = z.split_at(z.len() / 2);
    let mut wire = frame(false, 0b100, Opcode::Text, &a[..3], true);
    wire.extend(frame(false, 0, Opcode::Continuation, &a[3..], true));
    wire.extend(frame(true, 0, Opcode::Ping, b"p", true));
    wire.extend(frame(true, 0, Opcode::Continuation, b, true));
    s.receive(&wire);
    assert_eq!(s.next_event().unwrap(), Some(Event::Ping(b"p"[..].into())));
    assert_eq!(s.next_event().unwrap(), Some(Event::Text(text.into())));
}

#[test]
fn rsv1_on_control_or_continuation_is_1002() {
    let cases = [
        frame(true, 0b100, Opcode::Ping, b"x", true),
        frame(true, 0b100, Opcode::Close, &[3, 232], true),
        {
            let mut w = frame(false, 0, Opcode::Text, b"ab", true);
            w.extend(frame(true, 0b100, Opcode::Continuation, b"cd", true));
            w
        },
        {
            let mut w = frame(false, 0b100, Opcode::Text, &compressed(CHAT), true);
            w.extend(frame(true, 0b100, Opcode::Continuation, b"cd", true));
            w
        },
        // RSV2 and RSV3 belong to no extension here.
        frame(true, 0b010, Opcode::Text, b"ab", true),
    ];
    for wire in cases {
        let (_, mut s) = pair(
            DeflateParams::default(),
            DeflateParams::default(),
            Config::default(),
        );
        s.receive(&wire);
        let err = s.next_event().unwrap_err();
        assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR, "{err}");
        assert_eq!(close_code(&mut s), 1002);
    }
    // Without negotiation RSV1 is a reserved bit.
    let mut s = Connection::new(Role::Server, Config::default());
    s.receive(&frame(true, 0b100, Opcode::Text, &compressed(CHAT), true));
    assert_eq!(s.next_event(), Err(ProtocolError::ReservedBits(0b100)));
}

#[test]
fn corrupt_compressed_data_is_1007_and_text_is_checked_after_inflating() {
    let (_, mut s) = pair(
        DeflateParams::default(),
        DeflateParams::default(),
        Config::default(),
    );
    s.receive(&frame(true, 0b100, Opcode::Binary, &[0xff; 20], true));
    assert!(matches!(
        s.next_event(),
        Err(ProtocolError::InvalidCompressedData(_))
    ));
    assert_eq!(close_code(&mut s), 1007);

    // Invalid UTF-8 inside a compressed text message.
    let mut z = Connection::new(Role::Server, Config::default());
    z.enable_deflate(DeflateParams::default());
    z.send_binary(&[0xc3; 200]).unwrap(); // 0xc3 0xc3: not UTF-8
    let payload = frames(&z.take_output(), Role::Server)[0].1.clone();
    let (_, mut s) = pair(
        DeflateParams::default(),
        DeflateParams::default(),
        Config::default(),
    );
    s.receive(&frame(true, 0b100, Opcode::Text, &payload, true));
    assert!(matches!(
        s.next_event(),
        Err(ProtocolError::InvalidUtf8 { .. })
    ));
    assert_eq!(close_code(&mut s), 1007);
}

/// Context takeover: later messages refer back to earlier ones; without
/// it (either side), every message stands alone.
#[test]
fn context_takeover_shrinks_repeats_and_no_takeover_does_not() {
    for nct in [false, true] {
        let p = DeflateParams {
            send_no_context_takeover: nct,
            recv_no_context_takeover: nct,
            ..DeflateParams::default()
        };
        let (mut c, mut s) = pair(p.clone(), p, Config::default());
        // Over NO_CONTEXT_MIN_SIZE, so compressed either way.
        let msg = CHAT.repeat(3);
        let mut sizes = Vec::new();
        for _ in 0..3 {
            c.send_text(&msg).unwrap();
            let wire = c.take_output();
            assert_eq!(frames(&wire, Role::Client)[0].0.rsv, 0b100);
            sizes.push(wire.len());
            s.receive(&wire);
            assert_eq!(
                s.next_event().unwrap(),
                Some(Event::Text(msg.as_str().into()))
            );
        }
        assert_eq!(sizes[2] < sizes[0] / 2, !nct, "{sizes:?}");
        // Idle: state without context takeover is freed, and comes back.
        c.shrink_buffers();
        s.shrink_buffers();
        c.send_text(&msg).unwrap();
        s.receive(&c.take_output());
        assert_eq!(
            s.next_event().unwrap(),
            Some(Event::Text(msg.as_str().into()))
        );
    }
}

/// A compressed message over `max_message_size` once inflated is 1009,
/// and an exact fit passes.
#[test]
fn inflated_size_is_bounded_by_max_message_size() {
    let text = "a".repeat(10_000);
    let z = compressed(&text);
    for (limit, ok) in [(10_000, true), (9_999, false)] {
        let config = Config::default().max_message_size(limit);
        let (_, mut s) = pair(DeflateParams::default(), DeflateParams::default(), config);
        s.receive(&frame(true, 0b100, Opcode::Text, &z, true));
        match s.next_event() {
            Ok(Some(Event::Text(t))) => assert!(ok && t.len() == 10_000),
            Err(e @ ProtocolError::MessageTooLarge { .. }) => {
                assert!(!ok, "{e}");
                assert_eq!(close_code(&mut s), 1009);
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Split blocking sockets: the writer compresses, the reader inflates.
#[test]
fn blocking_accept_and_client_negotiate_and_split() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let config = Config::default().deflate(DeflateConfig::default().no_context_takeover(true));
        let (mut ws, _) = blocking::accept_with(stream, config, &[]).unwrap();
        assert!(ws.connection().deflate_enabled());
        loop {
            match ws.read().unwrap() {
                Event::Text(t) => ws.send(t).unwrap(),
                Event::Close(_) => return,
                _ => {}
            }
        }
    });
    let request = ClientRequest::from_url(&format!("ws://{addr}/")).unwrap();
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let config = Config::default().deflate(DeflateConfig::default());
    let (ws, resp) = blocking::client(stream, &request, config).unwrap();
    let params = resp.deflate.expect("negotiated");
    assert!(params.recv_no_context_takeover);
    let (mut reader, writer) = ws.split().unwrap();
    let long = CHAT.repeat(30);
    for _ in 0..3 {
        writer.send(long.as_str()).unwrap();
        assert_eq!(reader.read().unwrap(), Event::Text(long.clone().into()));
    }
    writer.close(CloseCode::NORMAL, "").unwrap();
    assert!(matches!(reader.read().unwrap(), Event::Close(_)));
    server.join().unwrap();
}

#[test]
fn handshake_offer_and_answer_end_to_end() {
    let req = ClientRequest::new("h", 80, "/")
        .unwrap()
        .deflate(DeflateConfig::default().request_peer_no_context_takeover(true));
    let ParsedRequest::Complete(r, _) = parse_request(&req.to_bytes(), &Config::default()) else {
        panic!()
    };
    let accept = r.negotiate_deflate(&DeflateConfig::default()).unwrap();
    assert_eq!(
        accept.response(),
        "permessage-deflate; server_no_context_takeover"
    );
    let answer = r.accept_with_deflate(None, Some(&accept));
    let Ok(ParsedResponse::Complete(resp, _)) = req.parse_response(&answer, &Config::default())
    else {
        panic!()
    };
    let p = resp.deflate.unwrap();
    assert!(p.recv_no_context_takeover);
    assert_eq!(
        &p,
        &DeflateParams {
            recv_no_context_takeover: true,
            ..DeflateParams::default()
        }
    );

    // An answer the client must fail on (RFC 7692 §7.1).
    let bad = |ext: &str| {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Extensions: {ext}\r\n\r\n",
            accept_key(req.key().as_bytes())
        )
    };
    for ext in [
        "permessage-deflate",
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=x",
        "permessage-deflate; server_no_context_takeover; client_max_window_bits",
        "permessage-deflate; server_no_context_takeover, permessage-deflate; server_no_context_takeover",
        "x-other",
    ] {
        let err = req.parse_response(bad(ext).as_bytes(), &Config::default());
        assert!(
            matches!(
                err,
                Err(HandshakeError::DeflateAnswer { .. } | HandshakeError::NotOffered(_))
            ),
            "{ext}: {err:?}"
        );
    }
    // Not offered at all.
    let plain = ClientRequest::new("h", 80, "/").unwrap();
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
        accept_key(plain.key().as_bytes())
    );
    assert!(matches!(
        plain.parse_response(answer.as_bytes(), &Config::default()),
        Err(HandshakeError::NotOffered(_))
    ));
}

fn params_strategy() -> impl Strategy<Value = DeflateParams> {
    (9u8..=15, any::<bool>(), 1u8..=9, 0usize..64).prop_map(|(bits, nct, level, min)| {
        DeflateParams {
            send_window_bits: bits,
            recv_window_bits: bits,
            send_no_context_takeover: nct,
            recv_no_context_takeover: nct,
            level,
            min_size: min,
        }
    })
}

fn message_strategy() -> impl Strategy<Value = (bool, Vec<u8>)> {
    prop_oneof![
        "[a-z {}\":,]{0,2000}".prop_map(|s| (true, s.into_bytes())),
        proptest::collection::vec(any::<u8>(), 0..3000).prop_map(|b| (false, b)),
        (0u8..4, 0usize..20_000).prop_map(|(b, n)| (false, vec![b; n])),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Messages both ways, with compression, delivered in arbitrary
    /// chunks: every message arrives as sent.
    #[test]
    fn round_trip_in_arbitrary_chunks(
        params in params_strategy(),
        msgs in proptest::collection::vec(message_strategy(), 1..12),
        cuts in proptest::collection::vec(1usize..700, 1..40),
    ) {
        for sender in [Role::Client, Role::Server] {
            let (mut c, mut s) = pair(params.clone(), params.clone(), Config::default());
            let (tx, rx) = if sender == Role::Client { (&mut c, &mut s) } else { (&mut s, &mut c) };
            for (text, m) in &msgs {
                if *text {
                    tx.send_text(std::str::from_utf8(m).unwrap()).unwrap();
                } else {
                    tx.send_binary(m).unwrap();
                }
            }
            let wire = tx.take_output();
            let mut got = Vec::new();
            let mut at = 0;
            let mut i = 0;
            while at < wire.len() {
                let n = cuts[i % cuts.len()].min(wire.len() - at);
                i += 1;
                rx.receive(&wire[at..at + n]);
                at += n;
                while let Some(e) = rx.next_event().unwrap() {
                    got.push(e);
                }
            }
            prop_assert_eq!(got.len(), msgs.len());
            for (e, (text, m)) in got.iter().zip(&msgs) {
                match e {
                    Event::Text(t) => prop_assert!(*text && t.as_bytes() == &m[..]),
                    Event::Binary(b) => prop_assert!(!*text && b[..] == m[..]),
                    other => prop_assert!(false, "{:?}", other),
                }
            }
        }
    }
}

/// A prepared message goes out compressed wherever that is valid, plain
/// elsewhere, and a connection that keeps context stays in step with its
/// peer around it.
#[test]
fn prepared_message_to_many_connections() {
    use wsproto::deflate::PreparedMessage;
    // Unlike CHAT: a back-reference into it would not decode to CHAT.
    let text = "zebra quartz vexing jumpy fog, ".repeat(30);
    let msg = PreparedMessage::text(&text, 6, 32);
    assert!(msg.is_compressed());
    let base = DeflateParams::default();
    let peers = [
        (Role::Server, Some(base.clone()), true),
        (
            Role::Server,
            Some(DeflateParams {
                send_no_context_takeover: true,
                ..base.clone()
            }),
            true,
        ),
        (
            Role::Server,
            Some(DeflateParams {
                send_window_bits: 8,
                ..base.clone()
            }),
            false,
        ),
        (
            Role::Server,
            Some(DeflateParams {
                send_window_bits: 9,
                ..base.clone()
            }),
            false,
        ),
        (Role::Server, None, false),
        (Role::Client, Some(base.clone()), true),
    ];
    for (role, params, compressed) in peers {
        let (mut c, mut s) = pair(base.clone(), base.clone(), Config::default());
        if let Some(p) = &params {
            // The sender's own parameters; its peer inflates with 15 bits.
            let sender = if role == Role::Server { &mut s } else { &mut c };
            *sender = Connection::new(role, Config::default());
            sender.enable_deflate(p.clone());
        } else if role == Role::Server {
            s = Connection::new(Role::Server, Config::default());
        }
        let (tx, rx) = if role == Role::Server {
            (&mut s, &mut c)
        } else {
            (&mut c, &mut s)
        };
        tx.send_text(CHAT).unwrap();
        tx.send_prepared(&msg).unwrap();
        tx.send_text(CHAT).unwrap();
        let wire = tx.take_output();
        let f = frames(&wire, role);
        assert_eq!(f[1].0.rsv == 0b100, compressed, "{role:?} {params:?}");
        if role == Role::Server && !compressed {
            assert_eq!(f[1].1, text.as_bytes());
        }
        rx.receive(&wire);
        for want in [CHAT, text.as_str(), CHAT] {
            assert_eq!(rx.next_event().unwrap(), Some(Event::Text(want.into())));
        }
    }
}

/// `blocking::WebSocket::send_prepared` and `Writer::send_prepared`: one
/// prepared message goes compressed to a peer that negotiated deflate and
/// plain to one that did not, and a context-keeping connection stays in
/// step around it.
#[test]
fn blocking_send_prepared_to_deflate_and_plain_peers() {
    use wsproto::deflate::PreparedMessage;
    let text = "zebra quartz vexing jumpy fog, ".repeat(30);
    let msg = PreparedMessage::text(&text, 6, 32);
    assert!(msg.is_compressed());
    for (deflate, split) in [(true, false), (false, false), (true, true)] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let msg = msg.clone();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let config = Config::default().deflate(DeflateConfig::default());
            let (mut ws, _) = blocking::accept_with(stream, config, &[]).unwrap();
            if split {
                let (mut reader, writer) = ws.split().unwrap();
                writer.send(CHAT).unwrap();
                writer.send_prepared(&msg).unwrap();
                writer.send(CHAT).unwrap();
                while !matches!(reader.read(), Ok(Event::Close(_)) | Err(_)) {}
            } else {
                ws.send(CHAT).unwrap();
                ws.send_prepared(&msg).unwrap();
                ws.send(CHAT).unwrap();
                while !matches!(ws.read(), Ok(Event::Close(_)) | Err(_)) {}
            }
        });
        let stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // A raw reader on the client side, to see RSV1 on the wire.
        let request = ClientRequest::from_url(&format!("ws://{addr}/")).unwrap();
        let config = if deflate {
            Config::default().deflate(DeflateConfig::default())
        } else {
            Config::default()
        };
        let counted = Counted(stream, 0);
        let (mut ws, resp) =
            blocking::client(blocking::AnyStream(counted), &request, config).unwrap();
        assert_eq!(resp.deflate.is_some(), deflate);
        for want in [CHAT, text.as_str(), CHAT] {
            assert_eq!(ws.read().unwrap(), Event::Text(want.into()));
        }
        // The prepared text arrived compressed exactly when negotiated
        // (all bytes read, handshake included: it may share a read with
        // the first frames).
        let read = ws.get_ref().0 .1;
        assert_eq!(read < text.len(), deflate, "{read} bytes read");
        ws.close(CloseCode::NORMAL, "").unwrap();
        server.join().unwrap();
    }
}

/// A stream that counts the bytes read from it.
struct Counted(std::net::TcpStream, usize);

impl std::io::Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        self.1 += n;
        Ok(n)
    }
}

impl std::io::Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Fragments the caller sends are compressed as one message (RFC 7692
/// §6.1): RSV1 on the first frame only, continuations compressed too, a
/// ping between them untouched; both roles, with and without context
/// takeover, empty fragments included, and messages before and after stay
/// in step with the peer's window.
#[test]
fn user_fragmented_sends_are_compressed_across_fragments() {
    let text = CHAT.repeat(40);
    let b = text.as_bytes();
    // Fragment boundaries (byte offsets) into `text`.
    let splits: [&[usize]; 4] = [
        &[100],
        &[0, 1, 2, 1000, 1000, 3000],
        &[b.len() / 2, b.len()], // an empty final fragment
        &[7, 500, 501, 2222],
    ];
    for nct in [false, true] {
        let params = DeflateParams {
            send_no_context_takeover: nct,
            recv_no_context_takeover: nct,
            ..DeflateParams::default()
        };
        for sender in [Role::Client, Role::Server] {
            let (mut c, mut s) = pair(params.clone(), params.clone(), Config::default());
            let (tx, rx) = if sender == Role::Client {
                (&mut c, &mut s)
            } else {
                (&mut s, &mut c)
            };
            for cuts in splits {
                tx.send_text(CHAT).unwrap();
                // The last fragment is the rest (empty after a cut at the end).
                let bounds: Vec<usize> = cuts.iter().copied().chain([b.len()]).collect();
                let mut at = 0;
                for (i, &cut) in bounds.iter().enumerate() {
                    let op = if i == 0 {
                        Opcode::Text
                    } else {
                        Opcode::Continuation
                    };
                    tx.send_fragment(op, &b[at..cut], i == bounds.len() - 1)
                        .unwrap();
                    if i == 0 {
                        tx.ping(b"between").unwrap();
                    }
                    at = cut;
                }
                let wire = tx.take_output();
                let f = frames(&wire, sender);
                // CHAT, then the fragments with a ping after the first.
                let data: Vec<_> = f[1..]
                    .iter()
                    .filter(|(h, _)| h.opcode != Opcode::Ping)
                    .collect();
                assert_eq!(data[0].0.rsv, 0b100, "{cuts:?}");
                assert!(data[1..].iter().all(|(h, _)| h.rsv == 0), "{cuts:?}");
                assert!(data.last().unwrap().0.fin);
                let on_wire: usize = data.iter().map(|(_, p)| p.len()).sum();
                assert!(on_wire < b.len() / 2, "{cuts:?}: {on_wire} bytes");
                rx.receive(&wire);
                assert_eq!(rx.next_event().unwrap(), Some(Event::Text(CHAT.into())));
                assert_eq!(
                    rx.next_event().unwrap(),
                    Some(Event::Ping(b"between"[..].into()))
                );
                assert_eq!(
                    rx.next_event().unwrap(),
                    Some(Event::Text(text.clone().into()))
                );
            }
            // A whole message after them still inflates against the window.
            tx.send_text(&text).unwrap();
            rx.receive(&tx.take_output());
            assert_eq!(
                rx.next_event().unwrap(),
                Some(Event::Text(text.clone().into()))
            );
        }
    }
}
