//! The server side of the handshake. Two modes:
//! raw bytes (any verdict must be well-formed), and a valid request whose
//! `Sec-WebSocket-Protocol` / `Sec-WebSocket-Extensions` values are fuzzed
//! (accepted exactly when the header parsers accept the values).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use wsproto::handshake::{
    head_end, parse_extensions, parse_protocols, parse_request, ParsedRequest,
};
use wsproto_fuzz::{config, documented_status};

#[derive(Arbitrary, Debug)]
enum Input<'a> {
    Raw(&'a [u8]),
    Values {
        protocols: &'a [u8],
        extensions: &'a [u8],
        trickle: u8,
    },
}

fn check(buf: &[u8]) -> ParsedRequest {
    let config = config();
    let verdict = parse_request(buf, &config);
    match &verdict {
        ParsedRequest::Complete(req, n) => {
            assert!(*n <= buf.len() && *n <= config.max_handshake_size);
            assert!(buf[..*n].ends_with(b"\r\n\r\n"));
            let answer = req.accept(req.protocols.first().map(String::as_str));
            assert!(answer.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
            assert!(answer.ends_with(b"\r\n\r\n"));
        }
        ParsedRequest::NeedMore => {
            assert!(buf.len() < config.max_handshake_size);
            assert_eq!(head_end(buf, 0), None);
        }
        ParsedRequest::Reject(r) => {
            let status = r.status;
            assert_eq!(r.error.status(), Some(status));
            assert_eq!(status, documented_status(&r.error), "{:?}", r.error);
            assert!(matches!(status, 400 | 403 | 405 | 426 | 431), "{status}");
            let text = String::from_utf8_lossy(&r.response);
            assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
            let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
            assert!(
                head.contains(&format!("Content-Length: {}\r\n", body.len())),
                "{text}"
            );
            if status == 426 {
                assert!(head.contains("Sec-WebSocket-Version: 13"));
            }
        }
    }
    verdict
}

fuzz_target!(|input: Input<'_>| {
    match input {
        Input::Raw(buf) => {
            check(buf);
        }
        Input::Values {
            protocols,
            extensions,
            trickle,
        } => {
            if [protocols, extensions]
                .iter()
                .any(|v| v.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0))
            {
                return;
            }
            let mut req = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: "
                .to_vec();
            req.extend_from_slice(protocols);
            req.extend_from_slice(b"\r\nSec-WebSocket-Extensions: ");
            req.extend_from_slice(extensions);
            req.extend_from_slice(b"\r\n\r\n");
            // Every strict prefix needs more (or is already refused as too large).
            let step = usize::from(trickle).max(1);
            for cut in (0..req.len()).step_by(step) {
                assert!(!matches!(check(&req[..cut]), ParsedRequest::Complete(..)));
            }
            let values_ok =
                parse_protocols(protocols).is_ok() && parse_extensions(extensions).is_ok();
            match check(&req) {
                ParsedRequest::Complete(r, _) => {
                    assert!(values_ok);
                    assert_eq!(r.protocols, parse_protocols(protocols).unwrap());
                    assert_eq!(r.extensions, parse_extensions(extensions).unwrap());
                }
                // httparse may refuse bytes a header value cannot hold.
                ParsedRequest::Reject(r) => {
                    assert!(
                        !values_ok
                            || matches!(
                                r.error,
                                wsproto::HandshakeError::MalformedHttp(_)
                                    | wsproto::HandshakeError::HeadTooLarge { .. }
                            ),
                        "{:?}",
                        r.error
                    )
                }
                ParsedRequest::NeedMore => panic!("a complete head needs nothing more"),
            }
        }
    }
});
