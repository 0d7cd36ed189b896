//! The opening handshake as the I/O adapters run it, without the I/O: the
//! [`blocking`](crate::blocking) and `tokio` adapters both read into a
//! [`Head`], ask [`server_step`] or [`client_step`] what it means, and
//! write what they are told. Only the reads and writes differ.

use crate::config::Config;
use crate::connection::Connection;
use crate::error::HandshakeError;
use crate::frame::Role;
use crate::handshake::{self, ClientRequest, ParsedRequest, ParsedResponse, Request, Response};
use std::borrow::Cow;

/// Bytes asked per read of the HTTP head (the head is small; what follows
/// it is kept for the connection).
const HEAD_READ: usize = 4096;

/// The HTTP head read so far, bounded by [`Config::max_handshake_size`].
#[derive(Debug)]
pub(crate) struct Head {
    buf: Vec<u8>,
    len: usize,
    /// How far `buf` was searched for the end of the head.
    scanned: usize,
    limit: usize,
}

impl Head {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            buf: Vec::with_capacity(1024),
            len: 0,
            scanned: 0,
            limit: config.max_handshake_size,
        }
    }

    /// Room for the next read: at least one byte, at most up to the limit.
    pub(crate) fn spare(&mut self) -> &mut [u8] {
        let want = self.limit.saturating_sub(self.len).clamp(1, HEAD_READ);
        self.buf.resize(self.len + want, 0);
        &mut self.buf[self.len..]
    }

    /// Records a read of `n` bytes into [`spare`](Self::spare). True when
    /// the head is complete or at the size limit: time to parse it.
    ///
    /// # Errors
    ///
    /// [`HandshakeError::UnexpectedEof`] for a read of 0 bytes.
    pub(crate) fn filled(&mut self, n: usize) -> Result<bool, HandshakeError> {
        if n == 0 {
            return Err(HandshakeError::UnexpectedEof);
        }
        self.len += n;
        self.buf.truncate(self.len);
        let ready =
            handshake::head_end(&self.buf, self.scanned).is_some() || self.len >= self.limit;
        self.scanned = self.len;
        Ok(ready)
    }
}

/// What a server does with the head it has.
#[derive(Debug)]
pub(crate) enum ServerStep {
    /// Read more.
    NeedMore,
    /// Write `response`, then run `conn` (bytes read past the head are in it).
    Accept {
        response: Vec<u8>,
        request: Request,
        conn: Box<Connection>,
    },
    /// Write `response` (best effort) and fail with `error`.
    Reject {
        response: Vec<u8>,
        error: HandshakeError,
    },
}

/// Parses the request in `head`; on success chooses a subprotocol from
/// `protocols` (in the server's order of preference) and negotiates
/// permessage-deflate if `config` allows it.
pub(crate) fn server_step(head: &Head, config: &Config, protocols: &[&str]) -> ServerStep {
    let buf = &head.buf[..head.len];
    match handshake::parse_request(buf, config) {
        ParsedRequest::Complete(request, len) => {
            let protocol = request.select_protocol(protocols);
            // deflate hook: accept an offer if the config allows.
            let deflate = config
                .deflate
                .as_ref()
                .and_then(|d| request.negotiate_deflate(d));
            let response = request.accept_with_deflate(protocol, deflate.as_ref());
            let mut conn = Connection::new(Role::Server, config.clone());
            conn.receive(&buf[len..]);
            if let Some(d) = deflate {
                conn.enable_deflate(d.params().clone());
            }
            ServerStep::Accept {
                response,
                request,
                conn: Box::new(conn),
            }
        }
        ParsedRequest::Reject(r) => ServerStep::Reject {
            response: r.response,
            error: r.error,
        },
        ParsedRequest::NeedMore => ServerStep::NeedMore,
    }
}

/// The request a client sends: `request`, with a permessage-deflate offer
/// added when `config` asks for one and the request makes none.
pub(crate) fn client_request<'a>(
    request: &'a ClientRequest,
    config: &Config,
) -> Cow<'a, ClientRequest> {
    // deflate hook: offer what the config asks, unless the request does.
    match &config.deflate {
        Some(d) if request.deflate_offer().is_none() => {
            Cow::Owned(request.clone().deflate(d.clone()))
        }
        _ => Cow::Borrowed(request),
    }
}

/// Parses the server's answer to `request` (as sent: see
/// [`client_request`]) in `head`: `None` to read more, or the connection
/// (bytes read past the head are in it) and the response.
///
/// # Errors
///
/// A refused or invalid answer.
pub(crate) fn client_step(
    request: &ClientRequest,
    head: &Head,
    config: &Config,
) -> Result<Option<(Connection, Response)>, HandshakeError> {
    let buf = &head.buf[..head.len];
    match request.parse_response(buf, config)? {
        ParsedResponse::Complete(response, len) => {
            let mut conn = Connection::new(Role::Client, config.clone());
            conn.receive(&buf[len..]);
            if let Some(d) = &response.deflate {
                conn.enable_deflate(d.clone()); // deflate hook
            }
            Ok(Some((conn, response)))
        }
        ParsedResponse::NeedMore => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::Event;

    /// The head arrives a byte at a time, with a frame right behind it: it
    /// is parsed once complete, and the frame goes to the connection.
    #[test]
    fn head_in_pieces_and_bytes_past_it() {
        let mut wire =
            b"GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                .to_vec();
        let head_len = wire.len();
        wire.extend_from_slice(b"\x81\x82\0\0\0\0hi"); // a masked "hi"
        let config = Config::default();
        let mut head = Head::new(&config);
        let mut at = 0;
        let step = loop {
            let spare = head.spare();
            spare[0] = wire[at];
            at += 1;
            if head.filled(1).unwrap() {
                break server_step(&head, &config, &[]);
            }
        };
        assert_eq!(at, head_len);
        let ServerStep::Accept {
            mut conn, request, ..
        } = step
        else {
            panic!("{step:?}")
        };
        assert_eq!(request.path, "/x");
        conn.receive(&wire[at..]);
        assert_eq!(conn.next_event().unwrap(), Some(Event::Text("hi".into())));
        assert!(matches!(head.filled(0), Err(HandshakeError::UnexpectedEof)));

        // All in one read: the frame after the head is in the connection.
        let mut head = Head::new(&config);
        head.spare()[..wire.len()].copy_from_slice(&wire);
        assert!(head.filled(wire.len()).unwrap());
        let ServerStep::Accept { mut conn, .. } = server_step(&head, &config, &[]) else {
            panic!("not accepted")
        };
        assert_eq!(conn.next_event().unwrap(), Some(Event::Text("hi".into())));
    }
}
