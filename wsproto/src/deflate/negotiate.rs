//! The permessage-deflate offer and answer (RFC 7692 §5, §7.1).

use super::{DeflateConfig, DeflateParams};
use crate::error::HandshakeError;
use crate::handshake::Extension;
use std::fmt::Write;

/// The extension token (RFC 7692 §7).
pub(crate) const PMD: &str = "permessage-deflate";

/// A server's acceptance of one permessage-deflate offer: what was agreed
/// and the `Sec-WebSocket-Extensions` value that says so. Only
/// [`Request::negotiate_deflate`](crate::handshake::Request::negotiate_deflate)
/// makes one, so the answer it puts in the 101 is always well-formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeflateAccept {
    pub(crate) params: DeflateParams,
    pub(crate) response: String,
}

impl DeflateAccept {
    /// What was agreed, from the server's side: for
    /// [`Connection::enable_deflate`](crate::Connection::enable_deflate).
    pub fn params(&self) -> &DeflateParams {
        &self.params
    }

    /// The value of the `Sec-WebSocket-Extensions` answer header.
    pub fn response(&self) -> &str {
        &self.response
    }
}

/// The parameters of one offer or answer, checked (RFC 7692 §7.1).
#[derive(Debug, Default)]
struct Params {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: present without a value (allowed in an offer only).
    client_max_window_bits: Option<Option<u8>>,
}

/// Checks an offer's (`answer == false`) or an answer's parameters: each
/// known, at most once, with a valid value (RFC 7692 §7.1: "A server MUST
/// decline an extension negotiation offer ... if ... contains an extension
/// parameter not defined for use in an offer, ... an extension parameter
/// with an invalid value, ... multiple extension parameters with the same
/// name"; §7.1 says the same of a client and an answer).
fn check_params(params: &[(String, Option<String>)], answer: bool) -> Result<Params, &'static str> {
    let mut p = Params::default();
    let mut seen = [false; 4];
    for (name, value) in params {
        let i = match name.as_str() {
            "server_no_context_takeover" => 0,
            "client_no_context_takeover" => 1,
            "server_max_window_bits" => 2,
            "client_max_window_bits" => 3,
            _ => return Err("unknown parameter"),
        };
        if std::mem::replace(&mut seen[i], true) {
            return Err("parameter repeated");
        }
        match i {
            0 | 1 => {
                if value.is_some() {
                    return Err("a no_context_takeover parameter takes no value");
                }
                if i == 0 {
                    p.server_no_context_takeover = true;
                } else {
                    p.client_no_context_takeover = true;
                }
            }
            2 => {
                // §7.1.2.1: server_max_window_bits always has a value.
                let bits = value.as_deref().and_then(window_bits);
                p.server_max_window_bits = Some(bits.ok_or("server_max_window_bits needs 8..=15")?);
            }
            _ => {
                // §7.1.2.2: a value is optional in an offer, required in an answer.
                p.client_max_window_bits = Some(match value {
                    None if answer => {
                        return Err("client_max_window_bits needs a value in an answer")
                    }
                    None => None,
                    Some(v) => Some(window_bits(v).ok_or("client_max_window_bits needs 8..=15")?),
                });
            }
        }
    }
    Ok(p)
}

