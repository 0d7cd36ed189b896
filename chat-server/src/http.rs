//! The HTTP side of the one port: read the head (bounded in size and time),
//! route it, and either answer (page, healthz, errors) or upgrade `/ws`.

use crate::{log, session, LiveGuard, Shared};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wsproto::deflate::{DeflateConfig, NO_CONTEXT_MIN_SIZE};
use wsproto::handshake::{head_end, http_response, parse_request, ParsedRequest, RequestTarget};

/// The chat page, embedded at build time.
const PAGE: &str = include_str!("../static/index.html");

/// What the server accepts of a permessage-deflate offer (RFC 7692).
///
/// - `server_no_context_takeover`, always answered: a broadcast is
///   compressed once, without context, and the same bytes go to every
///   recipient (see `client::Outgoing`); with context takeover each
///   recipient's stream would need its own compression.
/// - `client_no_context_takeover`, asked of every client: the inflater
///   then keeps no 32 KiB window per idle connection (wsproto frees it
///   between messages), which matters at 10,000 connections.
/// - Messages under `NO_CONTEXT_MIN_SIZE` go out uncompressed.
fn deflate_config() -> DeflateConfig {
    DeflateConfig::default()
        .no_context_takeover(true)
        .request_peer_no_context_takeover(true)
        .min_size(NO_CONTEXT_MIN_SIZE)
}

/// What reading the request head produced.
enum Head {
    /// The head is `buf[..end]`; anything after it is early WebSocket data.
    Complete { buf: Vec<u8>, end: usize },
    /// Over the size limit.
    TooLarge,
    /// Not HTTP: the start of the request line is no method (e.g. a TLS
    /// ClientHello sent to this plain-text port).
    NotHttp,
    /// Timed out, closed, or failed: drop TCP without an answer.
    Gone,
}

/// Serves one accepted connection to the end.
pub(crate) fn serve(
    shared: &Arc<Shared>,
    stream: TcpStream,
    addr: SocketAddr,
    id: u64,
    live: LiveGuard,
) {
    let deadline = Instant::now() + shared.config.handshake_timeout;
    let head = read_head(&stream, deadline, shared.config.max_header_bytes);
    let (buf, end) = match head {
        Head::Complete { buf, end } => (buf, end),
        Head::TooLarge => {
            log!(shared, "chat: {addr} http 431");
            let body = format!(
                "request head over {} bytes\n",
                shared.config.max_header_bytes
            );
            answer(&stream, &http_response(431, &[], &body));
            return;
        }
        Head::NotHttp => {
            log!(shared, "chat: {addr} http 400 (not an HTTP request)");
            let body = "not an HTTP/1.1 request (TLS to a plain-text port?)\n";
            answer(&stream, &http_response(400, &[], body));
            return;
        }
        Head::Gone => {
            log!(
                shared,
                "chat: {addr} dropped: no complete request within the handshake timeout"
            );
            return;
        }
    };
    // httparse tolerates lines ending in a bare LF, and wsproto's
    // parse_request refuses them: answer every route the same way, at once
    // (RFC 7230 §3.5 allows tolerance, never silence).
    if let Some(at) = bare_lf(&buf[..end]) {
        log!(shared, "chat: {addr} http 400 (bare LF at byte {at})");
        let body = "malformed HTTP request: lines must end in CRLF\n";
        answer(&stream, &http_response(400, &[], body));
        return;
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let (method, target) = match req.parse(&buf[..end]) {
        Ok(httparse::Status::Complete(_)) => (
            req.method.unwrap_or_default().to_owned(),
            req.path.unwrap_or_default().to_owned(),
        ),
        Err(httparse::Error::TooManyHeaders) => {
            log!(shared, "chat: {addr} http 431 (too many headers)");
            answer(&stream, &http_response(431, &[], "too many header lines\n"));
            return;
        }
        Ok(httparse::Status::Partial) | Err(_) => {
            log!(shared, "chat: {addr} http 400 (malformed request)");
            answer(
                &stream,
                &http_response(400, &[], "malformed HTTP request\n"),
            );
            return;
        }
    };
    if method != "GET" {
        log!(shared, "chat: {addr} http 405 {:?}", truncate(&method, 20));
        answer(
            &stream,
            &http_response(405, &["Allow: GET"], "only GET is served\n"),
        );
        return;
    }
    // RFC 7230 §5.3.2: `GET http://host:port/ws` is the same request as
    // `GET /ws` (a server must accept the absolute form).
    let route = match RequestTarget::parse(&target) {
        Ok(t) => t.path,
        Err(e) => {
            log!(shared, "chat: {addr} http 400 ({e})");
            answer(&stream, &http_response(400, &[], &format!("{e}\n")));
            return;
        }
    };
    match route {
        "/" | "/index.html" => answer(&stream, &page_response()),
        "/healthz" => answer(
            &stream,
            &http_response(200, &["Cache-Control: no-store"], "ok"),
        ),
        "/ws" => {
            let ws_config = session::ws_config(&shared.config)
                .origin_policy(shared.config.origin_policy.clone());
            match parse_request(&buf[..end], &ws_config) {
                ParsedRequest::Complete(req, _) => {
                    let deflate = shared
                        .config
                        .deflate
                        .then(|| req.negotiate_deflate(&deflate_config()))
                        .flatten();
                    if write_all(&stream, &req.accept_with_deflate(None, deflate.as_ref())).is_err()
                    {
                        return;
                    }
                    let params = deflate.map(|d| d.params().clone());
                    session::start(shared, stream, addr, id, &buf[end..], live, params);
                }
                ParsedRequest::Reject(r) => {
                    // The error's message escapes what the peer sent ({:?}).
                    log!(shared, "chat: {addr} http {} ({})", r.status, r.error);
                    answer(&stream, &r.response);
                }
                ParsedRequest::NeedMore => {
                    log!(shared, "chat: {addr} http 400 (incomplete request)");
                    answer(&stream, &http_response(400, &[], "incomplete request\n"));
                }
            }
        }
        _ => {
            log!(shared, "chat: {addr} http 404 {:?}", truncate(route, 80));
            answer(&stream, &http_response(404, &[], "not found\n"));
        }
    }
}

/// False once `buf` cannot be the start of a request line: the method is a
/// token (RFC 7230 §3.1.1) of at most 16 bytes here, after optional empty
/// lines (§3.5). Checked on every read until the head is complete, so
/// garbage gets its 400 at once instead of waiting for the timeout; the
/// check stops at the first space, so its cost per read is bounded.
fn may_start_request(buf: &[u8]) -> bool {
    const TCHAR: &[u8] = b"!#$%&'*+-.^_`|~";
    let line = match buf.iter().position(|&b| b != b'\r' && b != b'\n') {
        Some(start) => &buf[start..],
        None => return true,
    };
    let method = &line[..line.len().min(17)];
    match method.iter().position(|&b| b == b' ') {
        Some(0) => false,
        Some(sp) => method[..sp]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || TCHAR.contains(b)),
        None => {
            method.len() <= 16
                && method
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || TCHAR.contains(b))
        }
    }
}

