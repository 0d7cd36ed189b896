//! The opening handshake (RFC 6455 §4), as pure functions over bytes.
//!
//! - Server side: [`parse_request`] turns the bytes of an HTTP Upgrade request
//!   into a checked [`Request`], or a ready-to-send [`Rejection`] (400, 405,
//!   426 with `Sec-WebSocket-Version: 13`, 431). [`Request::accept`] builds the
//!   101 answer.
//! - Client side: [`ClientRequest`] builds the request with a random key, and
//!   [`ClientRequest::parse_response`] checks the server's answer.
//!
//! HTTP parsing uses `httparse`, and only once the whole head has arrived:
//! [`head_end`] scans only the bytes it has not seen, so a request trickling
//! in one byte at a time costs linear time (re-parsing the whole buffer on
//! every read was tungstenite's CVE-2023-43669).

mod client;
mod headers;
mod server;

pub use client::{ClientRequest, ParsedResponse, Response};
pub use headers::{parse_extensions, parse_protocols, Extension};
pub use server::{parse_request, ParsedRequest, Rejection, Request};

use base64::Engine;
use sha1::{Digest, Sha1};

/// The GUID of RFC 6455 §1.3, appended to the key before hashing.
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`:
/// base64(SHA-1(key + GUID)) (RFC 6455 §1.3, §4.2.2).
///
/// ```
/// // The example of RFC 6455 §1.3.
/// assert_eq!(
///     wsproto::handshake::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
///     "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
/// );
/// ```
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Finds the end of an HTTP head (the byte after `\r\n\r\n`) in `buf`,
/// looking only at bytes from `scanned` on (minus the 3 that could start a
/// terminator split across reads). Pass the previous `buf.len()` as
/// `scanned` on each call to keep the total work linear.
///
/// ```
/// use wsproto::handshake::head_end;
/// let buf = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest";
/// assert_eq!(head_end(&buf[..20], 0), None);
/// assert_eq!(head_end(buf, 20), Some(27));
/// ```
pub fn head_end(buf: &[u8], scanned: usize) -> Option<usize> {
    let from = scanned.saturating_sub(3);
    buf.get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| from + i + 4)
}

/// A complete HTTP/1.1 response with a plain-text body and `Connection: close`.
/// `extra` header lines are written as given (each without `\r\n`).
pub fn http_response(status: u16, extra: &[&str], body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason_phrase(status),
        body.len()
    );
    for line in extra {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

/// The standard reason phrase for the statuses this crate and its users send.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn head_end_incremental_equals_whole(head in "[a-zA-Z: ]{0,40}", tail in proptest::collection::vec(any::<u8>(), 0..20),
                                             cuts in proptest::collection::vec(0usize..80, 0..10)) {
            let mut buf = head.into_bytes();
            buf.extend_from_slice(b"\r\n\r\n");
            buf.extend_from_slice(&tail);
            let whole = head_end(&buf, 0);
            let mut cuts = cuts;
            cuts.sort_unstable();
            let mut scanned = 0;
            let mut found = None;
            for cut in cuts.into_iter().chain([buf.len()]) {
                let cut = cut.min(buf.len()).max(scanned);
                if let Some(end) = head_end(&buf[..cut], scanned) {
                    found = Some(end);
                    break;
                }
                scanned = cut;
            }
            prop_assert_eq!(found, whole);
        }
    }
}
