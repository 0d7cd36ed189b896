//! Server side of the opening handshake (RFC 6455 §4.2).

use super::headers::{self, invalid, list_contains, trim, Extension};
use super::origin::split_host_port;
use super::{accept_key, bare_lf, head_end, http_response};
use crate::config::Config;
use crate::deflate::{DeflateAccept, DeflateConfig};
use crate::error::HandshakeError;
use base64::Engine;

/// A checked WebSocket Upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The request target in origin form, e.g. `/chat?room=1` (an
    /// absolute-form target `http://host/chat?room=1` is reduced to it).
    pub path: String,
    /// The host the request is for: the authority of an absolute-form
    /// target, else the `Host` header (RFC 7230 §5.4-5.5).
    pub host: String,
    /// The `Sec-WebSocket-Key` header (base64 of 16 bytes).
    pub key: String,
    /// The `Origin` header, if any (browsers always send it).
    pub origin: Option<String>,
    /// Subprotocols the client offered, in its order.
    pub protocols: Vec<String>,
    /// Extensions the client offered, in its order.
    pub extensions: Vec<Extension>,
    /// Every header as sent (names as written, values raw).
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Request {
    /// The first value of header `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The server's choice of subprotocol: the first of `supported` (the
    /// server's order of preference) that the client offered.
    ///
    /// ```
    /// # use wsproto::handshake::{parse_request, ParsedRequest};
    /// # let raw = b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    /// # Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
    /// # Sec-WebSocket-Protocol: chat, v2.chat\r\n\r\n";
    /// # let ParsedRequest::Complete(req, _) = parse_request(raw, &Default::default()) else { panic!() };
    /// assert_eq!(req.select_protocol(&["v2.chat", "chat"]), Some("v2.chat"));
    /// assert_eq!(req.select_protocol(&["mqtt"]), None);
    /// ```
    pub fn select_protocol<'a>(&self, supported: &[&'a str]) -> Option<&'a str> {
        supported
            .iter()
            .copied()
            .find(|s| self.protocols.iter().any(|p| p == s))
    }

    /// The `101 Switching Protocols` answer, with `protocol` (which should
    /// come from [`select_protocol`](Self::select_protocol)) if given.
    /// No extensions are accepted (see
    /// [`accept_with_deflate`](Self::accept_with_deflate)).
    ///
    /// A `protocol` the client did not offer is left out: RFC 6455 §4.2.2
    /// allows only an offered one (the client must fail the connection on
    /// any other), and every offered one is a checked token, so no string
    /// the caller passes can add a line to the answer.
    ///
    /// ```
    /// # use wsproto::handshake::{parse_request, ParsedRequest};
    /// # let raw = b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    /// # Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
    /// # Sec-WebSocket-Protocol: chat\r\n\r\n";
    /// # let ParsedRequest::Complete(req, _) = parse_request(raw, &Default::default()) else { panic!() };
    /// let answer = req.accept(Some("chat\r\nSet-Cookie: a=b"));
    /// assert!(!String::from_utf8(answer).unwrap().contains("Set-Cookie"));
    /// ```
    pub fn accept(&self, protocol: Option<&str>) -> Vec<u8> {
        self.accept_with_deflate(protocol, None)
    }

    /// permessage-deflate (RFC 7692 §5.1): the first of the client's offers
    /// that `config` accepts, or `None` (none made, none well-formed, or
    /// the `deflate` feature is off). Pass it to
    /// [`accept_with_deflate`](Self::accept_with_deflate) and its
    /// [`params`](DeflateAccept::params) to
    /// [`Connection::enable_deflate`](crate::Connection::enable_deflate).
    ///
    /// ```
    /// # if !wsproto::deflate::ENABLED { return; }
    /// # use wsproto::handshake::{parse_request, ParsedRequest};
    /// use wsproto::{deflate::DeflateConfig, Connection, Config, Role};
    /// # let raw = b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    /// # Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
    /// # Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";
    /// # let ParsedRequest::Complete(req, _) = parse_request(raw, &Default::default()) else { panic!() };
    /// let deflate = req.negotiate_deflate(&DeflateConfig::default());
    /// let answer = String::from_utf8(req.accept_with_deflate(None, deflate.as_ref())).unwrap();
    /// assert!(answer.contains("\r\nSec-WebSocket-Extensions: permessage-deflate\r\n"));
    /// let mut conn = Connection::new(Role::Server, Config::default());
    /// if let Some(d) = deflate {
    ///     conn.enable_deflate(d.params().clone());
    /// }
    /// ```
    pub fn negotiate_deflate(&self, config: &DeflateConfig) -> Option<DeflateAccept> {
        if !cfg!(feature = "deflate") {
            return None;
        }
        crate::deflate::negotiate_offers(&self.extensions, config)
    }

    /// As [`accept`](Self::accept), answering the permessage-deflate offer
    /// that [`negotiate_deflate`](Self::negotiate_deflate) accepted.
    pub fn accept_with_deflate(
        &self,
        protocol: Option<&str>,
        deflate: Option<&DeflateAccept>,
    ) -> Vec<u8> {
        let protocol = protocol.filter(|p| self.protocols.iter().any(|o| o == p));
        let mut out = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
            accept_key(self.key.as_bytes())
        );
        if let Some(p) = protocol {
            out.push_str("Sec-WebSocket-Protocol: ");
            out.push_str(p);
            out.push_str("\r\n");
        }
        if let Some(d) = deflate {
            out.push_str("Sec-WebSocket-Extensions: ");
            out.push_str(d.response());
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

/// A refused request and the complete HTTP response to send for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// What was wrong.
    pub error: HandshakeError,
    /// The HTTP status answered ([`HandshakeError::status`]).
    pub status: u16,
    /// The response: status from [`HandshakeError::status`], a short
    /// plain-text reason, and `Sec-WebSocket-Version: 13` for a 426 or
    /// `Allow: GET` for a 405.
    pub response: Vec<u8>,
}

