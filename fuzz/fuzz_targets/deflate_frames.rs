//! Compressed frames (RFC 7692) fed to a server `Connection` with
//! permessage-deflate on: any byte stream, whole or in arbitrary chunks,
//! gives the same events and the same error; every error is a documented
//! one with its close code queued; no message exceeds max_message_size
//! once inflated. In round-trip mode, messages compressed by a client come
//! out as they went in.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsproto::deflate::DeflateParams;
use wsproto::{Connection, Event, ProtocolError, Role};
use wsproto_fuzz::{check_protocol_error, config, Splitter};

/// The close codes of the variants permessage-deflate adds (RFC 7692 §6.1,
/// §7.2.2); the rest are checked against `wsproto_fuzz`'s table.
fn check(e: &ProtocolError) {
    let code = e.close_code().as_u16();
    match e {
        ProtocolError::CompressedControlFrame(_) | ProtocolError::CompressedContinuation => {
            assert_eq!(code, 1002)
        }
        ProtocolError::InvalidCompressedData(_) => assert_eq!(code, 1007),
        other => check_protocol_error(other),
    }
}

fn params(b: u8) -> DeflateParams {
    DeflateParams {
        send_window_bits: 8 + (b & 7),
        recv_window_bits: 8 + ((b >> 3) & 7),
        send_no_context_takeover: b & 0x40 != 0,
        recv_no_context_takeover: b & 0x40 != 0,
        level: 1 + (b % 9),
        min_size: (b & 0x20) as usize,
    }
}

fn drive(
    p: &DeflateParams,
    stream: &[u8],
    chunks: &mut dyn FnMut() -> usize,
) -> (Vec<Event>, Option<ProtocolError>) {
    let limits = config();
    let mut conn = Connection::new(Role::Server, limits.clone());
    conn.enable_deflate(p.clone());
    let mut events = Vec::new();
    let mut pos = 0;
    while pos < stream.len() {
        let end = (pos + chunks()).min(stream.len());
        conn.receive(&stream[pos..end]);
        pos = end;
        loop {
            match conn.next_event() {
                Ok(Some(e)) => {
                    if let Event::Text(t) = &e {
                        assert!(t.len() <= limits.max_message_size);
                    }
                    if let Event::Binary(b) = &e {
                        assert!(b.len() <= limits.max_message_size);
                    }
                    events.push(e);
                }
                Ok(None) => break,
                Err(e) => {
                    check(&e);
                    assert!(conn.is_closed());
                    return (events, Some(e));
                }
            }
        }
    }
    (events, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&[mode, pbyte], rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let p = params(pbyte);
    if mode & 0x80 != 0 {
        // Round trip: the rest, cut into messages at 0xff bytes, sent by
        // a client with compression and received by a server.
        let mut client = Connection::new(Role::Client, config());
        client.enable_deflate(p.clone());
        let msgs: Vec<&[u8]> = rest.split(|&b| b == 0xff).collect();
        for m in &msgs {
            client.send_binary(m).unwrap();
        }
        let wire = client.take_output();
        let mut split = Splitter::new(u64::from(mode));
        // The server receives with what the client sends with.
        let server = DeflateParams {
            recv_window_bits: p.send_window_bits,
            recv_no_context_takeover: p.send_no_context_takeover,
            ..p.clone()
        };
        let (events, err) = drive(&server, &wire, &mut || split.next(97));
        assert_eq!(err, None);
        assert_eq!(events.len(), msgs.len());
        for (e, m) in events.iter().zip(&msgs) {
            assert_eq!(e, &Event::Binary(m.to_vec().into()));
        }
        return;
    }
    let whole = drive(&p, rest, &mut || usize::MAX / 2);
    let mut split = Splitter::new(u64::from(mode) + 1);
    let max = if mode & 1 == 0 { 3 } else { 64 };
    let chunked = drive(&p, rest, &mut || split.next(max));
    assert_eq!(whole, chunked);
});
