//! Error types.
//!
//! Errors are split by who is at fault, as in rustls:
//! - [`ProtocolError`]: the *peer* violated RFC 6455 (or a configured limit);
//!   each variant knows the close code to answer with ([`ProtocolError::close_code`]).
//! - [`HandshakeError`]: the HTTP Upgrade was wrong; each variant knows its
//!   HTTP status ([`HandshakeError::status`]).
//! - [`UsageError`]: the *caller* asked for something illegal.
//! - [`Error`]: any of these, plus I/O and a closed connection.

use crate::close::CloseCode;
use crate::frame::Opcode;
use std::io;

/// What the peer sent that violates RFC 6455 or a configured limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// RFC 6455 §5.2: RSV bits set without a negotiated extension.
    #[error("peer set reserved bits {0:#05b} with no extension negotiated")]
    ReservedBits(u8),
    /// RFC 6455 §5.2: opcodes 3-7 and 11-15 are reserved.
    #[error("peer sent reserved opcode {0:#x}")]
    UnknownOpcode(u8),
    /// RFC 6455 §5.5: control frames must not be fragmented.
    #[error("peer sent a fragmented {0:?} frame (control frames must have FIN set)")]
    FragmentedControlFrame(Opcode),
    /// RFC 6455 §5.5: control frame payloads are at most 125 bytes.
    #[error("peer sent a {opcode:?} frame of {len} bytes (control frames carry at most 125)")]
    ControlFrameTooLong {
        /// The frame's opcode.
        opcode: Opcode,
        /// The length the peer announced.
        len: u64,
    },
    /// RFC 6455 §5.1: a client must mask every frame it sends.
    #[error("peer (a client) sent an unmasked frame")]
    UnmaskedFrame,
    /// RFC 6455 §5.1: a server must not mask frames.
    #[error("peer (a server) sent a masked frame")]
    MaskedFrame,
    /// RFC 6455 §5.2: the minimal number of bytes must be used to encode the length.
    #[error("peer encoded payload length {len} in the non-minimal {width}-bit form")]
    NonMinimalLength {
        /// The decoded length.
        len: u64,
        /// The width of the form used (16 or 64).
        width: u8,
    },
    /// RFC 6455 §5.2: the most significant bit of a 64-bit length must be 0.
    #[error("peer sent a 64-bit payload length with the most significant bit set ({0:#x})")]
    LengthMsbSet(u64),
    /// RFC 6455 §5.4: a continuation frame with no fragmented message to continue.
    #[error("peer sent a continuation frame outside a fragmented message")]
    UnexpectedContinuation,
    /// RFC 6455 §5.4: a new data frame while a fragmented message is unfinished.
    #[error("peer started a new {0:?} message inside an unfinished fragmented message")]
    ExpectedContinuation(Opcode),
    /// RFC 6455 §8.1: text messages must be valid UTF-8.
    #[error("peer sent invalid UTF-8 at byte {offset} of a text message")]
    InvalidUtf8 {
        /// Offset of the first invalid byte in the message.
        offset: u64,
    },
    /// RFC 6455 §5.5.1: a Close payload is empty or at least 2 bytes.
    #[error("peer sent a Close frame with a 1-byte payload")]
    CloseTooShort,
    /// RFC 6455 §7.4: the code is reserved or unassigned.
    #[error("peer sent close code {0}, which is not valid on the wire")]
    InvalidCloseCode(u16),
    /// RFC 6455 §5.5.1: the close reason must be UTF-8.
    #[error("peer sent a close reason that is not UTF-8 (invalid at byte {offset})")]
    InvalidCloseReason {
        /// Offset of the first invalid byte in the reason.
        offset: usize,
    },
    /// A frame exceeds [`Config::max_frame_size`](crate::Config::max_frame_size).
    #[error("peer sent a frame of {len} bytes; the limit is {max}")]
    FrameTooLarge {
        /// The announced payload length.
        len: u64,
        /// The configured limit.
        max: usize,
    },
    /// A message exceeds [`Config::max_message_size`](crate::Config::max_message_size).
    #[error("peer sent a message of at least {len} bytes; the limit is {max}")]
    MessageTooLarge {
        /// The size the message would reach.
        len: u64,
        /// The configured limit.
        max: usize,
    },
    /// RFC 7692 §6.1: RSV1 ("compressed") on a control frame.
    #[error("peer set RSV1 (compressed) on a {0:?} frame; control frames are never compressed")]
    CompressedControlFrame(Opcode),
    /// RFC 7692 §6.1: RSV1 on a continuation frame (it belongs on the
    /// first frame of a message only).
    #[error("peer set RSV1 (compressed) on a continuation frame")]
    CompressedContinuation,
    /// RFC 7692 §7.2.2: a compressed message is not a valid deflate stream
    /// (zlib's reason). Answered with 1007.
    #[error("peer sent a compressed message that does not inflate: {0}")]
    InvalidCompressedData(&'static str),
    /// A message exceeds [`Config::max_fragments`](crate::Config::max_fragments).
    #[error("peer sent a message of more than {max} fragments")]
    TooManyFragments {
        /// The configured limit.
        max: usize,
    },
}