impl Rejection {
    /// The rejection for `error`.
    pub fn new(error: HandshakeError) -> Self {
        // A request error always has a status; anything else handed in
        // (a caller's own error) is answered as a bad request.
        let status = error.status().unwrap_or(400);
        let extra: &[&str] = match status {
            426 => &["Sec-WebSocket-Version: 13", "Upgrade: websocket"],
            405 => &["Allow: GET"],
            _ => &[],
        };
        let response = http_response(status, extra, &format!("{error}\n"));
        Self {
            error,
            status,
            response,
        }
    }
}

/// A request target (RFC 7230 §5.3) reduced to what a server routes on.
///
/// A server must accept the absolute form (`GET http://host:port/ws`,
/// RFC 7230 §5.3.2) as well as the origin form (`GET /ws`); both give the
/// same path here. The asterisk and authority forms (`OPTIONS *`,
/// `CONNECT host:port`) are not GET targets and are refused.
///
/// ```
/// use wsproto::handshake::RequestTarget;
/// let t = RequestTarget::parse("/chat?room=1")?;
/// assert_eq!((t.authority, t.path, t.query), (None, "/chat", Some("room=1")));
/// let t = RequestTarget::parse("http://127.0.0.1:8080/ws")?;
/// assert_eq!((t.authority, t.path, t.query), (Some("127.0.0.1:8080"), "/ws", None));
/// assert_eq!(RequestTarget::parse("HTTP://h?x")?.path, "/");
/// assert!(RequestTarget::parse("*").is_err());
/// # Ok::<(), wsproto::HandshakeError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTarget<'a> {
    /// The `host[:port]` of an absolute-form target, which stands for the
    /// `Host` header (RFC 7230 §5.4).
    pub authority: Option<&'a str>,
    /// The path, starting with `/` (`/` for an absolute form without one).
    pub path: &'a str,
    /// What follows `?`, if anything.
    pub query: Option<&'a str>,
}

