//! The sans-IO `Connection` driven in memory: every protocol rule, duty and
//! limit, plus property tests (round trips, arbitrary chunking, garbage).

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use wsproto::frame::encode_frame;
use wsproto::{
    CloseCode, Config, Connection, Error, Event, EventRef, Opcode, ProtocolError, Role, State,
    UsageError,
};

const KEY: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// A frame as a client would send it (masked).
fn client_frame(fin: bool, opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(&mut out, fin, opcode, payload, Some(KEY));
    out.to_vec()
}

fn raw(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = client_frame(true, Opcode::Binary, payload);
    v[0] = first;
    v
}

fn server() -> Connection {
    Connection::new(Role::Server, Config::default())
}

/// Decodes everything a connection has queued, as the peer would see it.
fn peer_events(from: &mut Connection) -> Vec<Event> {
    let peer_role = match from.role() {
        Role::Client => Role::Server,
        Role::Server => Role::Client,
    };
    let mut peer = Connection::new(peer_role, Config::default());
    peer.receive(&from.take_output());
    let mut events = Vec::new();
    while let Ok(Some(e)) = peer.next_event() {
        events.push(e);
    }
    events
}

fn close_sent(conn: &mut Connection) -> Option<u16> {
    peer_events(conn).into_iter().find_map(|e| match e {
        Event::Close(f) => Some(f.code.as_u16()),
        _ => None,
    })
}

fn events(conn: &mut Connection, bytes: &[u8]) -> Result<Vec<Event>, ProtocolError> {
    conn.receive(bytes);
    let mut out = Vec::new();
    while let Some(e) = conn.next_event()? {
        out.push(e);
    }
    Ok(out)
}

#[test]
fn violations_queue_the_right_close_code() {
    let long_ping = {
        let mut v = client_frame(true, Opcode::Ping, &[0; 126]);
        v[0] = 0x89;
        v
    };
    let cases: Vec<(Vec<u8>, ProtocolError, u16)> = vec![
        (raw(0xC2, b"x"), ProtocolError::ReservedBits(4), 1002),
        (raw(0x83, b"x"), ProtocolError::UnknownOpcode(3), 1002),
        (
            raw(0x09, b""),
            ProtocolError::FragmentedControlFrame(Opcode::Ping),
            1002,
        ),
        (
            long_ping,
            ProtocolError::ControlFrameTooLong {
                opcode: Opcode::Ping,
                len: 126,
            },
            1002,
        ),
        (b"\x82\x01x".to_vec(), ProtocolError::UnmaskedFrame, 1002),
        (
            client_frame(true, Opcode::Continuation, b"x"),
            ProtocolError::UnexpectedContinuation,
            1002,
        ),
        (
            [
                client_frame(false, Opcode::Text, b"a"),
                client_frame(true, Opcode::Binary, b"b"),
            ]
            .concat(),
            ProtocolError::ExpectedContinuation(Opcode::Binary),
            1002,
        ),
        (
            client_frame(true, Opcode::Text, b"\xff"),
            ProtocolError::InvalidUtf8 { offset: 0 },
            1007,
        ),
        (
            client_frame(true, Opcode::Close, b"\x03"),
            ProtocolError::CloseTooShort,
            1002,
        ),
        (
            client_frame(true, Opcode::Close, b"\x03\xed"),
            ProtocolError::InvalidCloseCode(1005),
            1002,
        ),
        (
            client_frame(true, Opcode::Close, b"\x03\xe8\xc3"),
            ProtocolError::InvalidCloseReason { offset: 0 },
            1007,
        ),
    ];
    for (wire, err, code) in cases {
        let mut conn = server();
        assert_eq!(events(&mut conn, &wire), Err(err.clone()), "{wire:x?}");
        assert!(conn.is_closed());
        assert_eq!(close_sent(&mut conn), Some(code), "{err}");
        // Nothing more comes out of a failed connection, whatever arrives.
        assert_eq!(
            events(&mut conn, &client_frame(true, Opcode::Text, b"late")),
            Ok(vec![])
        );
    }
    // And the client side: a masked frame from a server.
    let mut client = Connection::new(Role::Client, Config::default());
    assert_eq!(
        events(&mut client, &client_frame(true, Opcode::Text, b"x")),
        Err(ProtocolError::MaskedFrame)
    );
    assert_eq!(close_sent(&mut client), Some(1002));
}

#[test]
fn ping_gets_pong_with_same_payload_even_mid_message() {
    let mut conn = server();
    let wire = [
        client_frame(false, Opcode::Text, b"hel"),
        client_frame(true, Opcode::Ping, b"are you there"),
        client_frame(true, Opcode::Continuation, b"lo"),
    ]
    .concat();
    assert_eq!(
        events(&mut conn, &wire).unwrap(),
        vec![
            Event::Ping(Bytes::from_static(b"are you there")),
            Event::Text("hello".into())
        ]
    );
    assert_eq!(
        peer_events(&mut conn),
        vec![Event::Pong(Bytes::from_static(b"are you there"))]
    );
}