impl ProtocolError {
    /// The close code to answer this violation with (RFC 6455 §7.4.1).
    ///
    /// ```
    /// use wsproto::{CloseCode, ProtocolError};
    /// assert_eq!(ProtocolError::UnmaskedFrame.close_code(), CloseCode::PROTOCOL_ERROR);
    /// assert_eq!(ProtocolError::InvalidUtf8 { offset: 3 }.close_code(), CloseCode::INVALID_PAYLOAD);
    /// ```
    pub fn close_code(&self) -> CloseCode {
        // No `_` arm: a new variant must choose its code here.
        match self {
            // RFC 6455 §7.4.1: 1007, "data within a message that was not
            // consistent with the type of the message".
            Self::InvalidUtf8 { .. }
            | Self::InvalidCloseReason { .. }
            | Self::InvalidCompressedData(_) => {
                CloseCode::INVALID_PAYLOAD
            }
            // RFC 6455 §7.4.1: 1009, "a message that is too big for it to
            // process".
            Self::FrameTooLarge { .. }
            | Self::MessageTooLarge { .. }
            | Self::TooManyFragments { .. } => CloseCode::MESSAGE_TOO_BIG,
            // RFC 6455 §7.4.1: 1002, a protocol error.
            Self::ReservedBits(_)
            | Self::UnknownOpcode(_)
            | Self::FragmentedControlFrame(_)
            | Self::ControlFrameTooLong { .. }
            | Self::UnmaskedFrame
            | Self::MaskedFrame
            | Self::NonMinimalLength { .. }
            | Self::LengthMsbSet(_)
            | Self::UnexpectedContinuation
            | Self::ExpectedContinuation(_)
            | Self::CloseTooShort
            | Self::InvalidCloseCode(_)
            // RFC 7692 §6.1: RSV1 only on the first frame of a data message.
            | Self::CompressedControlFrame(_)
            | Self::CompressedContinuation => CloseCode::PROTOCOL_ERROR,
        }
    }
}