impl<'a> RequestTarget<'a> {
    /// Parses a request target as it appears in the request line.
    ///
    /// # Errors
    ///
    /// [`HandshakeError::InvalidTarget`] for anything but the origin form
    /// and an absolute `http`, `https`, `ws` or `wss` URI without user
    /// information or fragment.
    pub fn parse(target: &'a str) -> Result<Self, HandshakeError> {
        let bad = || HandshakeError::InvalidTarget(headers::lossy_prefix(target.as_bytes()));
        if target.contains('#') {
            return Err(bad());
        }
        let (authority, rest) = if target.starts_with('/') {
            (None, target)
        } else {
            let (scheme, after) = target.split_once("://").ok_or_else(bad)?;
            if !["http", "https", "ws", "wss"]
                .iter()
                .any(|s| scheme.eq_ignore_ascii_case(s))
            {
                return Err(bad());
            }
            let end = after.find(['/', '?']).unwrap_or(after.len());
            let (authority, rest) = after.split_at(end);
            if split_host_port(authority).is_none() {
                return Err(bad());
            }
            (Some(authority), rest)
        };
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        Ok(Self {
            authority,
            path: if path.is_empty() { "/" } else { path },
            query,
        })
    }
}

/// The outcome of [`parse_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedRequest {
    /// A valid Upgrade request whose head is this many bytes long.
    Complete(Request, usize),
    /// The head is not complete yet (and within the limits so far).
    NeedMore,
    /// The request is refused; send the response and close.
    Reject(Rejection),
}

/// Parses and checks a WebSocket Upgrade request (RFC 6455 §4.2.1).
///
/// Accepted: a GET over HTTP/1.1 with `Host`, `Upgrade: websocket`, a
/// `Connection` list containing `upgrade`, `Sec-WebSocket-Version: 13` and a
/// `Sec-WebSocket-Key` that is base64 of 16 bytes, whose `Origin` (if any)
/// [`Config::origin_policy`] accepts. The head may not exceed
/// [`Config::max_handshake_size`] bytes or [`Config::max_headers`] lines.
///
/// Also refused, with 400: lines ending in a bare LF (RFC 7230 §3.5 allows
/// no more than tolerating them, and two parsers that disagree on where a
/// line ends are how requests get smuggled), a target that is neither
/// `/path` nor `http://host/path`, and a request with a body
/// (`Content-Length` or `Transfer-Encoding`), whose bytes would otherwise
/// be read as WebSocket frames.
///
/// ```
/// use wsproto::handshake::{parse_request, ParsedRequest};
/// let raw = b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
///             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
///             Sec-WebSocket-Version: 13\r\n\r\n";
/// let ParsedRequest::Complete(req, len) = parse_request(raw, &Default::default()) else { panic!() };
/// assert_eq!((req.path.as_str(), len), ("/chat", raw.len()));
/// let answer = String::from_utf8(req.accept(None)).unwrap();
/// assert!(answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
///
/// let ParsedRequest::Reject(r) = parse_request(b"POST / HTTP/1.1\r\n\r\n", &Default::default()) else { panic!() };
/// assert!(r.response.starts_with(b"HTTP/1.1 405 "));
/// ```
pub fn parse_request(buf: &[u8], config: &Config) -> ParsedRequest {
    let end = match head_end(buf, 0) {
        Some(end) if end <= config.max_handshake_size => end,
        Some(_) => return too_large(config),
        None if buf.len() >= config.max_handshake_size => return too_large(config),
        None => return ParsedRequest::NeedMore,
    };
    match check_request(&buf[..end], config) {
        Ok(req) => ParsedRequest::Complete(req, end),
        Err(e) => ParsedRequest::Reject(Rejection::new(e)),
    }
}

fn too_large(config: &Config) -> ParsedRequest {
    ParsedRequest::Reject(Rejection::new(HandshakeError::HeadTooLarge {
        limit: config.max_handshake_size,
    }))
}