#[test]
fn close_echo_then_closed() {
    let mut conn = server();
    let got = events(
        &mut conn,
        &client_frame(true, Opcode::Close, b"\x0f\xa0bye"),
    )
    .unwrap();
    assert!(matches!(&got[..], [Event::Close(f)] if f.code.as_u16() == 4000 && f.reason == "bye"));
    assert_eq!(conn.state(), State::Closed);
    assert_eq!(
        conn.pending_output(),
        b"\x88\x05\x0f\xa0bye",
        "the echo carries the peer's code and reason (RFC 6455 §5.5.1)"
    );
    assert_eq!(close_sent(&mut conn), Some(4000));
    assert!(conn.should_close_transport());
    assert!(matches!(conn.send_text("x"), Err(Error::Closed)));
    // An empty close is echoed empty and reported as 1005.
    let mut conn = server();
    let got = events(&mut conn, &client_frame(true, Opcode::Close, b"")).unwrap();
    assert!(matches!(&got[..], [Event::Close(f)] if f.code == CloseCode::NO_STATUS));
    assert_eq!(conn.pending_output(), b"\x88\x00");
}

#[test]
fn we_close_first_then_peer_answers() {
    let mut conn = server();
    conn.close(CloseCode::GOING_AWAY, "restart").unwrap();
    assert_eq!(conn.state(), State::Closing);
    assert_eq!(close_sent(&mut conn), Some(1001));
    assert!(matches!(conn.send_binary(b"x"), Err(Error::Closed)));
    conn.close(CloseCode::NORMAL, "").unwrap(); // idempotent
    assert!(conn.pending_output().is_empty());
    // Data still arrives while closing; pings are not answered any more.
    let wire = [
        client_frame(true, Opcode::Text, b"in flight"),
        client_frame(true, Opcode::Ping, b"p"),
        client_frame(true, Opcode::Close, b"\x03\xe9"),
    ]
    .concat();
    let got = events(&mut conn, &wire).unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0], Event::Text("in flight".into()));
    assert!(matches!(&got[2], Event::Close(f) if f.code == CloseCode::GOING_AWAY));
    assert!(
        conn.pending_output().is_empty(),
        "no pong and no second close"
    );
    assert!(conn.should_close_transport());
}

#[test]
fn eof_is_an_abnormal_close_event() {
    let mut conn = server();
    let frame = client_frame(true, Opcode::Text, b"partial");
    conn.receive(&frame[..5]);
    assert_eq!(conn.next_event(), Ok(None));
    conn.receive_eof();
    assert!(
        matches!(conn.next_event(), Ok(Some(Event::Close(f))) if f.code == CloseCode::ABNORMAL)
    );
    assert_eq!(conn.next_event(), Ok(None));
    assert!(conn.is_closed());
}

#[test]
fn invalid_utf8_fails_inside_a_partial_frame() {
    let mut conn = server();
    // 10 valid bytes, then F4 90 (beyond U+10FFFF), then more.
    let mut payload = "κόσμε".as_bytes().to_vec();
    assert_eq!(payload.len(), 10);
    payload.extend_from_slice(b"\xf4\x90\x80\x80abcdef");
    let bad = client_frame(true, Opcode::Text, &payload);
    // Header (6 bytes) + the valid part + the first two invalid bytes only.
    conn.receive(&bad[..6 + 10 + 2]);
    assert_eq!(
        conn.next_event(),
        Err(ProtocolError::InvalidUtf8 { offset: 10 })
    );
    assert_eq!(close_sent(&mut conn), Some(1007));
}

#[test]
fn code_point_split_across_fragments() {
    let text = "añ€😀".as_bytes();
    for split in 0..=text.len() {
        let mut conn = server();
        let wire = [
            client_frame(false, Opcode::Text, &text[..split]),
            client_frame(true, Opcode::Continuation, &text[split..]),
        ]
        .concat();
        assert_eq!(
            events(&mut conn, &wire).unwrap(),
            vec![Event::Text("añ€😀".into())]
        );
    }
    // Ending a text message mid code point is invalid.
    let mut conn = server();
    let wire = [
        client_frame(false, Opcode::Text, b"a\xe2"),
        client_frame(true, Opcode::Continuation, b""),
    ]
    .concat();
    assert!(matches!(
        events(&mut conn, &wire),
        Err(ProtocolError::InvalidUtf8 { .. })
    ));
}

