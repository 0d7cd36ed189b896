//! Which web pages may open a WebSocket: the `Origin` check
//! (RFC 6455 §4.2.1 item 8 and §10.2, RFC 6454).
//!
//! A browser lets any page open a WebSocket to any host, with the user's
//! cookies and from the user's network (a server bound to 127.0.0.1
//! included), and it does not apply the same-origin policy to the answer.
//! The `Origin` header, which a page cannot forge, is the only way a server
//! tells its own page from another site's (cross-site WebSocket hijacking).

use super::headers::lossy_prefix;
use crate::error::HandshakeError;

/// The `Origin`s a server accepts an upgrade from; set it with
/// [`Config::origin_policy`](crate::Config::origin_policy).
///
/// - A request with **no `Origin`** is accepted: browsers always send one,
///   so its absence means a non-browser client, which could send any
///   `Origin` it liked anyway.
/// - **Same host** (the default, as in gorilla/websocket): accepted when the
///   `Origin`'s host and port equal those of the request's `Host` (or of an
///   absolute-form target, RFC 7230 §5.4). The scheme is ignored and hosts
///   are compared ASCII case-insensitively; an absent port equals 80 or
///   443, so `Origin: https://chat.example` matches `Host: chat.example`
///   behind a TLS-terminating proxy.
/// - An **allow-list** ([`allow`](Self::allow)): an `Origin` equal to a
///   listed `scheme://host[:port]` (case-insensitive, default ports filled
///   in) is accepted as well.
/// - **Any** (`*`): every `Origin` is accepted, `null` included.
/// - Otherwise, `Origin: null` (sent by sandboxed frames, `file:` pages and
///   some redirects, whatever their site) and an `Origin` that is not
///   `scheme://host[:port]` are refused.
///
/// A refusal is [`HandshakeError::OriginRefused`], answered 403.
///
/// Same host is the default because a server on a developer's machine or a
/// LAN is reachable from every page its users open: accepting any origin by
/// default would let every web site read and write through it. A server
/// that wants other pages (or none of this) says so explicitly.
///
/// ```
/// use wsproto::handshake::OriginPolicy;
/// let policy = OriginPolicy::same_host().allow("https://app.example.com")?;
/// assert!(policy.check(None, "127.0.0.1:8080").is_ok()); // not a browser
/// assert!(policy.check(Some("http://127.0.0.1:8080"), "127.0.0.1:8080").is_ok());
/// assert!(policy.check(Some("https://chat.example"), "Chat.Example:443").is_ok());
/// assert!(policy.check(Some("https://app.example.com"), "127.0.0.1:8080").is_ok());
/// let refused = policy.check(Some("http://evil.example"), "127.0.0.1:8080").unwrap_err();
/// assert_eq!(refused.status(), Some(403));
/// assert!(policy.check(Some("null"), "127.0.0.1:8080").is_err());
/// assert!(OriginPolicy::any().check(Some("null"), "127.0.0.1:8080").is_ok());
/// # Ok::<(), wsproto::HandshakeError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    any: bool,
    allowed: Vec<Site>,
}

/// A parsed `scheme://host[:port]`, scheme and host lowercase.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Site {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Site {
    /// The port, or the scheme's default one.
    fn effective_port(&self) -> Option<u16> {
        self.port.or(match self.scheme.as_str() {
            "http" | "ws" => Some(80),
            "https" | "wss" => Some(443),
            _ => None,
        })
    }

    fn same_site(&self, other: &Site) -> bool {
        self.scheme == other.scheme
            && self.host == other.host
            && self.effective_port() == other.effective_port()
    }
}

impl OriginPolicy {
    /// Accepts requests without `Origin` and those whose `Origin` names the
    /// request's own host and port (the default).
    pub fn same_host() -> Self {
        Self::default()
    }

    /// Accepts every request, whatever its `Origin` (`null` included): for
    /// a server meant to be used from any site, which then must not rely on
    /// the browser's cookies or network position for authority.
    pub fn any() -> Self {
        Self {
            any: true,
            allowed: Vec::new(),
        }
    }

    /// Also accepts `origin`: `scheme://host[:port]` as a browser sends it
    /// (a single trailing `/` is tolerated), or `*` for any origin.
    ///
    /// # Errors
    ///
    /// [`HandshakeError::InvalidUrl`] for anything else: a missing scheme, a
    /// path, user information, a bad port, or `null` (which every sandboxed
    /// page sends whatever its site; allow `*` if that is really meant).
    ///
    /// ```
    /// use wsproto::handshake::OriginPolicy;
    /// assert!(OriginPolicy::same_host().allow("http://localhost:3000").is_ok());
    /// assert!(OriginPolicy::same_host().allow("localhost:3000").is_err());
    /// assert!(OriginPolicy::same_host().allow("null").is_err());
    /// ```
    pub fn allow(mut self, origin: &str) -> Result<Self, HandshakeError> {
        let bad = |why| HandshakeError::InvalidUrl {
            url: origin.to_owned(),
            why,
        };
        if origin == "*" {
            self.any = true;
            return Ok(self);
        }
        if origin.eq_ignore_ascii_case("null") {
            return Err(bad(
                "null is the origin of any sandboxed or file: page; use * to allow every origin",
            ));
        }
        let (site, rest) =
            parse_origin(origin).ok_or_else(|| bad("an origin is scheme://host[:port]"))?;
        if !(rest.is_empty() || rest == "/") {
            return Err(bad("an origin has no path, query or fragment"));
        }
        if !self.allowed.contains(&site) {
            self.allowed.push(site);
        }
        Ok(self)
    }

