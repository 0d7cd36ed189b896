//! Client side of the opening handshake (RFC 6455 §4.1).

use super::headers::{self, invalid, is_token, list_contains, lossy_prefix, trim, Extension};
use super::origin::is_reg_name_byte;
use super::{accept_key, head_end};
use crate::config::Config;
use crate::deflate::{DeflateConfig, DeflateParams};
use crate::error::{HandshakeError, HandshakeErrorKind};
use base64::Engine;

/// A client's Upgrade request, holding the key its response is checked against.
///
/// Every part is checked when it is given (host, path, subprotocols, extra
/// headers), so no caller-supplied string can end a line early and inject
/// header lines or a second request (RFC 7230 §3.2, §3.1.1).
///
/// ```
/// use wsproto::handshake::ClientRequest;
/// let req = ClientRequest::from_url("ws://127.0.0.1:9001/chat")?.protocols(&["chat"])?;
/// assert_eq!(req.address(), "127.0.0.1:9001");
/// let bytes = String::from_utf8(req.to_bytes()).unwrap();
/// assert!(bytes.starts_with("GET /chat HTTP/1.1\r\nHost: 127.0.0.1:9001\r\n"));
/// assert!(bytes.contains(&format!("Sec-WebSocket-Key: {}\r\n", req.key())));
/// # Ok::<(), wsproto::HandshakeError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRequest {
    host: String,
    port: u16,
    path: String,
    key: String,
    protocols: Vec<String>,
    extra: Vec<(String, String)>,
    deflate: Option<DeflateConfig>,
    /// From a `wss://` URL: the stream must be TLS (RFC 6455 §3).
    secure: bool,
}