fn check_request(head: &[u8], config: &Config) -> Result<Request, HandshakeError> {
    if let Some(at) = bare_lf(head) {
        return Err(HandshakeError::MalformedHttp(format!(
            "line ending in a bare LF at byte {at} (lines must end in CRLF)"
        )));
    }
    let mut storage = vec![httparse::EMPTY_HEADER; config.max_headers];
    let mut req = httparse::Request::new(&mut storage);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(HandshakeError::MalformedHttp("incomplete head".into()))
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HandshakeError::TooManyHeaders {
                limit: config.max_headers,
            })
        }
        Err(e) => return Err(HandshakeError::MalformedHttp(e.to_string())),
    }
    // invariant: a Complete parse fills method, path and version.
    let method = req.method.unwrap_or_default();
    // RFC 6455 §4.1: "The method of the request MUST be GET".
    if method != "GET" {
        return Err(HandshakeError::MethodNotAllowed(method.to_owned()));
    }
    // RFC 6455 §4.1: "the HTTP version MUST be at least 1.1".
    let version = req.version.unwrap_or(0);
    if version < 1 {
        return Err(HandshakeError::HttpVersion(version));
    }
    let headers: Vec<(String, Vec<u8>)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_owned(), h.value.to_owned()))
        .collect();
    let one = |name: &'static str| -> Result<Option<&[u8]>, HandshakeError> {
        let mut it = headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
        let first = it.next().map(|(_, v)| trim(v));
        if it.next().is_some() {
            return Err(HandshakeError::InvalidHeader {
                name,
                value: "(sent more than once)".into(),
            });
        }
        Ok(first)
    };
    let required = |name: &'static str| one(name)?.ok_or(HandshakeError::MissingHeader(name));

    let target = RequestTarget::parse(req.path.unwrap_or_default())?;
    let host = required("Host")?;
    if host.is_empty() {
        return Err(invalid("Host", host));
    }
    // RFC 7230 §3.3: a GET has no body unless one of these says so, and
    // after an upgrade the bytes that follow the head are frames. A body
    // could carry frames that whoever vetted the request never saw.
    for header in ["Content-Length", "Transfer-Encoding"] {
        if !all_values(&headers, header).is_empty() {
            return Err(HandshakeError::UnexpectedBody { header });
        }
    }
    // RFC 6455 §4.2.1 items 3-4.
    let upgrade = required("Upgrade")?;
    if !list_contains(upgrade, "websocket") {
        return Err(invalid("Upgrade", upgrade));
    }
    let connection = all_values(&headers, "Connection");
    if connection.is_empty() {
        return Err(HandshakeError::MissingHeader("Connection"));
    }
    if !connection.iter().any(|v| list_contains(v, "upgrade")) {
        return Err(invalid("Connection", connection[0]));
    }
    // RFC 6455 §4.4: another version gets 426 with the versions we speak.
    let version = required("Sec-WebSocket-Version")?;
    if version != b"13" {
        return Err(HandshakeError::UnsupportedVersion(
            String::from_utf8_lossy(version).into_owned(),
        ));
    }
    // RFC 6455 §4.2.1 item 5: base64 of a 16-byte nonce.
    let key = required("Sec-WebSocket-Key")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(key);
    if !matches!(decoded, Ok(ref k) if k.len() == 16) {
        return Err(invalid("Sec-WebSocket-Key", key));
    }
    let mut protocols = Vec::new();
    for v in all_values(&headers, "Sec-WebSocket-Protocol") {
        protocols.extend(headers::parse_protocols(v)?);
    }
    let mut extensions = Vec::new();
    for v in all_values(&headers, "Sec-WebSocket-Extensions") {
        extensions.extend(headers::parse_extensions(v)?);
    }
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    let host = match target.authority {
        Some(authority) => authority.to_owned(),
        None => text(host),
    };
    let origin = one("Origin")?.map(text);
    // Last: a malformed request gets its 400 before an origin gets a 403.
    config.origin_policy.check(origin.as_deref(), &host)?;
    let path = match target.query {
        Some(q) => format!("{}?{q}", target.path),
        None => target.path.to_owned(),
    };
    Ok(Request {
        path,
        host,
        key: text(key),
        origin,
        protocols,
        extensions,
        headers,
    })
}