#[test]
fn limits_are_checked_before_buffering() {
    // Frame: only the header of a too-large frame has arrived, and it fails.
    let mut conn = Connection::new(Role::Server, Config::default().max_frame_size(1000));
    let header = &client_frame(true, Opcode::Binary, &[0; 1001])[..8];
    assert_eq!(
        events(&mut conn, header),
        Err(ProtocolError::FrameTooLarge {
            len: 1001,
            max: 1000
        })
    );
    assert_eq!(close_sent(&mut conn), Some(1009));

    // Message: fragments adding up past the limit.
    let mut conn = Connection::new(Role::Server, Config::default().max_message_size(10));
    let wire = [
        client_frame(false, Opcode::Binary, &[1; 6]),
        client_frame(true, Opcode::Continuation, &[2; 5]),
    ]
    .concat();
    assert_eq!(
        events(&mut conn, &wire),
        Err(ProtocolError::MessageTooLarge { len: 11, max: 10 })
    );
    assert_eq!(close_sent(&mut conn), Some(1009));
    let mut conn = Connection::new(Role::Server, Config::default().max_message_size(10));
    assert_eq!(
        events(&mut conn, &client_frame(true, Opcode::Text, &[b'a'; 11])),
        Err(ProtocolError::MessageTooLarge { len: 11, max: 10 })
    );

    // Fragments: at most 3 frames per message.
    let mut conn = Connection::new(Role::Server, Config::default().max_fragments(3));
    let mut wire = client_frame(false, Opcode::Binary, b"a");
    for _ in 0..3 {
        wire.extend(client_frame(false, Opcode::Continuation, b""));
    }
    assert_eq!(
        events(&mut conn, &wire),
        Err(ProtocolError::TooManyFragments { max: 3 })
    );
    assert_eq!(close_sent(&mut conn), Some(1009));
    // Exactly 3 is fine.
    let mut conn = Connection::new(Role::Server, Config::default().max_fragments(3));
    let wire = [
        client_frame(false, Opcode::Binary, b"a"),
        client_frame(false, Opcode::Continuation, b"b"),
        client_frame(true, Opcode::Continuation, b"c"),
    ]
    .concat();
    assert_eq!(
        events(&mut conn, &wire).unwrap(),
        vec![Event::Binary(Bytes::from_static(b"abc"))]
    );
}

#[test]
fn output_buffer_limit_is_visible() {
    let mut conn = Connection::new(Role::Server, Config::default().max_output_buffer(100));
    conn.send_binary(&[0; 90]).unwrap();
    conn.send_binary(&[0; 90]).unwrap(); // crosses the limit by one frame
    assert!(matches!(
        conn.send_binary(b"x"),
        Err(Error::OutputFull {
            pending: 184,
            max: 100
        })
    ));
    conn.consume_output(184);
    conn.send_binary(b"x").unwrap();
    // A ping flood while the output is full gets no more pongs.
    let mut conn = Connection::new(Role::Server, Config::default().max_output_buffer(10));
    let wire: Vec<u8> = (0..20)
        .flat_map(|_| client_frame(true, Opcode::Ping, b"0123"))
        .collect();
    assert_eq!(events(&mut conn, &wire).unwrap().len(), 20);
    assert_eq!(
        conn.pending_output().len(),
        12,
        "two pongs of 6 bytes, then the output was full"
    );
}

#[test]
fn usage_errors() {
    let mut conn = server();
    assert!(matches!(
        conn.ping(&[0; 126]),
        Err(Error::Usage(UsageError::ControlPayloadTooLong(126)))
    ));
    assert!(matches!(
        conn.close(CloseCode::NO_STATUS, ""),
        Err(Error::Usage(UsageError::UnsendableCloseCode(_)))
    ));
    assert!(matches!(
        conn.close(CloseCode::NORMAL, &"x".repeat(124)),
        Err(Error::Usage(UsageError::CloseReasonTooLong(124)))
    ));
    assert!(matches!(
        conn.send_fragment(Opcode::Continuation, b"", true),
        Err(Error::Usage(_))
    ));
    assert!(matches!(
        conn.send_fragment(Opcode::Ping, b"", true),
        Err(Error::Usage(_))
    ));
    conn.send_fragment(Opcode::Text, b"a", false).unwrap();
    assert!(matches!(
        conn.send_text("b"),
        Err(Error::Usage(UsageError::FragmentOrder(_)))
    ));
    assert!(matches!(
        conn.send_fragment(Opcode::Binary, b"", true),
        Err(Error::Usage(_))
    ));
    conn.ping(b"between fragments").unwrap();
    conn.send_fragment(Opcode::Continuation, b"b", true)
        .unwrap();
    let got = peer_events(&mut conn);
    assert_eq!(
        got,
        vec![
            Event::Ping(Bytes::from_static(b"between fragments")),
            Event::Text("ab".into())
        ]
    );
    assert_eq!(conn.state(), State::Open);
}

#[test]
fn client_frames_are_masked_with_fresh_keys() {
    let mut client = Connection::new(Role::Client, Config::default());
    client.send_binary(b"same").unwrap();
    client.send_binary(b"same").unwrap();
    let out = client.take_output();
    assert_eq!(out[1] & 0x80, 0x80, "MASK bit");
    assert_ne!(out[2..6], out[12..16], "a new key per frame");
    assert_ne!(&out[6..10], b"same");
}