impl ClientRequest {
    /// A request for `path` (`/` if empty) on `host:port`, with a fresh
    /// random key. `host` is a host name, an IPv4 address or an IPv6 address
    /// (with or without brackets).
    ///
    /// # Errors
    ///
    /// [`HandshakeError::InvalidHost`] for a host with a character no host
    /// may hold (RFC 3986 §3.2.2: CR and LF among them);
    /// [`HandshakeError::InvalidPath`] for a path that does not start with
    /// `/` or holds a space or a control character.
    ///
    /// ```
    /// use wsproto::handshake::ClientRequest;
    /// let req = ClientRequest::new("::1", 9001, "/ws")?;
    /// assert_eq!(req.address(), "[::1]:9001");
    /// assert!(ClientRequest::new("h\r\nX-Evil: 1", 80, "/").is_err());
    /// assert!(ClientRequest::new("h", 80, "/ HTTP/1.1\r\n").is_err());
    /// # Ok::<(), wsproto::HandshakeError>(())
    /// ```
    pub fn new(host: &str, port: u16, path: &str) -> Result<Self, HandshakeError> {
        let host = check_host(host)?;
        let path = if path.is_empty() { "/" } else { path };
        // RFC 7230 §3.1.1: the target ends at the first space; a control
        // character (CR, LF) would end the request line.
        if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(HandshakeError::InvalidPath(lossy_prefix(path.as_bytes())));
        }
        let mut nonce = [0u8; 16];
        crate::random::fill(&mut nonce);
        Ok(Self {
            host,
            port,
            path: path.to_owned(),
            key: base64::engine::general_purpose::STANDARD.encode(nonce),
            protocols: Vec::new(),
            extra: Vec::new(),
            deflate: None,
            secure: false,
        })
    }

    /// A request for a `ws://host[:port][/path]` URL (port 80 by default)
    /// or a `wss://` one (port 443 by default, RFC 6455 §3; the stream must
    /// then be TLS: [`is_secure`](Self::is_secure)).
    ///
    /// # Errors
    ///
    /// [`HandshakeError::InvalidUrl`] for another scheme, a missing host, a
    /// bad port or a path with spaces or control characters;
    /// [`HandshakeError::InvalidHost`] for a host with characters no host
    /// may hold (CR and LF among them).
    pub fn from_url(url: &str) -> Result<Self, HandshakeError> {
        let bad = |why| HandshakeError::InvalidUrl {
            url: url.to_owned(),
            why,
        };
        let (rest, secure) = if let Some(r) = strip_prefix_ignore_case(url, "ws://") {
            (r, false)
        } else if let Some(r) = strip_prefix_ignore_case(url, "wss://") {
            (r, true)
        } else {
            return Err(bad("the scheme must be ws:// or wss://"));
        };
        let default_port = if secure { 443 } else { 80 };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'?' => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        let path = path.split('#').next().unwrap_or("/").to_owned();
        if authority.contains('@') {
            return Err(bad("user information is not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unterminated IPv6 literal"))?;
            let port = match after {
                "" => default_port,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| bad("invalid port"))?,
            };
            (format!("[{h}]"), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad("invalid port"))?),
                None => (authority.to_owned(), default_port),
            }
        };
        if host.is_empty() || host == "[]" {
            return Err(bad("missing host"));
        }
        if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(bad("the path contains spaces or control characters"));
        }
        let mut request = Self::new(&host, port, &path)?;
        request.secure = secure;
        Ok(request)
    }

    /// True for a `wss://` URL: the request must go over TLS.
    ///
    /// ```
    /// use wsproto::handshake::ClientRequest;
    /// let req = ClientRequest::from_url("wss://[::1]/chat")?;
    /// assert!(req.is_secure());
    /// assert_eq!((req.host(), req.address().as_str()), ("::1", "[::1]:443"));
    /// # Ok::<(), wsproto::HandshakeError>(())
    /// ```
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// The host, as TLS names it for SNI and certificate checks (an IPv6
    /// address without its brackets).
    pub fn host(&self) -> &str {
        self.host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&self.host)
    }

    /// Offers these subprotocols, in order of preference.
    ///
    /// # Errors
    ///
    /// [`HandshakeError::InvalidHeader`] (`Sec-WebSocket-Protocol`) if one
    /// is not an RFC 7230 token (RFC 6455 §4.1 item 10).
    pub fn protocols(mut self, protocols: &[&str]) -> Result<Self, HandshakeError> {
        if let Some(bad) = protocols.iter().find(|p| !is_token(p.as_bytes())) {
            return Err(invalid("Sec-WebSocket-Protocol", bad.as_bytes()));
        }
        self.protocols = protocols.iter().map(|p| (*p).to_owned()).collect();
        Ok(self)
    }

    /// Adds a header line (e.g. `Origin`, `Authorization`).
    ///
    /// # Errors
    ///
    /// [`HandshakeError::InvalidHeaderName`] if `name` is not an RFC 7230
    /// token or is one the handshake writes itself (`Host`, `Upgrade`,
    /// `Connection`, `Sec-WebSocket-Key`, `-Version`, `-Protocol`: a second
    /// copy would make the request ambiguous);
    /// [`HandshakeError::InvalidHeaderValue`] if `value` holds a byte a
    /// field-value may not (RFC 7230 §3.2: controls other than HTAB, so CR,
    /// LF and NUL, or DEL).
    ///
    /// ```
    /// use wsproto::handshake::ClientRequest;
    /// let req = ClientRequest::new("h", 80, "/")?.header("Origin", "http://h")?;
    /// assert!(String::from_utf8(req.to_bytes()).unwrap().contains("\r\nOrigin: http://h\r\n"));
    /// assert!(req.clone().header("X-A", "1\r\nX-Injected: 2").is_err());
    /// assert!(req.clone().header("X A", "1").is_err());
    /// assert!(req.header("host", "other").is_err());
    /// # Ok::<(), wsproto::HandshakeError>(())
    /// ```
    pub fn header(mut self, name: &str, value: &str) -> Result<Self, HandshakeError> {
        let bad_name = |why| HandshakeError::InvalidHeaderName {
            name: lossy_prefix(name.as_bytes()),
            why,
        };
        if !is_token(name.as_bytes()) {
            return Err(bad_name(
                "a header name is a token (letters, digits and !#$%&'*+-.^_`|~)",
            ));
        }
        const OWN: [&str; 6] = [
            "Host",
            "Upgrade",
            "Connection",
            "Sec-WebSocket-Key",
            "Sec-WebSocket-Version",
            "Sec-WebSocket-Protocol",
        ];
        if OWN.iter().any(|own| own.eq_ignore_ascii_case(name)) {
            return Err(bad_name(
                "the handshake writes this header itself (use protocols() for subprotocols)",
            ));
        }
        // RFC 7230 §3.2: field-value = *( VCHAR / obs-text / SP / HTAB ).
        let allowed = |b: u8| b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80;
        if let Some(offset) = value.bytes().position(|b| !allowed(b)) {
            return Err(HandshakeError::InvalidHeaderValue {
                name: name.to_owned(),
                byte: value.as_bytes()[offset],
                offset,
            });
        }
        self.extra.push((name.to_owned(), value.to_owned()));
        Ok(self)
    }

    /// Offers permessage-deflate (RFC 7692) as `config` says; the answer is
    /// checked by [`parse_response`](Self::parse_response), which puts what
    /// was agreed in [`Response::deflate`]. Without the `deflate` feature
    /// nothing is offered.
    ///
    /// ```
    /// # if !wsproto::deflate::ENABLED { return Ok(()); }
    /// use wsproto::{deflate::DeflateConfig, handshake::ClientRequest};
    /// let req = ClientRequest::new("h", 80, "/")?.deflate(DeflateConfig::default());
    /// let bytes = String::from_utf8(req.to_bytes()).unwrap();
    /// assert!(bytes.contains("\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"));
    /// # Ok::<(), wsproto::HandshakeError>(())
    /// ```
    #[must_use]
    pub fn deflate(mut self, config: DeflateConfig) -> Self {
        self.deflate = cfg!(feature = "deflate").then_some(config);
        self
    }

    /// The permessage-deflate offer made, if any.
    pub fn deflate_offer(&self) -> Option<&DeflateConfig> {
        self.deflate.as_ref()
    }

    /// The `Sec-WebSocket-Key` sent.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// `host:port`, for `TcpStream::connect`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The request bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // RFC 7230 §5.4: the port may be left out when it is the scheme's default.
        let host = if self.port == if self.secure { 443 } else { 80 } {
            self.host.clone()
        } else {
            self.address()
        };
        let mut out = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n",
            self.path, self.key
        );
        if !self.protocols.is_empty() {
            out.push_str(&format!(
                "Sec-WebSocket-Protocol: {}\r\n",
                self.protocols.join(", ")
            ));
        }
        if let Some(d) = &self.deflate {
            out.push_str("Sec-WebSocket-Extensions: ");
            out.push_str(&crate::deflate::offer_header(d));
            out.push_str("\r\n");
        }
        for (n, v) in &self.extra {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    /// Checks the server's answer (RFC 6455 §4.1, "the client MUST validate").
    ///
    /// # Errors
    ///
    /// [`HandshakeError::Status`] for a status other than 101 (with the
    /// start of the body), [`HandshakeError::AcceptMismatch`], a missing or
    /// wrong `Upgrade`/`Connection`, a subprotocol or extension that was not
    /// offered, or a head over the limits.
    ///
    /// ```
    /// use wsproto::handshake::{accept_key, ClientRequest, ParsedResponse};
    /// let req = ClientRequest::new("localhost", 80, "/")?;
    /// let answer = format!(
    ///     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    ///      Sec-WebSocket-Accept: {}\r\n\r\n",
    ///     accept_key(req.key().as_bytes())
    /// );
    /// let parsed = req.parse_response(answer.as_bytes(), &Default::default()).unwrap();
    /// assert!(matches!(parsed, ParsedResponse::Complete(_, n) if n == answer.len()));
    /// # Ok::<(), wsproto::HandshakeError>(())
    /// ```
    pub fn parse_response(
        &self,
        buf: &[u8],
        config: &Config,
    ) -> Result<ParsedResponse, HandshakeError> {
        // The HTTP checks are shared with the server side, where their
        // errors are the client's fault and answered with a status; here
        // the server is at fault, so they are wrapped to say so.
        self.parse_response_inner(buf, config)
            .map_err(|e| match e.kind() {
                HandshakeErrorKind::Http => HandshakeError::InvalidResponse(Box::new(e)),
                _ => e,
            })
    }

    fn parse_response_inner(
        &self,
        buf: &[u8],
        config: &Config,
    ) -> Result<ParsedResponse, HandshakeError> {
        let too_large = HandshakeError::HeadTooLarge {
            limit: config.max_handshake_size,
        };
        let end = match head_end(buf, 0) {
            Some(end) if end <= config.max_handshake_size => end,
            None if buf.len() < config.max_handshake_size => return Ok(ParsedResponse::NeedMore),
            _ => return Err(too_large),
        };
        let mut storage = vec![httparse::EMPTY_HEADER; config.max_headers];
        let mut resp = httparse::Response::new(&mut storage);
        match resp.parse(&buf[..end]) {
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
        let status = resp.code.unwrap_or(0);
        if status != 101 {
            let body = &buf[end..buf.len().min(end + 256)];
            return Err(HandshakeError::Status {
                status,
                body: String::from_utf8_lossy(body).into_owned(),
            });
        }
        let headers: Vec<(String, Vec<u8>)> = resp
            .headers
            .iter()
            .map(|h| (h.name.to_owned(), h.value.to_owned()))
            .collect();
        let get = |name: &'static str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| trim(v))
                .ok_or(HandshakeError::MissingHeader(name))
        };
        let upgrade = get("Upgrade")?;
        if !upgrade.eq_ignore_ascii_case(b"websocket") {
            return Err(invalid("Upgrade", upgrade));
        }
        let connection = get("Connection")?;
        if !list_contains(connection, "upgrade") {
            return Err(invalid("Connection", connection));
        }
        let expected = accept_key(self.key.as_bytes());
        let got = get("Sec-WebSocket-Accept")?;
        if got != expected.as_bytes() {
            return Err(HandshakeError::AcceptMismatch {
                expected,
                got: String::from_utf8_lossy(got).into_owned(),
            });
        }
        // RFC 6455 §4.1: fail on a subprotocol or extension we did not offer.
        let protocol = match get("Sec-WebSocket-Protocol") {
            Ok(p) => {
                let p = String::from_utf8_lossy(p).into_owned();
                if !self.protocols.contains(&p) {
                    return Err(HandshakeError::NotOffered(p));
                }
                Some(p)
            }
            Err(_) => None,
        };
        let mut extensions = Vec::new();
        for (_, v) in headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("Sec-WebSocket-Extensions"))
        {
            extensions.extend(headers::parse_extensions(v)?);
        }
        // RFC 7692 §7.1: check permessage-deflate's answer against our offer.
        let deflate = crate::deflate::parse_answer(&extensions, self.deflate.as_ref())?;
        Ok(ParsedResponse::Complete(
            Response {
                status,
                protocol,
                extensions,
                headers,
                deflate,
            },
            end,
        ))
    }
}

