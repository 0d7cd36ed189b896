//! The opening handshake (RFC 6455 §4), as pure functions over bytes.
//!
//! - Server side: [`parse_request`] turns the bytes of an HTTP Upgrade request
//!   into a checked [`Request`], or a ready-to-send [`Rejection`] (400, 403
//!   for an `Origin` the [`OriginPolicy`] refuses, 405, 426 with
//!   `Sec-WebSocket-Version: 13`, 431). [`Request::accept`] builds the 101
//!   answer.
//! - Client side: [`ClientRequest`] builds the request with a random key, and
//!   [`ClientRequest::parse_response`] checks the server's answer.
//!
//! HTTP parsing uses `httparse`, and only once the whole head has arrived:
//! [`head_end`] scans only the bytes it has not seen, so a request trickling
//! in one byte at a time costs linear time (re-parsing the whole buffer on
//! every read was tungstenite's CVE-2023-43669).

mod client;
mod headers;
mod origin;
mod server;

pub use client::{ClientRequest, ParsedResponse, Response};
pub(crate) use headers::lossy_prefix;
pub use headers::{parse_extensions, parse_protocols, Extension};
pub use origin::OriginPolicy;
pub use server::{parse_request, ParsedRequest, Rejection, Request, RequestTarget};

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

/// Finds the end of an HTTP head (the byte after the empty line that ends
/// it) in `buf`, looking only at bytes from `scanned` on (minus the 3 that
/// could start a terminator split across reads). Pass the previous
/// `buf.len()` as `scanned` on each call to keep the total work linear.
///
/// The empty line may end in a bare LF (`\n\n` or `\n\r\n`): the head is
/// found, so that [`parse_request`] can refuse it with 400 at once, instead of
/// waiting for a `\r\n\r\n` that never comes (RFC 7230 §3.5 lets a
/// recipient recognize a bare LF; it is the answer that has to come). In a
/// head whose lines all end in CRLF, the first such empty line is the
/// `\r\n\r\n`.
///
/// ```
/// use wsproto::handshake::head_end;
/// let buf = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest";
/// assert_eq!(head_end(&buf[..20], 0), None);
/// assert_eq!(head_end(buf, 20), Some(27));
/// assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\nrest", 0), Some(24));
/// ```
pub fn head_end(buf: &[u8], scanned: usize) -> Option<usize> {
    let from = scanned.saturating_sub(3);
    let tail = buf.get(from..)?;
    let mut at = 0;
    while let Some(i) = memchr_lf(&tail[at..]) {
        let lf = at + i;
        match &tail[lf + 1..] {
            [b'\n', ..] => return Some(from + lf + 2),
            [b'\r', b'\n', ..] => return Some(from + lf + 3),
            _ => at = lf + 1,
        }
    }
    None
}

fn memchr_lf(s: &[u8]) -> Option<usize> {
    s.iter().position(|&b| b == b'\n')
}

/// The offset of the first LF in `head` not preceded by CR, if any.
pub(crate) fn bare_lf(head: &[u8]) -> Option<usize> {
    (0..head.len()).find(|&i| head[i] == b'\n' && (i == 0 || head[i - 1] != b'\r'))
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

    #[test]
    fn head_end_finds_every_empty_line_ending() {
        for (buf, end) in [
            (&b"a\r\n\r\n"[..], Some(5)),
            (b"a\n\n", Some(3)),
            (b"a\n\r\n", Some(4)),
            (b"a\r\nb\r\n\r\nc", Some(8)),
            (b"a\r\n\n", Some(4)),
            (b"\r\na\r\n\r\n", Some(7)), // a leading empty line (RFC 7230 §3.5)
            (b"a\r\nb\r\n", None),
            (b"a\r\r", None),
            (b"a\n\r", None),
        ] {
            assert_eq!(head_end(buf, 0), end, "{:?}", String::from_utf8_lossy(buf));
        }
        assert_eq!(bare_lf(b"a\r\nb\r\n\r\n"), None);
        assert_eq!(bare_lf(b"a\r\nb\n\r\n"), Some(4));
        assert_eq!(bare_lf(b"\n"), Some(0));
    }

    proptest! {
        #[test]
        fn head_end_incremental_equals_whole(head in "[a-zA-Z: \r\n]{0,40}", tail in proptest::collection::vec(any::<u8>(), 0..20),
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