    /// True if every origin is accepted (`*`).
    pub fn allows_any(&self) -> bool {
        self.any
    }

    /// Checks a request's `Origin` (if any) against the policy; `host` is
    /// the request's `Host` (or the authority of an absolute-form target).
    ///
    /// # Errors
    ///
    /// [`HandshakeError::OriginRefused`] (status 403) with the origin sent.
    pub fn check(&self, origin: Option<&str>, host: &str) -> Result<(), HandshakeError> {
        let Some(origin) = origin else {
            return Ok(());
        };
        if self.any || self.accepts(origin, host) {
            return Ok(());
        }
        Err(HandshakeError::OriginRefused {
            origin: lossy_prefix(origin.as_bytes()),
        })
    }

    fn accepts(&self, origin: &str, host: &str) -> bool {
        // "null" fails to parse, so it is refused here (RFC 6454 §7.3).
        let Some((site, _)) = parse_origin(origin) else {
            return false;
        };
        let same_host = split_host_port(host).is_some_and(|(h, port)| {
            h.eq_ignore_ascii_case(&site.host) && ports_match(site.port, port)
        });
        same_host || self.allowed.iter().any(|a| a.same_site(&site))
    }
}

/// Ports equal, where an absent port stands for either web default: the
/// scheme is ignored, so the browser's view (`https://x`) and the server's
/// (`Host: x` from a TLS-terminating proxy, or `x:443`) must both match.
fn ports_match(a: Option<u16>, b: Option<u16>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        (None, None) => true,
        (None, Some(p)) | (Some(p), None) => p == 80 || p == 443,
    }
}

/// Parses `scheme://authority[rest]` (RFC 6454 §6.1 serialization; `rest`
/// is whatever follows the authority). `None` when it is not one, `null`
/// included.
fn parse_origin(value: &str) -> Option<(Site, &str)> {
    let (scheme, after) = value.split_once("://")?;
    let mut chars = scheme.chars();
    // RFC 3986 §3.1: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ).
    if !chars.next()?.is_ascii_alphabetic()
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return None;
    }
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    let (host, port) = split_host_port(authority)?;
    Some((
        Site {
            scheme: scheme.to_ascii_lowercase(),
            host: host.to_ascii_lowercase(),
            port,
        },
        rest,
    ))
}

/// Splits `host[:port]` (RFC 3986 §3.2.2-3; an IPv6 host in brackets,
/// brackets kept). `None` for user information, an empty host, a character
/// no host may hold, or a port that is not a number up to 65535. An empty
/// port (`host:`) counts as absent, as RFC 3986 §6.2.3 says.
pub(crate) fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        let close = authority.find(']')?;
        let (host, after) = authority.split_at(close + 1);
        let ip = &host[1..host.len() - 1];
        if ip.is_empty()
            || !ip
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        let port = match after {
            "" => "",
            p => p.strip_prefix(':')?,
        };
        (host, port)
    } else {
        let (host, port) = authority.split_once(':').unwrap_or((authority, ""));
        if host.is_empty() || !host.bytes().all(is_reg_name_byte) {
            return None;
        }
        (host, port)
    };
    let port = match port {
        "" => None,
        p if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        _ => return None,
    };
    Some((host, port))
}