/// The host as it goes into `Host` and [`ClientRequest::address`]: a
/// reg-name or IPv4 address as given, an IPv6 address in brackets.
fn check_host(host: &str) -> Result<String, HandshakeError> {
    let bad = || HandshakeError::InvalidHost(lossy_prefix(host.as_bytes()));
    if let Ok(v6) = host.parse::<std::net::Ipv6Addr>() {
        return Ok(format!("[{v6}]"));
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        return Ok(host.to_owned());
    }
    if host.is_empty() || !host.bytes().all(is_reg_name_byte) {
        return Err(bad());
    }
    Ok(host.to_owned())
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// The outcome of [`ClientRequest::parse_response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedResponse {
    /// A valid 101 answer whose head is this many bytes long; any bytes after
    /// it are WebSocket frames.
    Complete(Response, usize),
    /// The head is not complete yet.
    NeedMore,
}

/// A checked `101 Switching Protocols` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Always 101.
    pub status: u16,
    /// The subprotocol the server selected.
    pub protocol: Option<String>,
    /// The extensions the server accepted (at most permessage-deflate,
    /// and only if offered).
    pub extensions: Vec<Extension>,
    /// Every header as sent.
    pub headers: Vec<(String, Vec<u8>)>,
    /// What was agreed for permessage-deflate, if the server accepted our
    /// offer: for [`Connection::enable_deflate`](crate::Connection::enable_deflate).
    pub deflate: Option<DeflateParams>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Fault;

    fn answer(req: &ClientRequest, extra: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{extra}\r\n",
            accept_key(req.key().as_bytes())
        )
    }

    #[test]
    fn urls() {
        let r = ClientRequest::from_url("ws://example.com").unwrap();
        assert_eq!(r.address(), "example.com:80");
        assert!(String::from_utf8(r.to_bytes())
            .unwrap()
            .starts_with("GET / HTTP/1.1\r\nHost: example.com\r\n"));
        let r = ClientRequest::from_url("WS://[::1]:9001?x=1").unwrap();
        assert_eq!(r.address(), "[::1]:9001");
        assert!(String::from_utf8(r.to_bytes())
            .unwrap()
            .starts_with("GET /?x=1 HTTP/1.1\r\n"));
        for bad in [
            "http://x/",
            "https://x/",
            "ws://",
            "ws://x:99999/",
            "ws://u@x/",
            "ws://x/a b",
        ] {
            assert!(
                matches!(
                    ClientRequest::from_url(bad),
                    Err(HandshakeError::InvalidUrl { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn wss_urls_default_to_443() {
        let r = ClientRequest::from_url("wss://example.com/chat").unwrap();
        assert!(r.is_secure());
        assert_eq!(
            (r.address().as_str(), r.host()),
            ("example.com:443", "example.com")
        );
        assert!(String::from_utf8(r.to_bytes())
            .unwrap()
            .starts_with("GET /chat HTTP/1.1\r\nHost: example.com\r\n"));
        let r = ClientRequest::from_url("WSS://[::1]:8443").unwrap();
        assert_eq!((r.address().as_str(), r.host()), ("[::1]:8443", "::1"));
        assert!(!ClientRequest::from_url("ws://x/").unwrap().is_secure());
    }

    /// Nothing a caller passes may add a line to the request: every case
    /// here used to be written out verbatim.
    #[test]
    fn header_injection_is_refused() {
        for url in [
            "ws://h\r\nX-Evil: 1/",
            "ws://h\nX-Evil: 1:80/",
            "ws://h\r\n\r\nGET /x HTTP/1.1/",
            "ws://h\0/",
            "ws://h x/",
            "ws://[::1\r\n]/",
            "ws://[not-v6]/",
        ] {
            assert!(
                matches!(
                    ClientRequest::from_url(url),
                    Err(HandshakeError::InvalidHost(_) | HandshakeError::InvalidUrl { .. })
                ),
                "{url:?}"
            );
        }
        assert_eq!(
            ClientRequest::from_url("ws://h\r\nX-Evil:80/"),
            Err(HandshakeError::InvalidHost("h\r\nX-Evil".into()))
        );
        for host in [
            "",
            "h\r\nX: 1",
            "h\n",
            "h/x",
            "h@x",
            "h:80",
            "[h]",
            "h\u{e9}",
        ] {
            assert!(
                matches!(
                    ClientRequest::new(host, 80, "/"),
                    Err(HandshakeError::InvalidHost(_))
                ),
                "{host:?}"
            );
        }
        for path in ["x", "/a b", "/a\r\nX: 1", "/a\n", "/\0", "/\x7f", "*"] {
            assert!(
                matches!(
                    ClientRequest::new("h", 80, path),
                    Err(HandshakeError::InvalidPath(_))
                ),
                "{path:?}"
            );
        }
        let req = ClientRequest::new("h", 80, "/").unwrap();
        for (name, why) in [
            ("", "token"),
            ("X A", "token"),
            ("X:A", "token"),
            ("X\r\nY", "token"),
            ("X\u{e9}", "token"),
            ("HOST", "itself"),
            ("sec-websocket-key", "itself"),
            ("Connection", "itself"),
        ] {
            match req.clone().header(name, "v") {
                Err(HandshakeError::InvalidHeaderName { why: w, .. }) => {
                    assert!(w.contains(why), "{name:?}: {w}")
                }
                other => panic!("{name:?}: {other:?}"),
            }
        }
        for (value, byte, offset) in [
            ("a\r\nX-Evil: 1", b'\r', 1),
            ("a\nX-Evil: 1", b'\n', 1),
            ("\0", 0, 0),
            ("ab\x1b[31m", 0x1b, 2),
            ("a\x7f", 0x7f, 1),
        ] {
            assert_eq!(
                req.clone().header("X-A", value),
                Err(HandshakeError::InvalidHeaderValue {
                    name: "X-A".into(),
                    byte,
                    offset
                }),
                "{value:?}"
            );
        }
        assert!(req.clone().protocols(&["chat", "a b"]).is_err());
        assert!(req.clone().protocols(&["chat\r\nX: 1"]).is_err());
        assert!(req.clone().protocols(&[""]).is_err());
        // What a field-value may hold: SP, HTAB, visible ASCII, obs-text.
        let ok = req
            .header("X-A", "a b\t~ \u{e9}")
            .unwrap()
            .protocols(&["v2.chat"])
            .unwrap();
        let bytes = String::from_utf8(ok.to_bytes()).unwrap();
        assert!(bytes.contains("\r\nX-A: a b\t~ \u{e9}\r\n"));
        assert_eq!(bytes.matches("\r\n").count(), 9, "{bytes}");
    }

    #[test]
    fn hosts_are_normalized() {
        for (host, address) in [
            ("::1", "[::1]:80"),
            ("[::1]", "[::1]:80"),
            ("127.0.0.1", "127.0.0.1:80"),
            ("Example.COM", "Example.COM:80"),
        ] {
            assert_eq!(ClientRequest::new(host, 80, "").unwrap().address(), address);
        }
    }

    #[test]
    fn keys_are_random_16_bytes() {
        let a = ClientRequest::new("h", 80, "/").unwrap();
        let b = ClientRequest::new("h", 80, "/").unwrap();
        assert_ne!(a.key(), b.key());
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.key())
            .unwrap();
        assert_eq!(raw.len(), 16);
    }

    #[test]
    fn response_checks() {
        let config = Config::default();
        let req = ClientRequest::new("h", 80, "/")
            .unwrap()
            .protocols(&["chat"])
            .unwrap();
        let ok = answer(&req, "Sec-WebSocket-Protocol: chat\r\n");
        let Ok(ParsedResponse::Complete(resp, n)) = req.parse_response(ok.as_bytes(), &config)
        else {
            panic!()
        };
        assert_eq!((resp.protocol.as_deref(), n), (Some("chat"), ok.len()));
        assert_eq!(
            req.parse_response(&ok.as_bytes()[..20], &config),
            Ok(ParsedResponse::NeedMore)
        );

        let err = req.parse_response(
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno",
            &config,
        );
        assert_eq!(
            err,
            Err(HandshakeError::Status {
                status: 403,
                body: "no".into()
            })
        );
        let bad_accept = ok.replace("Sec-WebSocket-Accept: ", "Sec-WebSocket-Accept: x");
        assert!(matches!(
            req.parse_response(bad_accept.as_bytes(), &config),
            Err(HandshakeError::AcceptMismatch { .. })
        ));
        let other_proto = answer(&req, "Sec-WebSocket-Protocol: mqtt\r\n");
        assert_eq!(
            req.parse_response(other_proto.as_bytes(), &config),
            Err(HandshakeError::NotOffered("mqtt".into()))
        );
        let ext = answer(&req, "Sec-WebSocket-Extensions: permessage-deflate\r\n");
        assert_eq!(
            req.parse_response(ext.as_bytes(), &config),
            Err(HandshakeError::NotOffered("permessage-deflate".into()))
        );
        let no_upgrade = ok.replace("Upgrade: websocket\r\n", "");
        assert_eq!(
            req.parse_response(no_upgrade.as_bytes(), &config),
            Err(HandshakeError::InvalidResponse(Box::new(
                HandshakeError::MissingHeader("Upgrade")
            )))
        );
        let no_conn = ok.replace("Connection: Upgrade", "Connection: close");
        assert!(matches!(
            req.parse_response(no_conn.as_bytes(), &config),
            Err(HandshakeError::InvalidResponse(e)) if matches!(*e, HandshakeError::InvalidHeader {
                name: "Connection",
                ..
            })
        ));
    }

    /// Issue 12: a client-side error is never one a server would answer
    /// with an HTTP status: every way a response can be wrong is the
    /// server's fault, of kind `Response`, with no `status()` (the shared
    /// HTTP checks used to give `MissingHeader`, status 400).
    #[test]
    fn response_errors_are_the_servers_fault_and_never_answered() {
        let config = Config::default().max_headers(4).max_handshake_size(300);
        let req = ClientRequest::new("h", 80, "/").unwrap();
        let ok = answer(&req, "");
        let bad = [
            ok.replace("Upgrade: websocket\r\n", ""),
            ok.replace("Connection: Upgrade", "Connection: close"),
            ok.replace("HTTP/1.1 101", "HTTP/1.1 1x1"),
            ok.replace("\r\n\r\n", "\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"),
            ok.replace("\r\n\r\n", &format!("\r\nA: {}\r\n\r\n", "a".repeat(300))),
            ok.replace("Sec-WebSocket-Accept: ", "Sec-WebSocket-Accept: x"),
            "HTTP/1.1 404 Not Found\r\n\r\n".to_string(),
        ];
        for answer in &bad {
            let err = req.parse_response(answer.as_bytes(), &config).unwrap_err();
            assert_eq!(err.fault(), Fault::Peer, "{answer:?}: {err:?}");
            assert_eq!(err.kind(), HandshakeErrorKind::Response, "{err:?}");
            assert_eq!(err.status(), None, "{err:?}");
        }
    }
}
