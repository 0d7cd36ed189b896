//! Close codes and the Close frame payload (RFC 6455 §5.5.1, §7.4).

use crate::error::ProtocolError;
use std::fmt;

/// A close status code.
///
/// Codes that may appear on the wire are built with [`CloseCode::try_from`],
/// which follows RFC 6455 §7.4 and the IANA "WebSocket Close Code Number"
/// registry: 1000-1003 and 1007-1014 are defined, 3000-4999 are for
/// libraries, frameworks and applications; everything else (0-999, 1004-1006,
/// 1015, 1016-2999, 5000+) is refused. [`NO_STATUS`](Self::NO_STATUS) and
/// [`ABNORMAL`](Self::ABNORMAL) exist only to *report* a close that carried no
/// code or never happened; they can never be sent.
///
/// ```
/// use wsproto::CloseCode;
/// assert_eq!(CloseCode::try_from(1000), Ok(CloseCode::NORMAL));
/// assert!(CloseCode::try_from(1005).is_err()); // reserved: never on the wire
/// assert!(CloseCode::try_from(4000).is_ok());  // application range
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(u16);

impl CloseCode {
    /// 1000: the purpose of the connection has been fulfilled.
    pub const NORMAL: Self = Self(1000);
    /// 1001: the endpoint is going away (server shutdown, page navigation).
    pub const GOING_AWAY: Self = Self(1001);
    /// 1002: the peer violated the protocol.
    pub const PROTOCOL_ERROR: Self = Self(1002);
    /// 1003: the endpoint received a type of data it cannot accept.
    pub const UNSUPPORTED_DATA: Self = Self(1003);
    /// 1005: reported when a Close frame carried no status code. Never sent.
    pub const NO_STATUS: Self = Self(1005);
    /// 1006: reported when the connection closed without a Close frame. Never sent.
    pub const ABNORMAL: Self = Self(1006);
    /// 1007: a message's data was inconsistent with its type (invalid UTF-8).
    pub const INVALID_PAYLOAD: Self = Self(1007);
    /// 1008: a message violated the endpoint's policy.
    pub const POLICY_VIOLATION: Self = Self(1008);
    /// 1009: a message was too big to process.
    pub const MESSAGE_TOO_BIG: Self = Self(1009);
    /// 1010: the client expected the server to negotiate an extension.
    pub const MANDATORY_EXTENSION: Self = Self(1010);
    /// 1011: the server hit an unexpected condition.
    pub const INTERNAL_ERROR: Self = Self(1011);
    /// 1012: the service is restarting.
    pub const SERVICE_RESTART: Self = Self(1012);
    /// 1013: try again later (temporary overload).
    pub const TRY_AGAIN_LATER: Self = Self(1013);
    /// 1014: a gateway received an invalid response upstream.
    pub const BAD_GATEWAY: Self = Self(1014);

    /// The numeric value.
    pub const fn as_u16(self) -> u16 {
        self.0
    }

    /// True if this code may be sent in a Close frame (false only for
    /// [`NO_STATUS`](Self::NO_STATUS) and [`ABNORMAL`](Self::ABNORMAL)).
    pub const fn is_sendable(self) -> bool {
        is_valid_on_wire(self.0)
    }
}

/// RFC 6455 §7.4.1/§7.4.2 and the IANA registry: which codes may be on the wire.
const fn is_valid_on_wire(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The code is not one a peer may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("close code {0} is not valid on the wire (RFC 6455 §7.4)")]
pub struct InvalidCloseCode(pub u16);

impl TryFrom<u16> for CloseCode {
    type Error = InvalidCloseCode;

