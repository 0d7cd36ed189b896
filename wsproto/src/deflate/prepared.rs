//! A message framed (and compressed) once, to send to many connections.

use super::RSV1;
use crate::frame::{self, FrameHeader, Opcode, MAX_HEADER_LEN};
use bytes::{Bytes, BytesMut};

/// A message framed once (and, with the `deflate` feature, compressed
/// once) for sending to many connections with
/// [`Connection::send_prepared`](crate::Connection::send_prepared): a chat
/// room's broadcast costs one compression, not one per member.
///
/// The compressed form is made without context (a fresh compressor), so
/// it is valid on every connection that compresses with a window at least
/// as large, with or without context takeover (one that keeps context
/// resets its compressor after it, as the peer's window then holds bytes
/// our compressor never saw). Other connections get the plain frame.
/// A server sends the stored bytes as they are; a client masks a copy
/// (RFC 6455 §5.3 needs a fresh key per frame).
///
/// ```
/// # if !wsproto::deflate::ENABLED { return; }
/// use wsproto::deflate::{DeflateParams, PreparedMessage};
/// use wsproto::{Config, Connection, Event, Role};
/// let text = "{\"room\":\"lobby\",\"text\":\"hello everyone\"}".repeat(10);
/// let msg = PreparedMessage::text(&text, 6, 32);
/// for deflate in [false, true] {
///     let mut server = Connection::new(Role::Server, Config::default());
///     let mut client = Connection::new(Role::Client, Config::default());
///     if deflate {
///         server.enable_deflate(DeflateParams::default());
///         client.enable_deflate(DeflateParams::default());
///     }
///     server.send_prepared(&msg).unwrap();
///     let wire = server.take_output();
///     assert_eq!(wire.len() < text.len(), deflate);
///     client.receive(&wire);
///     assert_eq!(client.next_event().unwrap(), Some(Event::Text(text.as_str().into())));
/// }
/// ```
#[derive(Debug, Clone)]
pub struct PreparedMessage {
    opcode: Opcode,
    /// The payload as given.
    payload: Bytes,
    /// The unmasked frame of `payload`.
    plain_frame: Bytes,
    /// The compressed payload's unmasked frame (RSV1 set), its payload's
    /// offset in it, and the window it was compressed with.
    compressed: Option<(Bytes, usize, u8)>,
}

impl PreparedMessage {
    /// A text message; compressed (at zlib `level` 1..=9, 32 KiB window) if
    /// it has at least `min_size` bytes and shrinks.
    pub fn text(text: &str, level: u8, min_size: usize) -> Self {
        Self::new(Opcode::Text, text.as_bytes(), level, min_size)
    }

    /// A binary message; as [`text`](Self::text).
    pub fn binary(data: &[u8], level: u8, min_size: usize) -> Self {
        Self::new(Opcode::Binary, data, level, min_size)
    }

    fn new(opcode: Opcode, payload: &[u8], level: u8, min_size: usize) -> Self {
        let mut plain = BytesMut::new();
        frame::encode_frame(&mut plain, true, opcode, payload, None);
        #[cfg(feature = "deflate")]
        let compressed = {
            // A fresh compressor used once: no context to take over, and
            // none to reset afterwards.
            let params = super::DeflateParams {
                level: level.clamp(1, 9),
                min_size,
                ..super::DeflateParams::default()
            };
            let mut codec = super::Codec::new(params);
            codec.compress(payload).map(|z| {
                let mut f = BytesMut::new();
                super::encode_compressed_frame(&mut f, opcode, z, None);
                let at = f.len() - z.len();
                (f.freeze(), at, 15)
            })
        };
        #[cfg(not(feature = "deflate"))]
        let compressed = {
            let _ = (level, min_size);
            None
        };
        Self {
            opcode,
            payload: Bytes::copy_from_slice(payload),
            plain_frame: plain.freeze(),
            compressed,
        }
    }

    /// True if a compressed form was made.
    pub fn is_compressed(&self) -> bool {
        self.compressed.is_some()
    }

    /// The unmasked uncompressed frame: the bytes a server sends a
    /// connection without permessage-deflate when it writes frames itself
    /// instead of through [`Connection::send_prepared`](crate::Connection::send_prepared).
    ///
    /// ```
    /// use wsproto::deflate::PreparedMessage;
    /// let msg = PreparedMessage::text("hi", 6, 256);
    /// assert_eq!(&msg.plain_frame()[..], b"\x81\x02hi");
    /// ```
    pub fn plain_frame(&self) -> &Bytes {
        &self.plain_frame
    }

    /// The unmasked compressed frame (RSV1 set), if one was made and it is
    /// valid for a connection that agreed a send window of
    /// `send_window_bits` (`DeflateParams::send_window_bits`): the bytes a
    /// server that writes frames itself sends such a connection. It was
    /// made without context, so any number of connections may get it; a
    /// connection whose own compressor keeps context must reset it after
    /// (what `send_prepared` does), and one that never compresses through
    /// its `Connection`, or agreed `server_no_context_takeover`, need not.
    ///
    /// ```
    /// # if !wsproto::deflate::ENABLED { return; }
    /// use wsproto::deflate::PreparedMessage;
    /// let msg = PreparedMessage::text(&"chat ".repeat(100), 6, 256);
    /// let z = msg.compressed_frame(15).unwrap();
    /// assert!(z.len() < msg.plain_frame().len());
    /// assert_eq!(z[0], 0xC1); // FIN, RSV1, text
    /// assert!(msg.compressed_frame(10).is_none()); // made with a 15-bit window
    /// ```
    pub fn compressed_frame(&self, send_window_bits: u8) -> Option<&Bytes> {
        self.compressed_for(send_window_bits).map(|(f, _)| f)
    }

    /// The compressed form for a connection whose compressor has a window
    /// of `window_bits`, if there is one it may send.
    #[cfg_attr(not(feature = "deflate"), allow(dead_code))]
    pub(crate) fn compressed_for(&self, window_bits: u8) -> Option<(&Bytes, usize)> {
        self.compressed
            .as_ref()
            .filter(|(_, _, w)| *w <= window_bits)
            .map(|(f, at, _)| (f, *at))
    }

    /// Writes the message as one frame to `dst`: the stored bytes when
    /// unmasked, a masked copy otherwise.
    pub(crate) fn write(
        &self,
        dst: &mut BytesMut,
        compressed: Option<(&Bytes, usize)>,
        mask: Option<[u8; 4]>,
    ) {
        let (frame, at, rsv) = match compressed {
            Some((f, at)) => (f, at, RSV1),
            None => (
                &self.plain_frame,
                self.plain_frame.len() - self.payload.len(),
                0,
            ),
        };
        let Some(key) = mask else {
            dst.extend_from_slice(frame);
            return;
        };
        let payload = &frame[at..];
        let header = FrameHeader {
            fin: true,
            rsv,
            opcode: self.opcode,
            mask: Some(key),
            payload_len: payload.len() as u64,
        };
        let mut head = [0; MAX_HEADER_LEN];
        let n = header.encode(&mut head);
        dst.reserve(n + payload.len());
        dst.extend_from_slice(&head[..n]);
        let start = dst.len();
        dst.resize(start + payload.len(), 0);
        crate::mask::copy_masked(&mut dst[start..], payload, key, 0);
    }
}
