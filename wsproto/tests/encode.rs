//! Encoding into a caller's buffer (`send_*_into`, `frame::encode_frame_into`),
//! reproducible masking keys (`MaskKeys`), and the blocking writer's
//! vectored path (issue 12, items 1 and 3).

use bytes::{Bytes, BytesMut};
use std::io::{self, IoSlice, Read, Write};
use wsproto::blocking::{Transport, WebSocket};
use wsproto::frame::{encode_frame, encode_frame_into, Opcode};
use wsproto::{Config, Connection, Event, MaskKeys, Message, Role};

const SIZES: [usize; 9] = [0, 1, 7, 125, 126, 1000, 65535, 65536, 200_000];

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

fn conn(role: Role, keys: MaskKeys) -> Connection {
    Connection::new(role, Config::default().mask_keys(keys))
}

/// Decodes `wire` as the peer of `sender` and returns the messages.
fn decode(wire: &[u8], sender: Role) -> Vec<Event> {
    let peer = if sender == Role::Client {
        Role::Server
    } else {
        Role::Client
    };
    let mut c = Connection::new(peer, Config::default());
    c.receive(wire);
    let mut out = Vec::new();
    while let Some(e) = c.next_event().expect("valid frames") {
        out.push(e);
    }
    out
}

#[test]
fn into_caller_buffer_matches_send_for_both_roles() {
    for role in [Role::Client, Role::Server] {
        let mut queued = conn(role, MaskKeys::Seeded(42));
        let mut direct = conn(role, MaskKeys::Seeded(42));
        let mut wire = Vec::new();
        let mut wire_bm = BytesMut::new();
        let mut direct_bm = conn(role, MaskKeys::Seeded(42));
        for &len in &SIZES {
            let p = payload(len);
            queued.send_binary(&p).unwrap();
            direct.send_binary_into(&p, &mut wire).unwrap();
            direct_bm.send_binary_into(&p, &mut wire_bm).unwrap();
        }
        queued.send_text("héllo").unwrap();
        direct.send_text_into("héllo", &mut wire).unwrap();
        direct_bm.send_text_into("héllo", &mut wire_bm).unwrap();
        assert_eq!(queued.pending_output(), &wire[..], "{role:?}");
        assert_eq!(&wire_bm[..], &wire[..], "{role:?}");
        assert!(direct.pending_output().is_empty());
        let events = decode(&wire, role);
        assert_eq!(events.len(), SIZES.len() + 1);
        for (e, &len) in events.iter().zip(&SIZES) {
            assert_eq!(e, &Event::Binary(Bytes::from(payload(len))));
        }
        assert_eq!(events[SIZES.len()], Event::Text("héllo".into()));
    }
}