/// What was wrong with an HTTP Upgrade request or response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The bytes are not a valid HTTP/1.1 message.
    #[error("malformed HTTP: {0}")]
    MalformedHttp(String),
    /// The head is larger than [`Config::max_handshake_size`](crate::Config::max_handshake_size).
    #[error("HTTP head larger than {limit} bytes")]
    HeadTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// More header lines than [`Config::max_headers`](crate::Config::max_headers).
    #[error("more than {limit} HTTP header lines")]
    TooManyHeaders {
        /// The configured limit.
        limit: usize,
    },
    /// RFC 6455 §4.1: the request method must be GET.
    #[error("method {0:?} is not GET")]
    MethodNotAllowed(String),
    /// RFC 6455 §4.1: HTTP/1.1 or later is required.
    #[error("HTTP/1.{0} is older than HTTP/1.1")]
    HttpVersion(u8),
    /// A required header is absent.
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// A header is present but its value is wrong.
    #[error("invalid {name} header: {value:?}")]
    InvalidHeader {
        /// The header name.
        name: &'static str,
        /// What the peer sent (lossy UTF-8).
        value: String,
    },
    /// The request target is neither origin form (`/path?query`) nor
    /// absolute form (`http://host:port/path`, RFC 7230 §5.3.1-2).
    #[error("request target {0:?} is neither /path nor http://host/path")]
    InvalidTarget(String),
    /// RFC 7230 §3.3: an Upgrade request carries a body (`Content-Length` or
    /// `Transfer-Encoding`). Its bytes would be read as WebSocket frames, so
    /// a body could smuggle frames past whatever inspected the request.
    #[error("an upgrade request may not carry a body (it sent {header})")]
    UnexpectedBody {
        /// `Content-Length` or `Transfer-Encoding`.
        header: &'static str,
    },
    /// The `Origin` is refused by the server's
    /// [`OriginPolicy`](crate::handshake::OriginPolicy): a page of another
    /// site tried to open a WebSocket with the user's browser (cross-site
    /// WebSocket hijacking). Answered 403.
    #[error("origin {origin:?} is not allowed")]
    OriginRefused {
        /// The `Origin` the peer sent (lossy UTF-8, at most 100 bytes).
        origin: String,
    },
    /// RFC 6455 §4.4: only version 13 is supported.
    #[error("unsupported Sec-WebSocket-Version {0:?} (only 13 is supported)")]
    UnsupportedVersion(String),
    /// Client side: the server answered with a status other than 101.
    #[error("server answered HTTP {status} instead of 101")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The body of the response as far as it was read (lossy UTF-8, short).
        body: String,
    },
    /// Client side: the server's response is not valid HTTP, is over a
    /// limit, or lacks or botches a header the upgrade needs (RFC 6455
    /// §4.1, the client's checks of the server's handshake). The error
    /// inside says what, in the words used for a request on the server
    /// side; here the server is at fault, and nothing is answered
    /// ([`status`](Self::status) is `None`).
    ///
    /// ```
    /// use wsproto::handshake::ClientRequest;
    /// use wsproto::{Fault, HandshakeError};
    /// let req = ClientRequest::new("localhost", 80, "/")?;
    /// let err = req.parse_response(b"HTTP/1.1 101 OK\r\n\r\n", &Default::default());
    /// let Err(HandshakeError::InvalidResponse(inner)) = &err else { panic!("{err:?}") };
    /// assert_eq!(**inner, HandshakeError::MissingHeader("Upgrade"));
    /// let err = err.unwrap_err();
    /// assert_eq!((err.fault(), err.status()), (Fault::Peer, None));
    /// # Ok::<(), HandshakeError>(())
    /// ```
    #[error("invalid response from the server: {0}")]
    InvalidResponse(Box<HandshakeError>),
    /// Client side: `Sec-WebSocket-Accept` does not match our key.
    #[error("Sec-WebSocket-Accept is {got:?}, expected {expected:?}")]
    AcceptMismatch {
        /// What the key requires.
        expected: String,
        /// What the server sent.
        got: String,
    },
    /// Client side: the server chose a subprotocol or extension we did not offer.
    #[error("server selected {0:?}, which was not offered")]
    NotOffered(String),
    /// Client side: the server's permessage-deflate answer is one RFC 7692
    /// §7.1 says to fail the connection on (an unknown, repeated or invalid
    /// parameter, a window larger than asked, a requested
    /// `server_no_context_takeover` not granted).
    #[error("invalid permessage-deflate answer {value:?}: {why}")]
    DeflateAnswer {
        /// What is wrong with it.
        why: &'static str,
        /// The extension as the server sent it (lossy, at most 100 bytes).
        value: String,
    },
    /// Client side: the URL could not be used; server side: an origin given
    /// to [`OriginPolicy::allow`](crate::handshake::OriginPolicy::allow) is
    /// not `scheme://host[:port]`. The caller is at fault.
    #[error("invalid URL {url:?}: {why}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Client side: a host the request was asked to name is not a
    /// reg-name, an IPv4 address or a bracketed IPv6 address (RFC 3986
    /// §3.2.2); CR or LF there would inject header lines. The caller is at
    /// fault.
    #[error("invalid host {0:?}: not a host name, IPv4 or [IPv6] address")]
    InvalidHost(String),
    /// Client side: a request path must start with `/` and may not hold
    /// spaces or control characters (RFC 7230 §3.1.1). The caller is at fault.
    #[error(
        "invalid request path {0:?}: it must start with / and hold no spaces or control characters"
    )]
    InvalidPath(String),
    /// Client side: a header name given to
    /// [`ClientRequest::header`](crate::handshake::ClientRequest::header) is
    /// not an RFC 7230 §3.2.6 token, or names a header the handshake sets
    /// itself. The caller is at fault.
    #[error("cannot send header {name:?}: {why}")]
    InvalidHeaderName {
        /// The name given (lossy, at most 100 bytes).
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Client side: a header value holds a byte a field-value may not
    /// (RFC 7230 §3.2: CR, LF, NUL and other controls except HTAB); it would
    /// end the header line early and inject others. The value itself is not
    /// kept, as it may be a secret (`Authorization`). The caller is at fault.
    #[error("value of header {name:?} has byte {byte:#04x} at offset {offset}, which a header value may not hold")]
    InvalidHeaderValue {
        /// The header name.
        name: String,
        /// The first byte that is not allowed.
        byte: u8,
        /// Its offset in the value.
        offset: usize,
    },
    /// The transport closed before the handshake completed.
    #[error("connection closed during the handshake")]
    UnexpectedEof,
}

