//! The HTTP side of the one port: read the head (bounded in size and time),
//! route it, and either answer (page, healthz, errors) or upgrade `/ws`.
//! With TLS the same happens inside the TLS session, whose handshake shares
//! the head's deadline; `--redirect-http` answers its own port here too.

use crate::client::Transport;
use crate::media::{BodyError, Busy, Name, CHUNK};
use crate::tls::{self, TlsConn};
use crate::{log, session, LiveGuard, Shared};
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
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

/// The HTTP phase's byte stream: the socket, or TLS over it. Reads are
/// bounded by `deadline`, writes by [`WRITE_TIMEOUT`].
struct Wire {
    stream: TcpStream,
    tls: Option<Box<TlsConn>>,
    deadline: Instant,
}

/// How long one response may take to leave.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

impl Wire {
    fn new(stream: TcpStream, deadline: Instant) -> Self {
        Self {
            stream,
            tls: None,
            deadline,
        }
    }

    /// Starts TLS if the server has it: `Err` when the connection is over
    /// (answered or dropped; logged).
    fn start_tls(&mut self, shared: &Shared, addr: SocketAddr) -> Result<(), ()> {
        let Some(state) = &shared.tls else {
            return Ok(());
        };
        match tls::accept(&self.stream, state.config(), self.deadline) {
            tls::Accepted::Tls(t) => {
                self.tls = Some(t);
                Ok(())
            }
            tls::Accepted::PlainHttp => {
                log!(shared, "chat: {addr} http 400 (plain HTTP on the TLS port)");
                let body = "this port speaks TLS: use https://\n";
                answer(self, &http_response(400, &[], body));
                Err(())
            }
            tls::Accepted::Failed(why) => {
                log!(shared, "chat: {addr} dropped: {why}");
                Err(())
            }
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(t) = &mut self.tls {
            return t.blocking_read(&self.stream, buf, self.deadline);
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        (&self.stream).read(buf)
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            Some(t) => t.blocking_write_all(&self.stream, bytes, Instant::now() + WRITE_TIMEOUT),
            None => {
                self.stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
                (&self.stream).write_all(bytes)
            }
        }
    }
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
    let mut wire = Wire::new(stream, deadline);
    if wire.start_tls(shared, addr).is_err() {
        return;
    }
    let stream = &mut wire;
    let head = read_head(stream, shared.config.max_header_bytes);
    let (buf, end) = match head {
        Head::Complete { buf, end } => (buf, end),
        Head::TooLarge => {
            log!(shared, "chat: {addr} http 431");
            let body = format!(
                "request head over {} bytes\n",
                shared.config.max_header_bytes
            );
            answer(stream, &http_response(431, &[], &body));
            return;
        }
        Head::NotHttp => {
            log!(shared, "chat: {addr} http 400 (not an HTTP request)");
            let body = "not an HTTP/1.1 request (TLS to a plain-text port?)\n";
            answer(stream, &http_response(400, &[], body));
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
        answer(stream, &http_response(400, &[], body));
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
            answer(stream, &http_response(431, &[], "too many header lines\n"));
            return;
        }
        Ok(httparse::Status::Partial) | Err(_) => {
            log!(shared, "chat: {addr} http 400 (malformed request)");
            answer(stream, &http_response(400, &[], "malformed HTTP request\n"));
            return;
        }
    };
    // POST is served at /upload only (DESIGN.md v2, "Media").
    if method == "POST" && RequestTarget::parse(&target).is_ok_and(|t| t.path == "/upload") {
        upload(shared, stream, addr, &buf[..end], &buf[end..]);
        return;
    }
    if method != "GET" {
        log!(shared, "chat: {addr} http 405 {:?}", truncate(&method, 20));
        answer(
            stream,
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
            answer(stream, &http_response(400, &[], &format!("{e}\n")));
            return;
        }
    };
    match route {
        "/" | "/index.html" => answer(stream, page_response()),
        "/upload" => answer(
            stream,
            &http_response(405, &["Allow: POST"], "upload with POST\n"),
        ),
        media if media.starts_with("/media/") => serve_media(shared, stream, addr, media),
        "/healthz" => answer(
            stream,
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
                    if stream
                        .write_all(&req.accept_with_deflate(None, deflate.as_ref()))
                        .is_err()
                    {
                        return;
                    }
                    let params = deflate.map(|d| d.params().clone());
                    let mut early = buf[end..].to_vec();
                    let Wire {
                        stream, mut tls, ..
                    } = wire;
                    if let Some(t) = &mut tls {
                        // What rustls decrypted already would wait for a
                        // socket event that may never come.
                        t.take_plaintext(&mut early);
                    }
                    let transport = Transport { stream, tls };
                    session::start(shared, transport, addr, id, &early, live, params);
                }
                ParsedRequest::Reject(r) => {
                    // The error's message escapes what the peer sent ({:?}).
                    log!(shared, "chat: {addr} http {} ({})", r.status, r.error);
                    answer(stream, &r.response);
                }
                ParsedRequest::NeedMore => {
                    log!(shared, "chat: {addr} http 400 (incomplete request)");
                    answer(stream, &http_response(400, &[], "incomplete request\n"));
                }
            }
        }
        _ => {
            log!(shared, "chat: {addr} http 404 {:?}", truncate(route, 80));
            answer(stream, &http_response(404, &[], "not found\n"));
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

/// Reads the request head, at most `max` bytes, until the wire's deadline.
fn read_head(wire: &mut Wire, max: usize) -> Head {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        let n = match wire.read(&mut chunk) {
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

/// The page's answer, built once: its `Content-Security-Policy` allows
/// exactly the page's own inline script and style blocks, by SHA-256
/// (CSP Level 3, hash sources), so no other script runs even if some
/// string ever reached the DOM as markup; images come only from this
/// server and from `data:`/`blob:` URLs (the upload preview); the page
/// connects only to its own origin (`/ws`, `/upload`).
fn page_response() -> &'static [u8] {
    static PAGE_RESPONSE: OnceLock<Vec<u8>> = OnceLock::new();
    PAGE_RESPONSE.get_or_init(|| {
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
             Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n\
             Content-Security-Policy: {}\r\nReferrer-Policy: no-referrer\r\n\
             Connection: close\r\n\r\n",
            PAGE.len(),
            page_csp(PAGE)
        )
        .into_bytes();
        out.extend_from_slice(PAGE.as_bytes());
        out
    })
}

/// The page's policy: every inline `<script>` and `<style>` block of `page`
/// by hash, nothing else.
pub(crate) fn page_csp(page: &str) -> String {
    let hashes = |tag: &str| {
        let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
        let mut out = String::new();
        let mut rest = page;
        while let Some(i) = rest.find(&open) {
            let body = &rest[i + open.len()..];
            let Some(j) = body.find(&close) else { break };
            out.push_str(&format!(
                " 'sha256-{}'",
                base64(&Sha256::digest(&body[..j]))
            ));
            rest = &body[j + close.len()..];
        }
        out
    };
    format!(
        "default-src 'none'; script-src{}; style-src{}; connect-src 'self'; \
         img-src 'self' data: blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hashes("script"),
        hashes("style")
    )
}

/// Standard base64 with padding (RFC 4648 §4), as CSP hash sources are
/// written.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Media: POST /upload and GET /media/<sha256>.<ext> (DESIGN.md v2, "Media").
// Both run on the connection's own short-lived thread, like every HTTP
// answer before an upgrade: a slow body stalls no reactor. Uploads are
// bounded by --max-concurrent-uploads (503 past it) and --upload-timeout.
// ---------------------------------------------------------------------------

/// An HTTP answer with a JSON body.
fn json_response(status: u16, extra: &[&str], body: &str) -> Vec<u8> {
    let reason = match status {
        201 => "Created",
        401 => "Unauthorized",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        507 => "Insufficient Storage",
        s => wsproto::handshake::reason_phrase(s),
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n",
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

/// A refused upload: `{"error":code,"message":...}` (the page shows the
/// message).
fn upload_error(status: u16, extra: &[&str], code: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({"error": code, "message": message}).to_string();
    json_response(status, extra, &body)
}

/// `POST /upload`: checked in the contract's order, 401, 411, 413, 415
/// (declared type), then, before any body byte is read, a free upload slot
/// (503); then the body: 415 (bytes), 429 (rate), 201.
fn upload(shared: &Arc<Shared>, stream: &mut Wire, addr: SocketAddr, head: &[u8], early: &[u8]) {
    let media = &shared.media;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        answer(stream, &http_response(400, &[], "malformed HTTP request\n"));
        return;
    }
    let header = |name: &'static str| {
        req.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| std::str::from_utf8(h.value).unwrap_or("\u{FFFD}").trim())
    };
    let refuse = |stream: &mut Wire, status: u16, extra: &[&str], code: &str, message: &str| {
        log!(shared, "chat: {addr} upload {status} ({message})");
        answer(stream, &upload_error(status, extra, code, message));
    };
    // 401: RFC 6750 §2.1, the scheme is case-insensitive.
    let token = header("authorization").next().and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    // accounts + media hook: on a cluster the session may live on another
    // node (a load balancer chooses per connection): asked of Redis here,
    // on this connection's thread.
    let who = match token.map(|t| (t, shared.room.member_by_token(t))) {
        Some((_, Some(m))) => Some(m),
        Some((t, None)) => match media.remote_member(t) {
            Ok(m) => m,
            Err(e) => {
                let msg = format!("the session store (Redis) is unreachable: {e}");
                refuse(stream, 503, &["Retry-After: 2"], "unavailable", &msg);
                return;
            }
        },
        None => None,
    };
    let Some(who) = who else {
        let msg = if token.is_some() {
            "unknown token: join first, and upload while joined"
        } else {
            "send Authorization: Bearer TOKEN (the token from your welcome)"
        };
        refuse(
            stream,
            401,
            &["WWW-Authenticate: Bearer"],
            "unauthorized",
            msg,
        );
        return;
    };
    // 411: a length up front (chunked bodies are not taken: RFC 9112
    // §6.3 lets a server require Content-Length with 411).
    let lengths: Vec<&str> = header("content-length").collect();
    if header("transfer-encoding").next().is_some() || lengths.is_empty() {
        refuse(
            stream,
            411,
            &[],
            "length_required",
            "send the image with a Content-Length",
        );
        return;
    }
    // RFC 9112 §6.3: differing or malformed lengths are unrecoverable.
    let parsed: Vec<Option<u64>> = lengths
        .iter()
        .flat_map(|v| v.split(','))
        .map(|v| {
            let v = v.trim();
            (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .then(|| v.parse::<u64>().ok())
                .flatten()
        })
        .collect();
    let len = match parsed.first() {
        Some(Some(n)) if parsed.iter().all(|p| *p == Some(*n)) => *n,
        _ => {
            refuse(stream, 400, &[], "bad_request", "malformed Content-Length");
            return;
        }
    };
    // 413, from the header alone: not one body byte is read.
    if len > media.limits.max_bytes {
        let msg = format!(
            "{len} bytes is over the limit of {} bytes",
            media.limits.max_bytes
        );
        refuse(stream, 413, &[], "too_large", &msg);
        return;
    }
    // 415: a type not listed.
    let Some(declared) = header("content-type")
        .next()
        .and_then(crate::media::Kind::from_mime)
    else {
        refuse(
            stream,
            415,
            &[],
            "unsupported_type",
            "send Content-Type image/png, image/jpeg, image/gif or image/webp",
        );
        return;
    };
    // accounts + media hook: a cluster node cut from Redis cannot store
    // the image; said before the body is read.
    if !media.available() {
        refuse(
            stream,
            503,
            &["Retry-After: 2"],
            "unavailable",
            "the image store (Redis) is unreachable; try again shortly",
        );
        return;
    }
    let Some(slot) = media.slot(who) else {
        refuse(
            stream,
            503,
            &["Retry-After: 2"],
            "busy",
            "too many uploads at once; try again shortly",
        );
        return;
    };
    // RFC 9110 §10.1.1: a client that waits for 100 before the body.
    if header("expect").any(|v| v.eq_ignore_ascii_case("100-continue"))
        && stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err()
    {
        return;
    }
    // The body's own deadline replaces the head's (TLS reads included).
    let deadline = Instant::now() + media.limits.timeout;
    stream.deadline = deadline;
    let received = media.receive(early, Body(stream), len, declared, deadline);
    // The body is in (or refused): the slot's buffer is free, whatever the
    // answer's graceful close still waits for.
    drop(slot);
    let received = match received {
        Ok(r) => r,
        Err(e @ BodyError::NotTheDeclaredType { .. }) => {
            refuse(stream, 415, &[], "not_an_image", &e.to_string());
            return;
        }
        Err(e @ BodyError::Timeout(_)) => {
            refuse(stream, 408, &[], "timeout", &e.to_string());
            return;
        }
        Err(e @ BodyError::Truncated { .. }) => {
            log!(shared, "chat: {addr} upload dropped: {e}");
            return;
        }
        Err(e @ BodyError::Disk(_)) => {
            refuse(stream, 500, &[], "server_error", &e.to_string());
            return;
        }
    };
    // 429 last, and only accepted uploads count.
    match media.admit(who, token.unwrap_or_default(), Instant::now()) {
        Ok(()) => {}
        Err(Busy::Wait(wait)) => {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            let retry = format!("Retry-After: {secs}");
            let msg = format!(
                "more than {} uploads in a minute; try again in {secs} s",
                media.limits.per_minute,
            );
            refuse(stream, 429, &[&retry], "rate_limited", &msg);
            return;
        }
        Err(Busy::Unavailable(e)) => {
            let msg = format!("the session store (Redis) is unreachable: {e}");
            refuse(stream, 503, &["Retry-After: 2"], "unavailable", &msg);
            return;
        }
    }
    match media.commit(received) {
        Ok((name, e)) => {
            let url = name.url();
            log!(
                shared,
                "chat: {addr} upload 201 {url} ({} bytes, {}x{})",
                e.bytes,
                e.width,
                e.height
            );
            let body = serde_json::json!({
                "url": url,
                "type": name.kind.mime(),
                "bytes": e.bytes,
                "width": e.width,
                "height": e.height,
            })
            .to_string();
            let location = format!("Location: {url}");
            answer(stream, &json_response(201, &[&location], &body));
        }
        // accounts + media hook: the cluster's store answers 503/507.
        Err(e @ crate::media::CommitError::Disk(_)) => {
            refuse(stream, 500, &[], "server_error", &e.to_string())
        }
        Err(e @ crate::media::CommitError::Unavailable(_)) => refuse(
            stream,
            503,
            &["Retry-After: 2"],
            "unavailable",
            &e.to_string(),
        ),
        Err(e @ crate::media::CommitError::Full { retry_after }) => {
            let retry = format!("Retry-After: {}", retry_after.as_secs().max(1));
            refuse(stream, 507, &[&retry], "storage_full", &e.to_string())
        }
    }
}

/// The request body, read through the wire (each read bounded by what is
/// left of its deadline).
struct Body<'a>(&'a mut Wire);

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

/// `GET /media/<sha256>.<ext>`: the stored bytes with their type, or 404
/// for any other name (only `^[0-9a-f]{64}\.(png|jpg|gif|webp)$` is looked
/// up, so no name reaches outside the media directory).
fn serve_media(shared: &Arc<Shared>, stream: &mut Wire, addr: SocketAddr, route: &str) {
    let media = &shared.media;
    // accounts + media hook: on a cluster node the bytes come from Redis
    // (on this thread, not a reactor); unreachable -> 503.
    let found = match Name::from_url(route).map(|n| (n, media.open_image(&n))) {
        Some((n, Ok(Some((file, len))))) => Some((n, file, len)),
        Some((_, Err(e))) => {
            log!(shared, "chat: {addr} http 503 media: {e}");
            let body = "the image store is unreachable; try again shortly\n";
            answer(stream, &http_response(503, &["Retry-After: 2"], body));
            return;
        }
        _ => None,
    };
    let Some((name, mut file, len)) = found else {
        log!(shared, "chat: {addr} http 404 {:?}", truncate(route, 80));
        answer(stream, &http_response(404, &[], "not found\n"));
        return;
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {len}\r\n\
         X-Content-Type-Options: nosniff\r\nContent-Security-Policy: default-src 'none'\r\n\
         Cache-Control: public, max-age=31536000, immutable\r\nConnection: close\r\n\r\n",
        name.kind.mime()
    );
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let want = (left as usize).min(buf.len());
        match file.read(&mut buf[..want]) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
                left -= n as u64;
            }
        }
    }
    answer(stream, b"");
}