/// A window size as RFC 7692 §7.1.2 writes it: a decimal 8..=15 without
/// leading zeros (so not `08`, `+9` or ` 9`).
fn window_bits(v: &str) -> Option<u8> {
    match v.as_bytes() {
        [d @ b'8'..=b'9'] => Some(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Some(10 + d - b'0'),
        _ => None,
    }
}

/// The server's choice (RFC 7692 §5.1): the first permessage-deflate offer
/// it can accept, in the client's order, and its answer. An offer with an
/// unknown, repeated or invalid parameter is declined and the next one
/// considered; `None` when none is acceptable (the connection then goes on
/// without compression).
///
/// Every well-formed offer is acceptable: a client asking
/// `server_max_window_bits=8` gets `8` back and uncompressed messages
/// (RSV1 is per message), rather than a 9 it did not allow or a
/// compressor that zlib cannot make.
pub(crate) fn negotiate(offers: &[Extension], config: &DeflateConfig) -> Option<DeflateAccept> {
    offers
        .iter()
        .filter(|e| e.name.eq_ignore_ascii_case(PMD))
        .find_map(|e| accept_one(check_params(&e.params, false).ok()?, config))
}

fn accept_one(offer: Params, config: &DeflateConfig) -> Option<DeflateAccept> {
    let mut response = String::from(PMD);
    // §7.1.1.1: an offered server_no_context_takeover must be answered; we
    // may also answer it unasked.
    let send_nct = offer.server_no_context_takeover || config.no_context_takeover;
    if send_nct {
        response.push_str("; server_no_context_takeover");
    }
    // §7.1.2.1: an offered server_max_window_bits is answered with a value
    // no larger; unasked, we may still announce a smaller window.
    let ours = config.window_bits.clamp(9, 15);
    let send_bits = offer.server_max_window_bits.map_or(ours, |n| n.min(ours));
    if offer.server_max_window_bits.is_some() || send_bits < 15 {
        let _ = write!(response, "; server_max_window_bits={send_bits}");
    }
    // §7.1.1.2: we may always ask the client not to keep context; a client
    // that offered the hint is held to it, so the decompressor resets.
    let recv_nct = config.request_peer_no_context_takeover || offer.client_no_context_takeover;
    if recv_nct {
        response.push_str("; client_no_context_takeover");
    }
    // §7.1.2.2: the client's window can be limited only if it offered
    // client_max_window_bits; its own value (a hint) bounds it anyway.
    let mut recv_bits = 15;
    if let Some(offered) = offer.client_max_window_bits {
        let offered = offered.unwrap_or(15);
        let want = config.peer_window_bits.clamp(8, 15);
        recv_bits = offered.min(want);
        if want < offered {
            let _ = write!(response, "; client_max_window_bits={recv_bits}");
        }
    }
    Some(DeflateAccept {
        params: DeflateParams {
            send_window_bits: send_bits,
            send_no_context_takeover: send_nct,
            recv_window_bits: recv_bits,
            recv_no_context_takeover: recv_nct,
            level: config.level.clamp(1, 9),
            min_size: config.min_size,
        },
        response,
    })
}

/// The `Sec-WebSocket-Extensions` value a client offers for `config`.
///
/// `client_max_window_bits` is always offered (bare when our window is 15):
/// it lets the server limit our window, which we can honour with any size
/// (8 by not compressing).
///
/// ```
/// use wsproto::deflate::{offer_header, DeflateConfig};
/// assert_eq!(offer_header(&DeflateConfig::default()), "permessage-deflate; client_max_window_bits");
/// let c = DeflateConfig::default().no_context_takeover(true).peer_window_bits(10);
/// assert_eq!(
///     offer_header(&c),
///     "permessage-deflate; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits"
/// );
/// ```
pub fn offer_header(config: &DeflateConfig) -> String {
    let mut s = String::from(PMD);
    if config.no_context_takeover {
        s.push_str("; client_no_context_takeover");
    }
    if config.request_peer_no_context_takeover {
        s.push_str("; server_no_context_takeover");
    }
    let peer = config.peer_window_bits.clamp(8, 15);
    if peer < 15 {
        let _ = write!(s, "; server_max_window_bits={peer}");
    }
    s.push_str("; client_max_window_bits");
    let ours = config.window_bits.clamp(9, 15);
    if ours < 15 {
        let _ = write!(s, "={ours}");
    }
    s
}

/// Checks a server's extension answer against what a client offered
/// (`offered`, `None` if nothing was) and returns what was agreed.
///
/// # Errors
///
/// [`HandshakeError::NotOffered`] for an extension other than
/// permessage-deflate, or for permessage-deflate when it was not offered;
/// [`HandshakeError::DeflateAnswer`] for an answer the client must fail the
/// connection on (RFC 7692 §7.1: an unknown, repeated or invalid parameter,
/// permessage-deflate accepted twice, a window larger than asked, or a
/// `server_no_context_takeover` asked for and not granted).
///
/// ```
/// use wsproto::deflate::{parse_answer, DeflateConfig};
/// use wsproto::handshake::parse_extensions;
/// let offer = DeflateConfig::default();
/// let answer = parse_extensions(b"permessage-deflate; server_no_context_takeover; client_max_window_bits=9")?;
/// let p = parse_answer(&answer, Some(&offer))?.unwrap();
/// assert!(p.recv_no_context_takeover);
/// assert_eq!(p.send_window_bits, 9);
/// let bad = parse_extensions(b"permessage-deflate; server_max_window_bits=16")?;
/// assert!(parse_answer(&bad, Some(&offer)).is_err());
/// # Ok::<(), wsproto::HandshakeError>(())
/// ```
pub fn parse_answer(
    extensions: &[Extension],
    offered: Option<&DeflateConfig>,
) -> Result<Option<DeflateParams>, HandshakeError> {
    let mut agreed = None;
    for ext in extensions {
        let Some(config) = offered.filter(|_| ext.name.eq_ignore_ascii_case(PMD)) else {
            return Err(HandshakeError::NotOffered(ext.name.clone()));
        };
        let fail = |why| HandshakeError::DeflateAnswer {
            why,
            value: crate::handshake::lossy_prefix(display(ext).as_bytes()),
        };
        if agreed.is_some() {
            return Err(fail("permessage-deflate accepted twice"));
        }
        let a = check_params(&ext.params, true).map_err(fail)?;
        let peer = config.peer_window_bits.clamp(8, 15);
        if config.request_peer_no_context_takeover && !a.server_no_context_takeover {
            return Err(fail(
                "server_no_context_takeover was asked for and not granted",
            ));
        }
        // §7.1.2.1: a server that accepts server_max_window_bits=N answers
        // it with a value no larger than N.
        let recv_bits = match a.server_max_window_bits {
            Some(n) if n > peer => return Err(fail("server_max_window_bits larger than asked")),
            None if peer < 15 => {
                return Err(fail(
                    "server_max_window_bits was asked for and not answered",
                ))
            }
            n => n.unwrap_or(15),
        };
        let ours = config.window_bits.clamp(9, 15);
        let send_bits = match a.client_max_window_bits {
            Some(Some(n)) if ours < 15 && n > ours => {
                return Err(fail("client_max_window_bits larger than offered"))
            }
            Some(Some(n)) => n.min(ours),
            _ => ours,
        };
        agreed = Some(DeflateParams {
            send_window_bits: send_bits,
            send_no_context_takeover: config.no_context_takeover || a.client_no_context_takeover,
            recv_window_bits: recv_bits,
            recv_no_context_takeover: a.server_no_context_takeover,
            level: config.level.clamp(1, 9),
            min_size: config.min_size,
        });
    }
    Ok(agreed)
}

fn display(ext: &Extension) -> String {
    let mut s = ext.name.clone();
    for (k, v) in &ext.params {
        let _ = match v {
            Some(v) => write!(s, "; {k}={v}"),
            None => write!(s, "; {k}"),
        };
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::parse_extensions;

    fn server(offer: &str, config: &DeflateConfig) -> Option<String> {
        negotiate(&parse_extensions(offer.as_bytes()).unwrap(), config).map(|a| a.response)
    }

    /// RFC 7692 §5-7 as a table: offers → the server's answer.
    #[test]
    fn server_answers_table() {
        let d = DeflateConfig::default();
        let lean = DeflateConfig::default()
            .no_context_takeover(true)
            .request_peer_no_context_takeover(true);
        let small = DeflateConfig::default().window_bits(10).peer_window_bits(9);
        let table: &[(&str, &DeflateConfig, Option<&str>)] = &[
            ("permessage-deflate", &d, Some("permessage-deflate")),
            (
                "permessage-deflate; client_max_window_bits",
                &d,
                Some("permessage-deflate"),
            ),
            (
                "permessage-deflate; server_no_context_takeover",
                &d,
                Some("permessage-deflate; server_no_context_takeover"),
            ),
            (
                "permessage-deflate; client_no_context_takeover",
                &d,
                Some("permessage-deflate; client_no_context_takeover"),
            ),
            (
                "permessage-deflate; server_max_window_bits=10",
                &d,
                Some("permessage-deflate; server_max_window_bits=10"),
            ),
            // The 8-bit trap: answered 8 (never 9), and we send uncompressed.
            (
                "permessage-deflate; server_max_window_bits=8",
                &d,
                Some("permessage-deflate; server_max_window_bits=8"),
            ),
            (
                "permessage-deflate; server_max_window_bits=\"12\"",
                &d,
                Some("permessage-deflate; server_max_window_bits=12"),
            ),
            (
                "permessage-deflate; client_max_window_bits",
                &small,
                Some("permessage-deflate; server_max_window_bits=10; client_max_window_bits=9"),
            ),
            (
                "permessage-deflate; client_max_window_bits=8",
                &small,
                Some("permessage-deflate; server_max_window_bits=10"),
            ),
            // A client that cannot be limited is accepted with its 15.
            (
                "permessage-deflate",
                &small,
                Some("permessage-deflate; server_max_window_bits=10"),
            ),
            (
                "permessage-deflate",
                &lean,
                Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
            ),
            // Malformed offers are declined; the next one is considered.
            ("permessage-deflate; server_max_window_bits", &d, None),
            ("permessage-deflate; server_max_window_bits=7", &d, None),
            ("permessage-deflate; server_max_window_bits=16", &d, None),
            ("permessage-deflate; server_max_window_bits=010", &d, None),
            ("permessage-deflate; client_max_window_bits=0", &d, None),
            ("permessage-deflate; server_no_context_takeover=1", &d, None),
            (
                "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
                &d,
                None,
            ),
            (
                "permessage-deflate; client_max_window_bits; client_max_window_bits=9",
                &d,
                None,
            ),
            ("permessage-deflate; x_foo", &d, None),
            ("x-webkit-deflate-frame", &d, None),
            (
                "permessage-deflate; x, permessage-deflate; server_max_window_bits=16, permessage-deflate; client_no_context_takeover",
                &d,
                Some("permessage-deflate; client_no_context_takeover"),
            ),
            (
                "foo, permessage-deflate; server_max_window_bits=9, permessage-deflate",
                &d,
                Some("permessage-deflate; server_max_window_bits=9"),
            ),
        ];
        for (offer, config, want) in table {
            assert_eq!(server(offer, config).as_deref(), *want, "offer {offer:?}");
        }
    }

    #[test]
    fn server_params_follow_the_answer() {
        let offers = parse_extensions(
            b"permessage-deflate; server_max_window_bits=8; client_max_window_bits=11; client_no_context_takeover",
        )
        .unwrap();
        let a = negotiate(&offers, &DeflateConfig::default()).unwrap();
        assert_eq!(a.params.send_window_bits, 8);
        assert!(!a.params.compresses());
        assert_eq!(a.params.recv_window_bits, 11);
        assert!(a.params.recv_no_context_takeover);
        assert!(!a.params.send_no_context_takeover);
    }

    fn client(
        answer: &str,
        config: &DeflateConfig,
    ) -> Result<Option<DeflateParams>, HandshakeError> {
        parse_answer(&parse_extensions(answer.as_bytes()).unwrap(), Some(config))
    }

    #[test]
    fn client_checks_answers_table() {
        let d = DeflateConfig::default();
        let asks = DeflateConfig::default()
            .request_peer_no_context_takeover(true)
            .peer_window_bits(10)
            .window_bits(12);
        // (send bits, send no takeover, receive bits, receive no takeover)
        type Agreed = (u8, bool, u8, bool);
        let ok: &[(&str, &DeflateConfig, Agreed)] = &[
            ("permessage-deflate", &d, (15, false, 15, false)),
            (
                "permessage-deflate; server_no_context_takeover",
                &d,
                (15, false, 15, true),
            ),
            (
                "permessage-deflate; client_no_context_takeover",
                &d,
                (15, true, 15, false),
            ),
            (
                "permessage-deflate; client_max_window_bits=8",
                &d,
                (8, false, 15, false),
            ),
            (
                "permessage-deflate; server_max_window_bits=9",
                &d,
                (15, false, 9, false),
            ),
            (
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=10",
                &asks,
                (12, false, 10, true),
            ),
            (
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=8; client_max_window_bits=9",
                &asks,
                (9, false, 8, true),
            ),
        ];
        for (answer, config, want) in ok {
            let p = client(answer, config).unwrap().unwrap();
            let got = (
                p.send_window_bits,
                p.send_no_context_takeover,
                p.recv_window_bits,
                p.recv_no_context_takeover,
            );
            assert_eq!(got, *want, "answer {answer:?}");
        }
        let bad: &[(&str, &DeflateConfig)] = &[
            ("permessage-deflate; client_max_window_bits", &d),
            ("permessage-deflate; server_max_window_bits", &d),
            ("permessage-deflate; server_max_window_bits=16", &d),
            ("permessage-deflate; client_max_window_bits=08", &d),
            ("permessage-deflate; x", &d),
            ("permessage-deflate; server_no_context_takeover=x", &d),
            (
                "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
                &d,
            ),
            ("permessage-deflate, permessage-deflate", &d),
            // Asked for and not granted, or granted larger than asked.
            ("permessage-deflate; server_max_window_bits=10", &asks),
            (
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=11",
                &asks,
            ),
            (
                "permessage-deflate; server_no_context_takeover",
                &asks,
            ),
            (
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=10; client_max_window_bits=13",
                &asks,
            ),
        ];
        for (answer, config) in bad {
            assert!(
                matches!(
                    client(answer, config),
                    Err(HandshakeError::DeflateAnswer { .. })
                ),
                "answer {answer:?}"
            );
        }
        let other = parse_extensions(b"x-foo").unwrap();
        assert!(matches!(
            parse_answer(&other, Some(&d)),
            Err(HandshakeError::NotOffered(_))
        ));
        let pmd = parse_extensions(b"permessage-deflate").unwrap();
        assert!(matches!(
            parse_answer(&pmd, None),
            Err(HandshakeError::NotOffered(_))
        ));
        assert_eq!(parse_answer(&[], Some(&d)), Ok(None));
    }

    /// Whatever a server of ours answers, a client of ours accepts, and
    /// they agree on both directions.
    #[test]
    fn our_offer_and_answer_agree() {
        let configs = [
            DeflateConfig::default(),
            DeflateConfig::default().no_context_takeover(true),
            DeflateConfig::default().request_peer_no_context_takeover(true),
            DeflateConfig::default().window_bits(9).peer_window_bits(8),
            DeflateConfig::default()
                .window_bits(12)
                .peer_window_bits(10),
        ];
        for c in &configs {
            for s in &configs {
                let offers = parse_extensions(offer_header(c).as_bytes()).unwrap();
                let a = negotiate(&offers, s).unwrap();
                let answer = parse_extensions(a.response.as_bytes()).unwrap();
                let p = parse_answer(&answer, Some(c)).unwrap().unwrap();
                assert_eq!(p.send_window_bits, a.params.recv_window_bits, "{c:?} {s:?}");
                assert_eq!(p.recv_window_bits, a.params.send_window_bits, "{c:?} {s:?}");
                assert!(
                    !p.send_no_context_takeover
                        || a.params.recv_no_context_takeover
                        || c.no_context_takeover
                );
                assert_eq!(
                    p.recv_no_context_takeover,
                    a.params.send_no_context_takeover
                );
            }
        }
    }
}