#[test]
fn borrowed_events_interleave_with_owned_ones_and_reads() {
    let mut client = Connection::new(Role::Client, Config::default());
    client.send_text("héllo 世界").unwrap();
    client.send_fragment(Opcode::Binary, b"ab", false).unwrap();
    client.ping(b"p").unwrap();
    client
        .send_fragment(Opcode::Continuation, b"cd", true)
        .unwrap();
    client.send_binary(b"whole").unwrap();
    let wire = client.take_output();
    let mut conn = server();
    // The first message alone, then the rest while it is still lent.
    let first_len = 2 + 4 + "héllo 世界".len();
    conn.receive(&wire[..first_len]);
    assert_eq!(
        conn.next_event_ref(),
        Ok(Some(EventRef::Text("héllo 世界")))
    );
    conn.receive(&wire[first_len..]);
    assert_eq!(conn.next_event_ref(), Ok(Some(EventRef::Ping(b"p"))));
    assert_eq!(
        conn.next_event(),
        Ok(Some(Event::Binary(Bytes::from_static(b"abcd"))))
    );
    assert_eq!(conn.next_event_ref(), Ok(Some(EventRef::Binary(b"whole"))));
    assert_eq!(conn.next_event_ref(), Ok(None));
    // The lent bytes are gone from the buffer once the next call starts.
    conn.receive(&client_frame(true, Opcode::Text, b"\xff"));
    assert_eq!(
        conn.next_event_ref(),
        Err(ProtocolError::InvalidUtf8 { offset: 0 })
    );
    assert_eq!(close_sent(&mut conn), Some(1007));
}

// ---- property tests ------------------------------------------------------

#[derive(Debug, Clone)]
enum Msg {
    Text(String, Vec<usize>),
    Binary(Vec<u8>, Vec<usize>),
    Ping(Vec<u8>),
}

fn arb_msg() -> impl Strategy<Value = Msg> {
    let cuts = proptest::collection::vec(0usize..300, 0..5);
    prop_oneof![
        ("\\PC{0,60}", cuts.clone()).prop_map(|(s, c)| Msg::Text(s, c)),
        (proptest::collection::vec(any::<u8>(), 0..300), cuts).prop_map(|(b, c)| Msg::Binary(b, c)),
        proptest::collection::vec(any::<u8>(), 0..=125).prop_map(Msg::Ping),
    ]
}

/// Sends `msg`, fragmented at `cuts` (byte offsets), from `conn`.
fn send(conn: &mut Connection, msg: &Msg) {
    let (opcode, data, cuts) = match msg {
        Msg::Ping(p) => return conn.ping(p).unwrap(),
        Msg::Text(s, c) => (Opcode::Text, s.as_bytes(), c),
        Msg::Binary(b, c) => (Opcode::Binary, &b[..], c),
    };
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(data.len())).collect();
    cuts.sort_unstable();
    cuts.dedup();
    if cuts.is_empty() {
        match opcode {
            Opcode::Text => conn.send_text(std::str::from_utf8(data).unwrap()).unwrap(),
            _ => conn.send_binary(data).unwrap(),
        }
        return;
    }
    let mut start = 0;
    let mut op = opcode;
    for cut in cuts {
        conn.send_fragment(op, &data[start..cut], false).unwrap();
        op = Opcode::Continuation;
        start = cut;
    }
    conn.send_fragment(op, &data[start..], true).unwrap();
}

fn expected(msg: &Msg) -> Event {
    match msg {
        Msg::Text(s, _) => Event::Text(s.as_str().into()),
        Msg::Binary(b, _) => Event::Binary(Bytes::copy_from_slice(b)),
        Msg::Ping(p) => Event::Ping(Bytes::copy_from_slice(p)),
    }
}

/// Feeds `wire` in chunks ending at `cuts`; returns the events and the error.
fn feed_chunked(role: Role, wire: &[u8], cuts: &[usize]) -> (Vec<Event>, Option<ProtocolError>) {
    feed(role, wire, cuts, false).0
}

/// As `feed_chunked`, through `next_event_ref` if `borrowed`; also returns
/// what the connection queued to send (pongs, close echoes).
#[allow(clippy::type_complexity)]
fn feed(
    role: Role,
    wire: &[u8],
    cuts: &[usize],
    borrowed: bool,
) -> ((Vec<Event>, Option<ProtocolError>), Vec<u8>) {
    let mut conn = Connection::new(
        role,
        Config::default()
            .max_message_size(4096)
            .max_frame_size(2048),
    );
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(wire.len())).collect();
    cuts.sort_unstable();
    cuts.push(wire.len());
    let mut start = 0;
    let mut out = Vec::new();
    for cut in cuts {
        conn.receive(&wire[start..cut]);
        start = cut;
        loop {
            let next = if borrowed {
                conn.next_event_ref().map(|e| e.map(|e| e.to_event()))
            } else {
                conn.next_event()
            };
            match next {
                Ok(Some(e)) => out.push(e),
                Ok(None) => break,
                Err(e) => return ((out, Some(e)), conn.take_output().to_vec()),
            }
        }
    }
    ((out, None), conn.take_output().to_vec())
}

