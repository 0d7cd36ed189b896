//! The client side of the handshake: arbitrary responses to a request, and
//! valid responses with fuzzed status, subprotocol and extension values.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use wsproto::handshake::{accept_key, head_end, ClientRequest, ParsedResponse};
use wsproto::HandshakeError;
use wsproto_fuzz::{check_response_error, config};

#[derive(Arbitrary, Debug)]
enum Input<'a> {
    Raw(&'a [u8]),
    Fields {
        status: u16,
        protocol: Option<&'a [u8]>,
        extensions: Option<&'a [u8]>,
        good_accept: bool,
    },
}

const SAMPLE_ACCEPT: &[u8] = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fn check(req: &ClientRequest, buf: &[u8]) -> Result<ParsedResponse, HandshakeError> {
    let config = config();
    let verdict = req.parse_response(buf, &config);
    match &verdict {
        Ok(ParsedResponse::Complete(resp, n)) => {
            assert_eq!(resp.status, 101);
            assert!(*n <= buf.len() && *n <= config.max_handshake_size);
            if let Some(p) = &resp.protocol {
                assert_eq!(p, "chat", "only an offered protocol is accepted");
            }
            assert!(resp.extensions.is_empty(), "none were offered");
        }
        Ok(ParsedResponse::NeedMore) => {
            assert!(buf.len() < config.max_handshake_size);
            assert_eq!(head_end(buf, 0), None);
        }
        Err(e) => check_response_error(e),
    }
    verdict
}

fuzz_target!(|input: Input<'_>| {
    let req = ClientRequest::new("localhost", 9001, "/")
        .and_then(|r| r.protocols(&["chat"]))
        .expect("a valid request");
    match input {
        Input::Raw(buf) => {
            // The key is random, so a raw response could never pass the
            // accept check: the RFC 6455 §1.3 sample accept value stands in
            // for the right one, letting the fuzzer reach what comes after.
            let accept = accept_key(req.key().as_bytes());
            let mut buf = buf.to_vec();
            let mut at = 0;
            while let Some(i) = buf[at..]
                .windows(SAMPLE_ACCEPT.len())
                .position(|w| w == SAMPLE_ACCEPT)
            {
                buf[at + i..at + i + SAMPLE_ACCEPT.len()].copy_from_slice(accept.as_bytes());
                at += i + SAMPLE_ACCEPT.len();
            }
            let _ = check(&req, &buf);
        }
        Input::Fields {
            status,
            protocol,
            extensions,
            good_accept,
        } => {
            let values = [protocol, extensions];
            if values
                .iter()
                .flatten()
                .any(|v| v.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0))
            {
                return;
            }
            let status = 100 + status % 500;
            let accept = if good_accept {
                accept_key(req.key().as_bytes())
            } else {
                "AAAA".into()
            };
            let mut resp = format!(
                "HTTP/1.1 {status} X\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
            )
            .into_bytes();
            if let Some(p) = protocol {
                resp.extend_from_slice(b"Sec-WebSocket-Protocol: ");
                resp.extend_from_slice(p);
                resp.extend_from_slice(b"\r\n");
            }
            if let Some(e) = extensions {
                resp.extend_from_slice(b"Sec-WebSocket-Extensions: ");
                resp.extend_from_slice(e);
                resp.extend_from_slice(b"\r\n");
            }
            resp.extend_from_slice(b"\r\n");
            match check(&req, &resp) {
                Ok(ParsedResponse::Complete(..)) => {
                    assert_eq!(status, 101);
                    assert!(good_accept);
                }
                Ok(ParsedResponse::NeedMore) => panic!("a complete head needs nothing more"),
                Err(HandshakeError::Status { status: s, .. }) => assert_eq!(s, status),
                Err(_) => {}
            }
        }
    }
});