fn all_values<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Vec<&'a [u8]> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::OriginPolicy;

    const GOOD: &str = "GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n\
        Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    /// GOOD is RFC 6455 §1.2's example, whose page is on another host than
    /// the server: the default policy refuses it, so these tests list it.
    fn config() -> Config {
        Config::default().origin_policy(
            OriginPolicy::same_host()
                .allow("http://example.com")
                .unwrap(),
        )
    }

    fn parse(s: &str) -> ParsedRequest {
        parse_request(s.as_bytes(), &config())
    }

    fn rejected(s: &str) -> (u16, HandshakeError, String) {
        match parse(s) {
            ParsedRequest::Reject(r) => {
                let text = String::from_utf8(r.response.clone()).unwrap();
                (r.status, r.error, text)
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn accepts_rfc_request() {
        let ParsedRequest::Complete(req, n) = parse(GOOD) else {
            panic!()
        };
        assert_eq!(n, GOOD.len());
        assert_eq!(req.host, "server.example.com");
        assert_eq!(req.origin.as_deref(), Some("http://example.com"));
        assert_eq!(req.protocols, ["chat", "superchat"]);
        assert_eq!(req.extensions[0].name, "permessage-deflate");
        let resp = String::from_utf8(req.accept(Some("chat"))).unwrap();
        assert!(resp.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(resp.contains("Sec-WebSocket-Protocol: chat\r\n"));
        assert!(resp.ends_with("\r\n\r\n"));
        // Only an offered protocol is named (RFC 6455 §4.2.2).
        for not_offered in ["mqtt", "chat\r\nSet-Cookie: a=b", ""] {
            let resp = String::from_utf8(req.accept(Some(not_offered))).unwrap();
            assert!(!resp.contains("Sec-WebSocket-Protocol"), "{resp}");
            assert_eq!(resp.matches("\r\n").count(), 5, "{resp}");
        }
    }

    #[test]
    fn incomplete_needs_more_at_every_cut() {
        for cut in 0..GOOD.len() {
            assert_eq!(parse(&GOOD[..cut]), ParsedRequest::NeedMore, "cut {cut}");
        }
    }

    #[test]
    fn case_insensitive_values() {
        let s = GOOD
            .replace("Upgrade: websocket", "upgrade: WebSocket")
            .replace("keep-alive, Upgrade", "UPGRADE");
        assert!(matches!(parse(&s), ParsedRequest::Complete(..)));
    }

    #[test]
    fn rejections() {
        let (status, _, text) = rejected(&GOOD.replace("Version: 13", "Version: 8"));
        assert_eq!(status, 426);
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
        let (status, _, text) = rejected(&GOOD.replace("GET", "POST"));
        assert_eq!(status, 405);
        assert!(text.contains("Allow: GET\r\n"));
        let cases = [
            (
                GOOD.replace("HTTP/1.1", "HTTP/1.0"),
                HandshakeError::HttpVersion(0),
            ),
            (
                GOOD.replace("Host: server.example.com\r\n", ""),
                HandshakeError::MissingHeader("Host"),
            ),
            (
                GOOD.replace("Upgrade: websocket\r\n", ""),
                HandshakeError::MissingHeader("Upgrade"),
            ),
            (
                GOOD.replace("Upgrade: websocket", "Upgrade: h2c"),
                HandshakeError::InvalidHeader {
                    name: "Upgrade",
                    value: "h2c".into(),
                },
            ),
            (
                GOOD.replace("keep-alive, Upgrade", "keep-alive"),
                HandshakeError::InvalidHeader {
                    name: "Connection",
                    value: "keep-alive".into(),
                },
            ),
            (
                GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZQ=="),
                HandshakeError::InvalidHeader {
                    name: "Sec-WebSocket-Key",
                    value: "dGhlIHNhbXBsZQ==".into(),
                },
            ),
            (
                GOOD.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
                HandshakeError::MissingHeader("Sec-WebSocket-Key"),
            ),
            (
                GOOD.replace("chat, superchat", "chat superchat"),
                HandshakeError::InvalidHeader {
                    name: "Sec-WebSocket-Protocol",
                    value: "chat superchat".into(),
                },
            ),
        ];
        for (req, err) in cases {
            let (status, got, text) = rejected(&req);
            assert_eq!(got, err);
            assert_eq!(status, 400);
            assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
            assert!(text.contains("Content-Length: "), "a complete response");
        }
        assert!(matches!(
            rejected("GET / HTTP/1.1\r\nHost\r\n\r\n").1,
            HandshakeError::MalformedHttp(_)
        ));
    }

    fn upgrade(target: &str, extra: &str) -> String {
        format!(
            "GET {target} HTTP/1.1\r\n{extra}Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    }

    #[test]
    fn default_policy_refuses_a_foreign_origin_with_403() {
        let ParsedRequest::Reject(r) = parse_request(GOOD.as_bytes(), &Config::default()) else {
            panic!("the RFC example's page is on another host")
        };
        assert_eq!(
            r.error,
            HandshakeError::OriginRefused {
                origin: "http://example.com".into()
            }
        );
        let text = String::from_utf8(r.response).unwrap();
        assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\norigin \"http://example.com\" is not allowed\n"));

        let policy_table = [
            (
                "Host: 127.0.0.1:8080\r\nOrigin: http://127.0.0.1:8080\r\n",
                true,
            ),
            ("Host: 127.0.0.1:8080\r\n", true), // no Origin: not a browser
            (
                "Host: LOCALHOST:8080\r\nOrigin: https://localhost:8080\r\n",
                true,
            ),
            ("Host: [::1]:8080\r\nOrigin: http://[::1]:8080\r\n", true),
            (
                "Host: chat.example\r\nOrigin: https://chat.example\r\n",
                true,
            ),
            (
                "Host: 127.0.0.1:8080\r\nOrigin: http://evil.example\r\n",
                false,
            ),
            (
                "Host: 127.0.0.1:8080\r\nOrigin: http://127.0.0.1:8081\r\n",
                false,
            ),
            ("Host: [::1]:8080\r\nOrigin: http://[::1]:9090\r\n", false),
            ("Host: 127.0.0.1:8080\r\nOrigin: null\r\n", false),
        ];
        for (headers, ok) in policy_table {
            let verdict = parse_request(upgrade("/ws", headers).as_bytes(), &Config::default());
            match verdict {
                ParsedRequest::Complete(..) => assert!(ok, "{headers:?}"),
                ParsedRequest::Reject(r) => {
                    assert!(!ok, "{headers:?}: {:?}", r.error);
                    assert_eq!(r.status, 403);
                }
                ParsedRequest::NeedMore => panic!(),
            }
        }
        // Two Origin headers are a 400, not a choice of the friendlier one.
        let twice = upgrade(
            "/ws",
            "Host: h\r\nOrigin: http://h\r\nOrigin: http://evil.example\r\n",
        );
        assert!(
            matches!(parse_request(twice.as_bytes(), &Config::default()),
            ParsedRequest::Reject(r) if r.status == 400)
        );
        // A malformed request is a 400 before its origin is looked at.
        let req = upgrade("/ws", "Host: h\r\nOrigin: http://evil\r\n")
            .replace("Version: 13", "Version: 8");
        assert!(matches!(parse_request(req.as_bytes(), &Config::default()),
            ParsedRequest::Reject(r) if r.status == 426));
        // `*` accepts any origin, null included.
        let any = Config::default().origin_policy(OriginPolicy::any());
        let req = upgrade("/ws", "Host: h\r\nOrigin: null\r\n");
        assert!(matches!(
            parse_request(req.as_bytes(), &any),
            ParsedRequest::Complete(..)
        ));
    }

    #[test]
    fn absolute_form_target_is_served_like_origin_form() {
        let req = upgrade(
            "http://127.0.0.1:8080/ws?room=1",
            "Host: 127.0.0.1:8080\r\nOrigin: http://127.0.0.1:8080\r\n",
        );
        let ParsedRequest::Complete(r, _) = parse_request(req.as_bytes(), &Config::default())
        else {
            panic!()
        };
        assert_eq!(
            (r.path.as_str(), r.host.as_str()),
            ("/ws?room=1", "127.0.0.1:8080")
        );
        // RFC 7230 §5.4: the target's authority, not Host, is what the
        // request is for, and so what the origin is compared with.
        let req = upgrade(
            "HTTP://chat.example",
            "Host: other\r\nOrigin: https://chat.example\r\n",
        );
        let ParsedRequest::Complete(r, _) = parse_request(req.as_bytes(), &Config::default())
        else {
            panic!()
        };
        assert_eq!((r.path.as_str(), r.host.as_str()), ("/", "chat.example"));
        for bad in [
            "*",
            "ws",
            "example.com:80",
            "ftp://h/ws",
            "http://u@h/ws",
            "http:///ws",
            "/ws#f",
        ] {
            let ParsedRequest::Reject(r) =
                parse_request(upgrade(bad, "Host: h\r\n").as_bytes(), &Config::default())
            else {
                panic!("{bad}")
            };
            assert!(
                matches!(r.error, HandshakeError::InvalidTarget(_)),
                "{bad}: {:?}",
                r.error
            );
            assert_eq!(r.status, 400);
        }
    }

    #[test]
    fn bare_lf_head_is_refused_at_once() {
        let lf = upgrade("/ws", "Host: h\r\n").replace("\r\n", "\n");
        let ParsedRequest::Reject(r) = parse_request(lf.as_bytes(), &Config::default()) else {
            panic!("a bare-LF head must get an answer, not wait for more")
        };
        assert_eq!(r.status, 400);
        assert!(matches!(r.error, HandshakeError::MalformedHttp(ref m) if m.contains("bare LF")));
        // One bare LF among CRLFs is as bad.
        let mixed = upgrade("/ws", "Host: h\nX: 1\r\n");
        let ParsedRequest::Reject(r) = parse_request(mixed.as_bytes(), &Config::default()) else {
            panic!()
        };
        assert_eq!(r.status, 400);
    }

    #[test]
    fn upgrade_with_a_body_is_refused() {
        let frame = b"\x81\x85abcd\x0b\x07\x0f\x08\x0e"; // a masked "hello"
        for (header, name) in [
            ("Content-Length: 11\r\n", "Content-Length"),
            ("content-length: 0\r\n", "Content-Length"),
            ("Transfer-Encoding: chunked\r\n", "Transfer-Encoding"),
            (
                "Content-Length: 1\r\nContent-Length: 2\r\n",
                "Content-Length",
            ),
        ] {
            let mut req = upgrade("/ws", &format!("Host: h\r\n{header}")).into_bytes();
            req.extend_from_slice(frame);
            let ParsedRequest::Reject(r) = parse_request(&req, &Config::default()) else {
                panic!("{header}")
            };
            assert_eq!(r.error, HandshakeError::UnexpectedBody { header: name });
            assert!(r.response.starts_with(b"HTTP/1.1 400 "));
        }
    }

    #[test]
    fn limits() {
        let config = Config::default().max_handshake_size(64);
        let ParsedRequest::Reject(r) = parse_request(&[b'a'; 64], &config) else {
            panic!()
        };
        assert_eq!(r.status, 431);
        let ParsedRequest::Reject(r) = parse_request(GOOD.as_bytes(), &config) else {
            panic!()
        };
        assert_eq!(r.error, HandshakeError::HeadTooLarge { limit: 64 });
        let config = Config::default().max_headers(3);
        let ParsedRequest::Reject(r) = parse_request(GOOD.as_bytes(), &config) else {
            panic!()
        };
        assert_eq!(r.error, HandshakeError::TooManyHeaders { limit: 3 });
    }
}
