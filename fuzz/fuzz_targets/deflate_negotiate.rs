//! permessage-deflate negotiation (RFC 7692 §7.1): any
//! `Sec-WebSocket-Extensions` value, as a client's offers to our server and
//! as a server's answer to our client. The server's answer is always
//! well-formed and within what was offered; the client accepts or refuses
//! with a documented error, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsproto::deflate::{offer_header, parse_answer, DeflateConfig, DeflateParams};
use wsproto::handshake::{parse_extensions, parse_request, ParsedRequest};
use wsproto::{Config, HandshakeError};

fn configs() -> [DeflateConfig; 4] {
    [
        DeflateConfig::default(),
        DeflateConfig::default()
            .no_context_takeover(true)
            .request_peer_no_context_takeover(true),
        DeflateConfig::default().window_bits(9).peer_window_bits(8),
        DeflateConfig::default()
            .window_bits(12)
            .peer_window_bits(10),
    ]
}

fn in_range(p: &DeflateParams) {
    assert!((8..=15).contains(&p.send_window_bits), "{p:?}");
    assert!((8..=15).contains(&p.recv_window_bits), "{p:?}");
    assert!((1..=9).contains(&p.level), "{p:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(exts) = parse_extensions(data) else {
        return;
    };
    if data.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
        return;
    }
    // As offers, through a whole request (how a server sees them).
    let mut raw = b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Extensions: "
        .to_vec();
    raw.extend_from_slice(data);
    raw.extend_from_slice(b"\r\n\r\n");
    let config = Config::default().max_handshake_size(1 << 20);
    if let ParsedRequest::Complete(req, _) = parse_request(&raw, &config) {
        for server in configs() {
            let Some(accept) = req.negotiate_deflate(&server) else {
                continue;
            };
            in_range(accept.params());
            assert!(accept.params().send_window_bits <= server.window_bits);
            // The answer is one well-formed permessage-deflate extension...
            let answer = parse_extensions(accept.response().as_bytes()).expect("well-formed");
            assert_eq!(answer.len(), 1);
            assert_eq!(answer[0].name, "permessage-deflate");
            // ...that an offer of ours with the same parameters accepts.
            let wire = String::from_utf8(req.accept_with_deflate(None, Some(&accept))).unwrap();
            assert_eq!(wire.matches("\r\n").count(), 6, "no injected lines");
        }
    }
    // As a server's answer to each of our offers.
    for client in configs() {
        let _ = offer_header(&client);
        match parse_answer(&exts, Some(&client)) {
            Ok(Some(p)) => {
                in_range(&p);
                assert!(p.send_window_bits <= client.window_bits);
                assert!(p.recv_window_bits <= client.peer_window_bits);
                assert!(!client.request_peer_no_context_takeover || p.recv_no_context_takeover);
            }
            Ok(None) => assert!(exts.is_empty()),
            Err(HandshakeError::DeflateAnswer { .. } | HandshakeError::NotOffered(_)) => {}
            Err(other) => panic!("undocumented: {other:?}"),
        }
    }
});