/// Writes a complete response, then closes gracefully: half-close, and read
/// (briefly) what the client still sends, so the close does not turn into a
/// reset that could destroy the answer before the client reads it.
fn answer(wire: &mut Wire, response: &[u8]) {
    if !response.is_empty() && wire.write_all(response).is_err() {
        return;
    }
    if let Some(t) = &mut wire.tls {
        t.blocking_close(&wire.stream, Instant::now() + WRITE_TIMEOUT);
    }
    let stream = &wire.stream;
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

/// The answer past `--max-connections` (over TLS on a TLS port: the
/// handshake and the head must both be done within 1 s).
pub(crate) fn refuse_busy(shared: &Shared, stream: TcpStream, addr: SocketAddr) {
    let mut wire = Wire::new(stream, Instant::now() + Duration::from_secs(1));
    if wire.start_tls(shared, addr).is_err() {
        return;
    }
    let _ = read_head(&mut wire, 8 << 10);
    answer(
        &mut wire,
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

/// Answers one connection to `--redirect-http`'s port: a 308 (the method
/// and body are kept, RFC 9110 §15.4.9) to the same host and target over
/// `https://` on `https_port`. The host is the request's own (`Host`, or
/// an absolute-form target), so the redirect goes where the client meant.
pub(crate) fn redirect(stream: TcpStream, https_port: u16, timeout: Duration) {
    let mut wire = Wire::new(stream, Instant::now() + timeout);
    let (buf, end) = match read_head(&mut wire, 8 << 10) {
        Head::Complete { buf, end } => (buf, end),
        Head::Gone => return,
        Head::TooLarge | Head::NotHttp => {
            answer(&mut wire, &http_response(400, &[], "bad request\n"));
            return;
        }
    };
    let location = {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..end]) {
            Ok(httparse::Status::Complete(_)) => {
                let host = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("host"))
                    .and_then(|h| std::str::from_utf8(h.value).ok());
                https_location(req.path.unwrap_or_default(), host, https_port)
            }
            _ => None,
        }
    };
    let response = match location {
        // wsproto's http_response has no phrase for 308.
        Some(l) => {
            let body = format!("moved to {l}\n");
            format!(
                "HTTP/1.1 308 Permanent Redirect\r\nLocation: {l}\r\nContent-Type: text/plain; charset=utf-8\r\n\
                 Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        }
        None => http_response(400, &[], "no usable Host or target\n"),
    };
    answer(&mut wire, &response);
}

/// `https://host[:port]target` for a request's target and `Host` header;
/// `None` if either is unusable (a host with characters no host may hold,
/// RFC 3986 §3.2.2, would let the peer write into our header).
fn https_location(target: &str, host: Option<&str>, https_port: u16) -> Option<String> {
    let target = RequestTarget::parse(target).ok()?;
    let authority = target.authority.or(host)?.trim();
    // Drop the port: the https port is ours.
    let host = match authority.strip_prefix('[') {
        Some(v6) => &authority[..v6.find(']')? + 2],
        None => authority.split(':').next()?,
    };
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:[]".contains(&b);
    if host.is_empty() || !host.bytes().all(ok) {
        return None;
    }
    let port = match https_port {
        443 => String::new(),
        p => format!(":{p}"),
    };
    let query = target.query.map(|q| format!("?{q}")).unwrap_or_default();
    Some(format!("https://{host}{port}{}{query}", target.path))
}