/// Who caused a [`HandshakeError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// The peer sent something wrong (a server answers a request with
    /// [`HandshakeError::status`]; a client gives up).
    Peer,
    /// The caller asked for an impossible request (a bad URL, host, path or
    /// header); nothing was sent.
    Caller,
    /// The transport ended before the handshake did.
    Transport,
}

impl HandshakeError {
    /// Who is at fault: only a [`Fault::Peer`] error in a request is
    /// answered with an HTTP [`status`](Self::status).
    ///
    /// ```
    /// use wsproto::{Fault, HandshakeError};
    /// assert_eq!(HandshakeError::MethodNotAllowed("POST".into()).fault(), Fault::Peer);
    /// assert_eq!(HandshakeError::InvalidPath("x y".into()).fault(), Fault::Caller);
    /// assert_eq!(HandshakeError::UnexpectedEof.fault(), Fault::Transport);
    /// ```
    pub fn fault(&self) -> Fault {
        // No `_` arm: a new variant must say who is at fault.
        match self {
            Self::MalformedHttp(_)
            | Self::HeadTooLarge { .. }
            | Self::TooManyHeaders { .. }
            | Self::MethodNotAllowed(_)
            | Self::HttpVersion(_)
            | Self::MissingHeader(_)
            | Self::InvalidHeader { .. }
            | Self::InvalidTarget(_)
            | Self::UnexpectedBody { .. }
            | Self::OriginRefused { .. }
            | Self::UnsupportedVersion(_)
            | Self::Status { .. }
            | Self::InvalidResponse(_)
            | Self::AcceptMismatch { .. }
            | Self::NotOffered(_)
            | Self::DeflateAnswer { .. } => Fault::Peer,
            Self::InvalidUrl { .. }
            | Self::InvalidHost(_)
            | Self::InvalidPath(_)
            | Self::InvalidHeaderName { .. }
            | Self::InvalidHeaderValue { .. } => Fault::Caller,
            Self::UnexpectedEof => Fault::Transport,
        }
    }