proptest! {
    #[test]
    fn roundtrip_both_roles(msgs in proptest::collection::vec(arb_msg(), 0..8), client_sends in any::<bool>()) {
        let (from, to) = if client_sends { (Role::Client, Role::Server) } else { (Role::Server, Role::Client) };
        let mut sender = Connection::new(from, Config::default());
        for m in &msgs {
            send(&mut sender, m);
        }
        sender.close(CloseCode::NORMAL, "end").unwrap();
        let wire = sender.take_output();
        let (got, err) = feed_chunked(to, &wire, &[]);
        prop_assert_eq!(err, None);
        let mut want: Vec<Event> = msgs.iter().map(expected).collect();
        want.push(Event::Close(wsproto::CloseFrame { code: CloseCode::NORMAL, reason: "end".into() }));
        prop_assert_eq!(got, want);
    }

    #[test]
    fn any_chunking_gives_the_same_events(msgs in proptest::collection::vec(arb_msg(), 0..6),
                                          cuts in proptest::collection::vec(0usize..2000, 0..40)) {
        let mut sender = Connection::new(Role::Client, Config::default());
        for m in &msgs {
            send(&mut sender, m);
        }
        let wire = sender.take_output();
        let whole = feed_chunked(Role::Server, &wire, &[]);
        let split = feed_chunked(Role::Server, &wire, &cuts);
        prop_assert_eq!(&whole, &split);
        // One byte at a time, too.
        let bytewise: Vec<usize> = (0..wire.len()).collect();
        prop_assert_eq!(&whole, &feed_chunked(Role::Server, &wire, &bytewise));
    }

    #[test]
    fn borrowed_events_match_owned_events(msgs in proptest::collection::vec(arb_msg(), 0..6),
                                          cuts in proptest::collection::vec(0usize..2000, 0..40),
                                          garbage in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut sender = Connection::new(Role::Client, Config::default());
        for m in &msgs {
            send(&mut sender, m);
        }
        let mut wire = sender.take_output().to_vec();
        // Often a violation at the end, to compare the errors and closes too.
        wire.extend(&garbage);
        let owned = feed(Role::Server, &wire, &cuts, false);
        let borrowed = feed(Role::Server, &wire, &cuts, true);
        prop_assert_eq!(&owned, &borrowed);
        prop_assert_eq!(&owned, &feed(Role::Server, &wire, &[], true));
    }

    #[test]
    fn garbage_gives_a_typed_error_and_the_matching_close(
        prefix_valid in any::<bool>(),
        garbage in proptest::collection::vec(any::<u8>(), 0..400),
        cuts in proptest::collection::vec(0usize..400, 0..10),
        role in prop_oneof![Just(Role::Client), Just(Role::Server)],
    ) {
        let mut wire = Vec::new();
        if prefix_valid && role == Role::Server {
            wire.extend(client_frame(true, Opcode::Text, b"ok"));
        }
        wire.extend(&garbage);
        let whole = feed_chunked(role, &wire, &[]);
        prop_assert_eq!(&whole, &feed_chunked(role, &wire, &cuts));
        if let Some(err) = whole.1 {
            let mut conn = Connection::new(role, Config::default().max_message_size(4096).max_frame_size(2048));
            conn.receive(&wire);
            while let Ok(Some(_)) = conn.next_event() {}
            prop_assert!(conn.is_closed());
            // The Close queued for the error carries its code.
            if !whole.0.iter().any(|e| matches!(e, Event::Close(_))) {
                prop_assert_eq!(close_sent(&mut conn), Some(err.close_code().as_u16()));
            }
        }
        for e in &whole.0 {
            if let Event::Binary(b) = e { prop_assert!(b.len() <= 4096); }
            if let Event::Text(t) = e { prop_assert!(t.len() <= 4096); }
        }
    }
}

/// Counts the bytes allocated and not yet freed by the current thread, so
/// a test can see what the events it keeps hold on to.
mod live {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
    }

    pub struct Counting;

    fn add(n: isize) {
        // `try_with`: nothing to count while the thread is being torn down.
        let _ = LIVE.try_with(|c| c.set(c.get() + n));
    }

    // SAFETY: every method forwards to `System` with the caller's
    // arguments unchanged; the only addition is a thread-local counter
    // (a const-initialised `Cell`, which itself never allocates).
    #[allow(unsafe_code)]
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            add(layout.size() as isize);
            // SAFETY: forwarded as received (the caller upholds `alloc`'s contract).
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            add(-(layout.size() as isize));
            // SAFETY: `ptr` came from `System.alloc` with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            add(new_size as isize - layout.size() as isize);
            // SAFETY: as `dealloc`, and `new_size` is the caller's.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    /// Bytes this thread has allocated and not freed.
    pub fn bytes() -> isize {
        LIVE.with(Cell::get)
    }
}

#[global_allocator]
static ALLOC: live::Counting = live::Counting;

