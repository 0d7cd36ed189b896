//! Shared oracles for the fuzz targets.
//!
//! The rule every target enforces (h11's fuzzing rule): any input is accepted
//! or rejected with one of the *documented* errors, with the close code or
//! HTTP status the docs give for it. A panic, an undocumented variant or a
//! wrong code is a crash.

use wsproto::{CloseCode, Config, Connection, Event, HandshakeError, ProtocolError, Role};

/// Small limits, so the targets also prove memory stays bounded by them.
pub fn config() -> Config {
    Config::default()
        .max_frame_size(64 << 10)
        .max_message_size(256 << 10)
        .max_fragments(64)
        .max_handshake_size(4096)
        .max_headers(32)
}

/// The close code each violation is documented to get (RFC 6455 §7.4.1),
/// written out here independently of `ProtocolError::close_code`.
pub fn documented_close_code(e: &ProtocolError) -> u16 {
    use ProtocolError as P;
    match e {
        P::ReservedBits(_)
        | P::UnknownOpcode(_)
        | P::FragmentedControlFrame(_)
        | P::ControlFrameTooLong { .. }
        | P::UnmaskedFrame
        | P::MaskedFrame
        | P::NonMinimalLength { .. }
        | P::LengthMsbSet(_)
        | P::UnexpectedContinuation
        | P::ExpectedContinuation(_)
        | P::CloseTooShort
        | P::InvalidCloseCode(_) => 1002,
        P::InvalidUtf8 { .. } | P::InvalidCloseReason { .. } => 1007,
        P::FrameTooLarge { .. } | P::MessageTooLarge { .. } | P::TooManyFragments { .. } => 1009,
        other => panic!("undocumented ProtocolError variant: {other:?}"),
    }
}

/// Checks an error against the documented table.
pub fn check_protocol_error(e: &ProtocolError) {
    assert_eq!(e.close_code().as_u16(), documented_close_code(e), "{e:?}");
    assert!(!e.to_string().is_empty());
}

/// The HTTP status each handshake error is documented to get.
pub fn documented_status(e: &HandshakeError) -> u16 {
    use HandshakeError as H;
    match e {
        H::OriginRefused { .. } => 403,
        H::MethodNotAllowed(_) => 405,
        H::UnsupportedVersion(_) => 426,
        H::HeadTooLarge { .. } | H::TooManyHeaders { .. } => 431,
        H::MalformedHttp(_)
        | H::HttpVersion(_)
        | H::MissingHeader(_)
        | H::InvalidHeader { .. }
        | H::Status { .. }
        | H::AcceptMismatch { .. }
        | H::NotOffered(_)
        | H::InvalidUrl { .. }
        | H::InvalidTarget(_)
        | H::UnexpectedBody { .. }
        | H::InvalidHost(_)
        | H::InvalidPath(_)
        | H::InvalidHeaderName { .. }
        | H::InvalidHeaderValue { .. }
        | H::UnexpectedEof => 400,
        other => panic!("undocumented HandshakeError variant: {other:?}"),
    }
}

/// Checks an error a client got for a server's response: the server is at
/// fault, it is of kind `Response` and never answered with a status; a
/// malformed response wraps one of the documented HTTP errors.
pub fn check_response_error(e: &HandshakeError) {
    use wsproto::{Fault, HandshakeErrorKind};
    assert_eq!(e.kind(), HandshakeErrorKind::Response, "{e:?}");
    assert_eq!(e.fault(), Fault::Peer, "{e:?}");
    assert_eq!(e.status(), None, "{e:?}");
    match e {
        HandshakeError::InvalidResponse(inner) => {
            assert_eq!(inner.kind(), HandshakeErrorKind::Http, "{inner:?}");
            documented_status(inner);
        }
        HandshakeError::Status { .. }
        | HandshakeError::AcceptMismatch { .. }
        | HandshakeError::NotOffered(_)
        | HandshakeError::DeflateAnswer { .. } => {}
        other => panic!("undocumented response error: {other:?}"),
    }
    assert!(!e.to_string().is_empty());
}