    /// Which message was wrong, so a caller can tell a client-side error
    /// from a server-side one without matching every variant.
    ///
    /// ```
    /// use wsproto::{HandshakeError, HandshakeErrorKind};
    /// let e = HandshakeError::MethodNotAllowed("POST".into());
    /// assert_eq!(e.kind(), HandshakeErrorKind::Request);
    /// let e = HandshakeError::Status { status: 404, body: String::new() };
    /// assert_eq!(e.kind(), HandshakeErrorKind::Response);
    /// assert_eq!(HandshakeError::MissingHeader("Upgrade").kind(), HandshakeErrorKind::Http);
    /// ```
    pub fn kind(&self) -> HandshakeErrorKind {
        // No `_` arm: a new variant must say which message it is about.
        match self {
            Self::MalformedHttp(_)
            | Self::HeadTooLarge { .. }
            | Self::TooManyHeaders { .. }
            | Self::HttpVersion(_)
            | Self::MissingHeader(_)
            | Self::InvalidHeader { .. } => HandshakeErrorKind::Http,
            Self::MethodNotAllowed(_)
            | Self::InvalidTarget(_)
            | Self::UnexpectedBody { .. }
            | Self::OriginRefused { .. }
            | Self::UnsupportedVersion(_) => HandshakeErrorKind::Request,
            Self::Status { .. }
            | Self::InvalidResponse(_)
            | Self::AcceptMismatch { .. }
            | Self::NotOffered(_)
            | Self::DeflateAnswer { .. } => HandshakeErrorKind::Response,
            Self::InvalidUrl { .. }
            | Self::InvalidHost(_)
            | Self::InvalidPath(_)
            | Self::InvalidHeaderName { .. }
            | Self::InvalidHeaderValue { .. } => HandshakeErrorKind::Caller,
            Self::UnexpectedEof => HandshakeErrorKind::Transport,
        }
    }

    /// The HTTP status a server answers this error in a client's request
    /// with: 403 for a refused origin, 405 for a wrong method, 426 for a
    /// wrong version, 431 for an oversized head, 400 for everything else.
    /// `None` for an error no request can cause (the caller's, the
    /// transport's, or one about a server's response), which is never
    /// answered. A server gets the status with its
    /// [`Rejection`](crate::handshake::Rejection) as well.
    ///
    /// ```
    /// use wsproto::HandshakeError;
    /// assert_eq!(HandshakeError::MethodNotAllowed("POST".into()).status(), Some(405));
    /// assert_eq!(HandshakeError::UnexpectedEof.status(), None);
    /// ```
    pub fn status(&self) -> Option<u16> {
        match self.kind() {
            HandshakeErrorKind::Http | HandshakeErrorKind::Request => {}
            HandshakeErrorKind::Response
            | HandshakeErrorKind::Caller
            | HandshakeErrorKind::Transport => return None,
        }
        Some(match self {
            Self::OriginRefused { .. } => 403,
            Self::MethodNotAllowed(_) => 405,
            Self::UnsupportedVersion(_) => 426,
            Self::HeadTooLarge { .. } | Self::TooManyHeaders { .. } => 431,
            _ => 400,
        })
    }
}

/// Which part of the handshake a [`HandshakeError`] is about
/// ([`HandshakeError::kind`]); with [`Fault`], who caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HandshakeErrorKind {
    /// The client's HTTP request itself (malformed, over a limit, a header
    /// missing or wrong), on the server side. The client is at fault; answer
    /// with [`HandshakeError::status`]. (The same faults in a server's
    /// response are [`HandshakeError::InvalidResponse`], of kind
    /// [`Response`](Self::Response).)
    Http,
    /// Server side: the client's request is well-formed HTTP but not an
    /// acceptable WebSocket upgrade. The client is at fault; answer with
    /// [`HandshakeError::status`].
    Request,
    /// Client side: the server's response refused or botched the upgrade.
    /// The server is at fault.
    Response,
    /// Client side: the caller asked for a request that cannot be sent;
    /// nothing was sent.
    Caller,
    /// The transport ended before the handshake did.
    Transport,
}

