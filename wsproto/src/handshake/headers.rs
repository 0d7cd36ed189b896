//! Header value grammars: token lists, subprotocols and extensions
//! (RFC 7230 §3.2.6, RFC 6455 §4.3, §9.1).

use crate::error::HandshakeError;

/// One entry of `Sec-WebSocket-Extensions`: a name and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    /// The extension token, e.g. `permessage-deflate`.
    pub name: String,
    /// Parameters in order; a value is `None` for a bare token
    /// (`client_max_window_bits`), unquoted otherwise.
    pub params: Vec<(String, Option<String>)>,
}

/// RFC 7230 §3.2.6 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

pub(crate) fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// Splits a `1#element` list on commas, trimming optional white space and
/// skipping empty elements (RFC 7230 §7).
pub(crate) fn split_list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|s| !s.is_empty())
}

pub(crate) fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &s[start..end]
}

/// True if the comma-separated token list contains `token` (ASCII case-insensitive).
pub(crate) fn list_contains(value: &[u8], token: &str) -> bool {
    split_list(value).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// Parses a `Sec-WebSocket-Protocol` value: a comma-separated list of tokens.
///
/// # Errors
///
/// [`HandshakeError::InvalidHeader`] if an element is not a token.
///
/// ```
/// use wsproto::handshake::parse_protocols;
/// assert_eq!(parse_protocols(b"chat, superchat").unwrap(), ["chat", "superchat"]);
/// assert!(parse_protocols(b"a b").is_err());
/// ```
pub fn parse_protocols(value: &[u8]) -> Result<Vec<String>, HandshakeError> {
    split_list(value)
        .map(|t| {
            if is_token(t) {
                Ok(String::from_utf8_lossy(t).into_owned())
            } else {
                Err(invalid("Sec-WebSocket-Protocol", value))
            }
        })
        .collect()
}

/// Parses a `Sec-WebSocket-Extensions` value (RFC 6455 §9.1):
/// `extension *( ";" param )` separated by commas, where a param is
/// `token [ "=" ( token | quoted-string ) ]`.
///
/// # Errors
///
/// [`HandshakeError::InvalidHeader`] for anything outside that grammar.
///
/// ```
/// use wsproto::handshake::parse_extensions;
/// let exts = parse_extensions(b"permessage-deflate; client_max_window_bits, x-foo; a=\"1\"").unwrap();
/// assert_eq!(exts[0].name, "permessage-deflate");
/// assert_eq!(exts[0].params, [("client_max_window_bits".to_string(), None)]);
/// assert_eq!(exts[1].params, [("a".to_string(), Some("1".to_string()))]);
/// ```
pub fn parse_extensions(value: &[u8]) -> Result<Vec<Extension>, HandshakeError> {
    let err = || invalid("Sec-WebSocket-Extensions", value);
    let mut out = Vec::new();
    let mut p = Cursor { s: value, i: 0 };
    loop {
        p.skip_ws();
        if p.eat(b',') {
            continue; // empty list element
        }
        if p.done() {
            break;
        }
        let name = p.token().ok_or_else(err)?;
        let mut params = Vec::new();
        loop {
            p.skip_ws();
            if !p.eat(b';') {
                break;
            }
            p.skip_ws();
            let key = p.token().ok_or_else(err)?;
            p.skip_ws();
            let val = if p.eat(b'=') {
                p.skip_ws();
                let v = if p.peek() == Some(b'"') {
                    p.quoted().ok_or_else(err)?
                } else {
                    p.token().ok_or_else(err)?
                };
                // RFC 6455 §9.1: a quoted value must itself be a token.
                if !is_token(v.as_bytes()) {
                    return Err(err());
                }
                Some(v)
            } else {
                None
            };
            params.push((key, val));
        }
        out.push(Extension { name, params });
        p.skip_ws();
        if !p.done() && !p.eat(b',') {
            return Err(err());
        }
    }
    Ok(out)
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn token(&mut self) -> Option<String> {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
    fn quoted(&mut self) -> Option<String> {
        self.eat(b'"').then_some(())?;
        let mut v = Vec::new();
        loop {
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(String::from_utf8_lossy(&v).into_owned());
                }
                b'\\' => {
                    self.i += 1;
                    v.push(self.peek()?);
                    self.i += 1;
                }
                b => {
                    v.push(b);
                    self.i += 1;
                }
            }
        }
    }
}

pub(crate) fn invalid(name: &'static str, value: &[u8]) -> HandshakeError {
    HandshakeError::InvalidHeader {
        name,
        value: lossy_prefix(value),
    }
}

/// What the peer sent, for an error: lossy UTF-8, at most 100 bytes, so an
/// error (and the log line or 4xx body made of it) stays short.
pub(crate) fn lossy_prefix(value: &[u8]) -> String {
    let mut value = String::from_utf8_lossy(&value[..value.len().min(100)]).into_owned();
    // Cutting at 100 may split a character, which then shows as U+FFFD.
    if value.len() > 100 {
        let mut end = 100;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        value.truncate(end);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_grammar() {
        assert_eq!(parse_extensions(b"").unwrap(), vec![]);
        assert_eq!(parse_extensions(b" , ").unwrap(), vec![]);
        let e = parse_extensions(
            b"permessage-deflate;client_max_window_bits=10;server_no_context_takeover",
        )
        .unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].params.len(), 2);
        assert_eq!(e[0].params[0].1.as_deref(), Some("10"));
        for bad in [
            &b"a;"[..],
            b";a",
            b"a b",
            b"a; b=",
            b"a; b=\"x y\"",
            b"a; b=\"unterminated",
            b"a=1",
        ] {
            assert!(
                parse_extensions(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn token_lists() {
        assert!(list_contains(b"keep-alive, Upgrade", "upgrade"));
        assert!(!list_contains(b"keep-alive, Upgraded", "upgrade"));
        assert_eq!(trim(b"  x \t"), b"x");
        assert_eq!(trim(b"   "), b"");
    }
}