#[test]
fn into_caller_buffer_moves_pending_output_first() {
    // A Ping's automatic Pong is queued on the connection; a frame encoded
    // into the caller's buffer afterwards must follow it on the wire.
    let mut server = Connection::new(Role::Server, Config::default());
    server.receive(&[0x89, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
    assert_eq!(server.next_event().unwrap(), Some(Event::Ping("hi".into())));
    let mut wire = Vec::new();
    server.send_text_into("after", &mut wire).unwrap();
    assert_eq!(wire, b"\x8a\x02hi\x81\x05after");
    assert!(server.pending_output().is_empty());
}

#[test]
fn into_caller_buffer_keeps_the_send_rules() {
    let mut c = Connection::new(Role::Server, Config::default());
    let mut wire = Vec::new();
    c.send_fragment(Opcode::Text, b"a", false).unwrap();
    assert!(c.send_text_into("x", &mut wire).is_err());
    c.send_fragment(Opcode::Continuation, b"b", true).unwrap();
    c.close(wsproto::CloseCode::NORMAL, "").unwrap();
    assert!(matches!(
        c.send_binary_into(b"x", &mut wire),
        Err(wsproto::Error::Closed)
    ));
    assert!(wire.is_empty());
}

#[test]
fn frame_encoder_into_any_bufmut() {
    let key = Some([9, 8, 7, 6]);
    for &len in &SIZES {
        let p = payload(len);
        for mask in [None, key] {
            let mut a = BytesMut::new();
            encode_frame(&mut a, false, Opcode::Binary, &p, mask);
            let mut v = Vec::new();
            encode_frame_into(&mut v, false, Opcode::Binary, &p, mask);
            assert_eq!(&a[..], &v[..], "len {len}");
            // A chained pair of fixed buffers: the masked copy resumes at
            // the right key offset across the seam.
            let mut first = vec![0u8; 5.min(v.len())];
            let mut second = vec![0u8; v.len() - first.len()];
            {
                let mut chain = bytes::BufMut::chain_mut(&mut first[..], &mut second[..]);
                encode_frame_into(&mut chain, false, Opcode::Binary, &p, mask);
            }
            assert_eq!([first, second].concat(), v, "len {len}, chained");
        }
    }
}

#[test]
fn seeded_keys_reproduce_and_vary() {
    let mut a = conn(Role::Client, MaskKeys::Seeded(5));
    let mut b = conn(Role::Client, MaskKeys::Seeded(5));
    let mut c = conn(Role::Client, MaskKeys::Seeded(6));
    for x in [&mut a, &mut b, &mut c] {
        x.send_binary(b"x").unwrap();
        x.send_binary(b"x").unwrap();
    }
    assert_eq!(a.pending_output(), b.pending_output());
    assert_ne!(a.pending_output(), c.pending_output());
    // A different key per frame.
    let out = a.pending_output();
    assert_ne!(out[2..6], out[9..13]);
}

#[test]
fn random_keys_stay_the_default() {
    assert_eq!(Config::default().mask_keys, MaskKeys::Random);
    let mut a = Connection::new(Role::Client, Config::default());
    let mut b = Connection::new(Role::Client, Config::default());
    a.send_binary(&[0; 64]).unwrap();
    b.send_binary(&[0; 64]).unwrap();
    assert_ne!(a.pending_output(), b.pending_output());
}

/// An in-memory stream that takes at most `max_write` bytes per call and
/// records where each vectored buffer pointed.
#[derive(Default)]
struct Recorder {
    written: Vec<u8>,
    max_write: usize,
    vectored_ptrs: Vec<usize>,
    fail_after: Option<usize>,
}

impl Read for Recorder {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Ok(0)
    }
}

impl Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.fail_after.is_some_and(|n| self.written.len() >= n) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut n = 0;
        for b in bufs {
            self.vectored_ptrs.push(b.as_ptr() as usize);
            let take = b.len().min(self.max_write - n);
            self.written.extend_from_slice(&b[..take]);
            n += take;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Recorder {
    fn writes_vectored(&self) -> bool {
        true
    }
}

#[test]
fn blocking_send_shares_a_large_payload_instead_of_copying() {
    let stream = Recorder {
        max_write: usize::MAX,
        ..Recorder::default()
    };
    let mut ws = WebSocket::from_raw(stream, Role::Server, Config::default(), &[]);
    let data = Bytes::from(payload(100_000));
    ws.send(data.clone()).unwrap();
    let rec = ws.get_ref();
    assert!(
        rec.vectored_ptrs.contains(&(data.as_ptr() as usize)),
        "the payload was copied"
    );
    assert_eq!(decode(&rec.written, Role::Server), [Event::Binary(data)]);
}

#[test]
fn blocking_vectored_send_survives_short_writes_and_errors() {
    // 7 bytes per call: every boundary (pending output, header, payload)
    // is crossed in the middle.
    let stream = Recorder {
        max_write: 7,
        ..Recorder::default()
    };
    let mut ws = WebSocket::from_raw(stream, Role::Server, Config::default(), &[]);
    let big = Bytes::from(payload(5000));
    ws.write("queued first").unwrap();
    ws.send(big.clone()).unwrap();
    ws.send(Message::Text("héllo".repeat(300).into())).unwrap();
    // A stream that fails part-way: the rest of the frame stays queued and
    // a later flush finishes it.
    ws.get_mut().fail_after = Some(ws.get_ref().written.len() + 100);
    assert!(ws.send(big.clone()).is_err());
    ws.get_mut().fail_after = None;
    ws.flush().unwrap();
    let events = decode(&ws.get_ref().written, Role::Server);
    assert_eq!(
        events,
        [
            Event::Text("queued first".into()),
            Event::Binary(big.clone()),
            Event::Text("héllo".repeat(300).into()),
            Event::Binary(big),
        ]
    );
}