/// RFC 3986 §3.2.2 reg-name: unreserved, pct-encoded (the `%` and its hex
/// digits) and sub-delims. An IPv4 address is a reg-name as well.
pub(crate) fn is_reg_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (origin, host, accepted by the default same-host policy)
    const SAME_HOST: &[(&str, &str, bool)] = &[
        ("http://127.0.0.1:8080", "127.0.0.1:8080", true),
        ("https://127.0.0.1:8080", "127.0.0.1:8080", true), // scheme ignored
        ("http://LOCALHOST:8080", "localhost:8080", true),  // case
        ("http://localhost:8080", "LocalHost:8080", true),
        ("https://chat.example", "chat.example", true), // TLS proxy
        ("https://chat.example", "chat.example:443", true),
        ("http://chat.example", "chat.example:80", true),
        ("http://chat.example:80", "chat.example", true),
        ("https://chat.example:443", "chat.example", true),
        ("http://chat.example/", "chat.example", true), // a stray path is ignored
        ("http://[::1]:8080", "[::1]:8080", true),
        ("http://[::1]", "[::1]", true),
        ("http://[::1]:8080", "[::1]:8081", false),
        ("http://[::1]:8080", "[::2]:8080", false),
        ("http://127.0.0.1:8081", "127.0.0.1:8080", false), // port
        ("http://127.0.0.1", "127.0.0.1:8080", false),
        ("http://127.0.0.1:8080", "127.0.0.1", false),
        ("http://chat.example:8443", "chat.example", false),
        ("http://evil.example", "127.0.0.1:8080", false),
        (
            "http://127.0.0.1.evil.example:8080",
            "127.0.0.1:8080",
            false,
        ),
        (
            "http://evil.example#127.0.0.1:8080",
            "127.0.0.1:8080",
            false,
        ),
        (
            "http://127.0.0.1:8080@evil.example",
            "127.0.0.1:8080",
            false,
        ),
        ("null", "127.0.0.1:8080", false),
        ("NULL", "null", false),
        ("", "127.0.0.1:8080", false),
        ("127.0.0.1:8080", "127.0.0.1:8080", false), // no scheme
        ("http://", "", false),
        ("http://a b", "a b", false),
        ("http://x:99999", "x:99999", false),
        ("http://x:+80", "x:+80", false),
        ("http://a\r\nb", "a\r\nb", false),
    ];

    #[test]
    fn same_host_table() {
        let policy = OriginPolicy::default();
        for &(origin, host, ok) in SAME_HOST {
            let got = policy.check(Some(origin), host);
            assert_eq!(got.is_ok(), ok, "{origin:?} vs Host {host:?}");
            if let Err(e) = got {
                assert_eq!(
                    e,
                    HandshakeError::OriginRefused {
                        origin: origin.into()
                    }
                );
            }
        }
        assert!(
            policy.check(None, "anything").is_ok(),
            "no Origin: not a browser"
        );
        assert!(policy.check(None, "").is_ok());
    }

    #[test]
    fn allow_list_table() {
        let policy = OriginPolicy::same_host()
            .allow("https://App.Example.com")
            .unwrap()
            .allow("http://localhost:3000/")
            .unwrap();
        for (origin, ok) in [
            ("https://app.example.com", true),
            ("HTTPS://APP.EXAMPLE.COM", true),
            ("https://app.example.com:443", true),
            ("http://app.example.com", false), // scheme matters in the list
            ("https://app.example.com:8443", false),
            ("http://localhost:3000", true),
            ("http://localhost:3001", false),
            ("http://127.0.0.1:9000", true), // still same-host
            ("http://evil.example", false),
            ("null", false),
        ] {
            assert_eq!(
                policy.check(Some(origin), "127.0.0.1:9000").is_ok(),
                ok,
                "{origin}"
            );
        }
    }

    #[test]
    fn any_allows_everything() {
        let star = OriginPolicy::same_host().allow("*").unwrap();
        assert!(star.allows_any());
        assert_eq!(star, OriginPolicy::any());
        for origin in ["null", "http://evil.example", "garbage", ""] {
            assert!(
                star.check(Some(origin), "127.0.0.1:8080").is_ok(),
                "{origin}"
            );
        }
    }

    #[test]
    fn allow_refuses_what_is_not_an_origin() {
        for bad in [
            "null",
            "localhost:3000",
            "http://",
            "http://x/path",
            "http://x?q",
            "http://u@x",
            "http://x:70000",
            "http://[::1",
            "1http://x",
        ] {
            assert!(
                matches!(
                    OriginPolicy::same_host().allow(bad),
                    Err(HandshakeError::InvalidUrl { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn refusal_keeps_a_bounded_origin() {
        let long = format!("http://{}", "é".repeat(200));
        let Err(HandshakeError::OriginRefused { origin }) =
            OriginPolicy::same_host().check(Some(&long), "x")
        else {
            panic!()
        };
        assert!(origin.len() <= 100, "{origin}");
        assert!(origin.starts_with("http://éé"));
    }

    #[test]
    fn host_port_grammar() {
        assert_eq!(split_host_port("a:1"), Some(("a", Some(1))));
        assert_eq!(split_host_port("a:"), Some(("a", None)));
        assert_eq!(split_host_port("[::1]:80"), Some(("[::1]", Some(80))));
        assert_eq!(split_host_port("[::1]"), Some(("[::1]", None)));
        assert_eq!(split_host_port("[::1]:"), Some(("[::1]", None)));
        for bad in [
            "", ":80", "[::1]x", "[]", "[x]", "a:b", "::1", "a:1:2", "a b", "u@h",
        ] {
            assert_eq!(split_host_port(bad), None, "{bad:?}");
        }
    }
}