/// The caller asked for something illegal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    /// RFC 6455 §5.5: control payloads are at most 125 bytes.
    #[error("control frame payload of {0} bytes exceeds 125")]
    ControlPayloadTooLong(usize),
    /// The code may not be sent (1005, 1006 are report-only).
    #[error("close code {0} cannot be sent")]
    UnsendableCloseCode(CloseCode),
    /// The reason does not fit in a close frame with its code.
    #[error("close reason of {0} bytes exceeds 123")]
    CloseReasonTooLong(usize),
    /// A fragment was sent out of order (e.g. a continuation with no message
    /// started, or a new message while one is unfinished).
    #[error("fragment out of order: {0}")]
    FragmentOrder(&'static str),
}

/// Any error from this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The transport failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The opening handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// The peer violated the protocol; a Close frame with
    /// [`ProtocolError::close_code`] has been queued.
    #[error("protocol violation: {0}")]
    Protocol(#[from] ProtocolError),
    /// The caller misused the API.
    #[error("usage error: {0}")]
    Usage(#[from] UsageError),
    /// The outgoing buffer holds [`Config::max_output_buffer`](crate::Config::max_output_buffer)
    /// bytes or more; flush before sending more.
    #[error("outgoing buffer full: {pending} bytes waiting, limit {max}")]
    OutputFull {
        /// Bytes waiting to be written.
        pending: usize,
        /// The configured limit.
        max: usize,
    },
    /// The peer did not answer a keepalive ping in time.
    #[error("no pong within {0:?}")]
    PongTimeout(std::time::Duration),
    /// The connection is closed (or closing and the operation needs it open).
    #[error("connection closed")]
    Closed,
    /// TLS failed (the `rustls` feature): a refused certificate, a peer
    /// that does not speak TLS, a handshake that timed out. See
    /// [`TlsError::fault`](crate::tls::TlsError::fault).
    #[cfg(feature = "rustls")]
    #[error("TLS: {0}")]
    Tls(crate::tls::TlsError),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of every `HandshakeError` variant.
    fn every_handshake_error() -> Vec<HandshakeError> {
        use HandshakeError as H;
        vec![
            H::MalformedHttp("x".into()),
            H::HeadTooLarge { limit: 1 },
            H::TooManyHeaders { limit: 1 },
            H::MethodNotAllowed("POST".into()),
            H::HttpVersion(0),
            H::MissingHeader("Upgrade"),
            H::InvalidHeader {
                name: "Upgrade",
                value: "x".into(),
            },
            H::InvalidTarget("*".into()),
            H::UnexpectedBody {
                header: "Content-Length",
            },
            H::OriginRefused {
                origin: "http://evil".into(),
            },
            H::UnsupportedVersion("7".into()),
            H::Status {
                status: 404,
                body: String::new(),
            },
            H::AcceptMismatch {
                expected: "a".into(),
                got: "b".into(),
            },
            H::NotOffered("x".into()),
            H::DeflateAnswer {
                why: "x",
                value: "y".into(),
            },
            H::InvalidUrl {
                url: "x".into(),
                why: "y",
            },
            H::InvalidHost("a b".into()),
            H::InvalidPath("x".into()),
            H::InvalidHeaderName {
                name: "a b".into(),
                why: "x",
            },
            H::InvalidHeaderValue {
                name: "a".into(),
                byte: 0,
                offset: 0,
            },
            H::UnexpectedEof,
            H::InvalidResponse(Box::new(H::MissingHeader("Upgrade"))),
        ]
    }

    #[test]
    fn handshake_kind_fault_and_status_agree() {
        for e in every_handshake_error() {
            let (kind, fault) = (e.kind(), e.fault());
            match kind {
                HandshakeErrorKind::Http | HandshakeErrorKind::Request => {
                    assert_eq!(fault, Fault::Peer, "{e:?}");
                    assert!(e.status().is_some(), "{e:?}");
                }
                HandshakeErrorKind::Response => {
                    assert_eq!(fault, Fault::Peer, "{e:?}");
                    assert_eq!(
                        e.status(),
                        None,
                        "a response error is never answered: {e:?}"
                    );
                }
                HandshakeErrorKind::Caller => {
                    assert_eq!(fault, Fault::Caller, "{e:?}");
                    assert_eq!(e.status(), None, "{e:?}");
                }
                HandshakeErrorKind::Transport => {
                    assert_eq!(fault, Fault::Transport, "{e:?}");
                    assert_eq!(e.status(), None, "{e:?}");
                }
            }
            // Every message says what went wrong in words of its own.
            assert!(e.to_string().len() > 10, "{e}");
        }
    }

    #[test]
    fn violation_to_close_code_table() {
        use ProtocolError as P;
        let table = [
            (P::ReservedBits(4), 1002),
            (P::UnknownOpcode(3), 1002),
            (P::FragmentedControlFrame(Opcode::Ping), 1002),
            (
                P::ControlFrameTooLong {
                    opcode: Opcode::Ping,
                    len: 126,
                },
                1002,
            ),
            (P::UnmaskedFrame, 1002),
            (P::MaskedFrame, 1002),
            (P::NonMinimalLength { len: 5, width: 16 }, 1002),
            (P::LengthMsbSet(1 << 63), 1002),
            (P::UnexpectedContinuation, 1002),
            (P::ExpectedContinuation(Opcode::Text), 1002),
            (P::InvalidUtf8 { offset: 0 }, 1007),
            (P::CloseTooShort, 1002),
            (P::InvalidCloseCode(1005), 1002),
            (P::InvalidCloseReason { offset: 0 }, 1007),
            (P::FrameTooLarge { len: 9, max: 8 }, 1009),
            (P::MessageTooLarge { len: 9, max: 8 }, 1009),
            (P::TooManyFragments { max: 8 }, 1009),
            (P::CompressedControlFrame(Opcode::Ping), 1002),
            (P::CompressedContinuation, 1002),
            (P::InvalidCompressedData("invalid block type"), 1007),
        ];
        for (err, code) in table {
            assert_eq!(err.close_code().as_u16(), code, "{err}");
        }
    }

    #[test]
    fn handshake_statuses() {
        assert_eq!(
            HandshakeError::UnsupportedVersion("8".into()).status(),
            Some(426)
        );
        assert_eq!(
            HandshakeError::MethodNotAllowed("POST".into()).status(),
            Some(405)
        );
        assert_eq!(
            HandshakeError::HeadTooLarge { limit: 1 }.status(),
            Some(431)
        );
        assert_eq!(HandshakeError::MissingHeader("Host").status(), Some(400));
        let refused = HandshakeError::OriginRefused {
            origin: "http://evil.example".into(),
        };
        assert_eq!(refused.status(), Some(403));
        assert_eq!(
            HandshakeError::UnexpectedBody {
                header: "Content-Length"
            }
            .status(),
            Some(400)
        );
    }

    /// Servers log these errors: what the peer sent must not reach the log
    /// raw (a CR/LF forges a log line, an ESC drives the terminal).
    #[test]
    fn peer_strings_are_escaped_in_messages() {
        let evil = "a\r\nchat: forged\x1b[31m";
        let errors = [
            HandshakeError::MethodNotAllowed(evil.into()),
            HandshakeError::InvalidHeader {
                name: "Host",
                value: evil.into(),
            },
            HandshakeError::UnsupportedVersion(evil.into()),
            HandshakeError::InvalidTarget(evil.into()),
            HandshakeError::OriginRefused {
                origin: evil.into(),
            },
            HandshakeError::NotOffered(evil.into()),
            HandshakeError::InvalidHost(evil.into()),
            HandshakeError::InvalidPath(evil.into()),
            HandshakeError::InvalidHeaderName {
                name: evil.into(),
                why: "x",
            },
            HandshakeError::InvalidHeaderValue {
                name: evil.into(),
                byte: b'\n',
                offset: 1,
            },
        ];
        for e in errors {
            let text = e.to_string();
            assert!(!text.chars().any(char::is_control), "{text:?}");
        }
    }

    #[test]
    fn error_is_send_sync_and_small() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Error>();
        assert!(
            std::mem::size_of::<Error>() <= 64,
            "{}",
            std::mem::size_of::<Error>()
        );
    }
}