/// The offset of the first LF not preceded by CR.
fn bare_lf(head: &[u8]) -> Option<usize> {
    (0..head.len()).find(|&i| head[i] == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

/// Reads the request head, at most `max` bytes, until `deadline`.
fn read_head(stream: &TcpStream, deadline: Instant, max: usize) -> Head {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Head::Gone;
        }
        let n = match (&*stream).read(&mut chunk) {
            Ok(0) => return Head::Gone,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Head::Gone,
        };
        let scanned = buf.len();
        buf.extend_from_slice(&chunk[..n]);
        match head_end(&buf, scanned) {
            Some(end) if end <= max => return Head::Complete { buf, end },
            Some(_) => return Head::TooLarge,
            None if buf.len() >= max => return Head::TooLarge,
            None if !may_start_request(&buf) => return Head::NotHttp,
            None => {}
        }
    }
}

fn page_response() -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n\
         Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:\r\n\
         Connection: close\r\n\r\n",
        PAGE.len()
    )
    .into_bytes();
    out.extend_from_slice(PAGE.as_bytes());
    out
}

/// Writes a complete response, then closes gracefully: half-close, and read
/// (briefly) what the client still sends, so the close does not turn into a
/// reset that could destroy the answer before the client reads it.
fn answer(stream: &TcpStream, response: &[u8]) {
    if write_all(stream, response).is_err() {
        return;
    }
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut sink = [0u8; 1024];
    let mut budget = 64 << 10;
    while budget > 0 {
        match (&*stream).read(&mut sink) {
            Ok(n) if n > 0 => budget -= n.min(budget),
            _ => break,
        }
    }
}

fn write_all(mut stream: &TcpStream, bytes: &[u8]) -> io::Result<()> {
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(bytes)
}

/// The answer past `--max-connections`.
pub(crate) fn refuse_busy(stream: TcpStream) {
    let deadline = Instant::now() + Duration::from_secs(1);
    let _ = read_head(&stream, deadline, 8 << 10);
    answer(
        &stream,
        &http_response(
            503,
            &["Retry-After: 5"],
            "too many connections, try again later\n",
        ),
    );
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