#[test]
fn retained_small_messages_do_not_pin_receive_buffers() {
    // Each message arrives in its own 16 KiB read, as on a quiet socket
    // (the blocking API reads 16 KiB at a time). Split off the receive
    // buffer, each 10-byte message kept its whole allocation alive.
    struct OneFramePerRead {
        wire: Vec<u8>,
        pos: usize,
        frame_len: usize,
    }
    impl std::io::Read for OneFramePerRead {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let end = (self.pos + self.frame_len).min(self.wire.len());
            let n = end - self.pos;
            buf[..n].copy_from_slice(&self.wire[self.pos..end]);
            self.pos = end;
            Ok(n)
        }
    }
    const N: usize = 10_000;
    let frames: Vec<Vec<u8>> = (0..N)
        .map(|i| match i % 3 {
            0 => client_frame(true, Opcode::Text, b"0123456789"),
            1 => client_frame(true, Opcode::Binary, b"0123456789"),
            _ => client_frame(true, Opcode::Ping, b"0123456789"),
        })
        .collect();
    let mut wire = OneFramePerRead {
        frame_len: frames[0].len(),
        wire: frames.concat(),
        pos: 0,
    };
    drop(frames);
    let mut kept = Vec::with_capacity(N);
    let mut conn = server();
    let before = live::bytes();
    for _ in 0..N {
        conn.receive_from(&mut wire, 16 << 10).unwrap();
        let event = conn.next_event().unwrap().unwrap();
        assert!(!matches!(event, Event::Close(_)));
        kept.push(event);
        conn.take_output(); // the Pongs
    }
    drop(conn);
    let held = live::bytes() - before;
    let payload = (N * 10) as isize;
    // A copy of each payload (counted as requested, without the
    // allocator's rounding); sharing the receive buffers held
    // 10,000 × 16 KiB = 164 MB.
    assert!(
        held <= 2 * payload,
        "{N} messages of 10 bytes hold {held} bytes"
    );
    assert_eq!(kept.len(), N);
}

/// Feeds `wire` in pieces that end at `cuts`, each piece through
/// `receive` (copied and unmasked in one pass) or `receive_from` (read
/// into the buffer, unmasked in place) as `via_reader` says, reading at
/// most `max_read` bytes at a time.
fn feed_mixed(
    wire: &[u8],
    cuts: &[usize],
    via_reader: &[bool],
    max_read: usize,
) -> (Vec<Event>, Option<ProtocolError>) {
    feed_lazily(wire, cuts, via_reader, max_read, &[])
}