    fn try_from(code: u16) -> Result<Self, Self::Error> {
        if is_valid_on_wire(code) {
            Ok(Self(code))
        } else {
            Err(InvalidCloseCode(code))
        }
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> u16 {
        code.0
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The status code and reason of a close, as received (or as reported for a
/// connection that ended without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code; [`CloseCode::NO_STATUS`] if the frame had no payload,
    /// [`CloseCode::ABNORMAL`] if the transport ended without a Close frame.
    pub code: CloseCode,
    /// The reason, possibly empty.
    pub reason: String,
}

/// Longest reason that fits a control frame: 125 bytes minus the 2-byte code.
pub const MAX_REASON_LEN: usize = 123;

/// Parses a Close frame payload (RFC 6455 §5.5.1): empty, or a 2-byte code
/// followed by a UTF-8 reason.
///
/// # Errors
///
/// [`ProtocolError::CloseTooShort`] for a 1-byte payload,
/// [`ProtocolError::InvalidCloseCode`] for a code not valid on the wire,
/// [`ProtocolError::InvalidCloseReason`] for a reason that is not UTF-8.
///
/// ```
/// use wsproto::close::parse_close_payload;
/// use wsproto::CloseCode;
/// let frame = parse_close_payload(b"\x03\xe8bye").unwrap();
/// assert_eq!((frame.code, frame.reason.as_str()), (CloseCode::NORMAL, "bye"));
/// assert_eq!(parse_close_payload(b"").unwrap().code, CloseCode::NO_STATUS);
/// ```
pub fn parse_close_payload(payload: &[u8]) -> Result<CloseFrame, ProtocolError> {
    match payload {
        [] => Ok(CloseFrame {
            code: CloseCode::NO_STATUS,
            reason: String::new(),
        }),
        [_] => Err(ProtocolError::CloseTooShort),
        [hi, lo, reason @ ..] => {
            let raw = u16::from_be_bytes([*hi, *lo]);
            let code =
                CloseCode::try_from(raw).map_err(|_| ProtocolError::InvalidCloseCode(raw))?;
            // RFC 6455 §5.5.1: the reason is UTF-8 text.
            let reason = std::str::from_utf8(reason)
                .map_err(|e| ProtocolError::InvalidCloseReason {
                    offset: e.valid_up_to(),
                })?
                .to_owned();
            Ok(CloseFrame { code, reason })
        }
    }
}

/// Encodes a whole Close frame (RFC 6455 §5.5.1) with `code` and `reason`:
/// unmasked when `mask` is `None` (a server's frame, §5.1), masked with the
/// given key otherwise. The reason is cut to [`MAX_REASON_LEN`] bytes on a
/// character boundary, so any `&str` makes a valid frame. For I/O layers that
/// queue pre-framed bytes (a fan-out server) and must not re-encode a Close
/// by hand.
///
/// # Panics
///
/// If `code` is not sendable (1005, 1006: RFC 6455 §7.4.1 reserves them
/// for reports, never for the wire): a caller bug, not peer input.
///
/// ```
/// use wsproto::close::encode_close_frame;
/// use wsproto::CloseCode;
/// let frame = encode_close_frame(CloseCode::POLICY_VIOLATION, "slow", None);
/// assert_eq!(&frame[..], b"\x88\x06\x03\xf0slow");
/// ```
pub fn encode_close_frame(code: CloseCode, reason: &str, mask: Option<[u8; 4]>) -> bytes::Bytes {
    assert!(code.is_sendable(), "close code {code} is never sent");
    let reason = truncate_reason(reason);
    let mut payload = [0; 125];
    let n = encode_close_payload(&mut payload, code, reason);
    let mut out = bytes::BytesMut::with_capacity(n + crate::frame::MAX_HEADER_LEN);
    crate::frame::encode_frame(
        &mut out,
        true,
        crate::frame::Opcode::Close,
        &payload[..n],
        mask,
    );
    out.freeze()
}

/// Appends a Close payload (code, then reason) to `dst`.
/// The caller has checked the code is sendable and the reason fits.
pub(crate) fn encode_close_payload(dst: &mut [u8; 125], code: CloseCode, reason: &str) -> usize {
    dst[..2].copy_from_slice(&code.as_u16().to_be_bytes());
    dst[2..2 + reason.len()].copy_from_slice(reason.as_bytes());
    2 + reason.len()
}

/// Truncates `reason` to at most [`MAX_REASON_LEN`] bytes on a char boundary.
pub(crate) fn truncate_reason(reason: &str) -> &str {
    if reason.len() <= MAX_REASON_LEN {
        return reason;
    }
    let mut end = MAX_REASON_LEN;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_from_0_to_5000() {
        for code in 0u16..=5000 {
            let expected = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            assert_eq!(CloseCode::try_from(code).is_ok(), expected, "code {code}");
            let payload = code.to_be_bytes();
            assert_eq!(
                parse_close_payload(&payload).is_ok(),
                expected,
                "payload {code}"
            );
            if !expected {
                assert_eq!(
                    parse_close_payload(&payload),
                    Err(ProtocolError::InvalidCloseCode(code))
                );
            }
        }
        for reserved in [1004, 1005, 1006, 1015, 1016, 2999, 5000, u16::MAX] {
            assert!(CloseCode::try_from(reserved).is_err(), "{reserved}");
        }
    }

    #[test]
    fn payload_forms() {
        assert_eq!(parse_close_payload(&[3]), Err(ProtocolError::CloseTooShort));
        assert_eq!(
            parse_close_payload(b"\x03\xe8\xff"),
            Err(ProtocolError::InvalidCloseReason { offset: 0 })
        );
        let f = parse_close_payload(b"\x0f\xa0h\xc3\xa9").unwrap();
        assert_eq!(f.code.as_u16(), 4000);
        assert_eq!(f.reason, "hé");
    }

    #[test]
    fn truncation_keeps_char_boundaries() {
        let long = "é".repeat(100); // 200 bytes
        let t = truncate_reason(&long);
        assert!(t.len() <= MAX_REASON_LEN && t.len() == 122);
        assert!(!CloseCode::NO_STATUS.is_sendable());
        assert!(CloseCode::NORMAL.is_sendable());
    }

    #[test]
    fn encoded_close_frames_parse_back() {
        let long = "é".repeat(100);
        for (code, reason) in [
            (CloseCode::NORMAL, ""),
            (CloseCode::GOING_AWAY, long.as_str()),
        ] {
            let f = encode_close_frame(code, reason, None);
            assert_eq!(f[0], 0x88);
            assert_eq!(usize::from(f[1]), f.len() - 2);
            let back = parse_close_payload(&f[2..]).unwrap();
            assert_eq!(back.code, code);
            assert_eq!(back.reason, truncate_reason(reason));
        }
        let masked = encode_close_frame(CloseCode::NORMAL, "x", Some([1, 2, 3, 4]));
        assert_eq!(masked[1], 0x80 | 3);
        let mut p = masked[6..].to_vec();
        crate::mask::apply_mask(&mut p, [1, 2, 3, 4], 0);
        assert_eq!(p, b"\x03\xe8x");
    }
}
