//! The replies a split reader owes the peer (Pongs, the Close echo, a
//! keepalive Ping, the Close for a violation or a missed pong), kept
//! unencoded until the writer's side can send them. One type for the
//! blocking and the tokio split halves: the rules for which replies are
//! kept and in what order they go out live here once.

use crate::close::{self, CloseCode};
use crate::connection::{Connection, State};
use crate::frame::{self, Opcode, ParsedHeader, Role};
use crate::mask::apply_mask;
use bytes::Bytes;

/// Replies owed, not yet encoded.
#[derive(Debug, Default)]
pub(crate) struct Replies {
    /// The payload of the latest Ping: only the latest needs its Pong
    /// (RFC 6455 §5.5.3), so a peer's ping flood owes one Pong.
    pub(crate) pong: Option<Bytes>,
    /// A keepalive Ping.
    pub(crate) ping: bool,
    /// A final Close payload: the echo of the peer's, or ours for its
    /// violation or a missed pong.
    pub(crate) close: Option<Bytes>,
}

impl Replies {
    pub(crate) fn any(&self) -> bool {
        self.pong.is_some() || self.ping || self.close.is_some()
    }

    /// Records the replies in `out` (frames the reader's connection
    /// encoded: Pongs and at most one Close) as owed; `receiver` is the
    /// peer's role (whose side the frames are parsed from).
    pub(crate) fn record(&mut self, out: &[u8], receiver: Role) {
        let mut rest = out;
        // invariant: `out` holds whole frames our own connection encoded.
        while let Ok(ParsedHeader::Complete(h, n)) = frame::parse_header(rest, receiver, 0) {
            let end = (n + h.payload_len as usize).min(rest.len());
            let mut payload = rest[n..end].to_vec();
            if let Some(key) = h.mask {
                apply_mask(&mut payload, key, 0);
            }
            match h.opcode {
                Opcode::Pong => self.pong = Some(payload.into()),
                Opcode::Close => self.close = Some(payload.into()),
                _ => {}
            }
            rest = &rest[end..];
        }
    }

    /// Owes a Close with `code` and `reason` (ours: a missed pong).
    pub(crate) fn owe_close(&mut self, code: CloseCode, reason: &str) {
        let frame = close::encode_close_frame(code, reason, None);
        // The payload: past the 2-byte header of an unmasked frame under
        // 126 bytes (the writer masks its own).
        self.close = Some(frame.slice(2..));
    }

    /// Takes what is owed, leaving nothing.
    pub(crate) fn take(&mut self) -> Replies {
        std::mem::take(self)
    }

    /// Encodes the replies on the writer's `conn`, in order: Pong, Ping,
    /// Close. Nothing goes out after our Close (RFC 6455 §5.5.1).
    pub(crate) fn encode(self, conn: &mut Connection) {
        if conn.state() != State::Open {
            return;
        }
        // Best effort: past max_output_buffer a Pong or Ping is dropped.
        if let Some(p) = self.pong {
            let _ = conn.pong(&p);
        }
        if self.ping {
            let _ = conn.ping(b"");
        }
        if let Some(c) = self.close {
            conn.send_final_close(&c);
        }
    }
}