/// As `feed_mixed`, without asking for events after the pieces `lazy`
/// marks (so several pieces are buffered before `next_event` runs: a
/// frame the first one cut short may end in a later one before `poll`
/// ever saw its header).
fn feed_lazily(
    wire: &[u8],
    cuts: &[usize],
    via_reader: &[bool],
    max_read: usize,
    lazy: &[bool],
) -> (Vec<Event>, Option<ProtocolError>) {
    let mut conn = Connection::new(Role::Server, Config::default());
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(wire.len())).collect();
    cuts.sort_unstable();
    cuts.push(wire.len());
    let mut start = 0;
    let mut out = Vec::new();
    for (i, cut) in cuts.into_iter().enumerate() {
        let piece = &wire[start..cut];
        start = cut;
        if via_reader.get(i).copied().unwrap_or(false) {
            let mut reader = piece;
            while !reader.is_empty() {
                conn.receive_from(&mut reader, max_read).unwrap();
                loop {
                    match conn.next_event() {
                        Ok(Some(e)) => out.push(e),
                        Ok(None) => break,
                        Err(e) => return (out, Some(e)),
                    }
                }
            }
            continue;
        }
        conn.receive(piece);
        if lazy.get(i).copied().unwrap_or(false) && start < wire.len() {
            continue;
        }
        loop {
            match conn.next_event() {
                Ok(Some(e)) => out.push(e),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

proptest! {
    // Issue 12: payloads are unmasked while `receive` copies them (or in
    // place right after a read); how the bytes arrive must not matter,
    // frames larger than a read (streamed) included.
    #[test]
    fn copy_and_read_paths_unmask_alike(
        msgs in proptest::collection::vec(arb_msg(), 0..6),
        big in proptest::collection::vec(any::<u8>(), 0..5000),
        cuts in proptest::collection::vec(0usize..8000, 0..30),
        via_reader in proptest::collection::vec(any::<bool>(), 0..31),
        max_read in 1usize..3000,
        garbage in proptest::collection::vec(any::<u8>(), 0..20),
        lazy in proptest::collection::vec(any::<bool>(), 0..31),
    ) {
        let mut sender = Connection::new(Role::Client, Config::default());
        for m in &msgs {
            send(&mut sender, m);
        }
        sender.send_binary(&big).unwrap();
        sender.ping(b"p").unwrap();
        let mut wire = sender.take_output().to_vec();
        wire.extend(&garbage);
        let whole = feed_mixed(&wire, &[], &[], 1 << 20);
        prop_assert_eq!(&whole, &feed_lazily(&wire, &cuts, &via_reader, max_read, &lazy));
        prop_assert_eq!(whole.0.len() >= msgs.len() + 2, true);
    }
}

/// A text payload for the ASCII-verdict test: all ASCII, ASCII with one
/// 2-byte code point, or ASCII with one byte that breaks UTF-8, at a
/// random place; long enough (65+ bytes) to take the copy path that
/// checks for ASCII on the way.
fn arb_text_piece() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(0x20u8..0x7F, 0..400),
        0u8..3,
        any::<usize>(),
    )
        .prop_map(|(mut text, kind, at)| {
            let at = if text.is_empty() { 0 } else { at % text.len() };
            match kind {
                0 => {}
                1 => {
                    text.splice(at..at, "é".bytes());
                }
                _ => text.insert(at, 0xFF),
            }
            text
        })
}

proptest! {
    // Issue 12 (round 3): an all-ASCII text payload is known valid from
    // the copy that unmasks it, and `poll` skips validating it. Whatever
    // the pieces and however the bytes arrive, every message must come
    // out exactly as `std::str::from_utf8` judges it: text, or
    // `InvalidUtf8` at the first bad byte; fragments included (a code
    // point split across two frames, then ASCII, must still be checked).
    #[test]
    fn ascii_verdicts_match_std(
        msgs in proptest::collection::vec(
            (proptest::collection::vec(arb_text_piece(), 1..4), 0u8..3, any::<bool>()),
            1..6,
        ),
        cuts in proptest::collection::vec(0usize..6000, 0..30),
        via_reader in proptest::collection::vec(any::<bool>(), 0..31),
        max_read in 1usize..3000,
        lazy in proptest::collection::vec(any::<bool>(), 0..31),
    ) {
        let mut wire = Vec::new();
        let mut want = Vec::new();
        let mut want_err = None;
        for (pieces, split_char, binary_between) in &msgs {
            let mut pieces = pieces.clone();
            if *split_char > 0 && pieces.len() > 1 {
                // End a fragment inside a code point, and continue it in
                // the next (valid), or not (the next may be all ASCII,
                // which is then invalid from its first byte).
                pieces[0].extend_from_slice(&"é".as_bytes()[..1]);
                if *split_char == 1 {
                    pieces[1].insert(0, "é".as_bytes()[1]);
                }
            }
            let n = pieces.len();
            for (i, p) in pieces.iter().enumerate() {
                let op = if i == 0 { Opcode::Text } else { Opcode::Continuation };
                wire.extend(client_frame(i + 1 == n, op, p));
                if *binary_between && i == 0 {
                    wire.extend(client_frame(true, Opcode::Ping, b"x"));
                }
            }
            if *binary_between {
                wire.extend(client_frame(true, Opcode::Binary, &[0xC3; 100]));
            }
            if want_err.is_some() {
                continue;
            }
            let whole = pieces.concat();
            match std::str::from_utf8(&whole) {
                Ok(t) => {
                    // The Ping goes out after the first frame: inside a
                    // fragmented message, or after a one-frame one.
                    let ping = Event::Ping(Bytes::from_static(b"x"));
                    if *binary_between && n > 1 {
                        want.push(ping.clone());
                    }
                    want.push(Event::Text(t.into()));
                    if *binary_between && n == 1 {
                        want.push(ping);
                    }
                    if *binary_between {
                        want.push(Event::Binary(Bytes::from(vec![0xC3; 100])));
                    }
                }
                Err(e) => want_err = Some((want.len(), e.valid_up_to() as u64)),
            }
        }
        let (got, err) = feed_lazily(&wire, &cuts, &via_reader, max_read, &lazy);
        match want_err {
            None => {
                prop_assert_eq!(err, None);
                prop_assert_eq!(got, want);
            }
            Some((before, offset)) => {
                // Fail-fast may report before a Ping in the same message.
                prop_assert_eq!(err, Some(ProtocolError::InvalidUtf8 { offset }));
                prop_assert!(got.len() >= before && got.len() <= before + 1);
                prop_assert_eq!(&got[..before], &want[..before]);
            }
        }
    }
}

#[test]
fn receive_from_zeroes_the_read_buffer_once() {
    // A reader that reads the buffer it is lent (as `Read` allows: every
    // byte of it must be initialized) and reports whether it held
    // anything but zeros: bytes an earlier read left there. Zero-filling
    // before every read, the buffer was all zeros every time.
    struct Nosy {
        wire: Vec<u8>,
        pos: usize,
        per_read: usize,
        saw_old_bytes: bool,
        checksum: u64,
    }
    impl std::io::Read for Nosy {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.checksum = buf
                .iter()
                .fold(self.checksum, |h, &b| h.rotate_left(5) ^ u64::from(b));
            self.saw_old_bytes |= buf.iter().any(|&b| b != 0);
            let n = self.per_read.min(buf.len()).min(self.wire.len() - self.pos);
            buf[..n].copy_from_slice(&self.wire[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }
    let mut wire = Vec::new();
    let mut want = Vec::new();
    for i in 0..1000usize {
        let text = format!("message {i} ").repeat(1 + i % 7);
        wire.extend(client_frame(true, Opcode::Text, text.as_bytes()));
        want.push(Event::Text(text.into()));
    }
    for per_read in [1, 7, 100, 1000, 5000] {
        let mut reader = Nosy {
            wire: wire.clone(),
            pos: 0,
            per_read,
            saw_old_bytes: false,
            checksum: 0,
        };
        let mut conn = server();
        let mut got = Vec::new();
        while reader.pos < reader.wire.len() {
            conn.receive_from(&mut reader, 4096).unwrap();
            while let Some(e) = conn.next_event().unwrap() {
                got.push(e);
            }
        }
        assert_eq!(got, want, "{per_read} bytes per read");
        // (With few bytes per read the input holds little more than
        // headers, each payload streaming into its own buffer, and the
        // input is never reused within this test.)
        if per_read >= 1000 {
            assert!(
                reader.saw_old_bytes,
                "{per_read} bytes per read: zeroed before every read"
            );
        }
    }
}

/// A large frame streams into its own buffer, which is lent to the
/// reader: zeroed once, not before every read. Readers may write past what
/// they report (`Read` allows it); those bytes must never become payload.
#[test]
fn streamed_frames_lend_their_buffer_to_a_reader_zeroed_once() {
    struct Scribbler {
        wire: Vec<u8>,
        pos: usize,
        per_read: usize,
        reads: usize,
        saw_scribble: usize,
    }
    impl std::io::Read for Scribbler {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            // Reads every byte it is lent (they must be initialized).
            self.reads += 1;
            self.saw_scribble += usize::from(buf.contains(&0xEE));
            let n = self.per_read.min(buf.len()).min(self.wire.len() - self.pos);
            buf[..n].copy_from_slice(&self.wire[self.pos..self.pos + n]);
            buf[n..].fill(0xEE);
            self.pos += n;
            Ok(n)
        }
    }
    // Payloads without 0xEE, so a scribble taken as payload shows.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 200) as u8).collect();
    let text = "ascii text ".repeat(10_000);
    let mut wire = client_frame(true, Opcode::Binary, &payload);
    wire.extend(client_frame(false, Opcode::Text, text.as_bytes()));
    wire.extend(client_frame(true, Opcode::Continuation, text.as_bytes()));
    let whole_text = text.repeat(2);
    // Each read fills part of the 16 KiB lent, scribbling on the rest.
    for per_read in [1000, 4096, 10_000] {
        let mut reader = Scribbler {
            wire: wire.clone(),
            pos: 0,
            per_read,
            reads: 0,
            saw_scribble: 0,
        };
        let mut conn = server();
        let mut got = Vec::new();
        for _ in 0..10_000 {
            if reader.pos == reader.wire.len() {
                break;
            }
            conn.receive_from(&mut reader, 16_384).unwrap();
            while let Some(e) = conn.next_event().unwrap() {
                got.push(e);
            }
        }
        assert_eq!(got.len(), 2, "{per_read} bytes per read");
        assert!(
            got[0] == Event::Binary(payload.clone().into()),
            "binary, {per_read} per read"
        );
        assert!(
            got[1] == Event::Text(whole_text.clone().into()),
            "text, {per_read} per read"
        );
        // Nearly every read lands in a streaming frame's buffer, each
        // after one that scribbled there (zeroing it before every read,
        // only the few reads into the input buffer saw scribbles).
        assert!(
            reader.saw_scribble * 2 > reader.reads,
            "{per_read} bytes per read: the frame's buffer was zeroed before \
             {} of {} reads",
            reader.reads - reader.saw_scribble,
            reader.reads
        );
    }
}

/// A reader may be drained before any event is asked for (a reactor
/// reading until `WouldBlock`). After a read that finished a streamed
/// frame, the next `receive_from` must read on: it returned `Ok(0)`
/// without reading, which was then taken for the end of the stream (a
/// spurious 1006 close, and the bytes after the frame never read).
#[test]
fn receive_from_after_a_finished_streamed_frame_reads_on() {
    let mut client = Connection::new(Role::Client, Config::default());
    let big = vec![7u8; 100_000];
    client.send_binary(&big).unwrap();
    client.ping(b"after").unwrap();
    let wire = client.take_output();
    let frame_len = wire.len() - 2 - 4 - 5;
    let mut conn = server();
    // The header and some payload: the frame starts streaming.
    let mut reader = &wire[..1000];
    conn.receive_from(&mut reader, 1000).unwrap();
    assert_eq!(conn.next_event().unwrap(), None);
    // The rest of the frame, exactly; no events asked for in between.
    let mut reader = &wire[1000..frame_len];
    while !reader.is_empty() {
        conn.receive_from(&mut reader, 1 << 20).unwrap();
    }
    let mut reader = &wire[frame_len..];
    assert_eq!(conn.receive_from(&mut reader, 1 << 20).unwrap(), 11);
    let mut got = Vec::new();
    while let Some(e) = conn.next_event().unwrap() {
        got.push(e);
    }
    assert_eq!(
        got,
        [
            Event::Binary(big.into()),
            Event::Ping(Bytes::from_static(b"after"))
        ]
    );
    assert_eq!(conn.state(), State::Open);
}