/// A tiny deterministic generator for chunk sizes, seeded by the input.
pub struct Splitter(u64);

impl Splitter {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
    /// Next chunk length in 1..=max.
    pub fn next(&mut self, max: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        1 + (self.0 as usize) % max.max(1)
    }
}

/// Everything observable after feeding a stream to a connection.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub events: Vec<Event>,
    pub error: Option<ProtocolError>,
    /// What the connection queued, decoded by its peer (a client masks
    /// with fresh random keys, so the raw bytes differ from run to run).
    pub output: Vec<Event>,
    pub closed: bool,
}

/// Feeds `stream` to a fresh connection in chunks of the given sizes (the
/// last chunk takes the rest), then reports EOF. Events are taken with
/// `next_event_ref` (and copied) if `borrowed`, else with `next_event`.
pub fn drive(
    role: Role,
    stream: &[u8],
    chunks: &mut dyn FnMut() -> usize,
    borrowed: bool,
) -> Outcome {
    let limits = config();
    let mut conn = Connection::new(role, limits.clone());
    let mut events = Vec::new();
    let mut error = None;
    let mut pos = 0;
    let mut saw_close = false;
    'feed: while pos <= stream.len() {
        let end = if pos == stream.len() {
            pos
        } else {
            (pos + chunks()).min(stream.len())
        };
        conn.receive(&stream[pos..end]);
        if end == stream.len() {
            conn.receive_eof();
        }
        loop {
            let next = if borrowed {
                conn.next_event_ref().map(|e| e.map(|e| e.to_event()))
            } else {
                conn.next_event()
            };
            match next {
                Ok(Some(e)) => {
                    match &e {
                        Event::Text(t) => assert!(t.len() <= limits.max_message_size),
                        Event::Binary(b) => assert!(b.len() <= limits.max_message_size),
                        Event::Ping(p) | Event::Pong(p) => assert!(p.len() <= 125),
                        Event::Close(_) => saw_close = true,
                        // Event is non-exhaustive; nothing else exists yet.
                        _ => {}
                    }
                    events.push(e);
                }
                Ok(None) => break,
                Err(e) => {
                    check_protocol_error(&e);
                    assert!(conn.is_closed(), "a violation closes the connection");
                    if !saw_close {
                        // The Close answering the violation is the last thing queued.
                        let code = last_close_code(role, conn.pending_output());
                        assert_eq!(code, Some(documented_close_code(&e)), "{e:?}");
                    }
                    error = Some(e);
                    break 'feed;
                }
            }
        }
        if end == stream.len() {
            break;
        }
        pos = end;
    }
    if error.is_none() {
        // EOF always ends in a Close event, and nothing comes after it.
        assert!(
            matches!(events.last(), Some(Event::Close(_))),
            "EOF must end with a Close event"
        );
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, Event::Close(_)))
                .count(),
            1
        );
    }
    assert_eq!(
        conn.next_event(),
        Ok(None),
        "a closed connection stays quiet"
    );
    Outcome {
        events,
        error,
        output: peer_events(role, conn.pending_output()),
        closed: conn.is_closed(),
    }
}

/// Decodes `output` (written by `role`) as the peer would.
pub fn peer_events(role: Role, output: &[u8]) -> Vec<Event> {
    let peer_role = match role {
        Role::Client => Role::Server,
        Role::Server => Role::Client,
    };
    let mut peer = Connection::new(peer_role, Config::default());
    peer.receive(output);
    let mut events = Vec::new();
    loop {
        match peer.next_event() {
            Ok(Some(e)) => events.push(e),
            Ok(None) => return events,
            Err(e) => panic!("our own output does not decode: {e:?}"),
        }
    }
}

/// The code of the last Close frame in `output` (written by `role`).
pub fn last_close_code(role: Role, output: &[u8]) -> Option<u16> {
    peer_events(role, output)
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::Close(f) => Some(f.code.as_u16()),
            _ => None,
        })
}

/// Close codes a sender may use, for the round trip.
pub fn sendable_code(raw: u16) -> CloseCode {
    CloseCode::try_from(raw).unwrap_or(CloseCode::NORMAL)
}
